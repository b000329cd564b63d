//! Elementwise ops and the f64 sum of squares (global gradient norm).
//!
//! Work is split into fixed-size chunks (independent of the thread count) so
//! `sum_squares` reduces in the same order on every machine.

use rayon::prelude::*;

/// Elements per parallel task: big enough to amortize scheduling.
pub const CHUNK: usize = 1 << 14;

/// `out = a + b`.
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    assert!(out.len() == a.len() && a.len() == b.len());
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
        for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    });
}

/// `dst += src`.
pub fn accumulate(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
        for (d, s) in d.iter_mut().zip(s) {
            *d += s;
        }
    });
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    x.par_chunks_mut(CHUNK).for_each(|x| x.iter_mut().for_each(|v| *v *= s));
}

pub fn fill(x: &mut [f32], value: f32) {
    x.par_chunks_mut(CHUNK).for_each(|x| x.fill(value));
}

pub fn copy(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}

/// `dst[r·ds + c] (+)= src[r·ss + c]` for `r < rows`, `c < cols` (see
/// `Backend::copy_strided`; the slices span exactly those rows).
pub fn copy_strided(dst: &mut [f32], ds: usize, src: &[f32], ss: usize, rows: usize, cols: usize, accumulate: bool) {
    if rows == 0 || cols == 0 {
        return;
    }
    dst.par_chunks_mut(ds).enumerate().for_each(|(r, d)| {
        let (d, s) = (&mut d[..cols], &src[r * ss..r * ss + cols]);
        if accumulate {
            d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
        } else {
            d.copy_from_slice(s);
        }
    });
}

/// Σ x² accumulated in f64: per-chunk partial sums, then summed in chunk
/// order (deterministic).
pub fn sum_squares(x: &[f32]) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum())
        .collect();
    partial.iter().sum()
}

/// `y = a·x + b·y`; with `b == 0`, `y` is not read.
pub fn axpby(y: &mut [f32], x: &[f32], a: f32, b: f32) {
    assert_eq!(y.len(), x.len());
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        if b == 0.0 {
            y.iter_mut().zip(x).for_each(|(y, x)| *y = a * x);
        } else {
            y.iter_mut().zip(x).for_each(|(y, x)| *y = a * x + b * *y);
        }
    });
}
