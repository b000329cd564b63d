//! Fused Lion step (Chen et al. 2023, "Symbolic Discovery of Optimization
//! Algorithms"): the update is the sign of an interpolation between the
//! momentum and the gradient (beta1), the momentum itself tracks the
//! gradient with a slower beta2. Decoupled weight decay.

use super::elementwise::CHUNK;
use crate::backend::LionArgs;
use rayon::prelude::*;

/// `torch.sign` semantics: sign(0) = 0.
#[inline]
pub fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

pub fn lion(p: &mut [f32], g: &[f32], m: &mut [f32], a: &LionArgs) {
    assert!(p.len() == g.len() && g.len() == m.len());
    let decay = 1.0 - a.lr * a.weight_decay;
    p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK)).for_each(|((p, g), m)| {
        for i in 0..p.len() {
            let gi = g[i] * a.grad_scale;
            let c = a.beta1 * m[i] + (1.0 - a.beta1) * gi;
            p[i] = p[i] * decay - a.lr * sign(c);
            m[i] = a.beta2 * m[i] + (1.0 - a.beta2) * gi;
        }
    });
}
