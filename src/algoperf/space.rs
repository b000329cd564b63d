//! Submissions and their search spaces (`workloads/submissions.toml`), and
//! the quasirandom points that make the trials.
//!
//! ```toml
//! [adamw]
//! optimizer = "adamw"
//! set = []                                    # extra --set entries of every trial
//! [adamw.space]                               # the tuned dimensions
//! "optimizer.lr" = { min = 1e-4, max = 1e-2, scale = "log" }
//! "optimizer.beta2" = { min = 0.95, max = 0.999, scale = "log1m" }  # log-uniform 1 - beta2
//! warmup_fraction = { min = 0.02, max = 0.2 }                        # of the workload's steps
//! ```
//!
//! Trial 0 of every submission is its defaults (the optimizer's paper
//! defaults and the workload's warmup): the self-tuning ruleset scores
//! trial 0 alone. Trials 1, 2, … take the Halton sequence's points 1, 2, …
//! over the space (one prime base per dimension, dimensions in key
//! order), mapped to each dimension's scale. A submission without a space
//! has one trial.

use super::workload::Workload;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    #[default]
    Linear,
    /// Log-uniform between min and max (both > 0).
    Log,
    /// Log-uniform 1 - x (for betas close to 1).
    Log1m,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dim {
    pub min: f64,
    pub max: f64,
    #[serde(default)]
    pub scale: Scale,
}

impl Dim {
    /// The value at quantile `u` in [0, 1).
    pub fn at(&self, u: f64) -> f64 {
        match self.scale {
            Scale::Linear => self.min + u * (self.max - self.min),
            Scale::Log => (self.min.ln() + u * (self.max.ln() - self.min.ln())).exp(),
            Scale::Log1m => 1.0 - ((1.0 - self.min).ln() + u * ((1.0 - self.max).ln() - (1.0 - self.min).ln())).exp(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    #[serde(skip)]
    pub name: String,
    pub optimizer: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub set: Vec<String>,
    #[serde(default)]
    pub space: BTreeMap<String, Dim>,
}

/// Every submission of a file, by name.
pub fn load(path: &Path) -> Result<BTreeMap<String, Submission>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read submissions {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

pub fn parse(text: &str, origin: &str) -> Result<BTreeMap<String, Submission>> {
    let mut all: BTreeMap<String, Submission> = toml::from_str(text).map_err(|e| anyhow!("submissions {origin}: {}", e.message()))?;
    for (name, s) in all.iter_mut() {
        s.name = name.clone();
        s.validate().with_context(|| format!("submissions {origin}: [{name}]"))?;
    }
    Ok(all)
}

impl Submission {
    fn validate(&self) -> Result<()> {
        if !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bail!("the name must be letters, digits, `-`, `_` or `.` (it names a folder)");
        }
        if !crate::config::OPTIMIZERS.contains(&self.optimizer.as_str()) {
            bail!("optimizer `{}` is unknown; available: {}", self.optimizer, crate::config::OPTIMIZERS.join(", "));
        }
        if self.space.len() > PRIMES.len() {
            bail!("at most {} tuned dimensions", PRIMES.len());
        }
        for (key, d) in &self.space {
            let ok = match d.scale {
                Scale::Linear => d.min <= d.max,
                Scale::Log => d.min > 0.0 && d.min <= d.max,
                Scale::Log1m => d.min <= d.max && d.max < 1.0,
            };
            if !(ok && d.min.is_finite() && d.max.is_finite()) {
                bail!("space `{key}`: min {} / max {} do not fit scale {:?} (log: 0 < min <= max; log1m: min <= max < 1)", d.min, d.max, d.scale);
            }
            if key == "warmup_fraction" && !(d.min >= 0.0 && d.max < 1.0) {
                bail!("space `warmup_fraction` must lie in [0, 1)");
            }
        }
        // Every key must be a config key (checked against a resolved config).
        let mut probe = vec![format!("optimizer.name={}", self.optimizer)];
        probe.extend(self.set.iter().cloned());
        probe.extend(self.space.iter().filter(|(k, _)| *k != "warmup_fraction").map(|(k, d)| format!("{k}={}", fmt(d.at(0.5)))));
        crate::config::load(None, &probe)?;
        Ok(())
    }

    /// Trials this submission runs when `n` are asked for.
    pub fn trial_count(&self, n: usize) -> usize {
        if self.space.is_empty() { 1 } else { n.max(1) }
    }

    /// The tuned values of trial `i` (empty for trial 0, the defaults).
    pub fn point(&self, i: usize) -> BTreeMap<String, f64> {
        if i == 0 {
            return BTreeMap::new();
        }
        self.space.iter().enumerate().map(|(d, (k, dim))| (k.clone(), dim.at(halton(i as u64, PRIMES[d])))).collect()
    }

    /// The `--set` entries of trial `i` on workload `w` (after the
    /// workload's own entries).
    pub fn trial_sets(&self, w: &Workload, i: usize) -> Vec<String> {
        let mut v = vec![format!("optimizer.name={}", self.optimizer)];
        v.extend(self.set.iter().cloned());
        for (k, x) in self.point(i) {
            if k == "warmup_fraction" {
                v.push(format!("train.warmup_steps={}", w.warmup_steps(x)));
            } else {
                v.push(format!("{k}={}", fmt(x)));
            }
        }
        v
    }
}

/// A float as a `--set` value that parses back to the same f64.
pub fn fmt(x: f64) -> String {
    format!("{x:e}")
}

const PRIMES: [u64; 8] = [2, 3, 5, 7, 11, 13, 17, 19];

/// Radical inverse of `i` in base `b`: the Halton sequence's coordinate.
pub fn halton(mut i: u64, b: u64) -> f64 {
    let (mut f, mut r) = (1.0, 0.0);
    while i > 0 {
        f /= b as f64;
        r += f * (i % b) as f64;
        i /= b;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halton_known_values() {
        let b2: Vec<f64> = (1..8).map(|i| halton(i, 2)).collect();
        assert_eq!(b2, [0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]);
        let b3: Vec<f64> = (1..5).map(|i| halton(i, 3)).collect();
        for (g, w) in b3.iter().zip([1.0 / 3.0, 2.0 / 3.0, 1.0 / 9.0, 4.0 / 9.0]) {
            assert!((g - w).abs() < 1e-15);
        }
    }

    #[test]
    fn scales_map_quantiles() {
        let log = Dim { min: 1e-4, max: 1e-2, scale: Scale::Log };
        assert!((log.at(0.5) - 1e-3).abs() < 1e-15);
        let b2 = Dim { min: 0.9, max: 0.999, scale: Scale::Log1m };
        assert!((b2.at(0.5) - (1.0 - 0.1f64.sqrt() * 0.001f64.sqrt())).abs() < 1e-12 && (b2.at(0.0) - 0.9).abs() < 1e-12);
        let lin = Dim { min: 0.0, max: 0.2, scale: Scale::Linear };
        assert!((lin.at(0.25) - 0.05).abs() < 1e-15);
    }

    const FILE: &str = r#"
[adamw]
optimizer = "adamw"
[adamw.space]
"optimizer.lr" = { min = 1e-4, max = 1e-2, scale = "log" }
warmup_fraction = { min = 0.0, max = 0.2 }

[adamw-autolrs]
optimizer = "adamw"
set = ["train.schedule=autolrs"]
"#;

    #[test]
    fn trials_are_defaults_then_halton_points() {
        let subs = parse(FILE, "t").unwrap();
        let w = Workload::parse("name = \"w\"\ndata = \"builtin\"\nsteps = 100\neval_every = 10\ntarget_val_loss = 1.0\n", "w").unwrap();
        let a = &subs["adamw"];
        assert_eq!(a.trial_sets(&w, 0), ["optimizer.name=adamw"]);
        // Dimensions in key order: "optimizer.lr" (base 2), warmup_fraction (base 3).
        let t1 = a.trial_sets(&w, 1);
        assert_eq!((t1.len(), &t1[0][..], &t1[2][..]), (3, "optimizer.name=adamw", "train.warmup_steps=7"));
        let lr: f64 = t1[1].strip_prefix("optimizer.lr=").unwrap().parse().unwrap();
        assert!((lr - 1e-3).abs() < 1e-15, "{lr}");
        assert_eq!(a.trial_sets(&w, 2)[2], "train.warmup_steps=13");
        assert_eq!(a.trial_count(5), 5);
        let auto = &subs["adamw-autolrs"];
        assert_eq!((auto.trial_count(5), auto.trial_sets(&w, 0)), (1, vec!["optimizer.name=adamw".into(), "train.schedule=autolrs".into()]));
    }

    #[test]
    fn bad_submissions_are_refused() {
        let e = |t: &str| format!("{:#}", parse(t, "t").unwrap_err());
        assert!(e("[x]\noptimizer = \"sgd\"\n").contains("sgd"));
        assert!(e("[x]\noptimizer = \"adamw\"\n[x.space]\n\"optimizer.lr\" = { min = 0.0, max = 1.0, scale = \"log\" }\n").contains("log"));
        assert!(e("[x]\noptimizer = \"adamw\"\n[x.space]\n\"optimizer.learning_rate\" = { min = 0.1, max = 1.0 }\n").contains("optimizer.learning_rate"));
    }
}
