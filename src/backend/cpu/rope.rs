//! Rotary position embedding, Hugging Face Llama "rotate_half" convention.
//!
//! Within each head of size D, element i (< D/2) pairs with i + D/2 and the
//! pair is rotated by angle = pos · inv_freq[i] (see `Rope::inv_freq`:
//! theta^(-2i/D), with Llama 3 scaling where configured):
//!   x'[i]       = x[i]·cos - x[i+D/2]·sin
//!   x'[i+D/2]   = x[i+D/2]·cos + x[i]·sin
//! Applied in place to the first H + KV heads of each qkv row (q then k; v is
//! untouched), pos = row % seq. The rotation is orthogonal, so the backward
//! is the inverse rotation (angle → -angle) applied to the gradient.

use crate::backend::AttnShape;
use rayon::prelude::*;

/// `(cos, sin)` tables `[seq, D/2]`. The angle is the f32 product
/// `pos · inv_freq` (as transformers computes it); its cosine and sine are
/// taken in f64 and rounded.
fn tables(seq: usize, inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(seq * half), Vec::with_capacity(seq * half));
    for pos in 0..seq {
        for &f in inv_freq {
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotate q and k heads of every row in place; `inverse` rotates by -angle.
/// `inv_freq` has `head_dim / 2` entries.
pub fn rope(qkv: &mut [f32], s: &AttnShape, inv_freq: &[f32], inverse: bool) {
    let (d, half) = (s.head_dim, s.head_dim / 2);
    debug_assert_eq!(inv_freq.len(), half, "rope: one inverse frequency per pair");
    let (cos, sin) = tables(s.seq, inv_freq);
    let sign = if inverse { -1.0 } else { 1.0 };
    let rotated = (s.heads + s.kv_heads) * d;
    qkv.par_chunks_mut(s.qkv_width()).enumerate().for_each(|(row, x)| {
        let pos = row % s.seq;
        let (c, sn) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
        for head in x[..rotated].chunks_exact_mut(d) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2, si) = (lo[i], hi[i], sign * sn[i]);
                lo[i] = x1 * c[i] - x2 * si;
                hi[i] = x2 * c[i] + x1 * si;
            }
        }
    });
}
