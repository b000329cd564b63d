//! The op set every backend implements, one-for-one.
//!
//! Buffers live inside the backend and are named by [`BufId`]; a tensor is a
//! [`View`] (buffer, offset, length) into one of them. Views are plain `Copy`
//! values, so the model can hand out several views of the same flat buffer
//! (e.g. two parameter-gradient views for one layernorm backward) without
//! fighting the borrow checker. The price: an op must not be given an output
//! view that overlaps one of its inputs unless its docs say "in place".
//!
//! Conventions (row-major everywhere):
//! - `N` = rows = batch * seq positions; `C` = model width.
//! - Linear weights are stored `[out_features, in_features]` (PyTorch
//!   `nn.Linear`): `y = x · Wᵀ + b`.
//! - Parameter gradients are always ACCUMULATED (`+=`) so gradient
//!   accumulation is free; the trainer zeroes them once per optimizer step.
//! - Activation gradients are overwritten (`=`) unless the op says `+=`.
//! - All values are f32 in the interface. A backend may store `Compute`
//!   buffers in lower precision (the CUDA backend uses bf16); `F32` buffers
//!   are always full precision (master weights, grads, optimizer state);
//!   `Bf16` buffers hold bf16 on every backend (gradients under
//!   `train.grad_dtype = bf16`: an op adds its fp32 result and rounds once).
//!
//! Adding an op (the places it is written):
//! 1. the trait: one entry in [`backend_ops!`] (docs, signature, and a
//!    default body if other ops can compose it). [`Backend`] declares it,
//!    `cuda/mod.rs` forwards it and [`profile::Profiled`] times it from
//!    that entry (`profile_key!` in profile.rs if its time should be filed
//!    under another name, e.g. by matmul shape);
//! 2. the CUDA op's own files: `cuda/ops/<op>.rs`, an inherent
//!    `CudaBackend` method of the trait method's name and signature (it
//!    checks its views, picks a path and launches), with a `kernel!`
//!    struct per kernel, beside `cuda/ops/<op>.cu` with the kernels; a new
//!    `.cu` file adds one line to `kernel_modules!` in `cuda/ops/mod.rs`.
//!    A forgotten CUDA method is a compile error (the forwarding would
//!    recurse), and so is a launch whose arguments do not fit its struct;
//!    the lib test `kernel_structs_match_cu` checks each struct against
//!    its CUDA signature;
//! 3. the CPU twin: the readable reference `cpu/<op>.rs` and the trait
//!    method in `cpu/mod.rs` that checks the views and calls it.
//!
//! Then a parity test (tests/cuda_ops.rs) and a gradient check where the
//! op has a backward.

pub mod cpu;
pub mod cuda;
pub mod profile;
pub mod select;

use anyhow::Result;

/// Handle to a buffer owned by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufId(pub usize);

/// Storage class requested at allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// Always fp32: master weights, gradients (unless `train.grad_dtype =
    /// bf16`), optimizer state, losses.
    F32,
    /// Activations: fp32 on CPU, bf16 on CUDA.
    Compute,
    /// Token ids / targets (u32).
    U32,
    /// Bytes: 8-bit optimizer state codes (indices into a quantization map).
    U8,
    /// bf16 on every backend: the gradients under `train.grad_dtype =
    /// bf16`. CUDA stores 2 bytes; the CPU reference stores f32 values
    /// rounded to bf16 after each op that writes the buffer (only the ops
    /// that write gradients may: cpu/bf16_buffers.rs).
    Bf16,
}

impl DType {
    /// Bytes per element as stored. `Compute` is reported at its widest
    /// (fp32, the CPU storage); the CUDA backend stores it as bf16.
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 | DType::Compute | DType::U32 => 4,
            DType::Bf16 => 2,
            DType::U8 => 1,
        }
    }
}

/// A host↔device copy started by [`Backend::download_start`] or
/// [`Backend::upload_start`], finished by [`Backend::copy_wait`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "wait for the copy before touching its host memory"]
pub struct CopyTicket(pub usize);

impl CopyTicket {
    /// A copy that finished before its start call returned.
    pub const DONE: CopyTicket = CopyTicket(usize::MAX);
}

/// Host values to upload: f32, or bf16 bit patterns for a bf16 buffer.
#[derive(Clone, Copy, Debug)]
pub enum HostSrc<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// A point in a backend's stream of work ([`Backend::mark`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark(pub usize);

/// A contiguous range of elements inside one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub buf: BufId,
    pub off: usize,
    pub len: usize,
}

impl View {
    pub fn whole(buf: BufId, len: usize) -> Self {
        View { buf, off: 0, len }
    }
    /// Sub-view `[start, start+len)` relative to this view.
    pub fn sub(&self, start: usize, len: usize) -> Self {
        assert!(start + len <= self.len, "sub-view {start}+{len} outside view of {}", self.len);
        View { buf: self.buf, off: self.off + start, len }
    }
}

/// Shape of a causal attention call. `qkv` rows hold
/// `[q heads (H·D) | k heads (KV·D) | v heads (KV·D)]`; query head `h` reads
/// kv head `h / (H / KV)` (grouped-query attention).
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// Rotary position embedding parameters: the base `theta` and optional
/// Llama 3 frequency scaling. Both backends rotate with the same table of
/// per-pair inverse frequencies, [`Rope::inv_freq`], so they cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub theta: f32,
    pub llama3: Option<Llama3Scaling>,
}

/// Llama 3.1 / 3.2 `rope_scaling` (`rope_type: "llama3"`): long wavelengths
/// (above `original_max_seq / low_freq_factor`) are slowed down by `factor`,
/// short ones (below `original_max_seq / high_freq_factor`) kept, the band
/// between interpolated smoothly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_seq: usize,
}

impl Rope {
    /// Plain rotary positions with base `theta`.
    pub fn plain(theta: f32) -> Rope {
        Rope { theta, llama3: None }
    }

    /// The `head_dim / 2` inverse frequencies, pair `i` rotating by
    /// `pos · inv_freq[i]`. Computed in f32 with the operations and order of
    /// transformers (`_compute_default_rope_parameters` and
    /// `_compute_llama3_parameters`), so imported checkpoints see the angles
    /// they were trained with.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let d = head_dim as f32;
        let base: Vec<f32> = (0..head_dim / 2).map(|i| 1.0 / self.theta.powf((2 * i) as f32 / d)).collect();
        let Some(s) = self.llama3 else { return base };
        let old = s.original_max_seq as f64;
        let (low_wavelen, high_wavelen) = ((old / s.low_freq_factor as f64) as f32, (old / s.high_freq_factor as f64) as f32);
        let span = (s.high_freq_factor as f64 - s.low_freq_factor as f64) as f32;
        let two_pi = std::f64::consts::TAU as f32;
        // `scalar / tensor` in PyTorch is `tensor.reciprocal() * scalar`:
        // two roundings, reproduced here.
        base.into_iter()
            .map(|f| {
                let wavelen = (1.0 / f) * two_pi;
                if wavelen > low_wavelen {
                    f / s.factor
                } else if wavelen < high_wavelen {
                    f
                } else {
                    let smooth = ((1.0 / wavelen) * old as f32 - s.low_freq_factor) / span;
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }
}

/// Elements a [`Backend::copy_strided`] view spans: `rows` rows of `cols`
/// elements, `stride` apart (the last row ends after `cols`).
pub fn strided_len(rows: usize, cols: usize, stride: usize) -> usize {
    if rows == 0 { 0 } else { (rows - 1) * stride + cols }
}

/// Hyper-parameters of one fused AdamW step (PyTorch semantics).
#[derive(Clone, Copy, Debug)]
pub struct AdamWArgs {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count used for bias correction.
    pub step: u64,
    /// Multiplies the gradient before use (clipping factor).
    pub grad_scale: f32,
}

/// One contiguous run of parameters in an [`Backend::adamw_segments`] call:
/// `params[param_off .. param_off+len]` (and the same range of the grads)
/// with state `m/v[state_off .. state_off+len]`, decayed by `weight_decay`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamSegment {
    pub param_off: usize,
    pub state_off: usize,
    pub len: usize,
    pub weight_decay: f32,
}

impl AdamSegment {
    /// (params, grads, m, v) views of this segment.
    pub fn views(&self, params: BufId, grads: BufId, m: View, v: View) -> [View; 4] {
        let at = |buf| View { buf, off: self.param_off, len: self.len };
        [at(params), at(grads), m.sub(self.state_off, self.len), v.sub(self.state_off, self.len)]
    }
}

/// One tensor of an [`Backend::adamw8bit_segments`] call:
/// `params[param_off .. param_off+len]` (and the same range of the grads),
/// its codes `m/v_codes[code_off .. code_off+len]` and its
/// `ceil(len / QUANT_BLOCK)` absmax values from `m/v_absmax[block_off]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam8Segment {
    pub param_off: usize,
    pub code_off: usize,
    pub block_off: usize,
    pub len: usize,
    pub weight_decay: f32,
}

impl Adam8Segment {
    /// (params, grads, m codes, v codes, m absmax, v absmax) views of this segment.
    pub fn views(&self, params: BufId, grads: BufId, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View) -> [View; 6] {
        let at = |buf| View { buf, off: self.param_off, len: self.len };
        let blocks = self.len.div_ceil(QUANT_BLOCK);
        [at(params), at(grads), m_codes.sub(self.code_off, self.len), v_codes.sub(self.code_off, self.len), m_absmax.sub(self.block_off, blocks), v_absmax.sub(self.block_off, blocks)]
    }
}

/// Lion step (Chen et al. 2023), decoupled weight decay:
///   g = grad · grad_scale
///   p *= 1 - lr·wd
///   p -= lr · sign(beta1·m + (1-beta1)·g)      (sign(0) = 0)
///   m  = beta2·m + (1-beta2)·g
#[derive(Clone, Copy, Debug)]
pub struct LionArgs {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub weight_decay: f32,
    pub grad_scale: f32,
}

/// Sign descent (signSGD), decoupled weight decay:
///   p *= 1 - lr·wd;  p -= lr · sign(grad · grad_scale)   (sign(0) = 0)
#[derive(Clone, Copy, Debug)]
pub struct SignArgs {
    pub lr: f32,
    pub weight_decay: f32,
    pub grad_scale: f32,
}

/// Second-moment update plus preconditioning of a separate numerator, the
/// Adam denominator without touching parameters (APOLLO, COSMOS):
///   g   = grad · grad_scale
///   v   = beta2·v + (1-beta2)·g²
///   out = num / (sqrt(v) / sqrt(bc2) + eps),  bc2 = 1 - beta2^step
/// `bias_correction = false` uses bc2 = 1 (then `step` is ignored).
#[derive(Clone, Copy, Debug)]
pub struct PrecondArgs {
    pub beta2: f32,
    pub eps: f32,
    /// 1-based step count for the bias correction.
    pub step: u64,
    pub bias_correction: bool,
    pub grad_scale: f32,
}

impl PrecondArgs {
    /// `sqrt(1 - beta2^step)` (f64 like the AdamW bias corrections), or 1.
    pub fn bc2_sqrt(&self) -> f32 {
        if self.bias_correction {
            (1.0 - (self.beta2 as f64).powf(self.step as f64)).sqrt() as f32
        } else {
            1.0
        }
    }
}

/// Elements per block of the 8-bit optimizer state: one fp32 absmax each.
pub const QUANT_BLOCK: usize = 256;

/// The op set. See each method for exact semantics; `backend/cpu` is the
/// readable reference for all of them. The ops themselves are listed once,
/// in [`backend_ops!`] below; the methods written here are bookkeeping
/// (not timed by [`profile::Profiled`], written out by each backend).
pub trait Backend {
    fn name(&self) -> &'static str;
    /// Human-readable device, e.g. `NVIDIA H200` (used to look up peak FLOP/s).
    fn device_name(&self) -> String {
        self.name().to_string()
    }
    /// Allocate `len` zeroed elements.
    fn alloc(&mut self, len: usize, dtype: DType) -> Result<BufId>;
    /// Allocate `len` elements the caller overwrites entirely before any
    /// read (ZeRO's gathered units): a backend may skip the zeroing.
    fn alloc_for_overwrite(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        self.alloc(len, dtype)
    }
    fn free(&mut self, buf: BufId);
    /// Wait for queued work (no-op on CPU).
    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
    /// Peak bytes of device memory held so far (0 where not tracked).
    fn peak_memory_bytes(&self) -> u64 {
        0
    }
    /// Bytes of buffers allocated now (0 where not tracked).
    fn live_memory_bytes(&self) -> u64 {
        0
    }
    /// Records a point in the stream of submitted work, for timing phases
    /// without making the host wait (CUDA: an event on the stream; CPU: the
    /// clock, its ops being synchronous). Marks live until `clear_marks`.
    fn mark(&mut self) -> Result<Mark>;
    /// Milliseconds from mark `from` to mark `to` (waits for `to`'s work).
    fn elapsed_ms(&mut self, from: Mark, to: Mark) -> Result<f64>;
    /// Forgets every mark (the trainer calls it once per step).
    fn clear_marks(&mut self);

    backend_ops!(declare_ops);

    // ---- offload transfers (parallel::offload; CUDA: cuda/host_memory.rs).
    // The defaults are the synchronous twin every backend has: the same
    // calls, copies done before they return (what the CPU backend uses).

    /// Whether `Compute` buffers hold bf16 (CUDA) rather than f32 (CPU):
    /// the offload then uploads bf16 images of its master weights.
    fn compute_is_bf16(&self) -> bool {
        false
    }
    /// Page-locks `bytes` bytes of host memory at `ptr` so that copies
    /// from and to it run at full bus speed, asynchronously. Returns
    /// whether it did (the CPU backend: nothing to do, false).
    ///
    /// # Safety
    /// The memory must stay allocated until [`Backend::unpin_host`] (or
    /// the backend's end).
    unsafe fn pin_host(&mut self, _ptr: *const u8, _bytes: usize) -> Result<bool> {
        Ok(false)
    }
    /// Undoes [`Backend::pin_host`].
    ///
    /// # Safety
    /// `ptr` was pinned by `pin_host` and no copy from or to it is in flight.
    unsafe fn unpin_host(&mut self, _ptr: *const u8) {}
    /// Starts copying the F32 view `src` into `dst`, after every op queued
    /// so far, on a copy stream (the compute stream runs on). Finish with
    /// [`Backend::copy_wait`].
    ///
    /// # Safety
    /// `dst` must stay allocated and unread, and `src`'s buffer must not
    /// be freed or written, until `copy_wait` of the returned ticket.
    unsafe fn download_start(&mut self, src: View, dst: &mut [f32]) -> Result<CopyTicket> {
        self.download(src, dst)?;
        Ok(CopyTicket::DONE)
    }
    /// Starts copying host values into `dst` on the copy stream; every op
    /// queued after this call reads the new values (the device waits, not
    /// the host). [`HostSrc::Bf16`] needs a bf16 buffer (`Compute` on CUDA).
    ///
    /// # Safety
    /// `src` must stay allocated and unchanged until `copy_wait` of the
    /// returned ticket.
    unsafe fn upload_start(&mut self, dst: View, src: HostSrc<'_>) -> Result<CopyTicket> {
        match src {
            HostSrc::F32(v) => self.upload(dst, v)?,
            HostSrc::Bf16(v) => self.upload(dst, &v.iter().map(|&x| half::bf16::from_bits(x).to_f32()).collect::<Vec<f32>>())?,
        }
        Ok(CopyTicket::DONE)
    }
    /// Blocks the host until the copy is done.
    fn copy_wait(&mut self, _t: CopyTicket) -> Result<()> {
        Ok(())
    }
}

/// Every op of [`Backend`], written once: `backend_ops!(m)` hands this list
/// to macro `m`, which declares the trait methods ([`declare_ops!`]),
/// forwards them to `CudaBackend`'s methods of the same names
/// (cuda/mod.rs) or times them ([`profile::Profiled`]). An entry is a
/// trait method with `-> R;`, or `-> R = { default body };`.
macro_rules! backend_ops {
    ($m:ident) => {
        $m! {
            // ---- memory transfers -----------------------------------------
            fn upload(&mut self, dst: View, src: &[f32]) -> Result<()>;
            fn download(&mut self, src: View, dst: &mut [f32]) -> Result<()>;
            fn upload_u32(&mut self, dst: View, src: &[u32]) -> Result<()>;
            /// Copy host bytes into a `U8` view (8-bit optimizer state on resume).
            fn upload_u8(&mut self, dst: View, src: &[u8]) -> Result<()>;
            /// Copy a `U8` view to the host (8-bit optimizer state for checkpoints).
            fn download_u8(&mut self, src: View, dst: &mut [u8]) -> Result<()>;
            fn fill(&mut self, dst: View, value: f32) -> Result<()>;
            /// `dst = src` (same length).
            fn copy(&mut self, dst: View, src: View) -> Result<()>;
            /// Strided 2-D copy (a row block of one matrix into another; the
            /// layout transforms around Ulysses' all-to-alls): for `r < rows`,
            /// `c < cols`: `dst[r·dst_stride + c] = src[r·src_stride + c]`, or `+=`
            /// with `accumulate`. Each view starts at element (0, 0) and spans
            /// exactly [`strided_len`]`(rows, cols, stride)` elements; `cols` must
            /// not exceed either stride. `dst` must not overlap `src`.
            #[allow(clippy::too_many_arguments)]
            fn copy_strided(&mut self, dst: View, dst_stride: usize, src: View, src_stride: usize, rows: usize, cols: usize, accumulate: bool) -> Result<()>;

            // ---- elementwise --------------------------------------------------
            /// `out = a + b`.
            fn add(&mut self, out: View, a: View, b: View) -> Result<()>;
            /// `dst += src`.
            fn accumulate(&mut self, dst: View, src: View) -> Result<()>;
            /// `x *= s`.
            fn scale(&mut self, x: View, s: f32) -> Result<()>;
            /// Sum of squares of all elements (f64 accumulation), for the global
            /// gradient norm.
            fn sum_squares(&mut self, x: View) -> Result<f64>;
            /// `y = a·x + b·y` (same length). With `b == 0`, `y` is not read (NaNs
            /// in it are overwritten). Momentum buffers, Nesterov mixes, decoupled
            /// weight decay plus an update, Newton–Schulz combinations.
            fn axpby(&mut self, y: View, x: View, a: f32, b: f32) -> Result<()>;
            /// Muon's momentum with its Nesterov mix, `c = (1 - mu)·grad_scale`:
            /// `m = c·g + mu·m`, then `u = mu·m + c·g`; returns `Σ u²` (f64), the
            /// Frobenius norm² Newton–Schulz normalizes by. Each term rounds as
            /// [`Backend::axpby`] does: the default is three axpby calls and
            /// `sum_squares`, which a backend may fuse into one pass.
            fn muon_momentum(&mut self, m: View, u: View, g: View, mu: f32, grad_scale: f32) -> Result<f64> = {
                let c = (1.0 - mu) * grad_scale;
                self.axpby(m, g, c, mu)?;
                self.axpby(u, g, c, 0.0)?;
                self.axpby(u, m, mu, 1.0)?;
                self.sum_squares(u)
            };
            /// Sums of squares along one axis of the row-major `x[rows, cols]`
            /// (f64 accumulation in index order, stored as f32):
            /// `per_row`: `out[i] = Σ_j x[i,j]²` (`out` has `rows` elements);
            /// otherwise `out[j] = Σ_i x[i,j]²` (`cols` elements). Squared channel
            /// norms for APOLLO's channel-wise scaling.
            #[allow(clippy::too_many_arguments)]
            fn axis_sum_squares(&mut self, out: View, x: View, rows: usize, cols: usize, per_row: bool) -> Result<()>;
            /// Broadcast multiply IN PLACE on the row-major `x[rows, cols]`:
            /// `per_row`: `x[i,j] *= s[i]` (`s` has `rows` elements); otherwise
            /// `x[i,j] *= s[j]` (`cols` elements).
            fn scale_axis(&mut self, x: View, s: View, rows: usize, cols: usize, per_row: bool) -> Result<()>;

            // ---- embedding ----------------------------------------------------
            /// `out[n,:] = wte[tokens[n],:] (+ wpe[n % seq,:])`. out `[N,C]`.
            fn embed_fwd(&mut self, out: View, tokens: View, wte: View, wpe: Option<View>, seq: usize, c: usize) -> Result<()>;
            /// `dwte[tokens[n],:] += dout[n,:]`, `dwpe[n % seq,:] += dout[n,:]`.
            fn embed_bwd(&mut self, dwte: View, dwpe: Option<View>, dout: View, tokens: View, seq: usize, c: usize) -> Result<()>;

            // ---- matmul -------------------------------------------------------
            /// `out[M,N] = inp[M,K] · w[N,K]ᵀ (+ bias[N])`.
            #[allow(clippy::too_many_arguments)]
            fn linear_fwd(&mut self, out: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()>;
            /// `out[M,N] = residual[M,N] + inp[M,K] · w[N,K]ᵀ (+ bias[N])`: a
            /// projection added to the residual stream (a GPU adds `residual`
            /// in the matmul's epilogue, rounding once). `out` must not overlap
            /// `residual`.
            #[allow(clippy::too_many_arguments)]
            fn linear_residual_fwd(&mut self, out: View, inp: View, w: View, bias: Option<View>, residual: View, m: usize, k: usize, n: usize) -> Result<()> = {
                self.linear_fwd(out, inp, w, bias, m, k, n)?;
                self.accumulate(out, residual)
            };
            /// `pre = inp · wᵀ (+ bias)` and `act = gelu(pre)` (GPT-2's MLP up
            /// projection): a GPU fuses the GELU (and bias) into the matmul's
            /// epilogue, writing `pre` as its auxiliary output for the backward pass.
            #[allow(clippy::too_many_arguments)]
            fn linear_gelu_fwd(&mut self, pre: View, act: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> = {
                self.linear_fwd(pre, inp, w, bias, m, k, n)?;
                self.gelu_fwd(act, pre)
            };
            /// Backward of [`Backend::linear_gelu_fwd`]'s consumer: the linear layer
            /// `out = act · wᵀ (+ bias)` whose input is `act = gelu(pre)`.
            /// `dw += doutᵀ · act`, `dbias += Σ dout`, `dpre = (dout · w) ⊙ gelu'(pre)`
            /// (overwrite); `dact` is scratch for `dout · w` (a GPU fuses the GELU
            /// derivative into that matmul's epilogue and may leave it untouched).
            #[allow(clippy::too_many_arguments)]
            fn linear_gelu_bwd(&mut self, dpre: View, dact: View, dw: View, dbias: Option<View>, dout: View, act: View, w: View, pre: View, m: usize, k: usize, n: usize) -> Result<()> = {
                self.linear_bwd(dact, dw, dbias, dout, act, w, m, k, n)?;
                self.gelu_bwd(dpre, pre, dact)
            };
            /// `dinp[M,K] = dout · w` (overwrite), `dw[N,K] += doutᵀ · inp`,
            /// `dbias[N] += Σ_rows dout`.
            #[allow(clippy::too_many_arguments)]
            fn linear_bwd(&mut self, dinp: View, dw: View, dbias: Option<View>, dout: View, inp: View, w: View, m: usize, k: usize, n: usize) -> Result<()>;
            /// General matmul used by matrix optimizers:
            /// `c[M,N] = alpha · op(a) · op(b) + beta · c` where `op(a)` is `[M,K]`
            /// (`a` stored `[K,M]` when `trans_a`) and `op(b)` is `[K,N]` (`b` stored
            /// `[N,K]` when `trans_b`).
            #[allow(clippy::too_many_arguments)]
            fn gemm(&mut self, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()>;
            /// [`Backend::gemm`] with the operands rounded to bf16 (fp32
            /// accumulation and output) where the hardware has bf16 tensor cores:
            /// what Muon's reference runs its Newton–Schulz iteration in, ~10× the
            /// fp32 throughput. The CPU reference computes in fp32.
            #[allow(clippy::too_many_arguments)]
            fn gemm_bf16(&mut self, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> = {
                self.gemm(c, a, b, m, k, n, trans_a, trans_b, alpha, beta)
            };

            /// `d = alpha · op(a) · op(b) + beta · c` with the operands of
            /// [`Backend::gemm_bf16`] and `c` only read: saves the copy of `c` into
            /// `d` (Newton–Schulz' `a·X + B·X`). `d` must not overlap `a`, `b` or `c`.
            #[allow(clippy::too_many_arguments)]
            fn gemm_bf16_plus(&mut self, d: View, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> = {
                self.copy(d, c)?;
                self.gemm_bf16(d, a, b, m, k, n, trans_a, trans_b, alpha, beta)
            };

            // ---- normalization -------------------------------------------------
            /// LayerNorm over rows of `inp[N,C]`; saves `mean[N]`, `rstd[N]`.
            #[allow(clippy::too_many_arguments)]
            fn layernorm_fwd(&mut self, out: View, mean: View, rstd: View, inp: View, w: View, b: View, n: usize, c: usize, eps: f32) -> Result<()>;
            /// `dinp += …` (the residual stream accumulates), `dw += …`, `db += …`.
            #[allow(clippy::too_many_arguments)]
            fn layernorm_bwd(&mut self, dinp: View, dw: View, db: View, dout: View, inp: View, w: View, mean: View, rstd: View, n: usize, c: usize) -> Result<()>;
            /// RMSNorm: `out = inp · rstd · w`, `rstd = 1/sqrt(mean(inp²) + eps)`.
            #[allow(clippy::too_many_arguments)]
            fn rmsnorm_fwd(&mut self, out: View, rstd: View, inp: View, w: View, n: usize, c: usize, eps: f32) -> Result<()>;
            /// `dinp += …`, `dw += …`.
            #[allow(clippy::too_many_arguments)]
            fn rmsnorm_bwd(&mut self, dinp: View, dw: View, dout: View, inp: View, w: View, rstd: View, n: usize, c: usize) -> Result<()>;
            /// The residual add and the next RMSNorm: `sum = a + b`, then
            /// [`Backend::rmsnorm_fwd`] of `sum` (a GPU reads the rows once).
            #[allow(clippy::too_many_arguments)]
            fn add_rmsnorm_fwd(&mut self, sum: View, out: View, rstd: View, a: View, b: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> = {
                self.add(sum, a, b)?;
                self.rmsnorm_fwd(out, rstd, sum, w, n, c, eps)
            };
            /// The residual add and the next LayerNorm: `sum = a + b`, then
            /// [`Backend::layernorm_fwd`] of `sum` (a GPU reads the rows once).
            #[allow(clippy::too_many_arguments)]
            fn add_layernorm_fwd(&mut self, sum: View, out: View, mean: View, rstd: View, a: View, b: View, w: View, bias: View, n: usize, c: usize, eps: f32) -> Result<()> = {
                self.add(sum, a, b)?;
                self.layernorm_fwd(out, mean, rstd, sum, w, bias, n, c, eps)
            };

            // ---- activations --------------------------------------------------
            /// GELU, tanh approximation (GPT-2's `gelu_new`).
            fn gelu_fwd(&mut self, out: View, inp: View) -> Result<()>;
            /// `dinp = dout · gelu'(inp)` (overwrite).
            fn gelu_bwd(&mut self, dinp: View, inp: View, dout: View) -> Result<()>;
            /// `inp` rows are `[gate (F) | up (F)]`; `out[n,f] = silu(gate) · up`.
            fn swiglu_fwd(&mut self, out: View, inp: View, n: usize, f: usize) -> Result<()>;
            /// `dinp[N,2F] = …` (overwrite).
            fn swiglu_bwd(&mut self, dinp: View, inp: View, dout: View, n: usize, f: usize) -> Result<()>;

            // ---- attention ----------------------------------------------------
            /// Rotary embedding IN PLACE on the q and k heads of `qkv` (Hugging Face
            /// Llama "rotate_half" convention: element `i` pairs with `i + D/2`,
            /// angle `pos · rope.inv_freq(D)[i]` in f32, position = row % seq).
            fn rope_fwd(&mut self, qkv: View, shape: AttnShape, rope: Rope) -> Result<()>;
            /// Inverse rotation IN PLACE on the q and k parts of `dqkv`.
            fn rope_bwd(&mut self, dqkv: View, shape: AttnShape, rope: Rope) -> Result<()>;
            /// Causal attention, scale `1/sqrt(D)`. `out[N, H·D]`; saves the
            /// log-sum-exp of each score row in `lse[B,H,T]` for the backward pass.
            fn attention_fwd(&mut self, out: View, lse: View, qkv: View, shape: AttnShape) -> Result<()>;
            /// `dqkv = …` (overwrite) from `dout[N, H·D]`.
            fn attention_bwd(&mut self, dqkv: View, dout: View, qkv: View, out: View, lse: View, shape: AttnShape) -> Result<()>;

            // ---- loss ---------------------------------------------------------
            /// Fused softmax cross-entropy over `logits[N,V]` whose first `classes`
            /// columns are the classes (the rest is vocabulary padding: not part of
            /// the softmax, gradient 0). Writes the per-row loss to `losses[N]` (0
            /// where `targets[n] == IGNORE`). If `dlogits` is given, writes
            /// `(softmax - onehot) · grad_scale` there (overwrite; may be the same
            /// view as `logits`: in place). Probabilities are never stored.
            #[allow(clippy::too_many_arguments)]
            fn softmax_xent(&mut self, losses: View, dlogits: Option<View>, logits: View, targets: View, n: usize, v: usize, classes: usize, grad_scale: f32) -> Result<()>;

            // ---- optimizer ----------------------------------------------------
            /// Fused AdamW over a flat range (PyTorch semantics, decoupled decay).
            fn adamw(&mut self, params: View, grads: View, m: View, v: View, args: AdamWArgs) -> Result<()>;
            /// [`Backend::adamw`] over several segments of one parameter buffer in
            /// one call (each with its own weight decay; `args.weight_decay` is
            /// ignored). A model's decayed matrices and undecayed norms interleave in
            /// the layout: a GPU does them all in one launch instead of one per run.
            #[allow(clippy::too_many_arguments)]
            fn adamw_segments(&mut self, params: BufId, grads: BufId, m: View, v: View, segs: &[AdamSegment], args: AdamWArgs) -> Result<()> = {
                for s in segs {
                    let [p, g, sm, sv] = s.views(params, grads, m, v);
                    self.adamw(p, g, sm, sv, AdamWArgs { weight_decay: s.weight_decay, ..args })?;
                }
                Ok(())
            };
            /// Fused Lion step over a flat range (see [`LionArgs`]); `m` is F32.
            fn lion(&mut self, params: View, grads: View, m: View, args: LionArgs) -> Result<()>;
            /// Sign descent over a flat range (see [`SignArgs`]): FRUGAL's
            /// state-free part.
            fn sign_descent(&mut self, params: View, grads: View, args: SignArgs) -> Result<()>;
            /// Update the second moment `v` from `grads` and write the
            /// preconditioned `num` to `out` (see [`PrecondArgs`]). All views have
            /// the same length; `out` must not overlap the others.
            fn rms_precondition(&mut self, out: View, num: View, v: View, grads: View, args: PrecondArgs) -> Result<()>;
            /// Blockwise 8-bit AdamW (bitsandbytes semantics) over a flat range of
            /// `n` elements. `m_codes`/`v_codes` are `U8` views of `n` codes;
            /// `m_absmax`/`v_absmax` are F32 views of `ceil(n / QUANT_BLOCK)` values,
            /// block `k` covering elements `[k·QUANT_BLOCK, (k+1)·QUANT_BLOCK)` of
            /// the view. Codes index the fixed dynamic maps of
            /// `optim::quant_map` (signed map for m, unsigned for v). Per block:
            /// `m = signed[m_code]·m_absmax`, `v = unsigned[v_code]·v_absmax`; the
            /// fp32 AdamW step of [`Backend::adamw`] with those m, v (parameters
            /// use the updated fp32 m, v); then new `absmax = max |·|` over the
            /// block and each value is stored as the code nearest to
            /// `value / absmax` (absmax 0: all values are 0, codes of 0.0).
            #[allow(clippy::too_many_arguments)]
            fn adamw8bit(&mut self, params: View, grads: View, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, args: AdamWArgs) -> Result<()>;
            /// [`Backend::adamw8bit`] over several tensors of one parameter buffer
            /// in one call (each with its own weight decay; `args.weight_decay` is
            /// ignored): a GPU updates every 8-bit tensor of a model in one launch
            /// instead of one per tensor.
            #[allow(clippy::too_many_arguments)]
            fn adamw8bit_segments(&mut self, params: BufId, grads: BufId, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, segs: &[Adam8Segment], args: AdamWArgs) -> Result<()> = {
                for s in segs {
                    let [p, g, mc, vc, ma, va] = s.views(params, grads, m_codes, v_codes, m_absmax, v_absmax);
                    self.adamw8bit(p, g, mc, vc, ma, va, AdamWArgs { weight_decay: s.weight_decay, ..args })?;
                }
                Ok(())
            };

            // ---- 1-bit compression (1-bit Adam's compressed all-reduce) ----------
            /// Compress `x` to one sign bit per value and one scale per block of
            /// `block` values (`block` a positive multiple of 8; the last block may
            /// be shorter): `scales[k] = sqrt(Σ x² / n_k)` over block `k`'s `n_k`
            /// values (f64 sum, stored as f32), so `scale·sign` keeps the block's
            /// l2 norm; bit `j` of byte `i` of `bits` (a `U8` view) is 1 when
            /// `x[8i + j] >= 0` (sign(0) = +1), bits past the end of `x` are 0.
            /// `bits` has `ceil(n / 8)` bytes, `scales` `ceil(n / block)` values.
            fn sign_compress(&mut self, bits: View, scales: View, x: View, block: usize) -> Result<()>;
            /// The inverse, scaled and mixed: `out[i] = alpha·d_i + beta·out[i]`
            /// with `d_i = ±scales[i / block]` (+ where bit `i` of `bits` is 1),
            /// rounded like [`Backend::axpby`] of `d` (with `beta == 0`, `out` is
            /// not read). Error feedback (`e = x - d`: `alpha = -1, beta = 1` on a
            /// copy of x) and the server's average (`alpha = 1/world, beta = 1`)
            /// are calls of this op.
            #[allow(clippy::too_many_arguments)]
            fn sign_decompress(&mut self, out: View, bits: View, scales: View, block: usize, alpha: f32, beta: f32) -> Result<()>;

            /// Called after the optimizer changed `params` (a view of the F32 master
            /// weights) so a backend holding low-precision copies can refresh them.
            fn params_changed(&mut self, _params: View) -> Result<()> = {
                Ok(())
            };
        }
    };
}
pub(crate) use backend_ops;

/// Declares the ops of [`backend_ops!`] as trait methods.
macro_rules! declare_ops {
    ($( $(#[$m:meta])* fn $name:ident(&mut $s:ident $(, $a:ident : $t:ty)* $(,)?) -> $r:ty $(= $body:block)? ; )*) => {
        $( declare_ops!(@one [$(#[$m])* fn $name(&mut $s $(, $a: $t)*) -> $r] $($body)?); )*
    };
    (@one [$($sig:tt)*]) => { $($sig)*; };
    (@one [$($sig:tt)*] $body:block) => { $($sig)* $body };
}
use declare_ops;

/// Target id that contributes no loss and no gradient.
pub const IGNORE: u32 = u32::MAX;
