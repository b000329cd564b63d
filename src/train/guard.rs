//! The bad-step policy: which optimizer steps are not applied, and when a
//! run gives up.
//!
//! A step is *skipped* (its gradient never reaches the optimizer, so the
//! weights and the optimizer state stay as they were) when
//! - its loss or its global gradient norm is not finite (NaN or infinity), or
//! - `train.skip_spike_z > 0` and its loss is a spike: more than
//!   `skip_spike_z` standard deviations above the mean loss of the last
//!   [`WINDOW`] applied steps (once at least [`MIN_HISTORY`] are known). This
//!   is llm.c's z-score outlier rule (`-sl`), applied to the loss only.
//!
//! A skipped step still counts as a step: its batch is consumed and the
//! learning-rate schedule moves on, so a resumed run sees the same data at
//! the same step numbers. After `train.max_bad_steps` skipped steps in a row
//! the run stops with an error: the weights are not the problem (nothing was
//! applied), so it says what to change. The trainer also saves no checkpoint
//! while a streak is open, so the newest checkpoint is one taken after an
//! applied step.
//!
//! The state (counts and the loss window) travels in the checkpoint
//! manifest, so a resumed run makes the same decisions as an uninterrupted one.
//!
//! Offloaded runs (`offload.optimizer = cpu | nvme`, `train::offload_step`)
//! step units during the last micro-batch's backward, so they ask
//! [`Guard::verdict`] before it: the loss rules (non-finite, spike) always
//! apply as here, and so does the non-finite norm with `train.grad_clip >
//! 0` (the norm is known before any unit steps). With `grad_clip = 0` a
//! unit steps as soon as its gradients reach the host; one whose gradients
//! are not finite is not applied, but the units stepped before it cannot
//! be taken back, so the run stops with an error instead of skipping.

use crate::config::TrainConfig;
use anyhow::{bail, Result};
use std::path::Path;
use serde::{Deserialize, Serialize};

/// Applied losses remembered for the spike rule.
pub const WINDOW: usize = 64;
/// Applied losses needed before the spike rule judges a step.
pub const MIN_HISTORY: usize = 16;

/// What survives a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuardState {
    /// Steps skipped over the whole run.
    pub skipped: u64,
    /// Skipped steps since the last applied one.
    pub streak: u64,
    /// Step number of the first step of the open streak.
    pub streak_start: u64,
    /// Losses of the last `WINDOW` applied steps, oldest first.
    pub recent: Vec<f64>,
}

pub struct Guard {
    max_bad_steps: u64,
    spike_z: f64,
    pub state: GuardState,
}

impl Guard {
    pub fn new(t: &TrainConfig) -> Self {
        Guard { max_bad_steps: t.max_bad_steps, spike_z: t.skip_spike_z as f64, state: GuardState::default() }
    }

    /// Why step `step` (1-based) must not be applied, or `None` to apply it.
    /// Records the decision.
    pub fn judge(&mut self, step: u64, loss: f32, grad_norm: f32) -> Option<String> {
        let reason = self.verdict(loss, Some(grad_norm));
        let s = &mut self.state;
        match &reason {
            Some(_) => {
                if s.streak == 0 {
                    s.streak_start = step;
                }
                s.streak += 1;
                s.skipped += 1;
            }
            None => {
                s.streak = 0;
                s.recent.push(loss as f64);
                if s.recent.len() > WINDOW {
                    s.recent.remove(0);
                }
            }
        }
        reason
    }

    /// What [`Guard::judge`] would decide now, recording nothing; with
    /// `grad_norm = None` the loss rules alone. An offloaded step asks
    /// before its units are stepped (they step during backward, before a
    /// whole step's numbers exist) and records with `judge` afterwards:
    /// nothing changes the state in between, so both agree.
    pub fn verdict(&self, loss: f32, grad_norm: Option<f32>) -> Option<String> {
        let (loss, grad_norm) = (loss as f64, grad_norm.map(f64::from));
        if !loss.is_finite() {
            return Some(format!("loss is {loss}"));
        }
        if let Some(n) = grad_norm.filter(|n| !n.is_finite()) {
            return Some(format!("gradient norm is {n}"));
        }
        self.spike(loss)
    }

    /// The spike rule (`train.skip_spike_z`).
    fn spike(&self, loss: f64) -> Option<String> {
        let r = &self.state.recent;
        if self.spike_z > 0.0 && r.len() >= MIN_HISTORY {
            let n = r.len() as f64;
            let mean = r.iter().sum::<f64>() / n;
            let std = (r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
            if std > 0.0 {
                let z = (loss - mean) / std;
                if z > self.spike_z {
                    return Some(format!("loss spike: {loss:.4} is {z:.1} standard deviations above the recent mean {mean:.4} (train.skip_spike_z = {})", self.spike_z));
                }
            }
        }
        None
    }

    /// True while the last step was skipped: no checkpoint should be taken.
    pub fn in_streak(&self) -> bool {
        self.state.streak > 0
    }

    /// After a skipped step: an error when the run should stop, because
    /// `max_bad_steps` steps in a row were skipped or because the weights
    /// themselves are no longer finite (an update with a finite loss and
    /// gradient overflowed them: no later step can be applied). The message
    /// names the newest checkpoint of `run_dir` to continue from.
    pub fn check_streak(&self, last_reason: &str, weights_finite: bool, run_dir: &Path) -> Result<()> {
        let s = &self.state;
        let why = if !weights_finite {
            format!(
                "the weights are no longer finite (their sum of squares is not): the update of step {} blew them up (its loss and gradient were finite), so no later step can be applied",
                s.streak_start.saturating_sub(1)
            )
        } else if s.streak >= self.max_bad_steps.max(1) {
            format!(
                "{} steps in a row (steps {}..={}) were skipped (the last: {last_reason}) and none of them changed the weights (train.max_bad_steps = {})",
                s.streak,
                s.streak_start,
                s.streak_start + s.streak - 1,
                self.max_bad_steps
            )
        } else {
            return Ok(());
        };
        let from = match crate::ckpt::latest(run_dir).ok().flatten() {
            Some(dir) => format!("its newest checkpoint ({}, finite weights)", dir.file_name().unwrap_or_default().to_string_lossy()),
            None => "step 0 (no checkpoint was saved yet)".into(),
        };
        bail!(
            "run {} stopped at step {}: {why}. Continue from {from} at a lower learning rate: \
             `ferrotron train --resume {} --set optimizer.lr=...` (or with a longer train.warmup_steps, or train.grad_clip on)",
            run_dir.display(),
            s.streak_start + s.streak - 1,
            run_dir.display()
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("guard state serializes")
    }

    /// Restore from a manifest; `null` (checkpoints saved before the guard
    /// existed) is a fresh state.
    pub fn load_json(&mut self, v: &serde_json::Value) -> Result<()> {
        self.state = if v.is_null() { GuardState::default() } else { serde_json::from_value(v.clone())? };
        Ok(())
    }
}
