//! The two 8-bit "dynamic" quantization maps of bitsandbytes' blockwise
//! optimizers (Dettmers et al. 2022, `create_dynamic_map` with 7 exponent
//! bits): 256 sorted codes in [-1, 1], dense near 0 and near ±1.
//!
//! For decade i in 0..7 the codes are the midpoints of
//! `linspace(0.1, 1, n_i + 1)` scaled by `10^(i-6)`, with `n_i = 2^i` for the
//! signed map (each mirrored with a negative twin) and `n_i = 2^(i+1)` for
//! the unsigned map; then 0 and 1.0 are added. Both maps therefore hold
//! 254 + 2 = 256 values. The signed map contains +1 but not -1 (its most
//! negative code is about -0.993), exactly like bitsandbytes.
//!
//! Values are computed in f64 and rounded once to f32 (bitsandbytes computes
//! the linspace in f32, so a code may differ from it in the last bit; the
//! maps stay sorted and unique either way).

use std::sync::OnceLock;

/// Decades of exponent (bitsandbytes `max_exponent_bits`).
const DECADES: i32 = 7;

fn build(signed: bool) -> [f32; 256] {
    let mut codes: Vec<f64> = Vec::with_capacity(256);
    for i in 0..DECADES {
        let n = if signed { 1usize << i } else { 1usize << (i + 1) };
        let scale = 10f64.powi(i - (DECADES - 1));
        let step = 0.9 / n as f64;
        for k in 0..n {
            // Midpoint of [0.1 + k·step, 0.1 + (k+1)·step].
            let mid = 0.1 + (k as f64 + 0.5) * step;
            codes.push(scale * mid);
            if signed {
                codes.push(-scale * mid);
            }
        }
    }
    codes.push(0.0);
    codes.push(1.0);
    assert_eq!(codes.len(), 256, "dynamic map must have 256 codes");
    codes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut out = [0f32; 256];
    for (o, c) in out.iter_mut().zip(&codes) {
        *o = *c as f32;
    }
    out
}

/// Signed dynamic map (first moments).
pub fn signed() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| build(true))
}

/// Unsigned dynamic map (second moments, which are never negative).
pub fn unsigned() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| build(false))
}

/// Decision thresholds between neighbouring codes (their midpoints): the
/// code of `x` is the number of thresholds below `x`, i.e. its nearest code
/// (ties go to the lower code).
pub fn thresholds(map: &[f32; 256]) -> [f32; 255] {
    let mut t = [0f32; 255];
    for (k, t) in t.iter_mut().enumerate() {
        *t = 0.5 * (map[k] + map[k + 1]);
    }
    t
}

/// Thresholds of [`signed`], cached.
pub fn signed_thresholds() -> &'static [f32; 255] {
    static T: OnceLock<[f32; 255]> = OnceLock::new();
    T.get_or_init(|| thresholds(signed()))
}

/// Thresholds of [`unsigned`], cached.
pub fn unsigned_thresholds() -> &'static [f32; 255] {
    static T: OnceLock<[f32; 255]> = OnceLock::new();
    T.get_or_init(|| thresholds(unsigned()))
}

/// Index of the code nearest to `x` (`x` normalized to [-1, 1]); binary
/// search over the thresholds (8 comparisons).
#[inline]
pub fn nearest(thresholds: &[f32; 255], x: f32) -> u8 {
    thresholds.partition_point(|&t| t < x) as u8
}

/// Quantize `values` blockwise (block = `block` elements): returns codes and
/// one absmax per block. Host-side helper for tests and tools; the optimizer
/// step itself runs in the backend op.
pub fn quantize_blockwise(values: &[f32], signed_map: bool, block: usize) -> (Vec<u8>, Vec<f32>) {
    let t = if signed_map { signed_thresholds() } else { unsigned_thresholds() };
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block));
    for chunk in values.chunks(block) {
        let amax = chunk.iter().fold(0f32, |a, x| a.max(x.abs()));
        let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
        codes.extend(chunk.iter().map(|x| nearest(t, x * inv)));
        absmax.push(amax);
    }
    (codes, absmax)
}

/// Inverse of [`quantize_blockwise`].
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], signed_map: bool, block: usize) -> Vec<f32> {
    let map = if signed_map { signed() } else { unsigned() };
    codes.iter().enumerate().map(|(i, &c)| map[c as usize] * absmax[i / block]).collect()
}
