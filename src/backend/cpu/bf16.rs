//! f32 → bf16 rounding of a whole buffer (the offloaded unit's image that
//! a bf16 device receives after each step), bit-identical to
//! `half::bf16::from_f32` (round to nearest even; NaN kept quiet with its
//! high mantissa bits) but branch-free, so it vectorises, and compiled
//! for AVX2/AVX-512 (`isa`). It runs after every offloaded step over all
//! parameters (read 4 B, write 2 B each), so it is part of the host
//! optimizer's time.

use super::elementwise::CHUNK;
use super::isa::{multiversion, Isa};
use rayon::prelude::*;

/// One value, as `half::bf16::from_f32(x).to_bits()`.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
    // Round up when the dropped half is above 0x8000, or exactly 0x8000
    // with an odd kept part (ties to even). NaNs are excluded above, so
    // the increment never carries out of 16 bits.
    let up = (bits & 0x8000 != 0) & (bits & 0x1_7FFF != 0);
    let rounded = (bits >> 16) + up as u32;
    let quiet_nan = (bits >> 16) | 0x40;
    (if nan { quiet_nan } else { rounded }) as u16
}

/// `out[i] = bf16(x[i])`, inlined into its caller's instruction set (the
/// 8-bit AdamW blocks write their image with it while the block is in L1).
#[inline(always)]
pub(super) fn round_body(out: &mut [u16], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = to_bf16(v);
    }
}

multiversion! {
    fn round_chunk(out: &mut [u16], x: &[f32]) => round_body
}

/// `out[i] = bf16(x[i])`, in parallel on the calling rayon pool.
pub fn round_to_bf16(out: &mut [u16], x: &[f32]) {
    round_to_bf16_with(Isa::best(), out, x)
}

/// [`round_to_bf16`] with instructions up to `isa`.
pub fn round_to_bf16_with(isa: Isa, out: &mut [u16], x: &[f32]) {
    assert_eq!(out.len(), x.len());
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| round_chunk(isa, o, x));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against `half` on a stride through every f32 bit pattern (all
    /// signs, exponents, NaNs, infinities, subnormals) plus the rounding
    /// boundaries of a few values.
    #[test]
    fn equals_half_on_every_kind_of_value() {
        let mut x: Vec<f32> = (0..(1u64 << 32) / 61).map(|k| f32::from_bits((k * 61) as u32)).collect();
        for base in [0x3F80_0000u32, 0x3F81_0000, 0xBF80_0000, 0x7F7F_0000, 0x0000_0000] {
            x.extend([0x7FFF, 0x8000, 0x8001, 0xFFFF].map(|low| f32::from_bits(base | low)));
        }
        let want: Vec<u16> = x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        for isa in Isa::available() {
            let mut out = vec![0u16; x.len()];
            round_to_bf16_with(isa, &mut out, &x);
            assert!(out == want, "{}", isa.name());
        }
    }
}
