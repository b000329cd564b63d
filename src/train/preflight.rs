//! Checks before a training allocates anything: does it fit in host memory?
//!
//! On `device = cpu` everything (weights, gradients, optimizer state,
//! activations) lives in host memory. A run that needs more than the kernel
//! can give would otherwise die mid-allocation (an abort, exit 134, or the
//! OOM killer). `ferrotron info`'s estimate is compared with `MemAvailable`
//! first; the estimate leaves out transient buffers, so it is a lower bound
//! and the check refuses only runs that cannot fit. On `device = cuda` the
//! host holds little; the GPU's own out-of-memory error (backend/cuda/
//! memory.rs) already names the knobs.
//! `FERROTRON_SKIP_MEMORY_CHECK=1` turns the check off.

use crate::config::Config;
use crate::telemetry::{memory, report::human_bytes};
use crate::util::meminfo;
use anyhow::{bail, Result};

pub const SKIP_ENV: &str = "FERROTRON_SKIP_MEMORY_CHECK";

/// An error naming the need, the availability and what to change when the
/// run's memory estimate exceeds the host's available memory.
pub fn check_host_memory(cfg: &Config) -> Result<()> {
    if cfg.device != "cpu" || std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let Some(available) = meminfo::mem_available() else { return Ok(()) };
    check_against(cfg, available)
}

/// [`check_host_memory`] against a given number of available bytes.
pub fn check_against(cfg: &Config, available: u64) -> Result<()> {
    let est = memory::estimate(cfg);
    let need = est.total();
    if need <= available {
        return Ok(());
    }
    let t = &cfg.train;
    bail!(
        "this run needs at least {} of memory on the cpu (weights {}, gradients {}, optimizer state {}, activations {} for a micro-batch of {} x {} tokens; `ferrotron info` shows the estimate), \
         but only {} is available (MemAvailable in /proc/meminfo). Lower train.batch_size (raise train.grad_accum to keep the tokens per step) or train.seq_len, \
         turn on train.checkpoint_layers, pick a lighter optimizer (optimizer.name=adamw8bit) or a smaller model; \
         {SKIP_ENV}=1 skips this check",
        human_bytes(need),
        human_bytes(est.weights),
        human_bytes(est.grads),
        est.optimizer_state.map(human_bytes).unwrap_or_else(|| "unknown".into()),
        human_bytes(est.activations),
        t.batch_size,
        t.seq_len,
        human_bytes(available)
    )
}
