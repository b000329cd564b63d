//! The nearest 8-bit code in one table read and one compare: the form the
//! CUDA 8-bit AdamW kernel uses (a GPU wants no data-dependent loops and
//! little shared memory, so not the CPU's 64K-entry table of
//! `backend::cpu::quant_search`).
//!
//! A bin is 1/128 of an octave of |x| (the f32's exponent and top 7
//! mantissa bits) between 2^-23 and 2, plus one bin below (everything
//! under 2^-23, zero included) and one above (2 to infinity); each sign
//! has its own bins. For each bin the table holds `start`, the number of
//! thresholds below the bin's smallest value. Every bin contains at most
//! one threshold (in [0.5, 1) a bin is 2^-8 wide, the densest codes
//! 0.9/128 apart; lower decades have relatively wider steps: checked when
//! the table is built), so the count of thresholds below any x of it is
//! `start + (thresholds[start] < x)`: exactly `quant_map::nearest`.

use anyhow::{ensure, Result};

/// Top 15 magnitude bits (exponent, 7 mantissa bits) of 2^-23: bin 0's top.
pub const BIN_LO: u32 = 104 << 7;
/// Bins per sign: [0, 2^-23 + a bin), 3071 more up to 2, then [2, inf].
pub const BINS: usize = 3073;

/// The bin of `x` (its sign aside); NaN lands in the top bin (callers
/// treat NaN first).
#[inline]
pub fn bin(x: f32) -> usize {
    let top = (x.to_bits() & 0x7fff_ffff) >> 16;
    (top.saturating_sub(BIN_LO) as usize).min(BINS - 1)
}

/// Smallest and largest magnitude (as bits) of bin `i`.
fn magnitude_bits(i: usize) -> (u32, u32) {
    let lo = if i == 0 { 0 } else { (BIN_LO + i as u32) << 16 };
    let hi = if i == BINS - 1 { f32::INFINITY.to_bits() } else { ((BIN_LO + i as u32 + 1) << 16) - 1 };
    (lo, hi)
}

/// The table for one map's thresholds: `2 * BINS` starts, the positive
/// bins then the negative ones (index `sign_bit * BINS + bin(x)`).
pub fn starts(thresholds: &[f32; 255]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 2 * BINS];
    for negative in [false, true] {
        for i in 0..BINS {
            let (lo, hi) = magnitude_bits(i);
            // The bin's values as the closed interval [a, b].
            let (a, b) = if negative { (-f32::from_bits(hi), -f32::from_bits(lo)) } else { (f32::from_bits(lo), f32::from_bits(hi)) };
            let start = thresholds.partition_point(|&t| t < a);
            let inside = thresholds.iter().filter(|&&t| a <= t && t < b).count();
            ensure!(inside <= 1, "quant bin {i} (negative: {negative}) [{a:e}, {b:e}] holds {inside} thresholds");
            out[negative as usize * BINS + i] = start as u8;
        }
    }
    Ok(out)
}

/// The kernel's lookup, for testing the table against the binary search.
pub fn nearest(starts: &[u8], thresholds: &[f32; 255], x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let k = starts[(x.to_bits() >> 31) as usize * BINS + bin(x)] as usize;
    // The kernel's threshold array has +inf at 255: never below x.
    (k + (k < 255 && thresholds[k] < x) as usize) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::quant_map;

    /// Against the binary search on a stride through every f32 bit pattern
    /// (both signs, zeros, subnormals, NaNs, infinities), every threshold
    /// with its neighbours, and every bin edge.
    #[test]
    fn one_compare_equals_the_binary_search() {
        for t in [quant_map::signed_thresholds(), quant_map::unsigned_thresholds()] {
            let s = starts(t).unwrap();
            let check = |x: f32| assert_eq!(nearest(&s, t, x), quant_map::nearest(t, x), "x = {x:e} ({:#x})", x.to_bits());
            for k in 0..(1u64 << 32) / 4099 {
                check(f32::from_bits((k * 4099) as u32));
            }
            for &th in t.iter() {
                for d in 0..3u32 {
                    for x in [f32::from_bits(th.to_bits() + d), f32::from_bits(th.to_bits() - d)] {
                        check(x);
                        check(-x);
                    }
                }
            }
            for i in 0..BINS {
                let (lo, hi) = magnitude_bits(i);
                for bits in [lo, hi, lo.saturating_sub(1), hi + 1] {
                    check(f32::from_bits(bits));
                    check(-f32::from_bits(bits));
                }
            }
        }
    }
}
