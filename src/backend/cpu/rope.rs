//! Rotary position embedding, Hugging Face Llama "rotate_half" convention.
//!
//! Within each head of size D, element i (< D/2) pairs with i + D/2 and the
//! pair is rotated by angle = pos · theta^(-2i/D):
//!   x'[i]       = x[i]·cos - x[i+D/2]·sin
//!   x'[i+D/2]   = x[i+D/2]·cos + x[i]·sin
//! Applied in place to the first H + KV heads of each qkv row (q then k; v is
//! untouched), pos = row % seq. The rotation is orthogonal, so the backward
//! is the inverse rotation (angle → -angle) applied to the gradient.

use crate::backend::AttnShape;
use rayon::prelude::*;

/// `(cos, sin)` tables `[seq, D/2]`, angles computed in f64 then rounded.
fn tables(seq: usize, d: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = d / 2;
    let (mut cos, mut sin) = (Vec::with_capacity(seq * half), Vec::with_capacity(seq * half));
    for pos in 0..seq {
        for i in 0..half {
            let inv_freq = (theta as f64).powf(-2.0 * i as f64 / d as f64);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotate q and k heads of every row in place; `inverse` rotates by -angle.
pub fn rope(qkv: &mut [f32], s: &AttnShape, theta: f32, inverse: bool) {
    let (d, half) = (s.head_dim, s.head_dim / 2);
    let (cos, sin) = tables(s.seq, d, theta);
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
