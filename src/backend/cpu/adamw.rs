//! Fused AdamW, exactly PyTorch's `torch.optim.AdamW` (single-tensor path):
//!   g = grad · grad_scale
//!   p *= 1 - lr·wd                      (decoupled weight decay)
//!   m  = b1·m + (1-b1)·g
//!   v  = b2·v + (1-b2)·g²
//!   p -= lr/(1-b1^t) · m / (sqrt(v)/sqrt(1-b2^t) + eps)
//! The bias corrections are computed in f64 (PyTorch does them in Python
//! floats) and then applied in f32 like PyTorch's f32 tensor ops.

use super::elementwise::CHUNK;
use super::isa::{multiversion, Isa};
use crate::backend::AdamWArgs;
use rayon::prelude::*;

/// The step's constants, computed once per call.
#[derive(Clone, Copy)]
struct Factors {
    step_size: f32,
    bc2_sqrt: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    grad_scale: f32,
}

/// One chunk. Iterators, not indexing: no bounds checks, so the loop
/// vectorises (the same operations in the same order per element).
#[inline(always)]
fn chunk_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], f: &Factors) {
    let (b1, b2) = (f.beta1, f.beta2);
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let gi = g * f.grad_scale;
        *p *= f.decay;
        *m = b1 * *m + (1.0 - b1) * gi;
        *v = b2 * *v + (1.0 - b2) * gi * gi;
        let denom = v.sqrt() / f.bc2_sqrt + f.eps;
        *p -= f.step_size * *m / denom;
    }
}

multiversion! {
    fn chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], f: &Factors) => chunk_body
}

pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], a: &AdamWArgs) {
    adamw_with(Isa::best(), p, g, m, v, a)
}

/// [`adamw`] with instructions up to `isa` (the variants give the same
/// bits; tests and benchmarks compare them).
pub fn adamw_with(isa: Isa, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], a: &AdamWArgs) {
    assert!(p.len() == g.len() && g.len() == m.len() && m.len() == v.len());
    let t = a.step as f64;
    let bc1 = 1.0 - (a.beta1 as f64).powf(t);
    let bc2 = 1.0 - (a.beta2 as f64).powf(t);
    let f = Factors {
        step_size: (a.lr as f64 / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        decay: 1.0 - a.lr * a.weight_decay,
        beta1: a.beta1,
        beta2: a.beta2,
        eps: a.eps,
        grad_scale: a.grad_scale,
    };
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| chunk(isa, p, g, m, v, &f));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop as first written (indexed): every vectorised variant must
    /// give its bits exactly.
    #[test]
    fn iterator_loop_equals_the_indexed_one() {
        let n = 3 * CHUNK + 5;
        for isa in Isa::available() {
            let mut rng = crate::util::rng::Rng::new(9);
            let mut p: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            let (mut q, mut rm, mut rv) = (p.clone(), m.clone(), v.clone());
            for step in 1..=4 {
                let g: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 0.1).collect();
                let a = AdamWArgs { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 0.5 };
                adamw_with(isa, &mut p, &g, &mut m, &mut v, &a);
                let t = step as f64;
                let step_size = (a.lr as f64 / (1.0 - (a.beta1 as f64).powf(t))) as f32;
                let bc2_sqrt = (1.0 - (a.beta2 as f64).powf(t)).sqrt() as f32;
                for i in 0..n {
                    let gi = g[i] * a.grad_scale;
                    q[i] *= 1.0 - a.lr * a.weight_decay;
                    rm[i] = a.beta1 * rm[i] + (1.0 - a.beta1) * gi;
                    rv[i] = a.beta2 * rv[i] + (1.0 - a.beta2) * gi * gi;
                    q[i] -= step_size * rm[i] / (rv[i].sqrt() / bc2_sqrt + a.eps);
                }
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert!(bits(&p) == bits(&q) && bits(&m) == bits(&rm) && bits(&v) == bits(&rv), "{}: step {step}", isa.name());
            }
        }
    }
}
