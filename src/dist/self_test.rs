//! The communication self-test at the start of a run of several ranks
//! (`dist.self_test`): the exact-result checks of every collective and a
//! few timed all-reduces, both from `ferrotron bench comm` (dist/bench.rs),
//! reported as bus bandwidth (algbw · 2(w−1)/w, nccl-tests' figure) against
//! an expected figure, with a warning below half of it. A slow link or a
//! wrong result shows before hours of training, not after.
//!
//! Sizes: 64 MiB on NCCL (large enough to be bandwidth-bound on NVLink,
//! ~0.2 ms per call at 320 GB/s), 1 MiB on TCP (the CPU path's star
//! through rank 0 is slow; tests start many small runs).
//!
//! Expected bus bandwidth (`dist.expected_busbw_gbs`, 0 = by backend):
//! NCCL on H200s: 320 GB/s, the all-reduce bus bandwidth measured over 2
//! H200s on the GPU machine (shared/DESIGN.md, "The GPU machine (facts)");
//! 64 MiB reaches somewhat less than the large-message figure, hence the
//! warning only below half. Other GPUs and TCP have no default (the figure
//! depends on the links and the host): nothing is compared unless set.

use super::bench::{check_collectives, time_all_reduce, AllReduceTiming};
use super::Comm;
use crate::backend::Backend;
use crate::config::DistConfig;
use anyhow::Result;

const NCCL_BYTES: usize = 64 << 20;
const TCP_BYTES: usize = 1 << 20;
const WARMUP: usize = 1;
const ITERS: usize = 4;
/// NCCL all-reduce bus bandwidth measured over 2 H200s (DESIGN.md).
pub const H200_NCCL_BUSBW_GBS: f64 = 320.0;

/// What rank 0 reports.
#[derive(Clone, Debug)]
pub struct SelfTestReport {
    /// Start step of this process (0, or the step a resume continues from).
    pub step: u64,
    pub comm: String,
    pub world: usize,
    pub timing: AllReduceTiming,
    /// What the figure is compared with, and where that comes from.
    pub expected: Option<(f64, &'static str)>,
    pub checked: Vec<String>,
}

impl SelfTestReport {
    pub fn below_half(&self) -> bool {
        self.expected.is_some_and(|(gbs, _)| self.timing.busbw_gbps < 0.5 * gbs)
    }

    /// One line for the console (two with the warning).
    pub fn summary(&self) -> String {
        let t = &self.timing;
        let mut s = format!(
            "comm self-test ({}, {} ranks): collectives correct; all-reduce of {:.0} MiB {:.2} ms, bus bandwidth {:.2} GB/s",
            self.comm,
            self.world,
            t.bytes as f64 / (1 << 20) as f64,
            t.median_ms,
            t.busbw_gbps
        );
        match self.expected {
            Some((gbs, source)) => {
                s += &format!(" ({:.0}% of the expected {gbs:.0} GB/s, {source})", 100.0 * t.busbw_gbps / gbs);
                if self.below_half() {
                    s += "\nwarning: the communication bus bandwidth is below half the expected figure: check the links (NVLink/PCIe topology, `nvidia-smi topo -m`) or set dist.expected_busbw_gbs";
                }
            }
            None => s += " (no expected figure for this backend; set dist.expected_busbw_gbs to compare)",
        }
        s
    }

    /// The metrics.jsonl line (`kind: "comm_self_test"`).
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let t = &self.timing;
        Ok(serde_json::json!({
            "kind": "comm_self_test",
            "step": self.step,
            "comm": self.comm,
            "world": self.world,
            "bytes": t.bytes,
            "median_ms": t.median_ms,
            "rank_median_ms": t.rank_median_ms,
            "algbw_gbs": t.algbw_gbps,
            "busbw_gbs": t.busbw_gbps,
            "expected_busbw_gbs": self.expected.map(|e| e.0),
            "below_half": self.below_half(),
            "checked": self.checked,
        }))
    }
}

/// The expected bus bandwidth: the config's, or the backend's default.
pub fn expected_busbw(cfg: &DistConfig, comm: &str, device: &str) -> Option<(f64, &'static str)> {
    if cfg.expected_busbw_gbs > 0.0 {
        return Some((cfg.expected_busbw_gbs, "dist.expected_busbw_gbs"));
    }
    (comm == "nccl" && device.contains("H200")).then_some((H200_NCCL_BUSBW_GBS, "measured over 2 H200s"))
}

/// Runs the self-test on every rank (a collective); the report on rank 0.
pub fn run<B: Backend>(b: &mut B, c: &mut dyn Comm<B>, cfg: &DistConfig, step: u64) -> Result<Option<SelfTestReport>> {
    let checked = check_collectives(b, c)?;
    let bytes = if c.kind() == "nccl" { NCCL_BYTES } else { TCP_BYTES };
    let timing = time_all_reduce(b, c, bytes / 4, WARMUP, ITERS)?;
    if c.rank() != 0 {
        return Ok(None);
    }
    let expected = expected_busbw(cfg, c.kind(), &b.device_name());
    Ok(Some(SelfTestReport { step, comm: c.kind().into(), world: c.world(), timing, expected, checked }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(busbw: f64, expected: Option<f64>) -> SelfTestReport {
        let timing = AllReduceTiming { bytes: 1 << 20, median_ms: 1.0, rank_median_ms: vec![1.0, 0.9], algbw_gbps: busbw, busbw_gbps: busbw, bytes_sent_per_iter: 0 };
        SelfTestReport { step: 0, comm: "nccl".into(), world: 2, timing, expected: expected.map(|e| (e, "test")), checked: vec![] }
    }

    #[test]
    fn warns_only_below_half_of_the_expected_figure() {
        assert!(!report(200.0, Some(320.0)).summary().contains("warning"));
        assert!(report(150.0, Some(320.0)).summary().contains("warning: the communication bus bandwidth is below half"));
        assert!(!report(0.1, None).summary().contains("warning"));
        assert_eq!(report(150.0, Some(320.0)).to_json().unwrap()["below_half"], true);
    }

    #[test]
    fn the_default_is_by_backend_and_the_config_wins() {
        let mut cfg = DistConfig::default();
        assert_eq!(expected_busbw(&cfg, "nccl", "NVIDIA H200").map(|e| e.0), Some(H200_NCCL_BUSBW_GBS));
        assert_eq!(expected_busbw(&cfg, "tcp", "cpu"), None);
        assert_eq!(expected_busbw(&cfg, "nccl", "NVIDIA A100"), None);
        cfg.expected_busbw_gbs = 5.0;
        assert_eq!(expected_busbw(&cfg, "tcp", "cpu").map(|e| e.0), Some(5.0));
    }
}
