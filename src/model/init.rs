//! Weight initialization (GPT-2 style): N(0, 0.02²) for matrices and
//! embeddings, residual output projections scaled by 1/sqrt(2·layers),
//! zero biases, unit norm weights. Deterministic from the seed.

use super::layout::{ParamKind, ParamLayout};
use crate::config::ModelConfig;
use crate::util::rng::{fill_normal_parallel, mix};
use std::sync::atomic::{AtomicU64, Ordering};

/// Values made by [`init_tensor`] in this process: the draws are most of
/// an offloaded start-up's time, so a test checks that each unit is made
/// once (`tests/offload_startup.rs`). One relaxed add per tensor.
static VALUES_MADE: AtomicU64 = AtomicU64::new(0);

/// How many initial weight values this process has made so far.
pub fn values_made() -> u64 {
    VALUES_MADE.load(Ordering::Relaxed)
}

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
    for index in 0..layout.params.len() {
        let p = &layout.params[index];
        init_tensor(cfg, layout, seed, index, &mut host[p.offset..p.offset + p.numel()]);
    }
    host
}

/// Tensor `index` of `layout` (unpadded) into `dst`.
fn init_tensor(cfg: &ModelConfig, layout: &ParamLayout, seed: u64, index: usize, dst: &mut [f32]) {
    let p = &layout.params[index];
    let resid_std = cfg.init_std / (2.0 * cfg.n_layers as f32).sqrt();
    // Each tensor has its own stream: its values do not depend on the
    // tensors before it.
    let stream = mix(seed, index as u64);
    VALUES_MADE.fetch_add(dst.len() as u64, Ordering::Relaxed);
    match p.kind {
        ParamKind::Norm if p.name.ends_with(".w") => dst.fill(1.0),
        ParamKind::Norm | ParamKind::Bias => dst.fill(0.0),
        _ if p.name.ends_with("proj.w") => fill_normal_parallel(dst, resid_std, stream),
        _ => fill_normal_parallel(dst, cfg.init_std, stream),
    }
}

/// `init_weights(cfg, layout, seed)[range]` without making the whole
/// model: the tensors overlapping `range`, each drawn from its own stream.
/// `None` when the model is padded (the padding moves values between the
/// drawn and the stored layout: use [`init_weights`]).
pub fn init_range(cfg: &ModelConfig, layout: &ParamLayout, seed: u64, range: std::ops::Range<usize>) -> Option<Vec<f32>> {
    if ParamLayout::new(&cfg.unpadded()).total != layout.total {
        return None;
    }
    // Untouched zero pages: the parallel draws fault them in on every core.
    let mut out = vec![0.0f32; range.len()];
    let mut tensor = Vec::new();
    for (index, p) in layout.params.iter().enumerate() {
        let (start, end) = (p.offset.max(range.start), (p.offset + p.numel()).min(range.end));
        if start >= end {
            continue;
        }
        let dst = &mut out[start - range.start..end - range.start];
        if end - start == p.numel() {
            // The whole tensor is in the range (a unit's tensors always
            // are): drawn in place, no staging copy.
            init_tensor(cfg, layout, seed, index, dst);
        } else {
            tensor.clear();
            tensor.resize(p.numel(), 0.0);
            init_tensor(cfg, layout, seed, index, &mut tensor);
            dst.copy_from_slice(&tensor[start - p.offset..end - p.offset]);
        }
    }
    Some(out)
}

/// The initial weights of a model, whole or made range by range: an
/// offloaded run takes them unit by unit, so a model larger than host
/// memory never exists whole there (padded models are made whole).
pub enum InitWeights {
    Whole(Vec<f32>),
    Lazy { cfg: ModelConfig, layout: ParamLayout, seed: u64 },
}

impl InitWeights {
    pub fn new(cfg: &ModelConfig, layout: &ParamLayout, seed: u64, lazy: bool) -> Self {
        if lazy && init_range(cfg, layout, seed, 0..0).is_some() {
            InitWeights::Lazy { cfg: cfg.clone(), layout: layout.clone(), seed }
        } else {
            InitWeights::Whole(init_weights(cfg, layout, seed))
        }
    }

    /// The weights of `range` (layout order).
    pub fn range(&self, range: std::ops::Range<usize>) -> std::borrow::Cow<'_, [f32]> {
        match self {
            InitWeights::Whole(w) => std::borrow::Cow::Borrowed(&w[range]),
            InitWeights::Lazy { cfg, layout, seed } => std::borrow::Cow::Owned(init_range(cfg, layout, *seed, range).expect("checked unpadded")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// Ranges made alone equal the whole init's, also ranges that cut
    /// tensors; a padded model is refused (made whole instead).
    #[test]
    fn a_range_equals_the_whole_init() {
        let cfg = config::load(None, &["model.preset=tiny-llama".to_string(), "model.d_ff=384".to_string()]).unwrap().model;
        let layout = ParamLayout::new(&cfg);
        let whole = init_weights(&cfg, &layout, 7);
        let n = layout.total;
        for r in [0..n, 0..1, 5..n / 3, n / 3..n / 2 + 17, n - 9..n, n..n] {
            let part = init_range(&cfg, &layout, 7, r.clone()).unwrap();
            assert!(part.iter().zip(&whole[r.clone()]).all(|(a, b)| a.to_bits() == b.to_bits()) && part.len() == r.len(), "{r:?}");
        }
        let padded = config::load(None, &["model.preset=tiny-llama".to_string(), "model.vocab_size=250".to_string()]).unwrap().model;
        assert!(init_range(&padded, &ParamLayout::new(&padded), 7, 0..0).is_none());
    }
}
