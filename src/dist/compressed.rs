//! Error-compensated 1-bit all-reduce: the momentum average of 1-bit Adam
//! (Tang et al. 2021, DeepSpeed's `compressed_allreduce`), as a mean over
//! ranks that moves one bit per value plus one scale per block.
//!
//! For a vector `x` of `n` values, cut into `world` server chunks of
//! `chunk` values (a multiple of `block`; the last chunks may be short or
//! empty):
//! 1. worker: `y = x + e_w`; compress `y` (sign bits, one scale
//!    `||block||/sqrt(len)` per block of `block` values); `e_w = y - C(y)`;
//! 2. all-to-all of the packed signs and of the scales: rank `j` receives
//!    every worker's compressed chunk `j`;
//! 3. server (rank `j`, its chunk): `z = e_s + Σ_r C(y_r)_j / world` (ranks
//!    in order); compress `z`; `e_s = z - C(z)`;
//! 4. all-gather of the servers' signs and scales; every rank decompresses
//!    the whole vector: `x = C(z)` (the same values on every rank).
//!
//! Error buffers start at zero and are not checkpointed (a resumed run
//! restarts them, as DeepSpeed does). Bytes per rank, per call: about
//! `2·n/8` of signs plus `2·n/block·4` of scales on a ring (NCCL); TCP's
//! star sends through rank 0 (see `tcp.rs`).

use super::{Comm, Elem};
use crate::backend::{Backend, DType, View};
use anyhow::{ensure, Result};

/// Default values per scale: small enough that one scale does not span
/// tensors of very different magnitudes on small models, large enough
/// that scales cost 1.6% of the sign bits.
pub const SCALE_BLOCK: usize = 2048;

pub struct CompressedAllReduce {
    n: usize,
    world: usize,
    rank: usize,
    block: usize,
    /// Values per server chunk (a multiple of `block`).
    chunk: usize,
    worker_err: View,
    /// This rank's server error (its chunk; `own` values used).
    server_err: View,
    /// `world·chunk/8` bytes: the worker's signs, then the gathered ones.
    bits_send: View,
    bits_recv: View,
    /// `world·chunk/block` scales, the same way.
    scales_send: View,
    scales_recv: View,
}

impl CompressedAllReduce {
    /// Buffers for vectors of `n` values on a world of `world` (this rank
    /// `rank`), one scale per `block` values (a positive multiple of 8).
    pub fn new<B: Backend>(b: &mut B, n: usize, rank: usize, world: usize, block: usize) -> Result<Self> {
        ensure!(block > 0 && block.is_multiple_of(8), "compressed all-reduce: block = {block} must be a positive multiple of 8");
        ensure!(world > 0 && rank < world, "compressed all-reduce: rank {rank} of a world of {world}");
        let chunk = n.div_ceil(world * block).max(1) * block;
        let per_chunk_scales = chunk / block;
        let alloc = |b: &mut B, len: usize, dt: DType| -> Result<View> { Ok(View::whole(b.alloc(len.max(1), dt)?, len)) };
        Ok(CompressedAllReduce {
            n,
            world,
            rank,
            block,
            chunk,
            worker_err: alloc(b, n, DType::F32)?,
            server_err: alloc(b, chunk, DType::F32)?,
            bits_send: alloc(b, world * chunk / 8, DType::U8)?,
            bits_recv: alloc(b, world * chunk / 8, DType::U8)?,
            scales_send: alloc(b, world * per_chunk_scales, DType::F32)?,
            scales_recv: alloc(b, world * per_chunk_scales, DType::F32)?,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    pub fn world(&self) -> usize {
        self.world
    }
    /// Values per server chunk (padded to whole blocks).
    pub fn chunk(&self) -> usize {
        self.chunk
    }
    pub fn block(&self) -> usize {
        self.block
    }

    /// Device bytes of the error buffers and the packed buffers.
    pub fn bytes(&self) -> u64 {
        let f = self.worker_err.len + self.server_err.len + self.scales_send.len + self.scales_recv.len;
        (4 * f + self.bits_send.len + self.bits_recv.len) as u64
    }

    /// Values of this rank's server chunk inside the vector.
    fn own(&self) -> usize {
        self.chunk.min(self.n.saturating_sub(self.rank * self.chunk))
    }

    /// Worker error (`n` values) and this rank's server error (its chunk's
    /// used values), for tests and diagnostics.
    pub fn errors(&self) -> (View, View) {
        (self.worker_err, self.server_err.sub(0, self.own()))
    }

    /// Both error buffers back to zero (a fresh start, or a resume).
    pub fn reset<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        b.fill(self.worker_err, 0.0)?;
        b.fill(self.server_err, 0.0)
    }

    /// Signs and scales of `len` values starting at value `at` (a multiple
    /// of `block`) of the vector, inside `bits`/`scales`.
    fn packed(&self, bits: View, scales: View, at: usize, len: usize) -> (View, View) {
        (bits.sub(at / 8, len.div_ceil(8)), scales.sub(at / self.block, len.div_ceil(self.block)))
    }

    /// `x` (the `n` values this rank holds) becomes the compressed mean
    /// over ranks, identical on every rank. A collective.
    pub fn all_reduce_mean<B: Backend>(&mut self, b: &mut B, comm: &mut dyn Comm<B>, x: View) -> Result<()> {
        ensure!(x.len == self.n, "compressed all-reduce: {} values for buffers of {}", x.len, self.n);
        ensure!(comm.world() == self.world && comm.rank() == self.rank, "compressed all-reduce: built for rank {} of {}, called on rank {} of {}", self.rank, self.world, comm.rank(), comm.world());
        let (n, block, chunk) = (self.n, self.block, self.chunk);
        // 1. Worker: y = x + e_w, compressed; e_w = y - C(y).
        let e_w = self.worker_err;
        b.accumulate(e_w, x)?;
        let (bits, scales) = self.packed(self.bits_send, self.scales_send, 0, n);
        b.sign_compress(bits, scales, e_w, block)?;
        b.sign_decompress(e_w, bits, scales, block, -1.0, 1.0)?;
        // 2. Chunk j of every worker to rank j.
        comm.all_to_all(b, self.bits_send, self.bits_recv, Elem::U8)?;
        comm.all_to_all(b, self.scales_send, self.scales_recv, Elem::F32)?;
        // 3. Server: z = e_s + Σ_r C(y_r)/world over this chunk, recompressed
        // into this rank's segment of the send buffers; e_s = z - C(z).
        let own = self.own();
        let e_s = self.server_err.sub(0, own);
        let inv = 1.0 / self.world as f32;
        for r in 0..self.world {
            let (rb, rs) = self.packed(self.bits_recv, self.scales_recv, r * chunk, own);
            b.sign_decompress(e_s, rb, rs, block, inv, 1.0)?;
        }
        let (sb, ss) = self.packed(self.bits_send, self.scales_send, self.rank * chunk, own);
        b.sign_compress(sb, ss, e_s, block)?;
        b.sign_decompress(e_s, sb, ss, block, -1.0, 1.0)?;
        // 4. Every server's chunk to every rank; x = C(z).
        comm.all_gather(b, self.bits_send, &vec![chunk / 8; self.world], Elem::U8)?;
        comm.all_gather(b, self.scales_send, &vec![chunk / block; self.world], Elem::F32)?;
        b.sign_decompress(x, bits, scales, block, 1.0, 0.0)
    }
}
