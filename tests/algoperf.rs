//! `ferrotron algoperf` end to end on the CPU: the tiny CI workload, two
//! submissions with two trials each (subprocesses of the real binary), the
//! scores checked against values computed by hand from the trials' own
//! metrics, resumption, and clear errors.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ferrotron(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(args).current_dir(cwd).output().expect("binary runs")
}

fn ok(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "failed: {text}");
    text
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Steps to the first evaluation at or below `target`, from metrics.jsonl,
/// written out independently of the harness.
fn steps_to(metrics: &[Value], target: f64) -> Option<u64> {
    metrics.iter().filter(|l| l["kind"] == "eval").find(|l| l["val_loss"].as_f64().unwrap() <= target).map(|l| l["step"].as_u64().unwrap())
}

fn run_ci(out: &Path) -> String {
    let w = root().join("workloads/tiny-ci.toml");
    let s = root().join("workloads/submissions.toml");
    let args = vec!["algoperf", "run", "--workload", w.to_str().unwrap(), "--submissions", s.to_str().unwrap(), "--only", "adamw,lion", "--trials", "2", "--out", out.to_str().unwrap(), "--parallel", "2"];
    ok(&ferrotron(&args, out.parent().unwrap()))
}

#[test]
fn two_trials_two_submissions_scored_like_by_hand_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ap");
    let log = run_ci(&out);
    assert_eq!(log.matches(": ok in").count(), 4, "{log}");
    let target = 3.6;
    let w = out.join("tiny-ci");
    // Trial 0 is the defaults; trial 1 the first Halton point of the space.
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(w.join("adamw/trial_1/trial.json")).unwrap()).unwrap();
    let lr = spec["point"]["optimizer.lr"].as_f64().unwrap();
    // Dimensions in key order: beta2 (base 2), lr (base 3), ...: point 1
    // puts lr at 1/3 of [1e-4, 1e-2] in log scale.
    assert!((lr - 1e-4 * 100f64.powf(1.0 / 3.0)).abs() < 1e-12, "{lr}");
    assert!(spec["sets"].as_array().unwrap().iter().any(|s| s == "train.stop_at_val_loss=3.6e0"));

    // By hand: per submission the fastest trial (wall = Σ step_ms up to the
    // target step; steps likewise), then ratios and the score's closed form.
    let mut best = std::collections::BTreeMap::new();
    for sub in ["adamw", "lion"] {
        let mut times = vec![];
        for t in 0..2 {
            let m = lines(&w.join(format!("{sub}/trial_{t}/metrics.jsonl")));
            if let Some(step) = steps_to(&m, target) {
                let ms: f64 = m.iter().filter(|l| l["kind"] == "train" && l["step"].as_u64().unwrap() <= step).map(|l| l["step_ms"].as_f64().unwrap()).sum();
                times.push((ms / 1e3, step));
                // Stopped at the target: nothing trained after it.
                assert_eq!(m.iter().filter(|l| l["kind"] == "train").count() as u64, step, "{sub} trial {t} did not stop at the target");
            }
        }
        best.insert(sub, times.iter().copied().fold(None, |a: Option<(f64, u64)>, t| Some(a.map_or(t, |a| if t.0 < a.0 { t } else { a }))));
    }
    let adamw = best["adamw"].expect("a tuned AdamW reaches the CI target");
    assert!(best["lion"].is_none(), "Lion at its defaults and at trial 1's point does not reach 3.6 in 40 steps here");
    let scores: Value = serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    assert_eq!(scores["measure"], "wall");
    // AdamW is the fastest (ratio 1, score 1); Lion never reached it (∞, 0).
    assert_eq!(scores["external_tuning"]["adamw"]["score"], 1.0);
    assert_eq!(scores["external_tuning"]["adamw"]["ratios"][0], 1.0);
    assert_eq!(scores["external_tuning"]["lion"]["score"], 0.0);
    assert!(scores["external_tuning"]["lion"]["ratios"][0].is_null());
    let pair = scores["pairs"].as_array().unwrap().iter().find(|p| p["submission"] == "adamw").unwrap();
    let best_time = pair["trials"].as_array().unwrap().iter().filter_map(|t| t["time"].as_f64()).fold(f64::INFINITY, f64::min);
    assert!((best_time - adamw.0).abs() < 1e-9, "harness {best_time} vs hand {}", adamw.0);
    for f in ["report.md", "profiles_external.png", "profiles_self.png"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| tiny-ci | adamw |") && report.contains("## Self-tuning"));
    // Checkpoints are removed after each trial (disk), the logs stay.
    assert!(!w.join("adamw/trial_0/checkpoints").exists() && w.join("adamw/trial_0/train.log").exists());

    // Re-scored by steps, with the target overridden to one both miss.
    let o = out.to_str().unwrap();
    ok(&ferrotron(&["algoperf", "score", "--out", o, "--measure", "steps", "--target", "tiny-ci=0.01"], tmp.path()));
    let s2: Value = serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    assert_eq!((s2["measure"].as_str(), s2["external_tuning"]["adamw"]["score"].as_f64()), (Some("steps"), Some(0.0)));
    assert_eq!(s2["workloads"][0]["target_overridden"], true);
    ok(&ferrotron(&["algoperf", "score", "--out", o, "--measure", "steps"], tmp.path()));
    let s3: Value = serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    let steps_pair = s3["pairs"].as_array().unwrap().iter().find(|p| p["submission"] == "adamw").unwrap();
    let best_steps = steps_pair["trials"].as_array().unwrap().iter().filter_map(|t| t["time"].as_f64()).fold(f64::INFINITY, f64::min);
    let hand_steps = (0..2).filter_map(|t| steps_to(&lines(&w.join(format!("adamw/trial_{t}/metrics.jsonl"))), target)).min().unwrap();
    assert_eq!(best_steps, hand_steps as f64);

    // Resumable: nothing runs again; an interrupted trial (no done.json) does.
    let again = run_ci(&out);
    assert_eq!(again.matches(": ok in").count(), 0, "{again}");
    std::fs::remove_file(w.join("lion/trial_1/done.json")).unwrap();
    let third = run_ci(&out);
    assert_eq!(third.matches(": ok in").count(), 1, "{third}");
    assert!(third.contains("lion / trial 1"));
}

#[test]
fn errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let fails = |args: &[&str], needle: &str| {
        let o = ferrotron(args, tmp.path());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !e.contains("panicked") && e.contains(needle), "{needle}: {e}");
    };
    let sub = root().join("workloads/submissions.toml");
    let wl = root().join("workloads/tiny-ci.toml");
    let (s, w) = (sub.to_str().unwrap(), wl.to_str().unwrap());
    fails(&["algoperf", "run", "--workload", w, "--submissions", s, "--only", "sgd", "--out", "x"], "sgd");
    std::fs::write(tmp.path().join("w.toml"), "name = \"w\"\ndata = \"nowhere\"\nprepare = \"bash make.sh\"\nsteps = 5\neval_every = 5\ntarget_val_loss = 1.0\n").unwrap();
    fails(&["algoperf", "run", "--workload", "w.toml", "--submissions", s, "--out", "x"], "bash make.sh");
    fails(&["algoperf", "score", "--out", "nothing-here"], "nothing-here");
    // A deadline already passed: no trial runs, and there is nothing to score.
    fails(&["algoperf", "run", "--workload", w, "--submissions", s, "--only", "lion", "--out", "late", "--time-limit", "0"], "nothing to score");
    assert!(tmp.path().join("late/tiny-ci/lion/trial_0/trial.json").exists() && !tmp.path().join("late/tiny-ci/lion/trial_0/done.json").exists());
    // A trial folder holding other settings is not overwritten.
    let out = tmp.path().join("ap");
    ok(&ferrotron(&["algoperf", "run", "--workload", w, "--submissions", s, "--only", "adamw", "--out", out.to_str().unwrap()], tmp.path()));
    let o = ferrotron(&["algoperf", "run", "--workload", w, "--submissions", s, "--only", "adamw", "--out", out.to_str().unwrap(), "--set", "seed=7"], tmp.path());
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("different trial"));
}

/// Every workload and the submissions file shipped in workloads/ parse and
/// resolve to valid configs.
#[test]
fn shipped_workloads_and_submissions_are_valid() {
    use ferrotron::algoperf::{space, workload::Workload};
    let subs = space::load(&root().join("workloads/submissions.toml")).unwrap();
    for name in ferrotron::config::OPTIMIZERS {
        assert!(subs.contains_key(*name), "submissions.toml lacks {name}");
        assert!(!subs[*name].space.is_empty() && subs[*name].space.contains_key("optimizer.lr"), "{name} has no lr dimension");
    }
    assert!(subs["adamw-autolrs"].space.is_empty());
    let mut n = 0;
    for e in std::fs::read_dir(root().join("workloads")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") && p.file_name().unwrap() != "submissions.toml" {
            let w = Workload::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            assert!(w.tokens_per_step().unwrap() > 0);
            n += 1;
        }
    }
    assert!(n >= 4, "the CI workload and at least three others");
}
