//! Weight initialization (GPT-2 style): N(0, 0.02²) for matrices and
//! embeddings, residual output projections scaled by 1/sqrt(2·layers),
//! zero biases, unit norm weights. Deterministic from the seed.

use super::layout::{ParamKind, ParamLayout};
use crate::config::ModelConfig;
use crate::util::rng::Rng;

pub fn init_weights(cfg: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut host = vec![0.0f32; layout.total];
    let mut rng = Rng::new(seed);
    let resid_std = cfg.init_std / (2.0 * cfg.n_layers as f32).sqrt();
    for p in &layout.params {
        let dst = &mut host[p.offset..p.offset + p.numel()];
        match p.kind {
            ParamKind::Norm if p.name.ends_with(".w") => dst.fill(1.0),
            ParamKind::Norm | ParamKind::Bias => dst.fill(0.0),
            _ if p.name.ends_with("proj.w") => rng.fill_normal(dst, resid_std),
            _ => rng.fill_normal(dst, cfg.init_std),
        }
        if matches!(p.kind, ParamKind::Embedding | ParamKind::Head) {
            // Vocabulary padding rows start (and, with zero gradients, stay) zero.
            dst[cfg.vocab_size * cfg.d_model..].fill(0.0);
        }
    }
    host
}
