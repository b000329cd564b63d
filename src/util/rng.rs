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
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fill `out` with N(0, std²).
    pub fn fill_normal(&mut self, out: &mut [f32], std: f32) {
        for x in out {
            *x = (self.normal() as f32) * std;
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

/// Maps a hash to a float in `[0, 1)`.
pub fn to_unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}
