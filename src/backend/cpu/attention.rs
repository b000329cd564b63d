//! Causal multi-head attention with grouped-query heads.
//!
//! qkv rows are `[q (H·D) | k (KV·D) | v (KV·D)]`; query head h reads kv head
//! h / (H/KV). For query position t and keys s ≤ t:
//!   a_s = q_t·k_s / √D,   lse_t = log Σ_s exp(a_s),   p_s = exp(a_s - lse_t)
//!   out_t = Σ_s p_s · v_s
//! Backward (recomputing p from the saved lse, one row at a time):
//!   δ_t = dout_t·out_t,   dp_s = dout_t·v_s,   da_s = p_s·(dp_s - δ_t)
//!   dq_t += da_s·k_s/√D,  dk_s += da_s·q_t/√D,  dv_s += p_s·dout_t
//! Parallel over (batch, head): each task writes a private [T, D] result that
//! is then scattered into place; kv-head gradients of a group are summed in
//! ascending head order, so results are deterministic.

use crate::backend::AttnShape;
use rayon::prelude::*;

/// Dot product with 8 independent partial sums: a single running sum is one
/// long dependency chain the compiler may not reorder (float addition is not
/// associative), which left attention at a few GFLOP/s. Fixed order, so
/// results stay deterministic.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// Offsets of q / k / v for (batch b, query head h) at position t, in `qkv`.
struct Heads<'a> {
    s: &'a AttnShape,
    b: usize,
    h: usize,
}

impl Heads<'_> {
    fn row(&self, t: usize) -> usize {
        (self.b * self.s.seq + t) * self.s.qkv_width()
    }
    fn group(&self) -> usize {
        self.h / (self.s.heads / self.s.kv_heads)
    }
    fn q(&self, t: usize) -> usize {
        self.row(t) + self.h * self.s.head_dim
    }
    fn k(&self, t: usize) -> usize {
        self.row(t) + (self.s.heads + self.group()) * self.s.head_dim
    }
    fn v(&self, t: usize) -> usize {
        self.row(t) + (self.s.heads + self.s.kv_heads + self.group()) * self.s.head_dim
    }
    /// Offset of this head at position t in `out` / `dout` `[N, H·D]`.
    fn o(&self, t: usize) -> usize {
        ((self.b * self.s.seq + t) * self.s.heads + self.h) * self.s.head_dim
    }
}

/// One (batch, head): returns out `[T, D]`, writes `lse[T]`.
fn head_fwd(qkv: &[f32], hd: &Heads, lse: &mut [f32]) -> Vec<f32> {
    let (t_len, d) = (hd.s.seq, hd.s.head_dim);
    let scale = 1.0 / (d as f32).sqrt();
    let (mut out, mut p) = (vec![0.0f32; t_len * d], vec![0.0f32; t_len]);
    for t in 0..t_len {
        let q = &qkv[hd.q(t)..hd.q(t) + d];
        let mut max = f32::NEG_INFINITY;
        for s in 0..=t {
            p[s] = dot(q, &qkv[hd.k(s)..hd.k(s) + d]) * scale;
            max = max.max(p[s]);
        }
        let mut sum = 0.0f32;
        for ps in &mut p[..=t] {
            *ps = (*ps - max).exp();
            sum += *ps;
        }
        lse[t] = max + sum.ln();
        let o = &mut out[t * d..(t + 1) * d];
        for s in 0..=t {
            axpy(o, p[s] / sum, &qkv[hd.v(s)..hd.v(s) + d]);
        }
    }
    out
}

pub fn attention_fwd(out: &mut [f32], lse: &mut [f32], qkv: &[f32], s: &AttnShape) {
    let (t_len, d) = (s.seq, s.head_dim);
    let parts: Vec<Vec<f32>> = lse
        .par_chunks_mut(t_len)
        .enumerate()
        .map(|(bh, lse_bh)| head_fwd(qkv, &Heads { s, b: bh / s.heads, h: bh % s.heads }, lse_bh))
        .collect();
    for (bh, part) in parts.iter().enumerate() {
        let hd = Heads { s, b: bh / s.heads, h: bh % s.heads };
        for t in 0..t_len {
            out[hd.o(t)..hd.o(t) + d].copy_from_slice(&part[t * d..(t + 1) * d]);
        }
    }
}

/// Gradients of one (batch, head): `[dq | dk | dv]`, each `[T, D]`.
fn head_bwd(dout: &[f32], qkv: &[f32], out: &[f32], lse: &[f32], hd: &Heads) -> Vec<f32> {
    let (t_len, d) = (hd.s.seq, hd.s.head_dim);
    let scale = 1.0 / (d as f32).sqrt();
    let mut g = vec![0.0f32; 3 * t_len * d];
    let (dq, dkv) = g.split_at_mut(t_len * d);
    let (dk, dv) = dkv.split_at_mut(t_len * d);
    for t in 0..t_len {
        let q = &qkv[hd.q(t)..hd.q(t) + d];
        let dy = &dout[hd.o(t)..hd.o(t) + d];
        let delta = dot(dy, &out[hd.o(t)..hd.o(t) + d]);
        for s in 0..=t {
            let (k, v) = (&qkv[hd.k(s)..hd.k(s) + d], &qkv[hd.v(s)..hd.v(s) + d]);
            let p = (dot(q, k) * scale - lse[t]).exp();
            let da = p * (dot(dy, v) - delta) * scale;
            axpy(&mut dq[t * d..(t + 1) * d], da, k);
            axpy(&mut dk[s * d..(s + 1) * d], da, q);
            axpy(&mut dv[s * d..(s + 1) * d], p, dy);
        }
    }
    g
}

/// `dqkv` (overwrite) from `dout`, recomputing probabilities from `lse`.
pub fn attention_bwd(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], out: &[f32], lse: &[f32], s: &AttnShape) {
    let (t_len, d, rep) = (s.seq, s.head_dim, s.heads / s.kv_heads);
    let parts: Vec<Vec<f32>> = lse
        .par_chunks(t_len)
        .enumerate()
        .map(|(bh, lse_bh)| head_bwd(dout, qkv, out, lse_bh, &Heads { s, b: bh / s.heads, h: bh % s.heads }))
        .collect();
    // Scatter row by row; part (b, h) holds [dq | dk | dv] for head h.
    let td = t_len * d;
    dqkv.par_chunks_mut(s.qkv_width()).enumerate().for_each(|(row, x)| {
        let (b, t) = (row / t_len, row % t_len);
        let part = |h: usize, which: usize| &parts[b * s.heads + h][which * td + t * d..which * td + (t + 1) * d];
        let (xq, xkv) = x.split_at_mut(s.heads * d);
        for (h, dst) in xq.chunks_exact_mut(d).enumerate() {
            dst.copy_from_slice(part(h, 0));
        }
        // k heads then v heads; kv head g sums query heads g·rep .. (g+1)·rep in order.
        for (i, dst) in xkv.chunks_exact_mut(d).enumerate() {
            let (which, g) = (1 + i / s.kv_heads, i % s.kv_heads);
            dst.fill(0.0);
            for h in g * rep..(g + 1) * rep {
                dst.iter_mut().zip(part(h, which)).for_each(|(a, b)| *a += b);
            }
        }
    });
}
