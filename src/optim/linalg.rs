//! Host-side dense linear algebra for the few SMALL factorizations the
//! matrix optimizers need: a thin Householder QR (the fallback of the device
//! CholeskyQR2 in `cholesky_qr`, for rank-deficient bases) and a symmetric
//! eigensolver for `r×r` matrices (COSMOS' Rayleigh–Ritz step). f64
//! throughout; row-major.

/// Orthonormal `Q` (`rows×cols`, row-major) of the thin QR of `a`
/// (`rows×cols`, rows ≥ cols), by Householder reflections: `Q` is
/// orthonormal even when `a` is rank deficient. Column signs follow LAPACK
/// (`R` may have negative diagonal entries); callers must not depend on
/// them.
pub fn qr_thin(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    assert!(rows >= cols && a.len() == rows * cols, "qr_thin: need rows >= cols");
    let mut r = a.to_vec();
    let mut reflectors: Vec<Option<Vec<f64>>> = Vec::with_capacity(cols);
    for k in 0..cols {
        let v = householder(&r, rows, cols, k);
        if let Some(v) = &v {
            reflect(&mut r, rows, cols, k, v, k);
        }
        reflectors.push(v);
    }
    // Q = H_0 · … · H_{cols-1} · I[:, :cols], applied back to front.
    let mut q = vec![0.0; rows * cols];
    for i in 0..cols {
        q[i * cols + i] = 1.0;
    }
    for (k, v) in reflectors.iter().enumerate().rev() {
        if let Some(v) = v {
            reflect(&mut q, rows, cols, k, v, 0);
        }
    }
    q
}

/// Unit Householder vector that zeroes column `k` of `r` below the diagonal
/// (None when that part of the column is already zero).
fn householder(r: &[f64], rows: usize, cols: usize, k: usize) -> Option<Vec<f64>> {
    let mut v: Vec<f64> = (k..rows).map(|i| r[i * cols + k]).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        return None;
    }
    let alpha = if v[0] >= 0.0 { -norm } else { norm };
    v[0] -= alpha;
    let vn = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if vn == 0.0 {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= vn);
    Some(v)
}

/// `M[k.., j0..] -= 2·v·(vᵀ·M[k.., j0..])` for the `rows×cols` matrix `m`.
fn reflect(m: &mut [f64], rows: usize, cols: usize, k: usize, v: &[f64], j0: usize) {
    for j in j0..cols {
        let dot: f64 = (k..rows).map(|i| v[i - k] * m[i * cols + j]).sum();
        for i in k..rows {
            m[i * cols + j] -= 2.0 * v[i - k] * dot;
        }
    }
}

/// Eigen-decomposition of the symmetric `n×n` matrix `a` by cyclic Jacobi
/// rotations. Returns eigenvalues in DESCENDING order and the matching
/// eigenvectors as the columns of a row-major `n×n` matrix.
pub fn sym_eig(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n);
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j] * a[i * n + j]).sum();
        if off <= 1e-30 * total.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                rotate(&mut a, &mut v, n, p, q);
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].partial_cmp(&a[i * n + i]).unwrap_or(std::cmp::Ordering::Equal));
    let vals = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vecs = vec![0.0; n * n];
    for (c, &src) in order.iter().enumerate() {
        for r in 0..n {
            vecs[r * n + c] = v[r * n + src];
        }
    }
    (vals, vecs)
}

/// One Jacobi rotation zeroing `a[p][q]`; accumulates it into `v`.
fn rotate(a: &mut [f64], v: &mut [f64], n: usize, p: usize, q: usize) {
    let apq = a[p * n + q];
    if apq == 0.0 {
        return;
    }
    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let t = if theta == 0.0 { 1.0 } else { t };
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    for k in 0..n {
        let (akp, akq) = (a[k * n + p], a[k * n + q]);
        a[k * n + p] = c * akp - s * akq;
        a[k * n + q] = s * akp + c * akq;
    }
    for k in 0..n {
        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
        a[p * n + k] = c * apk - s * aqk;
        a[q * n + k] = s * apk + c * aqk;
    }
    for k in 0..n {
        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
        v[k * n + p] = c * vkp - s * vkq;
        v[k * n + q] = s * vkp + c * vkq;
    }
}
