//! GELU, tanh approximation (GPT-2 `gelu_new`):
//!   gelu(x) = ½·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³)
//!   gelu'(x) = ½·(1 + tanh u) + ½·x·(1 - tanh²u)·√(2/π)·(1 + 3·0.044715·x²)

use super::elementwise::CHUNK;
use rayon::prelude::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const K: f32 = 0.044715;

/// tanh through one `exp` (glibc's `tanhf` and `expm1f` are several times
/// slower, and GELU was a quarter of the tiny model's CPU step). Near 0,
/// where `e - 1` would cancel, a Taylor series (next term < 1e-10 relative at
/// |u| = 0.1); elsewhere within a few ulp. For |u| > 15, tanh(u) is ±1 in f32.
fn tanh(u: f32) -> f32 {
    let a = u.abs();
    if a < 0.1 {
        let u2 = u * u;
        return u * (1.0 - u2 * (1.0 / 3.0 - u2 * (2.0 / 15.0 - u2 * (17.0 / 315.0))));
    }
    if a > 15.0 {
        return u.signum();
    }
    let e = (2.0 * u).exp();
    (e - 1.0) / (e + 1.0)
}

pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + K * x * x * x)))
}

pub fn gelu_grad(x: f32) -> f32 {
    let t = tanh(SQRT_2_OVER_PI * (x + K * x * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * K * x * x)
}

pub fn gelu_fwd(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| {
        o.iter_mut().zip(x).for_each(|(o, &x)| *o = gelu(x));
    });
}

/// `dinp = dout · gelu'(inp)` (overwrite).
pub fn gelu_bwd(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK))).for_each(|(dx, (x, dy))| {
        for i in 0..dx.len() {
            dx[i] = dy[i] * gelu_grad(x[i]);
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_tanh_matches_f64() {
        for i in -40_000..=40_000 {
            let u = i as f32 * 5e-4;
            let exact = (u as f64).tanh();
            let err = ((super::tanh(u) as f64) - exact).abs();
            assert!(err <= 4.0 * f32::EPSILON as f64 * exact.abs().max(1e-30) + 1e-12, "tanh({u}): {err}");
        }
    }
}
