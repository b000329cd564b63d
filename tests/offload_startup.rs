//! An offloaded run's start-up makes each unit's initial weights once:
//! the draws are most of its time on a big model, so the device weights,
//! the device tier's master and the host and file units' masters all come
//! from one draw per unit. Counted with `init::values_made` around whole
//! runs, for every tier mix; a padded model is made whole once.
//!
//! One test function: the counter is global to the process, and tests in
//! one file run on parallel threads.

#[path = "common/offload_runs.rs"]
mod offload_runs;
use ferrotron::config::Config;
use ferrotron::model::init::values_made;
use ferrotron::model::layout::ParamLayout;
use ferrotron::parallel::offload::placement;
use ferrotron::train::trainer::train;
use offload_runs::{small_cfg, strings};

/// A third of `c`'s units' resident bytes, in GB (rounded up to whole bytes).
fn third_gb(c: &Config) -> f64 {
    let units = placement::unit_bytes(c, &ParamLayout::new(&c.model)).unwrap();
    let third: u64 = units.iter().map(|u| u.resident()).sum::<u64>() / 3;
    (third as f64 + 0.5) / 1e9
}

/// Initial weight values one run of `c` makes.
fn made_by_run(c: &Config) -> u64 {
    let before = values_made();
    train(c, None).unwrap();
    values_made() - before
}

#[test]
fn every_unit_is_drawn_once() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    let base = strings(&["train.steps=1", "train.eval_every=0", "train.ckpt_every=0"]);
    let cfg = |name: &str, extra: &[String]| -> Config {
        let sets: Vec<String> = base.iter().cloned().chain(extra.iter().cloned()).collect();
        small_cfg(tmp.path(), name, 4, &sets)
    };
    let probe = cfg("probe", &[]);
    let total = ParamLayout::new(&probe.model).total as u64;
    let third = third_gb(&probe);
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("plain", vec![]),
        ("cpu", strings(&["offload.optimizer=cpu"])),
        ("nvme", vec!["offload.optimizer=nvme".into(), scratch.clone()]),
        ("nvme_host", vec!["offload.optimizer=nvme".into(), scratch.clone(), format!("offload.host_gb={third}")]),
        ("cpu_gpu", vec!["offload.optimizer=cpu".into(), format!("offload.gpu_gb={third}")]),
        ("nvme_host_gpu", vec!["offload.optimizer=nvme".into(), scratch.clone(), format!("offload.host_gb={third}"), format!("offload.gpu_gb={third}")]),
        ("all_gpu", strings(&["offload.optimizer=cpu", "offload.gpu_gb=1000"])),
        ("params_cpu", strings(&["offload.optimizer=cpu", "offload.params=cpu"])),
    ];
    for (name, extra) in &cases {
        assert_eq!(made_by_run(&cfg(name, extra)), total, "{name} {extra:?}: every value made once");
    }
    // A padded model is made whole (unpadded, then padded), also once.
    let padded = cfg("padded", &strings(&["offload.optimizer=nvme", &scratch, "model.vocab_multiple=1000"]));
    let tight = ParamLayout::new(&padded.model.unpadded()).total as u64;
    assert_ne!(tight, ParamLayout::new(&padded.model).total as u64, "the model is padded");
    assert_eq!(made_by_run(&padded), tight, "padded: every value made once");
}
