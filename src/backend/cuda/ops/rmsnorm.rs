//! RMSNorm forward and backward, and the residual add fused with the next
//! RMSNorm: a bf16 path (block-per-row kernels, rows up to 8192 wide) and a
//! general path for any dtypes.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::rows::{colsum_plan, norm_cols_bwd_plan, norm_cols_fwd_cfg, norm_vector_path, rows_cfg, NORM_COLS_MAX_C};
use crate::backend::View;
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "rmsnorm", source: include_str!("rmsnorm.cu") };

kernel! {
    struct RmsnormFwd(FILE, rmsnorm_fwd_k) { out: u64, dto: i32, rstd: u64, dtr: i32, inp: u64, dti: i32, w: u64, dtw: i32, n: i64, c: i32, eps: f32 }
    struct RmsnormFwdBf16(FILE, rmsnorm_fwd_bf16_k) { out: u64, rstd: u64, inp: u64, w: u64, n: i64, c: i32, eps: f32 }
    /// `sum = a + b`, then the norm of `sum`, reading the rows once.
    struct AddRmsnormFwdBf16(FILE, add_rmsnorm_fwd_bf16_k) { sum: u64, out: u64, rstd: u64, a: u64, b: u64, w: u64, n: i64, c: i32, eps: f32 }
    struct RmsnormBwdDx(FILE, rmsnorm_bwd_dx_k) {
        dinp: u64, dtdi: i32, dout: u64, dtdo: i32, inp: u64, dti: i32, w: u64, dtw: i32, rstd: u64, dtr: i32, n: i64, c: i32,
    }
    /// dw partial column sums per chunk of `rpc` rows.
    struct RmsnormBwdDwPartial(FILE, rmsnorm_bwd_dw_partial_k) { partial: u64, dout: u64, dtdo: i32, inp: u64, dti: i32, rstd: u64, dtr: i32, n: i64, c: i32, rpc: i32 }
    /// One pass: dinp and the dw partials of each block of `rpb` rows.
    struct RmsnormBwdBf16(FILE, rmsnorm_bwd_bf16_k) { dinp: u64, dout: u64, inp: u64, w: u64, rstd: u64, partial: u64, n: i64, c: i32, rpb: i32 }
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn rmsnorm_fwd(&mut self, out: View, rstd: View, inp: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * c && out.len == n * c && rstd.len == n && w.len == c, "rmsnorm_fwd: views do not match n={n} c={c}");
        let (x, wd) = (self.dev(inp)?, self.dev(w)?);
        let wd = self.f32_weight(wd)?;
        let (o, rs) = (self.out(out)?, self.out(rstd)?);
        let (n64, c32) = (n as i64, c as i32);
        if norm_vector_path(&[o, x], &[wd, rs], c, NORM_COLS_MAX_C) {
            return self.launch(norm_cols_fwd_cfg(n, c, self.sms), RmsnormFwdBf16 { out: o.ptr, rstd: rs.ptr, inp: x.ptr, w: wd.ptr, n: n64, c: c32, eps });
        }
        let k = RmsnormFwd { out: o.ptr, dto: o.dt(), rstd: rs.ptr, dtr: rs.dt(), inp: x.ptr, dti: x.dt(), w: wd.ptr, dtw: wd.dt(), n: n64, c: c32, eps };
        self.launch(rows_cfg(n), k)
    }

    /// One pass over the rows on the bf16 vector path; else the add and
    /// the norm as two ops.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn add_rmsnorm_fwd(&mut self, sum: View, out: View, rstd: View, a: View, b: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.begin()?;
        ensure!(
            a.len == n * c && b.len == n * c && sum.len == n * c && out.len == n * c && rstd.len == n && w.len == c,
            "add_rmsnorm_fwd: views do not match n={n} c={c}"
        );
        let (x, y, wd) = (self.dev(a)?, self.dev(b)?, self.dev(w)?);
        let wd = self.f32_weight(wd)?;
        let (s, o, rs) = (self.out(sum)?, self.out(out)?, self.out(rstd)?);
        if norm_vector_path(&[s, o, x, y], &[wd, rs], c, NORM_COLS_MAX_C) {
            let k = AddRmsnormFwdBf16 { sum: s.ptr, out: o.ptr, rstd: rs.ptr, a: x.ptr, b: y.ptr, w: wd.ptr, n: n as i64, c: c as i32, eps };
            return self.launch(norm_cols_fwd_cfg(n, c, self.sms), k);
        }
        self.add(sum, a, b)?;
        self.rmsnorm_fwd(out, rstd, sum, w, n, c, eps)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn rmsnorm_bwd(&mut self, dinp: View, dw: View, dout: View, inp: View, w: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * c && dinp.len == n * c && dout.len == n * c && rstd.len == n && w.len == c && dw.len == c, "rmsnorm_bwd: views do not match n={n} c={c}");
        if n == 0 {
            return Ok(());
        }
        let (g, x, wd, rs) = (self.dev(dout)?, self.dev(inp)?, self.dev(w)?, self.dev(rstd)?);
        let wd = self.f32_weight(wd)?;
        let (di, dwd) = (self.out(dinp)?, self.out(dw)?);
        let (n64, c32) = (n as i64, c as i32);
        let (partial, chunks) = if norm_vector_path(&[di, g, x], &[wd, rs], c, NORM_COLS_MAX_C) {
            let (rpb, blocks, cfg) = norm_cols_bwd_plan(n, c, self.sms);
            let partial = self.scratch(blocks * c * 4)?;
            self.launch(cfg, RmsnormBwdBf16 { dinp: di.ptr, dout: g.ptr, inp: x.ptr, w: wd.ptr, rstd: rs.ptr, partial, n: n64, c: c32, rpb: rpb as i32 })?;
            (partial, blocks)
        } else {
            let k = RmsnormBwdDx { dinp: di.ptr, dtdi: di.dt(), dout: g.ptr, dtdo: g.dt(), inp: x.ptr, dti: x.dt(), w: wd.ptr, dtw: wd.dt(), rstd: rs.ptr, dtr: rs.dt(), n: n64, c: c32 };
            self.launch(rows_cfg(n), k)?;
            let (rpc, chunks, cfg) = colsum_plan(n, c);
            let partial = self.scratch(chunks * c * 4)?;
            let k = RmsnormBwdDwPartial { partial, dout: g.ptr, dtdo: g.dt(), inp: x.ptr, dti: x.dt(), rstd: rs.ptr, dtr: rs.dt(), n: n64, c: c32, rpc: rpc as i32 };
            self.launch(cfg, k)?;
            (partial, chunks)
        };
        self.colsum_finish(dwd, partial, chunks, c)
    }
}
