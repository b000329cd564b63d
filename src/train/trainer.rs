//! The training loop. One optimizer step, top-down:
//! zero grads → for each micro-batch: forward + backward (gradients
//! accumulate) → global gradient norm → clip factor → optimizer step →
//! metrics; every `eval_every` steps a validation pass, every `ckpt_every`
//! steps a checkpoint.

use super::run_dir;
use super::sample::{self, SampleOptions};
use super::schedule::lr_at;
use crate::backend::{Backend, DType, View};
use crate::ckpt;
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
}

/// Everything the loop mutates, kept together so checkpoints capture it.
pub(super) struct State<B: Backend> {
    pub(super) model: Model,
    opt: Box<dyn Optimizer<B>>,
    train: Loader,
    val: Loader,
    rng: Rng,
    step: u64,
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
    match cfg.device.as_str() {
        "cpu" => run_on(crate::backend::cpu::CpuBackend::new(), &cfg, resume, init),
        _ => run_on(crate::backend::cuda::CudaBackend::new(0)?, &cfg, resume, init),
    }
}

fn run_on<B: Backend + 'static>(mut b: B, cfg: &Config, resume: Option<&Path>, init: Option<Vec<f32>>) -> Result<RunSummary> {
    let data = Dataset::open(&cfg.data.path)?;
    if data.tokenizer.vocab_size() > cfg.model.vocab_size {
        bail!(
            "the data's tokenizer ({}) has {} tokens but model.vocab_size = {}; raise model.vocab_size",
            data.tokenizer.name(),
            data.tokenizer.vocab_size(),
            cfg.model.vocab_size
        );
    }
    let run_dir = match resume {
        Some(dir) => dir.to_path_buf(),
        None => run_dir::create(cfg)?,
    };
    data.tokenizer.save_to_run(&run_dir)?;
    let mut st = new_state(&mut b, cfg, &data)?;
    if let Some(weights) = init {
        st.model.set_params(&mut b, &weights)?;
    }
    if resume.is_some() {
        restore(&mut b, &mut st, &run_dir)?;
    }
    let mut metrics = MetricsWriter::open(&run_dir, resume.map(|_| st.step))?;
    let progress = Progress::new(cfg.train.steps, st.step, cfg.run.progress);
    progress.println(format!(
        "run {} | {} on {} | {:.2}M parameters | {} tokens per step",
        run_dir.display(),
        cfg.model.preset,
        b.name(),
        st.model.num_params() as f64 / 1e6,
        tokens_per_step(cfg)
    ));
    if !cfg.model.init_from.is_empty() {
        progress.println(format!("weights and model shape from {}", cfg.model.init_from));
    }
    let unigram = crate::data::unigram_entropy(&data.tokens(Split::Val)?);
    progress.println(format!("baseline: uniform guess {:.3} nats/token, unigram frequencies {unigram:.3}", (cfg.model.vocab_size as f64).ln()));
    let mut summary = RunSummary { run_dir: run_dir.clone(), steps: st.step, losses: vec![], final_val_loss: None, tokens_per_s: 0.0, peak_mem_bytes: 0, mfu: None, samples: vec![] };
    let started = Instant::now();
    let first_step = st.step;
    // MFU where the device's peak is known (causal attention FLOPs halved).
    let peak_flops = telemetry::flops::peak_flops_for(&b.device_name());
    let flops_per_token = telemetry::flops::flops_per_token(&cfg.model, cfg.train.seq_len, true);
    while st.step < cfg.train.steps {
        let mut line = train_step(&mut b, &mut st, cfg)?;
        line.mfu = peak_flops.map(|p| telemetry::flops::mfu(line.tokens_per_s, flops_per_token, p));
        summary.losses.push(line.loss as f32);
        metrics.train(&line)?;
        progress.update(st.step, line.loss, line.tokens_per_s);
        let last = st.step == cfg.train.steps;
        if (cfg.train.eval_every > 0 && st.step % cfg.train.eval_every == 0) || last {
            let val = evaluate(&mut b, &mut st, cfg)?;
            summary.final_val_loss = Some(val);
            metrics.eval(st.step, val as f64)?;
            progress.println(format!("step {:>6} | val loss {val:.4}", st.step));
            if cfg.train.samples > 0 && !last {
                let text = sample_text(&mut b, &mut st, &data, cfg.train.sample_tokens.min(80))?;
                progress.println(format!("         | sample: {}", text.replace('\n', " ⏎ ")));
            }
        }
        if (cfg.train.ckpt_every > 0 && st.step % cfg.train.ckpt_every == 0) || last {
            save(&mut b, &st, cfg, &run_dir)?;
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    summary.steps = st.step;
    summary.tokens_per_s = (st.step - first_step) as f64 * tokens_per_step(cfg) as f64 / secs.max(1e-9);
    summary.peak_mem_bytes = b.peak_memory_bytes();
    summary.mfu = peak_flops.map(|p| telemetry::flops::mfu(summary.tokens_per_s, flops_per_token, p));
    let lines = telemetry::metrics::read_metrics(&run_dir.join("metrics.jsonl"))?;
    telemetry::plot::plot_loss(&lines, &run_dir.join("loss.png"), &format!("{} — {}", cfg.model.preset, run_dir.display()))?;
    summary.samples = samples(&mut b, &mut st, cfg, &data)?;
    Ok(summary)
}

pub(super) fn tokens_per_step(cfg: &Config) -> usize {
    cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum
}

pub(super) fn new_state<B: Backend + 'static>(b: &mut B, cfg: &Config, data: &Dataset) -> Result<State<B>> {
    let t = &cfg.train;
    let model = Model::new(b, &cfg.model, Recompute::of(t))?.with_logits_chunk(t.logits_chunk);
    model.set_params(b, &init_weights(&cfg.model, &model.layout, cfg.seed))?;
    let opt = optim::build(b, &cfg.optimizer, &model.layout, cfg.seed)?;
    let train = Loader::new(data, Split::Train, t.batch_size, t.seq_len, cfg.seed, 0, 1)?;
    let val = Loader::new(data, Split::Val, t.batch_size, t.seq_len, cfg.seed, 0, 1)?;
    Ok(State { model, opt, train, val, rng: Rng::new(cfg.seed ^ 0x5A4D_504C), step: 0 })
}

pub(super) fn train_step<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config) -> Result<TrainMetrics> {
    let t = &cfg.train;
    let start = Instant::now();
    st.model.zero_grads(b)?;
    let (mut loss_sum, mut fwd_ms, mut bwd_ms) = (0.0f64, 0.0, 0.0);
    for _ in 0..t.grad_accum {
        let batch = st.train.next_batch()?;
        let scale = 1.0 / (batch.targets.len() * t.grad_accum) as f32;
        loss_sum += st.model.forward_backward(b, &batch.inputs, &batch.targets, t.batch_size, t.seq_len, scale)? as f64;
        fwd_ms += st.model.last_fwd_ms;
        bwd_ms += st.model.last_bwd_ms;
    }
    let loss = (loss_sum / t.grad_accum as f64) as f32;
    if !loss.is_finite() {
        bail!("loss became {loss} at step {}; lower optimizer.lr or raise train.warmup_steps", st.step + 1);
    }
    let grad_norm = b.sum_squares(st.model.grads_view())?.sqrt() as f32;
    let clip = if t.grad_clip > 0.0 && grad_norm > t.grad_clip { t.grad_clip / grad_norm } else { 1.0 };
    b.synchronize()?;
    let fwd_bwd_ms = start.elapsed().as_secs_f64() * 1e3;
    let lr = lr_at(t, cfg.optimizer.lr, st.step);
    st.opt.step(b, st.model.params, st.model.grads, lr, clip)?;
    b.synchronize()?;
    st.step += 1;
    let step_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(TrainMetrics {
        step: st.step,
        loss: loss as f64,
        lr: lr as f64,
        grad_norm: grad_norm as f64,
        tokens_per_s: tokens_per_step(cfg) as f64 / (step_ms / 1e3),
        step_ms,
        peak_mem_bytes: b.peak_memory_bytes(),
        fwd_ms: Some(fwd_ms),
        bwd_ms: Some(bwd_ms),
        opt_ms: Some(step_ms - fwd_bwd_ms),
        mfu: None,
    })
}

/// Mean validation loss over `eval_batches` fixed batches.
fn evaluate<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config) -> Result<f32> {
    let t = &cfg.train;
    st.val.reset();
    let mut sum = 0.0f64;
    for _ in 0..t.eval_batches.max(1) {
        let batch = st.val.next_batch()?;
        sum += st.model.eval_loss(b, &batch.inputs, &batch.targets, t.batch_size, t.seq_len)? as f64;
    }
    Ok((sum / t.eval_batches.max(1) as f64) as f32)
}

fn download(b: &mut impl Backend, v: View) -> Result<Vec<f32>> {
    let mut host = vec![0.0; v.len];
    b.download(v, &mut host)?;
    Ok(host)
}

fn save<B: Backend>(b: &mut B, st: &State<B>, cfg: &Config, run_dir: &Path) -> Result<PathBuf> {
    let params = st.model.get_params(b)?;
    let model_tensors: Vec<ckpt::NamedTensor> = st
        .model
        .layout
        .params
        .iter()
        .map(|p| ckpt::NamedTensor { name: p.name.clone(), shape: p.shape.clone(), data: &params[p.offset..p.offset + p.numel()] })
        .collect();
    let (mut floats, mut bytes) = (vec![], vec![]);
    for t in st.opt.state_tensors() {
        match t.dtype {
            DType::U8 => {
                let mut host = vec![0u8; t.view.len];
                b.download_u8(t.view, &mut host)?;
                bytes.push((t.name, host));
            }
            _ => floats.push((t.name, download(b, t.view)?)),
        }
    }
    let optim_tensors: Vec<ckpt::NamedTensor> = floats.iter().map(|(n, d)| ckpt::NamedTensor { name: n.clone(), shape: vec![d.len()], data: d }).collect();
    let optim_bytes: Vec<ckpt::NamedBytes> = bytes.iter().map(|(n, d)| ckpt::NamedBytes { name: n.clone(), shape: vec![d.len()], data: d }).collect();
    let manifest = ckpt::Manifest {
        loader: serde_json::to_value(st.train.state())?,
        rng: serde_json::to_value(&st.rng)?,
        optimizer: st.opt.meta(),
        ..ckpt::Manifest::new(st.step, cfg.to_toml())
    };
    ckpt::save_with_bytes(run_dir, &manifest, &model_tensors, &optim_tensors, &optim_bytes, cfg.train.keep_ckpts)
}

fn restore<B: Backend>(b: &mut B, st: &mut State<B>, run_dir: &Path) -> Result<()> {
    let Some(dir) = ckpt::latest(run_dir)? else {
        bail!("cannot resume {}: it has no complete checkpoint yet (checkpoints/step_*)", run_dir.display());
    };
    let loaded = ckpt::load(&dir)?;
    let mut params = vec![0.0f32; st.model.layout.total];
    ckpt::load_into_layout(&loaded, &st.model.layout, &mut params)?;
    st.model.set_params(b, &params)?;
    for t in st.opt.state_tensors() {
        let (name, view) = (&t.name, t.view);
        let found = match t.dtype {
            DType::U8 => loaded.optim_u8_tensor(name)?.data.len(),
            _ => loaded.optim_tensor(name)?.data.len(),
        };
        if found != view.len {
            bail!("checkpoint {}: optimizer tensor {name} has {found} values, expected {}", dir.display(), view.len);
        }
        match t.dtype {
            DType::U8 => b.upload_u8(view, &loaded.optim_u8_tensor(name)?.data)?,
            _ => b.upload(view, &loaded.optim_tensor(name)?.data)?,
        }
    }
    st.opt.load_meta(&loaded.manifest.optimizer)?;
    st.train.restore(&serde_json::from_value(loaded.manifest.loader.clone())?)?;
    st.rng = serde_json::from_value(loaded.manifest.rng.clone())?;
    st.step = loaded.manifest.step;
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
    let ids = sample::generate(b, &mut st.model, &prompt, opts, tok.eot(), &mut st.rng)?;
    Ok(tok.decode(&ids))
}
