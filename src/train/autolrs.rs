//! AutoLRS (Jin et al., ICLR 2021): the learning-rate schedule found while
//! training, `train.schedule = "autolrs"`.
//!
//! After the linear warmup (`train.warmup_steps`, may be 0), training runs
//! in stages. Stage i has τ_i = τ·2^i steps (capped at `max_tau`) and
//! trials of τ'_i = τ'·τ_i/τ steps. At the start of a stage:
//! 1. the whole training state is saved in memory (`snapshot`);
//! 2. for each of `trials` learning rates — the first is the previous
//!    stage's (the peak lr before the first stage), the next ones maximize
//!    the expected improvement of a Gaussian process over log lr fitted to
//!    the forecasts so far (`gp`) — train τ' steps, fit
//!    L(t) = a·e^(bt) + c (b < 0) to their training losses (`forecast`),
//!    predict the loss at the stage's end, and restore the state exactly;
//! 3. the stage trains at the lr with the lowest forecast.
//!
//! Every trial sees the same batches (the data position is part of the
//! restored state), so the batch-to-batch noise of the training loss is
//! common to all of them, and the forecasts use that (common random
//! numbers): the first trial's curve is fitted as it is, every other
//! trial's as its step-by-step difference to the first, and its forecast
//! is the first's plus the difference's. The noise then cancels from the
//! ranking of the lrs, which is all the choice needs; fitted directly, the
//! per-step noise (±0.1 on the CPU workloads) is larger than the
//! differences between learning rates over τ' steps. (A difference of two
//! exponentials is not one: the difference's forecast is a model too.) The forecast uses training
//! losses (the paper evaluates a small held-out set), which costs no extra
//! forward passes.
//!
//! Logged in metrics.jsonl: one `autolrs_trial` line per trial (lr, the
//! short loss curve, the fitted a, b, c — for trials after the first, of
//! the difference to the first — the forecast, wall ms) and one
//! `autolrs_stage` line per stage (chosen lr, forecast, whole search wall
//! ms including the snapshot and restores, trial steps), each with `step`
//! = the stage's first step, like train lines; `autolrs.png` draws them.
//! `autolrs.json` in the run folder holds the decided stages, so a resumed
//! run continues the stage it was in at the same lr.
//!
//! Several ranks (ZeRO, any stage; Ulysses groups): every rank runs the
//! same search — the snapshot is of its own shard, the trials are training
//! steps with their collectives — and makes the same decisions, because they come only
//! from the global training loss (the mean over ranks, which the host
//! all-reduce computes in one place and hands to every rank bit for bit)
//! through deterministic code. After each search the ranks check that
//! they chose the same lr (two small collectives) and stop with an error
//! if not. Rank 0 alone writes `autolrs.json`, the metrics lines and the
//! plot. An offloaded run (`offload.optimizer`) is refused by the config:
//! its state is off the device, outside the snapshot.

pub mod forecast;
pub mod gp;
pub mod plot;

use super::snapshot::Snapshot;
use super::trainer::{train_step_at, State};
use crate::backend::Backend;
use crate::config::{AutoLrsConfig, Config};
use crate::telemetry::metrics::MetricsWriter;
use crate::util::atomic;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File in the run folder with the decided stages.
pub const STAGES_FILE: &str = "autolrs.json";
/// Grid points of the expected-improvement search over [0, 1].
const EI_GRID: usize = 257;

/// One decided stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub index: usize,
    /// Steps done when the stage starts.
    pub start: u64,
    /// Steps of the stage (the last one may be cut short by `train.steps`).
    pub tau: u64,
    pub tau_prime: u64,
    pub lr: f32,
    /// Forecast loss at the stage's end for `lr` (None: not searched, or
    /// every trial diverged).
    pub forecast: Option<f64>,
}

/// What one trial found.
#[derive(Clone, Debug)]
pub struct Trial {
    pub lr: f32,
    pub losses: Vec<f64>,
    pub diverged: bool,
    /// Trial 0: the fit of its loss curve; others: of their difference to
    /// trial 0's curve.
    pub fit: forecast::ExpFit,
    /// Forecast loss at the stage's end (+∞ for a diverged trial).
    pub forecast: f64,
    pub ms: f64,
}

pub struct AutoLrs {
    cfg: AutoLrsConfig,
    warmup: u64,
    total: u64,
    peak_lr: f32,
    range: (f32, f32),
    stages: Vec<Stage>,
    path: PathBuf,
    /// Rank 0: writes `autolrs.json`.
    lead: bool,
}

impl AutoLrs {
    /// A new run starts with no stages; a resumed one keeps the stages that
    /// started before `resume_step`.
    pub fn new(cfg: &Config, run_dir: &Path, resume_step: Option<u64>, lead: bool) -> Result<Self> {
        let a = &cfg.train.autolrs;
        a.validate(cfg.optimizer.lr, cfg.train.steps.saturating_sub(cfg.train.warmup_steps))?;
        let path = run_dir.join(STAGES_FILE);
        let mut stages = vec![];
        if let Some(step) = resume_step {
            if path.exists() {
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let all: Vec<Stage> = serde_json::from_str(&text).with_context(|| format!("{} is not a list of AutoLRS stages", path.display()))?;
                stages = all.into_iter().filter(|s| s.start < step).collect();
            }
        }
        Ok(AutoLrs { cfg: a.clone(), warmup: cfg.train.warmup_steps, total: cfg.train.steps, peak_lr: cfg.optimizer.lr, range: a.range(cfg.optimizer.lr), stages, path, lead })
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// τ and τ' of stage `i` (`first`: stage 0's, from
    /// [`AutoLrsConfig::first_stage`]).
    pub fn stage_lengths(cfg: &AutoLrsConfig, first: (u64, u64), i: usize) -> (u64, u64) {
        let doubled = first.0.saturating_mul(1u64 << i.min(40));
        let tau = if cfg.max_tau > 0 { doubled.min(cfg.max_tau) } else { doubled };
        let tau_prime = ((first.1 as u128 * tau as u128) / first.0 as u128).max(1) as u64;
        (tau, tau_prime)
    }

    /// x in [0, 1] for an lr (log scale over the search range), and back.
    fn to_x(&self, lr: f32) -> f64 {
        let (lo, hi) = (self.range.0 as f64, self.range.1 as f64);
        ((lr as f64).clamp(lo, hi).ln() - lo.ln()) / (hi.ln() - lo.ln())
    }

    fn lr_of_x(&self, x: f64) -> f32 {
        let (lo, hi) = (self.range.0 as f64, self.range.1 as f64);
        (lo.ln() + x.clamp(0.0, 1.0) * (hi.ln() - lo.ln())).exp() as f32
    }

    pub(super) fn lr_for_next_step<B: Backend>(&mut self, b: &mut B, st: &mut State<B>, cfg: &Config, mut metrics: Option<&mut MetricsWriter>, say: &dyn Fn(String)) -> Result<f32> {
        if st.step < self.warmup {
            return Ok(self.peak_lr * (st.step + 1) as f32 / self.warmup as f32);
        }
        let next_start = match self.stages.last() {
            Some(s) if st.step < s.start + s.tau => return Ok(s.lr),
            Some(s) => s.start + s.tau,
            None => self.warmup,
        };
        if st.step != next_start {
            bail!("AutoLRS: step {} is not the start of stage {} (step {next_start}); {} does not match this run", st.step, self.stages.len(), self.path.display());
        }
        let stage = self.search(b, st, cfg, &mut metrics, say)?;
        ranks_agree(st, stage.index, stage.lr)?;
        self.stages.push(stage);
        if self.lead {
            atomic::write_file(&self.path, serde_json::to_string_pretty(&self.stages)?.as_bytes())?;
        }
        Ok(self.stages.last().unwrap().lr)
    }

    /// Decides the stage starting at `st.step`; leaves the state as found.
    fn search<B: Backend>(&self, b: &mut B, st: &mut State<B>, cfg: &Config, metrics: &mut Option<&mut MetricsWriter>, say: &dyn Fn(String)) -> Result<Stage> {
        let index = self.stages.len();
        let first = self.cfg.first_stage(self.total.saturating_sub(self.warmup));
        let (tau_full, tau_prime) = Self::stage_lengths(&self.cfg, first, index);
        let start = st.step;
        let tau = tau_full.min(self.total - start);
        let prev = self.stages.last().map_or(self.peak_lr, |s| s.lr);
        let first_line = start + 1;
        if tau <= tau_prime {
            // Too little left to search: keep going at the current lr.
            let stage = Stage { index, start, tau, tau_prime, lr: prev, forecast: None };
            if let Some(m) = metrics.as_mut() {
                m.write_value(&json!({"kind": "autolrs_stage", "step": first_line, "stage": index, "lr": prev, "tau": tau, "tau_prime": tau_prime, "search_ms": 0.0, "trial_steps": 0, "searched": false}))?;
            }
            return Ok(stage);
        }
        let began = Instant::now();
        let snap = Snapshot::take(b, st)?;
        let (mut xs, mut trials): (Vec<f64>, Vec<Trial>) = (vec![], vec![]);
        for i in 0..self.cfg.trials {
            let x = if i == 0 { self.to_x(prev) } else { gp::Gp::fit(&xs, &gp_targets(&trials)).next_point(EI_GRID) };
            let lr = self.lr_of_x(x);
            let trial = run_trial(b, st, cfg, lr, tau_prime, tau, trials.first())?;
            snap.restore(b, st)?;
            let f = &trial.fit;
            if let Some(m) = metrics.as_mut() {
                m.write_value(&json!({
                    "kind": "autolrs_trial", "step": first_line, "stage": index, "trial": i, "lr": lr, "tau": tau, "tau_prime": tau_prime,
                    "losses": trial.losses, "fit_of": if i == 0 { "loss" } else { "loss - trial 0's loss" },
                    "a": f.a, "b": f.b, "c": f.c, "rmse": f.rmse, "forecast": finite_or_null(trial.forecast),
                    "diverged": trial.diverged, "ms": trial.ms,
                }))?;
            }
            xs.push(x);
            trials.push(trial);
        }
        let best = trials.iter().filter(|t| t.forecast.is_finite()).min_by(|a, b| a.forecast.total_cmp(&b.forecast));
        // Every trial diverged: the lowest lr of the range.
        let (lr, forecast) = best.map_or((self.range.0, None), |t| (t.lr, Some(t.forecast)));
        let search_ms = began.elapsed().as_secs_f64() * 1e3;
        if let Some(m) = metrics.as_mut() {
            m.write_value(&json!({
                "kind": "autolrs_stage", "step": first_line, "stage": index, "lr": lr, "tau": tau, "tau_prime": tau_prime,
                "forecast": forecast, "search_ms": search_ms, "trial_steps": tau_prime * self.cfg.trials as u64, "searched": true,
            }))?;
        }
        let tried: Vec<String> = trials.iter().map(|t| format!("{:.2e}", t.lr)).collect();
        say(format!(
            "step {:>6} | autolrs stage {index}: {tau} steps, tried lr {} for {tau_prime} steps each, chose {lr:.3e} (forecast {:.4}) in {:.1} s",
            start,
            tried.join(" "),
            forecast.unwrap_or(f64::NAN),
            search_ms / 1e3
        ));
        Ok(Stage { index, start, tau, tau_prime, lr, forecast })
    }
}

/// Every rank must train the stage at the same lr (else their weights
/// part ways): rank 0's lr goes to every rank (a sum where only rank 0
/// adds a value is exact), then the ranks that differ are counted, so all
/// of them stop together if any differs. Two host collectives; nothing
/// with one rank.
fn ranks_agree<B: Backend>(st: &mut State<B>, stage: usize, lr: f32) -> Result<()> {
    if st.zero.world() == 1 {
        return Ok(());
    }
    let rank = st.zero.rank();
    let mut lead = [if rank == 0 { lr as f64 } else { 0.0 }];
    st.zero.comm.all_reduce_host(&mut lead)?;
    let differs = lead[0] != lr as f64;
    let mut count = [differs as u8 as f64];
    st.zero.comm.all_reduce_host(&mut count)?;
    if count[0] > 0.0 {
        bail!(
            "AutoLRS: {} rank(s) chose another learning rate than rank 0 for stage {stage} (this rank: {lr:e}, rank 0: {:e}); the ranks' searches must agree (a bug)",
            count[0],
            lead[0]
        );
    }
    Ok(())
}

fn finite_or_null(v: f64) -> serde_json::Value {
    if v.is_finite() { json!(v) } else { serde_json::Value::Null }
}

/// GP targets: the forecasts, with a diverged trial's +∞ replaced by a
/// value worse than every finite one (so the GP learns "bad here" without
/// an infinite target).
fn gp_targets(trials: &[Trial]) -> Vec<f64> {
    let finite: Vec<f64> = trials.iter().map(|t| t.forecast).filter(|f| f.is_finite()).collect();
    let start: f64 = trials.iter().filter_map(|t| t.losses.first()).copied().filter(|l| l.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    let worst = finite.iter().copied().fold(start, f64::max);
    let best = finite.iter().copied().fold(worst, f64::min);
    let penalty = if worst.is_finite() { worst + (worst - best).max(0.1 * worst.abs()).max(1e-3) } else { 1.0 };
    trials.iter().map(|t| if t.forecast.is_finite() { t.forecast } else { penalty }).collect()
}

/// Trains `steps` steps at `lr` from the current state and forecasts the
/// loss after `horizon` steps ([`forecast_at`], paired with the
/// `reference` trial). A step whose loss is not finite ends the trial as
/// diverged (the caller restores the state either way).
pub(super) fn run_trial<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, lr: f32, steps: u64, horizon: u64, reference: Option<&Trial>) -> Result<Trial> {
    let began = Instant::now();
    let mut losses = Vec::with_capacity(steps as usize);
    let mut diverged = false;
    for _ in 0..steps {
        match train_step_at(b, st, cfg, lr) {
            Ok(line) if line.loss.is_finite() => losses.push(line.loss),
            // A non-finite (global) loss: the guard did not apply the step;
            // the trial ends here on every rank alike.
            Ok(_) => {
                diverged = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    b.synchronize()?;
    let ms = began.elapsed().as_secs_f64() * 1e3;
    let reference = reference.filter(|r| r.forecast.is_finite() && r.losses.len() == losses.len()).map(|r| (&r.losses[..], r.forecast));
    let (fit, forecast) = forecast_at(&losses, reference, horizon);
    let forecast = if diverged || losses.is_empty() { f64::INFINITY } else { forecast };
    Ok(Trial { lr, losses, diverged, fit, forecast, ms })
}

/// The fit and the forecast at `horizon` of a trial's `losses`: directly,
/// or with a `reference` (its losses on the same batches and its forecast)
/// as the reference's forecast plus the forecast of the step-by-step
/// difference, from which the batches' common noise has cancelled.
pub fn forecast_at(losses: &[f64], reference: Option<(&[f64], f64)>, horizon: u64) -> (forecast::ExpFit, f64) {
    // The curve may settle at the latest by the middle of the stage.
    let (tc, h) = (horizon as f64 / 2.0, horizon as f64);
    match reference {
        Some((r, r_forecast)) => {
            let diff: Vec<f64> = losses.iter().zip(r).map(|(l, r)| l - r).collect();
            let fit = forecast::fit(&diff, tc);
            (fit, r_forecast + fit.at(h))
        }
        None => {
            let fit = forecast::fit(losses, tc);
            (fit, fit.at(h))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_double_and_cap() {
        let c = AutoLrsConfig { tau: 100, tau_prime: 10, max_tau: 500, ..Default::default() };
        let first = c.first_stage(1000);
        assert_eq!(first, (100, 10));
        let got: Vec<(u64, u64)> = (0..5).map(|i| AutoLrs::stage_lengths(&c, first, i)).collect();
        assert_eq!(got, [(100, 10), (200, 20), (400, 40), (500, 50), (500, 50)]);
        let c = AutoLrsConfig { max_tau: 0, ..c };
        assert_eq!(AutoLrs::stage_lengths(&c, first, 3), (800, 80));
        // Automatic: three doubling stages cover the steps after warmup.
        let auto = AutoLrsConfig::default();
        assert_eq!(auto.first_stage(560), (80, 8));
        assert_eq!((0..3).map(|i| AutoLrs::stage_lengths(&auto, (80, 8), i).0).sum::<u64>(), 560);
    }

    /// Two learning rates on the same batches, the noise as large as the
    /// difference of their curves over the trial: paired, the noise
    /// cancels and the faster lr is forecast lower; fitted directly, the
    /// forecast difference is further from the truth.
    #[test]
    fn paired_forecast_cancels_common_batch_noise() {
        let noise = |t: usize| 0.3 * (((t * 7919) % 11) as f64 / 5.0 - 1.0);
        let slow = |t: f64| 1.0 * (-0.05 * t).exp() + 2.0; // the current lr
        let fast = |t: f64| 1.2 * (-0.1 * t).exp() + 1.9; // better by the stage's end
        let (n, horizon) = (10, 100);
        let a: Vec<f64> = (1..=n).map(|t| slow(t as f64) + noise(t)).collect();
        let b: Vec<f64> = (1..=n).map(|t| fast(t as f64) + noise(t)).collect();
        let (_, fa) = forecast_at(&a, None, horizon);
        let (_, fb) = forecast_at(&b, Some((&a, fa)), horizon);
        let (_, direct) = forecast_at(&b, None, horizon);
        let truth = fast(100.0) - slow(100.0);
        assert!(fb < fa, "the faster curve must be forecast lower: {fb} vs {fa}");
        assert!((fb - fa - truth).abs() < (direct - fa - truth).abs(), "paired {} direct {} true {truth}", fb - fa, direct - fa);
    }

    #[test]
    fn diverged_trials_get_a_finite_penalty_worse_than_all() {
        let t = |lr: f32, first: f64, forecast: f64| Trial { lr, losses: vec![first], diverged: !forecast.is_finite(), fit: forecast::fit(&[first], 1.0), forecast, ms: 0.0 };
        let ys = gp_targets(&[t(1e-3, 5.0, 3.0), t(1e-2, 5.0, f64::INFINITY), t(3e-3, 5.0, 2.5)]);
        assert_eq!((ys[0], ys[2]), (3.0, 2.5));
        assert!(ys[1].is_finite() && ys[1] > 5.0, "{ys:?}");
    }
}
