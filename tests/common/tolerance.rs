//! Element-wise closeness for the GPU-vs-CPU parity tests: every element
//! must satisfy |gpu − cpu| ≤ atol + rtol·|cpu|. An error relative to the
//! tensor's maximum (the previous metric) lets a small element be wrong by
//! a fraction of the largest one; here each element is held to its own
//! size (rtol) plus an absolute floor (atol) for the cancellation an op's
//! arithmetic can leave near zero.
//!
//! Every check prints one line (the worst element's ratio to its bound, so
//! passing runs show their margin) and a failure names the worst element:
//! index, gpu and cpu values, difference and allowed difference.
#![allow(dead_code)] // each test file uses part of this module

/// bf16 unit roundoff: 8 significant bits, round to nearest, so one
/// rounding moves a value by at most 2^-8 of itself.
pub const BF16_U: f32 = 1.0 / 256.0;

/// Absolute tolerances (same units as the values).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub rtol: f32,
    pub atol: f32,
}

/// A tolerance whose absolute part scales with the data: atol =
/// `atol_rms` × RMS of the reference. The RMS stands for the size of the
/// terms an element is made of (inputs here are random with one scale),
/// not for the largest element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelTol {
    pub rtol: f32,
    pub atol_rms: f32,
}

impl RelTol {
    pub fn for_reference(self, cpu: &[f32]) -> Tol {
        Tol { rtol: self.rtol, atol: self.atol_rms * rms(cpu) }
    }
}

/// Root mean square (0 for an empty slice), in f64 so long vectors of
/// small values do not lose it.
pub fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64).sqrt() as f32
}

/// The result of one comparison: the worst element (largest ratio of its
/// difference to its allowed difference) and how many elements fail.
#[derive(Clone, Copy, Debug)]
pub struct Closeness {
    pub n: usize,
    pub failing: usize,
    pub worst_index: usize,
    pub worst_gpu: f32,
    pub worst_cpu: f32,
    /// |gpu − cpu| / (atol + rtol·|cpu|) at the worst element: ≤ 1 passes.
    pub worst_ratio: f64,
    pub max_abs_diff: f32,
}

/// Difference over allowed difference for one element. NaN on one side
/// only is infinitely wrong (a poisoned output left unwritten, say); NaN
/// on both sides agrees, as do equal infinities.
fn element_ratio(g: f32, c: f32, tol: Tol) -> (f64, f32) {
    if g.is_nan() || c.is_nan() {
        return if g.is_nan() && c.is_nan() { (0.0, 0.0) } else { (f64::INFINITY, f32::INFINITY) };
    }
    if g == c {
        return (0.0, 0.0);
    }
    let diff = (g as f64 - c as f64).abs();
    let allowed = tol.atol as f64 + tol.rtol as f64 * (c as f64).abs();
    let ratio = if allowed > 0.0 { diff / allowed } else { f64::INFINITY };
    (ratio, diff as f32)
}

pub fn closeness(gpu: &[f32], cpu: &[f32], tol: Tol) -> Closeness {
    assert_eq!(gpu.len(), cpu.len(), "compared tensors differ in length: gpu {} cpu {}", gpu.len(), cpu.len());
    let mut r = Closeness { n: cpu.len(), failing: 0, worst_index: 0, worst_gpu: 0.0, worst_cpu: 0.0, worst_ratio: 0.0, max_abs_diff: 0.0 };
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let (ratio, diff) = element_ratio(g, c, tol);
        r.max_abs_diff = r.max_abs_diff.max(diff);
        if ratio > 1.0 {
            r.failing += 1;
        }
        if ratio > r.worst_ratio || i == 0 {
            (r.worst_ratio, r.worst_index, r.worst_gpu, r.worst_cpu) = (ratio, i, g, c);
        }
    }
    r
}

/// Compare, print one line, panic with the worst element if any element
/// is outside its bound.
pub fn assert_close(name: &str, gpu: &[f32], cpu: &[f32], tol: Tol) -> Closeness {
    let r = closeness(gpu, cpu, tol);
    println!(
        "{name:<48} n={:<8} rms|cpu|={:<10.3e} max|diff|={:<10.3e} worst/allowed={:.3} (atol {:.1e} rtol {:.1e})",
        r.n,
        rms(cpu),
        r.max_abs_diff,
        r.worst_ratio,
        tol.atol,
        tol.rtol
    );
    assert!(r.failing == 0, "{}", failure_message(name, &r, tol));
    r
}

pub fn failure_message(name: &str, r: &Closeness, tol: Tol) -> String {
    let allowed = tol.atol + tol.rtol * r.worst_cpu.abs();
    format!(
        "{name}: {} of {} elements outside |gpu − cpu| ≤ {:e} + {:e}·|cpu|; worst at index {}: gpu {:e} cpu {:e} |diff| {:e} > allowed {:e} ({:.2}× the bound)",
        r.failing,
        r.n,
        tol.atol,
        tol.rtol,
        r.worst_index,
        r.worst_gpu,
        r.worst_cpu,
        (r.worst_gpu - r.worst_cpu).abs(),
        allowed,
        r.worst_ratio
    )
}

/// The helper itself runs everywhere (no GPU needed).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_helper_finds_the_worst_element() {
        let tol = Tol { rtol: 0.01, atol: 0.1 };
        // Allowed: 0.11, 0.1, 1.1. Differences: 0.05, 0.2, 1.0.
        let r = closeness(&[1.05, 0.2, 99.0], &[1.0, 0.0, 100.0], tol);
        assert_eq!((r.failing, r.worst_index), (1, 1));
        assert!((r.worst_ratio - 2.0).abs() < 1e-6, "{r:?}");
        let ok = closeness(&[1.05, 0.05, 99.0], &[1.0, 0.0, 100.0], tol);
        assert_eq!(ok.failing, 0);
        let msg = failure_message("t", &r, tol);
        assert!(msg.contains("index 1") && msg.contains("1 of 3"), "{msg}");
    }

    #[test]
    fn tolerance_helper_treats_one_sided_nan_as_failure() {
        let tol = Tol { rtol: 1.0, atol: 1.0 };
        assert_eq!(closeness(&[f32::NAN, 1.0], &[0.0, 1.0], tol).failing, 1);
        assert_eq!(closeness(&[0.0], &[f32::NAN], tol).failing, 1);
        assert_eq!(closeness(&[f32::NAN], &[f32::NAN], tol).failing, 0);
        // Zero tolerance: equal passes, any difference fails.
        let exact = Tol { rtol: 0.0, atol: 0.0 };
        assert_eq!(closeness(&[1.0, 2.0], &[1.0, 2.0], exact).failing, 0);
        assert_eq!(closeness(&[1.0], &[1.0 + f32::EPSILON], exact).failing, 1);
    }

    #[test]
    fn reltol_scales_atol_with_the_reference_rms() {
        let t = RelTol { rtol: 0.5, atol_rms: 2.0 }.for_reference(&[3.0, -4.0, 0.0, 0.0]);
        assert_eq!(t, Tol { rtol: 0.5, atol: 5.0 });
        assert_eq!(rms(&[]), 0.0);
    }
}
