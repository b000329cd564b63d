//! Orthonormalizing a tall `n×r` basis ON THE DEVICE by column-equilibrated
//! CholeskyQR2: the `r×r` Gram matrix `G = ZᵀZ` is one device GEMM, its
//! Cholesky factor is computed on the host (O(r³), tiny), and `Z ← Z·R⁻¹`
//! is a second device GEMM; a second pass removes the loss of orthogonality
//! of the first. Only `r×r` matrices cross the bus, where a host QR of the
//! whole basis cost COSMOS ~0.1 s per matrix on llama-1b (12 s a step).
//!
//! Column equilibration (Cholesky of `D⁻¹GD⁻¹`, `D = diag(‖zᵢ‖)`) makes the
//! factorization insensitive to the very different column scales of COSMOS'
//! basis update (columns scale with the eigenvalues of GᵀG). When `Z` is
//! (numerically) rank deficient the factorization breaks down; we then fall
//! back to the host Householder QR, which is orthonormal in every case.
//! `R` has a positive diagonal, so `Q` is the unique such QR factor (the
//! Householder path may flip column signs; COSMOS is invariant to them).

use super::linalg::qr_thin;
use crate::backend::{Backend, View};
use anyhow::Result;

/// Cholesky passes always made: the second one restores orthogonality to
/// rounding level (the "2" of CholeskyQR2); a check follows.
const MIN_PASSES: usize = 2;
/// Cholesky passes before giving up on the device path.
const MAX_PASSES: usize = 3;
/// The check after the passes: every entry of `QᵀQ − I` below this (a
/// failed factorization is off by far more; fp32 Gram rounding of an
/// orthonormal basis with n ≤ 10⁵ rows is ~1e-5 at worst).
const ORTHO_TOL: f64 = 1e-4;

/// Scratch for [`orthonormalize`]: an `n×r` buffer and two `r×r` buffers.
pub struct QrScratch {
    pub tmp: View,
    pub gram: View,
    pub rinv: View,
}

/// Replaces the `n×r` row-major `z` (n ≥ r) with an orthonormal basis of its
/// column space.
pub fn orthonormalize<B: Backend>(b: &mut B, z: View, s: &QrScratch, n: usize, r: usize) -> Result<()> {
    let (tmp, gram, rinv) = (s.tmp.sub(0, n * r), s.gram.sub(0, r * r), s.rinv.sub(0, r * r));
    for pass in 0..=MAX_PASSES {
        b.gemm(gram, z, z, r, n, r, true, false, 1.0, 0.0)?;
        let g = download64(b, gram)?;
        if pass >= MIN_PASSES && is_identity(&g, r) {
            return Ok(());
        }
        if pass == MAX_PASSES {
            break;
        }
        let Some(inv) = equilibrated_cholesky_inverse(&g, r) else { break };
        upload64(b, rinv, &inv)?;
        b.gemm(tmp, z, rinv, n, r, r, false, false, 1.0, 0.0)?;
        b.copy(z, tmp)?;
    }
    let q = qr_thin(&download64(b, z)?, n, r);
    upload64(b, z, &q)
}

fn is_identity(g: &[f64], r: usize) -> bool {
    (0..r * r).all(|i| (g[i] - if i % (r + 1) == 0 { 1.0 } else { 0.0 }).abs() < ORTHO_TOL)
}

/// `R⁻¹` (upper triangular, row-major `r×r`) of `G = RᵀR`, computed as
/// `D⁻¹·L⁻ᵀ` from the Cholesky factor `L` of `D⁻¹GD⁻¹`. None when `G` is
/// not numerically positive definite.
pub fn equilibrated_cholesky_inverse(g: &[f64], r: usize) -> Option<Vec<f64>> {
    let d: Vec<f64> = (0..r).map(|i| g[i * r + i].sqrt()).collect();
    // Not `x <= 0.0`: a NaN must also refuse.
    if !d.iter().all(|&x| x.is_finite() && x > 0.0) {
        return None;
    }
    let c: Vec<f64> = (0..r * r).map(|i| g[i] / (d[i / r] * d[i % r])).collect();
    let l = cholesky(&c, r)?;
    let linv = lower_inverse(&l, r);
    // R⁻¹ = D⁻¹·L⁻ᵀ: row i of L⁻ᵀ is column i of L⁻¹.
    Some((0..r * r).map(|k| linv[(k % r) * r + k / r] / d[k / r]).collect())
}

/// Lower-triangular `L` with `LLᵀ = c`; None on a pivot that is not
/// clearly positive (relative to the unit diagonal of an equilibrated `c`).
fn cholesky(c: &[f64], r: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; r * r];
    for i in 0..r {
        for j in 0..=i {
            let s: f64 = c[i * r + j] - (0..j).map(|k| l[i * r + k] * l[j * r + k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 1e-10 {
                    return None;
                }
                l[i * r + i] = s.sqrt();
            } else {
                l[i * r + j] = s / l[j * r + j];
            }
        }
    }
    Some(l)
}

/// Inverse of a lower-triangular matrix by forward substitution.
fn lower_inverse(l: &[f64], r: usize) -> Vec<f64> {
    let mut inv = vec![0.0; r * r];
    for col in 0..r {
        for i in col..r {
            let rhs = if i == col { 1.0 } else { 0.0 };
            let s: f64 = (col..i).map(|k| l[i * r + k] * inv[k * r + col]).sum();
            inv[i * r + col] = (rhs - s) / l[i * r + i];
        }
    }
    inv
}

pub fn download64<B: Backend>(b: &mut B, v: View) -> Result<Vec<f64>> {
    let mut h = vec![0f32; v.len];
    b.download(v, &mut h)?;
    Ok(h.into_iter().map(f64::from).collect())
}

pub fn upload64<B: Backend>(b: &mut B, v: View, x: &[f64]) -> Result<()> {
    let h: Vec<f32> = x.iter().map(|&x| x as f32).collect();
    b.upload(v, &h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::DType;
    use crate::util::rng::Rng;

    fn orthonormal_after(z: &[f32], n: usize, r: usize) -> Vec<f32> {
        let mut b = CpuBackend::new();
        let mut buf = |len| View::whole(b.alloc(len, DType::F32).unwrap(), len);
        let (zv, s) = (buf(n * r), QrScratch { tmp: buf(n * r), gram: buf(r * r), rinv: buf(r * r) });
        b.upload(zv, z).unwrap();
        orthonormalize(&mut b, zv, &s, n, r).unwrap();
        b.slice(zv).to_vec()
    }

    /// QᵀQ = I, and Q spans the columns of Z (Z = Q·(QᵀZ) exactly).
    fn assert_qr_of(z: &[f32], q: &[f32], n: usize, r: usize) {
        let dot = |a: &[f32], i: usize, b: &[f32], j: usize| (0..n).map(|k| a[k * r + i] as f64 * b[k * r + j] as f64).sum::<f64>();
        for i in 0..r {
            for j in 0..r {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot(q, i, q, j) - want).abs() < 1e-5, "QᵀQ[{i},{j}] = {}", dot(q, i, q, j));
            }
        }
        let coef: Vec<f64> = (0..r * r).map(|k| dot(q, k / r, z, k % r)).collect();
        let scale = z.iter().fold(0f32, |a, x| a.max(x.abs())) as f64;
        for k in 0..n {
            for j in 0..r {
                let back: f64 = (0..r).map(|i| q[k * r + i] as f64 * coef[i * r + j]).sum();
                assert!((back - z[k * r + j] as f64).abs() < 1e-4 * scale, "Z not in span of Q at ({k},{j})");
            }
        }
    }

    #[test]
    fn columns_of_very_different_scale_become_orthonormal_on_the_device_path() {
        let (n, r) = (300, 6);
        let mut z = vec![0f32; n * r];
        Rng::new(3).fill_normal(&mut z, 1.0);
        // Scales 1 .. 1e5 (COSMOS' basis update scales columns by eigenvalues).
        for k in 0..n {
            for j in 0..r {
                z[k * r + j] *= 10f32.powi(j as i32);
            }
        }
        let g: Vec<f64> = (0..r * r).map(|k| (0..n).map(|i| z[i * r + k / r] as f64 * z[i * r + k % r] as f64).sum()).collect();
        assert!(equilibrated_cholesky_inverse(&g, r).is_some(), "the device path must handle this case");
        assert_qr_of(&z, &orthonormal_after(&z, n, r), n, r);
    }

    #[test]
    fn rank_deficient_basis_falls_back_to_householder() {
        let (n, r) = (50, 4);
        let mut z = vec![0f32; n * r];
        Rng::new(4).fill_normal(&mut z, 1.0);
        for k in 0..n {
            z[k * r + 3] = z[k * r + 1]; // column 3 repeats column 1
        }
        let q = orthonormal_after(&z, n, r);
        for i in 0..r {
            let norm: f64 = (0..n).map(|k| (q[k * r + i] as f64).powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-5, "column {i} has norm² {norm}");
        }
    }

    #[test]
    fn inverse_factor_solves_the_gram_matrix() {
        let r = 5;
        let mut a = vec![0f32; 20 * r];
        Rng::new(5).fill_normal(&mut a, 1.0);
        let g: Vec<f64> = (0..r * r).map(|k| (0..20).map(|i| a[i * r + k / r] as f64 * a[i * r + k % r] as f64).sum()).collect();
        let rinv = equilibrated_cholesky_inverse(&g, r).unwrap();
        // R⁻ᵀ·G·R⁻¹ = I.
        for i in 0..r {
            for j in 0..r {
                let v: f64 = (0..r).flat_map(|p| (0..r).map(move |q| (p, q))).map(|(p, q)| rinv[p * r + i] * g[p * r + q] * rinv[q * r + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "({i},{j}) = {v}");
            }
        }
    }
}
