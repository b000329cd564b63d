//! The bad-step guard in offloaded runs (`offload.optimizer = cpu | nvme`)
//! on the CPU backend: a step with a non-finite loss (any `grad_clip`) or
//! non-finite gradients (`grad_clip > 0`) is skipped exactly as the plain
//! run skips it — same losses, same skipped count, same weights and state
//! afterwards, bit for bit — and a streak stops the run with the guard's
//! error. With `grad_clip = 0` units are stepped during backward, so
//! non-finite gradients stop the run with an error that says so, and the
//! last checkpoint stays as it was.
//!
//! The bad steps are injected (`debug.nan_loss_step`: the loss is taken as
//! NaN, the gradients stay finite, so a step applied anyway would change
//! the weights; `debug.nan_grads_step`: every gradient is NaN, the loss
//! finite).

#[path = "common/checkpoints.rs"]
mod checkpoints;
#[path = "common/offload_runs.rs"]
mod offload_runs;
use checkpoints::{assert_same_state, last_ckpt};
use ferrotron::config::Config;
use ferrotron::train::trainer::{train, RunSummary};
use offload_runs::small_cfg;
use std::path::Path;

fn cfg(dir: &Path, name: &str, extra: &[String]) -> Config {
    small_cfg(dir, name, 2, extra)
}

/// The offloaded settings tested: the cpu tier, the nvme tier, the nvme
/// tier with the weights streamed from its files, and every unit kept on
/// the device (`offload.gpu_gb`, stepped by the device optimizer).
fn tiers(scratch: &Path) -> Vec<Vec<String>> {
    let path = format!("offload.path=\"{}\"", scratch.display());
    vec![
        vec!["offload.optimizer=cpu".into()],
        vec!["offload.optimizer=nvme".into(), path.clone()],
        vec!["offload.optimizer=nvme".into(), "offload.params=nvme".into(), path],
        vec!["offload.optimizer=cpu".into(), "offload.gpu_gb=1000".into()],
    ]
}

fn with(base: &[&str], more: &[String]) -> Vec<String> {
    base.iter().map(|s| s.to_string()).chain(more.iter().cloned()).collect()
}

/// Each step's metrics line (train lines only).
fn steps(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|l| l.get("tokens_per_s").is_some()).collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fn err_text(r: anyhow::Result<RunSummary>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// `sets` give one bad step (step 3); the plain run and every offloaded
/// tier skip it alike and end with the same weights and state.
fn skipped_like_plain(sets: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let plain = train(&cfg(tmp.path(), "plain", &with(sets, &[])), None).unwrap();
    assert_eq!(plain.skipped_steps, 1, "{sets:?}: the plain run skips the injected step");
    let plain_lines = steps(&tmp.path().join("plain"));
    assert!(plain_lines[2].get("skipped").is_some(), "{sets:?}: step 3 is the skipped one: {plain_lines:?}");
    for (i, tier) in tiers(&tmp.path().join("scratch")).iter().enumerate() {
        let name = format!("off{i}");
        let what = format!("{sets:?} {tier:?}");
        let off = train(&cfg(tmp.path(), &name, &with(sets, tier)), None).unwrap();
        assert_eq!(off.skipped_steps, 1, "{what}");
        assert!(same_bits(&plain.losses, &off.losses), "{what}: losses {:?} vs {:?}", plain.losses, off.losses);
        assert_eq!(plain.final_val_loss.map(f32::to_bits), off.final_val_loss.map(f32::to_bits), "{what}: val loss");
        let (a, b) = (last_ckpt(&tmp.path().join("plain")), last_ckpt(&tmp.path().join(&name)));
        assert_same_state(&a, &b, &what);
        assert_eq!(a.manifest.guard, b.manifest.guard, "{what}: guard state");
        // The metrics lines agree: the same step skipped for the same
        // reason, the same norms (a skipped step's too).
        let lines = steps(&tmp.path().join(&name));
        for (p, o) in plain_lines.iter().zip(&lines) {
            assert_eq!(p.get("skipped"), o.get("skipped"), "{what}: step {}", p["step"]);
            assert_eq!(p["grad_norm"], o["grad_norm"], "{what}: step {}", p["step"]);
        }
    }
}

#[test]
fn a_non_finite_loss_is_skipped_like_the_plain_run_overlapped_or_clipped() {
    // The gradients are finite: only a guard that judges before any unit is
    // stepped leaves the weights as the plain run's.
    skipped_like_plain(&["debug.nan_loss_step=3", "train.grad_clip=0"]);
    skipped_like_plain(&["debug.nan_loss_step=3", "train.grad_clip=1.0", "train.grad_accum=2"]);
}

#[test]
fn non_finite_gradients_with_clipping_are_skipped_like_the_plain_run() {
    skipped_like_plain(&["debug.nan_grads_step=3", "train.grad_clip=1.0"]);
}

/// A learning rate that blows the weights up after the first step: every
/// later loss is NaN, and the offloaded runs stop after
/// `train.max_bad_steps` skipped steps with the plain run's error, saving
/// no checkpoint meanwhile.
#[test]
fn a_streak_stops_offloaded_runs_with_the_guards_error() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["optimizer.lr=1e30", "train.max_bad_steps=3", "train.ckpt_every=1", "train.grad_clip=0"];
    let plain = err_text(train(&cfg(tmp.path(), "plain", &with(&sets, &[])), None));
    assert!(plain.contains("3 steps in a row (steps 2..=4)"), "{plain}");
    let plain_rest = plain.split_once(" stopped at ").unwrap().1.replace(&tmp.path().join("plain").display().to_string(), "RUN");
    for (i, tier) in tiers(&tmp.path().join("scratch")).iter().enumerate() {
        let name = format!("off{i}");
        let e = err_text(train(&cfg(tmp.path(), &name, &with(&sets, tier)), None));
        let rest = e.split_once(" stopped at ").unwrap_or_else(|| panic!("{tier:?}: {e}")).1.replace(&tmp.path().join(&name).display().to_string(), "RUN");
        assert_eq!(rest, plain_rest, "{tier:?}");
        assert_eq!(steps(&tmp.path().join(&name)).iter().filter(|l| l.get("skipped").is_some()).count(), 3, "{tier:?}");
    }
}

/// `grad_clip = 0`: units are stepped as their gradients reach the host,
/// so a step with non-finite gradients cannot be skipped: the run stops
/// with an error naming the cause and the remedy, and its checkpoint (step
/// 4, before the bad step 5) is the plain run's, bit for bit.
#[test]
fn non_finite_gradients_without_clipping_stop_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["debug.nan_grads_step=5", "train.grad_clip=0"];
    // The plain run skips step 5 and goes on; its step-4 checkpoint stays.
    let plain = train(&cfg(tmp.path(), "plain", &with(&sets, &[])), None).unwrap();
    assert_eq!(plain.skipped_steps, 1);
    let step4 = |run: &str| ferrotron::ckpt::load(&tmp.path().join(run).join("checkpoints/step_00000004")).unwrap();
    for (i, tier) in tiers(&tmp.path().join("scratch")).iter().enumerate() {
        let name = format!("off{i}");
        let e = err_text(train(&cfg(tmp.path(), &name, &with(&sets, tier)), None));
        for needle in ["step 5", "gradients are not finite", "cannot be skipped", "train.grad_clip > 0"] {
            assert!(e.contains(needle), "{tier:?}: `{needle}` in {e}");
        }
        let ckpt = ferrotron::ckpt::latest(&tmp.path().join(&name)).unwrap().unwrap();
        assert!(ckpt.ends_with("step_00000004"), "{tier:?}: {}", ckpt.display());
        assert_same_state(&step4("plain"), &step4(&name), &format!("{tier:?}"));
    }
}
