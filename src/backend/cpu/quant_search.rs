//! The nearest 8-bit code of a value, fast and bit-identical to
//! `quant_map::nearest` (a binary search over 255 sorted thresholds).
//!
//! The binary search costs ~8 unpredictable branches per moment per
//! element and made 8-bit AdamW ~20× slower than fp32 AdamW on the host
//! (the offloaded optimizer's hot loop). Here a table indexed by the top
//! 16 bits of the f32 (a bucket: 1/128 of an octave) answers with ONE load
//! and no branch, so the encode vectorises (one gather per value):
//!
//! - `base`: the number of thresholds below the bucket's smallest value;
//! - the maps' thresholds are further apart than a bucket, so at most one
//!   threshold lies inside a bucket (`at_most_one_threshold_per_bucket`
//!   checks both maps). Values of a bucket share their top 16 bits, so
//!   "that threshold < x" is a comparison of the low 16 bits (reversed
//!   for negative values, whose bits grow as they fall): `key(x) > cut`,
//!   with `cut = 0xFFFF` (never) for buckets without a threshold.
//!
//! Counting "thresholds < x" is monotone in x, so `base + [key > cut]` is
//! exactly where the binary search ends. NaN, for which `t < x` is always
//! false, gives 0 like the binary search (the bucket of +inf also holds
//! NaNs, hence the explicit test).

use crate::optim::quant_map;
use std::sync::OnceLock;

pub struct NearestTable {
    /// Per bucket: `cut << 8 | base`.
    entries: Box<[u32; 1 << 16]>,
}

impl NearestTable {
    pub fn new(thresholds: &[f32; 255]) -> Self {
        let entries: Vec<u32> = (0..=u16::MAX as u32)
            .map(|bucket| {
                let lo = bucket << 16;
                // The smallest value of the bucket: the smallest magnitude
                // for positive values, the largest for negative ones.
                let smallest = if bucket & 0x8000 == 0 { f32::from_bits(lo) } else { f32::from_bits(lo | 0xFFFF) };
                let base = if smallest.is_nan() { 0 } else { thresholds.partition_point(|&t| t < smallest) as u32 };
                let inside = thresholds.iter().find(|t| t.to_bits() >> 16 == bucket);
                let cut = inside.map_or(0xFFFF, |t| key(t.to_bits()));
                cut << 8 | base
            })
            .collect();
        NearestTable { entries: entries.into_boxed_slice().try_into().expect("65536 buckets") }
    }

    /// Index of the first threshold not below `x` (= the nearest code).
    /// Branch-free, no bounds checks (a 16-bit index into 65536 entries).
    #[inline(always)]
    pub fn nearest(&self, x: f32) -> u8 {
        let bits = x.to_bits();
        let entry = self.entries[(bits >> 16) as usize];
        let code = (entry & 0xFF) as u8 + (key(bits) > entry >> 8) as u8;
        if x.is_nan() { 0 } else { code }
    }

    /// The 65536 entries `cut << 8 | base` (for vector gathers).
    pub fn entries(&self) -> &[u32; 1 << 16] {
        &self.entries
    }
}

/// The low 16 bits of an f32 in value order within its bucket: as they are
/// for positive values, reversed for negative ones.
#[inline(always)]
pub fn key(bits: u32) -> u32 {
    let negative = ((bits as i32) >> 31) as u32;
    (bits & 0xFFFF) ^ (negative & 0xFFFF)
}

/// The table of the signed map (first moments).
pub fn signed() -> &'static NearestTable {
    static T: OnceLock<NearestTable> = OnceLock::new();
    T.get_or_init(|| NearestTable::new(quant_map::signed_thresholds()))
}

/// The table of the unsigned map (second moments).
pub fn unsigned() -> &'static NearestTable {
    static T: OnceLock<NearestTable> = OnceLock::new();
    T.get_or_init(|| NearestTable::new(quant_map::unsigned_thresholds()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The premise of the single comparison: no bucket holds two
    /// thresholds. Buckets are contiguous ranges of values and the
    /// thresholds are sorted, so it suffices that neighbours differ in
    /// their top 16 bits.
    #[test]
    fn at_most_one_threshold_per_bucket() {
        for t in [quant_map::signed_thresholds(), quant_map::unsigned_thresholds()] {
            for w in t.windows(2) {
                assert_ne!(w[0].to_bits() >> 16, w[1].to_bits() >> 16, "thresholds {:e} and {:e} share a bucket", w[0], w[1]);
            }
        }
    }

    /// Against the binary search on a stride through every f32 bit
    /// pattern (all signs, exponents, NaNs and infinities) plus every
    /// threshold and its two neighbours.
    #[test]
    fn equals_the_binary_search() {
        for (table, t) in [(signed(), quant_map::signed_thresholds()), (unsigned(), quant_map::unsigned_thresholds())] {
            let bad = (0..(1u64 << 32) / 251).into_par_iter().filter(|&k| {
                let x = f32::from_bits((k * 251) as u32);
                table.nearest(x) != quant_map::nearest(t, x)
            });
            assert_eq!(bad.count(), 0);
            for &th in t.iter() {
                for x in [th, f32::from_bits(th.to_bits() + 1), f32::from_bits(th.to_bits().wrapping_sub(1)), -th, 0.0, -0.0] {
                    assert_eq!(table.nearest(x), quant_map::nearest(t, x), "x = {x:e}");
                }
            }
        }
    }
}
