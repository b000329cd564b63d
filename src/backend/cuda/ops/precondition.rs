//! The RMS preconditioner of APOLLO / COSMOS: second-moment update and the
//! Adam denominator applied to a separate numerator; bit for bit the CPU's.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::flat::{at, vec4_groups};
use crate::backend::{PrecondArgs, View};
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "precondition", source: include_str!("precondition.cu") };

kernel! {
    struct RmsPrecondition(FILE, rms_precondition_k) {
        out: u64, num: u64, dtn: i32, v: u64, g: u64, dtg: i32, n: i64, b2: f32, eps: f32, sqrt_bc2: f32, grad_scale: f32,
    }
    struct RmsPreconditionVec4(FILE, rms_precondition_vec4_k) { out: u64, num: u64, v: u64, g: u64, n4: i64, b2: f32, eps: f32, sqrt_bc2: f32, grad_scale: f32 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn rms_precondition(&mut self, out: View, num: View, v: View, grads: View, a: PrecondArgs) -> Result<()> {
        self.begin()?;
        let n = out.len;
        ensure!(num.len == n && v.len == n && grads.len == n, "rms_precondition: out/num/v/grads lengths differ");
        ensure!(!a.bias_correction || a.step >= 1, "rms_precondition: step is 1-based, got 0");
        let (nd, g) = (self.dev(num)?, self.dev(grads)?);
        let vd = self.f32_out(v, "rms_precondition: v")?;
        let o = self.f32_out(out, "rms_precondition: out")?;
        let (b2, eps, sqrt_bc2, grad_scale) = (a.beta2, a.eps, a.bc2_sqrt(), a.grad_scale);
        let n4 = vec4_groups(n, &[o, nd, vd, g], 0);
        if n4 > 0 {
            let cfg = self.grid(n4);
            self.launch(cfg, RmsPreconditionVec4 { out: o.ptr, num: nd.ptr, v: vd.ptr, g: g.ptr, n4: n4 as i64, b2, eps, sqrt_bc2, grad_scale })?;
        }
        let done = 4 * n4;
        if done < n {
            let cfg = self.grid(n - done);
            let k = RmsPrecondition {
                out: at(o, done),
                num: at(nd, done),
                dtn: nd.dt(),
                v: at(vd, done),
                g: at(g, done),
                dtg: g.dt(),
                n: (n - done) as i64,
                b2,
                eps,
                sqrt_bc2,
                grad_scale,
            };
            self.launch(cfg, k)?;
        }
        Ok(())
    }
}
