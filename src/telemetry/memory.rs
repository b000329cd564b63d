//! Memory estimate of one training process — one rank under ZeRO
//! (`dist.world`, `dist.zero_stage`) and Ulysses (`dist.sp`: each rank
//! holds seq_len / sp tokens): what `info` prints and what a run can be
//! checked against.
//!
//! Precision follows the device (shared/DESIGN.md, "Mixed precision"):
//! - `cpu`: fp32 weights, fp32 gradients, fp32 activations.
//! - `cuda`: fp32 master weights plus a bf16 compute copy (6 B/param), fp32
//!   gradients, bf16 activations; ZeRO-3 gathers units in bf16 (2 B/param,
//!   no fp32 copy). `train.grad_dtype = bf16`: 2 B/param of gradients (the
//!   CPU reference stores them as bf16-valued f32: 4).
//!
//! Softmax statistics (norm mean/rstd, attention log-sum-exp) stay fp32 on
//! both devices. Logits are an activation (bf16 on cuda): the fused
//! softmax-cross-entropy reads them and does its math in fp32. The
//! backward's activation gradients and the other buffers the passes keep
//! for the whole run are counted apart ([`scratch_count`]); per-op
//! scratch, library workspaces (cuBLASLt) and the allocator's slack are
//! not counted.

use crate::config::{Config, Mlp, Norm};
use crate::model::layout::{ParamKind, ParamLayout};
use crate::model::Recompute;
use crate::optim::{self, GroupPlan};
use crate::parallel::Partition;
use anyhow::Result;

const FP32: u64 = 4;
const BF16: u64 = 2;

/// Bytes of one training process, by what they hold.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    pub params: u64,
    pub weights: u64,
    pub grads: u64,
    /// `None` when the optimizer settings do not fit the model (see
    /// [`optimizer_groups`] for the reason).
    pub optimizer_state: Option<u64>,
    pub activations: u64,
    /// The passes' buffers besides the saved activations ([`scratch_count`]).
    pub scratch: u64,
    /// ZeRO's per-unit buffers at their peak: gathered weights (stage 3)
    /// and a unit's gradients before their reduce-scatter (stages 2–3).
    pub comm_buffers: u64,
    /// Ulysses' scratch (`dist.sp` > 1): send and receive buffers of the
    /// all-to-alls and the backward's gathered dout and dqkv.
    pub sp_buffers: u64,
}

impl MemoryEstimate {
    /// Sum of the parts; an unknown optimizer state counts as zero (the
    /// report says so next to the total).
    pub fn total(&self) -> u64 {
        self.weights + self.grads + self.optimizer_state.unwrap_or(0) + self.activations + self.scratch + self.comm_buffers + self.sp_buffers
    }
}

/// Optimizer state per group of tensors, exact, from the layout: which
/// tensors get which update rule and the bytes each group's state takes
/// (`optim::plan`, the same numbers the optimizer allocates). An error when
/// the settings do not fit the model (e.g. a rank above a matrix side).
pub fn optimizer_groups(cfg: &Config) -> Result<Vec<GroupPlan>> {
    optim::plan(&cfg.optimizer, &ParamLayout::new(&cfg.model))
}

/// Optimizer-state bytes per parameter over the whole model (total state /
/// total parameters). Per-group values: [`optimizer_groups`].
pub fn state_bytes_per_param(cfg: &Config) -> Result<f64> {
    let groups = optimizer_groups(cfg)?;
    let bytes: u64 = groups.iter().map(|g| g.state_bytes).sum();
    let params: usize = groups.iter().map(|g| g.params).sum();
    Ok(bytes as f64 / params.max(1) as f64)
}

/// Parameters by kind (empty kinds left out), as other frameworks count
/// them: the padding of the vocabulary and of a SwiGLU MLP's width (always
/// zero) is left out; see [`padding_params`].
pub fn param_counts(cfg: &Config) -> Vec<(ParamKind, usize)> {
    let layout = ParamLayout::new(&cfg.model.unpadded());
    let order = [ParamKind::Embedding, ParamKind::Position, ParamKind::Matrix, ParamKind::Bias, ParamKind::Norm, ParamKind::Head];
    order
        .iter()
        .map(|&kind| (kind, layout.params.iter().filter(|p| p.kind == kind).map(|p| p.numel()).sum::<usize>()))
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// Elements of the padding (vocabulary rows of the embedding and head,
/// SwiGLU hidden units): held in memory, not counted as parameters.
pub fn padding_params(cfg: &Config) -> usize {
    ParamLayout::new(&cfg.model).total - ParamLayout::new(&cfg.model.unpadded()).total
}

/// Bytes per element of (weights, gradients, activations) on a device,
/// gradients as `train.grad_dtype` stores them.
fn precision(device: &str, grad_dtype: &str) -> (u64, u64, u64) {
    match (device, grad_dtype) {
        ("cuda", "bf16") => (FP32 + BF16, BF16, BF16),
        ("cuda", _) => (FP32 + BF16, FP32, BF16),
        _ => (FP32, FP32, FP32),
    }
}

/// One rank's memory. Without ZeRO (world 1 or stage 0) every rank holds
/// everything; with it, the rank with the largest shard is reported (the
/// one that runs out first). See `parallel::zero` for what each stage keeps.
pub fn estimate(cfg: &Config) -> MemoryEstimate {
    let layout = ParamLayout::new(&cfg.model);
    let params = layout.total as u64;
    let (w, g, act) = precision(&cfg.device, &cfg.train.grad_dtype);
    let activations = activation_bytes(cfg, act);
    let scratch = {
        let c = scratch_count(cfg);
        c.act * act + c.fp32 * FP32
    };
    let sp_buffers = act * sp_scratch(cfg);
    let (world, stage) = (cfg.dist.world.max(1), cfg.dist.zero_stage);
    if cfg.offload.enabled() {
        // parallel::offload: the device keeps only the compute-dtype weights
        // (bf16 on CUDA; the fp32 master is on the host) and each unit's
        // gradients from its backward until its copy to the host lands —
        // all of them when accumulating (across micro-batches) or clipping
        // (the norm comes before any unit leaves the device).
        let part = Partition::new(&cfg.model, &layout, 1, false);
        let all_grads = cfg.train.grad_accum > 1 || cfg.train.grad_clip != 0.0;
        let (grads, comm_buffers) = if all_grads { (g * params, 0) } else { (0, offload_grad_buffers(cfg, &part)) };
        let weights = if cfg.offload.params != "none" { act * streamed_window(cfg, &part) } else { act * params };
        // offload.gpu_gb: the units kept on the device add their fp32
        // master and optimizer state; with clipping, a step copies the
        // unit's part of the whole gradient buffer into one of its own.
        let gpu = crate::parallel::offload::budget::gpu_units(cfg).unwrap_or_default();
        let copy = if all_grads { FP32 * gpu.biggest } else { 0 };
        return MemoryEstimate { params, weights: weights + gpu.master, grads, optimizer_state: Some(gpu.state), activations, scratch, comm_buffers: comm_buffers + copy, sp_buffers: 0 };
    }
    if stage == 0 {
        let optimizer_state = optimizer_groups(cfg).ok().map(|g| g.iter().map(|g| g.state_bytes).sum());
        return MemoryEstimate { params, weights: w * params, grads: g * params, optimizer_state, activations, scratch, comm_buffers: 0, sp_buffers };
    }
    let whole = crate::optim::groups::MATRIX_OPTIMIZERS.contains(&cfg.optimizer.name.as_str());
    let part = Partition::new(&cfg.model, &layout, world, whole);
    let rank = (0..world).max_by_key(|&r| part.shard_len(r)).unwrap_or(0);
    let shard = part.shard_len(rank) as u64;
    let optimizer_state = optim::plan(&cfg.optimizer, &part.shard_layout(&layout, rank)).ok().map(|g| g.iter().map(|g| g.state_bytes).sum());
    // Stages 1–2 keep every weight for the passes (and stage 1 every
    // gradient) besides the shard's fp32 master and gradients; in one
    // process the full buffers are the shard's.
    let copy = if world == 1 { 0 } else { FP32 * shard };
    let weights = if stage <= 2 { w * params + copy } else { FP32 * shard };
    // (bf16 gradients run in one process only: `copy` is 0 then.)
    let grads = if stage == 1 { g * params + copy } else { g * shard };
    MemoryEstimate { params, weights, grads, optimizer_state, activations, scratch, comm_buffers: unit_buffers(cfg, &part, stage, act), sp_buffers }
}

/// Ulysses' elements per rank for one micro-batch (`dist.sp` = P > 1):
/// (kept per block: the gathered q, k, v and attention output, all
/// positions of H/P heads; scratch: send, receive, gathered dqkv and dout).
/// KVp = max(KV/P, 1) kv heads per rank (replicated when KV < P).
fn sp_elements(cfg: &Config) -> (u64, u64) {
    let (m, p) = (&cfg.model, cfg.dist.sp as u64);
    if p <= 1 {
        return (0, 0);
    }
    let s = (cfg.train.batch_size * cfg.train.seq_len) as u64;
    let (hp, kvp, d) = (m.n_heads as u64 / p, (m.n_kv_heads as u64 / p).max(1), m.head_dim() as u64);
    let (qkv, out) = (s * (hp + 2 * kvp) * d, s * hp * d);
    (qkv + out, 3 * qkv + out)
}

/// Ulysses' scratch elements (activation dtype), see [`sp_elements`].
fn sp_scratch(cfg: &Config) -> u64 {
    sp_elements(cfg).1
}

/// The longest `train.seq_len` (batch 1, a multiple of 64 · `dist.sp`)
/// whose estimated memory per rank fits in `bytes`, all other settings as
/// in `cfg`; learned positions cap it at `model.max_seq_len` (the table),
/// rotary ones do not. `None` when not even the shortest fits.
pub fn longest_seq(cfg: &Config, bytes: u64) -> Option<usize> {
    let step = 64 * cfg.dist.sp.max(1);
    let fits = |steps: usize| {
        let mut c = cfg.clone();
        c.train.batch_size = 1;
        c.train.seq_len = steps * step;
        if c.model.positions == crate::config::Positions::Rope {
            c.model.max_seq_len = c.train.seq_len;
        }
        estimate(&c).total() <= bytes
    };
    let cap = if cfg.model.positions == crate::config::Positions::Learned { cfg.model.max_seq_len / step } else { usize::MAX / (4 * step) };
    if cap == 0 || !fits(1) {
        return None;
    }
    // Memory grows with the sequence: double, then bisect.
    let (mut lo, mut hi) = (1usize, 2usize);
    while hi <= cap && fits(hi) {
        lo = hi;
        hi = hi.saturating_mul(2);
    }
    let mut hi = hi.min(cap + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    Some(lo * step)
}

/// Peak bytes of ZeRO's per-unit buffers over one micro-batch, walked in
/// the order the passes call the store (model/forward.rs, model/mod.rs's
/// loss loop, model/backward.rs) with what `parallel::zero` keeps alive:
/// - stage 3: gathered weights (`wb` bytes each: the `Compute` dtype) of
///   the fetched unit and of the one prefetched beside it (the next block
///   in forward, the head after the last block, the previous block in
///   backward; none at world 1, where there is nothing to overlap); the
///   head's gather brings the tied embeddings;
/// - stages 2–3 over several ranks: fp32 gradients of the unit whose
///   backward runs plus the previous unit's, still being reduce-scattered;
///   tied embeddings keep their buffer from the head's backward to the end.
///   At world 1 the gradients go straight into the shard: none.
fn unit_buffers(cfg: &Config, part: &Partition, stage: u32, wb: u64) -> u64 {
    if stage < 2 {
        return 0;
    }
    let len = |u: usize| part.units[u].len() as u64;
    let (embed, head, layers) = (0, part.units.len() - 1, part.units.len() - 2);
    let layer = |l: usize| 1 + l;
    let w = |u: usize| if stage == 3 { wb * len(u) } else { 0 };
    let unit_grads = if part.world > 1 { FP32 } else { 0 };
    let g = |u: usize| unit_grads * len(u);
    let ahead = |u: usize| if part.world > 1 { w(u) } else { 0 };
    let tied = cfg.model.tied_embeddings;
    let mut peak = w(embed);
    // Forward: block l fetched, the next unit prefetched.
    for l in 0..layers {
        let next = if l + 1 < layers { layer(l + 1) } else { head };
        peak = peak.max(w(layer(l)) + ahead(next));
    }
    // The loss loop: the head's weights and gradients (with the tied
    // embeddings').
    let head_units = if tied { len(head) + len(embed) } else { len(head) };
    let head_w = if stage == 3 { wb * head_units } else { 0 };
    peak = peak.max(head_w + unit_grads * head_units);
    // Backward: block l's weights and gradients, the previous block's
    // weights prefetched, the unit after it still reducing.
    let kept = if tied { g(embed) } else { 0 };
    for l in (0..layers).rev() {
        let reducing = if l + 1 < layers { g(layer(l + 1)) } else { g(head) };
        let prefetched = if l > 0 { ahead(layer(l - 1)) } else { 0 };
        peak = peak.max(kept + reducing + w(layer(l)) + g(layer(l)) + prefetched);
    }
    let last_block = if layers > 0 { g(layer(0)) } else { g(head) };
    peak.max(if tied { kept } else { last_block + g(embed) })
}

/// An offloaded run's gradient buffers at their peak: in backward order,
/// the unit whose backward runs and the `COPY_LAG` before it whose copies
/// to the host are in flight, plus (tied embeddings) the embeddings'
/// buffer, which accumulates from the head's backward to the end.
fn offload_grad_buffers(cfg: &Config, part: &Partition) -> u64 {
    let lens: Vec<u64> = part.units.iter().map(|r| r.len() as u64).collect();
    let tied = cfg.model.tied_embeddings;
    let backward: Vec<u64> = lens.iter().skip(usize::from(tied)).rev().copied().collect();
    let lag = crate::parallel::offload::COPY_LAG;
    let window = (0..backward.len()).map(|k| backward[k.saturating_sub(lag)..=k].iter().sum::<u64>()).max().unwrap_or(0);
    FP32 * (window + if tied { lens[0] } else { 0 })
}

/// `offload.params = cpu | nvme` (parallel::offload::stream): elements of the
/// weights on the device at their peak, bounded by the two largest
/// neighbouring units (the one computing and the one uploaded ahead) plus
/// the embeddings when the head reads them (tied).
fn streamed_window(cfg: &Config, part: &Partition) -> u64 {
    let lens: Vec<u64> = part.units.iter().map(|r| r.len() as u64).collect();
    let pair = lens.windows(2).map(|w| w[0] + w[1]).max().unwrap_or(lens[0]);
    pair + if cfg.model.tied_embeddings { lens[0] } else { 0 }
}

/// Element counts of what the forward pass keeps for backward, split by
/// storage type: `act` elements are stored in the activation dtype, `fp32`
/// elements always in fp32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActivationCount {
    pub act: u64,
    pub fp32: u64,
}

/// Saved activations of one micro-batch of N = batch_size · seq_len tokens,
/// with C = d_model, H/KV = query/kv heads, D = head_dim, F = d_ff and V =
/// vocab as padded in the model.
///
/// Per layer (llm.c-style explicit forward with a flash-style attention
/// kernel that keeps only the log-sum-exp, never the S×S scores):
///
/// `recompute` below is `train.recompute` (elementwise: the dropped tensors
/// live in one shared scratch); `train.checkpoint_layers` keeps only each
/// block's output per layer (with `checkpoint_keep_attention` also the
/// attention output and log-sum-exp) and one block's worth of everything
/// else.
///
/// | saved tensor                         | elements        | dtype | recompute |
/// |--------------------------------------|-----------------|-------|-----------|
/// | ln1 output                           | N·C             | act   | dropped   |
/// | ln1 mean (layernorm only) + rstd     | N (+N)          | fp32  | kept      |
/// | qkv                                  | N·(H+2·KV)·D    | act   | kept      |
/// | attention output                     | N·H·D           | act   | kept      |
/// | attention log-sum-exp                | N·H             | fp32  | kept      |
/// | residual after attention (+proj)     | N·C             | act   | kept      |
/// | ln2 output                           | N·C             | act   | dropped   |
/// | ln2 mean (layernorm only) + rstd     | N (+N)          | fp32  | kept      |
/// | fc output (gelu: F, swiglu: 2F)      | N·F or N·2F     | act   | kept      |
/// | gelu / swiglu output                 | N·F             | act   | dropped   |
/// | residual after MLP (+proj) = block out | N·C           | act   | kept      |
///
/// The projections write straight into the residual stream, so their
/// outputs are not kept apart. Once per model: the embedding output N·C,
/// ln_f output N·C and its stats, and the logits of one chunk of rows,
/// min(N, `train.logits_chunk`)·V (activation dtype).
///
/// With `dist.sp` = P > 1, N is this rank's batch_size · seq_len / P tokens,
/// and each block also keeps Ulysses' gathered q, k, v and attention output
/// (S·(H/P + 2·KVp)·D + S·(H/P)·D per sequence, [`sp_elements`]); whole-block
/// checkpointing then keeps one block's worth of them and never keeps the
/// attention output (`parallel::ulysses::recompute`).
pub fn activation_count(cfg: &Config) -> ActivationCount {
    let m = &cfg.model;
    let n = (cfg.train.batch_size * cfg.train.seq_len / cfg.dist.sp.max(1)) as u64;
    let gathered = sp_elements(cfg).0;
    let (c, h, kv, d, f, v) = (m.d_model as u64, m.n_heads as u64, m.n_kv_heads as u64, m.head_dim() as u64, m.padded_ff() as u64, m.padded_vocab() as u64);
    let stats = if m.norm == Norm::Layernorm { 2 * n } else { n };
    let fc_out = if m.mlp == Mlp::Swiglu { 2 * f } else { f };
    // Outputs that are cheap to recompute from kept inputs and kept stats.
    let recomputable = 2 * n * c + n * f;
    let block_out = n * c;
    let inner = n * (h + 2 * kv) * d + n * h * d + n * c + n * fc_out;
    let per_block_fp32 = 2 * stats + n * h;
    let layers = m.n_layers as u64;
    // The logits exist one chunk of rows at a time (`train.logits_chunk`).
    let logit_rows = crate::model::activations::logit_rows(n as usize, cfg.train.logits_chunk) as u64;
    let once = ActivationCount { act: 2 * n * c + logit_rows * v, fp32: stats };
    let (per_layer, shared) = match crate::parallel::ulysses::recompute(&cfg.train, cfg.dist.sp) {
        Recompute::Off => (ActivationCount { act: inner + block_out + recomputable, fp32: per_block_fp32 }, ActivationCount::default()),
        Recompute::Elementwise => (ActivationCount { act: inner + block_out, fp32: per_block_fp32 }, ActivationCount { act: n * c + n * f, fp32: 0 }),
        // Each block keeps its output (the next block's input); one block's
        // worth of everything else is shared.
        Recompute::Layers { keep_attention: false } => (ActivationCount { act: block_out, fp32: 0 }, ActivationCount { act: inner + recomputable, fp32: per_block_fp32 }),
        Recompute::Layers { keep_attention: true } => {
            let (att, lse) = (n * h * d, n * h);
            (ActivationCount { act: block_out + att, fp32: lse }, ActivationCount { act: inner - att + recomputable, fp32: per_block_fp32 - lse })
        }
    };
    let sp_kept = if matches!(crate::parallel::ulysses::recompute(&cfg.train, cfg.dist.sp), Recompute::Layers { .. }) { gathered } else { layers * gathered };
    ActivationCount { act: layers * per_layer.act + shared.act + once.act + sp_kept, fp32: layers * per_layer.fp32 + shared.fp32 + once.fp32 }
}

/// Elements of the buffers the passes keep besides the saved activations
/// (model/activations.rs), for one micro-batch of N tokens: the backward's
/// gradients of the residual stream and of a norm's output (N·C each), the
/// two buffers the attention and MLP halves of a block's backward share
/// (N·max((H+2·KV)·D, fc width) and N·max(H·D, F)), the projections'
/// output (N·C), all in the activation dtype; token ids, targets and
/// per-token losses (N each, 4 bytes), and with RMSNorm one N-element
/// stand-in for the norm means it never computes.
pub fn scratch_count(cfg: &Config) -> ActivationCount {
    let m = &cfg.model;
    let n = (cfg.train.batch_size * cfg.train.seq_len / cfg.dist.sp.max(1)) as u64;
    let (c, d, f) = (m.d_model as u64, m.head_dim() as u64, m.padded_ff() as u64);
    let (qkv, att) = ((m.n_heads + 2 * m.n_kv_heads) as u64 * d, m.n_heads as u64 * d);
    let fc = if m.mlp == Mlp::Swiglu { 2 * f } else { f };
    let unused_mean = if m.norm == Norm::Layernorm { 0 } else { n };
    ActivationCount { act: 3 * n * c + n * qkv.max(fc) + n * att.max(f), fp32: 3 * n + unused_mean }
}

fn activation_bytes(cfg: &Config, act_bytes: u64) -> u64 {
    let count = activation_count(cfg);
    count.act * act_bytes + count.fp32 * FP32
}
