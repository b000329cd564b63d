//! The nearest 8-bit code of a value, fast and bit-identical to
//! `quant_map::nearest` (a binary search over 255 sorted thresholds).
//!
//! The binary search costs ~8 unpredictable branches per moment per
//! element and made 8-bit AdamW ~20× slower than fp32 AdamW on the host
//! (the offloaded optimizer's hot loop). Here a table indexed by the top
//! 16 bits of the f32 gives, for every value with those bits, a lower
//! bound on the answer: the number of thresholds below the smallest value
//! sharing them. A short forward scan (0–2 steps: a bucket spans 1/128 of
//! an octave, the map's steps are wider) finishes the count. Counting
//! "thresholds < x" is monotone in x, so the bound never overshoots and
//! the scan ends exactly where the binary search does. NaN, for which
//! `t < x` is always false, gives 0 like the binary search.

use crate::optim::quant_map;
use std::sync::OnceLock;

pub struct NearestTable {
    thresholds: [f32; 255],
    base: Vec<u8>,
}

impl NearestTable {
    pub fn new(thresholds: &[f32; 255]) -> Self {
        let base = (0..=u16::MAX)
            .map(|prefix| {
                let lo = (prefix as u32) << 16;
                // The smallest value of the bucket: the smallest magnitude
                // for positive values, the largest for negative ones.
                let smallest = if prefix & 0x8000 == 0 { f32::from_bits(lo) } else { f32::from_bits(lo | 0xFFFF) };
                if smallest.is_nan() { 0 } else { thresholds.partition_point(|&t| t < smallest) as u8 }
            })
            .collect();
        NearestTable { thresholds: *thresholds, base }
    }

    /// Index of the first threshold not below `x` (= the nearest code).
    #[inline]
    pub fn nearest(&self, x: f32) -> u8 {
        if x.is_nan() {
            return 0;
        }
        let mut i = self.base[(x.to_bits() >> 16) as usize] as usize;
        while i < 255 && self.thresholds[i] < x {
            i += 1;
        }
        i as u8
    }
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
