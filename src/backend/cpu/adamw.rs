//! Fused AdamW, exactly PyTorch's `torch.optim.AdamW` (single-tensor path):
//!   g = grad · grad_scale
//!   p *= 1 - lr·wd                      (decoupled weight decay)
//!   m  = b1·m + (1-b1)·g
//!   v  = b2·v + (1-b2)·g²
//!   p -= lr/(1-b1^t) · m / (sqrt(v)/sqrt(1-b2^t) + eps)
//! The bias corrections are computed in f64 (PyTorch does them in Python
//! floats) and then applied in f32 like PyTorch's f32 tensor ops.

use super::elementwise::CHUNK;
use crate::backend::AdamWArgs;
use rayon::prelude::*;

pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], a: &AdamWArgs) {
    assert!(p.len() == g.len() && g.len() == m.len() && m.len() == v.len());
    let t = a.step as f64;
    let bc1 = 1.0 - (a.beta1 as f64).powf(t);
    let bc2 = 1.0 - (a.beta2 as f64).powf(t);
    let step_size = (a.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - a.lr * a.weight_decay;
    let (b1, b2) = (a.beta1, a.beta2);
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let gi = g[i] * a.grad_scale;
                p[i] *= decay;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + a.eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}
