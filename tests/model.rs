//! Whole-model checks on the CPU reference backend: every gradient against
//! finite differences (GPT-2 and Llama variants), recompute equivalence,
//! determinism.

use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::Backend;
use ferrotron::config::{Mlp, ModelConfig, Norm, Positions};
use ferrotron::model::{init::init_weights, padding::repad, Model, Recompute};
use ferrotron::util::rng::Rng;

/// ffn_multiple 1: padding 24 hidden units to 64 would leave most MLP
/// gradients at exactly zero (padding is tested on its own below).
fn tiny(variant: &str) -> ModelConfig {
    let mut m = ModelConfig { vocab_size: 37, d_model: 16, n_layers: 2, n_heads: 4, n_kv_heads: 4, d_ff: 24, ffn_multiple: 1, max_seq_len: 8, init_std: 0.3, ..Default::default() };
    if variant == "llama" {
        m.norm = Norm::Rmsnorm;
        m.mlp = Mlp::Swiglu;
        m.positions = Positions::Rope;
        m.n_kv_heads = 2;
        m.tied_embeddings = false;
        m.bias = false;
    }
    m
}

fn batch(m: &ModelConfig, b: usize, t: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut draw = || (rng.next_u64() % m.vocab_size as u64) as u32;
    let inputs = (0..b * t).map(|_| draw()).collect();
    let targets = (0..b * t).map(|_| draw()).collect();
    (inputs, targets)
}

/// Mean loss at `params` (f64 copy of the f32 forward).
fn loss_at(backend: &mut CpuBackend, model: &mut Model, params: &[f32], x: &[u32], y: &[u32], b: usize, t: usize) -> f64 {
    model.set_params(backend, params).unwrap();
    model.eval_loss(backend, x, y, b, t).unwrap() as f64
}

fn gradcheck(variant: &str) {
    let cfg = tiny(variant);
    let (b, t) = (2, 7);
    let mut backend = CpuBackend::new();
    let mut model = Model::new(&mut backend, &cfg, Recompute::Off).unwrap();
    let params = init_weights(&cfg, &model.layout, 3);
    model.set_params(&mut backend, &params).unwrap();
    let (x, y) = batch(&cfg, b, t, 11);
    model.zero_grads(&mut backend).unwrap();
    model.forward_backward(&mut backend, &x, &y, b, t, 1.0 / (b * t) as f32).unwrap();
    let mut grads = vec![0.0f32; model.layout.total];
    backend.download(model.grads_view(), &mut grads).unwrap();

    // Central differences in f32 arithmetic: with eps = 1e-2 the rounding
    // error of the loss (~1e-7 relative on ~3.6) contributes ~2e-5 absolute,
    // and the O(eps²) truncation error is ~1e-4 relative for these smooth
    // functions; 2e-3 absolute + 3e-2 relative leaves room for both.
    let eps = 1e-2f32;
    let mut rng = Rng::new(5);
    let mut checked = 0;
    for p in model.layout.params.clone() {
        for _ in 0..6 {
            let i = p.offset + (rng.next_u64() as usize % p.numel());
            let mut plus = params.clone();
            plus[i] += eps;
            let mut minus = params.clone();
            minus[i] -= eps;
            let fd = (loss_at(&mut backend, &mut model, &plus, &x, &y, b, t) - loss_at(&mut backend, &mut model, &minus, &x, &y, b, t)) / (2.0 * eps as f64);
            let an = grads[i] as f64;
            assert!((fd - an).abs() <= 2e-3 + 3e-2 * an.abs(), "{variant}: d loss / d {}[{}]: analytic {an:.6} vs finite difference {fd:.6}", p.name, i - p.offset);
            checked += 1;
        }
    }
    assert!(checked >= 6 * model.layout.params.len());
    let nonzero = grads.iter().filter(|g| g.abs() > 1e-7).count();
    assert!(nonzero > grads.len() / 2, "most gradients should be non-zero");
}

#[test]
fn gpt2_variant_gradients_match_finite_differences() {
    gradcheck("gpt2");
}

#[test]
fn llama_variant_gradients_match_finite_differences() {
    gradcheck("llama");
}

fn grads_with(variant: &str, recompute: Recompute) -> (f32, Vec<f32>) {
    grads_chunked(variant, recompute, 0)
}

fn grads_chunked(variant: &str, recompute: Recompute, logits_chunk: usize) -> (f32, Vec<f32>) {
    let cfg = tiny(variant);
    let mut backend = CpuBackend::new();
    let mut model = Model::new(&mut backend, &cfg, recompute).unwrap().with_logits_chunk(logits_chunk);
    model.set_params(&mut backend, &init_weights(&cfg, &model.layout, 9)).unwrap();
    let (x, y) = batch(&cfg, 3, 8, 2);
    model.zero_grads(&mut backend).unwrap();
    let loss = model.forward_backward(&mut backend, &x, &y, 3, 8, 1.0 / 24.0).unwrap();
    let mut g = vec![0.0; model.layout.total];
    backend.download(model.grads_view(), &mut g).unwrap();
    (loss, g)
}

#[test]
fn recompute_gives_identical_gradients() {
    for v in ["gpt2", "llama"] {
        let (l1, g1) = grads_with(v, Recompute::Off);
        for mode in [Recompute::Elementwise, Recompute::Layers { keep_attention: false }, Recompute::Layers { keep_attention: true }] {
            let (l2, g2) = grads_with(v, mode);
            assert_eq!(l1, l2, "{v} {mode:?}: loss");
            assert_eq!(g1, g2, "{v} {mode:?}: gradients");
        }
    }
}

/// The head and loss computed 8 or 16 of the 24 token rows at a time (the
/// last chunk short): every row's logits and loss are the same computation
/// as unchunked; only the head's weight gradient sums its rows in another
/// grouping (chunk by chunk), so it may differ by fp32 rounding.
#[test]
fn chunked_logits_give_the_same_loss_and_gradients() {
    for v in ["gpt2", "llama"] {
        let (l0, g0) = grads_chunked(v, Recompute::Off, 0);
        let scale = g0.iter().fold(0f32, |a, x| a.max(x.abs()));
        for chunk in [8, 16] {
            let (l, g) = grads_chunked(v, Recompute::Off, chunk);
            assert_eq!(l, l0, "{v} chunk {chunk}: loss");
            let diff = g.iter().zip(&g0).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(diff <= 1e-6 * scale, "{v} chunk {chunk}: gradients differ by {diff} (max |grad| {scale})");
        }
    }
}

/// `logits` and `last_logits` chunked equal the unchunked ones exactly.
#[test]
fn chunked_logits_api_matches_unchunked() {
    let cfg = tiny("llama");
    let mut backend = CpuBackend::new();
    let (x, _) = batch(&cfg, 3, 7, 4);
    let mut run = |chunk: usize| {
        let mut model = Model::new(&mut backend, &cfg, Recompute::Off).unwrap().with_logits_chunk(chunk);
        model.set_params(&mut backend, &init_weights(&cfg, &model.layout, 9)).unwrap();
        let all = model.logits(&mut backend, &x, 3, 7).unwrap();
        let last = model.last_logits(&mut backend, &x[..7]).unwrap();
        (all, last)
    };
    let (all0, last0) = run(0);
    assert_eq!(last0, all0[6 * 37..7 * 37], "last_logits is row 6 of the first sequence");
    for chunk in [8, 16] {
        assert_eq!(run(chunk), (all0.clone(), last0.clone()), "chunk {chunk}");
    }
}

#[test]
fn forward_backward_is_deterministic() {
    let a = grads_with("llama", Recompute::Off);
    let b = grads_with("llama", Recompute::Off);
    assert_eq!(a, b);
}

#[test]
fn untrained_loss_is_near_log_vocab() {
    let mut cfg = tiny("gpt2");
    cfg.init_std = 0.02;
    let mut backend = CpuBackend::new();
    let mut model = Model::new(&mut backend, &cfg, Recompute::Off).unwrap();
    model.set_params(&mut backend, &init_weights(&cfg, &model.layout, 1)).unwrap();
    let (x, y) = batch(&cfg, 2, 8, 4);
    let loss = model.eval_loss(&mut backend, &x, &y, 2, 8).unwrap();
    let expected = (cfg.vocab_size as f32).ln();
    assert!((loss - expected).abs() < 0.05, "loss {loss} vs ln(V) {expected}");
}

/// Padding (embedding/head rows up to a multiple of `model.vocab_multiple`;
/// SwiGLU hidden units up to a multiple of `model.ffn_multiple`) changes
/// nothing: the same weights give the same loss, logits and gradients as
/// the unpadded model, and the padding gets exactly zero gradient (so it
/// stays zero under every optimizer).
#[test]
fn padding_changes_nothing() {
    let cases = [("gpt2", 64, 1), ("llama", 64, 1), ("llama", 1, 16), ("llama", 64, 64)];
    for (variant, vocab_multiple, ffn_multiple) in cases {
        let tag = format!("{variant} vocab_multiple {vocab_multiple} ffn_multiple {ffn_multiple}");
        let tight = ModelConfig { vocab_multiple: 1, ffn_multiple: 1, ..tiny(variant) };
        let padded = ModelConfig { vocab_multiple, ffn_multiple, ..tiny(variant) };
        assert_eq!(padded.padded_vocab(), if vocab_multiple == 64 { 64 } else { 37 });
        if variant == "llama" {
            assert_eq!(padded.padded_ff(), 24usize.div_ceil(ffn_multiple) * ffn_multiple);
        }
        let mut backend = CpuBackend::new();
        let mut a = Model::new(&mut backend, &tight, Recompute::Off).unwrap();
        let mut b = Model::new(&mut backend, &padded, Recompute::Off).unwrap();
        let wa = init_weights(&tight, &a.layout, 9);
        let wb = repad(&tight, &padded, &wa);
        assert_eq!(wb, init_weights(&padded, &b.layout, 9), "{tag}: init draws the same values");
        a.set_params(&mut backend, &wa).unwrap();
        b.set_params(&mut backend, &wb).unwrap();
        let (x, y) = batch(&tight, 3, 8, 2);
        assert_eq!(a.logits(&mut backend, &x, 3, 8).unwrap(), b.logits(&mut backend, &x, 3, 8).unwrap(), "{tag}: logits");
        let mut grads = vec![];
        for m in [&mut a, &mut b] {
            m.zero_grads(&mut backend).unwrap();
            let loss = m.forward_backward(&mut backend, &x, &y, 3, 8, 1.0 / 24.0).unwrap();
            let mut g = vec![0.0; m.layout.total];
            backend.download(m.grads_view(), &mut g).unwrap();
            grads.push((loss, g));
        }
        assert_eq!(grads[0].0, grads[1].0, "{tag}: loss");
        let (ga, gb) = (&grads[0].1, &grads[1].1);
        assert_eq!(&repad(&padded, &tight, gb), ga, "{tag}: gradients of the real weights");
        assert_eq!(&repad(&tight, &padded, ga), gb, "{tag}: the padding got a gradient");
    }
}

/// Fresh weights have zero padding rows.
#[test]
fn padding_rows_start_zero() {
    let cfg = ModelConfig { vocab_multiple: 64, ffn_multiple: 1, ..tiny("llama") };
    let layout = ferrotron::model::layout::ParamLayout::new(&cfg);
    let w = init_weights(&cfg, &layout, 3);
    for name in ["wte", "lm_head"] {
        let p = layout.must(name);
        assert_eq!(p.shape, vec![64, cfg.d_model]);
        let rows = &w[p.offset..p.offset + p.numel()];
        assert!(rows[37 * cfg.d_model..].iter().all(|&x| x == 0.0), "{name}");
        assert!(rows[..37 * cfg.d_model].iter().any(|&x| x != 0.0), "{name}");
    }
}
