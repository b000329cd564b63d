//! Per-row / per-column reductions and broadcasts on a row-major matrix:
//! the channel norms and channel scaling of APOLLO.

use rayon::prelude::*;

/// `out[i] = Σ_j x[i,j]²` (`per_row`) or `out[j] = Σ_i x[i,j]²`, accumulated
/// in f64 in index order (deterministic), stored as f32.
pub fn axis_sum_squares(out: &mut [f32], x: &[f32], rows: usize, cols: usize, per_row: bool) {
    assert_eq!(x.len(), rows * cols);
    if per_row {
        assert_eq!(out.len(), rows);
        out.par_iter_mut().enumerate().for_each(|(i, o)| {
            *o = x[i * cols..(i + 1) * cols].iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() as f32;
        });
    } else {
        assert_eq!(out.len(), cols);
        // Each task owns a block of columns and walks all rows in order.
        const COLS: usize = 256;
        out.par_chunks_mut(COLS).enumerate().for_each(|(blk, o)| {
            let j0 = blk * COLS;
            let mut acc = vec![0f64; o.len()];
            for row in x.chunks_exact(cols) {
                for (a, &v) in acc.iter_mut().zip(&row[j0..j0 + o.len()]) {
                    *a += (v as f64) * (v as f64);
                }
            }
            o.iter_mut().zip(&acc).for_each(|(o, a)| *o = *a as f32);
        });
    }
}

/// `x[i,j] *= s[i]` (`per_row`) or `x[i,j] *= s[j]`.
pub fn scale_axis(x: &mut [f32], s: &[f32], rows: usize, cols: usize, per_row: bool) {
    assert_eq!(x.len(), rows * cols);
    assert_eq!(s.len(), if per_row { rows } else { cols });
    if cols == 0 {
        return;
    }
    x.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
        if per_row {
            row.iter_mut().for_each(|v| *v *= s[i]);
        } else {
            row.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
        }
    });
}
