//! Training FLOPs per token and model FLOPs utilization (MFU).
//!
//! The convention is the one of PaLM / MegaScale (see shared/DESIGN.md):
//! each matmul parameter costs 2 FLOPs per token forward and 4 backward
//! (6 in all); attention's two batched matmuls (QKᵀ and PV) add
//! 2·2·seq·H·D forward per layer and per token, times 3 for backward:
//! 12·layers·heads·head_dim·seq. A causal kernel that skips the masked half
//! does half of that; which one is reported must be said, so it is a flag.

use crate::config::ModelConfig;
use crate::model::layout::{ParamKind, ParamLayout};

/// Parameters that take part in a matmul: attention and MLP weight
/// matrices plus the output head (`lm_head`, or `wte` when tied, since the
/// tied embedding is then also the head's matrix). Embedding lookups,
/// learned positions, norms and biases do no matmul work.
/// Padding (vocabulary, SwiGLU width) is not counted: it is not work.
pub fn matmul_params(cfg: &ModelConfig) -> usize {
    let layout = ParamLayout::new(&cfg.unpadded());
    let matrices: usize = layout.params.iter().filter(|p| p.kind == ParamKind::Matrix).map(|p| p.numel()).sum();
    let head = cfg.vocab_size * cfg.d_model;
    matrices + head
}

/// Attention-score FLOPs per token (forward + backward) at sequence length
/// `seq`, all positions counted.
pub fn attention_flops_per_token(cfg: &ModelConfig, seq: usize) -> f64 {
    12.0 * cfg.n_layers as f64 * cfg.n_heads as f64 * cfg.head_dim() as f64 * seq as f64
}

/// Training FLOPs (forward + backward) per token. `causal_halved` counts
/// only the unmasked half of attention, as a causal kernel computes it.
pub fn flops_per_token(cfg: &ModelConfig, seq: usize, causal_halved: bool) -> f64 {
    let attn = attention_flops_per_token(cfg, seq);
    let attn = if causal_halved { attn / 2.0 } else { attn };
    6.0 * matmul_params(cfg) as f64 + attn
}

/// Fraction of the device's peak throughput the run achieves.
pub fn mfu(tokens_per_s: f64, flops_per_token: f64, peak_flops: f64) -> f64 {
    if peak_flops <= 0.0 {
        return 0.0;
    }
    tokens_per_s * flops_per_token / peak_flops
}

/// Dense (no sparsity) bf16 tensor-core peak, FLOP/s, by a substring of the
/// device name the driver reports (e.g. "NVIDIA H100 80GB HBM3"). More
/// specific names come first: "H100 PCIe" must win over "H100".
const PEAK_BF16_DENSE: &[(&str, f64)] = &[
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12), // SXM
    ("a100", 312e12),
];

/// Peak bf16 dense FLOP/s for a device name, or `None` when unknown (then
/// MFU is not reported rather than guessed).
pub fn peak_flops_for(device_name: &str) -> Option<f64> {
    let name = device_name.to_lowercase();
    PEAK_BF16_DENSE.iter().find(|(key, _)| name.contains(key)).map(|(_, peak)| *peak)
}
