//! LayerNorm forward and backward: a one-pass bf16 path (rows of up to
//! 1024 in registers) and a general path for any dtypes.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::rows::{colsum_plan, norm_vector_path, rows_cfg, FUSED_BWD_ROWS_PER_BLOCK};
use crate::backend::View;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "layernorm", source: include_str!("layernorm.cu") };

/// The widest row `layernorm_*_bf16_k` keep in registers (32 lanes × 8 × 4 chunks).
const LN_FUSED_MAX_C: usize = 1024;

kernel! {
    struct LayernormFwd(FILE, layernorm_fwd_k) {
        out: u64, dto: i32, mean: u64, dtm: i32, rstd: u64, dtr: i32, inp: u64, dti: i32,
        w: u64, dtw: i32, b: u64, dtb: i32, n: i64, c: i32, eps: f32,
    }
    struct LayernormFwdBf16(FILE, layernorm_fwd_bf16_k) { out: u64, mean: u64, rstd: u64, inp: u64, w: u64, b: u64, n: i64, c: i32, eps: f32 }
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
    /// One pass: dinp and the dw/db partials of each block of rows.
    struct LayernormBwdBf16(FILE, layernorm_bwd_bf16_k) { dinp: u64, dout: u64, inp: u64, w: u64, mean: u64, rstd: u64, partial: u64, n: i64, c: i32 }
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
        if norm_vector_path(&[o, x], &[wd, bd, mu, rs], c, LN_FUSED_MAX_C) {
            let k = LayernormFwdBf16 { out: o.ptr, mean: mu.ptr, rstd: rs.ptr, inp: x.ptr, w: wd.ptr, b: bd.ptr, n: n64, c: c32, eps };
            return self.launch(rows_cfg(n), k);
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
        let (partial, chunks) = if norm_vector_path(&[di, g, x], &[wd, mu, rs], c, LN_FUSED_MAX_C) {
            let blocks = n.div_ceil(FUSED_BWD_ROWS_PER_BLOCK);
            let partial = self.scratch(blocks * 2 * c * 4)?;
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: (c * 4) as u32 };
            self.launch(cfg, LayernormBwdBf16 { dinp: di.ptr, dout: g.ptr, inp: x.ptr, w: wd.ptr, mean: mu.ptr, rstd: rs.ptr, partial, n: n64, c: c32 })?;
            (partial, blocks)
        } else {
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
            (partial, chunks)
        };
        let cfg = self.grid(c);
        self.launch(cfg, LayernormBwdDwFinish { dw: dwd.ptr, dtw: dwd.dt(), db: dbd.ptr, dtb: dbd.dt(), partial, chunks: chunks as i32, c: c32 })
    }
}
