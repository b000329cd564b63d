//! Whole-model checks on the GPU (skipped without one):
//! - a tiny GPT-2 and a tiny Llama trained 20 steps on CUDA track the CPU
//!   reference loss curve;
//! - recompute modes give the same loss and gradients as keeping everything;
//! - weights made by Hugging Face transformers give the same logits in
//!   ferrotron (CPU and CUDA) as in PyTorch. Runs when FERROTRON_HF_FIXTURES
//!   names the folder written by bench/hf_logits_fixtures.py;
//! - the committed Llama 3.2-style fixture (tests/fixtures/hf/llama32) gives
//!   transformers' logits and greedy tokens on CUDA, and a 1-step lr-0
//!   fine-tune on CUDA exports it back byte for byte;
//! - a head size without CUDA attention kernels is a clear error.

#[path = "common/tolerance.rs"]
mod tolerance;

use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::cuda::CudaBackend;
use ferrotron::config;
use ferrotron::config::{Mlp, ModelConfig};
use ferrotron::backend::Backend;
use ferrotron::model::{init::init_weights, layout::ParamLayout, Model, Recompute};
use ferrotron::train::trainer::train;
use tolerance::{rms, BF16_U as U, Tol};

/// Largest relative gap |cuda − cpu| / cpu between the two 20-step loss
/// curves of `cuda_tracks_cpu_loss_curve_for_20_steps` seen on the H200
/// across five sessions (bench/results: gpu_2026-11-28_step3,
/// _optimizers, _night/tests_call1, gpu_2026-11-29/tests_call1,
/// gpu_2026-12-02/call2; ten curves, 200 steps): 1.15e-4 (tiny-llama,
/// step 18); the typical gap is 2e-5 to 5e-5, with no trend over the 20 steps.
const LOSS_GAP_SEEN: f32 = 1.15e-4;

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("skipping: no CUDA device ({e:#})");
            None
        }
    }
}

fn losses(device: &str, preset: &str, dir: &std::path::Path) -> Vec<f32> {
    let sets: Vec<String> = [
        format!("device={device}"), format!("model.preset={preset}"), "train.steps=20".into(), "train.batch_size=8".into(),
        "train.seq_len=64".into(), "train.eval_every=0".into(), "train.ckpt_every=0".into(), "train.samples=0".into(),
        // lr 1e-3 rather than the preset's 3e-3: at 3e-3 both runs hit a loss
        // spike around step 17 where bf16 rounding decides how high it goes
        // (seen: 2.8% apart at step 20 after 15 steps within 1e-4).
        "optimizer.lr=1e-3".into(), "run.progress=false".into(), format!("run.dir=\"{}\"", dir.display()), format!("run.name={device}-{preset}"),
    ]
    .into();
    train(&config::load(None, &sets).unwrap(), None).unwrap().losses
}

#[test]
fn cuda_tracks_cpu_loss_curve_for_20_steps() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for preset in ["tiny", "tiny-llama"] {
        let cpu = losses("cpu", preset, tmp.path());
        let cuda = losses("cuda", preset, tmp.path());
        println!("{preset}: cpu {cpu:?}\n{preset}: cuda {cuda:?}");
        // bf16 activations carry ~3 significant digits, yet a loss averages
        // 512 tokens' bf16 errors, so the curves stay ~1e-4 apart (see
        // LOSS_GAP_SEEN). 4x the largest gap seen allows other kernels'
        // rounding patterns (the gap is their noise, not a drift) and still
        // fails a real divergence long before the old 2% (0.11 nats) did.
        let tol = 4.0 * LOSS_GAP_SEEN;
        let gaps: Vec<f32> = cpu.iter().zip(&cuda).map(|(a, b)| (a - b).abs() / a.abs()).collect();
        let (worst, gap) = gaps.iter().enumerate().fold((0, 0f32), |w, (i, &g)| if g > w.1 { (i, g) } else { w });
        println!("{preset}: largest relative gap {gap:.2e} at step {} (tolerance {tol:.1e})", worst + 1);
        assert!(gap <= tol, "{preset} step {}: cpu {} vs cuda {}: relative gap {gap:.2e} > {tol:.1e}", worst + 1, cpu[worst], cuda[worst]);
        assert!(cuda[19] < cuda[0] - 1.0, "{preset}: CUDA run should learn: {cuda:?}");
    }
}

/// Loss and gradients of one step on 4×64 fixed tokens from seeded weights.
fn loss_and_grads(cuda: &mut CudaBackend, cfg: &ModelConfig, mode: Recompute, logits_chunk: usize) -> (f32, Vec<f32>) {
    let (batch, seq) = (4, 64);
    let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 7919) % cfg.vocab_size) as u32).collect();
    let mut m = Model::new(cuda, cfg, mode).unwrap().with_logits_chunk(logits_chunk);
    m.set_params(cuda, &init_weights(cfg, &m.layout, 5)).unwrap();
    m.zero_grads(cuda).unwrap();
    let loss = m.forward_backward(cuda, &tokens, &tokens, batch, seq, 1.0).unwrap();
    let mut g = vec![0.0; m.layout.total];
    cuda.download(m.grads_view(), &mut g).unwrap();
    (loss, g)
}

/// Loss and gradients of one step of `params` on 2×32 fixed tokens, on any backend.
fn loss_and_grads_with<B: Backend>(b: &mut B, cfg: &ModelConfig, params: &[f32]) -> (f32, Vec<f32>) {
    let (batch, seq) = (2, 32);
    let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 7919) % cfg.vocab_size) as u32).collect();
    let mut m = Model::new(b, cfg, Recompute::Off).unwrap();
    m.set_params(b, params).unwrap();
    m.zero_grads(b).unwrap();
    let loss = m.forward_backward(b, &tokens, &tokens, batch, seq, 1.0).unwrap();
    let mut g = vec![0.0; m.layout.total];
    b.download(m.grads_view(), &mut g).unwrap();
    (loss, g)
}

/// Elementwise recompute and whole-block checkpointing re-run deterministic
/// forward kernels, so the loss is the same to the bit; gradients may differ
/// only by the order of the embedding backward's atomic adds (fp32), except
/// where the recompute uses another kernel than the forward (GELU, below).
#[test]
fn recompute_modes_match_on_cuda() {
    let Some(mut cuda) = gpu() else { return };
    for preset in ["tiny", "tiny-llama"] {
        let cfg = config::load(None, &[format!("model.preset={preset}")]).unwrap().model;
        let mut run = |mode: Recompute| loss_and_grads(&mut cuda, &cfg, mode, 0);
        let (l0, g0) = run(Recompute::Off);
        for mode in [Recompute::Elementwise, Recompute::Layers { keep_attention: false }, Recompute::Layers { keep_attention: true }] {
            let (l, g) = run(mode);
            println!("{preset} {mode:?}: loss {l} vs {l0}");
            assert_eq!(l, l0, "{preset} {mode:?}: loss");
            // GPT-2's forward takes GELU from the matmul epilogue (cuBLASLt's
            // own GELU), the elementwise recompute from our GELU kernel: the
            // two may differ by one bf16 rounding (U) per activation. Only
            // the MLP output weights' gradient reads the activation (act^T ·
            // dout): a sum of products each off by up to U, a random walk of
            // at most ~1.2U·rms per element, ~5U·rms at the largest of its
            // elements if every activation differed: rtol 2U, atol 8U·rms.
            // Otherwise the same kernels run again: equal but for the order
            // of fp32 atomic adds (embedding backward), fp32-level.
            let (rtol, atol_rms) = if mode == Recompute::Elementwise && cfg.mlp == Mlp::Gelu { (2.0 * U, 8.0 * U) } else { (1e-5, 1e-5) };
            assert_close_per_tensor(&format!("{preset} {mode:?} grad"), &cfg, &g, &g0, rtol, atol_rms);
        }
    }
}

/// The output head and loss in chunks of 64 of the 256 token rows against
/// all rows at once, on the GPU. cuBLASLt may pick another algorithm for a
/// 64-row matmul than for a 256-row one (another summation order inside a
/// logit, then rounded to bf16), so unlike on the CPU the two need not agree
/// to the bit: the loss within 1e-4 relative; gradients per tensor and per
/// element within one bf16 rounding of a logit gradient carried into each
/// (rtol U, atol 2U·rms of the tensor; seen: ~3e-8 of the largest gradient).
#[test]
fn chunked_logits_match_on_cuda() {
    let Some(mut cuda) = gpu() else { return };
    for preset in ["tiny", "tiny-llama"] {
        let cfg = config::load(None, &[format!("model.preset={preset}")]).unwrap().model;
        let mut run = |chunk: usize| loss_and_grads(&mut cuda, &cfg, Recompute::Off, chunk);
        let (l0, g0) = run(0);
        let (l, g) = run(64);
        println!("{preset} chunk 64: loss {l} vs {l0}");
        assert!((l - l0).abs() <= 1e-4 * l0.abs(), "{preset}: loss {l} vs {l0}");
        assert_close_per_tensor(&format!("{preset} chunk 64 grad"), &cfg, &g, &g0, U, 2.0 * U);
    }
}

/// Gradients of two GPU runs compared tensor by tensor (each parameter's
/// range in the flat buffer), element-wise with atol = `atol_rms` × the
/// RMS of that tensor's reference gradient: tensors differ in scale by
/// orders of magnitude (embeddings vs norms), so one RMS for all would not
/// do. Every tensor is checked and printed before the first failure panics.
fn assert_close_per_tensor(name: &str, cfg: &ModelConfig, got: &[f32], reference: &[f32], rtol: f32, atol_rms: f32) {
    let layout = ParamLayout::new(cfg);
    let mut failures = vec![];
    for p in &layout.params {
        let (g, r) = (&got[p.range()], &reference[p.range()]);
        let tol = Tol { rtol, atol: atol_rms * rms(r) };
        let c = tolerance::closeness(g, r, tol);
        println!("  {name} {:<28} n={:<7} rms={:.3e} max|diff|={:.3e} worst/allowed={:.3}", p.name, c.n, rms(r), c.max_abs_diff, c.worst_ratio);
        if c.failing > 0 {
            failures.push(tolerance::failure_message(&format!("{name} {}", p.name), &c, tol));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Reads a safetensors file of f32 tensors into (name → values).
fn read_f32(path: &std::path::Path) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn hugging_face_weights_give_pytorch_logits() {
    let Ok(root) = std::env::var("FERROTRON_HF_FIXTURES") else {
        println!("skipping: FERROTRON_HF_FIXTURES not set (see bench/hf_logits_fixtures.py)");
        return;
    };
    let Some(mut cuda) = gpu() else { return };
    for family in ["gpt2", "llama"] {
        let dir = std::path::Path::new(&root).join(family);
        let (cfg, params) = ferrotron::ckpt::import(&dir).unwrap();
        let fixture = read_f32(&dir.join("logits.safetensors"));
        let tokens: Vec<u32> = fixture["tokens"].iter().map(|&t| t as u32).collect();
        let (batch, seq) = (fixture["shape"][0] as usize, fixture["shape"][1] as usize);
        let scale = fixture["logits_fp32"].iter().fold(0.0f32, |m, x| m.max(x.abs()));

        let mut cpu = CpuBackend::new();
        let mut m = Model::new(&mut cpu, &cfg, Recompute::Off).unwrap();
        m.set_params(&mut cpu, &params).unwrap();
        let ours_cpu = m.logits(&mut cpu, &tokens, batch, seq).unwrap();
        let d_cpu = max_abs_diff(&ours_cpu, &fixture["logits_fp32"]);

        let mut g = Model::new(&mut cuda, &cfg, Recompute::Off).unwrap();
        g.set_params(&mut cuda, &params).unwrap();
        let ours_gpu = g.logits(&mut cuda, &tokens, batch, seq).unwrap();
        let d_gpu_fp32 = max_abs_diff(&ours_gpu, &fixture["logits_fp32"]);
        let d_gpu_bf16 = max_abs_diff(&ours_gpu, &fixture["logits_bf16"]);
        let d_torch = max_abs_diff(&fixture["logits_bf16"], &fixture["logits_fp32"]);
        println!("{family}: max|logit| {scale:.3}; ferrotron-cpu vs torch-fp32 {d_cpu:.2e}; ferrotron-cuda vs torch-fp32 {d_gpu_fp32:.2e}, vs torch-bf16-autocast {d_gpu_bf16:.2e}; torch bf16 vs fp32 {d_torch:.2e}");
        // fp32 vs fp32: only summation order differs.
        assert!(d_cpu <= 1e-4 * scale.max(1.0), "{family}: CPU logits differ from PyTorch by {d_cpu}");
        // bf16 compute: allow 3x PyTorch's own bf16-vs-fp32 deviation, or 2% of the logit scale.
        let tol = (3.0 * d_torch).max(0.02 * scale);
        assert!(d_gpu_fp32 <= tol, "{family}: CUDA logits differ from PyTorch fp32 by {d_gpu_fp32} (tolerance {tol})");
    }
}

/// The Llama 3.2-style fixture made by transformers (tests/fixtures/hf:
/// GQA, tied embeddings, llama3 rope scaling, sharded bf16) on CUDA:
/// logits within bf16 tolerance of transformers' fp32 logits, and greedy
/// generation token for token equal to transformers' `generate` (the
/// smallest margin between the top two logits along it is recorded in
/// greedy.json: 0.27, several times the bf16 error of these logits).
#[test]
fn llama32_fixture_on_cuda_matches_transformers() {
    let Some(mut cuda) = gpu() else { return };
    let dir = fixtures_dir().join("llama32");
    let (cfg, params) = ferrotron::ckpt::import(&dir).unwrap();
    let reference = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let tokens: Vec<u32> = st.tensor("tokens").unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let theirs: Vec<f32> = st.tensor("logits").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let mut m = Model::new(&mut cuda, &cfg, Recompute::Off).unwrap();
    m.set_params(&mut cuda, &params).unwrap();
    let ours = m.logits(&mut cuda, &tokens, 1, tokens.len()).unwrap();
    let scale = theirs.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    let d = max_abs_diff(&ours, &theirs);
    println!("llama32 on CUDA: max |logit| {scale:.3}, max |ferrotron-cuda - transformers-fp32| {d:.3e}");
    assert!(d <= 0.02 * scale, "CUDA logits differ from transformers by {d} (max |logit| {scale})");

    let greedy: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("greedy.json")).unwrap()).unwrap();
    let ids = |k: &str| greedy[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect::<Vec<u32>>();
    let (prompt, expected) = (ids("prompt_ids"), ids("new_ids"));
    let opts = ferrotron::train::sample::SampleOptions { max_tokens: expected.len(), temperature: 0.0, top_k: 0 };
    let got = ferrotron::train::sample::generate(&mut cuda, &mut m, &prompt, opts, None, &mut ferrotron::util::rng::Rng::new(0)).unwrap();
    assert_eq!(got, expected, "greedy tokens on CUDA vs transformers");
}

/// A 1-step fine-tune at lr 0 on CUDA (fp32 master weights, weight decay
/// on) exports the imported checkpoint back byte for byte.
#[test]
fn lr_0_finetune_on_cuda_exports_the_imported_weights() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixtures_dir().join("llama32");
    let sets: Vec<String> = vec![
        "device=cuda".into(), "model.preset=tiny-llama".into(), format!("model.init_from=\"{}\"", dir.display()), "optimizer.lr=0".into(),
        "optimizer.weight_decay=0.1".into(), "train.steps=1".into(), "train.batch_size=2".into(), "train.seq_len=32".into(), "train.eval_every=0".into(),
        "train.samples=0".into(), "run.progress=false".into(), format!("run.dir=\"{}\"", tmp.path().display()), "run.name=ft".into(),
    ];
    train(&config::load(None, &sets).unwrap(), None).unwrap();
    let out = tmp.path().join("export");
    ferrotron::train::export::export_run(&tmp.path().join("ft"), &out, ferrotron::ckpt::Dtype::Bf16, 0).unwrap();
    let read = |path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().into_iter().map(|(n, v)| (n, v.data().to_vec())).collect::<std::collections::BTreeMap<_, _>>()
    };
    let ours = read(&out.join("model.safetensors"));
    let mut theirs = read(&dir.join("model-00001-of-00002.safetensors"));
    theirs.extend(read(&dir.join("model-00002-of-00002.safetensors")));
    assert_eq!(ours, theirs);
}

/// Head size 16 (the llama-gqa fixture made by transformers: GQA 4 query
/// heads on 2 kv heads) on CUDA, on the CUDA-core kernels padded to 32:
/// logits within bf16 tolerance of transformers' fp32 logits (the bound of
/// llama32_fixture_on_cuda_matches_transformers), and a training step's
/// gradients against the CPU backend's, per tensor in relative Frobenius
/// norm ≤ 8%. The kernel itself is checked element-wise at op level
/// (tests/cuda_ops.rs, D = 16/24/48/80); here the whole model's passes run
/// in bf16 on CUDA against fp32 on the CPU, and on the H200 the largest
/// element deviation was 3–7% of each tensor's RMS (bench/results/
/// gpu_2026-12-02c.md, call 3: an element-wise bound of rtol 4U, atol
/// 8U·rms failed on 1 element in 3 tensors by 1.1–1.2×), which bounds the
/// relative norm error by the same 3–7%. A head-padding bug (zero columns
/// leaking into scores or outputs) moves gradients by O(100%).
#[test]
fn head_size_16_runs_on_cuda() {
    let Some(mut cuda) = gpu() else { return };
    let dir = fixtures_dir().join("llama-gqa");
    let (cfg, params) = ferrotron::ckpt::import(&dir).unwrap();
    assert_eq!(cfg.head_dim(), 16);
    let reference = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let tokens: Vec<u32> = st.tensor("tokens").unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let theirs: Vec<f32> = st.tensor("logits").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let shape = st.tensor("tokens").unwrap().shape().to_vec();
    let mut m = Model::new(&mut cuda, &cfg, Recompute::Off).unwrap();
    m.set_params(&mut cuda, &params).unwrap();
    let ours = m.logits(&mut cuda, &tokens, shape[0], shape[1]).unwrap();
    let scale = theirs.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    let d = max_abs_diff(&ours, &theirs);
    println!("llama-gqa (head size 16) on CUDA: max |logit| {scale:.3}, max |ferrotron-cuda - transformers-fp32| {d:.3e}");
    assert!(d <= 0.02 * scale, "CUDA logits differ from transformers by {d} (max |logit| {scale})");

    let (_, g_cuda) = loss_and_grads_with(&mut cuda, &cfg, &params);
    let mut cpu = CpuBackend::new();
    let (_, g_cpu) = loss_and_grads_with(&mut cpu, &cfg, &params);
    let layout = ParamLayout::new(&cfg);
    for p in &layout.params {
        let (g, r) = (&g_cuda[p.range()], &g_cpu[p.range()]);
        let diff = g.iter().zip(r).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let norm = r.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        println!("  head size 16 grad {:<20} relative norm error {:.3e}", p.name, diff / norm);
        assert!(diff <= 0.08 * norm, "head size 16 grad {}: relative norm error {:.3e} > 8%", p.name, diff / norm);
    }
}

/// tests/fixtures/hf: relative to the working directory when it is there (a
/// test executable run from a copy of the repository on another machine),
/// else in the source tree this test was built from.
fn fixtures_dir() -> std::path::PathBuf {
    let here = std::path::Path::new("tests/fixtures/hf");
    if let Ok(abs) = here.canonicalize() {
        return abs;
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}
