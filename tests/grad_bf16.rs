//! `train.grad_dtype = bf16` on the CPU reference backend.
//!
//! The reference: a run with fp32 gradients whose gradient buffer is
//! rounded to bf16 on the host (this file's own rounding, through the
//! `half` crate) before the norm and the optimizer. With one micro-batch
//! and a model where every weight gradient is written by one op per
//! micro-batch (untied embeddings, all logit rows at once) that is exactly
//! what bf16 gradient buffers hold, so the two runs must agree bit for
//! bit. The refusals: settings whose gradients are not bf16-capable fail
//! with a message naming what is allowed, before anything is allocated.

use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::{Backend, DType, View};
use ferrotron::config::{self, Config};
use ferrotron::dist::SoloComm;
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::{Model, Recompute};
use ferrotron::optim;
use ferrotron::parallel::zero::Zero;

fn cfg(extra: &[&str]) -> Config {
    let mut sets: Vec<String> = [
        "train.batch_size=2", "train.seq_len=16", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
        "model.d_ff=64", "model.vocab_size=96", "model.max_seq_len=32", "optimizer.lr=3e-3", "model.tied_embeddings=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    config::load(None, &sets).unwrap()
}

/// `x` rounded to bf16 (nearest even) and widened back: the reference's
/// own rounding, independent of the backend's.
fn bf16_reference(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// How the gradients reach the optimizer.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Grads {
    /// fp32 buffers, used as they are.
    Fp32,
    /// fp32 buffers rounded to bf16 on the host before the norm.
    Fp32RoundedOnHost,
    /// `DType::Bf16` buffers (the feature under test).
    Bf16,
}

struct RunOut {
    losses: Vec<f32>,
    norms: Vec<f64>,
    weights: Vec<f32>,
}

/// `steps` optimizer steps of one micro-batch each on fixed token
/// batches, clipping at 0.5 (so the norm of the bf16 gradients matters).
fn run(c: &Config, stage: u32, grads: Grads, steps: usize) -> RunOut {
    let mut b = CpuBackend::new();
    let layout = ParamLayout::new(&c.model);
    let weights = init_weights(&c.model, &layout, 7);
    let dtype = if grads == Grads::Bf16 { DType::Bf16 } else { DType::F32 };
    let mut zero = Zero::with_grad_dtype(&mut b, &c.model, &layout, stage, Box::new(SoloComm), false, &weights, dtype).unwrap();
    let mut opt = optim::build(&mut b, &c.optimizer, &zero.optimizer_layout(), 7).unwrap();
    let mut model = Model::new_bare(&c.model, Recompute::Off);
    let (batch, seq) = (c.train.batch_size, c.train.seq_len);
    let mut out = RunOut { losses: vec![], norms: vec![], weights: vec![] };
    for step in 0..steps {
        let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 37 + step * 11 + i * i) % c.model.vocab_size) as u32).collect();
        let targets: Vec<u32> = tokens.iter().map(|t| (t * 5 + 3) % c.model.vocab_size as u32).collect();
        zero.zero_grads(&mut b).unwrap();
        let loss = model.forward_backward_in(&mut b, &mut zero, &tokens, &targets, batch, seq, 1.0 / (batch * seq) as f32).unwrap();
        let grad_view = View::whole(zero.shard_grads, zero.shard_len());
        if grads == Grads::Fp32RoundedOnHost {
            let mut host = vec![0.0; grad_view.len];
            b.download(grad_view, &mut host).unwrap();
            host.iter_mut().for_each(|g| *g = bf16_reference(*g));
            b.upload(grad_view, &host).unwrap();
        }
        if grads == Grads::Bf16 {
            let mut host = vec![0.0; grad_view.len];
            b.download(grad_view, &mut host).unwrap();
            assert!(host.iter().all(|&g| bf16_reference(g).to_bits() == g.to_bits()), "step {step}: a bf16 gradient buffer holds a value that is not a bf16");
        }
        let norm = zero.grad_norm(&mut b).unwrap();
        let clip = if norm > 0.5 { (0.5 / norm) as f32 } else { 1.0 };
        opt.step(&mut b, zero.shard_params, zero.shard_grads, 3e-3, clip).unwrap();
        zero.after_step(&mut b).unwrap();
        out.losses.push(loss);
        out.norms.push(norm);
    }
    out.weights = zero.full_weights(&mut b).unwrap();
    out
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn bf16_equals_rounded_reference(extra: &[&str]) {
    let c = cfg(extra);
    for stage in [0, 3] {
        let what = format!("{extra:?} stage {stage}");
        let reference = run(&c, stage, Grads::Fp32RoundedOnHost, 6);
        let bf16 = run(&c, stage, Grads::Bf16, 6);
        assert!(same_bits(&bf16.losses, &reference.losses), "{what}: losses {:?} vs reference {:?}", bf16.losses, reference.losses);
        assert_eq!(bf16.norms, reference.norms, "{what}: gradient norms");
        assert!(same_bits(&bf16.weights, &reference.weights), "{what}: final weights differ from the reference");
        // The rounding is real: fp32 gradients train to other weights.
        let fp32 = run(&c, stage, Grads::Fp32, 6);
        assert!(!same_bits(&fp32.weights, &bf16.weights), "{what}: bf16 gradients changed nothing");
        assert!(bf16.losses[5] < bf16.losses[0], "{what}: training goes on ({:?})", bf16.losses);
    }
}

#[test]
fn adamw_llama_style_equals_reference() {
    bf16_equals_rounded_reference(&["optimizer.name=adamw", "model.norm=rmsnorm", "model.mlp=swiglu", "model.positions=rope"]);
}

#[test]
fn adamw8bit_llama_style_equals_reference() {
    bf16_equals_rounded_reference(&["optimizer.name=adamw8bit", "model.norm=rmsnorm", "model.mlp=swiglu", "model.positions=rope"]);
}

/// GPT-2 style: layernorm weights and biases, linear biases, learned
/// positions (their gradients go through the other backward ops).
#[test]
fn adamw_gpt2_style_equals_reference() {
    bf16_equals_rounded_reference(&["optimizer.name=adamw", "model.norm=layernorm", "model.mlp=gelu", "model.positions=learned", "model.bias=true"]);
}

fn refusal(extra: &[&str]) -> String {
    let mut sets: Vec<String> = vec!["train.grad_dtype=bf16".into()];
    sets.extend(extra.iter().map(|s| s.to_string()));
    match config::load(None, &sets) {
        Ok(_) => panic!("{extra:?}: accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unsupported_settings_are_refused() {
    let allowed = "runs with optimizer.name = adamw or adamw8bit, in one process";
    for opt in ["lion", "muon", "apollo", "frugal", "cosmos", "onebit_adam"] {
        let e = refusal(&[&format!("optimizer.name={opt}")]);
        assert!(e.contains(allowed) && e.contains(opt), "{opt}: {e}");
    }
    let e = refusal(&["dist.world=2", "dist.zero_stage=3"]);
    assert!(e.contains(allowed) && e.contains("dist.world = 2"), "{e}");
    let e = refusal(&["offload.optimizer=cpu"]);
    assert!(e.contains(allowed) && e.contains("offload.optimizer = cpu"), "{e}");
    let e = format!("{:#}", config::load(None, &["train.grad_dtype=fp16".to_string()]).unwrap_err());
    assert!(e.contains("train.grad_dtype = `fp16` is unknown; available: fp32, bf16"), "{e}");
    // Allowed: both optimizers at every stage in one process.
    for opt in ["adamw", "adamw8bit"] {
        for stage in 0..=3 {
            let sets = ["train.grad_dtype=bf16".to_string(), format!("optimizer.name={opt}"), format!("dist.zero_stage={stage}")];
            config::load(None, &sets).unwrap();
        }
    }
}

/// Rank 0 of a world of two whose collectives are never reached.
struct RankOfTwo;

impl<B: Backend> ferrotron::dist::Comm<B> for RankOfTwo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        2
    }
    fn kind(&self) -> &'static str {
        "rank of two"
    }
    fn all_reduce_sum(&mut self, _: &mut B, _: View) -> anyhow::Result<()> {
        unreachable!("refused before any collective")
    }
    fn reduce_scatter_sum(&mut self, _: &mut B, _: View, _: &[usize]) -> anyhow::Result<()> {
        unreachable!("refused before any collective")
    }
    fn all_gather(&mut self, _: &mut B, _: View, _: &[usize], _: ferrotron::dist::Elem) -> anyhow::Result<()> {
        unreachable!("refused before any collective")
    }
    fn broadcast(&mut self, _: &mut B, _: View, _: usize, _: ferrotron::dist::Elem) -> anyhow::Result<()> {
        unreachable!("refused before any collective")
    }
    fn all_to_all(&mut self, _: &mut B, _: View, _: View, _: ferrotron::dist::Elem) -> anyhow::Result<()> {
        unreachable!("refused before any collective")
    }
    fn all_reduce_host(&mut self, _: &mut [f64]) -> anyhow::Result<()> {
        unreachable!("refused before any collective")
    }
    fn barrier(&mut self) -> anyhow::Result<()> {
        unreachable!("refused before any collective")
    }
    fn bytes_sent(&self) -> u64 {
        0
    }
}

/// A world of two ranks (the launcher's, not `dist.world`): ZeRO refuses
/// before allocating.
#[test]
fn zero_refuses_bf16_over_several_ranks() {
    let c = cfg(&[]);
    let mut b = CpuBackend::new();
    let layout = ParamLayout::new(&c.model);
    let weights = init_weights(&c.model, &layout, 7);
    let e = Zero::with_grad_dtype(&mut b, &c.model, &layout, 1, Box::new(RankOfTwo), false, &weights, DType::Bf16).err().expect("refused");
    assert!(format!("{e:#}").contains("train.grad_dtype = bf16 runs in one process; this run has 2 ranks"), "{e:#}");
    assert_eq!(b.live_bytes(), 0, "nothing allocated");
}

/// On the CPU only the ops that write gradients may write a bf16 buffer
/// (they round it); any other op refuses instead of leaving f32 values.
#[test]
fn cpu_ops_that_do_not_round_refuse_bf16_outputs() {
    let mut b = CpuBackend::new();
    let g = View::whole(b.alloc(4, DType::Bf16).unwrap(), 4);
    let x = View::whole(b.alloc(4, DType::F32).unwrap(), 4);
    b.upload(x, &[1.0 + 1.0 / 512.0, 3.0, -2.5, 1e-3]).unwrap();
    b.copy(g, x).unwrap();
    let mut host = [0.0; 4];
    b.download(g, &mut host).unwrap();
    assert_eq!(host, [1.0, 3.0, -2.5, bf16_reference(1e-3)], "copy rounds to bf16 (ties to even)");
    b.accumulate(g, x).unwrap();
    b.download(g, &mut host).unwrap();
    assert_eq!(host[0], bf16_reference(1.0 + 1.0 + 1.0 / 512.0));
    let e = b.add(g, x, x).unwrap_err();
    assert!(format!("{e:#}").contains("is a bf16 buffer"), "{e:#}");
    assert!(b.sum_squares(g).unwrap() > 0.0, "reading a bf16 buffer is fine");
}

/// The trainer's path: gradient accumulation, tied embeddings (the head's
/// GEMM and the embedding backward both add into `wte`'s bf16 gradient),
/// logits in chunks, block checkpointing, clipping, ZeRO stage 3 in one
/// process: every op that writes a gradient is one that rounds (the CPU
/// backend refuses any other), and training goes on.
#[test]
fn trainer_runs_with_bf16_gradients() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, stage) in [("s0", 0), ("s3", 3)] {
        let dir = format!("run.dir=\"{}\"", tmp.path().display());
        let run_name = format!("run.name={name}");
        let stage = format!("dist.zero_stage={stage}");
        let c = cfg(&[
            "train.grad_dtype=bf16", "optimizer.name=adamw8bit", "model.tied_embeddings=true", "model.vocab_size=256", "train.grad_accum=2", "train.batch_size=4",
            "train.logits_chunk=64", "train.checkpoint_layers=true", "train.grad_clip=0.5", "train.steps=8", "train.warmup_steps=2",
            "train.eval_every=0", "train.eval_batches=1", "train.samples=0", "run.progress=false", &dir, &run_name, &stage,
        ]);
        let out = ferrotron::train::trainer::train(&c, None).unwrap();
        assert_eq!(out.losses.len(), 8, "{name}");
        assert!(out.losses.iter().all(|l| l.is_finite()), "{name}: {:?}", out.losses);
        assert!(out.losses[7] < out.losses[0], "{name}: training goes on ({:?})", out.losses);
        let saved = std::fs::read_to_string(tmp.path().join(name).join("config.toml")).unwrap();
        assert!(saved.contains("grad_dtype = \"bf16\""), "{name}: the run records its gradient dtype");
    }
}

/// `info`: 2 bytes per parameter of gradients with bf16 on CUDA (the CPU
/// reference stores bf16 values in f32: 4), at stage 0 and in one process
/// at stage 3; nothing else changes.
#[test]
fn info_counts_two_bytes_per_parameter() {
    use ferrotron::telemetry::memory::estimate;
    for stage in ["0", "3"] {
        let base = ["device=cuda", "model.preset=llama3-8b", "train.batch_size=1", "train.seq_len=4096", "optimizer.name=adamw8bit", "train.checkpoint_layers=true"];
        let load = |grads: &str| {
            let mut sets: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            sets.push(format!("dist.zero_stage={stage}"));
            sets.push(format!("train.grad_dtype={grads}"));
            estimate(&config::load(None, &sets).unwrap())
        };
        let (fp32, bf16) = (load("fp32"), load("bf16"));
        assert_eq!(fp32.grads, 4 * fp32.params, "stage {stage}");
        assert_eq!(bf16.grads, 2 * bf16.params, "stage {stage}");
        assert_eq!(fp32.total() - bf16.total(), 2 * fp32.params, "stage {stage}: only the gradients shrink");
    }
    let cpu = estimate(&config::load(None, &["train.grad_dtype=bf16".to_string()]).unwrap());
    assert_eq!(cpu.grads, 4 * cpu.params, "the CPU stores bf16 gradients as f32");
}
