//! `y = a·x + b·y` and Muon's fused momentum (which rounds like three
//! axpby calls and returns the Frobenius norm² of the update).

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::Elem;
use super::flat::{at, vec4_groups};
use crate::backend::View;
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "axpby", source: include_str!("axpby.cu") };

kernel! {
    struct Axpby(FILE, axpby_k) { y: u64, dty: i32, x: u64, dtx: i32, n: i64, a: f32, b: f32 }
    struct AxpbyVec4(FILE, axpby_vec4_k) { y: u64, x: u64, n4: i64, a: f32, b: f32 }
    /// Reads g and m once, writes m and u, and per-block partials of Σ u².
    struct MuonMomentum(FILE, muon_momentum_k) { m: u64, u: u64, g: u64, dtg: i32, n: i64, c: f32, mu: f32, partial: u64 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn axpby(&mut self, y: View, x: View, a: f32, b: f32) -> Result<()> {
        self.begin()?;
        ensure!(y.len == x.len, "axpby: lengths differ ({}, {})", y.len, x.len);
        let xd = self.dev(x)?;
        let yd = self.out(y)?;
        let n = yd.len;
        let n4 = vec4_groups(n, &[xd, yd], 0);
        if n4 > 0 {
            let cfg = self.grid(n4);
            self.launch(cfg, AxpbyVec4 { y: yd.ptr, x: xd.ptr, n4: n4 as i64, a, b })?;
        }
        let done = 4 * n4;
        if done < n {
            let cfg = self.grid(n - done);
            self.launch(cfg, Axpby { y: at(yd, done), dty: yd.dt(), x: at(xd, done), dtx: xd.dt(), n: (n - done) as i64, a, b })?;
        }
        Ok(())
    }

    /// [`crate::backend::Backend::muon_momentum`] in one kernel: reads g and
    /// m once, writes m and u, and the per-block partial sums of u².
    pub(in crate::backend::cuda) fn muon_momentum(&mut self, m: View, u: View, g: View, mu: f32, grad_scale: f32) -> Result<f64> {
        self.begin()?;
        ensure!(m.len == g.len && u.len == g.len, "muon_momentum: lengths differ (m {}, u {}, g {})", m.len, u.len, g.len);
        let gd = self.dev(g)?;
        let (md, ud) = (self.out(m)?, self.out(u)?);
        ensure!(md.elem == Elem::F32 && ud.elem == Elem::F32, "muon_momentum: m and u must be F32 buffers");
        let n = g.len;
        if n == 0 {
            return Ok(0.0);
        }
        let (cfg, partial) = self.partial_sums(n)?;
        let c = (1.0 - mu) * grad_scale;
        self.launch(cfg, MuonMomentum { m: md.ptr, u: ud.ptr, g: gd.ptr, dtg: gd.dt(), n: n as i64, c, mu, partial })?;
        self.sum_partials(cfg, partial)
    }
}
