//! A workload: what to train, on which data, with which budget, to which
//! validation-loss target. One TOML file each (`workloads/*.toml`):
//!
//! ```toml
//! name = "llama60m-code"
//! description = "llama-60m on Python sources, GPT-2 BPE"
//! data = "data/algoperf/code"                 # data.path ("builtin" or a prepared folder)
//! prepare = "bash bench/algoperf_data.sh code" # how to make the data (shown when it is missing)
//! steps = 600                                 # step budget = the schedule's length
//! eval_every = 25                             # time to target is read at evaluations
//! warmup_fraction = 0.1                       # default warmup (a tuned dimension)
//! target_val_loss = 1.6                       # or "reference": see below
//! time_budget_s = 0                           # > 0: slower than this counts as never
//! set = ["model.preset=llama-60m", "train.batch_size=32", "train.seq_len=256"]
//! ```
//!
//! `target_val_loss = "reference"`: the target is the validation loss that
//! AdamW with its defaults (submission `adamw`, trial 0) reaches at
//! `reference_at` of the budget (default 1.0: its end; the last evaluation
//! at or before that step); that run goes first, without stopping early,
//! and the target is written to `<out>/<workload>/target.json`. So a
//! well-tuned AdamW reaches every target within the budget by construction.
//! A `reference_at` below 1 leaves room for submissions slower than AdamW's
//! defaults to reach the target too (their ratios are then measured
//! rather than ∞).

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    Fixed(f64),
    /// Only the string "reference".
    Reference(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `data.path` of every trial.
    pub data: String,
    /// How to make the data (shown when the folder is missing).
    #[serde(default)]
    pub prepare: String,
    pub steps: u64,
    pub eval_every: u64,
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    #[serde(default = "default_warmup")]
    pub warmup_fraction: f64,
    pub target_val_loss: Target,
    /// With a reference target: the fraction of the budget at which the
    /// reference's validation loss is taken.
    #[serde(default = "default_reference_at")]
    pub reference_at: f64,
    #[serde(default)]
    pub time_budget_s: f64,
    /// `--set key=value` entries: model, batch, sequence, device, …
    #[serde(default)]
    pub set: Vec<String>,
}

fn default_eval_batches() -> usize {
    8
}

fn default_warmup() -> f64 {
    0.1
}

fn default_reference_at() -> f64 {
    1.0
}

impl Workload {
    pub fn load(path: &Path) -> Result<Workload> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read workload {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Workload> {
        let w: Workload = toml::from_str(text).map_err(|e| anyhow!("workload {origin}: {}", e.message()))?;
        w.validate().with_context(|| format!("workload {origin}"))?;
        Ok(w)
    }

    fn validate(&self) -> Result<()> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bail!("name `{}` must be non-empty letters, digits, `-`, `_` or `.` (it names a folder)", self.name);
        }
        if self.steps == 0 || self.eval_every == 0 {
            bail!("steps and eval_every must be at least 1 (time to target is read at evaluations)");
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            bail!("warmup_fraction must be in [0, 1), got {}", self.warmup_fraction);
        }
        if !(self.reference_at > 0.0 && self.reference_at <= 1.0) {
            bail!("reference_at must be in (0, 1] (a fraction of the budget), got {}", self.reference_at);
        }
        match &self.target_val_loss {
            Target::Fixed(t) if !(*t > 0.0 && t.is_finite()) => bail!("target_val_loss must be a positive number or \"reference\", got {t}"),
            Target::Reference(s) if s != "reference" => bail!("target_val_loss must be a positive number or \"reference\", got \"{s}\""),
            _ => {}
        }
        for s in &self.set {
            let key = s.split_once('=').map(|(k, _)| k.trim()).ok_or_else(|| anyhow!("set entry `{s}` is not key=value"))?;
            if ["train.steps", "train.eval_every", "train.eval_batches", "train.warmup_steps", "train.stop_at_val_loss", "data.path", "run.dir", "run.name"].contains(&key) {
                bail!("set entry `{s}`: {key} is set by the harness (use the workload's own fields)");
            }
            if key.starts_with("optimizer.") {
                bail!("set entry `{s}`: optimizer settings belong to the submissions (a workload setting would override every optimizer's defaults)");
            }
        }
        // The configuration must resolve (unknown keys, bad shapes).
        crate::config::load(None, &self.base_sets("builtin"))?;
        Ok(())
    }

    /// The `--set` entries every trial of this workload starts from.
    pub fn base_sets(&self, data: &str) -> Vec<String> {
        let mut v = self.set.clone();
        v.extend([
            format!("data.path=\"{data}\""),
            format!("train.steps={}", self.steps),
            format!("train.eval_every={}", self.eval_every),
            format!("train.eval_batches={}", self.eval_batches),
            format!("train.warmup_steps={}", self.warmup_steps(self.warmup_fraction)),
            "train.samples=0".into(),
            "train.ckpt_every=0".into(),
            "run.progress=false".into(),
        ]);
        v
    }

    pub fn warmup_steps(&self, fraction: f64) -> u64 {
        (fraction * self.steps as f64).round() as u64
    }

    pub fn fixed_target(&self) -> Option<f64> {
        match self.target_val_loss {
            Target::Fixed(t) => Some(t),
            Target::Reference(_) => None,
        }
    }

    /// Tokens per optimizer step of this workload's config.
    pub fn tokens_per_step(&self) -> Result<u64> {
        let c = crate::config::load(None, &self.base_sets("builtin"))?;
        Ok((c.train.batch_size * c.train.seq_len * c.train.grad_accum) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "w"
data = "builtin"
steps = 20
eval_every = 5
target_val_loss = 2.5
set = ["train.batch_size=4", "train.seq_len=32"]
"#;

    #[test]
    fn parses_and_builds_the_trial_settings() {
        let w = Workload::parse(OK, "t").unwrap();
        assert_eq!(w.fixed_target(), Some(2.5));
        assert_eq!(w.tokens_per_step().unwrap(), 128);
        let sets = w.base_sets("builtin");
        assert!(sets.contains(&"train.warmup_steps=2".to_string()) && sets.contains(&"train.steps=20".to_string()));
        let r = Workload::parse(&OK.replace("2.5", "\"reference\""), "t").unwrap();
        assert_eq!(r.fixed_target(), None);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |t: &str| format!("{:#}", Workload::parse(t, "t").unwrap_err());
        assert!(e(&OK.replace("2.5", "\"best\"")).contains("reference"));
        assert!(e(&OK.replace("train.batch_size=4", "train.steps=4")).contains("set by the harness"));
        assert!(e(&OK.replace("train.batch_size=4", "optimizer.lr=1e-2")).contains("submissions"));
        assert!(e(&OK.replace("train.batch_size=4", "train.bach_size=4")).contains("train.batch_size"));
        assert!(e(&OK.replace("name = \"w\"", "name = \"a b\"")).contains("name"));
        assert!(e(&format!("{OK}\nbudget = 3\n")).contains("budget"));
    }
}
