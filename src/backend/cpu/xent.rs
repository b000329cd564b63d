//! Fused softmax cross-entropy. Per row of logits z (length V), target y:
//!   lse = max(z) + ln Σ exp(z - max(z))
//!   loss = lse - z[y]
//!   dz = (softmax(z) - onehot(y)) · grad_scale,  softmax(z) = exp(z - lse)
//! Rows whose target is IGNORE give loss 0 and gradient 0. Probabilities are
//! never stored: the gradient overwrites the logits row in place. Rows are
//! `v` wide; only the first `classes` columns are classes (vocabulary
//! padding after them: outside the softmax, gradient 0).

use crate::backend::IGNORE;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Targets must be IGNORE or a valid class.
pub fn check_targets(targets: &[u32], v: usize) -> Result<()> {
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t != IGNORE && t as usize >= v) {
        bail!("softmax_xent: target {t} at row {i} is outside the vocabulary of {v}");
    }
    Ok(())
}

/// Log-sum-exp of one row (sum of exponentials accumulated in f64).
fn logsumexp(z: &[f32]) -> f32 {
    let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = z.iter().map(|&x| ((x - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// Per-row losses only.
pub fn xent_loss(losses: &mut [f32], logits: &[f32], targets: &[u32], v: usize, classes: usize) {
    losses.par_iter_mut().zip(logits.par_chunks(v).zip(targets.par_iter())).for_each(|(l, (z, &t))| {
        *l = if t == IGNORE { 0.0 } else { logsumexp(&z[..classes]) - z[t as usize] };
    });
}

/// Per-row losses, then the gradient written over the logits (`z` holds
/// logits on entry, `dlogits` on exit).
pub fn xent_loss_grad_in_place(losses: &mut [f32], z: &mut [f32], targets: &[u32], v: usize, classes: usize, grad_scale: f32) {
    losses.par_iter_mut().zip(z.par_chunks_mut(v).zip(targets.par_iter())).for_each(|(l, (z, &t))| {
        let (z, padding) = z.split_at_mut(classes);
        padding.fill(0.0);
        if t == IGNORE {
            *l = 0.0;
            z.fill(0.0);
            return;
        }
        let lse = logsumexp(z);
        *l = lse - z[t as usize];
        z.iter_mut().for_each(|x| *x = (*x - lse).exp() * grad_scale);
        z[t as usize] -= grad_scale;
    });
}
