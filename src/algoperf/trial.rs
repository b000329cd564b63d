//! Trials: each one is `ferrotron train` in a subprocess with `--set`
//! overrides, in its own run folder `<out>/<workload>/<submission>/trial_<i>/`
//! (config.toml, metrics.jsonl, loss.png, train.log), several at once.
//!
//! Resumable: the harness writes `trial.json` (what the trial is) before
//! starting it and `done.json` (exit status, wall seconds) when it ends. A
//! folder with `done.json` is a finished trial and is not run again (a
//! failed one — e.g. a diverged loss — counts as never reaching the
//! target); a folder without it was interrupted and is run again from the
//! start. A folder holding a different trial is an error, not overwritten.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

pub const TRIAL_FILE: &str = "trial.json";
pub const DONE_FILE: &str = "done.json";

/// What a trial is (written to `trial.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialSpec {
    pub workload: String,
    pub submission: String,
    pub index: usize,
    /// The tuned values (empty for trial 0, the defaults).
    pub point: std::collections::BTreeMap<String, f64>,
    /// Every `--set` entry, in order (run.dir/run.name included).
    pub sets: Vec<String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Done {
    pub exit_code: i32,
    pub wall_s: f64,
    pub finished: String,
}

/// How to start trials.
#[derive(Clone, Debug)]
pub struct Runner {
    pub exe: PathBuf,
    /// Trials at once.
    pub parallel: usize,
    /// `CUDA_VISIBLE_DEVICES` of slot i is `devices[i % len]` (none: unset).
    pub devices: Vec<String>,
    pub keep_checkpoints: bool,
    /// No trial starts after this, and running ones are stopped (they stay
    /// unfinished: a later run of the harness starts them again).
    pub deadline: Option<Instant>,
}

impl TrialSpec {
    pub fn is_done(&self) -> bool {
        self.dir.join(DONE_FILE).exists()
    }
}

impl Runner {
    /// Runs every trial not finished yet, `parallel` at a time; `report`
    /// is called as each one ends (in completion order).
    pub fn run_all(&self, specs: &[TrialSpec], report: &(dyn Fn(&TrialSpec, &Done) + Sync)) -> Result<()> {
        let mut todo = VecDeque::new();
        for s in specs {
            if prepare_dir(s)? {
                todo.push_back(s.clone());
            }
        }
        let queue = Mutex::new(todo);
        let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for slot in 0..self.parallel.max(1) {
                let (queue, first_error) = (&queue, &first_error);
                scope.spawn(move || loop {
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let Some(spec) = queue.lock().unwrap().pop_front() else { break };
                    match self.run_one(&spec, slot) {
                        Ok(Some(done)) => report(&spec, &done),
                        Ok(None) => {}
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(e);
                            queue.lock().unwrap().clear();
                        }
                    }
                });
            }
        });
        match first_error.into_inner().unwrap() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// None: stopped at the deadline.
    fn run_one(&self, spec: &TrialSpec, slot: usize) -> Result<Option<Done>> {
        let log = std::fs::File::create(spec.dir.join("train.log")).with_context(|| format!("cannot create {}/train.log", spec.dir.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("train");
        for s in &spec.sets {
            cmd.arg("--set").arg(s);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if !self.devices.is_empty() {
            cmd.env("CUDA_VISIBLE_DEVICES", &self.devices[slot % self.devices.len()]);
        }
        let began = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", self.exe.display()))?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                child.kill().ok();
                child.wait().ok();
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let done = Done { exit_code: status.code().unwrap_or(-1), wall_s: began.elapsed().as_secs_f64(), finished: crate::util::time::now_rfc3339() };
        if !self.keep_checkpoints {
            let ckpts = spec.dir.join("checkpoints");
            if ckpts.exists() {
                std::fs::remove_dir_all(&ckpts).with_context(|| format!("cannot remove {}", ckpts.display()))?;
            }
        }
        crate::util::atomic::write_file(&spec.dir.join(DONE_FILE), serde_json::to_string_pretty(&done)?.as_bytes())?;
        Ok(Some(done))
    }
}

/// Makes the trial's folder ready; false if it already finished.
fn prepare_dir(spec: &TrialSpec) -> Result<bool> {
    let path = spec.dir.join(TRIAL_FILE);
    if path.exists() {
        let saved: TrialSpec = serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{} is not a trial description", path.display()))?;
        if saved.sets != spec.sets {
            bail!(
                "{} holds a different trial (its settings: {}; now: {}); use another --out folder or remove it",
                spec.dir.display(),
                saved.sets.join(" "),
                spec.sets.join(" ")
            );
        }
        if spec.is_done() {
            return Ok(false);
        }
        // Interrupted: start it again from nothing.
        std::fs::remove_dir_all(&spec.dir).with_context(|| format!("cannot clear the interrupted trial {}", spec.dir.display()))?;
    } else if spec.dir.exists() && std::fs::read_dir(&spec.dir)?.next().is_some() {
        bail!("{} exists and is not a trial folder; use another --out folder", spec.dir.display());
    }
    std::fs::create_dir_all(&spec.dir).with_context(|| format!("cannot create {}", spec.dir.display()))?;
    crate::util::atomic::write_file(&path, serde_json::to_string_pretty(spec)?.as_bytes())?;
    Ok(true)
}

/// What a finished trial reached, from its metrics.jsonl.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// First evaluation at or below the target: its step.
    pub target_step: Option<u64>,
    /// Σ step_ms of the train steps up to the target step plus the AutoLRS
    /// searches (trial steps, snapshot, restores) before it, in seconds;
    /// evaluation, start-up and checkpoint time excluded.
    pub train_time_s: Option<f64>,
    /// AutoLRS trial steps before the target step (0 for fixed schedules).
    pub extra_steps: u64,
    pub best_val_loss: Option<f64>,
    pub last_step: u64,
    pub exit_code: Option<i32>,
}

impl Outcome {
    pub fn reached(&self) -> bool {
        self.target_step.is_some()
    }

    /// Steps that did work up to the target (main + AutoLRS trials).
    pub fn steps_with_trials(&self) -> Option<u64> {
        self.target_step.map(|s| s + self.extra_steps)
    }
}

/// Reads a trial folder; a trial with no metrics yet has an empty outcome.
pub fn outcome(dir: &Path, target: f64) -> Result<Outcome> {
    let mut o = Outcome::default();
    if let Ok(text) = std::fs::read_to_string(dir.join(DONE_FILE)) {
        let d: Done = serde_json::from_str(&text).map_err(|e| anyhow!("{}/{DONE_FILE}: {e}", dir.display()))?;
        o.exit_code = Some(d.exit_code);
    }
    let path = dir.join(crate::telemetry::metrics::METRICS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(o) };
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    for l in &lines {
        let step = l.get("step").and_then(Value::as_u64).unwrap_or(0);
        if l["kind"] == "train" {
            o.last_step = o.last_step.max(step);
        }
        if l["kind"] == "eval" {
            if let Some(v) = f(l, "val_loss").filter(|v| v.is_finite()) {
                o.best_val_loss = Some(o.best_val_loss.map_or(v, |b: f64| b.min(v)));
                if v <= target && o.target_step.is_none() {
                    o.target_step = Some(step);
                }
            }
        }
    }
    if let Some(s) = o.target_step {
        let mut ms = 0.0;
        for l in &lines {
            let step = l.get("step").and_then(Value::as_u64).unwrap_or(u64::MAX);
            if step > s {
                continue;
            }
            match l["kind"].as_str() {
                Some("train") => ms += f(l, "step_ms").unwrap_or(0.0),
                Some("autolrs_stage") => {
                    ms += f(l, "search_ms").unwrap_or(0.0);
                    o.extra_steps += l.get("trial_steps").and_then(Value::as_u64).unwrap_or(0);
                }
                _ => {}
            }
        }
        o.train_time_s = Some(ms / 1e3);
    }
    Ok(o)
}

/// The solo median step time of a config (`ferrotron bench train`), cached
/// in `cache` (a JSON file) so a repeated harness run does not measure again.
pub fn calibrate(exe: &Path, sets: &[String], cache: &Path, device: Option<&str>) -> Result<f64> {
    if let Ok(text) = std::fs::read_to_string(cache) {
        if let Some(ms) = serde_json::from_str::<Value>(&text).ok().and_then(|v| v.get("median_step_ms")?.as_f64()) {
            return Ok(ms);
        }
    }
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "train", "--warmup", "5", "--steps", "20"]);
    for s in sets.iter().filter(|s| !s.starts_with("run.") && !s.starts_with("data.path")) {
        cmd.arg("--set").arg(s);
    }
    if let Some(d) = device {
        cmd.env("CUDA_VISIBLE_DEVICES", d);
    }
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start {}", exe.display()))?;
    if !out.status.success() {
        bail!("calibration (`ferrotron bench train`) failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or_else(|| anyhow!("`ferrotron bench train` printed no JSON line"))?;
    let v: Value = serde_json::from_str(line)?;
    let ms = v.get("median_step_ms").and_then(Value::as_f64).ok_or_else(|| anyhow!("`ferrotron bench train` reported no median_step_ms"))?;
    if let Some(parent) = cache.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::util::atomic::write_file(cache, line.as_bytes())?;
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time to target by hand: steps 1-4 cost 10 ms each, AutoLRS searched
    /// before step 1 (100 ms, 6 trial steps) and before step 5 (300 ms, 12
    /// trial steps); the first evaluation at or below 2.0 is at step 4.
    #[test]
    fn outcome_counts_steps_and_autolrs_searches_up_to_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = String::new();
        m += r#"{"kind":"autolrs_stage","step":1,"search_ms":100.0,"trial_steps":6}"#;
        m.push('\n');
        for s in 1..=6 {
            m += &format!(r#"{{"kind":"train","step":{s},"loss":3.0,"step_ms":10.0}}"#);
            m.push('\n');
            if s % 2 == 0 {
                m += &format!(r#"{{"kind":"eval","step":{s},"val_loss":{}}}"#, [2.5, 1.9, 1.5][s / 2 - 1]);
                m.push('\n');
            }
            if s == 4 {
                m += r#"{"kind":"autolrs_stage","step":5,"search_ms":300.0,"trial_steps":12}"#;
                m.push('\n');
            }
        }
        std::fs::write(dir.path().join("metrics.jsonl"), m).unwrap();
        let o = outcome(dir.path(), 2.0).unwrap();
        assert_eq!((o.target_step, o.extra_steps, o.last_step, o.best_val_loss), (Some(4), 6, 6, Some(1.5)));
        assert!((o.train_time_s.unwrap() - 0.14).abs() < 1e-12, "{:?}", o.train_time_s);
        assert_eq!(o.steps_with_trials(), Some(10));
        let never = outcome(dir.path(), 1.0).unwrap();
        assert_eq!((never.target_step, never.train_time_s, never.exit_code), (None, None, None));
    }
}
