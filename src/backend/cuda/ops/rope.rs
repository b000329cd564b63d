//! Rotary position embedding, in place on the q and k heads of `qkv`
//! (backward: the inverse rotation), with the angles of a per-model table
//! of inverse frequencies uploaded once.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::Elem;
use crate::backend::{AttnShape, Rope, View};
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "rope", source: include_str!("rope.cu") };

/// Heads one rope.cu thread walks with its angles (`ROPE_HEADS` there).
const ROPE_HEADS: usize = 8;

kernel! {
    /// One signature: pair by pair (any dtype) or 4 pairs of bf16 at once.
    struct RopeRotate(FILE, RopeKernel { Scalar: rope_k, Bf16x4: rope_bf16x4_k }) {
        qkv: u64, dt: i32, rows: i64, seq: i32, heads_qk: i32, width: i32, d: i32, inv_freq: u64, dir: f32,
    }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn rope_fwd(&mut self, qkv: View, s: AttnShape, rope: Rope) -> Result<()> {
        self.rope_rotate(qkv, s, rope, 1.0)
    }

    pub(in crate::backend::cuda) fn rope_bwd(&mut self, dqkv: View, s: AttnShape, rope: Rope) -> Result<()> {
        self.rope_rotate(dqkv, s, rope, -1.0)
    }

    /// In-place rotation of the q and k heads; `dir` -1 is the inverse (backward).
    fn rope_rotate(&mut self, qkv: View, s: AttnShape, rope: Rope, dir: f32) -> Result<()> {
        self.begin()?;
        let rows = s.batch * s.seq;
        ensure!(qkv.len == rows * s.qkv_width(), "rope: qkv has {} values, shape needs {}", qkv.len, rows * s.qkv_width());
        ensure!(s.head_dim.is_multiple_of(2), "rope: head_dim must be even");
        let inv_freq = self.rope_table(rope.inv_freq(s.head_dim))?;
        let x = self.out(qkv)?;
        let heads = s.heads + s.kv_heads;
        // Each thread: `vec` pair indices of one row, ROPE_HEADS heads.
        let vec4 = x.elem == Elem::Bf16 && x.ptr.is_multiple_of(8) && s.head_dim.is_multiple_of(8);
        let (kernel, vec) = if vec4 { (RopeKernel::Bf16x4, 4) } else { (RopeKernel::Scalar, 1) };
        let cfg = self.grid(rows * heads.div_ceil(ROPE_HEADS) * (s.head_dim / 2 / vec));
        let k = RopeRotate {
            kernel,
            qkv: x.ptr,
            dt: x.dt(),
            rows: rows as i64,
            seq: s.seq as i32,
            heads_qk: heads as i32,
            width: s.qkv_width() as i32,
            d: s.head_dim as i32,
            inv_freq,
            dir,
        };
        self.launch(cfg, k)
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
