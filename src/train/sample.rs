//! Text generation: temperature and top-k sampling from the model's
//! last-position logits (no KV cache: each token re-runs the context,
//! which is fine for the model sizes sampled on the CPU).

use crate::backend::Backend;
use crate::model::{store::ParamStore, Model};
use crate::util::rng::Rng;
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = no top-k filtering.
    pub top_k: usize,
}

/// Extends `prompt` by up to `opts.max_tokens` sampled tokens, stopping
/// early at `stop` (e.g. end-of-text). Returns only the new tokens.
pub fn generate<B: Backend>(b: &mut B, model: &mut Model, prompt: &[u32], opts: SampleOptions, stop: Option<u32>, rng: &mut Rng) -> Result<Vec<u32>> {
    let ctx_len = model.cfg.max_seq_len;
    generate_with(|tokens| model.last_logits(b, tokens), ctx_len, prompt, opts, stop, rng)
}

/// [`generate`] with the weights held by `store` (a training run's).
#[allow(clippy::too_many_arguments)]
pub fn generate_in<B: Backend>(b: &mut B, model: &mut Model, store: &mut dyn ParamStore<B>, prompt: &[u32], opts: SampleOptions, stop: Option<u32>, rng: &mut Rng) -> Result<Vec<u32>> {
    let ctx_len = model.cfg.max_seq_len;
    generate_with(|tokens| model.last_logits_in(b, store, tokens), ctx_len, prompt, opts, stop, rng)
}

fn generate_with(mut last_logits: impl FnMut(&[u32]) -> Result<Vec<f32>>, ctx_len: usize, prompt: &[u32], opts: SampleOptions, stop: Option<u32>, rng: &mut Rng) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("generation needs at least one prompt token");
    }
    if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
        bail!("--temperature must be a number >= 0, got {}", opts.temperature);
    }
    let mut tokens = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..opts.max_tokens {
        let start = tokens.len().saturating_sub(ctx_len);
        let logits = last_logits(&tokens[start..])?;
        let next = pick(&logits, opts, rng);
        if Some(next) == stop {
            break;
        }
        tokens.push(next);
        out.push(next);
    }
    Ok(out)
}

/// Chooses a token id from one row of logits.
pub fn pick(logits: &[f32], opts: SampleOptions, rng: &mut Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if opts.temperature == 0.0 {
        return order[0] as u32;
    }
    let k = if opts.top_k == 0 { order.len() } else { opts.top_k.min(order.len()) };
    let top = &order[..k];
    let max = logits[top[0]];
    let weights: Vec<f64> = top.iter().map(|&i| (((logits[i] - max) / opts.temperature) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.unit() * total;
    for (&i, w) in top.iter().zip(&weights) {
        if r < *w {
            return i as u32;
        }
        r -= w;
    }
    top[k - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_max_and_top_k_1_is_greedy() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = Rng::new(1);
        assert_eq!(pick(&logits, SampleOptions { max_tokens: 1, temperature: 0.0, top_k: 0 }, &mut rng), 1);
        for _ in 0..20 {
            assert_eq!(pick(&logits, SampleOptions { max_tokens: 1, temperature: 1.0, top_k: 1 }, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()];
        let mut rng = Rng::new(7);
        let opts = SampleOptions { max_tokens: 1, temperature: 1.0, top_k: 0 };
        let ones = (0..20000).filter(|_| pick(&logits, opts, &mut rng) == 1).count();
        let frac = ones as f64 / 20000.0;
        assert!((frac - 0.75).abs() < 0.02, "expected ~0.75, got {frac}");
    }
}
