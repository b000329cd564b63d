//! Weight initialization (GPT-2 style): N(0, 0.02²) for matrices and
//! embeddings, residual output projections scaled by 1/sqrt(2·layers),
//! zero biases, unit norm weights. Deterministic from the seed.

use super::layout::{ParamKind, ParamLayout};
use crate::config::ModelConfig;
use crate::util::rng::{fill_normal_parallel, mix};

/// Weights for `layout` (the layout of `cfg`). The unpadded model is drawn
/// and then padded, so padding entries are zero and the padding multiples
/// do not change the drawn values.
pub fn init_weights(cfg: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let tight = cfg.unpadded();
    let tight_layout = ParamLayout::new(&tight);
    let host = init_unpadded(&tight, &tight_layout, seed);
    if tight_layout.total == layout.total {
        // No padding (it only adds elements): the same layout. Returned as
        // is, so a big model is never held twice here.
        return host;
    }
    let out = super::padding::repad(&tight, cfg, &host);
    debug_assert_eq!(out.len(), layout.total);
    out
}

fn init_unpadded(cfg: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut host = vec![0.0f32; layout.total];
    let resid_std = cfg.init_std / (2.0 * cfg.n_layers as f32).sqrt();
    for (index, p) in layout.params.iter().enumerate() {
        let dst = &mut host[p.offset..p.offset + p.numel()];
        // Each tensor has its own stream: its values do not depend on the
        // tensors before it.
        let stream = mix(seed, index as u64);
        match p.kind {
            ParamKind::Norm if p.name.ends_with(".w") => dst.fill(1.0),
            ParamKind::Norm | ParamKind::Bias => dst.fill(0.0),
            _ if p.name.ends_with("proj.w") => fill_normal_parallel(dst, resid_std, stream),
            _ => fill_normal_parallel(dst, cfg.init_std, stream),
        }
    }
    host
}
