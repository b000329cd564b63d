//! RMSNorm (Llama): rstd = 1/sqrt(mean(x²) + eps), out = x·rstd·w.

use rayon::prelude::*;

/// Columns per task for the weight-gradient reduction.
const COLS: usize = 64;

pub fn rmsnorm_fwd(out: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], c: usize, eps: f32) {
    out.par_chunks_mut(c).zip(inp.par_chunks(c)).zip(rstd.par_iter_mut()).for_each(|((o, x), rs)| {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / c as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for i in 0..c {
            o[i] = x[i] * r * w[i];
        }
        *rs = r;
    });
}

/// Backward (accumulating). With g = dout·w and ∂rstd/∂x_j = -rstd³·x_j/C:
///   dx_j = rstd · (g_j - x_j · rstd² · Σ_i g_i x_i / C)
///   dw  += Σ_rows dout · x · rstd
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(dinp: &mut [f32], dw: &mut [f32], dout: &[f32], inp: &[f32], w: &[f32], rstd: &[f32], c: usize) {
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(rstd.par_iter())
        .for_each(|((dx, (dy, x)), &r)| {
            let gx_mean = (0..c).map(|i| dy[i] * w[i] * x[i]).sum::<f32>() / c as f32;
            for i in 0..c {
                dx[i] += r * (dy[i] * w[i] - x[i] * r * r * gx_mean);
            }
        });
    // Weight grad: each task owns a block of columns and sums rows in order.
    dw.par_chunks_mut(COLS).enumerate().for_each(|(blk, dw)| {
        let j0 = blk * COLS;
        let mut acc = vec![0.0f32; dw.len()];
        for ((dy, x), &r) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(rstd) {
            for j in 0..dw.len() {
                acc[j] += dy[j0 + j] * x[j0 + j] * r;
            }
        }
        dw.iter_mut().zip(&acc).for_each(|(d, a)| *d += a);
    });
}
