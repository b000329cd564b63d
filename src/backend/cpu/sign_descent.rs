//! Sign descent (signSGD, Bernstein et al. 2018): the state-free update of
//! FRUGAL. Decoupled weight decay.

use super::elementwise::CHUNK;
use super::lion::sign;
use crate::backend::SignArgs;
use rayon::prelude::*;

pub fn sign_descent(p: &mut [f32], g: &[f32], a: &SignArgs) {
    assert_eq!(p.len(), g.len());
    let decay = 1.0 - a.lr * a.weight_decay;
    p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
        for (p, g) in p.iter_mut().zip(g) {
            *p = *p * decay - a.lr * sign(g * a.grad_scale);
        }
    });
}
