//! Causal flash-style attention (kernels/attention.cu): forward saves the
//! per-row log-sum-exp; backward recomputes probabilities from it.
//! Forward: tensor cores (attention_mma.cu) for bf16 qkv, else CUDA cores.
//! Backward: CUDA cores (attention.cu) for now.

use super::device::CudaBackend;
use super::kernels::AttnDims;
use super::kernels::KArg::{Attn, I, P};
use super::memory::Elem;
use crate::backend::{AttnShape, View};
use anyhow::{bail, ensure, Result};
use cudarc::driver::LaunchConfig;

const TILE: usize = 32;

/// Kernel name suffix for a head dimension (lane-per-dimension needs D = 32·k).
fn variant(d: usize) -> Result<usize> {
    match d {
        32 | 64 | 96 | 128 => Ok(d),
        _ => bail!("attention: head_dim {d} is not supported by the CUDA kernels (supported: 32, 64, 96, 128)"),
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
    pub(super) fn attention_fwd_op(&mut self, out: View, lse: View, qkv: View, s: AttnShape) -> Result<()> {
        self.begin()?;
        let a = check(&s)?;
        let (n, d) = (s.batch * s.seq, s.head_dim);
        ensure!(qkv.len == n * s.qkv_width() && out.len == n * s.heads * d && lse.len == s.batch * s.heads * s.seq, "attention_fwd: views do not match the shape {s:?}");
        if n == 0 {
            return Ok(());
        }
        let q = self.dev(qkv)?;
        let (o, l) = (self.out(out)?, self.out(lse)?);
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

    pub(super) fn attention_bwd_op(&mut self, dqkv: View, dout: View, qkv: View, out: View, lse: View, s: AttnShape) -> Result<()> {
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
}
