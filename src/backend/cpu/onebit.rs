//! 1-bit compression: sign bits packed eight to a byte (least significant
//! bit first) and one l2-preserving scale per block. The reference for
//! `onebit.cu`; used by 1-bit Adam's compressed all-reduce.

use rayon::prelude::*;

/// `scales[k] = sqrt(Σ x² / n_k)` over block `k` (f64 sum in index order);
/// bit `j` of `bits[i]` = `x[8i + j] >= 0`, bits past `x`'s end 0.
pub fn sign_compress(bits: &mut [u8], scales: &mut [f32], x: &[f32], block: usize) {
    assert!(block > 0 && block.is_multiple_of(8));
    assert_eq!(bits.len(), x.len().div_ceil(8));
    assert_eq!(scales.len(), x.len().div_ceil(block));
    bits.par_chunks_mut(block / 8).zip(scales.par_iter_mut()).zip(x.par_chunks(block)).for_each(|((b, s), x)| {
        let sq: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        *s = (sq / x.len() as f64).sqrt() as f32;
        for (byte, vals) in b.iter_mut().zip(x.chunks(8)) {
            *byte = vals.iter().enumerate().fold(0u8, |acc, (j, &v)| acc | (((v >= 0.0) as u8) << j));
        }
    });
}

/// `out[i] = alpha·d_i + beta·out[i]`, `d_i = ±scales[i / block]`; with
/// `beta == 0`, `out` is not read.
pub fn sign_decompress(out: &mut [f32], bits: &[u8], scales: &[f32], block: usize, alpha: f32, beta: f32) {
    assert!(block > 0 && block.is_multiple_of(8));
    assert_eq!(bits.len(), out.len().div_ceil(8));
    assert_eq!(scales.len(), out.len().div_ceil(block));
    out.par_chunks_mut(block).zip(bits.par_chunks(block / 8)).zip(scales.par_iter()).for_each(|((o, b), &s)| {
        for (i, y) in o.iter_mut().enumerate() {
            let d = if (b[i / 8] >> (i % 8)) & 1 == 1 { s } else { -s };
            *y = if beta == 0.0 { alpha * d } else { alpha * d + beta * *y };
        }
    });
}
