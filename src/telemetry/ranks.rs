//! Per-rank step times, MegaScale style: every step each rank's step and
//! phase times are shared with all ranks (one host all-reduce of a vector
//! of 4 × world slots, each rank filling its own), so rank 0 logs every
//! rank's times (the report's heat map), min / mean / max and which rank
//! was slowest, and flags a straggler: a rank slowest by a margin for
//! several steps in a row.

use crate::backend::Backend;
use crate::dist::Comm;
use super::metrics::TrainMetrics;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// A rank is a straggler when it is the slowest, by more than this
/// fraction over the median, for `STRAGGLER_STEPS` steps in a row.
pub const STRAGGLER_MARGIN: f64 = 0.10;
pub const STRAGGLER_STEPS: u32 = 5;

/// One step's spread of step times over ranks (metrics.jsonl `ranks`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RankTimes {
    pub min_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    pub slowest: usize,
    /// Set on steps where a rank has been the straggler long enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub straggler: Option<usize>,
    /// Each rank's step time, in rank order (empty in older runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_step_ms: Vec<f64>,
    /// Each rank's forward, backward (with the gradient reduction) and
    /// optimizer time, where every rank measured them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_fwd_ms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_bwd_ms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_opt_ms: Vec<f64>,
}

/// A phase no rank measured is sent as this (times are never negative).
const UNMEASURED: f64 = -1.0;

#[derive(Default)]
pub struct StragglerWatch {
    candidate: Option<usize>,
    streak: u32,
}

impl StragglerWatch {
    /// Shares this rank's step and phase times (`mine`) with every rank and
    /// returns the spread with every rank's times (`None` for a world of
    /// one: nothing to compare).
    pub fn observe<B: Backend>(&mut self, comm: &mut dyn Comm<B>, mine: &TrainMetrics) -> Result<Option<RankTimes>> {
        let world = comm.world();
        if world == 1 {
            return Ok(None);
        }
        // Slots: [step | fwd | bwd | opt], each world long; a rank's own
        // slot plus zeros from the others sums to exactly its value.
        let mut all = vec![0.0; 4 * world];
        let r = comm.rank();
        let mine = [Some(mine.step_ms), mine.fwd_ms, mine.bwd_ms, mine.opt_ms];
        for (k, v) in mine.iter().enumerate() {
            all[k * world + r] = v.unwrap_or(UNMEASURED);
        }
        comm.all_reduce_host(&mut all)?;
        let mut times = self.spread(&all[..world]);
        let phase = |k: usize| -> Vec<f64> {
            let v = &all[k * world..(k + 1) * world];
            if v.iter().all(|&x| x >= 0.0) { v.to_vec() } else { vec![] }
        };
        (times.rank_fwd_ms, times.rank_bwd_ms, times.rank_opt_ms) = (phase(1), phase(2), phase(3));
        Ok(Some(times))
    }

    /// The spread of one step's times, updating the straggler streak.
    pub fn spread(&mut self, times: &[f64]) -> RankTimes {
        let (slowest, &max) = times.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("at least one rank");
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let behind = max > median * (1.0 + STRAGGLER_MARGIN);
        if behind && self.candidate == Some(slowest) {
            self.streak += 1;
        } else {
            self.candidate = behind.then_some(slowest);
            self.streak = behind as u32;
        }
        let straggler = (self.streak >= STRAGGLER_STEPS).then_some(slowest);
        RankTimes { min_ms: min, mean_ms: mean, max_ms: max, slowest, straggler, rank_step_ms: times.to_vec(), ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_slow_for_five_steps_is_flagged_and_a_blip_is_not() {
        let mut w = StragglerWatch::default();
        let even = [10.0, 10.2, 9.9, 10.1];
        let slow2 = [10.0, 10.2, 13.0, 10.1];
        assert_eq!(w.spread(&slow2).straggler, None);
        assert_eq!(w.spread(&even).straggler, None);
        for i in 0..STRAGGLER_STEPS {
            let t = w.spread(&slow2);
            assert_eq!(t.slowest, 2);
            assert_eq!(t.straggler, (i + 1 == STRAGGLER_STEPS).then_some(2));
        }
        let t = w.spread(&slow2);
        assert_eq!((t.min_ms, t.max_ms), (10.0, 13.0));
        assert!((t.mean_ms - 10.825).abs() < 1e-12);
    }
}
