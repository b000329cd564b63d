//! Blockwise 8-bit AdamW (bitsandbytes `Adam8bit`, blockwise kernels).
//!
//! Each block of `QUANT_BLOCK` elements holds its moments as 8-bit codes
//! into the dynamic maps (`optim::quant_map`) plus one fp32 absmax per
//! moment. A step dequantizes the block, runs exactly the fp32 AdamW of
//! `adamw.rs` (the parameters see the unquantized updated moments), then
//! requantizes each moment with the block's new absmax to the nearest code.
//! Blocks are independent, so they run in parallel deterministically.
//!
//! This is the offloaded optimizer's hot loop (an 8B model's step moves
//! ~16 B per parameter through it). On x86-64 with AVX2 or AVX-512 full
//! blocks run in `adamw8bit_x86` (map and nearest-code lookups as vector
//! gathers; the nearest code is a branch-free table lookup from
//! `quant_search`); the scalar block below is the baseline and the ragged
//! end of a tensor. Both do the same operations per element in the same
//! order, so every variant gives the same bits.

use super::bf16;
use super::isa::Isa;
use super::quant_search::{self, NearestTable};
use crate::backend::{AdamWArgs, QUANT_BLOCK};
use crate::optim::quant_map;
use rayon::prelude::*;

/// Blocks per parallel task (16K elements: tens of µs of work, enough to
/// amortize scheduling, small enough to balance 8B parameters over many
/// threads).
const BLOCKS_PER_TASK: usize = 64;

/// Step-constant factors of AdamW (PyTorch formula, bias corrections in
/// f64), and the hyper-parameters the loop reads.
#[derive(Clone, Copy)]
pub struct Factors {
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub grad_scale: f32,
}

fn factors(a: &AdamWArgs) -> Factors {
    let t = a.step as f64;
    let bc1 = 1.0 - (a.beta1 as f64).powf(t);
    let bc2 = 1.0 - (a.beta2 as f64).powf(t);
    Factors {
        step_size: (a.lr as f64 / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        decay: 1.0 - a.lr * a.weight_decay,
        beta1: a.beta1,
        beta2: a.beta2,
        one_minus_beta1: 1.0 - a.beta1,
        one_minus_beta2: 1.0 - a.beta2,
        eps: a.eps,
        grad_scale: a.grad_scale,
    }
}

/// The tables one step reads: the two maps (decode) and their nearest-code
/// tables (encode).
pub struct Tables {
    pub smap: &'static [f32; 256],
    pub umap: &'static [f32; 256],
    pub snear: &'static NearestTable,
    pub unear: &'static NearestTable,
}

fn tables() -> Tables {
    Tables { smap: quant_map::signed(), umap: quant_map::unsigned(), snear: quant_search::signed(), unear: quant_search::unsigned() }
}

/// Store `vals` (one block) as codes with a fresh absmax. Not inlined:
/// inlined into `block_scalar` the baseline build ran 1.5× slower.
#[inline(never)]
fn requantize(vals: &[f32], codes: &mut [u8], table: &NearestTable) -> f32 {
    let amax = vals.iter().fold(0f32, |a, x| a.max(x.abs()));
    let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
    for (c, x) in codes.iter_mut().zip(vals) {
        *c = table.nearest(x * inv);
    }
    amax
}

/// One block, scalar: the baseline and the last, short block of a tensor.
#[allow(clippy::too_many_arguments)]
fn block_scalar(p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut f32, va: &mut f32, f: &Factors, t: &Tables, image: Option<&mut [u16]>) {
    let mut m = [0f32; QUANT_BLOCK];
    let mut v = [0f32; QUANT_BLOCK];
    let n = p.len();
    let (f, scale) = (*f, [*ma, *va]);
    for i in 0..n {
        let gi = g[i] * f.grad_scale;
        let mi = f.beta1 * (t.smap[mc[i] as usize] * scale[0]) + f.one_minus_beta1 * gi;
        let vi = f.beta2 * (t.umap[vc[i] as usize] * scale[1]) + f.one_minus_beta2 * gi * gi;
        p[i] *= f.decay;
        p[i] -= f.step_size * mi / (vi.sqrt() / f.bc2_sqrt + f.eps);
        m[i] = mi;
        v[i] = vi;
    }
    *ma = requantize(&m[..n], mc, t.snear);
    *va = requantize(&v[..n], vc, t.unear);
    if let Some(image) = image {
        bf16::round_body(image, p);
    }
}

/// One block with the widest instructions `isa` allows.
#[allow(clippy::too_many_arguments)]
fn block_step(isa: Isa, p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut f32, va: &mut f32, f: &Factors, t: &Tables, image: Option<&mut [u16]>) {
    #[cfg(target_arch = "x86_64")]
    if p.len() == QUANT_BLOCK {
        use super::adamw8bit_x86::{block_avx2, block_avx512};
        // SAFETY: `isa` was capped at what CPU detection found.
        match isa.min(Isa::best()) {
            Isa::Avx512 => return unsafe { block_avx512(p, g, mc, vc, ma, va, f, t, image) },
            Isa::Avx2 => return unsafe { block_avx2(p, g, mc, vc, ma, va, f, t, image) },
            Isa::Baseline => {}
        }
    }
    let _ = isa;
    block_scalar(p, g, mc, vc, ma, va, f, t, image)
}

/// One parallel task: `BLOCKS_PER_TASK` blocks (fewer at the end).
#[allow(clippy::too_many_arguments)]
fn task(isa: Isa, p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut [f32], va: &mut [f32], f: &Factors, t: &Tables, mut image: Option<&mut [u16]>) {
    let blocks = p.chunks_mut(QUANT_BLOCK).zip(g.chunks(QUANT_BLOCK)).zip(mc.chunks_mut(QUANT_BLOCK)).zip(vc.chunks_mut(QUANT_BLOCK));
    for (k, ((((p, g), mc), vc), (ma, va))) in blocks.zip(ma.iter_mut().zip(va.iter_mut())).enumerate() {
        let lo = k * QUANT_BLOCK;
        let image = image.as_deref_mut().map(|img| &mut img[lo..lo + p.len()]);
        block_step(isa, p, g, mc, vc, ma, va, f, t, image);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn adamw8bit(p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut [f32], va: &mut [f32], a: &AdamWArgs) {
    adamw8bit_with(Isa::best(), p, g, mc, vc, ma, va, a, None)
}

/// [`adamw8bit`] with instructions up to `isa` (tests and benchmarks
/// compare the variants; a variant the CPU lacks falls back), and
/// optionally the bf16 rounding of the updated parameters written to
/// `image` in the same pass (what `bf16::round_to_bf16` would give, without
/// reading the parameters from memory again: an offloaded step's image
/// costs 2 B/param written instead of 6 B/param moved).
#[allow(clippy::too_many_arguments)]
pub fn adamw8bit_with(isa: Isa, p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut [f32], va: &mut [f32], a: &AdamWArgs, image: Option<&mut [u16]>) {
    let n = p.len();
    assert!(g.len() == n && mc.len() == n && vc.len() == n);
    assert!(ma.len() == n.div_ceil(QUANT_BLOCK) && va.len() == ma.len());
    assert!(image.as_ref().is_none_or(|img| img.len() == n), "adamw8bit: the bf16 image needs one value per parameter");
    let (f, t) = (factors(a), tables());
    let size = BLOCKS_PER_TASK * QUANT_BLOCK;
    let tasks = p
        .par_chunks_mut(size)
        .zip(g.par_chunks(size))
        .zip(mc.par_chunks_mut(size))
        .zip(vc.par_chunks_mut(size))
        .zip(ma.par_chunks_mut(BLOCKS_PER_TASK))
        .zip(va.par_chunks_mut(BLOCKS_PER_TASK));
    match image {
        Some(image) => tasks.zip(image.par_chunks_mut(size)).for_each(|((((((p, g), mc), vc), ma), va), img)| task(isa, p, g, mc, vc, ma, va, &f, &t, Some(img))),
        None => tasks.for_each(|(((((p, g), mc), vc), ma), va)| task(isa, p, g, mc, vc, ma, va, &f, &t, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel as first written (binary-search codes, indexed loops):
    /// the fast kernel must give its bits exactly.
    fn reference(p: &mut [f32], g: &[f32], mc: &mut [u8], vc: &mut [u8], ma: &mut [f32], va: &mut [f32], a: &AdamWArgs) {
        let f = factors(a);
        let (smap, umap) = (quant_map::signed(), quant_map::unsigned());
        for (k, lo) in (0..p.len()).step_by(QUANT_BLOCK).enumerate() {
            let hi = (lo + QUANT_BLOCK).min(p.len());
            let (mut m, mut v) = (vec![0f32; hi - lo], vec![0f32; hi - lo]);
            for i in lo..hi {
                let gi = g[i] * a.grad_scale;
                m[i - lo] = a.beta1 * (smap[mc[i] as usize] * ma[k]) + (1.0 - a.beta1) * gi;
                v[i - lo] = a.beta2 * (umap[vc[i] as usize] * va[k]) + (1.0 - a.beta2) * gi * gi;
                p[i] *= f.decay;
                p[i] -= f.step_size * m[i - lo] / (v[i - lo].sqrt() / f.bc2_sqrt + a.eps);
            }
            for (vals, codes, amax, t) in [(&m, &mut mc[lo..hi], &mut ma[k], quant_map::signed_thresholds()), (&v, &mut vc[lo..hi], &mut va[k], quant_map::unsigned_thresholds())] {
                *amax = vals.iter().fold(0f32, |a, x| a.max(x.abs()));
                let inv = if *amax > 0.0 { 1.0 / *amax } else { 0.0 };
                codes.iter_mut().zip(vals.iter()).for_each(|(c, x)| *c = quant_map::nearest(t, x * inv));
            }
        }
    }

    /// A gradient of normal values with outliers, one block of zeros (absmax
    /// 0) and one of subnormals (1/absmax overflows to +inf).
    fn gradient(rng: &mut crate::util::rng::Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| match i / QUANT_BLOCK {
                1 => 0.0,
                2 => rng.normal() as f32 * 1e-42,
                _ => rng.normal() as f32 * if i % 97 == 0 { 1e3 } else { 1e-2 },
            })
            .collect()
    }

    /// Every instruction-set variant this CPU has, over more than one
    /// parallel task and a ragged last block, for several steps.
    #[test]
    fn fast_kernel_equals_the_reference_bit_for_bit() {
        let n = 2 * BLOCKS_PER_TASK * QUANT_BLOCK + 5 * QUANT_BLOCK + 77;
        for isa in Isa::available() {
            let mut rng = crate::util::rng::Rng::new(3);
            let mut p: Vec<f32> = (0..n).map(|i| if i / QUANT_BLOCK == 1 { 0.0 } else { rng.normal() as f32 }).collect();
            let mut state = (vec![0u8; n], vec![0u8; n], vec![0f32; n.div_ceil(QUANT_BLOCK)], vec![0f32; n.div_ceil(QUANT_BLOCK)]);
            let (mut q, mut rstate) = (p.clone(), state.clone());
            for step in 1..=6 {
                let g = gradient(&mut rng, n);
                let a = AdamWArgs { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 0.7 };
                adamw8bit_with(isa, &mut p, &g, &mut state.0, &mut state.1, &mut state.2, &mut state.3, &a, None);
                reference(&mut q, &g, &mut rstate.0, &mut rstate.1, &mut rstate.2, &mut rstate.3, &a);
                let isa = isa.name();
                assert!(p.iter().zip(&q).all(|(x, y)| x.to_bits() == y.to_bits()), "{isa}: weights, step {step}");
                assert!(state.0 == rstate.0 && state.1 == rstate.1, "{isa}: codes, step {step}");
                assert!(state.2.iter().chain(&state.3).zip(rstate.2.iter().chain(&rstate.3)).all(|(x, y)| x.to_bits() == y.to_bits()), "{isa}: absmax, step {step}");
            }
        }
    }

    /// The image written in the pass equals rounding the updated weights
    /// afterwards, and writing it changes nothing else.
    #[test]
    fn fused_image_equals_rounding_afterwards() {
        let n = BLOCKS_PER_TASK * QUANT_BLOCK + 3 * QUANT_BLOCK + 77;
        for isa in Isa::available() {
            let mut rng = crate::util::rng::Rng::new(5);
            let mut p: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let mut state = (vec![0u8; n], vec![0u8; n], vec![0f32; n.div_ceil(QUANT_BLOCK)], vec![0f32; n.div_ceil(QUANT_BLOCK)]);
            let (mut q, mut qstate) = (p.clone(), state.clone());
            let mut image = vec![0u16; n];
            for step in 1..=3 {
                let g = gradient(&mut rng, n);
                let a = AdamWArgs { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 1.0 };
                adamw8bit_with(isa, &mut p, &g, &mut state.0, &mut state.1, &mut state.2, &mut state.3, &a, Some(&mut image));
                adamw8bit_with(isa, &mut q, &g, &mut qstate.0, &mut qstate.1, &mut qstate.2, &mut qstate.3, &a, None);
                let mut want = vec![0u16; n];
                bf16::round_to_bf16(&mut want, &q);
                assert!(image == want, "{}: image, step {step}", isa.name());
                assert!(p.iter().zip(&q).all(|(x, y)| x.to_bits() == y.to_bits()) && state.0 == qstate.0 && state.1 == qstate.1, "{}: step {step}", isa.name());
            }
        }
    }
}
