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
//! With `offload.gpu_gb > 0` the same rule runs first with that budget:
//! the units it takes keep master weights and state on the device (the
//! device optimizer steps them, [`super::gpu_tier`]); the rest are placed
//! as above among host memory and files (the cpu tier: all in host
//! memory). Among equal sizes the device takes the LAST units in layout
//! order (the top blocks): a run builds its host and file units from the
//! model's initial weights last unit first, releasing the weights behind
//! each, so device units at the end free their part at once, where units
//! at the front would keep theirs (4 bytes per parameter, tens of GB at
//! the sizes this tier is for) in host memory beside the resident units
//! until the build ends. GPU units never stream (`offload.params = none`),
//! so their bytes are master and state only.
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

/// Where a unit's master weights and optimizer state live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Gpu,
    Host,
    Disk,
}

/// The units among `free` (not yet placed) that `budget` bytes take,
/// largest first (equal sizes in layout order, or the last first with
/// `last_first`), skipping any that does not fit what is left.
fn take_largest(units: &[UnitBytes], free: &[bool], budget: u64, last_first: bool) -> Vec<bool> {
    let mut order: Vec<usize> = (0..units.len()).filter(|&u| free[u]).collect();
    if last_first {
        order.reverse();
    }
    // Stable: equal sizes keep layout order.
    order.sort_by_key(|&u| std::cmp::Reverse(units[u].resident()));
    let mut left = budget;
    let mut taken = vec![false; units.len()];
    for u in order {
        let need = units[u].resident();
        if need <= left {
            left -= need;
            taken[u] = true;
        }
    }
    taken
}

/// Whether each unit lives in its file (`true`) or in host memory.
pub fn on_disk(units: &[UnitBytes], budget: u64) -> Vec<bool> {
    take_largest(units, &vec![true; units.len()], budget, false).into_iter().map(|t| !t).collect()
}

/// Each unit's place: `gpu` bytes taken first, then `host` bytes from the
/// rest, the others in files.
pub fn places(units: &[UnitBytes], gpu: u64, host: u64) -> Vec<Place> {
    let on_gpu = take_largest(units, &vec![true; units.len()], gpu, true);
    let rest: Vec<bool> = on_gpu.iter().map(|g| !g).collect();
    let on_host = take_largest(units, &rest, host, false);
    (0..units.len()).map(|u| if on_gpu[u] { Place::Gpu } else if on_host[u] { Place::Host } else { Place::Disk }).collect()
}

/// The device budget for units kept on the device: `offload.gpu_gb`.
pub fn gpu_budget(cfg: &Config) -> u64 {
    if cfg.offload.enabled() { (cfg.offload.gpu_gb.max(0.0) * 1e9) as u64 } else { 0 }
}

/// [`places`] for `cfg`'s model and settings.
pub fn plan_places(cfg: &Config, layout: &ParamLayout) -> Result<(Vec<UnitBytes>, Vec<Place>)> {
    let units = unit_bytes(cfg, layout)?;
    let places = places(&units, gpu_budget(cfg), host_budget(cfg));
    Ok((units, places))
}

/// Whether each unit lives in its file, for `cfg`'s model and settings
/// (a unit on the device is not in a file).
pub fn plan(cfg: &Config, layout: &ParamLayout) -> Result<(Vec<UnitBytes>, Vec<bool>)> {
    let (units, places) = plan_places(cfg, layout)?;
    Ok((units, places.iter().map(|p| *p == Place::Disk).collect()))
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

    #[test]
    fn gpu_budget_first_then_host_then_files() {
        use Place::*;
        let units = [unit(10), unit(4), unit(4), unit(4), unit(10)];
        // GPU 60: the head (equal sizes: the last first); host 84: the
        // embeddings and one block (the first).
        assert_eq!(places(&units, 60, 84), vec![Host, Host, Disk, Disk, Gpu]);
        // GPU 48: the two top blocks (the big units do not fit); host: the rest.
        assert_eq!(places(&units, 48, u64::MAX), vec![Host, Host, Gpu, Gpu, Host]);
        // No GPU budget: as without it.
        let plain: Vec<Place> = on_disk(&units, 150).iter().map(|&d| if d { Disk } else { Host }).collect();
        assert_eq!(places(&units, 0, 150), plain);
        assert_eq!(places(&units, u64::MAX, 0), vec![Gpu; 5]);
    }
}
