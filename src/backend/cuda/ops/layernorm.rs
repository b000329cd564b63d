//! LayerNorm forward and backward: a bf16 path (block-per-row kernels, rows
//! up to 8192 wide) and a general path for any dtypes.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::rows::{colsum_plan, norm_cols_bwd_plan, norm_cols_fwd_cfg, norm_vector_path, rows_cfg, NORM_COLS_MAX_C};
use crate::backend::View;
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "layernorm", source: include_str!("layernorm.cu") };

kernel! {
    struct LayernormFwd(FILE, layernorm_fwd_k) {
        out: u64, dto: i32, mean: u64, dtm: i32, rstd: u64, dtr: i32, inp: u64, dti: i32,
        w: u64, dtw: i32, b: u64, dtb: i32, n: i64, c: i32, eps: f32,
    }
    struct LayernormFwdBf16(FILE, layernorm_fwd_bf16_k) { out: u64, mean: u64, rstd: u64, inp: u64, w: u64, b: u64, n: i64, c: i32, eps: f32 }
    /// `sum = a + bb`, then the norm of `sum`, reading the rows once.
    struct AddLayernormFwdBf16(FILE, add_layernorm_fwd_bf16_k) {
        sum: u64, out: u64, mean: u64, rstd: u64, a: u64, bb: u64, w: u64, b: u64, n: i64, c: i32, eps: f32,
    }
    struct LayernormBwdDx(FILE, layernorm_bwd_dx_k) {
        dinp: u64, dtdi: i32, dout: u64, dtdo: i32, inp: u64, dti: i32, w: u64, dtw: i32,
        mean: u64, dtm: i32, rstd: u64, dtr: i32, n: i64, c: i32,
    }
    /// dw and db partial column sums per chunk of `rpc` rows.
    struct LayernormBwdDwPartial(FILE, layernorm_bwd_dw_partial_k) {
        partial: u64, dout: u64, dtdo: i32, inp: u64, dti: i32, mean: u64, dtm: i32, rstd: u64, dtr: i32, n: i64, c: i32, rpc: i32,
    }
    /// `dw += Σ partials`, `db += Σ partials`, in chunk order.
    struct LayernormBwdDwFinish(FILE, layernorm_bwd_dw_finish_k) { dw: u64, dtw: i32, db: u64, dtb: i32, partial: u64, chunks: i32, c: i32 }
    /// One pass: dinp and the dw, db partials of each block of `rpb` rows
    /// (all the dw partials, then all the db ones).
    struct LayernormBwdBf16(FILE, layernorm_bwd_bf16_k) { dinp: u64, dout: u64, inp: u64, w: u64, mean: u64, rstd: u64, partial: u64, n: i64, c: i32, rpb: i32 }
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn layernorm_fwd(&mut self, out: View, mean: View, rstd: View, inp: View, w: View, b: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * c && out.len == n * c && mean.len == n && rstd.len == n && w.len == c && b.len == c, "layernorm_fwd: views do not match n={n} c={c}");
        let (x, wd, bd) = (self.dev(inp)?, self.dev(w)?, self.dev(b)?);
        let (wd, bd) = (self.f32_weight(wd)?, self.f32_weight(bd)?);
        let (o, mu, rs) = (self.out(out)?, self.out(mean)?, self.out(rstd)?);
        let (n64, c32) = (n as i64, c as i32);
        if norm_vector_path(&[o, x], &[wd, bd, mu, rs], c, NORM_COLS_MAX_C) {
            let k = LayernormFwdBf16 { out: o.ptr, mean: mu.ptr, rstd: rs.ptr, inp: x.ptr, w: wd.ptr, b: bd.ptr, n: n64, c: c32, eps };
            return self.launch(norm_cols_fwd_cfg(n, c, self.sms), k);
        }
        let k = LayernormFwd {
            out: o.ptr,
            dto: o.dt(),
            mean: mu.ptr,
            dtm: mu.dt(),
            rstd: rs.ptr,
            dtr: rs.dt(),
            inp: x.ptr,
            dti: x.dt(),
            w: wd.ptr,
            dtw: wd.dt(),
            b: bd.ptr,
            dtb: bd.dt(),
            n: n64,
            c: c32,
            eps,
        };
        self.launch(rows_cfg(n), k)
    }

    /// One pass over the rows on the bf16 path; else the add and the norm
    /// as two ops.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn add_layernorm_fwd(&mut self, sum: View, out: View, mean: View, rstd: View, a: View, b: View, w: View, bias: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.begin()?;
        ensure!(
            a.len == n * c && b.len == n * c && sum.len == n * c && out.len == n * c && mean.len == n && rstd.len == n && w.len == c && bias.len == c,
            "add_layernorm_fwd: views do not match n={n} c={c}"
        );
        let (x, y, wd, bd) = (self.dev(a)?, self.dev(b)?, self.dev(w)?, self.dev(bias)?);
        let (wd, bd) = (self.f32_weight(wd)?, self.f32_weight(bd)?);
        let (s, o, mu, rs) = (self.out(sum)?, self.out(out)?, self.out(mean)?, self.out(rstd)?);
        if norm_vector_path(&[s, o, x, y], &[wd, bd, mu, rs], c, NORM_COLS_MAX_C) {
            let k = AddLayernormFwdBf16 { sum: s.ptr, out: o.ptr, mean: mu.ptr, rstd: rs.ptr, a: x.ptr, bb: y.ptr, w: wd.ptr, b: bd.ptr, n: n as i64, c: c as i32, eps };
            return self.launch(norm_cols_fwd_cfg(n, c, self.sms), k);
        }
        self.add(sum, a, b)?;
        self.layernorm_fwd(out, mean, rstd, sum, w, bias, n, c, eps)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn layernorm_bwd(&mut self, dinp: View, dw: View, db: View, dout: View, inp: View, w: View, mean: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * c && dinp.len == n * c && dout.len == n * c && mean.len == n && rstd.len == n && w.len == c && dw.len == c && db.len == c, "layernorm_bwd: views do not match n={n} c={c}");
        if n == 0 {
            return Ok(());
        }
        let (g, x, wd, mu, rs) = (self.dev(dout)?, self.dev(inp)?, self.dev(w)?, self.dev(mean)?, self.dev(rstd)?);
        let wd = self.f32_weight(wd)?;
        let (di, dwd, dbd) = (self.out(dinp)?, self.out(dw)?, self.out(db)?);
        let (n64, c32) = (n as i64, c as i32);
        if norm_vector_path(&[di, g, x], &[wd, mu, rs], c, NORM_COLS_MAX_C) {
            let (rpb, blocks, cfg) = norm_cols_bwd_plan(n, c, self.sms);
            let partial = self.scratch(blocks * 2 * c * 4)?;
            self.launch(cfg, LayernormBwdBf16 { dinp: di.ptr, dout: g.ptr, inp: x.ptr, w: wd.ptr, mean: mu.ptr, rstd: rs.ptr, partial, n: n64, c: c32, rpb: rpb as i32 })?;
            self.colsum_finish(dwd, partial, blocks, c)?;
            return self.colsum_finish(dbd, partial + (blocks * c * 4) as u64, blocks, c);
        }
        let k = LayernormBwdDx {
            dinp: di.ptr,
            dtdi: di.dt(),
            dout: g.ptr,
            dtdo: g.dt(),
            inp: x.ptr,
            dti: x.dt(),
            w: wd.ptr,
            dtw: wd.dt(),
            mean: mu.ptr,
            dtm: mu.dt(),
            rstd: rs.ptr,
            dtr: rs.dt(),
            n: n64,
            c: c32,
        };
        self.launch(rows_cfg(n), k)?;
        let (rpc, chunks, cfg) = colsum_plan(n, c);
        let partial = self.scratch(chunks * 2 * c * 4)?;
        let k = LayernormBwdDwPartial {
            partial,
            dout: g.ptr,
            dtdo: g.dt(),
            inp: x.ptr,
            dti: x.dt(),
            mean: mu.ptr,
            dtm: mu.dt(),
            rstd: rs.ptr,
            dtr: rs.dt(),
            n: n64,
            c: c32,
            rpc: rpc as i32,
        };
        self.launch(cfg, k)?;
        let cfg = self.grid(c);
        self.launch(cfg, LayernormBwdDwFinish { dw: dwd.ptr, dtw: dwd.dt(), db: dbd.ptr, dtb: dbd.dt(), partial, chunks: chunks as i32, c: c32 })
    }
}
