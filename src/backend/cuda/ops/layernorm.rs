//! Normalization, activations and rotary embedding.

use super::super::device::CudaBackend;
use super::super::kernels::KArg::{F, I, L, P};
use super::super::memory::{bf16x8_groups, Dev, Elem};
use crate::backend::{AttnShape, Rope, View};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Warp-per-row kernels: 8 rows per 256-thread block.
fn rows_cfg(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(8).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// 2-D launch for row-wise elementwise kernels: 256-thread blocks over up
/// to 16 column tiles, rows strided over at most 4096 block rows.
fn rows_cols_cfg(rows: usize, cols: usize) -> LaunchConfig {
    let x = cols.div_ceil(256).clamp(1, 16) as u32;
    let y = rows.clamp(1, 4096) as u32;
    LaunchConfig { grid_dim: (x, y, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The bf16 norm kernels (layernorm.cu, rmsnorm.cu) apply: bf16
/// 16-byte-aligned activations, fp32 weights and statistics, rows of a
/// multiple of 8 up to `max_c` (what a lane keeps in registers).
fn norm_vector_path(acts: &[Dev], f32s: &[Dev], c: usize, max_c: usize) -> bool {
    acts.iter().all(Dev::is_bf16x8) && f32s.iter().all(|d| d.elem == Elem::F32) && c.is_multiple_of(8) && c <= max_c
}

/// Heads one rope.cu thread walks with its angles (`ROPE_HEADS` there).
const ROPE_HEADS: usize = 8;

/// Widest row `rmsnorm_*_bf16_k` keep in registers (32 lanes × 8 × 8).
const RMS_VECTOR_MAX_C: usize = 2048;

/// `layernorm_bwd_bf16_k` (layernorm.cu): rows per block (8 warps × 4 rows)
/// and the widest row it keeps in registers (32 lanes × 8 × 4 chunks).
const LN_FUSED_ROWS_PER_BLOCK: usize = 32;
const LN_FUSED_MAX_C: usize = 1024;

/// Column-partial kernels: (32 columns) x (row chunks), chunks <= 256.
fn colsum_plan(n: usize, c: usize) -> (usize, usize, LaunchConfig) {
    let rpc = n.div_ceil(256).max(64);
    let chunks = n.div_ceil(rpc).max(1);
    (rpc, chunks, LaunchConfig { grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 })
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn layernorm_fwd_op(&mut self, out: View, mean: View, rstd: View, inp: View, w: View, b: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * c && out.len == n * c && mean.len == n && rstd.len == n && w.len == c && b.len == c, "layernorm_fwd: views do not match n={n} c={c}");
        let (x, wd, bd) = (self.dev(inp)?, self.dev(w)?, self.dev(b)?);
        let (o, mu, rs) = (self.out(out)?, self.out(mean)?, self.out(rstd)?);
        if norm_vector_path(&[o, x], &[wd, bd, mu, rs], c, LN_FUSED_MAX_C) {
            let args = [P(o.ptr), P(mu.ptr), P(rs.ptr), P(x.ptr), P(wd.ptr), P(bd.ptr), L(n as i64), I(c as i32), F(eps)];
            return self.launch("layernorm", "layernorm_fwd_bf16_k", rows_cfg(n), &args);
        }
        let args = [P(o.ptr), I(o.dt()), P(mu.ptr), I(mu.dt()), P(rs.ptr), I(rs.dt()), P(x.ptr), I(x.dt()), P(wd.ptr), I(wd.dt()), P(bd.ptr), I(bd.dt()), L(n as i64), I(c as i32), F(eps)];
        self.launch("layernorm", "layernorm_fwd_k", rows_cfg(n), &args)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn layernorm_bwd_op(&mut self, dinp: View, dw: View, db: View, dout: View, inp: View, w: View, mean: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * c && dinp.len == n * c && dout.len == n * c && mean.len == n && rstd.len == n && w.len == c && dw.len == c && db.len == c, "layernorm_bwd: views do not match n={n} c={c}");
        if n == 0 {
            return Ok(());
        }
        let (g, x, wd, mu, rs) = (self.dev(dout)?, self.dev(inp)?, self.dev(w)?, self.dev(mean)?, self.dev(rstd)?);
        let (di, dwd, dbd) = (self.out(dinp)?, self.out(dw)?, self.out(db)?);
        let chunks = if norm_vector_path(&[di, g, x], &[wd, mu, rs], c, LN_FUSED_MAX_C) {
            // One pass: dinp and the dw/db partials of each block of rows.
            let blocks = n.div_ceil(LN_FUSED_ROWS_PER_BLOCK);
            let partial = self.scratch(blocks * 2 * c * 4)?;
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: (c * 4) as u32 };
            let args = [P(di.ptr), P(g.ptr), P(x.ptr), P(wd.ptr), P(mu.ptr), P(rs.ptr), P(partial), L(n as i64), I(c as i32)];
            self.launch("layernorm", "layernorm_bwd_bf16_k", cfg, &args)?;
            (partial, blocks)
        } else {
            let args = [P(di.ptr), I(di.dt()), P(g.ptr), I(g.dt()), P(x.ptr), I(x.dt()), P(wd.ptr), I(wd.dt()), P(mu.ptr), I(mu.dt()), P(rs.ptr), I(rs.dt()), L(n as i64), I(c as i32)];
            self.launch("layernorm", "layernorm_bwd_dx_k", rows_cfg(n), &args)?;
            let (rpc, chunks, cfg) = colsum_plan(n, c);
            let partial = self.scratch(chunks * 2 * c * 4)?;
            let args = [P(partial), P(g.ptr), I(g.dt()), P(x.ptr), I(x.dt()), P(mu.ptr), I(mu.dt()), P(rs.ptr), I(rs.dt()), L(n as i64), I(c as i32), I(rpc as i32)];
            self.launch("layernorm", "layernorm_bwd_dw_partial_k", cfg, &args)?;
            (partial, chunks)
        };
        let (partial, chunks) = chunks;
        let cfg = self.grid(c);
        let args = [P(dwd.ptr), I(dwd.dt()), P(dbd.ptr), I(dbd.dt()), P(partial), I(chunks as i32), I(c as i32)];
        self.launch("layernorm", "layernorm_bwd_dw_finish_k", cfg, &args)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn rmsnorm_fwd_op(&mut self, out: View, rstd: View, inp: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * c && out.len == n * c && rstd.len == n && w.len == c, "rmsnorm_fwd: views do not match n={n} c={c}");
        let (x, wd) = (self.dev(inp)?, self.dev(w)?);
        let (o, rs) = (self.out(out)?, self.out(rstd)?);
        if norm_vector_path(&[o, x], &[wd, rs], c, RMS_VECTOR_MAX_C) {
            let args = [P(o.ptr), P(rs.ptr), P(x.ptr), P(wd.ptr), L(n as i64), I(c as i32), F(eps)];
            return self.launch("rmsnorm", "rmsnorm_fwd_bf16_k", rows_cfg(n), &args);
        }
        let args = [P(o.ptr), I(o.dt()), P(rs.ptr), I(rs.dt()), P(x.ptr), I(x.dt()), P(wd.ptr), I(wd.dt()), L(n as i64), I(c as i32), F(eps)];
        self.launch("rmsnorm", "rmsnorm_fwd_k", rows_cfg(n), &args)
    }

    /// One pass over the rows on the bf16 vector path; else the add and
    /// the norm as two ops.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn add_rmsnorm_fwd_op(&mut self, sum: View, out: View, rstd: View, a: View, b: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.begin()?;
        ensure!(
            a.len == n * c && b.len == n * c && sum.len == n * c && out.len == n * c && rstd.len == n && w.len == c,
            "add_rmsnorm_fwd: views do not match n={n} c={c}"
        );
        let (x, y, wd) = (self.dev(a)?, self.dev(b)?, self.dev(w)?);
        let (s, o, rs) = (self.out(sum)?, self.out(out)?, self.out(rstd)?);
        if norm_vector_path(&[s, o, x, y], &[wd, rs], c, RMS_VECTOR_MAX_C) {
            let args = [P(s.ptr), P(o.ptr), P(rs.ptr), P(x.ptr), P(y.ptr), P(wd.ptr), L(n as i64), I(c as i32), F(eps)];
            return self.launch("rmsnorm", "add_rmsnorm_fwd_bf16_k", rows_cfg(n), &args);
        }
        self.add_op(sum, a, b)?;
        self.rmsnorm_fwd_op(out, rstd, sum, w, n, c, eps)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn rmsnorm_bwd_op(&mut self, dinp: View, dw: View, dout: View, inp: View, w: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * c && dinp.len == n * c && dout.len == n * c && rstd.len == n && w.len == c && dw.len == c, "rmsnorm_bwd: views do not match n={n} c={c}");
        if n == 0 {
            return Ok(());
        }
        let (g, x, wd, rs) = (self.dev(dout)?, self.dev(inp)?, self.dev(w)?, self.dev(rstd)?);
        let (di, dwd) = (self.out(dinp)?, self.out(dw)?);
        let (partial, chunks) = if norm_vector_path(&[di, g, x], &[wd, rs], c, RMS_VECTOR_MAX_C) {
            // One pass: dinp and the dw partials of each block of rows.
            let blocks = n.div_ceil(LN_FUSED_ROWS_PER_BLOCK);
            let partial = self.scratch(blocks * c * 4)?;
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: (c * 4) as u32 };
            let args = [P(di.ptr), P(g.ptr), P(x.ptr), P(wd.ptr), P(rs.ptr), P(partial), L(n as i64), I(c as i32)];
            self.launch("rmsnorm", "rmsnorm_bwd_bf16_k", cfg, &args)?;
            (partial, blocks)
        } else {
            let args = [P(di.ptr), I(di.dt()), P(g.ptr), I(g.dt()), P(x.ptr), I(x.dt()), P(wd.ptr), I(wd.dt()), P(rs.ptr), I(rs.dt()), L(n as i64), I(c as i32)];
            self.launch("rmsnorm", "rmsnorm_bwd_dx_k", rows_cfg(n), &args)?;
            let (rpc, chunks, cfg) = colsum_plan(n, c);
            let partial = self.scratch(chunks * c * 4)?;
            let args = [P(partial), P(g.ptr), I(g.dt()), P(x.ptr), I(x.dt()), P(rs.ptr), I(rs.dt()), L(n as i64), I(c as i32), I(rpc as i32)];
            self.launch("rmsnorm", "rmsnorm_bwd_dw_partial_k", cfg, &args)?;
            (partial, chunks)
        };
        let cfg = self.grid(c);
        self.launch("elementwise", "colsum_finish_k", cfg, &[P(dwd.ptr), I(dwd.dt()), P(partial), I(chunks as i32), I(c as i32)])
    }

    pub(in crate::backend::cuda) fn gelu_fwd_op(&mut self, out: View, inp: View) -> Result<()> {
        self.begin()?;
        ensure!(out.len == inp.len, "gelu_fwd: lengths differ");
        let x = self.dev(inp)?;
        let o = self.out(out)?;
        let n8 = bf16x8_groups(&[o, x]);
        if n8 > 0 {
            self.launch("gelu", "gelu_fwd_bf16x8_k", self.grid(n8), &[P(o.ptr), P(x.ptr), L(n8 as i64)])?;
        }
        let (done, rest) = (8 * n8, o.len - 8 * n8);
        if rest == 0 {
            return Ok(());
        }
        let cfg = self.grid(rest);
        self.launch("gelu", "gelu_fwd_k", cfg, &[P(o.at(done)), I(o.dt()), P(x.at(done)), I(x.dt()), L(rest as i64)])
    }

    pub(in crate::backend::cuda) fn gelu_bwd_op(&mut self, dinp: View, inp: View, dout: View) -> Result<()> {
        self.begin()?;
        ensure!(dinp.len == inp.len && inp.len == dout.len, "gelu_bwd: lengths differ");
        let (x, g) = (self.dev(inp)?, self.dev(dout)?);
        let d = self.out(dinp)?;
        let n8 = bf16x8_groups(&[d, x, g]);
        if n8 > 0 {
            self.launch("gelu", "gelu_bwd_bf16x8_k", self.grid(n8), &[P(d.ptr), P(x.ptr), P(g.ptr), L(n8 as i64)])?;
        }
        let (done, rest) = (8 * n8, d.len - 8 * n8);
        if rest == 0 {
            return Ok(());
        }
        let cfg = self.grid(rest);
        self.launch("gelu", "gelu_bwd_k", cfg, &[P(d.at(done)), I(d.dt()), P(x.at(done)), I(x.dt()), P(g.at(done)), I(g.dt()), L(rest as i64)])
    }

    pub(in crate::backend::cuda) fn swiglu_fwd_op(&mut self, out: View, inp: View, n: usize, f: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * 2 * f && out.len == n * f, "swiglu_fwd: views do not match n={n} f={f}");
        let x = self.dev(inp)?;
        let o = self.out(out)?;
        if f.is_multiple_of(8) && o.is_bf16x8() && x.is_bf16x8() {
            return self.launch("swiglu", "swiglu_fwd_bf16x8_k", rows_cols_cfg(n, f / 8), &[P(o.ptr), P(x.ptr), L(n as i64), L(f as i64)]);
        }
        let cfg = rows_cols_cfg(n, f);
        self.launch("swiglu", "swiglu_fwd_k", cfg, &[P(o.ptr), I(o.dt()), P(x.ptr), I(x.dt()), L(n as i64), L(f as i64)])
    }

    pub(in crate::backend::cuda) fn swiglu_bwd_op(&mut self, dinp: View, inp: View, dout: View, n: usize, f: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * 2 * f && dinp.len == n * 2 * f && dout.len == n * f, "swiglu_bwd: views do not match n={n} f={f}");
        let (x, g) = (self.dev(inp)?, self.dev(dout)?);
        let d = self.out(dinp)?;
        if f.is_multiple_of(8) && d.is_bf16x8() && x.is_bf16x8() && g.is_bf16x8() {
            return self.launch("swiglu", "swiglu_bwd_bf16x8_k", rows_cols_cfg(n, f / 8), &[P(d.ptr), P(x.ptr), P(g.ptr), L(n as i64), L(f as i64)]);
        }
        let cfg = rows_cols_cfg(n, f);
        self.launch("swiglu", "swiglu_bwd_k", cfg, &[P(d.ptr), I(d.dt()), P(x.ptr), I(x.dt()), P(g.ptr), I(g.dt()), L(n as i64), L(f as i64)])
    }

    /// In-place rotation of the q and k heads; `dir` -1 is the inverse (backward).
    pub(in crate::backend::cuda) fn rope_op(&mut self, qkv: View, s: AttnShape, rope: Rope, dir: f32) -> Result<()> {
        self.begin()?;
        let rows = s.batch * s.seq;
        ensure!(qkv.len == rows * s.qkv_width(), "rope: qkv has {} values, shape needs {}", qkv.len, rows * s.qkv_width());
        ensure!(s.head_dim.is_multiple_of(2), "rope: head_dim must be even");
        let inv_freq = self.rope_table(rope.inv_freq(s.head_dim))?;
        let x = self.out(qkv)?;
        let heads = s.heads + s.kv_heads;
        // Each thread: `vec` pair indices of one row, ROPE_HEADS heads.
        let vec4 = x.elem == Elem::Bf16 && x.ptr.is_multiple_of(8) && s.head_dim.is_multiple_of(8);
        let (kernel, vec) = if vec4 { ("rope_bf16x4_k", 4) } else { ("rope_k", 1) };
        let cfg = self.grid(rows * heads.div_ceil(ROPE_HEADS) * (s.head_dim / 2 / vec));
        let args = [P(x.ptr), I(x.dt()), L(rows as i64), I(s.seq as i32), I(heads as i32), I(s.qkv_width() as i32), I(s.head_dim as i32), P(inv_freq), F(dir)];
        self.launch("rope", kernel, cfg, &args)
    }

    /// Device copy of an inverse-frequency table, uploaded once per distinct
    /// table (one per model in practice) and kept for the backend's life.
    fn rope_table(&mut self, host: Vec<f32>) -> Result<u64> {
        if let Some((_, mem)) = self.rope_tables.iter().find(|(k, _)| *k == host) {
            return Ok(mem.ptr);
        }
        let mem = self.alloc.alloc(4 * host.len().max(1))?;
        let ptr = mem.ptr;
        self.htod(ptr, &host)?;
        self.rope_tables.push((host, mem));
        Ok(ptr)
    }
}
