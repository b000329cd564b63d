//! Fused Lion step over a flat range (F32 params and momentum; the kernel
//! also writes the params' bf16 shadow). Round-to-nearest fp32 intrinsics
//! in the CPU's operation order: results match the CPU bit for bit.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::flat::{at, shadow_at, vec4_groups};
use crate::backend::{LionArgs, View};
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "lion", source: include_str!("lion.cu") };

kernel! {
    struct Lion(FILE, lion_k) { p: u64, g: u64, dtg: i32, m: u64, shadow: u64, n: i64, lr: f32, b1: f32, b2: f32, decay: f32, grad_scale: f32 }
    struct LionVec4(FILE, lion_vec4_k) { p: u64, g: u64, m: u64, shadow: u64, n4: i64, lr: f32, b1: f32, b2: f32, decay: f32, grad_scale: f32 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn lion(&mut self, params: View, grads: View, m: View, a: LionArgs) -> Result<()> {
        self.begin()?;
        let n = params.len;
        ensure!(grads.len == n && m.len == n, "lion: params/grads/m lengths differ");
        let g = self.dev(grads)?;
        let md = self.f32_out(m, "lion: m")?;
        let (p, shadow) = self.params_and_shadow(params, "lion")?;
        // f32, exactly as the CPU computes it.
        let decay = 1.0 - a.lr * a.weight_decay;
        let (lr, b1, b2, grad_scale) = (a.lr, a.beta1, a.beta2, a.grad_scale);
        let n4 = vec4_groups(n, &[p, g, md], shadow);
        if n4 > 0 {
            let cfg = self.grid(n4);
            self.launch(cfg, LionVec4 { p: p.ptr, g: g.ptr, m: md.ptr, shadow, n4: n4 as i64, lr, b1, b2, decay, grad_scale })?;
        }
        let done = 4 * n4;
        if done < n {
            let cfg = self.grid(n - done);
            let k = Lion { p: at(p, done), g: at(g, done), dtg: g.dt(), m: at(md, done), shadow: shadow_at(shadow, done), n: (n - done) as i64, lr, b1, b2, decay, grad_scale };
            self.launch(cfg, k)?;
        }
        Ok(())
    }
}
