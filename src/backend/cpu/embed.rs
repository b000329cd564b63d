//! Token (+ learned position) embedding.

use anyhow::{bail, Result};
use rayon::prelude::*;

/// Every token id must index a row of the table.
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<()> {
    if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
        bail!("embedding: token {t} at position {i} is outside the vocabulary of {vocab}");
    }
    Ok(())
}

/// `out[n,:] = wte[tokens[n],:] (+ wpe[n % seq,:])`.
pub fn embed_fwd(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: Option<&[f32]>, seq: usize, c: usize) {
    out.par_chunks_mut(c).zip(tokens.par_iter()).enumerate().for_each(|(n, (row, &tok))| {
        let t = tok as usize;
        row.copy_from_slice(&wte[t * c..(t + 1) * c]);
        if let Some(wpe) = wpe {
            let p = n % seq;
            row.iter_mut().zip(&wpe[p * c..(p + 1) * c]).for_each(|(o, w)| *o += w);
        }
    });
}

/// `dwte[tokens[n],:] += dout[n,:]`, `dwpe[n % seq,:] += dout[n,:]`.
/// Serial in row order: several rows may hit the same table row, and this op
/// is O(N·C) (negligible next to the matmuls), so determinism wins.
pub fn embed_bwd(dwte: &mut [f32], mut dwpe: Option<&mut [f32]>, dout: &[f32], tokens: &[u32], seq: usize, c: usize) {
    for (n, (g, &tok)) in dout.chunks_exact(c).zip(tokens).enumerate() {
        let t = tok as usize;
        dwte[t * c..(t + 1) * c].iter_mut().zip(g).for_each(|(d, g)| *d += g);
        if let Some(dwpe) = dwpe.as_deref_mut() {
            let p = n % seq;
            dwpe[p * c..(p + 1) * c].iter_mut().zip(g).for_each(|(d, g)| *d += g);
        }
    }
}
