//! One full block of 8-bit AdamW with AVX2 (8 lanes) or AVX-512 (16
//! lanes) intrinsics: the map lookups and the nearest-code table lookups
//! are vector gathers, everything else is lane-wise IEEE arithmetic in the
//! order of `adamw8bit::block_scalar` (no FMA), so the bits are the same.
//!
//! The absmax is a running lane-wise `max(|x|, acc)`: with the new value
//! first, a NaN value leaves the accumulator as it was, which is
//! `f32::max`'s "ignore NaN" of the scalar fold; accumulators are never
//! NaN, so the final order-free reduction equals the scalar fold.

use super::adamw8bit::{Factors, Tables};
use super::bf16::round_body;
use super::quant_search::NearestTable;
use crate::backend::QUANT_BLOCK;
use std::arch::x86_64::*;

/// AVX-512 block: `p`, `g`, `mc`, `vc` (and `image`, the bf16 of the
/// updated `p`, if asked for) hold exactly `QUANT_BLOCK` values.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512dq,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(super) fn block_avx512(p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut f32, va: &mut f32, f: &Factors, t: &Tables, image: Option<&mut [u16]>) {
    const L: usize = 16;
    assert!(p.len() == QUANT_BLOCK && g.len() == QUANT_BLOCK && mc.len() == QUANT_BLOCK && vc.len() == QUANT_BLOCK);
    let mut m = [0f32; QUANT_BLOCK];
    let mut v = [0f32; QUANT_BLOCK];
    let s = _mm512_set1_ps;
    let (mut mmax, mut vmax) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFF_FFFF));
    for i in (0..QUANT_BLOCK).step_by(L) {
        // SAFETY: i + L ≤ QUANT_BLOCK, the length of every slice/array
        // here (asserted above); gather indices are codes < 256 into the
        // 256-value maps.
        unsafe {
            let mcode = _mm512_cvtepu8_epi32(_mm_loadu_si128(mc.as_ptr().add(i).cast()));
            let vcode = _mm512_cvtepu8_epi32(_mm_loadu_si128(vc.as_ptr().add(i).cast()));
            let mold = _mm512_mul_ps(_mm512_i32gather_ps::<4>(mcode, t.smap.as_ptr()), s(*ma));
            let vold = _mm512_mul_ps(_mm512_i32gather_ps::<4>(vcode, t.umap.as_ptr()), s(*va));
            let gi = _mm512_mul_ps(_mm512_loadu_ps(g.as_ptr().add(i)), s(f.grad_scale));
            let mi = _mm512_add_ps(_mm512_mul_ps(s(f.beta1), mold), _mm512_mul_ps(s(f.one_minus_beta1), gi));
            let vi = _mm512_add_ps(_mm512_mul_ps(s(f.beta2), vold), _mm512_mul_ps(_mm512_mul_ps(s(f.one_minus_beta2), gi), gi));
            let pp = _mm512_mul_ps(_mm512_loadu_ps(p.as_ptr().add(i)), s(f.decay));
            let denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), s(f.bc2_sqrt)), s(f.eps));
            let pp = _mm512_sub_ps(pp, _mm512_div_ps(_mm512_mul_ps(s(f.step_size), mi), denom));
            _mm512_storeu_ps(p.as_mut_ptr().add(i), pp);
            _mm512_storeu_ps(m.as_mut_ptr().add(i), mi);
            _mm512_storeu_ps(v.as_mut_ptr().add(i), vi);
            mmax = _mm512_max_ps(_mm512_and_ps(mi, abs_mask), mmax);
            vmax = _mm512_max_ps(_mm512_and_ps(vi, abs_mask), vmax);
        }
    }
    *ma = _mm512_reduce_max_ps(mmax);
    *va = _mm512_reduce_max_ps(vmax);
    encode_avx512(&m, *ma, mc, t.snear);
    encode_avx512(&v, *va, vc, t.unear);
    if let Some(image) = image {
        round_body(image, p);
    }
}

#[target_feature(enable = "avx2,avx512f,avx512bw,avx512dq,avx512vl")]
fn encode_avx512(vals: &[f32; QUANT_BLOCK], amax: f32, codes: &mut [u8], table: &NearestTable) {
    const L: usize = 16;
    assert_eq!(codes.len(), QUANT_BLOCK);
    let inv = _mm512_set1_ps(if amax > 0.0 { 1.0 / amax } else { 0.0 });
    let (one, low8, low16) = (_mm512_set1_epi32(1), _mm512_set1_epi32(0xFF), _mm512_set1_epi32(0xFFFF));
    for i in (0..QUANT_BLOCK).step_by(L) {
        // SAFETY: i + L ≤ QUANT_BLOCK; bucket indices (top 16 bits) are
        // < 65536, the table's length.
        unsafe {
            let x = _mm512_mul_ps(_mm512_loadu_ps(vals.as_ptr().add(i)), inv);
            let bits = _mm512_castps_si512(x);
            let entry = gather_entries(table, _mm512_srli_epi32::<16>(bits));
            let (base, cut) = (_mm512_and_si512(entry, low8), _mm512_srli_epi32::<8>(entry));
            let key = _mm512_xor_si512(_mm512_and_si512(bits, low16), _mm512_and_si512(_mm512_srai_epi32::<31>(bits), low16));
            let code = _mm512_mask_add_epi32(base, _mm512_cmpgt_epi32_mask(key, cut), base, one);
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            let code = _mm512_maskz_mov_epi32(!nan, code);
            _mm_storeu_si128(codes.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(code));
        }
    }
}

/// `table.entries()[idx]` for 16 bucket indices (< 65536), as two 8-lane
/// gathers: on Zen 4/5 a 16-lane gather is slower than two of 8 (the
/// encode ran 1.5× faster), elsewhere they cost about the same.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512dq,avx512vl")]
fn gather_entries(table: &NearestTable, idx: __m512i) -> __m512i {
    let entries: *const i32 = table.entries().as_ptr().cast();
    // SAFETY: every index is below 65536, the table's length.
    let (lo, hi) = unsafe {
        (_mm256_i32gather_epi32::<4>(entries, _mm512_castsi512_si256(idx)), _mm256_i32gather_epi32::<4>(entries, _mm512_extracti64x4_epi64::<1>(idx)))
    };
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// AVX2 block: as [`block_avx512`], 8 lanes.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) fn block_avx2(p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut f32, va: &mut f32, f: &Factors, t: &Tables, image: Option<&mut [u16]>) {
    const L: usize = 8;
    assert!(p.len() == QUANT_BLOCK && g.len() == QUANT_BLOCK && mc.len() == QUANT_BLOCK && vc.len() == QUANT_BLOCK);
    let mut m = [0f32; QUANT_BLOCK];
    let mut v = [0f32; QUANT_BLOCK];
    let s = _mm256_set1_ps;
    let (mut mmax, mut vmax) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    for i in (0..QUANT_BLOCK).step_by(L) {
        // SAFETY: as in `block_avx512`, with 8 lanes.
        unsafe {
            let mcode = _mm256_cvtepu8_epi32(_mm_loadl_epi64(mc.as_ptr().add(i).cast()));
            let vcode = _mm256_cvtepu8_epi32(_mm_loadl_epi64(vc.as_ptr().add(i).cast()));
            let mold = _mm256_mul_ps(_mm256_i32gather_ps::<4>(t.smap.as_ptr(), mcode), s(*ma));
            let vold = _mm256_mul_ps(_mm256_i32gather_ps::<4>(t.umap.as_ptr(), vcode), s(*va));
            let gi = _mm256_mul_ps(_mm256_loadu_ps(g.as_ptr().add(i)), s(f.grad_scale));
            let mi = _mm256_add_ps(_mm256_mul_ps(s(f.beta1), mold), _mm256_mul_ps(s(f.one_minus_beta1), gi));
            let vi = _mm256_add_ps(_mm256_mul_ps(s(f.beta2), vold), _mm256_mul_ps(_mm256_mul_ps(s(f.one_minus_beta2), gi), gi));
            let pp = _mm256_mul_ps(_mm256_loadu_ps(p.as_ptr().add(i)), s(f.decay));
            let denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), s(f.bc2_sqrt)), s(f.eps));
            let pp = _mm256_sub_ps(pp, _mm256_div_ps(_mm256_mul_ps(s(f.step_size), mi), denom));
            _mm256_storeu_ps(p.as_mut_ptr().add(i), pp);
            _mm256_storeu_ps(m.as_mut_ptr().add(i), mi);
            _mm256_storeu_ps(v.as_mut_ptr().add(i), vi);
            mmax = _mm256_max_ps(_mm256_and_ps(mi, abs_mask), mmax);
            vmax = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), vmax);
        }
    }
    *ma = reduce_max_avx2(mmax);
    *va = reduce_max_avx2(vmax);
    encode_avx2(&m, *ma, mc, t.snear);
    encode_avx2(&v, *va, vc, t.unear);
    if let Some(image) = image {
        round_body(image, p);
    }
}

/// Largest lane (no lane is NaN).
#[target_feature(enable = "avx2")]
fn reduce_max_avx2(x: __m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
    lanes.iter().fold(0f32, |a, &x| a.max(x))
}

#[target_feature(enable = "avx2")]
fn encode_avx2(vals: &[f32; QUANT_BLOCK], amax: f32, codes: &mut [u8], table: &NearestTable) {
    const L: usize = 8;
    assert_eq!(codes.len(), QUANT_BLOCK);
    let inv = _mm256_set1_ps(if amax > 0.0 { 1.0 / amax } else { 0.0 });
    // Low byte of each 32-bit lane to the front of its 128-bit half, then
    // the two halves' first dwords together.
    let bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    let halves = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
    let (low8, low16) = (_mm256_set1_epi32(0xFF), _mm256_set1_epi32(0xFFFF));
    for i in (0..QUANT_BLOCK).step_by(L) {
        // SAFETY: as in `encode_avx512`, with 8 lanes.
        unsafe {
            let x = _mm256_mul_ps(_mm256_loadu_ps(vals.as_ptr().add(i)), inv);
            let bits = _mm256_castps_si256(x);
            let entry = _mm256_i32gather_epi32::<4>(table.entries().as_ptr().cast(), _mm256_srli_epi32::<16>(bits));
            let (base, cut) = (_mm256_and_si256(entry, low8), _mm256_srli_epi32::<8>(entry));
            let key = _mm256_xor_si256(_mm256_and_si256(bits, low16), _mm256_and_si256(_mm256_srai_epi32::<31>(bits), low16));
            // All ones (-1) where the threshold inside the bucket is below x.
            let code = _mm256_sub_epi32(base, _mm256_cmpgt_epi32(key, cut));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
            let code = _mm256_andnot_si256(nan, code);
            let packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(code, bytes), halves);
            _mm_storel_epi64(codes.as_mut_ptr().add(i).cast(), _mm256_castsi256_si128(packed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{isa::Isa, quant_search};
    use crate::optim::quant_map;
    use rayon::prelude::*;

    /// The vector encodes against the binary search on a stride through
    /// every f32 bit pattern (absmax 1: the values are encoded as they are).
    #[test]
    fn vector_encode_equals_the_binary_search() {
        let isas = Isa::available();
        for (table, t) in [(quant_search::signed(), quant_map::signed_thresholds()), (quant_search::unsigned(), quant_map::unsigned_thresholds())] {
            let blocks = (1u64 << 32) / 251 / QUANT_BLOCK as u64;
            let bad = (0..blocks).into_par_iter().filter(|&b| {
                let vals: [f32; QUANT_BLOCK] = std::array::from_fn(|i| f32::from_bits(((b * QUANT_BLOCK as u64 + i as u64) * 251) as u32));
                let want: Vec<u8> = vals.iter().map(|&x| quant_map::nearest(t, x)).collect();
                let mut codes = [0u8; QUANT_BLOCK];
                let mut bad = false;
                if isas.contains(&Isa::Avx2) {
                    // SAFETY: the CPU has AVX2.
                    unsafe { encode_avx2(&vals, 1.0, &mut codes, table) };
                    bad |= codes[..] != want[..];
                }
                if isas.contains(&Isa::Avx512) {
                    // SAFETY: the CPU has AVX-512.
                    unsafe { encode_avx512(&vals, 1.0, &mut codes, table) };
                    bad |= codes[..] != want[..];
                }
                bad
            });
            assert_eq!(bad.count(), 0);
        }
    }
}
