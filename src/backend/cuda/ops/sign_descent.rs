//! Sign descent (FRUGAL's state-free part) over a flat range of F32
//! params (the kernel also writes their bf16 shadow); bit for bit the CPU's.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::flat::{at, shadow_at, vec4_groups};
use crate::backend::{SignArgs, View};
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "sign_descent", source: include_str!("sign_descent.cu") };

kernel! {
    struct SignDescent(FILE, sign_descent_k) { p: u64, g: u64, dtg: i32, shadow: u64, n: i64, lr: f32, decay: f32, grad_scale: f32 }
    struct SignDescentVec4(FILE, sign_descent_vec4_k) { p: u64, g: u64, shadow: u64, n4: i64, lr: f32, decay: f32, grad_scale: f32 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn sign_descent(&mut self, params: View, grads: View, a: SignArgs) -> Result<()> {
        self.begin()?;
        let n = params.len;
        ensure!(grads.len == n, "sign_descent: params/grads lengths differ");
        let g = self.dev(grads)?;
        let (p, shadow) = self.params_and_shadow(params, "sign_descent")?;
        let decay = 1.0 - a.lr * a.weight_decay;
        let (lr, grad_scale) = (a.lr, a.grad_scale);
        let n4 = vec4_groups(n, &[p, g], shadow);
        if n4 > 0 {
            let cfg = self.grid(n4);
            self.launch(cfg, SignDescentVec4 { p: p.ptr, g: g.ptr, shadow, n4: n4 as i64, lr, decay, grad_scale })?;
        }
        let done = 4 * n4;
        if done < n {
            let cfg = self.grid(n - done);
            let k = SignDescent { p: at(p, done), g: at(g, done), dtg: g.dt(), shadow: shadow_at(shadow, done), n: (n - done) as i64, lr, decay, grad_scale };
            self.launch(cfg, k)?;
        }
        Ok(())
    }
}
