//! The small runs the offload tests train (offload_nvme, offload_mixed,
//! offload_gpu_tier): one config maker, so their runs stay comparable.
#![allow(dead_code)]

use ferrotron::config::{self, Config};
use std::path::Path;

/// A tiny GPT-2-style model (d_model 64, `n_layers` blocks) trained 8 steps
/// of 2 × 32 tokens, validated and checkpointed every 4, in `dir`/`name`;
/// `extra` settings come last (they win).
pub fn small_cfg(dir: &Path, name: &str, n_layers: usize, extra: &[String]) -> Config {
    let mut sets: Vec<String> = [
        "train.steps=8", "train.batch_size=2", "train.seq_len=32", "train.eval_every=4", "train.eval_batches=2",
        "train.ckpt_every=4", "train.keep_ckpts=5", "train.samples=0", "train.warmup_steps=2", "run.progress=false",
        "model.d_model=64", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=128", "optimizer.lr=3e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("model.n_layers={n_layers}"));
    sets.push(format!("run.dir=\"{}\"", dir.display()));
    sets.push(format!("run.name={name}"));
    sets.extend(extra.iter().cloned());
    config::load(None, &sets).unwrap()
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// One number per training step from a run's `metrics.jsonl` (the
/// `train` lines' field `key`, e.g. `offload_read_mb`).
pub fn train_metric(run_dir: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v[key].as_f64().unwrap_or_else(|| panic!("{}: no number {key} in a train line", run_dir.display())))
        .collect()
}
