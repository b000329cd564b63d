//! Where an offloaded step's host time goes, per step: the gradient copies
//! to the host (`d2h`), the host optimizer (`opt`, summed over units, on
//! the worker), the weight copies back (`h2d`), and the time the training
//! thread sat waiting for unit steps (`wait`: the part of `opt` that
//! backward did not hide — at the end of the step, or in backward when
//! every pooled gradient buffer was taken). Written to metrics.jsonl as
//! `offload_d2h_ms`, `offload_opt_ms`, `offload_h2d_ms`, `offload_wait_ms`.
//! With `offload.params = nvme` also the weights the passes read from disk
//! (`offload_read_mb`) and how long the training thread waited for those
//! reads (`offload_read_wait_ms`: the part the read-ahead did not hide).
//! With `offload.optimizer = nvme`: the time the unit files' reads and
//! writes took (`offload_file_read_ms`, `offload_file_write_ms`, on the
//! reader and writer threads, summed), the megabytes they moved
//! (`offload_file_mb`, read plus written, the passes' reads included), and
//! how long the optimizer waited for the writes behind it
//! (`offload_write_wait_ms`: for a free write buffer, and at the step's end
//! for the last writes).

use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OffloadTimes {
    pub offload_d2h_ms: f64,
    pub offload_opt_ms: f64,
    pub offload_h2d_ms: f64,
    pub offload_wait_ms: f64,
    #[serde(default)]
    pub offload_read_mb: f64,
    #[serde(default)]
    pub offload_read_wait_ms: f64,
    #[serde(default)]
    pub offload_file_read_ms: f64,
    #[serde(default)]
    pub offload_file_write_ms: f64,
    #[serde(default)]
    pub offload_file_mb: f64,
    #[serde(default)]
    pub offload_write_wait_ms: f64,
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
