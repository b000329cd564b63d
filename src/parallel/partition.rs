//! What each rank owns under ZeRO: for every unit of the model (the
//! embeddings, each block, the head — see `model::store::Unit`), one
//! contiguous segment of the unit's range of the flat layout per rank.
//!
//! Per unit rather than over the whole buffer, so a ZeRO-3 rank gathers
//! exactly one unit before using it and reduce-scatters one unit's
//! gradients as soon as the backward leaves it. Two ways to cut a unit:
//! - element ranges (AdamW, 8-bit AdamW, Lion: the update of an element
//!   needs only that element), cut near `len·r/N` and snapped so a cut
//!   inside a tensor falls on a multiple of 256 elements from the tensor's
//!   start: 8-bit blocks (256 values, never spanning two tensors) stay whole
//!   and are the same blocks as in a single-process run;
//! - whole tensors (Muon, COSMOS, APOLLO, FRUGAL need a whole matrix), cut
//!   at the tensor boundary nearest to `len·r/N`.
//!
//! A rank's shard is its segments of every unit, in unit order, packed into
//! one flat buffer; [`Partition::shard_layout`] describes it with the one
//! tensor descriptor (`ParamInfo`, `piece` = the held elements).

use crate::backend::QUANT_BLOCK;
use crate::config::ModelConfig;
use crate::model::layout::{ParamInfo, ParamLayout};
use crate::model::store::unit_ranges;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    pub world: usize,
    /// Each unit's range of the flat layout, in `Unit::all` order.
    pub units: Vec<Range<usize>>,
    /// `counts[u][r]`: length of rank `r`'s segment of unit `u`.
    pub counts: Vec<Vec<usize>>,
    /// Whole tensors only (matrix optimizers).
    pub whole_tensors: bool,
}

impl Partition {
    pub fn new(cfg: &ModelConfig, layout: &ParamLayout, world: usize, whole_tensors: bool) -> Self {
        let units = unit_ranges(cfg, layout);
        let counts = units
            .iter()
            .map(|u| {
                let tensors: Vec<&ParamInfo> = layout.params.iter().filter(|p| p.offset >= u.start && p.offset < u.end).collect();
                let mut cuts = vec![u.start];
                for r in 1..world {
                    let target = u.start + (u.len() as u128 * r as u128 / world as u128) as usize;
                    let cut = if whole_tensors { nearest_tensor_boundary(&tensors, u, target) } else { snapped(&tensors, target) };
                    cuts.push(cut.max(*cuts.last().unwrap()));
                }
                cuts.push(u.end);
                cuts.windows(2).map(|w| w[1] - w[0]).collect()
            })
            .collect();
        Partition { world, units, counts, whole_tensors }
    }

    /// Rank `r`'s segment of unit `u` (a range of the flat layout).
    pub fn segment(&self, u: usize, r: usize) -> Range<usize> {
        let start = self.units[u].start + self.counts[u][..r].iter().sum::<usize>();
        start..start + self.counts[u][r]
    }

    /// Elements rank `r` owns.
    pub fn shard_len(&self, r: usize) -> usize {
        self.counts.iter().map(|c| c[r]).sum()
    }

    /// Where unit `u`'s segment of rank `r` starts inside `r`'s shard.
    pub fn shard_offset(&self, u: usize, r: usize) -> usize {
        self.counts[..u].iter().map(|c| c[r]).sum()
    }

    /// The tensors (or pieces of them) rank `r` owns, at their offsets in
    /// its shard: what the rank's optimizer is built on.
    pub fn shard_layout(&self, layout: &ParamLayout, r: usize) -> ParamLayout {
        let mut params = vec![];
        for u in 0..self.units.len() {
            let seg = self.segment(u, r);
            let base = self.shard_offset(u, r);
            for p in &layout.params {
                let (start, end) = (p.offset.max(seg.start), (p.offset + p.full_numel()).min(seg.end));
                if start < end {
                    let piece = start - p.offset..end - p.offset;
                    params.push(ParamInfo { offset: base + start - seg.start, piece, ..p.clone() });
                }
            }
        }
        ParamLayout { params, total: self.shard_len(r) }
    }
}

/// `target` moved to the nearest multiple of [`QUANT_BLOCK`] from the start
/// of the tensor it falls in (or that tensor's end).
fn snapped(tensors: &[&ParamInfo], target: usize) -> usize {
    match tensors.iter().find(|p| p.offset <= target && target < p.offset + p.full_numel()) {
        None => target,
        Some(p) => {
            let inside = target - p.offset;
            let rounded = (inside + QUANT_BLOCK / 2) / QUANT_BLOCK * QUANT_BLOCK;
            p.offset + rounded.min(p.full_numel())
        }
    }
}

/// The start or end of a tensor nearest to `target`.
fn nearest_tensor_boundary(tensors: &[&ParamInfo], unit: &Range<usize>, target: usize) -> usize {
    let mut bounds: Vec<usize> = tensors.iter().map(|p| p.offset).collect();
    bounds.push(unit.end);
    *bounds.iter().min_by_key(|&&b| b.abs_diff(target)).unwrap_or(&unit.start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tiny() -> (ModelConfig, ParamLayout) {
        let cfg = Config::default().model;
        let layout = ParamLayout::new(&cfg);
        (cfg, layout)
    }

    #[test]
    fn segments_tile_every_unit_for_every_world() {
        let (cfg, layout) = tiny();
        for whole in [false, true] {
            for world in 1..=5 {
                let p = Partition::new(&cfg, &layout, world, whole);
                let total: usize = (0..world).map(|r| p.shard_len(r)).sum();
                assert_eq!(total, layout.total);
                for (u, unit) in p.units.iter().enumerate() {
                    assert_eq!(p.segment(u, 0).start, unit.start);
                    assert_eq!(p.segment(u, world - 1).end, unit.end);
                    for r in 1..world {
                        assert_eq!(p.segment(u, r - 1).end, p.segment(u, r).start);
                    }
                }
            }
        }
    }

    #[test]
    fn element_cuts_keep_8bit_blocks_and_whole_cuts_keep_tensors() {
        let (cfg, layout) = tiny();
        for world in 2..=4 {
            let p = Partition::new(&cfg, &layout, world, false);
            for r in 0..world {
                for t in p.shard_layout(&layout, r).params {
                    assert_eq!(t.piece.start % QUANT_BLOCK, 0, "{} starts inside a block", t.name);
                    assert!(t.piece.end % QUANT_BLOCK == 0 || t.piece.end == t.full_numel());
                }
            }
            let p = Partition::new(&cfg, &layout, world, true);
            for r in 0..world {
                assert!(p.shard_layout(&layout, r).params.iter().all(|t| t.is_whole()));
            }
        }
    }

    #[test]
    fn shard_layout_pieces_cover_each_tensor_once() {
        let (cfg, layout) = tiny();
        let p = Partition::new(&cfg, &layout, 3, false);
        for t in &layout.params {
            let mut covered: Vec<Range<usize>> = (0..3).flat_map(|r| p.shard_layout(&layout, r).params).filter(|x| x.index == t.index).map(|x| x.piece).collect();
            covered.sort_by_key(|r| r.start);
            assert_eq!(covered.first().unwrap().start, 0);
            assert_eq!(covered.last().unwrap().end, t.full_numel());
            assert!(covered.windows(2).all(|w| w[0].end == w[1].start));
        }
    }
}
