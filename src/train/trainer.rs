//! The training loop. One optimizer step, top-down:
//! zero grads → for each micro-batch: forward + backward (gradients
//! accumulate) → global gradient norm → clip factor → optimizer step →
//! metrics; every `eval_every` steps a validation pass, every `ckpt_every`
//! steps a checkpoint.

use super::run_dir;
use super::sample::{self, SampleOptions};
use super::schedule::lr_at;
use crate::backend::select::{on_device, OnBackend};
use crate::backend::Backend;
use crate::ckpt::{self, train_state::{self, SaveParts, Sharding}};
use crate::dist::Comm;
use crate::optim::groups::MATRIX_OPTIMIZERS;
use crate::parallel::zero::Zero;
use crate::config::Config;
use crate::data::{Dataset, Loader, Split};
use crate::model::{init::init_weights, Model, Recompute};
use crate::optim::{self, Optimizer};
use crate::telemetry::{self, metrics::{MetricsWriter, TrainMetrics}, progress::Progress};
use crate::util::rng::Rng;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    /// Train loss of every step this process ran, in order.
    pub losses: Vec<f32>,
    pub final_val_loss: Option<f32>,
    pub tokens_per_s: f64,
    pub peak_mem_bytes: u64,
    /// Model FLOPs utilization of the whole run, where the peak is known.
    pub mfu: Option<f64>,
    pub samples: Vec<String>,
    /// This process's rank (0 when not distributed): only rank 0 reports.
    pub rank: usize,
    /// Payload bytes this rank sent during the training steps of this
    /// process, and what dense f32 all-reduces of the gradients would have
    /// sent over those steps (0 on one process).
    pub comm_bytes: u64,
    pub dense_bytes: u64,
}

/// Everything the loop mutates, kept together so checkpoints capture it.
/// The weights, gradients and the communicator live in `zero` (ZeRO stage
/// 0 at world size 1 is the single-process run); `model` holds the
/// activations and runs the passes with `zero` as its parameter store.
pub(super) struct State<B: Backend> {
    pub(super) model: Model,
    pub(super) zero: Zero<B>,
    opt: Box<dyn Optimizer<B>>,
    train: Loader,
    val: Loader,
    rng: Rng,
    step: u64,
}

impl<B: Backend> State<B> {
    fn lead(&self) -> bool {
        self.zero.rank() == 0
    }
}

/// Starts a new run (`resume = None`) or continues one from its newest
/// complete checkpoint.
pub fn train(cfg: &Config, resume: Option<&Path>) -> Result<RunSummary> {
    // A new run may start from Hugging Face weights (a resumed one has its own).
    let mut cfg = cfg.clone();
    let init = match resume {
        None if !cfg.model.init_from.is_empty() => Some(super::init_from::load(&mut cfg)?),
        _ => None,
    };
    let world = crate::dist::WorldInfo::from_env()?;
    let gpu = world.cuda_device(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref());
    on_device(&cfg.device, gpu, TrainJob { cfg: &cfg, resume, init, world })
}

struct TrainJob<'a> {
    cfg: &'a Config,
    resume: Option<&'a Path>,
    init: Option<Vec<f32>>,
    world: crate::dist::WorldInfo,
}

impl OnBackend for TrainJob<'_> {
    type Output = RunSummary;
    fn run<B: Backend + 'static>(self, mut b: B) -> Result<RunSummary> {
        // One process needs no rendezvous: the world of one.
        let comm: Box<dyn Comm<B>> = if self.world.world == 1 { Box::new(crate::dist::SoloComm) } else { crate::dist::connect(&self.cfg.dist, &self.world, &mut b)? };
        let asked = self.cfg.dist.world;
        if asked > 0 && asked != comm.world() && self.resume.is_none() {
            bail!("dist.world = {asked} but the launcher started {} rank(s); drop dist.world (it is for `info` estimates) or launch {asked} ranks", comm.world());
        }
        // The run records the world it trains with (config.toml, manifests).
        let mut cfg = self.cfg.clone();
        cfg.dist.world = comm.world();
        run_on(b, comm, &cfg, self.resume, self.init)
    }
}

fn run_on<B: Backend + 'static>(mut b: B, comm: Box<dyn Comm<B>>, cfg: &Config, resume: Option<&Path>, init: Option<Vec<f32>>) -> Result<RunSummary> {
    let data = Dataset::open(&cfg.data.path)?;
    if data.tokenizer.vocab_size() > cfg.model.vocab_size {
        bail!(
            "the data's tokenizer ({}) has {} tokens but model.vocab_size = {}; raise model.vocab_size",
            data.tokenizer.name(),
            data.tokenizer.vocab_size(),
            cfg.model.vocab_size
        );
    }
    let mut st = new_state(&mut b, cfg, &data, comm)?;
    let lead = st.lead();
    // Rank 0 names and creates the run folder; the others learn its name.
    let run_dir = match resume {
        Some(dir) => dir.to_path_buf(),
        None => {
            let made = if lead { run_dir::create(cfg)?.display().to_string() } else { String::new() };
            PathBuf::from(crate::dist::share_string(st.zero.comm.as_mut(), &made)?)
        }
    };
    if lead {
        crate::util::atomic::write_file(&run_dir.join("tokenizer.txt"), data.tokenizer.name().as_bytes())?;
    }
    if let Some(weights) = init {
        st.zero.set_weights(&mut b, &weights)?;
    }
    if resume.is_some() {
        restore(&mut b, &mut st, cfg, &run_dir)?;
    }
    let mut metrics = if lead { Some(MetricsWriter::open(&run_dir, resume.map(|_| st.step))?) } else { None };
    let progress = Progress::new(cfg.train.steps, st.step, cfg.run.progress && lead);
    let say = |msg: String| {
        if lead {
            progress.println(msg)
        }
    };
    let world = st.zero.world();
    say(format!(
        "run {} | {} on {}{} | {:.2}M parameters | {} tokens per step",
        run_dir.display(),
        cfg.model.preset,
        b.name(),
        if world > 1 { format!(" × {world} ranks ({}, ZeRO stage {})", st.zero.comm.kind(), cfg.dist.zero_stage) } else { String::new() },
        st.model.num_params() as f64 / 1e6,
        tokens_per_step(cfg) * world
    ));
    if !cfg.model.init_from.is_empty() {
        say(format!("weights and model shape from {}", cfg.model.init_from));
    }
    let unigram = crate::data::unigram_entropy(&data.tokens(Split::Val)?);
    say(format!("baseline: uniform guess {:.3} nats/token, unigram frequencies {unigram:.3}", (cfg.model.vocab_size as f64).ln()));
    let mut summary = RunSummary { run_dir: run_dir.clone(), steps: st.step, losses: vec![], final_val_loss: None, tokens_per_s: 0.0, peak_mem_bytes: 0, mfu: None, samples: vec![], rank: st.zero.rank(), comm_bytes: 0, dense_bytes: 0 };
    let started = Instant::now();
    let first_step = st.step;
    // MFU where the device's peak is known (causal attention FLOPs halved);
    // tokens per second are global, so the peak is the world's.
    let peak_flops = telemetry::flops::peak_flops_for(&b.device_name()).map(|p| p * world as f64);
    let flops_per_token = telemetry::flops::flops_per_token(&cfg.model, cfg.train.seq_len, true);
    while st.step < cfg.train.steps {
        let mut line = train_step(&mut b, &mut st, cfg)?;
        line.mfu = peak_flops.map(|p| telemetry::flops::mfu(line.tokens_per_s, flops_per_token, p));
        summary.losses.push(line.loss as f32);
        if let (Some(sent), Some(ratio)) = (line.comm_bytes, line.comm_ratio) {
            summary.comm_bytes += sent;
            summary.dense_bytes += if ratio > 0.0 { (sent as f64 / ratio).round() as u64 } else { 0 };
        }
        if let Some(m) = metrics.as_mut() {
            m.train(&line)?;
        }
        progress.update(st.step, line.loss, line.tokens_per_s);
        let last = st.step == cfg.train.steps;
        if (cfg.train.eval_every > 0 && st.step % cfg.train.eval_every == 0) || last {
            let val = evaluate(&mut b, &mut st, cfg)?;
            summary.final_val_loss = Some(val);
            if let Some(m) = metrics.as_mut() {
                m.eval(st.step, val as f64)?;
            }
            say(format!("step {:>6} | val loss {val:.4}", st.step));
            if cfg.train.samples > 0 && !last {
                let text = sample_text(&mut b, &mut st, &data, cfg.train.sample_tokens.min(80))?;
                say(format!("         | sample: {}", text.replace('\n', " ⏎ ")));
            }
        }
        if (cfg.train.ckpt_every > 0 && st.step % cfg.train.ckpt_every == 0) || last {
            save(&mut b, &mut st, cfg, &run_dir)?;
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    summary.steps = st.step;
    summary.tokens_per_s = (st.step - first_step) as f64 * (tokens_per_step(cfg) * world) as f64 / secs.max(1e-9);
    summary.peak_mem_bytes = b.peak_memory_bytes();
    summary.mfu = peak_flops.map(|p| telemetry::flops::mfu(summary.tokens_per_s, flops_per_token, p));
    if lead {
        let lines = telemetry::metrics::read_metrics(&run_dir.join("metrics.jsonl"))?;
        telemetry::plot::plot_loss(&lines, &run_dir.join("loss.png"), &format!("{} — {}", cfg.model.preset, run_dir.display()))?;
    }
    summary.samples = samples(&mut b, &mut st, cfg, &data)?;
    Ok(summary)
}

/// Tokens one rank trains on per optimizer step.
pub(super) fn tokens_per_step(cfg: &Config) -> usize {
    cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum
}

pub(super) fn new_state<B: Backend + 'static>(b: &mut B, cfg: &Config, data: &Dataset, comm: Box<dyn Comm<B>>) -> Result<State<B>> {
    let t = &cfg.train;
    let model = Model::new_bare(&cfg.model, Recompute::of(t)).with_logits_chunk(t.logits_chunk);
    let weights = init_weights(&cfg.model, &model.layout, cfg.seed);
    let whole_tensors = MATRIX_OPTIMIZERS.contains(&cfg.optimizer.name.as_str());
    let zero = Zero::new(b, &cfg.model, &model.layout, cfg.dist.zero_stage, comm, whole_tensors, &weights)?;
    let opt = optim::build(b, &cfg.optimizer, &zero.optimizer_layout(), cfg.seed)?;
    let (rank, world) = (zero.rank(), zero.world());
    let train = Loader::new(data, Split::Train, t.batch_size, t.seq_len, cfg.seed, rank, world)?;
    let val = Loader::new(data, Split::Val, t.batch_size, t.seq_len, cfg.seed, rank, world)?;
    Ok(State { model, zero, opt, train, val, rng: Rng::new(cfg.seed ^ 0x5A4D_504C), step: 0 })
}

/// One optimizer step: every micro-batch's forward and backward (gradients
/// reduced as the store decides), the global gradient norm and clipping,
/// the optimizer on this rank's shard, the weights brought up to date.
pub(super) fn train_step<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config) -> Result<TrainMetrics> {
    let t = &cfg.train;
    let world = st.zero.world();
    let start = Instant::now();
    let bytes_before = st.zero.comm.bytes_sent();
    b.clear_marks();
    st.model.clear_phase_spans();
    st.zero.zero_grads(b)?;
    let mut loss_sum = 0.0f64;
    for _ in 0..t.grad_accum {
        let batch = st.train.next_batch()?;
        // Summed over ranks by the reduction: the mean over the global batch.
        let scale = 1.0 / (batch.targets.len() * t.grad_accum * world) as f32;
        loss_sum += st.model.forward_backward_in(b, &mut st.zero, &batch.inputs, &batch.targets, t.batch_size, t.seq_len, scale)? as f64;
    }
    let comm_start = b.mark()?;
    // 1-bit Adam after its freeze step averages its momentum itself: the
    // gradients stay local, unclipped (each rank's norm is its own).
    let local = st.opt.local_gradients();
    if !local {
        st.zero.finish_grads(b)?;
    }
    let loss = st.zero.mean_host(loss_sum / t.grad_accum as f64)? as f32;
    if !loss.is_finite() {
        bail!("loss became {loss} at step {}; lower optimizer.lr or raise train.warmup_steps", st.step + 1);
    }
    let grad_norm = if local { st.zero.local_grad_norm(b)? } else { st.zero.grad_norm(b)? } as f32;
    let clip = if !local && t.grad_clip > 0.0 && grad_norm > t.grad_clip { t.grad_clip / grad_norm } else { 1.0 };
    let opt_start = b.mark()?;
    let lr = lr_at(t, cfg.optimizer.lr, st.step);
    let (params, grads) = (st.zero.shard_params, st.zero.shard_grads);
    st.opt.step_dist(b, st.zero.dist_step(), params, grads, lr, clip)?;
    st.zero.after_step(b)?;
    let end = b.mark()?;
    let (fwd_ms, bwd_ms) = st.model.phase_ms(b)?;
    let (opt_ms, reduce_ms) = (b.elapsed_ms(opt_start, end)?, b.elapsed_ms(comm_start, opt_start)?);
    st.step += 1;
    let step_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(TrainMetrics {
        step: st.step,
        loss: loss as f64,
        lr: lr as f64,
        grad_norm: grad_norm as f64,
        tokens_per_s: (tokens_per_step(cfg) * world) as f64 / (step_ms / 1e3),
        step_ms,
        peak_mem_bytes: b.peak_memory_bytes(),
        fwd_ms: Some(fwd_ms),
        bwd_ms: Some(bwd_ms + reduce_ms),
        opt_ms: Some(opt_ms),
        mfu: None,
        ..comm_metrics(st, bytes_before)
    })
}

/// Bytes this rank sent during the step and their ratio to one dense f32
/// all-reduce of every gradient (None on one process).
fn comm_metrics<B: Backend>(st: &State<B>, bytes_before: u64) -> TrainMetrics {
    let comm = st.zero.comm.as_ref();
    let sent = comm.bytes_sent() - bytes_before;
    let dense = comm.all_reduce_bytes(st.model.layout.total, crate::dist::Elem::F32);
    if comm.world() == 1 {
        return TrainMetrics::default();
    }
    TrainMetrics { comm_bytes: Some(sent), comm_ratio: (dense > 0).then(|| sent as f64 / dense as f64), ..Default::default() }
}

/// Mean validation loss over `eval_batches` fixed batches (per rank; the
/// mean over ranks).
fn evaluate<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config) -> Result<f32> {
    let t = &cfg.train;
    st.val.reset();
    let mut sum = 0.0f64;
    for _ in 0..t.eval_batches.max(1) {
        let batch = st.val.next_batch()?;
        sum += st.model.eval_loss_in(b, &mut st.zero, &batch.inputs, &batch.targets, t.batch_size, t.seq_len)? as f64;
    }
    Ok(st.zero.mean_host(sum / t.eval_batches.max(1) as f64)? as f32)
}

/// A checkpoint of the whole state (a collective: every rank calls it).
fn save<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<PathBuf> {
    let weights = st.zero.full_weights(b)?;
    let (rank, world) = (st.zero.rank(), st.zero.world());
    let sharding = Sharding { world, zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    if rank > 0 && cfg.dist.zero_stage > 0 {
        train_state::write_shard(b, st.opt.as_ref(), run_dir, st.step, rank)?;
    }
    st.zero.comm.barrier()?;
    let mut dir = ckpt::step_dir(run_dir, st.step);
    if rank == 0 {
        let manifest = ckpt::Manifest {
            loader: serde_json::to_value(st.train.state())?,
            rng: serde_json::to_value(&st.rng)?,
            optimizer: st.opt.meta(),
            ..ckpt::Manifest::new(st.step, cfg.to_toml())
        };
        let parts = SaveParts { layout: &st.model.layout, weights: &weights, manifest, sharding, rank, keep_last: cfg.train.keep_ckpts };
        dir = train_state::publish(b, st.opt.as_ref(), run_dir, parts)?;
    }
    // No rank runs ahead of a checkpoint that is not yet published.
    st.zero.comm.barrier()?;
    Ok(dir)
}

fn restore<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<()> {
    let Some(dir) = ckpt::latest(run_dir)? else {
        bail!("cannot resume {}: it has no complete checkpoint yet (checkpoints/step_*)", run_dir.display());
    };
    let loaded = ckpt::load(&dir)?;
    check_global_batch(&loaded, cfg, st.zero.world())?;
    let mut params = vec![0.0f32; st.model.layout.total];
    ckpt::load_into_layout(&loaded, &st.model.layout, &mut params)?;
    st.zero.set_weights(b, &params)?;
    let now = Sharding { world: st.zero.world(), zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    train_state::restore_optimizer(b, st.opt.as_mut(), &loaded, &now, st.zero.rank())?;
    st.train.restore(&serde_json::from_value(loaded.manifest.loader.clone())?)?;
    st.rng = serde_json::from_value(loaded.manifest.rng.clone())?;
    st.step = loaded.manifest.step;
    Ok(())
}

/// A resume may change the number of ranks and the per-rank batch, not the
/// global batch (the same sequences per step, whatever the world size).
fn check_global_batch(loaded: &ckpt::Loaded, cfg: &Config, world: usize) -> Result<()> {
    let saved = crate::config::from_run_toml(&loaded.manifest.config_toml, "the checkpoint's config")?;
    let was = saved.train.batch_size * saved.dist.world.max(1);
    let now = cfg.train.batch_size * world;
    if was != now {
        bail!(
            "cannot resume {}: it trained with a global batch of {was} sequences (train.batch_size {} × {} rank(s)); \
             this run has {now} ({} × {world}). Set train.batch_size = {} for {world} rank(s)",
            loaded.dir.display(),
            saved.train.batch_size,
            saved.dist.world.max(1),
            cfg.train.batch_size,
            if was % world == 0 { (was / world).to_string() } else { format!("{was}/{world} (not a whole number: use a world size that divides {was})") }
        );
    }
    Ok(())
}

/// A few samples from the trained model, printed at the end of the run.
fn samples<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, data: &Dataset) -> Result<Vec<String>> {
    (0..cfg.train.samples).map(|_| sample_text(b, st, data, cfg.train.sample_tokens)).collect()
}

/// One sample of up to `tokens` tokens, starting a new document.
fn sample_text<B: Backend>(b: &mut B, st: &mut State<B>, data: &Dataset, tokens: usize) -> Result<String> {
    let opts = SampleOptions { max_tokens: tokens, temperature: 0.8, top_k: 40 };
    let tok = &data.tokenizer;
    let prompt = match tok.eot() {
        Some(eot) => vec![eot],
        None => tok.encode("\n"),
    };
    // Every rank samples the same tokens (same RNG): at ZeRO-3 the forward
    // gathers weights, a collective all ranks must join.
    let ids = sample::generate_in(b, &mut st.model, &mut st.zero, &prompt, opts, tok.eot(), &mut st.rng)?;
    Ok(tok.decode(&ids))
}
