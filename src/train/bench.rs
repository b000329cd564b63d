//! `ferrotron bench train`: time optimizer steps of a config on random
//! tokens (no evaluation, checkpoints or run folder), report the median, and
//! optionally export the initial weights so a reference script (e.g.
//! bench/torch_train.py) trains exactly the same model side by side.

use super::trainer::{new_state, tokens_per_step, train_step};
use crate::backend::select::{on_device, OnBackend};
use crate::backend::{profile::Profiled, Backend};
use crate::config::Config;
use crate::data::{Dataset, Tokenizer};
use crate::telemetry::flops;
use crate::util::rng::Rng;
use anyhow::{bail, Result};
use std::path::Path;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub engine: String,
    pub device: String,
    pub preset: String,
    pub batch_size: usize,
    pub seq_len: usize,
    /// `train.recompute` (norms and MLP activations recomputed in backward).
    pub recompute: bool,
    /// `train.checkpoint_layers` (blocks re-run in backward).
    pub checkpoint_layers: bool,
    /// `train.checkpoint_keep_attention` with `checkpoint_layers` on.
    pub checkpoint_keep_attention: bool,
    /// `dist.zero_stage` (3 in one process: no bf16 copy of every weight).
    pub zero_stage: u32,
    /// `train.logits_chunk`: token rows of the output head at once.
    pub logits_chunk: usize,
    /// `train.grad_dtype`: `fp32` or `bf16` gradient buffers.
    pub grad_dtype: String,
    pub params: usize,
    pub median_step_ms: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs utilization with causal attention FLOPs halved.
    pub mfu: Option<f64>,
    pub peak_mem_bytes: u64,
    /// `ferrotron info`'s total for these settings (excludes the
    /// allocator's slack and library workspaces): what the peak is checked
    /// against.
    pub estimate_bytes: u64,
    pub step_ms: Vec<f64>,
    pub losses: Vec<f64>,
    /// With `--profile`: (op, calls per step, ms per step), slowest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<(String, f64, f64)>>,
    /// Offloaded runs: each timed step's host-side phases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offload: Vec<crate::parallel::offload::timing::OffloadTimes>,
}

pub fn bench_train(cfg: &Config, warmup: usize, steps: usize, export_init: Option<&Path>, profile: bool) -> Result<BenchResult> {
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    on_device(&cfg.device, 0, BenchJob { cfg, warmup, steps, export_init, profile })
}

struct BenchJob<'a> {
    cfg: &'a Config,
    warmup: usize,
    steps: usize,
    export_init: Option<&'a Path>,
    profile: bool,
}

impl OnBackend for BenchJob<'_> {
    type Output = BenchResult;
    fn run<B: Backend + 'static>(self, b: B) -> Result<BenchResult> {
        with_backend(b, self.cfg, self.warmup, self.steps, self.export_init, self.profile)
    }
}

fn with_backend<B: Backend + 'static>(b: B, cfg: &Config, warmup: usize, steps: usize, export_init: Option<&Path>, profile: bool) -> Result<BenchResult> {
    if !profile {
        return Ok(run(b, cfg, warmup, steps, export_init, |_| {})?.0);
    }
    let (mut result, profiled) = run(Profiled::new(b), cfg, warmup, steps, export_init, |p| p.reset())?;
    let per_step = |n: f64| n / steps as f64;
    result.profile = Some(profiled.report().into_iter().map(|(op, calls, ms)| (op, per_step(calls as f64), per_step(ms))).collect());
    Ok(result)
}

/// Enough seeded random tokens for every step (the content does not change
/// the speed of a dense model).
fn random_dataset(cfg: &Config, micro_batches: usize) -> Dataset {
    let t = &cfg.train;
    let n = (micro_batches + 1) * t.batch_size * (t.seq_len + 1) + 1;
    let mut rng = Rng::new(cfg.seed);
    let vocab = cfg.model.vocab_size.min(50257);
    let draw = |rng: &mut Rng| rng.below(vocab) as u32;
    let train = (0..n).map(|_| draw(&mut rng)).collect();
    let val = (0..t.seq_len * 2 + 2).map(|_| draw(&mut rng)).collect();
    let tok = if vocab > 256 { Tokenizer::from_name("gpt2") } else { Tokenizer::from_name("bytes") };
    Dataset::from_tokens(tok.expect("built-in tokenizer"), train, val, "random")
}

/// Runs the timed steps; hands the backend back so a caller can read what
/// it recorded (the per-op profile).
fn run<B: Backend + 'static>(mut b: B, cfg: &Config, warmup: usize, steps: usize, export_init: Option<&Path>, mut after_warmup: impl FnMut(&mut B)) -> Result<(BenchResult, B)> {
    let data = random_dataset(cfg, (warmup + steps) * cfg.train.grad_accum);
    let mut st = new_state(&mut b, cfg, &data, Box::new(crate::dist::SoloComm))?;
    if let Some(dir) = export_init {
        match st.off.as_mut() {
            // Unit by unit: no second host copy of the model.
            Some(off) => {
                let ranges = off.unit_ranges().to_vec();
                let zero = &mut st.zero;
                let mut read = |u: usize, out: &mut Vec<f32>| {
                    off.read_unit_on(&mut b, zero, u, |unit| {
                        out.extend_from_slice(unit.master());
                        Ok(())
                    })
                };
                super::export_offload::export_units_by(&ranges, &mut read, &cfg.model, &st.model.layout, dir, crate::ckpt::Dtype::F32)?
            }
            None => crate::ckpt::export(dir, &cfg.model, &st.model.layout, &st.zero.full_weights(&mut b)?, crate::ckpt::Dtype::F32)?,
        }
    }
    let (mut step_ms, mut losses, mut offload) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        if i == warmup {
            after_warmup(&mut b);
        }
        let line = train_step(&mut b, &mut st, cfg)?;
        if line.step_ms >= 5000.0 {
            // Slow steps (offloaded tens of billions) say so as they end:
            // a run stopped by a time limit still shows how far it got.
            let kind = if i < warmup { "warm-up" } else { "timed" };
            eprintln!("bench: step {} of {} ({kind}) took {:.1} s", i + 1, warmup + steps, line.step_ms / 1e3);
        }
        if i >= warmup {
            step_ms.push(line.step_ms);
            losses.push(line.loss);
            offload.extend(line.offload);
        }
    }
    let median = median(&step_ms);
    let tokens_per_s = tokens_per_step(cfg) as f64 / (median / 1e3);
    let device = b.device_name();
    let mfu = flops::peak_flops_for(&device).map(|peak| flops::mfu(tokens_per_s, flops::flops_per_token(&cfg.model, cfg.train.seq_len, true), peak));
    let result = BenchResult {
        engine: "ferrotron".into(),
        device,
        preset: cfg.model.preset.clone(),
        batch_size: cfg.train.batch_size,
        seq_len: cfg.train.seq_len,
        recompute: cfg.train.recompute,
        checkpoint_layers: cfg.train.checkpoint_layers,
        checkpoint_keep_attention: cfg.train.checkpoint_layers && cfg.train.checkpoint_keep_attention,
        zero_stage: cfg.dist.zero_stage,
        logits_chunk: cfg.train.logits_chunk,
        grad_dtype: cfg.train.grad_dtype.clone(),
        params: st.model.num_params(),
        median_step_ms: median,
        tokens_per_s,
        mfu,
        peak_mem_bytes: b.peak_memory_bytes(),
        estimate_bytes: crate::telemetry::memory::estimate(cfg).total(),
        step_ms,
        losses,
        profile: None,
        offload,
    };
    Ok((result, b))
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
