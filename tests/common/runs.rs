//! What a finished run folder holds, read back for comparisons: the loss of
//! every train step (metrics.jsonl) and the newest checkpoint's weights.
//! Shared by the multi-process tests (`#[path = "common/runs.rs"] mod runs;`).

use ferrotron::ckpt;
use std::path::Path;

/// Train losses in step order.
pub fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// The newest checkpoint's model tensors: (name, values) in file order.
pub fn weights(run_dir: &Path) -> Vec<(String, Vec<f32>)> {
    let dir = ckpt::latest(run_dir).unwrap().expect("a checkpoint");
    ckpt::load(&dir).unwrap().model.into_iter().map(|t| (t.name, t.data)).collect()
}
