//! SwiGLU gate (Llama MLP): rows of `inp` are `[gate (F) | up (F)]`,
//!   out = silu(gate) · up,  silu(g) = g·σ(g),  silu'(g) = σ(g)·(1 + g·(1 - σ(g)))

use rayon::prelude::*;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn swiglu_fwd(out: &mut [f32], inp: &[f32], f: usize) {
    out.par_chunks_mut(f).zip(inp.par_chunks(2 * f)).for_each(|(o, x)| {
        let (gate, up) = x.split_at(f);
        for i in 0..f {
            o[i] = gate[i] * sigmoid(gate[i]) * up[i];
        }
    });
}

/// `dgate = dout·up·silu'(gate)`, `dup = dout·silu(gate)` (overwrite).
pub fn swiglu_bwd(dinp: &mut [f32], inp: &[f32], dout: &[f32], f: usize) {
    dinp.par_chunks_mut(2 * f).zip(inp.par_chunks(2 * f).zip(dout.par_chunks(f))).for_each(|(dx, (x, dy))| {
        let (gate, up) = x.split_at(f);
        let (dgate, dup) = dx.split_at_mut(f);
        for i in 0..f {
            let s = sigmoid(gate[i]);
            dgate[i] = dy[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s));
            dup[i] = dy[i] * gate[i] * s;
        }
    });
}
