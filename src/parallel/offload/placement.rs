//! Which tier holds each unit (ZeRO-Infinity style mixing): with
//! `offload.optimizer = nvme` and `offload.host_gb > 0`, some units keep
//! their fp32 master weights and optimizer state resident in host memory
//! (as the cpu tier keeps every unit) and the rest live in their files.
//!
//! The rule, one function shared by the run and by `info`'s budget (so
//! the two never disagree): units are taken largest first (ties in layout
//! order: embeddings, blocks bottom up, head) while their bytes fit in
//! what is left of `host_gb`; a unit that does not fit is skipped and the
//! next, smaller ones are still tried. Largest first because the NVMe
//! tier's host window (units read ahead, stepping, being written) is
//! sized by its largest unit: keeping the big embedding and head matrices
//! off the disk shrinks that window, and leaves the disk only blocks of
//! one size.
//!
//! A unit's bytes here are its master weights, its optimizer state and,
//! where the passes stream its weights from host memory (`offload.params
//! = nvme` on CUDA), its kept bf16 image.

use super::host_optimizer::unit_layout;
use crate::config::Config;
use crate::model::layout::ParamLayout;
use crate::model::store::unit_ranges;
use anyhow::Result;

/// One unit's host bytes if resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitBytes {
    pub params: u64,
    /// fp32 master weights.
    pub master: u64,
    /// Optimizer state (exact, from the optimizer's plan).
    pub state: u64,
    /// The bf16 image kept in host memory when resident (0 if none).
    pub image: u64,
}

impl UnitBytes {
    /// What the unit costs host memory while resident.
    pub fn resident(&self) -> u64 {
        self.master + self.state + self.image
    }
    /// Master and state: what its file holds besides an image section.
    pub fn master_state(&self) -> u64 {
        self.master + self.state
    }
}

/// Every unit's bytes, in unit order (embeddings, blocks, head).
pub fn unit_bytes(cfg: &Config, layout: &ParamLayout) -> Result<Vec<UnitBytes>> {
    let image = cfg.device == "cuda" && matches!(cfg.offload.params.as_str(), "cpu" | "nvme");
    unit_ranges(&cfg.model, layout)
        .iter()
        .map(|r| {
            let state: u64 = crate::optim::plan(&cfg.optimizer, &unit_layout(layout, r))?.iter().map(|g| g.state_bytes).sum();
            let n = r.len() as u64;
            Ok(UnitBytes { params: n, master: 4 * n, state, image: if image { 2 * n } else { 0 } })
        })
        .collect()
}

/// The host budget for resident units of `cfg`, in bytes: all of them for
/// the cpu tier, `offload.host_gb` (10^9 bytes) for the nvme tier.
pub fn host_budget(cfg: &Config) -> u64 {
    match cfg.offload.optimizer.as_str() {
        "cpu" => u64::MAX,
        "nvme" => (cfg.offload.host_gb.max(0.0) * 1e9) as u64,
        _ => 0,
    }
}

/// Whether each unit lives in its file (`true`) or in host memory.
pub fn on_disk(units: &[UnitBytes], budget: u64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..units.len()).collect();
    // Stable: equal sizes keep layout order.
    order.sort_by_key(|&u| std::cmp::Reverse(units[u].resident()));
    let mut left = budget;
    let mut disk = vec![true; units.len()];
    for u in order {
        let need = units[u].resident();
        if need <= left {
            left -= need;
            disk[u] = false;
        }
    }
    disk
}

/// [`on_disk`] for `cfg`'s model and settings.
pub fn plan(cfg: &Config, layout: &ParamLayout) -> Result<(Vec<UnitBytes>, Vec<bool>)> {
    let units = unit_bytes(cfg, layout)?;
    let disk = on_disk(&units, host_budget(cfg));
    Ok((units, disk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(n: u64) -> UnitBytes {
        UnitBytes { params: n, master: 4 * n, state: 2 * n, image: 0 }
    }

    #[test]
    fn largest_first_then_layout_order() {
        // Embeddings 10, three blocks of 4, head 10.
        let units = [unit(10), unit(4), unit(4), unit(4), unit(10)];
        assert_eq!(on_disk(&units, 0), vec![true; 5]);
        assert_eq!(on_disk(&units, u64::MAX), vec![false; 5]);
        // 60 + 60 + 24: embeddings, head, then the lowest block.
        assert_eq!(on_disk(&units, 150), vec![false, false, true, true, false]);
        // 84: one big unit (the first in layout order), then one block.
        assert_eq!(on_disk(&units, 84), vec![false, false, true, true, true]);
        // A big unit that does not fit is skipped; smaller ones still go in.
        assert_eq!(on_disk(&units, 59), vec![true, false, false, true, true]);
    }
}
