//! `ferrotron bench optim`: time one optimizer step over the parameters of a
//! model preset (e.g. llama-1b: 1.4B parameters with their real shapes),
//! measure the device memory the optimizer allocates against its exact
//! estimate, and report the achieved bandwidth against a measured device
//! copy. bench/optim_torch.py is the PyTorch / bitsandbytes side.

use super::bench::median;
use crate::backend::{profile::Profiled, Backend, BufId, DType, View};
use crate::config::Config;
use crate::model::layout::ParamLayout;
use crate::optim;
use crate::util::rng::Rng;
use anyhow::{bail, Result};
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct OptimBenchResult {
    pub engine: String,
    pub device: String,
    pub optimizer: String,
    pub preset: String,
    pub params: usize,
    pub median_step_ms: f64,
    pub step_ms: Vec<f64>,
    /// State bytes from the optimizer's exact plan (what `info` prints).
    pub state_bytes_estimate: u64,
    /// Device bytes the optimizer allocated (state + workspace), measured.
    pub state_bytes_measured: u64,
    pub workspace_bytes: u64,
    /// Workspace from the plan for this device (fp32 scratch, plus on a GPU
    /// the bf16 copies of the Newton–Schulz buffers made on the first step).
    pub workspace_bytes_estimate: u64,
    /// Device bytes held beyond the params and grads after the timed steps
    /// (state, workspace and its bf16 copies, the backend's shared scratch).
    pub bytes_after_steps: u64,
    /// Bytes per parameter an elementwise step must move (None for the
    /// matrix optimizers, which are not bandwidth-bound).
    pub bytes_per_param: Option<f64>,
    pub achieved_bytes_per_s: Option<f64>,
    /// Device-to-device copy, counting bytes read and written.
    pub copy_bytes_per_s: f64,
    pub fraction_of_copy: Option<f64>,
    /// With `--profile`: (op, calls per step, ms per step), slowest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<(String, f64, f64)>>,
}

/// Memory traffic of one step per parameter, by the convention of issue 4:
/// reads and writes of fp32 params, moments and the gradient read.
pub fn bytes_per_param(optimizer: &str) -> Option<f64> {
    match optimizer {
        "adamw" => Some(28.0),    // p r/w, g r, m r/w, v r/w (fp32)
        "adamw8bit" => Some(16.0), // p r/w, g r, m and v codes r/w (1 B each)
        "lion" => Some(20.0),     // p r/w, g r, m r/w
        _ => None,
    }
}

pub fn bench_optim(cfg: &Config, warmup: usize, steps: usize, profile: bool) -> Result<OptimBenchResult> {
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    crate::backend::select::on_device(&cfg.device, 0, OptimBenchJob { cfg, warmup, steps, profile })
}

struct OptimBenchJob<'a> {
    cfg: &'a Config,
    warmup: usize,
    steps: usize,
    profile: bool,
}

impl crate::backend::select::OnBackend for OptimBenchJob<'_> {
    type Output = OptimBenchResult;
    fn run<B: Backend + 'static>(self, b: B) -> Result<OptimBenchResult> {
        with_backend(b, self.cfg, self.warmup, self.steps, self.profile)
    }
}

fn with_backend<B: Backend + 'static>(b: B, cfg: &Config, warmup: usize, steps: usize, profile: bool) -> Result<OptimBenchResult> {
    if !profile {
        return Ok(run(b, cfg, warmup, steps, |_| {})?.0);
    }
    let (mut result, profiled) = run(Profiled::new(b), cfg, warmup, steps, |p| p.reset())?;
    let per_step = |n: f64| n / steps as f64;
    result.profile = Some(profiled.report().into_iter().map(|(op, calls, ms)| (op, per_step(calls as f64), per_step(ms))).collect());
    Ok(result)
}

/// Fills a buffer with N(0, std²)-like values without drawing billions of
/// random numbers: a random 1M-value block, repeated.
fn fill_random<B: Backend>(b: &mut B, buf: BufId, len: usize, std: f32, seed: u64) -> Result<()> {
    let mut block = vec![0.0f32; len.min(1 << 20)];
    Rng::new(seed).fill_normal(&mut block, std);
    let mut off = 0;
    while off < len {
        let n = block.len().min(len - off);
        b.upload(View { buf, off, len: n }, &block[..n])?;
        off += n;
    }
    Ok(())
}

fn time_ms<B: Backend>(b: &mut B, f: impl FnOnce(&mut B) -> Result<()>) -> Result<f64> {
    b.synchronize()?;
    let start = Instant::now();
    f(b)?;
    b.synchronize()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// Runs the timed steps; hands the backend back so a caller can read what
/// it recorded (the per-op profile).
fn run<B: Backend + 'static>(mut b: B, cfg: &Config, warmup: usize, steps: usize, mut after_warmup: impl FnMut(&mut B)) -> Result<(OptimBenchResult, B)> {
    let layout = ParamLayout::new(&cfg.model);
    let n = layout.total;
    let (params, grads) = (b.alloc(n, DType::F32)?, b.alloc(n, DType::F32)?);
    let (pv, gv) = (View::whole(params, n), View::whole(grads, n));
    fill_random(&mut b, params, n, 0.02, cfg.seed)?;
    b.params_changed(pv)?;
    let before = b.live_memory_bytes();
    let mut opt = optim::build(&mut b, &cfg.optimizer, &layout, cfg.seed)?;
    let state_bytes_measured = b.live_memory_bytes() - before;
    let estimate: u64 = optim::plan(&cfg.optimizer, &layout)?.iter().map(|g| g.state_bytes).sum();

    // Device copy bandwidth on the same buffers (grads are overwritten below).
    let copies: Vec<f64> = (0..3).map(|_| time_ms(&mut b, |b| b.copy(gv, pv))).collect::<Result<_>>()?;
    let copy_bytes_per_s = 8.0 * n as f64 / (median(&copies) / 1e3);

    fill_random(&mut b, grads, n, 0.01, cfg.seed ^ 1)?;
    let mut step_ms = Vec::new();
    for i in 0..warmup + steps {
        if i == warmup {
            after_warmup(&mut b);
        }
        let ms = time_ms(&mut b, |b| opt.step(b, params, grads, cfg.optimizer.lr, 1.0))?;
        if i >= warmup {
            step_ms.push(ms);
        }
    }
    let bytes_after_steps = b.live_memory_bytes() - before;
    let med = median(&step_ms);
    let per_param = bytes_per_param(&cfg.optimizer.name);
    let achieved = per_param.map(|bpp| bpp * n as f64 / (med / 1e3));
    let result = OptimBenchResult {
        engine: "ferrotron".into(),
        device: b.device_name(),
        optimizer: cfg.optimizer.name.clone(),
        preset: cfg.model.preset.clone(),
        params: n,
        median_step_ms: med,
        step_ms,
        state_bytes_estimate: estimate,
        state_bytes_measured,
        workspace_bytes: opt.workspace_bytes(),
        workspace_bytes_estimate: optim::workspace_plan(&cfg.optimizer, &layout).bytes_on(&cfg.device),
        bytes_after_steps,
        bytes_per_param: per_param,
        achieved_bytes_per_s: achieved,
        copy_bytes_per_s,
        fraction_of_copy: achieved.map(|a| a / copy_bytes_per_s),
        profile: None,
    };
    Ok((result, b))
}
