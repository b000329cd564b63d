//! Adam's second moment and denominator applied to a separate numerator:
//! the part of Adam that APOLLO (on the projected gradient) and COSMOS (in
//! the tracked eigenbasis) need without a parameter update.

use super::elementwise::CHUNK;
use crate::backend::PrecondArgs;
use rayon::prelude::*;

/// `v = b2·v + (1-b2)·g²; out = num / (sqrt(v)/sqrt(bc2) + eps)`.
pub fn rms_precondition(out: &mut [f32], num: &[f32], v: &mut [f32], g: &[f32], a: &PrecondArgs) {
    assert!(out.len() == num.len() && num.len() == v.len() && v.len() == g.len());
    let bc2_sqrt = a.bc2_sqrt();
    let b2 = a.beta2;
    out.par_chunks_mut(CHUNK)
        .zip(num.par_chunks(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((o, n), v), g)| {
            for i in 0..o.len() {
                let gi = g[i] * a.grad_scale;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                o[i] = n[i] / (v[i].sqrt() / bc2_sqrt + a.eps);
            }
        });
}
