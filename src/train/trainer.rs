//! The training loop. One optimizer step, top-down:
//! zero grads → for each micro-batch: forward + backward (gradients
//! accumulate) → global gradient norm → clip factor → optimizer step →
//! metrics; every `eval_every` steps a validation pass, every `ckpt_every`
//! steps a checkpoint.

use super::guard::Guard;
use super::inject;
use super::lr_source::LrSource;
use super::run_dir;
use super::sample::{self, SampleOptions};
use super::schedule::lr_at;
use crate::backend::select::{on_device, OnBackend};
use crate::backend::Backend;
use crate::dist::Comm;
use crate::optim::groups::MATRIX_OPTIMIZERS;
use crate::parallel::offload::{self, Offload};
use crate::parallel::zero::Zero;
use crate::config::Config;
use crate::data::{Dataset, Loader, Split};
use crate::model::init::{init_weights, InitWeights};
use crate::model::{Attention, LocalAttention, Model};
use crate::parallel::ulysses::{self, Ulysses};
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
    /// Steps not applied over the whole run (see `guard`).
    pub skipped_steps: u64,
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
    pub(super) opt: Box<dyn Optimizer<B>>,
    /// `offload.optimizer = cpu | nvme`: master weights and optimizer state
    /// off the device (then `opt` is a stand-in and `zero` holds only the
    /// device weights).
    pub(super) off: Option<Offload>,
    /// The blocks' attention step: local, or Ulysses over the
    /// sequence-parallel group (`dist.sp`).
    attn: Box<dyn Attention<B>>,
    pub(super) train: Loader,
    /// `None` when the data has no validation split (`prepare --val-fraction 0`).
    val: Option<Loader>,
    pub(super) rng: Rng,
    pub(super) step: u64,
    /// Bad-step policy (guard.rs); its decisions use the global loss and
    /// gradient norm, so every rank decides alike.
    pub(super) guard: Guard,
    /// A checkpoint's copies to host memory still landing (checkpointing.rs).
    pub(super) ckpt_hook: super::checkpointing::UpdateHook,
}

impl<B: Backend> State<B> {
    pub(super) fn lead(&self) -> bool {
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
    super::preflight::check_host_memory(&cfg)?;
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
        // One process needs no rendezvous (the world of one), unless a
        // communicator is asked for by name (e.g. to test NCCL on one GPU).
        let solo = self.world.world == 1 && self.cfg.dist.backend == "auto";
        let mut comm: Box<dyn Comm<B>> = if solo { Box::new(crate::dist::SoloComm) } else { crate::dist::connect(&self.cfg.dist, &self.world, &mut b)? };
        // Sequence parallelism: a second communicator over this rank's
        // group of dist.sp consecutive ranks, met at a port its first rank
        // found free.
        let sp = self.cfg.dist.sp;
        ulysses::check(&self.cfg.model, sp, comm.world(), self.cfg.train.seq_len)?;
        let group = if sp > 1 {
            let ports = crate::dist::group_ports(comm.as_mut(), sp)?;
            Some(crate::dist::connect_group_at(&self.cfg.dist, &self.world, sp, ports[self.world.rank / sp], &mut b)?)
        } else {
            None
        };
        let asked = self.cfg.dist.world;
        if asked > 0 && asked != comm.world() && self.resume.is_none() {
            bail!("dist.world = {asked} but the launcher started {} rank(s); drop dist.world (it is for `info` estimates) or launch {asked} ranks", comm.world());
        }
        // The run records the world it trains with (config.toml, manifests).
        let mut cfg = self.cfg.clone();
        cfg.dist.world = comm.world();
        run_on(b, comm, group, &cfg, self.resume, self.init)
    }
}

fn run_on<B: Backend + 'static>(mut b: B, comm: Box<dyn Comm<B>>, group: Option<Box<dyn Comm<B>>>, cfg: &Config, resume: Option<&Path>, init: Option<Vec<f32>>) -> Result<RunSummary> {
    let data = Dataset::open(&cfg.data.path)?;
    if data.tokenizer.vocab_size() > cfg.model.vocab_size {
        bail!(
            "the data's tokenizer ({}) has {} tokens but model.vocab_size = {}; raise model.vocab_size",
            data.tokenizer.name(),
            data.tokenizer.vocab_size(),
            cfg.model.vocab_size
        );
    }
    let mut st = new_state_sp(&mut b, cfg, &data, comm, group)?;
    let lead = st.lead();
    // Rank 0 names, creates and locks the run folder (one training per
    // folder: util/lock.rs; held until this returns); the others learn its name.
    let mut _lock = None;
    let run_dir = match resume {
        Some(dir) => {
            if lead {
                _lock = Some(crate::util::lock::RunLock::acquire(dir)?);
            }
            dir.to_path_buf()
        }
        None => {
            let made = if lead {
                let (dir, lock) = run_dir::create(cfg)?;
                _lock = Some(lock);
                dir.display().to_string()
            } else {
                String::new()
            };
            PathBuf::from(crate::dist::share_string(st.zero.comm.as_mut(), &made)?)
        }
    };
    if lead {
        data.tokenizer.save_to_run(&run_dir)?;
    }
    if let Some(weights) = init {
        st.zero.set_weights(&mut b, &weights)?;
        if let Some(off) = st.off.as_mut() {
            off.set_weights_on(&mut b, &mut st.zero, &weights)?;
        }
    }
    if resume.is_some() {
        let restored = super::checkpointing::restore(&mut b, &mut st, cfg, &run_dir)?;
        if lead && !restored {
            eprintln!("note: {} has no checkpoint yet (stopped before its first one?): starting it from step 0", run_dir.display());
        }
        // The resume rule: this resume's settings become the run's (README).
        if lead {
            for change in run_dir::record_config(&run_dir, cfg)? {
                eprintln!("note: config.toml updated: {change}");
            }
        }
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
        if world > 1 { format!(" × {world} ranks ({}, ZeRO stage {}{})", st.zero.comm.kind(), cfg.dist.zero_stage, if cfg.dist.sp > 1 { format!(", Ulysses sp {}", cfg.dist.sp) } else { String::new() }) } else { String::new() },
        st.model.num_params() as f64 / 1e6,
        global_tokens(cfg, world)
    ));
    if !cfg.model.init_from.is_empty() {
        say(format!("weights and model shape from {}", cfg.model.init_from));
    }
    if st.val.is_some() {
        let unigram = crate::data::unigram_entropy(&data.tokens(Split::Val)?);
        say(format!("baseline: uniform guess {:.3} nats/token, unigram frequencies {unigram:.3}", (cfg.model.vocab_size as f64).ln()));
    } else {
        if cfg.train.stop_at_val_loss > 0.0 {
            bail!("train.stop_at_val_loss = {} needs a validation loss, but {} has no validation split (prepared with --val-fraction 0); prepare it with a validation split or set train.stop_at_val_loss = 0", cfg.train.stop_at_val_loss, cfg.data.path);
        }
        say(format!("{} has no validation split (prepared with --val-fraction 0): no evaluation", cfg.data.path));
    }
    let mut summary = RunSummary { run_dir: run_dir.clone(), steps: st.step, losses: vec![], final_val_loss: None, tokens_per_s: 0.0, peak_mem_bytes: 0, mfu: None, samples: vec![], skipped_steps: 0, rank: st.zero.rank(), comm_bytes: 0, dense_bytes: 0 };
    let started = Instant::now();
    let first_step = st.step;
    // MFU where the device's peak is known (causal attention FLOPs halved);
    // tokens per second are global, so the peak is the world's.
    let peak_flops = telemetry::flops::peak_flops_for(&b.device_name()).map(|p| p * world as f64);
    let flops_per_token = telemetry::flops::flops_per_token(&cfg.model, cfg.train.seq_len, true);
    let restarts = restart_count();
    if restarts > 0 {
        say(format!("restart {restarts}: continuing from step {} (launch --max-restarts)", st.step));
    }
    if world > 1 && cfg.dist.self_test {
        if let Some(report) = crate::dist::self_test::run(&mut b, st.zero.comm.as_mut(), &cfg.dist, st.step)? {
            say(report.summary());
            if let Some(m) = metrics.as_mut() {
                m.write_value(&report.to_json()?)?;
            }
        }
    }
    let mut stragglers = telemetry::ranks::StragglerWatch::default();
    // Declared after the run folder's lock, so an error exit finishes the
    // write in flight (its Drop) before the lock is released.
    let mut ckpts = super::checkpointing::Checkpoints::new(cfg);
    ckpts.prepare(&mut b, &st, cfg)?;
    // Each step's learning rate: the schedule, or AutoLRS (whose search runs
    // its trials here, on every rank alike).
    let mut lrs = LrSource::new(cfg, &run_dir, resume.map(|_| st.step), lead)?;
    // This rank is alive (RUN/heartbeat/rank<R>.json, watched by launch).
    let heartbeat = super::heartbeat::Heartbeat::start(&run_dir, st.zero.rank(), cfg.dist.timeout_s)?;
    while st.step < cfg.train.steps {
        heartbeat.beat(st.step + 1, "step")?; // the step now running
        let lr = lrs.lr_for_next_step(&mut b, &mut st, cfg, metrics.as_mut(), &say)?;
        let mut line = train_step_at(&mut b, &mut st, cfg, lr)?;
        line.mfu = peak_flops.map(|p| telemetry::flops::mfu(line.tokens_per_s, flops_per_token, p));
        line.restarts = (restarts > 0).then_some(restarts);
        line.ranks = stragglers.observe(st.zero.comm.as_mut(), &line)?;
        if let Some(r) = line.ranks.as_ref().and_then(|t| t.straggler) {
            if lead && line.ranks.as_ref().is_some_and(|t| t.slowest == r) && (st.step % 50 == 0 || line.step == first_step + telemetry::ranks::STRAGGLER_STEPS as u64) {
                say(format!("step {:>6} | rank {r} is a straggler: slowest by >{:.0}% for {}+ steps", st.step, telemetry::ranks::STRAGGLER_MARGIN * 100.0, telemetry::ranks::STRAGGLER_STEPS));
            }
        }
        fail_on_purpose(cfg, st.zero.rank(), st.step, restarts)?;
        summary.losses.push(line.loss as f32);
        if let (Some(sent), Some(ratio)) = (line.comm_bytes, line.comm_ratio) {
            summary.comm_bytes += sent;
            summary.dense_bytes += if ratio > 0.0 { (sent as f64 / ratio).round() as u64 } else { 0 };
        }
        if let Some(m) = metrics.as_mut() {
            m.train(&line)?;
        }
        log_ckpt(metrics.as_mut(), ckpts.poll()?)?;
        progress.update(st.step, line.loss, line.tokens_per_s);
        if let Some(why) = &line.skipped {
            say(format!("step {:>6} | skipped, not applied: {why}", st.step));
            let weights_finite = weights_finite(&mut b, &mut st)?;
            st.guard.check_streak(why, weights_finite, &run_dir)?;
        }
        let mut last = st.step == cfg.train.steps;
        if (cfg.train.eval_every > 0 && st.step % cfg.train.eval_every == 0 || last) && st.val.is_some() {
            let val = evaluate(&mut b, &mut st, cfg)?;
            summary.final_val_loss = Some(val);
            if let Some(m) = metrics.as_mut() {
                m.eval(st.step, val as f64)?;
            }
            say(format!("step {:>6} | val loss {val:.4}", st.step));
            // The validation loss is the mean over ranks: every rank stops alike.
            let target = cfg.train.stop_at_val_loss;
            if target > 0.0 && val <= target && !last {
                say(format!("step {:>6} | reached train.stop_at_val_loss = {target}: stopping", st.step));
                last = true;
            }
            if cfg.train.samples > 0 && !last {
                let text = sample_text(&mut b, &mut st, &data, cfg.train.sample_tokens.min(80))?;
                say(format!("         | sample: {}", text.replace('\n', " ⏎ ")));
            }
        }
        if (cfg.train.ckpt_every > 0 && st.step % cfg.train.ckpt_every == 0) || last {
            heartbeat.beat(st.step, "checkpoint")?;
            if st.guard.in_streak() {
                say(format!("step {:>6} | no checkpoint while steps are being skipped", st.step));
            } else if !weights_give_finite_loss(&mut b, &mut st, cfg)? {
                say(format!("step {:>6} | no checkpoint: the weights give a non-finite loss (the last update overflowed them)", st.step));
            } else {
                let done = ckpts.save(&mut b, &mut st, cfg, &run_dir)?;
                log_ckpt(metrics.as_mut(), done)?;
            }
        }
        if last {
            break;
        }
    }
    log_ckpt(metrics.as_mut(), ckpts.finish(&mut b)?)?;
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    summary.steps = st.step;
    summary.skipped_steps = st.guard.state.skipped;
    summary.tokens_per_s = (st.step - first_step) as f64 * global_tokens(cfg, world) as f64 / secs.max(1e-9);
    summary.peak_mem_bytes = b.peak_memory_bytes();
    summary.mfu = peak_flops.map(|p| telemetry::flops::mfu(summary.tokens_per_s, flops_per_token, p));
    if lead {
        let lines = telemetry::metrics::read_metrics(&run_dir.join("metrics.jsonl"))?;
        telemetry::plot::plot_loss(&lines, &run_dir.join("loss.png"), &format!("{} — {}", cfg.model.preset, run_dir.display()))?;
        lrs.finish(&run_dir)?;
    }
    summary.samples = samples(&mut b, &mut st, cfg, &data)?;
    Ok(summary)
}

/// Logs a complete checkpoint's timing line (rank 0).
fn log_ckpt(metrics: Option<&mut MetricsWriter>, done: Option<telemetry::metrics::CkptMetrics>) -> Result<()> {
    match (metrics, done) {
        (Some(m), Some(line)) => m.ckpt(&line),
        _ => Ok(()),
    }
}

/// Tokens one rank trains on per optimizer step.
pub(super) fn tokens_per_step(cfg: &Config) -> usize {
    cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum
}

/// Tokens of the whole world per optimizer step: each group of `dist.sp`
/// ranks trains on the same sequences.
pub(super) fn global_tokens(cfg: &Config, world: usize) -> usize {
    tokens_per_step(cfg) * world / cfg.dist.sp.max(1)
}

pub(super) fn new_state<B: Backend + 'static>(b: &mut B, cfg: &Config, data: &Dataset, comm: Box<dyn Comm<B>>) -> Result<State<B>> {
    new_state_sp(b, cfg, data, comm, None)
}

/// [`new_state`] with `group`, the sequence-parallel group's communicator
/// when `dist.sp > 1`: ZeRO shards over the whole world (`comm`), the
/// loader hands each group its sequences and each rank its slice of them.
fn new_state_sp<B: Backend + 'static>(b: &mut B, cfg: &Config, data: &Dataset, comm: Box<dyn Comm<B>>, group: Option<Box<dyn Comm<B>>>) -> Result<State<B>> {
    let t = &cfg.train;
    if cfg.offload.enabled() {
        if comm.world() > 1 || cfg.dist.zero_stage > 0 || cfg.dist.sp > 1 {
            bail!("offload.optimizer = {} runs in one process (ZeRO stage 0, dist.sp = 1) for now; launch one rank or set offload.optimizer = none", cfg.offload.optimizer);
        }
        // Before anything is allocated: enough host memory and disk?
        offload::budget::check_before_start(cfg)?;
    }
    let recompute = ulysses::recompute(t, cfg.dist.sp);
    let model = Model::new_bare(&cfg.model, recompute).with_logits_chunk(t.logits_chunk);
    let whole_tensors = MATRIX_OPTIMIZERS.contains(&cfg.optimizer.name.as_str());
    let (zero, opt, off): (_, Box<dyn Optimizer<B>>, _) = if cfg.offload.enabled() {
        // Initial weights made unit by unit (each tensor from its own
        // stream: the same values as the whole init), so the whole model
        // never sits in host memory (padded models are made whole).
        // Start-up of a big offloaded model takes minutes: say where it goes.
        let mut clock = StartupClock::new();
        let weights = InitWeights::new(&cfg.model, &model.layout, cfg.seed, true);
        let mut zero = match cfg.offload.params.as_str() {
            "cpu" | "nvme" => Zero::new_streamed(b, &cfg.model, &model.layout, comm)?,
            _ => Zero::new_offloaded_unfilled(b, &cfg.model, &model.layout, comm, cfg.debug.offload_fp32_weights)?,
        };
        clock.lap("device buffers");
        // Each unit's weights are made once (the draws are most of the
        // start-up): its device weights are uploaded from the draw that
        // then becomes its master, on the device (offload.gpu_gb) or off it.
        let total = model.layout.total;
        let device_units = offload::gpu_tier::device_units_by(b, cfg, &model.layout, &mut |b, r| {
            clock.placed(r.len(), total);
            let w = weights.range(r.clone()).into_owned();
            zero.upload_unit_weights(b, r, &w)?;
            Ok(w)
        })?;
        zero.device_units = device_units;
        clock.lap("device-tier units");
        let name = if cfg.optimizer.name == "adamw" { "adamw" } else { "adamw8bit" };
        // The offload takes the weights over unit by unit (no second copy).
        let off = Offload::new_from(cfg, &model.layout, weights, &mut |_, r, w| {
            clock.placed(r.len(), total);
            zero.upload_unit_weights(b, r, w)
        })?;
        zero.weights_uploaded(b)?;
        clock.lap(&format!("host and file units ({})", cfg.offload.optimizer));
        clock.report(model.layout.total);
        (zero, Box::new(offload::OnHost { name }), Some(off))
    } else {
        let weights = init_weights(&cfg.model, &model.layout, cfg.seed);
        let zero = Zero::with_grad_dtype(b, &cfg.model, &model.layout, cfg.dist.zero_stage, comm, whole_tensors, &weights, t.grad_buffer_dtype())?;
        let opt = optim::build(b, &cfg.optimizer, &zero.optimizer_layout(), cfg.seed)?;
        (zero, opt, None)
    };
    let (rank, world, sp) = (zero.rank(), zero.world(), cfg.dist.sp.max(1));
    let attn: Box<dyn Attention<B>> = match group {
        Some(g) if sp > 1 => {
            if g.world() != sp || g.rank() != rank % sp {
                bail!("the sequence-parallel group has rank {} of {}, expected {} of {sp}", g.rank(), g.world(), rank % sp);
            }
            Box::new(Ulysses::new(&cfg.model, recompute, g)?)
        }
        None if sp > 1 => bail!("dist.sp = {sp} needs the sequence-parallel group's communicator"),
        _ => Box::new(LocalAttention),
    };
    // Data-parallel index = the group's; the rank's place in it = its slice.
    let loader = |split| -> Result<Loader> { Loader::new(data, split, t.batch_size, t.seq_len, cfg.seed, rank / sp, world / sp)?.with_seq_slice(rank % sp, sp) };
    let train = loader(Split::Train)?;
    let val = match data.len(Split::Val) {
        0 => None,
        _ => Some(loader(Split::Val)?),
    };
    Ok(State { model, zero, opt, off, attn, train, val, rng: Rng::new(cfg.seed ^ 0x5A4D_504C), step: 0, guard: Guard::new(t), ckpt_hook: Default::default() })
}

/// One optimizer step at the schedule's learning rate.
pub(super) fn train_step<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config) -> Result<TrainMetrics> {
    train_step_at(b, st, cfg, lr_at(&cfg.train, cfg.optimizer.lr, st.step))
}

/// One optimizer step at learning rate `lr`: every micro-batch's forward
/// and backward (gradients reduced as the store decides), the global
/// gradient norm and clipping, the optimizer on this rank's shard, the
/// weights brought up to date.
pub(super) fn train_step_at<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, lr: f32) -> Result<TrainMetrics> {
    if st.off.is_some() {
        return super::offload_step::offload_step(b, st, cfg, lr);
    }
    let t = &cfg.train;
    let world = st.zero.world();
    let start = Instant::now();
    let bytes_before = st.zero.comm.bytes_sent();
    b.clear_marks();
    st.model.clear_phase_spans();
    st.zero.zero_grads(b)?;
    let mut loss_sum = 0.0f64;
    // 1-bit Adam after its freeze step averages its momentum itself: the
    // gradients stay local, unclipped (each rank's norm is its own).
    let local = st.opt.local_gradients();
    for micro in 0..t.grad_accum {
        // The last micro-batch reduces each unit's gradients as its
        // backward ends (overlapped with the rest of backward).
        st.zero.reduce_during_backward(micro + 1 == t.grad_accum && !local);
        let batch = st.train.next_batch()?;
        // Summed over ranks by the reduction: the mean over the global batch.
        // With sequence parallelism the batch is this rank's slice of its
        // group's sequences, and the world's slices add up to the global batch.
        let scale = inject::grad_scale(cfg, st.step + 1, 1.0 / (batch.targets.len() * t.grad_accum * world) as f32);
        let loss = st.model.forward_backward_with(b, &mut st.zero, st.attn.as_mut(), &batch.inputs, &batch.targets, t.batch_size, batch.seq, scale)?;
        loss_sum += inject::loss(cfg, st.step + 1, loss) as f64;
    }
    let comm_start = b.mark()?;
    if !local {
        st.zero.finish_grads(b)?;
    }
    let loss = st.zero.mean_host(loss_sum / t.grad_accum as f64)? as f32;
    let grad_norm = if local { st.zero.local_grad_norm(b)? } else { st.zero.grad_norm(b)? } as f32;
    // Bad-step policy (guard.rs): a non-finite or spiking step is not applied.
    let skipped = st.guard.judge(st.step + 1, loss, grad_norm);
    let clip = if !local && t.grad_clip > 0.0 && grad_norm > t.grad_clip { t.grad_clip / grad_norm } else { 1.0 };
    // A checkpoint taken at the last step boundary lands before the update.
    super::checkpointing::before_update(b, st)?;
    let opt_start = b.mark()?;
    if skipped.is_none() {
        let (params, grads) = (st.zero.shard_params, st.zero.shard_grads);
        st.opt.step_dist(b, st.zero.dist_step(), params, grads, lr, clip)?;
        st.zero.after_step(b)?;
    }
    let end = b.mark()?;
    let (fwd_ms, bwd_ms) = st.model.phase_ms(b)?;
    let (opt_ms, reduce_ms) = (b.elapsed_ms(opt_start, end)?, b.elapsed_ms(comm_start, opt_start)?);
    st.step += 1;
    let step_ms = start.elapsed().as_secs_f64() * 1e3;
    let phases = Phases { fwd_ms, bwd_ms: bwd_ms + reduce_ms, opt_ms, step_ms };
    Ok(TrainMetrics { skipped, ..step_line(st.step, loss, lr, grad_norm, global_tokens(cfg, world), phases, b.peak_memory_bytes(), comm_metrics(st, bytes_before)) })
}

/// Milliseconds of one step and its phases.
pub(super) struct Phases {
    pub fwd_ms: f64,
    pub bwd_ms: f64,
    pub opt_ms: f64,
    pub step_ms: f64,
}

/// The metrics line of a finished step (`rest` supplies the fields not
/// named here).
#[allow(clippy::too_many_arguments)]
pub(super) fn step_line(step: u64, loss: f32, lr: f32, grad_norm: f32, tokens: usize, p: Phases, peak_mem_bytes: u64, rest: TrainMetrics) -> TrainMetrics {
    TrainMetrics {
        step,
        loss: loss as f64,
        lr: lr as f64,
        grad_norm: grad_norm as f64,
        tokens_per_s: tokens as f64 / (p.step_ms / 1e3),
        step_ms: p.step_ms,
        peak_mem_bytes,
        fwd_ms: Some(p.fwd_ms),
        bwd_ms: Some(p.bwd_ms),
        opt_ms: Some(p.opt_ms),
        mfu: None,
        ..rest
    }
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
    let val = st.val.as_mut().expect("evaluate is called only with a validation split");
    val.reset();
    let mut sum = 0.0f64;
    for _ in 0..t.eval_batches.max(1) {
        let batch = val.next_batch()?;
        let store = &mut offload::RunStore::new(st.off.as_mut(), &mut st.zero);
        sum += st.model.eval_loss_with(b, store, st.attn.as_mut(), &batch.inputs, &batch.targets, t.batch_size, batch.seq)? as f64;
    }
    Ok(st.zero.mean_host(sum / t.eval_batches.max(1) as f64)? as f32)
}

/// Whether the weights as they are now give a finite loss on the first
/// validation batch (the mean over ranks): checked before a checkpoint is
/// written, so that an update that overflowed the weights (finite, but
/// useless) never replaces a good checkpoint (guard.rs). A collective like
/// `evaluate`. True without a validation split.
fn weights_give_finite_loss<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config) -> Result<bool> {
    let t = &cfg.train;
    let Some(val) = st.val.as_mut() else { return Ok(true) };
    val.reset();
    let batch = val.next_batch()?;
    let store = &mut offload::RunStore::new(st.off.as_mut(), &mut st.zero);
    let loss = st.model.eval_loss_with(b, store, st.attn.as_mut(), &batch.inputs, &batch.targets, t.batch_size, batch.seq)? as f64;
    Ok(st.zero.mean_host(loss)?.is_finite())
}

/// Whether the master weights of every rank are finite (their sum of
/// squares, reduced over ranks; a collective). Asked after skipped steps.
/// An offloaded run's master weights are the offload's (one process).
fn weights_finite<B: Backend>(b: &mut B, st: &mut State<B>) -> Result<bool> {
    if let Some(off) = st.off.as_mut() {
        return off.master_finite_on(b, &mut st.zero);
    }
    let z = &st.zero;
    let n = if z.stage == 0 { st.model.layout.total } else { z.part.shard_len(z.rank()) };
    let ss = if n > 0 { b.sum_squares(crate::backend::View::whole(z.shard_params, n))? } else { 0.0 };
    Ok(st.zero.mean_host(ss)?.is_finite())
}

/// Times `ferrotron launch --max-restarts` has restarted this run's ranks
/// (its FERROTRON_RESTART variable).
pub fn restart_count() -> u32 {
    std::env::var(crate::dist::launch::RESTART_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `debug.fail_step` / `debug.fail_rank`: this rank exits with an error
/// (`debug.hang_step` / `debug.hang_rank`: it hangs)
/// after that step, in the first attempt only.
fn fail_on_purpose(cfg: &Config, rank: usize, step: u64, restarts: u32) -> Result<()> {
    let d = &cfg.debug;
    if d.fail_step > 0 && step == d.fail_step && rank == d.fail_rank && restarts == 0 {
        bail!("debug.fail_step: rank {rank} fails after step {step} on purpose");
    }
    if d.hang_step > 0 && step == d.hang_step && rank == d.hang_rank && restarts == 0 {
        eprintln!("debug.hang_step: rank {rank} stops making progress after step {step} on purpose");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
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
    let store = &mut offload::RunStore::new(st.off.as_mut(), &mut st.zero);
    let ids = sample::generate_in(b, &mut st.model, store, &prompt, opts, tok.eot(), &mut st.rng)?;
    Ok(tok.decode(&ids))
}

/// Seconds spent in each phase of an offloaded run's start-up, printed as
/// one line when the whole took long enough to wonder about (a 27B model
/// takes minutes to draw, upload and place). The units' laps each include
/// drawing their units and uploading their device weights.
struct StartupClock {
    start: std::time::Instant,
    last: std::time::Instant,
    laps: Vec<(String, f64)>,
    /// Parameters placed so far, and when progress was last printed: a
    /// start-up killed by a timeout still shows how far it got and how fast.
    placed: usize,
    noted: std::time::Instant,
}

impl StartupClock {
    fn new() -> Self {
        let now = std::time::Instant::now();
        StartupClock { start: now, last: now, laps: Vec::new(), placed: 0, noted: now }
    }

    /// Counts `n` more parameters placed; every 15 s says how many of `total`.
    fn placed(&mut self, n: usize, total: usize) {
        self.placed += n;
        if self.noted.elapsed().as_secs_f64() >= 15.0 {
            self.noted = std::time::Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            eprintln!("offload start-up: {:.2}B of {:.2}B parameters placed after {secs:.0} s", self.placed as f64 / 1e9, total as f64 / 1e9);
        }
    }

    fn lap(&mut self, what: &str) {
        let now = std::time::Instant::now();
        self.laps.push((what.to_string(), (now - self.last).as_secs_f64()));
        self.last = now;
    }

    fn report(&self, params: usize) {
        let total = self.start.elapsed().as_secs_f64();
        if total < 1.0 {
            return;
        }
        let laps: Vec<String> = self.laps.iter().map(|(w, s)| format!("{w} {s:.1} s")).collect();
        eprintln!("offload start-up: {} parameters placed in {total:.1} s ({})", params, laps.join(", "));
    }
}
