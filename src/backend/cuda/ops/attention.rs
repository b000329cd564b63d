//! Causal flash-style attention: forward saves the per-row log-sum-exp;
//! backward recomputes probabilities from it.
//! Paths, fastest first:
//! - FlashAttention-2 style mma.sync kernels (attention_fa2.cu), forward and
//!   backward, for bf16 tensors with 16-byte aligned rows and D = 64 / 128;
//! - forward only: wmma tensor cores (attention_mma.cu) for other bf16 cases;
//! - CUDA cores (attention.cu): everything else, and every op when
//!   `simple_attention` is set (FERROTRON_ATTN=simple; the tests use it to
//!   keep the fallback checked).

use super::super::device::CudaBackend;
use super::super::kernels::AttnDims;
use super::super::kernels::KArg::{Attn, I, P};
use super::super::memory::Elem;
use crate::backend::{AttnShape, View};
use anyhow::{bail, ensure, Result};
use cudarc::driver::LaunchConfig;

const TILE: usize = 32;

/// bf16 and 16-byte aligned (cp.async copies 16 bytes at a time).
fn fa2_ok(v: &super::super::memory::Dev) -> bool {
    v.elem == Elem::Bf16 && v.ptr.is_multiple_of(16)
}

/// Bytes of bf16 tiles of `rows` rows at the padded stride D + 8.
fn tile_bytes(rows: usize, d: usize) -> usize {
    rows * (d + 8) * 2
}

/// Head sizes the CUDA attention kernels implement (one lane per dimension
/// needs D = 32·k; the tile sizes stop at 128).
pub const HEAD_DIMS: [usize; 4] = [32, 64, 96, 128];

/// Kernel name suffix for a head dimension (lane-per-dimension needs D = 32·k).
fn variant(d: usize) -> Result<usize> {
    match d {
        32 | 64 | 96 | 128 => Ok(d),
        _ => bail!("attention: head_dim {d} is not supported by the CUDA kernels (supported: 32, 64, 96, 128); use device=cpu"),
    }
}

fn check(s: &AttnShape) -> Result<AttnDims> {
    ensure!(s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads), "attention: heads {} not a multiple of kv_heads {}", s.heads, s.kv_heads);
    variant(s.head_dim)?;
    Ok(AttnDims { b: s.batch as i32, t: s.seq as i32, h: s.heads as i32, kv: s.kv_heads as i32 })
}

fn cfg(tiles: usize, y: usize, z: usize, smem_floats: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (tiles as u32, y as u32, z as u32), block_dim: (256, 1, 1), shared_mem_bytes: (smem_floats * 4) as u32 }
}

macro_rules! pick {
    ($prefix:literal, $d:expr) => {
        match $d {
            32 => concat!($prefix, "d32"),
            64 => concat!($prefix, "d64"),
            96 => concat!($prefix, "d96"),
            _ => concat!($prefix, "d128"),
        }
    };
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn attention_fwd_op(&mut self, out: View, lse: View, qkv: View, s: AttnShape) -> Result<()> {
        self.begin()?;
        let a = check(&s)?;
        let (n, d) = (s.batch * s.seq, s.head_dim);
        ensure!(qkv.len == n * s.qkv_width() && out.len == n * s.heads * d && lse.len == s.batch * s.heads * s.seq, "attention_fwd: views do not match the shape {s:?}");
        if n == 0 {
            return Ok(());
        }
        let q = self.dev(qkv)?;
        let (o, l) = (self.out(out)?, self.out(lse)?);
        if !self.simple_attention && (d == 64 || d == 128) && fa2_ok(&q) && fa2_ok(&o) {
            // 4 warps x 32 query rows for D = 64; x 16 rows for D = 128 (the
            // O accumulator of 32 rows would not fit in registers).
            let bq = if d == 64 { 128 } else { 64 };
            let bytes = tile_bytes(bq, d) + 4 * tile_bytes(64, d);
            let c = LaunchConfig { grid_dim: (s.seq.div_ceil(bq) as u32, s.heads as u32, s.batch as u32), block_dim: (128, 1, 1), shared_mem_bytes: bytes as u32 };
            let name = if d == 64 { "fa2_fwd_d64" } else { "fa2_fwd_d128" };
            return self.launch("attention_fa2", name, c, &[P(o.ptr), P(l.ptr), I(l.dt()), P(q.ptr), Attn(a)]);
        }
        // Tensor-core path: bf16 qkv with 16-byte aligned rows.
        if !self.simple_attention && q.elem == Elem::Bf16 && q.ptr % 16 == 0 {
            let (ldq, ldx) = (d + 8, d.max(64) + 4);
            let bytes = 3 * 64 * ldq * 2 + 2 * 64 * ldx * 4 + 64 * 72 * 2 + 64 * 4;
            let c = cfg(s.seq.div_ceil(64), s.heads, s.batch, bytes.div_ceil(4));
            let c = LaunchConfig { block_dim: (128, 1, 1), ..c };
            return self.launch("attention_mma", pick!("attn_fwd_mma_", d), c, &[P(o.ptr), I(o.dt()), P(l.ptr), I(l.dt()), P(q.ptr), Attn(a)]);
        }
        let smem = TILE * d + TILE * (d + 1) + TILE * d;
        let c = cfg(s.seq.div_ceil(TILE), s.heads, s.batch, smem);
        self.launch("attention", pick!("attn_fwd_", d), c, &[P(o.ptr), I(o.dt()), P(l.ptr), I(l.dt()), P(q.ptr), I(q.dt()), Attn(a)])
    }

    pub(in crate::backend::cuda) fn attention_bwd_op(&mut self, dqkv: View, dout: View, qkv: View, out: View, lse: View, s: AttnShape) -> Result<()> {
        self.begin()?;
        let a = check(&s)?;
        let (n, d) = (s.batch * s.seq, s.head_dim);
        ensure!(
            qkv.len == n * s.qkv_width() && dqkv.len == qkv.len && out.len == n * s.heads * d && dout.len == out.len && lse.len == s.batch * s.heads * s.seq,
            "attention_bwd: views do not match the shape {s:?}"
        );
        if n == 0 {
            return Ok(());
        }
        let (g, q, o, l) = (self.dev(dout)?, self.dev(qkv)?, self.dev(out)?, self.dev(lse)?);
        let dq = self.out(dqkv)?;
        if !self.simple_attention && (d == 64 || d == 128) && fa2_ok(&q) && fa2_ok(&g) && fa2_ok(&dq) {
            return self.attention_bwd_fa2(dq.ptr, g.ptr, q.ptr, o, l, s, a);
        }
        let delta = self.scratch(n * s.heads * 4)?;
        let c = LaunchConfig { grid_dim: ((n * s.heads).div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch("attention", "attn_bwd_delta_k", c, &[P(delta), P(g.ptr), I(g.dt()), P(o.ptr), I(o.dt()), Attn(a), I(d as i32)])?;
        let args = [P(dq.ptr), I(dq.dt()), P(g.ptr), I(g.dt()), P(q.ptr), I(q.dt()), P(l.ptr), I(l.dt()), P(delta), Attn(a)];
        let tiles = s.seq.div_ceil(TILE);
        let smem = 2 * TILE * d + 2 * TILE * (d + 1);
        self.launch("attention", pick!("attn_bwd_dq_", d), cfg(tiles, s.heads, s.batch, smem), &args)?;
        let smem = 2 * TILE * d + 2 * TILE * (d + 1) + 2 * TILE;
        self.launch("attention", pick!("attn_bwd_dkv_", d), cfg(tiles, s.kv_heads, s.batch, smem), &args)
    }

    /// FlashAttention-2 backward: prep (delta, lse·log2e), dK/dV, dQ. The
    /// three kernels write disjoint parts of dqkv, so the result does not
    /// depend on launch order or scheduling.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd_fa2(&mut self, dq: u64, g: u64, q: u64, o: super::super::memory::Dev, l: super::super::memory::Dev, s: AttnShape, a: AttnDims) -> Result<()> {
        let d = s.head_dim;
        let tp = s.seq.div_ceil(64) * 64;
        let rows = s.batch * s.heads * tp;
        let delta = self.scratch(rows * 4)?;
        let lse2 = self.scratch(rows * 4)?;
        let c = LaunchConfig { grid_dim: (rows.div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (gd, od) = (Elem::Bf16 as i32, o.dt());
        self.launch("attention_fa2", "fa2_bwd_prep", c, &[P(delta), P(lse2), P(g), I(gd), P(o.ptr), I(od), P(l.ptr), I(l.dt()), Attn(a), I(d as i32), I(tp as i32)])?;
        let args = [P(dq), P(g), P(q), P(delta), P(lse2), Attn(a), I(tp as i32)];
        let tiles = s.seq.div_ceil(64) as u32;
        let bytes = 6 * tile_bytes(64, d) + 4 * 64 * 4;
        let c = LaunchConfig { grid_dim: (tiles, s.kv_heads as u32, s.batch as u32), block_dim: (128, 1, 1), shared_mem_bytes: bytes as u32 };
        let (kv, qn) = if d == 64 { ("fa2_bwd_dkv_d64", "fa2_bwd_dq_d64") } else { ("fa2_bwd_dkv_d128", "fa2_bwd_dq_d128") };
        self.launch("attention_fa2", kv, c, &args)?;
        let bytes = 6 * tile_bytes(64, d);
        let c = LaunchConfig { grid_dim: (tiles, s.heads as u32, s.batch as u32), block_dim: (128, 1, 1), shared_mem_bytes: bytes as u32 };
        self.launch("attention_fa2", qn, c, &args)
    }
}
