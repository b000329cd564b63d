//! Tiny deterministic randomness: weight init, data order, the
//! train/validation split, the built-in corpus and sampling.
//!
//! These must be bit-identical across machines, thread counts and crate
//! upgrades, so we use our own SplitMix64 instead of a library generator
//! whose stream may change. Its whole state is one `u64`, so checkpoints
//! store it and a resumed run draws exactly the same numbers.

use serde::{Deserialize, Serialize};

/// SplitMix64: a fast 64-bit generator with good statistical quality for
/// shuffling and text generation (not for cryptography).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalize(self.state)
    }

    /// Uniform integer in `0..n` (n > 0). The modulo bias is below 2^-40 for
    /// the sizes we use, which is irrelevant for shuffling data.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform float in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller; one value per call keeps state simple).
    pub fn normal(&mut self) -> f64 {
        self.normal_pair().0
    }

    /// Two independent standard normals from one Box–Muller draw.
    fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        let radius = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        (radius * cos, radius * sin)
    }

    /// Fill `out` with N(0, std²), both values of each Box–Muller draw used.
    pub fn fill_normal(&mut self, out: &mut [f32], std: f32) {
        for pair in out.chunks_mut(2) {
            let (a, b) = self.normal_pair();
            pair[0] = a as f32 * std;
            if let Some(second) = pair.get_mut(1) {
                *second = b as f32 * std;
            }
        }
    }

    /// Picks one element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// SplitMix64's output function: a strong 64-bit mixer.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes two numbers into one, e.g. (seed, epoch) or (seed, document index),
/// so that nearby inputs give unrelated outputs.
pub fn mix(a: u64, b: u64) -> u64 {
    finalize(finalize(a ^ 0x5851_F42D_4C95_7F2D).wrapping_add(b))
}

/// Elements per stream in `fill_normal_parallel`: fixed, so the values do
/// not depend on how many threads drew them.
const NORMAL_BLOCK: usize = 1 << 16;

/// Fill `out` with N(0, std²) on every core (a billion-parameter model's
/// init took a minute on one): block i of `NORMAL_BLOCK` elements is drawn
/// from its own stream `mix(seed, i)`, so the result is the same on any
/// machine and any thread count.
pub fn fill_normal_parallel(out: &mut [f32], std: f32, seed: u64) {
    use rayon::prelude::*;
    out.par_chunks_mut(NORMAL_BLOCK)
        .enumerate()
        .for_each(|(i, block)| Rng::new(mix(seed, i as u64)).fill_normal(block, std));
}

/// Maps a hash to a float in `[0, 1)`.
pub fn to_unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw_with_threads(threads: usize, n: usize) -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut out = vec![0.0f32; n];
        pool.install(|| fill_normal_parallel(&mut out, 0.5, 7));
        out
    }

    #[test]
    fn parallel_normals_do_not_depend_on_the_thread_count() {
        // Three blocks and a ragged tail: every block boundary is crossed.
        let n = 3 * NORMAL_BLOCK + 77;
        let one = draw_with_threads(1, n);
        assert_eq!(one, draw_with_threads(3, n));
        // Each block is its own stream, so consecutive blocks must differ.
        assert_ne!(one[..100], one[NORMAL_BLOCK..NORMAL_BLOCK + 100]);
    }

    #[test]
    fn normals_have_the_requested_moments() {
        // n = 2^20 draws of N(0, 0.5²): the sample mean's standard error is
        // 0.5/1024 and the variance's 0.25·sqrt(2/n); bounds are 5 errors.
        let x = draw_with_threads(2, 1 << 20);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 5.0 * 0.5 / 1024.0, "mean {mean}");
        assert!((var - 0.25).abs() < 5.0 * 0.25 * (2.0 / n).sqrt(), "variance {var}");
        // Box–Muller's two outputs of one draw are independent: the cos and
        // sin halves (even and odd entries) must be uncorrelated.
        let pairs = x.len() / 2;
        let cov = (0..pairs).map(|i| x[2 * i] as f64 * x[2 * i + 1] as f64).sum::<f64>() / pairs as f64;
        assert!((cov / 0.25).abs() < 5.0 / (pairs as f64).sqrt(), "correlation {}", cov / 0.25);
    }
}
