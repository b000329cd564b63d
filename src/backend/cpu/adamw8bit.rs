//! Blockwise 8-bit AdamW (bitsandbytes `Adam8bit`, blockwise kernels).
//!
//! Each block of `QUANT_BLOCK` elements holds its moments as 8-bit codes
//! into the dynamic maps (`optim::quant_map`) plus one fp32 absmax per
//! moment. A step dequantizes the block, runs exactly the fp32 AdamW of
//! `adamw.rs` (the parameters see the unquantized updated moments), then
//! requantizes each moment with the block's new absmax to the nearest code.
//! Blocks are independent, so they run in parallel deterministically. The
//! nearest code comes from `quant_search` (a table, not a binary search:
//! the same codes, several times faster).

use crate::backend::{AdamWArgs, QUANT_BLOCK};
use super::quant_search::{self, NearestTable};
use crate::optim::quant_map;
use rayon::prelude::*;

/// Step-constant factors of AdamW (PyTorch formula, bias corrections in f64).
struct Factors {
    step_size: f32,
    bc2_sqrt: f32,
    decay: f32,
}

fn factors(a: &AdamWArgs) -> Factors {
    let t = a.step as f64;
    let bc1 = 1.0 - (a.beta1 as f64).powf(t);
    let bc2 = 1.0 - (a.beta2 as f64).powf(t);
    Factors { step_size: (a.lr as f64 / bc1) as f32, bc2_sqrt: bc2.sqrt() as f32, decay: 1.0 - a.lr * a.weight_decay }
}

/// Store `vals` (one block) as codes with a fresh absmax.
fn requantize(vals: &[f32], codes: &mut [u8], table: &NearestTable) -> f32 {
    let amax = vals.iter().fold(0f32, |a, x| a.max(x.abs()));
    let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
    for (c, x) in codes.iter_mut().zip(vals) {
        *c = table.nearest(x * inv);
    }
    amax
}

#[allow(clippy::too_many_arguments)]
fn block_step(p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut f32, va: &mut f32, a: &AdamWArgs, f: &Factors) {
    let (smap, umap) = (quant_map::signed(), quant_map::unsigned());
    let mut m = [0f32; QUANT_BLOCK];
    let mut v = [0f32; QUANT_BLOCK];
    let n = p.len();
    for i in 0..n {
        let gi = g[i] * a.grad_scale;
        let mi = a.beta1 * (smap[mc[i] as usize] * *ma) + (1.0 - a.beta1) * gi;
        let vi = a.beta2 * (umap[vc[i] as usize] * *va) + (1.0 - a.beta2) * gi * gi;
        p[i] *= f.decay;
        p[i] -= f.step_size * mi / (vi.sqrt() / f.bc2_sqrt + a.eps);
        m[i] = mi;
        v[i] = vi;
    }
    *ma = requantize(&m[..n], mc, quant_search::signed());
    *va = requantize(&v[..n], vc, quant_search::unsigned());
}

#[allow(clippy::too_many_arguments)]
pub fn adamw8bit(p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut [f32], va: &mut [f32], a: &AdamWArgs) {
    let n = p.len();
    assert!(g.len() == n && mc.len() == n && vc.len() == n);
    assert!(ma.len() == n.div_ceil(QUANT_BLOCK) && va.len() == ma.len());
    let f = factors(a);
    p.par_chunks_mut(QUANT_BLOCK)
        .zip(g.par_chunks(QUANT_BLOCK))
        .zip(mc.par_chunks_mut(QUANT_BLOCK))
        .zip(vc.par_chunks_mut(QUANT_BLOCK))
        .zip(ma.par_iter_mut())
        .zip(va.par_iter_mut())
        .for_each(|(((((p, g), mc), vc), ma), va)| block_step(p, g, mc, vc, ma, va, a, &f));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel as first written (binary-search codes, indexed loops):
    /// the fast kernel must give its bits exactly.
    fn reference(p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut [f32], va: &mut [f32], a: &AdamWArgs) {
        let f = factors(a);
        let (smap, umap) = (quant_map::signed(), quant_map::unsigned());
        for (k, lo) in (0..p.len()).step_by(QUANT_BLOCK).enumerate() {
            let hi = (lo + QUANT_BLOCK).min(p.len());
            let (mut m, mut v) = (vec![0f32; hi - lo], vec![0f32; hi - lo]);
            for i in lo..hi {
                let gi = g[i] * a.grad_scale;
                m[i - lo] = a.beta1 * (smap[mc[i] as usize] * ma[k]) + (1.0 - a.beta1) * gi;
                v[i - lo] = a.beta2 * (umap[vc[i] as usize] * va[k]) + (1.0 - a.beta2) * gi * gi;
                p[i] *= f.decay;
                p[i] -= f.step_size * m[i - lo] / (v[i - lo].sqrt() / f.bc2_sqrt + a.eps);
            }
            for (vals, codes, amax, t) in [(&m, &mut mc[lo..hi], &mut ma[k], quant_map::signed_thresholds()), (&v, &mut vc[lo..hi], &mut va[k], quant_map::unsigned_thresholds())] {
                *amax = vals.iter().fold(0f32, |a, x| a.max(x.abs()));
                let inv = if *amax > 0.0 { 1.0 / *amax } else { 0.0 };
                codes.iter_mut().zip(vals.iter()).for_each(|(c, x)| *c = quant_map::nearest(t, x * inv));
            }
        }
    }

    #[test]
    fn fast_kernel_equals_the_reference_bit_for_bit() {
        let n = 5 * QUANT_BLOCK + 77;
        let mut rng = crate::util::rng::Rng::new(3);
        let mut p: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let mut state = (vec![0u8; n], vec![0u8; n], vec![0f32; n.div_ceil(QUANT_BLOCK)], vec![0f32; n.div_ceil(QUANT_BLOCK)]);
        let (mut q, mut rstate) = (p.clone(), state.clone());
        for step in 1..=6 {
            let g: Vec<f32> = (0..n).map(|i| rng.normal() as f32 * if i % 97 == 0 { 1e3 } else { 1e-2 }).collect();
            let a = AdamWArgs { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 0.7 };
            adamw8bit(&mut p, &g, &mut state.0, &mut state.1, &mut state.2, &mut state.3, &a);
            reference(&mut q, &g, &mut rstate.0, &mut rstate.1, &mut rstate.2, &mut rstate.3, &a);
            assert!(p.iter().zip(&q).all(|(x, y)| x.to_bits() == y.to_bits()), "weights, step {step}");
            assert!(state.0 == rstate.0 && state.1 == rstate.1, "codes, step {step}");
            assert!(state.2.iter().chain(&state.3).zip(rstate.2.iter().chain(&rstate.3)).all(|(x, y)| x.to_bits() == y.to_bits()), "absmax, step {step}");
        }
    }
}
