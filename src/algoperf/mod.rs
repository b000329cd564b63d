//! `ferrotron algoperf`: time-to-result benchmarking in the manner of
//! AlgoPerf (Dahl et al. 2023). A **workload** (`workload.rs`) fixes the
//! model, data, batch, step budget and a validation-loss target; a
//! **submission** (`space.rs`) is an optimizer with its settings and search
//! space; every (workload, submission) pair gets trials (`trial.rs`:
//! subprocesses, several at once, resumable), and the scoring (`score.rs`,
//! `report.rs`) turns times to target into performance ratios, profiles
//! ρ(τ) and the benchmark score under two rulesets:
//! - external tuning: the best of the submission's N trials (trial 0 = its
//!   defaults, trials 1.. quasirandom points of its search space);
//! - self-tuning: trial 0 alone (defaults only).
//!
//! Output folder: `harness.json`, `submissions.toml`, per workload
//! `<w>/workload.toml`, `<w>/target.json` (reference targets),
//! `<w>/<submission>/calibration.json` (solo step time) and
//! `<w>/<submission>/trial_<i>/` (a run folder + `trial.json`, `done.json`,
//! `train.log`); `report.md`, `scores.json`, `profiles_external.png`,
//! `profiles_self.png`.

pub mod report;
pub mod score;
pub mod space;
pub mod trial;
pub mod workload;

use anyhow::{anyhow, bail, Context, Result};
use space::Submission;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use trial::{Runner, TrialSpec};
use workload::{Target, Workload};

pub const TARGET_FILE: &str = "target.json";
pub const CALIBRATION_FILE: &str = "calibration.json";
/// The submission whose trial 0 sets a reference target.
pub const REFERENCE: &str = "adamw";

/// `algoperf run` settings.
#[derive(Clone, Debug)]
pub struct RunArgs {
    pub workloads: Vec<PathBuf>,
    pub submissions_file: PathBuf,
    /// Names from the file; empty = all.
    pub only: Vec<String>,
    pub trials: usize,
    pub out: PathBuf,
    pub parallel: usize,
    pub devices: Vec<String>,
    pub calibrate: bool,
    pub keep_checkpoints: bool,
    /// More `--set` entries for every trial (e.g. device=cuda).
    pub sets: Vec<String>,
    /// The ferrotron binary that runs trials (normally this one).
    pub exe: PathBuf,
    /// Seconds after which no trial starts and running ones are stopped;
    /// the scoring then uses trials 0..k, the most every submission finished.
    pub time_limit_s: Option<f64>,
}

pub fn run(a: &RunArgs) -> Result<report::Report> {
    if a.workloads.is_empty() {
        bail!("give at least one --workload FILE (see workloads/)");
    }
    let workloads: Vec<Workload> = a.workloads.iter().map(|p| Workload::load(p)).collect::<Result<_>>()?;
    let mut names: Vec<&str> = workloads.iter().map(|w| w.name.as_str()).collect();
    names.sort();
    if names.windows(2).any(|p| p[0] == p[1]) {
        bail!("two workloads are named the same; workload names must be unique");
    }
    let all = space::load(&a.submissions_file)?;
    let chosen: Vec<&Submission> = if a.only.is_empty() {
        all.values().collect()
    } else {
        a.only.iter().map(|n| all.get(n).ok_or_else(|| anyhow!("submission `{n}` is not in {}; it has: {}", a.submissions_file.display(), all.keys().cloned().collect::<Vec<_>>().join(", ")))).collect::<Result<_>>()?
    };
    for w in &workloads {
        check_data(w)?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    std::fs::copy(&a.submissions_file, a.out.join("submissions.toml")).with_context(|| format!("cannot copy {}", a.submissions_file.display()))?;
    let harness = serde_json::json!({
        "workloads": workloads.iter().map(|w| &w.name).collect::<Vec<_>>(),
        "submissions": chosen.iter().map(|s| &s.name).collect::<Vec<_>>(),
        "trials": a.trials, "sets": a.sets, "parallel": a.parallel, "devices": a.devices,
        "started": crate::util::time::now_rfc3339(),
    });
    crate::util::atomic::write_file(&a.out.join("harness.json"), serde_json::to_string_pretty(&harness)?.as_bytes())?;
    for (w, path) in workloads.iter().zip(&a.workloads) {
        std::fs::create_dir_all(a.out.join(&w.name))?;
        std::fs::copy(path, a.out.join(&w.name).join("workload.toml"))?;
    }
    let deadline = a.time_limit_s.map(|s| std::time::Instant::now() + std::time::Duration::from_secs_f64(s));
    let runner = Runner { exe: a.exe.clone(), parallel: a.parallel.max(1), devices: a.devices.clone(), keep_checkpoints: a.keep_checkpoints, deadline };
    let total: usize = workloads.len() * chosen.iter().map(|s| s.trial_count(a.trials)).sum::<usize>();
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let say = |spec: &TrialSpec, done: &trial::Done| {
        let n = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let status = if done.exit_code == 0 { "ok".to_string() } else { format!("failed (exit {}, see train.log)", done.exit_code) };
        println!("[{n}] {} / {} / trial {}: {status} in {:.1} s", spec.workload, spec.submission, spec.index, done.wall_s);
    };
    println!("algoperf: {} workloads × {} submissions, {total} trials, {} at once -> {}", workloads.len(), chosen.len(), runner.parallel, a.out.display());

    // Solo step times first, while nothing else runs.
    if a.calibrate {
        for w in &workloads {
            for s in &chosen {
                let sets = trial_sets(a, w, s, 0, None);
                let key: Vec<&String> = sets.iter().filter(|x| !x.starts_with("data.path") && !x.starts_with("run.") && !x.starts_with("train.stop_at")).collect();
                let cache = a.out.join("calibration").join(format!("{:016x}.json", fnv(&format!("{key:?}"))));
                let ms = trial::calibrate(&a.exe, &sets, &cache, a.devices.first().map(String::as_str))?;
                let dir = a.out.join(&w.name).join(&s.name);
                std::fs::create_dir_all(&dir)?;
                crate::util::atomic::write_file(&dir.join(CALIBRATION_FILE), serde_json::json!({ "median_step_ms": ms, "sets": key }).to_string().as_bytes())?;
                println!("calibration {} / {}: {ms:.2} ms per step (solo)", w.name, s.name);
            }
        }
    }

    // Reference targets: AdamW's defaults to the end of the budget.
    let mut targets: BTreeMap<String, f64> = BTreeMap::new();
    let mut refs = vec![];
    for w in &workloads {
        match w.target_val_loss {
            Target::Fixed(t) => {
                targets.insert(w.name.clone(), t);
            }
            Target::Reference(_) => {
                let r = all.get(REFERENCE).ok_or_else(|| anyhow!("workload {} takes its target from `{REFERENCE}` trial 0, which {} lacks", w.name, a.submissions_file.display()))?;
                refs.push(spec(a, w, r, 0, None));
            }
        }
    }
    if !refs.is_empty() {
        runner.run_all(&refs, &say)?;
        for r in &refs {
            let w = workloads.iter().find(|w| w.name == r.workload).expect("a reference of a known workload");
            let at = (w.reference_at * w.steps as f64).round() as u64;
            let (step, t) = reference_target(r, at)?;
            crate::util::atomic::write_file(&a.out.join(&w.name).join(TARGET_FILE), serde_json::json!({ "target_val_loss": t, "from": format!("{REFERENCE}/trial_0"), "step": step }).to_string().as_bytes())?;
            println!("target of {}: validation loss {t:.4} ({REFERENCE} with its defaults at step {step} of {})", w.name, w.steps);
            targets.insert(w.name.clone(), t);
        }
    }

    // Every other trial: trial 0 of everything first, then trial 1, ...
    let max_trials = chosen.iter().map(|s| s.trial_count(a.trials)).max().unwrap_or(1);
    let mut specs = vec![];
    for i in 0..max_trials {
        for w in &workloads {
            for s in chosen.iter().filter(|s| i < s.trial_count(a.trials)) {
                if i == 0 && s.name == REFERENCE && w.fixed_target().is_none() {
                    continue; // ran above
                }
                specs.push(spec(a, w, s, i, Some(targets[&w.name])));
            }
        }
    }
    runner.run_all(&specs, &say)?;
    let unfinished: Vec<&TrialSpec> = specs.iter().chain(&refs).filter(|s| !s.is_done()).collect();
    let mut opts = report::Options::default();
    if !unfinished.is_empty() {
        // Equal budgets: score the trials every pair finished.
        let k = (0..max_trials).take_while(|&i| specs.iter().chain(&refs).filter(|s| s.index == i).all(|s| s.is_done())).count();
        println!("time limit reached: {} trials unfinished (run the same command again to continue); scoring trials 0..{k} of each submission", unfinished.len());
        if k == 0 {
            bail!("not one trial per submission finished within the time limit: nothing to score yet");
        }
        opts.max_trials = Some(k);
    }
    report::write(&a.out, &opts)
}

/// The `--set` entries of one trial.
fn trial_sets(a: &RunArgs, w: &Workload, s: &Submission, i: usize, stop_at: Option<f64>) -> Vec<String> {
    let mut sets = w.base_sets(&w.data);
    sets.extend(s.trial_sets(w, i));
    sets.extend(a.sets.iter().cloned());
    if let Some(t) = stop_at {
        sets.push(format!("train.stop_at_val_loss={}", space::fmt(t)));
    }
    let dir = a.out.join(&w.name).join(&s.name);
    sets.push(format!("run.dir=\"{}\"", dir.display()));
    sets.push(format!("run.name=trial_{i}"));
    sets
}

fn spec(a: &RunArgs, w: &Workload, s: &Submission, i: usize, stop_at: Option<f64>) -> TrialSpec {
    TrialSpec {
        workload: w.name.clone(),
        submission: s.name.clone(),
        index: i,
        point: s.point(i),
        sets: trial_sets(a, w, s, i, stop_at),
        dir: a.out.join(&w.name).join(&s.name).join(format!("trial_{i}")),
    }
}

/// (step, validation loss) of a finished reference run's last evaluation at
/// or before step `at`.
fn reference_target(r: &TrialSpec, at: u64) -> Result<(u64, f64)> {
    let o = trial::outcome(&r.dir, f64::NEG_INFINITY)?;
    if o.exit_code != Some(0) {
        bail!("the reference run {} failed (see its train.log); the workload's target cannot be set", r.dir.display());
    }
    let text = std::fs::read_to_string(r.dir.join(crate::telemetry::metrics::METRICS_FILE))?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "eval" && v["step"].as_u64().is_some_and(|s| s <= at))
        .filter_map(|v| Some((v["step"].as_u64()?, v["val_loss"].as_f64()?)))
        .next_back()
        .ok_or_else(|| anyhow!("the reference run {} logged no evaluation by step {at}", r.dir.display()))
}

fn check_data(w: &Workload) -> Result<()> {
    if w.data == "builtin" || Path::new(&w.data).join("meta.json").exists() {
        return Ok(());
    }
    let how = if w.prepare.is_empty() { "prepare it with `ferrotron prepare`".to_string() } else { format!("make it with: {}", w.prepare) };
    bail!("workload {}: its data folder {} has no prepared shards (meta.json); {how}", w.name, w.data)
}

/// FNV-1a, for short stable file names.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
