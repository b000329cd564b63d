//! Causal flash-style attention: forward saves the per-row log-sum-exp;
//! backward recomputes probabilities from it.
//! Paths, fastest first:
//! - forward, Hopper (cc 9.0): wgmma kernels (attention_wgmma.cu) for
//!   the cases the FlashAttention-2 kernels take, when chosen
//!   ([`AttnForward`]: FERROTRON_ATTN=wgmma / wgmma-sync,
//!   `set_attention_forward`, or [`DEFAULT_FORWARD`]); their output and lse
//!   feed either backward unchanged;
//! - backward, Hopper (cc 9.0): wgmma kernels (attention_wgmma_bwd.cu) for
//!   the same cases, when chosen ([`AttnBackward`]: FERROTRON_ATTN_BWD=wgmma
//!   / wgmma-sync, `set_attention_backward`, or [`DEFAULT_BACKWARD`]);
//! - FlashAttention-2 style mma.sync kernels (attention_fa2.cu), forward and
//!   backward, for bf16 tensors with 16-byte aligned rows and D = 64 / 128;
//! - forward only: wmma tensor cores (attention_mma.cu) for other bf16 cases;
//! - CUDA cores (attention.cu): everything else, and every op when
//!   `simple_attention` is set (FERROTRON_ATTN=simple; the tests use it to
//!   keep the fallback checked).

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::{Dev, Elem};
use super::tensor_map::{bf16_3d_swizzled, TensorMap};
use crate::backend::{AttnShape, View};
use anyhow::{bail, ensure, Result};
use cudarc::driver::{DeviceRepr, LaunchConfig};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "attention", source: include_str!("attention.cu") };
pub(in crate::backend::cuda) const MMA_FILE: KernelFile = KernelFile { name: "attention_mma", source: include_str!("attention_mma.cu") };
pub(in crate::backend::cuda) const FA2_FILE: KernelFile = KernelFile { name: "attention_fa2", source: include_str!("attention_fa2.cu") };
/// A Hopper kernel file's text: wgmma_common.cuh (the helpers the forward
/// and the backward share), then the file, each numbered from its own first
/// line in NVRTC's messages.
macro_rules! wgmma_source {
    ($file:literal) => {
        concat!("#line 1 \"wgmma_common.cuh\"\n", include_str!("wgmma_common.cuh"), "\n#line 1 \"", $file, "\"\n", include_str!($file))
    };
}
pub(in crate::backend::cuda) const WGMMA_FILE: KernelFile = KernelFile { name: "attention_wgmma", source: wgmma_source!("attention_wgmma.cu") };
pub(in crate::backend::cuda) const WGMMA_BWD_FILE: KernelFile = KernelFile { name: "attention_wgmma_bwd", source: wgmma_source!("attention_wgmma_bwd.cu") };

/// Which kernel runs the attention forward for the cases the
/// FlashAttention-2 kernels take (bf16, 16-byte aligned, D = 64 / 128); the
/// Hopper ones only on a cc 9.0 GPU (elsewhere `Fa2` runs). The backward is
/// the FlashAttention-2 one in every case: the forwards save the same output
/// and log-sum-exp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnForward {
    /// mma.sync, attention_fa2.cu (FERROTRON_ATTN=fa2).
    Fa2,
    /// wgmma, warp-specialized: a TMA producer warpgroup feeding 2 or 3
    /// consumer warpgroups through mbarriers, softmax overlapping P·V
    /// (FERROTRON_ATTN=wgmma).
    WgmmaTma,
    /// wgmma, every thread loads with cp.async, block-wide barriers per key
    /// tile (FERROTRON_ATTN=wgmma-sync).
    WgmmaSync,
    /// `WgmmaTma` with FlashAttention-3's ping-pong: the consumer
    /// warpgroups take turns issuing their products, so one's softmax runs
    /// while another's products do (FERROTRON_ATTN=wgmma-pp).
    WgmmaPingpong,
}

/// The forward used when FERROTRON_ATTN does not choose one: the
/// warp-specialized TMA kernel, verified on the H200 (parity with the CPU
/// twin and fa2; 458 TFLOP/s at D=128, T=16384 against fa2's 225:
/// bench/results/gpu_2026-12-02c.md, call 2). On GPUs other than cc 9.0
/// the fa2 kernel runs; FERROTRON_ATTN=fa2 chooses it everywhere.
pub const DEFAULT_FORWARD: AttnForward = AttnForward::WgmmaTma;

/// FERROTRON_ATTN: `wgmma`, `wgmma-pp`, `wgmma-sync` or `fa2` (also `simple`, handled
/// by the backend: the CUDA-core kernels); unset, [`DEFAULT_FORWARD`]. Any
/// other value is reported on stderr and runs `fa2`.
pub(in crate::backend::cuda) fn forward_from_env() -> AttnForward {
    match std::env::var("FERROTRON_ATTN").as_deref() {
        Ok("wgmma") => AttnForward::WgmmaTma,
        Ok("wgmma-sync") => AttnForward::WgmmaSync,
        Ok("wgmma-pp") => AttnForward::WgmmaPingpong,
        Ok("fa2") | Ok("simple") => AttnForward::Fa2,
        Ok(other) => {
            eprintln!("FERROTRON_ATTN={other} is not one of fa2, wgmma, wgmma-pp, wgmma-sync, simple: using fa2");
            AttnForward::Fa2
        }
        Err(_) => DEFAULT_FORWARD,
    }
}

/// Which kernels run the attention backward for the cases the
/// FlashAttention-2 kernels take; `Wgmma` only on a cc 9.0 GPU (elsewhere
/// `Fa2` runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnBackward {
    /// mma.sync, attention_fa2.cu (FERROTRON_ATTN_BWD=fa2).
    Fa2,
    /// wgmma, attention_wgmma_bwd.cu: warp-specialized dK/dV and dQ kernels
    /// (a TMA producer warpgroup feeding 2 consumer warpgroups through
    /// mbarriers); deterministic (FERROTRON_ATTN_BWD=wgmma).
    Wgmma,
    /// wgmma, attention_wgmma_bwd.cu: dK/dV and dQ kernels whose threads all
    /// load with cp.async, block-wide barriers per tile; deterministic
    /// (FERROTRON_ATTN_BWD=wgmma-sync).
    WgmmaSync,
}

/// The backward used when FERROTRON_ATTN_BWD does not choose one: the
/// warp-specialized wgmma kernels, which passed their parity tests on the
/// H200 (`attention_wgmma_bwd`, bench/results/gpu_2026-12-02d.md call 3)
/// and run at 2.0x the fa2 backward (405 vs 203 TFLOP/s at D=128,
/// T=16384). Other GPUs run `Fa2` whatever this says.
pub const DEFAULT_BACKWARD: AttnBackward = AttnBackward::Wgmma;

/// FERROTRON_ATTN_BWD: `wgmma`, `wgmma-sync` or `fa2`; unset,
/// [`DEFAULT_BACKWARD`]. Any other value is reported on stderr and runs `fa2`.
pub(in crate::backend::cuda) fn backward_from_env() -> AttnBackward {
    match std::env::var("FERROTRON_ATTN_BWD").as_deref() {
        Ok("wgmma") => AttnBackward::Wgmma,
        Ok("wgmma-sync") => AttnBackward::WgmmaSync,
        Ok("fa2") => AttnBackward::Fa2,
        Ok(other) => {
            eprintln!("FERROTRON_ATTN_BWD={other} is not one of fa2, wgmma, wgmma-sync: using fa2");
            AttnBackward::Fa2
        }
        Err(_) => DEFAULT_BACKWARD,
    }
}

/// Mirrors `AttnDims` in attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(in crate::backend::cuda) struct AttnDims {
    pub b: i32,
    pub t: i32,
    pub h: i32,
    pub kv: i32,
}
// SAFETY: plain-old-data with the same layout as the CUDA struct.
unsafe impl DeviceRepr for AttnDims {}

kernel! {
    /// CUDA cores, one kernel per head size padded to a multiple of 32
    /// (`hd`: the real head size).
    struct SimpleFwd(FILE, SimpleFwdKernel { D32: attn_fwd_d32, D64: attn_fwd_d64, D96: attn_fwd_d96, D128: attn_fwd_d128 }) {
        out: u64, dto: i32, lse: u64, dtl: i32, qkv: u64, dtq: i32, a: AttnDims, hd: i32,
    }
    /// `delta = rowsum(dout ⊙ out)` for the CUDA-core backward.
    struct SimpleBwdDelta(FILE, attn_bwd_delta_k) { delta: u64, dout: u64, dtdo: i32, out: u64, dto: i32, a: AttnDims, d: i32 }
    /// dQ, and dK/dV per kv head, one kernel per head size.
    struct SimpleBwd(FILE, SimpleBwdKernel {
        Dq32: attn_bwd_dq_d32, Dq64: attn_bwd_dq_d64, Dq96: attn_bwd_dq_d96, Dq128: attn_bwd_dq_d128,
        Dkv32: attn_bwd_dkv_d32, Dkv64: attn_bwd_dkv_d64, Dkv96: attn_bwd_dkv_d96, Dkv128: attn_bwd_dkv_d128,
    }) {
        dqkv: u64, dtg: i32, dout: u64, dtdo: i32, qkv: u64, dtq: i32, lse: u64, dtl: i32, delta: u64, a: AttnDims, hd: i32,
    }
    /// wmma tensor cores (bf16 qkv), one kernel per head size.
    struct MmaFwd(MMA_FILE, MmaFwdKernel { D32: attn_fwd_mma_d32, D64: attn_fwd_mma_d64, D96: attn_fwd_mma_d96, D128: attn_fwd_mma_d128 }) {
        out: u64, dto: i32, lse: u64, dtl: i32, qkv: u64, a: AttnDims,
    }
    struct Fa2Fwd(FA2_FILE, Fa2FwdKernel { D64: fa2_fwd_d64, D128: fa2_fwd_d128 }) { out: u64, lse: u64, dtl: i32, qkv: u64, a: AttnDims }
    /// Hopper wgmma forward, cp.async loads (same results as `Fa2Fwd`).
    struct WgmmaFwd(WGMMA_FILE, WgmmaFwdKernel { D64: wgmma_fwd_d64, D128: wgmma_fwd_d128 }) { out: u64, lse: u64, dtl: i32, qkv: u64, a: AttnDims }
    /// Hopper wgmma forward, warp-specialized with TMA loads: `tq` maps qkv
    /// in boxes of 64 columns x BQ rows, `tkv` in 64 x 128.
    struct WgmmaTmaFwd(WGMMA_FILE, WgmmaTmaFwdKernel { D64: wgmma_tma_fwd_d64, D128: wgmma_tma_fwd_d128, Pp64: wgmma_tma_fwd_pp_d64, Pp128: wgmma_tma_fwd_pp_d128 }) {
        out: u64, lse: u64, dtl: i32, tq: TensorMap, tkv: TensorMap, a: AttnDims,
    }
    /// delta and lse·log2e, rows padded to `tp`.
    struct Fa2BwdPrep(FA2_FILE, fa2_bwd_prep) {
        delta: u64, lse2: u64, dout: u64, dtdo: i32, out: u64, dto: i32, lse: u64, dtl: i32, a: AttnDims, d: i32, tp: i32,
    }
    struct Fa2Bwd(FA2_FILE, Fa2BwdKernel { Dkv64: fa2_bwd_dkv_d64, Dkv128: fa2_bwd_dkv_d128, Dq64: fa2_bwd_dq_d64, Dq128: fa2_bwd_dq_d128 }) {
        dqkv: u64, dout: u64, qkv: u64, delta: u64, lse2: u64, a: AttnDims, tp: i32,
    }
    /// Hopper wgmma backward, warp-specialized with TMA loads: `tq` maps
    /// qkv and `tdo` dout in boxes of 64 columns x (query rows of a step),
    /// `tkv` qkv in 64 x (key rows of a step).
    struct WgmmaTmaBwd(WGMMA_BWD_FILE, WgmmaTmaBwdKernel { Dkv64: wgmma_tma_bwd_dkv_d64, Dkv128: wgmma_tma_bwd_dkv_d128, Dq64: wgmma_tma_bwd_dq_d64, Dq128: wgmma_tma_bwd_dq_d128 }) {
        dqkv: u64, delta: u64, lse2: u64, tq: TensorMap, tdo: TensorMap, tkv: TensorMap, a: AttnDims, tp: i32,
    }
    /// Hopper wgmma backward: dK/dV, then dQ (same inputs as `Fa2Bwd`).
    struct WgmmaBwd(WGMMA_BWD_FILE, WgmmaBwdKernel { Dkv64: wgmma_bwd_dkv_d64, Dkv128: wgmma_bwd_dkv_d128, Dq64: wgmma_bwd_dq_d64, Dq128: wgmma_bwd_dq_d128 }) {
        dqkv: u64, dout: u64, qkv: u64, delta: u64, lse2: u64, a: AttnDims, tp: i32,
    }
}

const TILE: usize = 32;

/// bf16 and 16-byte aligned (cp.async copies 16 bytes at a time).
fn fa2_ok(v: &Dev) -> bool {
    v.elem == Elem::Bf16 && v.ptr.is_multiple_of(16)
}

/// Bytes of bf16 tiles of `rows` rows at the padded stride D + 8.
fn tile_bytes(rows: usize, d: usize) -> usize {
    rows * (d + 8) * 2
}

/// Head sizes the tensor-core kernels implement (wmma: 32·k; FlashAttention-2
/// style: 64 and 128). Other sizes up to [`MAX_HEAD_DIM`] run on the
/// CUDA-core kernels.
pub const HEAD_DIMS: [usize; 4] = [32, 64, 96, 128];

/// The largest head size the CUDA kernels take: the CUDA-core kernels pad
/// a head to the next multiple of 32 (one lane per dimension) and their
/// tiles stop at 128.
pub const MAX_HEAD_DIM: usize = 128;

/// The kernel variant of head size `d`: `d` padded to 32, 64, 96 or 128.
fn variant(d: usize) -> Result<usize> {
    match d {
        1..=MAX_HEAD_DIM => Ok(d.div_ceil(32) - 1),
        _ => bail!("attention: head_dim {d} is not supported by the CUDA kernels (1 to {MAX_HEAD_DIM}); use device=cpu, or more heads"),
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

impl CudaBackend {
    pub(in crate::backend::cuda) fn attention_fwd(&mut self, out: View, lse: View, qkv: View, s: AttnShape) -> Result<()> {
        self.begin()?;
        let a = check(&s)?;
        let (n, d) = (s.batch * s.seq, s.head_dim);
        ensure!(qkv.len == n * s.qkv_width() && out.len == n * s.heads * d && lse.len == s.batch * s.heads * s.seq, "attention_fwd: views do not match the shape {s:?}");
        if n == 0 {
            return Ok(());
        }
        let q = self.dev(qkv)?;
        let (o, l) = (self.out(out)?, self.out(lse)?);
        let v = variant(d)?;
        if !self.simple_attention && (d == 64 || d == 128) && fa2_ok(&q) && fa2_ok(&o) {
            if self.cc == (9, 0) && self.attn_forward != AttnForward::Fa2 {
                return self.attention_fwd_wgmma(o.ptr, l, q.ptr, s, a);
            }
            // 4 warps x 32 query rows for D = 64; x 16 rows for D = 128 (the
            // O accumulator of 32 rows would not fit in registers).
            let bq = if d == 64 { 128 } else { 64 };
            let bytes = tile_bytes(bq, d) + 4 * tile_bytes(64, d);
            let c = LaunchConfig { grid_dim: (s.seq.div_ceil(bq) as u32, s.heads as u32, s.batch as u32), block_dim: (128, 1, 1), shared_mem_bytes: bytes as u32 };
            let kernel = if d == 64 { Fa2FwdKernel::D64 } else { Fa2FwdKernel::D128 };
            return self.launch(c, Fa2Fwd { kernel, out: o.ptr, lse: l.ptr, dtl: l.dt(), qkv: q.ptr, a });
        }
        // Tensor-core path: bf16 qkv with 16-byte aligned rows.
        if !self.simple_attention && HEAD_DIMS.contains(&d) && q.elem == Elem::Bf16 && q.ptr % 16 == 0 {
            let (ldq, ldx) = (d + 8, d.max(64) + 4);
            let bytes = 3 * 64 * ldq * 2 + 2 * 64 * ldx * 4 + 64 * 72 * 2 + 64 * 4;
            let c = cfg(s.seq.div_ceil(64), s.heads, s.batch, bytes.div_ceil(4));
            let c = LaunchConfig { block_dim: (128, 1, 1), ..c };
            let kernel = [MmaFwdKernel::D32, MmaFwdKernel::D64, MmaFwdKernel::D96, MmaFwdKernel::D128][v];
            return self.launch(c, MmaFwd { kernel, out: o.ptr, dto: o.dt(), lse: l.ptr, dtl: l.dt(), qkv: q.ptr, a });
        }
        let dp = 32 * (v + 1);
        let smem = TILE * dp + TILE * (dp + 1) + TILE * dp;
        let c = cfg(s.seq.div_ceil(TILE), s.heads, s.batch, smem);
        let kernel = [SimpleFwdKernel::D32, SimpleFwdKernel::D64, SimpleFwdKernel::D96, SimpleFwdKernel::D128][v];
        self.launch(c, SimpleFwd { kernel, out: o.ptr, dto: o.dt(), lse: l.ptr, dtl: l.dt(), qkv: q.ptr, dtq: q.dt(), a, hd: d as i32 })
    }

    /// Hopper forward: 64 query rows per consumer warpgroup, 3 warpgroups
    /// for D = 64 and 2 for D = 128 (+ 1 producer warpgroup for WgmmaTma);
    /// shared memory = the Q tile + 2 K and 2 V buffers of 128 keys, 1024
    /// bytes to align the tiles to the swizzle atom, 128 for the 9 mbarriers.
    fn attention_fwd_wgmma(&mut self, out: u64, lse: Dev, qkv: u64, s: AttnShape, a: AttnDims) -> Result<()> {
        let (d, nwg) = (s.head_dim, if s.head_dim == 64 { 3 } else { 2 });
        let bq = 64 * nwg;
        let tiles = s.seq.div_ceil(bq);
        ensure!(s.batch <= 65535 && tiles <= 65535, "attention_fwd (wgmma): batch {} or {tiles} query tiles over the grid limit 65535", s.batch);
        let bytes = (bq + 4 * 128) * d * 2 + 1024 + 128;
        let grid_dim = (s.heads as u32, s.batch as u32, tiles as u32);
        if self.attn_forward == AttnForward::WgmmaSync {
            let c = LaunchConfig { grid_dim, block_dim: (128 * nwg as u32, 1, 1), shared_mem_bytes: bytes as u32 };
            let kernel = if d == 64 { WgmmaFwdKernel::D64 } else { WgmmaFwdKernel::D128 };
            return self.launch(c, WgmmaFwd { kernel, out, lse: lse.ptr, dtl: lse.dt(), qkv, a });
        }
        let width = s.qkv_width();
        let tq = bf16_3d_swizzled(qkv, s.batch, s.seq, width, 64, bq as u32)?;
        let tkv = bf16_3d_swizzled(qkv, s.batch, s.seq, width, 64, 128)?;
        let c = LaunchConfig { grid_dim, block_dim: (128 * (nwg as u32 + 1), 1, 1), shared_mem_bytes: bytes as u32 };
        let kernel = match (d == 64, self.attn_forward == AttnForward::WgmmaPingpong) {
            (true, false) => WgmmaTmaFwdKernel::D64,
            (false, false) => WgmmaTmaFwdKernel::D128,
            (true, true) => WgmmaTmaFwdKernel::Pp64,
            (false, true) => WgmmaTmaFwdKernel::Pp128,
        };
        self.launch(c, WgmmaTmaFwd { kernel, out, lse: lse.ptr, dtl: lse.dt(), tq, tkv, a })
    }

    pub(in crate::backend::cuda) fn attention_bwd(&mut self, dqkv: View, dout: View, qkv: View, out: View, lse: View, s: AttnShape) -> Result<()> {
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
            if self.cc == (9, 0) && self.attn_backward != AttnBackward::Fa2 {
                return self.attention_bwd_wgmma(dq.ptr, g.ptr, q.ptr, o, l, s, a);
            }
            return self.attention_bwd_fa2(dq.ptr, g.ptr, q.ptr, o, l, s, a);
        }
        let delta = self.scratch(n * s.heads * 4)?;
        let c = LaunchConfig { grid_dim: ((n * s.heads).div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch(c, SimpleBwdDelta { delta, dout: g.ptr, dtdo: g.dt(), out: o.ptr, dto: o.dt(), a, d: d as i32 })?;
        use SimpleBwdKernel::*;
        let v = variant(d)?;
        let k = SimpleBwd { kernel: [Dq32, Dq64, Dq96, Dq128][v], dqkv: dq.ptr, dtg: dq.dt(), dout: g.ptr, dtdo: g.dt(), qkv: q.ptr, dtq: q.dt(), lse: l.ptr, dtl: l.dt(), delta, a, hd: d as i32 };
        let tiles = s.seq.div_ceil(TILE);
        let dp = 32 * (v + 1);
        let smem = 2 * TILE * dp + 2 * TILE * (dp + 1);
        self.launch(cfg(tiles, s.heads, s.batch, smem), k)?;
        let smem = 2 * TILE * dp + 2 * TILE * (dp + 1) + 2 * TILE;
        self.launch(cfg(tiles, s.kv_heads, s.batch, smem), SimpleBwd { kernel: [Dkv32, Dkv64, Dkv96, Dkv128][v], ..k })
    }

    /// FlashAttention-2 backward: prep (delta, lse·log2e), dK/dV, dQ. The
    /// three kernels write disjoint parts of dqkv, so the result does not
    /// depend on launch order or scheduling.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd_fa2(&mut self, dq: u64, g: u64, q: u64, o: Dev, l: Dev, s: AttnShape, a: AttnDims) -> Result<()> {
        let d = s.head_dim;
        let tp = s.seq.div_ceil(64) * 64;
        let (delta, lse2) = self.attention_bwd_prep(g, &o, &l, s, a, tp)?;
        let (kv, qn) = if d == 64 { (Fa2BwdKernel::Dkv64, Fa2BwdKernel::Dq64) } else { (Fa2BwdKernel::Dkv128, Fa2BwdKernel::Dq128) };
        let k = Fa2Bwd { kernel: kv, dqkv: dq, dout: g, qkv: q, delta, lse2, a, tp: tp as i32 };
        let tiles = s.seq.div_ceil(64) as u32;
        let bytes = 6 * tile_bytes(64, d) + 4 * 64 * 4;
        let c = LaunchConfig { grid_dim: (tiles, s.kv_heads as u32, s.batch as u32), block_dim: (128, 1, 1), shared_mem_bytes: bytes as u32 };
        self.launch(c, k)?;
        let bytes = 6 * tile_bytes(64, d);
        let c = LaunchConfig { grid_dim: (tiles, s.heads as u32, s.batch as u32), block_dim: (128, 1, 1), shared_mem_bytes: bytes as u32 };
        self.launch(c, Fa2Bwd { kernel: qn, ..k })
    }

    /// delta = rowsum(dO ⊙ O) and lse·log2e, fp32, `tp` rows per head
    /// (fa2_bwd_prep, shared by both backwards): (delta, lse2).
    fn attention_bwd_prep(&mut self, g: u64, o: &Dev, l: &Dev, s: AttnShape, a: AttnDims, tp: usize) -> Result<(u64, u64)> {
        let rows = s.batch * s.heads * tp;
        let delta = self.scratch(rows * 4)?;
        let lse2 = self.scratch(rows * 4)?;
        let c = LaunchConfig { grid_dim: (rows.div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let prep = Fa2BwdPrep { delta, lse2, dout: g, dtdo: Elem::Bf16 as i32, out: o.ptr, dto: o.dt(), lse: l.ptr, dtl: l.dt(), a, d: s.head_dim as i32, tp: tp as i32 };
        self.launch(c, prep)?;
        Ok((delta, lse2))
    }

    /// Hopper backward (attention_wgmma_bwd.cu): prep, then dK/dV over
    /// 128-key tiles (grid kv heads x batch x key tiles) and dQ over
    /// 128-query tiles (heads x batch x query tiles); 256 threads each, or
    /// 384 warp-specialized (`Wgmma`). Rows padded to 128 (the dQ kernel's
    /// tile) for delta and lse2. Shared memory: dK/dV = K, V (128 keys) + 2
    /// Q and 2 dO buffers of BM queries + 2 x (lse2, delta); dQ = Q, dO (128
    /// queries) + 2 K and 2 V buffers of BK keys; + 1024 bytes to align tiles
    /// to the swizzle atom (+ 128 for the mbarriers of the `Wgmma` kernels).
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd_wgmma(&mut self, dq: u64, g: u64, q: u64, o: Dev, l: Dev, s: AttnShape, a: AttnDims) -> Result<()> {
        let d = s.head_dim;
        let tiles = s.seq.div_ceil(128);
        ensure!(s.batch <= 65535 && tiles <= 65535, "attention_bwd (wgmma): batch {} or {tiles} tiles over the grid limit 65535", s.batch);
        let tp = tiles * 128;
        let (delta, lse2) = self.attention_bwd_prep(g, &o, &l, s, a, tp)?;
        // BM: queries per dK/dV step; BK: keys per dQ step (the .cu's WGMMA_BWD_INSTANTIATE).
        let (bm, bk) = if d == 64 { (128, 128) } else { (64, 64) };
        let dkv_bytes = 2 * 128 * d * 2 + 4 * bm * d * 2 + 4 * bm * 4 + 1024;
        let dq_bytes = 2 * 128 * d * 2 + 4 * bk * d * 2 + 1024;
        let dkv_grid = (s.kv_heads as u32, s.batch as u32, tiles as u32);
        let dq_grid = (s.heads as u32, s.batch as u32, tiles as u32);
        if self.attn_backward == AttnBackward::Wgmma {
            let width = s.qkv_width();
            let map = |ptr: u64, cols: usize, rows: usize| bf16_3d_swizzled(ptr, s.batch, s.seq, cols, 64, rows as u32);
            let (kv, qn) = if d == 64 { (WgmmaTmaBwdKernel::Dkv64, WgmmaTmaBwdKernel::Dq64) } else { (WgmmaTmaBwdKernel::Dkv128, WgmmaTmaBwdKernel::Dq128) };
            let (tq, tdo, tkv) = (map(q, width, bm)?, map(g, s.heads * d, bm)?, map(q, width, 128)?);
            let c = LaunchConfig { grid_dim: dkv_grid, block_dim: (384, 1, 1), shared_mem_bytes: (dkv_bytes + 128) as u32 };
            self.launch(c, WgmmaTmaBwd { kernel: kv, dqkv: dq, delta, lse2, tq, tdo, tkv, a, tp: tp as i32 })?;
            let (tq, tdo, tkv) = (map(q, width, 128)?, map(g, s.heads * d, 128)?, map(q, width, bk)?);
            let c = LaunchConfig { grid_dim: dq_grid, block_dim: (384, 1, 1), shared_mem_bytes: (dq_bytes + 128) as u32 };
            return self.launch(c, WgmmaTmaBwd { kernel: qn, dqkv: dq, delta, lse2, tq, tdo, tkv, a, tp: tp as i32 });
        }
        let (kv, qn) = if d == 64 { (WgmmaBwdKernel::Dkv64, WgmmaBwdKernel::Dq64) } else { (WgmmaBwdKernel::Dkv128, WgmmaBwdKernel::Dq128) };
        let k = WgmmaBwd { kernel: kv, dqkv: dq, dout: g, qkv: q, delta, lse2, a, tp: tp as i32 };
        self.launch(LaunchConfig { grid_dim: dkv_grid, block_dim: (256, 1, 1), shared_mem_bytes: dkv_bytes as u32 }, k)?;
        self.launch(LaunchConfig { grid_dim: dq_grid, block_dim: (256, 1, 1), shared_mem_bytes: dq_bytes as u32 }, WgmmaBwd { kernel: qn, ..k })
    }
}
