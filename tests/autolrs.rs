//! AutoLRS end to end on the CPU: what it logs, and exactness — the trials
//! leave no trace, so a run of stages equals plain runs at the chosen
//! learning rates from the same states.

use ferrotron::config::{self, Config};
use ferrotron::train::autolrs::Stage;
use ferrotron::train::trainer::train;
use serde_json::Value;
use std::path::Path;

fn cfg(dir: &Path, name: &str, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = [
        "train.batch_size=4", "train.seq_len=32", "train.eval_every=0", "train.eval_batches=1", "train.ckpt_every=0", "train.samples=0",
        "train.warmup_steps=0", "run.progress=false", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=64",
        "optimizer.lr=3e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("run.dir=\"{}\"", dir.display()));
    sets.push(format!("run.name={name}"));
    sets.extend(extra.iter().map(|s| s.to_string()));
    config::load(None, &sets).unwrap()
}

/// Two stages (τ 4 then 8), trials of 2 then 4 steps.
const AUTO: &[&str] = &["train.schedule=autolrs", "train.autolrs.tau=4", "train.autolrs.tau_prime=2", "train.autolrs.trials=3", "train.steps=12"];

fn lines(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn stages(run: &Path) -> Vec<Stage> {
    serde_json::from_str(&std::fs::read_to_string(run.join("autolrs.json")).unwrap()).unwrap()
}

/// The lr as a `--set` value that parses back to the same f32.
fn lr_set(lr: f32) -> String {
    format!("optimizer.lr={:e}", lr as f64)
}

#[test]
fn logs_trials_forecasts_and_chosen_lr_per_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let s = train(&cfg(tmp.path(), "a", AUTO), None).unwrap();
    assert_eq!(s.steps, 12);
    let run = tmp.path().join("a");
    let all = lines(&run);
    let kind = |k: &str| all.iter().filter(|l| l["kind"] == k).cloned().collect::<Vec<_>>();
    let (trials, stage_lines, train_lines) = (kind("autolrs_trial"), kind("autolrs_stage"), kind("train"));
    assert_eq!(train_lines.len(), 12, "trial steps are not train lines");
    assert_eq!(stage_lines.len(), 2);
    assert_eq!(trials.len(), 6);
    let st = stages(&run);
    assert_eq!(st.iter().map(|s| (s.start, s.tau, s.tau_prime)).collect::<Vec<_>>(), [(0, 4, 2), (4, 8, 4)]);
    for (i, stage) in st.iter().enumerate() {
        let mine: Vec<&Value> = trials.iter().filter(|t| t["stage"] == i).collect();
        assert_eq!(mine.len(), 3);
        for t in &mine {
            assert_eq!(t["step"], stage.start + 1);
            assert_eq!(t["losses"].as_array().unwrap().len() as u64, stage.tau_prime);
            assert!(t["forecast"].as_f64().unwrap().is_finite() && t["ms"].as_f64().unwrap() > 0.0);
        }
        // The chosen lr has the lowest forecast, and the stage trains at it.
        let best = mine.iter().min_by(|a, b| a["forecast"].as_f64().unwrap().total_cmp(&b["forecast"].as_f64().unwrap())).unwrap();
        assert_eq!(best["lr"].as_f64().unwrap() as f32, stage.lr);
        assert_eq!(stage_lines[i]["lr"].as_f64().unwrap() as f32, stage.lr);
        for l in train_lines.iter().filter(|l| (stage.start + 1..=stage.start + stage.tau).contains(&l["step"].as_u64().unwrap())) {
            assert_eq!(l["lr"].as_f64().unwrap() as f32, stage.lr);
        }
        // The first trial of a stage is the lr in force before it; the
        // later ones differ (chosen by expected improvement).
        let before = if i == 0 { 3e-3 } else { st[i - 1].lr };
        assert!((mine[0]["lr"].as_f64().unwrap() as f32 - before).abs() <= 1e-6 * before, "{} vs {before}", mine[0]["lr"]);
        assert!(mine[1]["lr"] != mine[0]["lr"] && mine[2]["lr"] != mine[1]["lr"]);
        let (lo, hi) = (3e-4, 9e-3);
        for t in &mine {
            let lr = t["lr"].as_f64().unwrap();
            assert!(lr >= lo * 0.999 && lr <= hi * 1.001, "lr {lr} outside the default range");
        }
    }
    assert!(run.join("autolrs.png").exists());
}

/// A run of two AutoLRS stages equals plain constant-lr training at stage
/// 0's chosen lr for 4 steps, then (resumed from that checkpoint) at stage
/// 1's for 8: the trials, run from saved states and undone, change nothing.
/// 8-bit AdamW covers quantized state, APOLLO (projection refreshed every 3
/// steps) state regenerated from the seed.
#[test]
fn stages_of_trials_equal_plain_runs_at_the_chosen_lrs() {
    for opt in [&["optimizer.name=adamw"][..], &["optimizer.name=adamw8bit"], &["optimizer.name=apollo", "optimizer.rank=4", "optimizer.update_every=3"]] {
        let tmp = tempfile::tempdir().unwrap();
        let mut sets = AUTO.to_vec();
        sets.extend_from_slice(opt);
        let auto = train(&cfg(tmp.path(), "auto", &sets), None).unwrap();
        let st = stages(&tmp.path().join("auto"));
        let lr0 = lr_set(st[0].lr);
        let mut first = vec!["train.schedule=constant", "train.steps=4", &lr0];
        first.extend_from_slice(opt);
        let plain0 = train(&cfg(tmp.path(), "plain", &first), None).unwrap();
        let run = tmp.path().join("plain");
        let cont = ferrotron::train::run_dir::resume_config(&run, &["train.steps=12".into(), lr_set(st[1].lr)], None).unwrap();
        let plain1 = train(&cont, Some(&run)).unwrap();
        let plain: Vec<f32> = plain0.losses.iter().chain(&plain1.losses).copied().collect();
        assert_eq!(auto.losses, plain, "{opt:?}: chosen lrs {} {}", st[0].lr, st[1].lr);
        assert_eq!(auto.final_val_loss, plain1.final_val_loss, "{opt:?}");
    }
}

/// Killed inside stage 1 and resumed from a checkpoint there, the run
/// continues at the same lr and ends like the uninterrupted one; the stages
/// already decided are not searched again.
#[test]
fn resume_inside_a_stage_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sets = AUTO.to_vec();
    sets.extend_from_slice(&["train.ckpt_every=6", "train.keep_ckpts=3"]);
    let full = train(&cfg(tmp.path(), "full", &sets), None).unwrap();
    let c = cfg(tmp.path(), "killed", &sets);
    train(&c, None).unwrap();
    let run = tmp.path().join("killed");
    std::fs::remove_dir_all(run.join("checkpoints/step_00000012")).unwrap();
    let resumed = train(&c, Some(&run)).unwrap();
    assert_eq!(resumed.losses, full.losses[6..].to_vec());
    assert_eq!(stages(&run), stages(&tmp.path().join("full")));
    let stage_lines = lines(&run).iter().filter(|l| l["kind"] == "autolrs_stage").count();
    assert_eq!(stage_lines, 2, "no stage searched twice");
}

#[test]
fn warmup_comes_first_and_a_short_tail_is_not_searched() {
    let tmp = tempfile::tempdir().unwrap();
    // Warmup 3, stage 0 = steps 3..7, stage 1 would be 8 steps but only 2
    // are left (≤ τ' = 4): it keeps stage 0's lr without trials.
    let s = train(&cfg(tmp.path(), "w", &["train.schedule=autolrs", "train.autolrs.tau=4", "train.autolrs.tau_prime=2", "train.autolrs.trials=2", "train.steps=9", "train.warmup_steps=3"]), None).unwrap();
    assert_eq!(s.steps, 9);
    let run = tmp.path().join("w");
    let all = lines(&run);
    let lrs: Vec<f64> = all.iter().filter(|l| l["kind"] == "train").map(|l| l["lr"].as_f64().unwrap()).collect();
    for (i, want) in [1e-3, 2e-3, 3e-3].iter().enumerate() {
        assert!((lrs[i] - want).abs() < 1e-9, "warmup step {i}: {}", lrs[i]);
    }
    let st = stages(&run);
    assert_eq!(st.len(), 2);
    assert_eq!((st[1].start, st[1].tau), (7, 2));
    assert_eq!(st[1].lr, st[0].lr);
    assert_eq!(st[1].forecast, None);
    assert_eq!(all.iter().filter(|l| l["kind"] == "autolrs_trial").count(), 2);
}

#[test]
fn stop_at_val_loss_ends_the_run_at_the_first_evaluation_below() {
    let tmp = tempfile::tempdir().unwrap();
    // The untrained byte-level loss is ~5.5; a target of 100 is met at the
    // first evaluation (step 2).
    let s = train(&cfg(tmp.path(), "stop", &["train.steps=10", "train.eval_every=2", "train.stop_at_val_loss=100"]), None).unwrap();
    assert_eq!(s.steps, 2);
    assert!(tmp.path().join("stop/checkpoints/step_00000002").is_dir());
    let s = train(&cfg(tmp.path(), "never", &["train.steps=4", "train.eval_every=2", "train.stop_at_val_loss=0.01"]), None).unwrap();
    assert_eq!(s.steps, 4);
}

#[test]
fn bad_autolrs_settings_are_refused_clearly() {
    let err = |sets: &[&str]| {
        let mut all = vec!["train.schedule=autolrs".to_string()];
        all.extend(sets.iter().map(|s| s.to_string()));
        config::load(None, &all).unwrap_err().to_string()
    };
    assert!(err(&["train.autolrs.tau_prime=200"]).contains("tau_prime < tau"));
    assert!(err(&["train.autolrs.trials=0"]).contains("trials"));
    assert!(err(&["train.autolrs.min_lr=1e-2", "train.autolrs.max_lr=1e-3"]).contains("min_lr < max_lr"));
    assert!(err(&["optimizer.lr=0"]).contains("optimizer.lr"));
    assert!(err(&["train.autolrs.max_tau=10"]).contains("max_tau"));
}

#[test]
fn autolrs_with_offload_or_onebit_adam_is_refused() {
    for (set, names) in [("offload.optimizer=cpu", "offload.optimizer"), ("optimizer.name=onebit_adam", "onebit_adam")] {
        let all: Vec<String> = ["train.schedule=autolrs", set].iter().map(|s| s.to_string()).collect();
        let e = config::load(None, &all).unwrap_err().to_string();
        assert!(e.contains("autolrs") && e.contains(names), "{e}");
    }
}

/// `ferrotron [launch --nproc-per-node N] train [--resume DIR]` with
/// `sets` as `--set`s; fails the test if it fails.
fn launched(world: usize, sets: &[String], resume: Option<&Path>) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferrotron"));
    if world > 1 {
        cmd.args(["launch", "--nproc-per-node", &world.to_string()]);
    }
    cmd.arg("train");
    if let Some(dir) = resume {
        cmd.arg("--resume").arg(dir);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{sets:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn train_losses(run: &Path) -> Vec<f64> {
    lines(run).iter().filter(|l| l["kind"] == "train").map(|l| l["loss"].as_f64().unwrap()).collect()
}

/// Two ranks at ZeRO stages 0, 1 and 3, and as one Ulysses group (dist.sp
/// = 2): every rank runs the same trials from its own shard's snapshot
/// (restores at stage 1 all-gather the weights), they agree on every
/// stage's lr, rank 0 alone logs, and the run equals plain two-rank
/// training at the chosen lrs bit for bit (the trials leave no trace on
/// any rank).
#[test]
fn two_ranks_search_alike_and_leave_no_trace() {
    for (stage, sp) in [(0, 1), (1, 1), (3, 1), (1, 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let common: Vec<String> = [
            "train.batch_size=2", "train.seq_len=32", "train.eval_every=0", "train.eval_batches=1", "train.samples=0", "train.warmup_steps=0",
            "run.progress=false", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=64",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("run.dir=\"{}\"", tmp.path().display()), format!("dist.zero_stage={stage}"), format!("dist.sp={sp}")])
        .collect();
        let with = |more: &[String]| common.iter().cloned().chain(more.iter().cloned()).collect::<Vec<_>>();
        let mut auto_sets: Vec<String> = AUTO.iter().map(|s| s.to_string()).collect();
        auto_sets.extend(["run.name=auto".into(), "optimizer.lr=3e-3".into(), "train.ckpt_every=0".into()]);
        launched(2, &with(&auto_sets), None);
        let run = tmp.path().join("auto");
        let st = stages(&run);
        assert_eq!(st.len(), 2, "stage {stage} sp {sp}");
        let all = lines(&run);
        assert_eq!(all.iter().filter(|l| l["kind"] == "autolrs_trial").count(), 6, "stage {stage} sp {sp}: rank 0 alone logs the trials");
        assert_eq!(all.iter().filter(|l| l["kind"] == "autolrs_stage").count(), 2, "stage {stage} sp {sp}");
        let auto = train_losses(&run);
        assert_eq!(auto.len(), 12);

        launched(2, &with(&["run.name=plain".into(), "train.schedule=constant".into(), "train.steps=4".into(), "train.ckpt_every=4".into(), lr_set(st[0].lr)]), None);
        let plain = tmp.path().join("plain");
        launched(2, &with(&["train.steps=12".into(), lr_set(st[1].lr)]), Some(&plain));
        assert_eq!(auto, train_losses(&plain), "ZeRO stage {stage}, sp {sp}: chosen lrs {} {}", st[0].lr, st[1].lr);
    }
}
