//! Vector and per-axis helpers of the matrix optimizers (Muon, APOLLO,
//! COSMOS): `axpby`, Muon's fused momentum, per-row/column sums of squares,
//! per-row/column scaling.

use super::super::device::CudaBackend;
use super::super::kernels::KArg::{F, I, L, P};
use super::super::memory::{Dev, Elem};
use crate::backend::View;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Address of element `k` of `d`.
pub(in crate::backend::cuda) fn at(d: Dev, k: usize) -> u64 {
    d.ptr + (k * d.elem.size()) as u64
}

/// Groups of 4 elements the float4 kernel can take (the rest go to the
/// scalar kernel): `n / 4` when every buffer is F32 and 16-byte aligned and
/// the bf16 shadow (0 = none) is 8-byte aligned, else 0.
pub(in crate::backend::cuda) fn vec4_groups(n: usize, devs: &[Dev], shadow: u64) -> usize {
    let ok = devs.iter().all(|d| d.elem == Elem::F32 && d.ptr.is_multiple_of(16)) && shadow.is_multiple_of(8);
    if ok { n / 4 } else { 0 }
}

/// Shadow pointer `k` elements on (0 stays 0: no shadow).
pub(in crate::backend::cuda) fn shadow_at(shadow: u64, k: usize) -> u64 {
    if shadow == 0 { 0 } else { shadow + 2 * k as u64 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn axpby_op(&mut self, y: View, x: View, a: f32, b: f32) -> Result<()> {
        self.begin()?;
        ensure!(y.len == x.len, "axpby: lengths differ ({}, {})", y.len, x.len);
        let xd = self.dev(x)?;
        let yd = self.out(y)?;
        let n = yd.len;
        let n4 = vec4_groups(n, &[xd, yd], 0);
        if n4 > 0 {
            let cfg = self.grid(n4);
            self.launch("axpby", "axpby_vec4_k", cfg, &[P(yd.ptr), P(xd.ptr), L(n4 as i64), F(a), F(b)])?;
        }
        let done = 4 * n4;
        if done < n {
            let cfg = self.grid(n - done);
            let args = [P(at(yd, done)), I(yd.dt()), P(at(xd, done)), I(xd.dt()), L((n - done) as i64), F(a), F(b)];
            self.launch("axpby", "axpby_k", cfg, &args)?;
        }
        Ok(())
    }

    /// [`crate::backend::Backend::muon_momentum`] in one kernel: reads g and
    /// m once, writes m and u, and the per-block partial sums of u².
    pub(in crate::backend::cuda) fn muon_momentum_op(&mut self, m: View, u: View, g: View, mu: f32, grad_scale: f32) -> Result<f64> {
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
        let args = [P(md.ptr), P(ud.ptr), P(gd.ptr), I(gd.dt()), L(n as i64), F(c), F(mu), P(partial)];
        self.launch("axpby", "muon_momentum_k", cfg, &args)?;
        self.sum_partials(cfg, partial)
    }

    pub(in crate::backend::cuda) fn axis_sum_squares_op(&mut self, out: View, x: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        self.begin()?;
        ensure!(x.len == rows * cols, "axis_sum_squares: x has {} values, not {rows}x{cols}", x.len);
        let want = if per_row { rows } else { cols };
        ensure!(out.len == want, "axis_sum_squares: out has {} values, needs {want}", out.len);
        let xd = self.dev(x)?;
        let o = self.out(out)?;
        if want == 0 {
            return Ok(());
        }
        let args = [P(o.ptr), I(o.dt()), P(xd.ptr), I(xd.dt()), L(rows as i64), L(cols as i64)];
        if per_row {
            let blocks = rows.min(self.sms as usize * 16) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            self.launch("axis", "row_sumsq_k", cfg, &args)
        } else {
            // 32 columns per block, 32 row lanes (COL_LANES in axis.cu).
            let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, 1, 1), block_dim: (32, 32, 1), shared_mem_bytes: 0 };
            self.launch("axis", "col_sumsq_k", cfg, &args)
        }
    }

    pub(in crate::backend::cuda) fn scale_axis_op(&mut self, x: View, s: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        self.begin()?;
        ensure!(x.len == rows * cols, "scale_axis: x has {} values, not {rows}x{cols}", x.len);
        let want = if per_row { rows } else { cols };
        ensure!(s.len == want, "scale_axis: s has {} values, needs {want}", s.len);
        let sd = self.dev(s)?;
        let xd = self.out(x)?;
        if x.len == 0 {
            return Ok(());
        }
        let cfg = self.grid(x.len);
        let args = [P(xd.ptr), I(xd.dt()), P(sd.ptr), I(sd.dt()), L(rows as i64), L(cols as i64), I(per_row as i32)];
        self.launch("axis", "scale_axis_k", cfg, &args)
    }
}
