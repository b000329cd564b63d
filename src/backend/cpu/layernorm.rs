//! LayerNorm over the last dimension (biased variance, like PyTorch).
//!   mean = Σx/C,  rstd = 1/sqrt(Σ(x-mean)²/C + eps),  x̂ = (x-mean)·rstd
//!   out = x̂·w + b

use rayon::prelude::*;

/// Columns per task for the parameter-gradient reduction.
const COLS: usize = 64;

/// Rows are independent: one row per parallel item. Saves `mean`, `rstd`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], c: usize, eps: f32) {
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (mu, rs))| {
            let m = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / c as f32;
            let r = 1.0 / (var + eps).sqrt();
            for i in 0..c {
                o[i] = (x[i] - m) * r * w[i] + b[i];
            }
            (*mu, *rs) = (m, r);
        });
}

/// Backward (accumulating into all three outputs). With g = dout·w:
///   dx = rstd · (g - mean(g) - x̂ · mean(g·x̂))
///   dw += Σ_rows dout·x̂,   db += Σ_rows dout
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(dinp: &mut [f32], dw: &mut [f32], db: &mut [f32], dout: &[f32], inp: &[f32], w: &[f32], mean: &[f32], rstd: &[f32], c: usize) {
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((dx, (dy, x)), (&m, &r))| {
            let (mut g_mean, mut gx_mean) = (0.0f32, 0.0f32);
            for i in 0..c {
                let g = dy[i] * w[i];
                g_mean += g;
                gx_mean += g * (x[i] - m) * r;
            }
            g_mean /= c as f32;
            gx_mean /= c as f32;
            for i in 0..c {
                let xhat = (x[i] - m) * r;
                dx[i] += r * (dy[i] * w[i] - g_mean - xhat * gx_mean);
            }
        });
    // Parameter grads: each task owns a block of columns and sums rows in order.
    dw.par_chunks_mut(COLS).zip(db.par_chunks_mut(COLS)).enumerate().for_each(|(blk, (dw, db))| {
        let j0 = blk * COLS;
        let (mut aw, mut ab) = (vec![0.0f32; dw.len()], vec![0.0f32; db.len()]);
        for ((dy, x), (&m, &r)) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(mean.iter().zip(rstd)) {
            for j in 0..dw.len() {
                let dyj = dy[j0 + j];
                aw[j] += dyj * (x[j0 + j] - m) * r;
                ab[j] += dyj;
            }
        }
        dw.iter_mut().zip(&aw).for_each(|(d, a)| *d += a);
        db.iter_mut().zip(&ab).for_each(|(d, a)| *d += a);
    });
}
