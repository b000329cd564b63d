//! Blockwise 8-bit AdamW (bitsandbytes `Adam8bit`, blockwise kernels).
//!
//! Each block of `QUANT_BLOCK` elements holds its moments as 8-bit codes
//! into the dynamic maps (`optim::quant_map`) plus one fp32 absmax per
//! moment. A step dequantizes the block, runs exactly the fp32 AdamW of
//! `adamw.rs` (the parameters see the unquantized updated moments), then
//! requantizes each moment with the block's new absmax to the nearest code.
//! Blocks are independent, so they run in parallel deterministically.

use crate::backend::{AdamWArgs, QUANT_BLOCK};
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
fn requantize(vals: &[f32], codes: &mut [u8], thresholds: &[f32; 255]) -> f32 {
    let amax = vals.iter().fold(0f32, |a, x| a.max(x.abs()));
    let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
    for (c, x) in codes.iter_mut().zip(vals) {
        *c = quant_map::nearest(thresholds, x * inv);
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
    *ma = requantize(&m[..n], mc, quant_map::signed_thresholds());
    *va = requantize(&v[..n], vc, quant_map::unsigned_thresholds());
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
