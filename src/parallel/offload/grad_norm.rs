//! The gradient norm of an overlapped offloaded step (`train.grad_clip =
//! 0`), from each unit's gradients while they pass through the host —
//! bit for bit what the CPU backend's `sum_squares` gives on one buffer
//! holding the whole model's gradients (the plain run's norm).
//!
//! That sum cuts the buffer into `CHUNK`-element chunks counted from its
//! start, sums each chunk's squares in order in f64, then the chunk sums in
//! order. A unit's chunks that lie wholly inside it are summed as the unit
//! passes; the (at most two) chunks it shares with its neighbours cannot be,
//! since a sum in order does not split, so the unit keeps its pieces of them
//! (at most 2 · CHUNK values) until every piece is there.
//!
//! With clipping the norm is taken on the device instead, over the whole
//! gradient buffer, before any unit leaves it (see the module above).

use crate::backend::cpu::elementwise::CHUNK;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// What a unit contributes to the norm.
#[derive(Clone, Debug, Default)]
pub struct UnitSquares {
    /// (chunk index, Σ x²) of the chunks wholly inside the unit.
    whole: Vec<(usize, f64)>,
    /// (chunk index, first element's offset, values) of the chunks the
    /// unit shares with a neighbour.
    pieces: Vec<(usize, usize, Vec<f32>)>,
    /// Σ x² summed elsewhere as one number (a unit kept on a device that
    /// sums its own squares, see [`lump`]): added after the chunks.
    lump: f64,
}

/// The contribution of a unit whose Σ x² was taken as one sum (the
/// device's `sum_squares` over the unit): not the chunked order, so not
/// bit for bit the plain run's norm — used where the device's arithmetic
/// differs from the host's anyway (CUDA).
pub fn lump(sum: f64) -> UnitSquares {
    UnitSquares { lump: sum, ..Default::default() }
}

fn squares(c: &[f32]) -> f64 {
    c.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

/// The contribution of a unit whose gradients `g` start at offset `start`
/// of the whole.
pub fn unit_squares(start: usize, g: &[f32]) -> UnitSquares {
    let end = start + g.len();
    // Chunks wholly inside: [first, last).
    let first = start.div_ceil(CHUNK);
    let last = end / CHUNK;
    let mut out = UnitSquares::default();
    if first < last {
        out.whole = (first..last).into_par_iter().map(|k| (k, squares(&g[k * CHUNK - start..(k + 1) * CHUNK - start]))).collect();
    }
    let mut piece = |lo: usize, hi: usize| {
        if lo < hi {
            out.pieces.push((lo / CHUNK, lo, g[lo - start..hi - start].to_vec()));
        }
    };
    if first <= last {
        piece(start, (first * CHUNK).min(end));
        piece((last * CHUNK).max(start), end);
    } else {
        // The unit lies inside one chunk.
        piece(start, end);
    }
    out
}

/// Σ x² over every unit's gradients (each unit's contribution exactly once).
pub fn total<'a>(units: impl IntoIterator<Item = &'a UnitSquares>) -> f64 {
    let mut chunks: BTreeMap<usize, f64> = BTreeMap::new();
    let mut lumps = 0.0f64;
    let mut shared: BTreeMap<usize, Vec<(usize, &[f32])>> = BTreeMap::new();
    for u in units {
        chunks.extend(u.whole.iter().copied());
        lumps += u.lump;
        for (k, at, v) in &u.pieces {
            shared.entry(*k).or_default().push((*at, v));
        }
    }
    for (k, mut parts) in shared {
        parts.sort_by_key(|p| p.0);
        chunks.insert(k, parts.iter().flat_map(|p| p.1.iter()).map(|&v| (v as f64) * (v as f64)).sum());
    }
    chunks.values().sum::<f64>() + lumps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_sums_equal_the_backends_sum_bit_for_bit() {
        let mut rng = crate::util::rng::Rng::new(7);
        // Units that start and end inside chunks, on boundaries, inside one
        // chunk, span several chunks, and are empty.
        let sizes = [5, CHUNK - 3, 1, 2 * CHUNK + 17, 0, 999, CHUNK, 3 * CHUNK, 2];
        let parts: Vec<Vec<f32>> = sizes.iter().map(|&n| (0..n).map(|_| rng.normal() as f32 * 1.7).collect()).collect();
        let all: Vec<f32> = parts.concat();
        let mut start = 0;
        let mut units = vec![];
        for p in &parts {
            units.push(unit_squares(start, p));
            start += p.len();
        }
        let want = crate::backend::cpu::elementwise::sum_squares(&all);
        // Backward order (last unit first) gives the same bits.
        assert_eq!(total(units.iter().rev()).to_bits(), want.to_bits());
        assert_eq!(total(&units).to_bits(), want.to_bits());
    }
}
