//! Matrix multiplies on top of `matrixmultiply::sgemm`.
//!
//! sgemm takes a row stride and a column stride per operand, so a transpose
//! is just swapped strides. Parallelism: the output is split into blocks of
//! whole rows, one single-threaded sgemm per block. Each output element is
//! computed by the same kernel over the same K order whatever the blocking,
//! so results do not depend on the number of threads.

use rayon::prelude::*;

/// Output rows per parallel task.
const ROWS: usize = 64;

/// A row-major-or-transposed matrix operand: pointer-free description used
/// to call sgemm on a row block. `rs`/`cs` are row/column strides.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Operand<'_> {
    /// Row-major `[rows, cols]` matrix, optionally read transposed.
    fn new(data: &[f32], cols: usize, transposed: bool) -> Operand<'_> {
        if transposed {
            Operand { data, rs: 1, cs: cols }
        } else {
            Operand { data, rs: cols, cs: 1 }
        }
    }
}

/// `c[rows, n] = alpha · a[row0.., k] · b[k, n] + beta · c` for one row block of
/// the output (rows `row0 .. row0 + c.len()/n` of `a`).
#[allow(clippy::too_many_arguments)]
fn sgemm_block(c: &mut [f32], row0: usize, a: Operand, b: Operand, k: usize, n: usize, alpha: f32, beta: f32) {
    let rows = c.len() / n;
    if rows == 0 {
        return;
    }
    if k == 0 {
        // Empty inner product: c = beta · c (and never read c when beta == 0).
        c.iter_mut().for_each(|x| *x = if beta == 0.0 { 0.0 } else { beta * *x });
        return;
    }
    // Bounds of the elements sgemm will touch (checked, so a caller bug panics
    // instead of reading out of range).
    let last_a = (row0 + rows - 1) * a.rs + (k - 1) * a.cs;
    let last_b = (k - 1) * b.rs + (n - 1) * b.cs;
    assert!(last_a < a.data.len() && last_b < b.data.len(), "sgemm operand out of range");
    // SAFETY: all accessed elements of a, b are in range (checked above), c is
    // exactly rows×n with row stride n, and c does not alias a or b (&mut).
    unsafe {
        matrixmultiply::sgemm(
            rows, k, n, alpha,
            a.data.as_ptr().add(row0 * a.rs), a.rs as isize, a.cs as isize,
            b.data.as_ptr(), b.rs as isize, b.cs as isize,
            beta, c.as_mut_ptr(), n as isize, 1,
        );
    }
}

/// Row-parallel `c[m,n] = alpha · A · B + beta · c`, A `[m,k]`, B `[k,n]`.
#[allow(clippy::too_many_arguments)]
fn par_sgemm(c: &mut [f32], a: Operand, b: Operand, m: usize, k: usize, n: usize, alpha: f32, beta: f32) {
    assert_eq!(c.len(), m * n);
    if n == 0 {
        return;
    }
    c.par_chunks_mut(ROWS * n)
        .enumerate()
        .for_each(|(i, cb)| sgemm_block(cb, i * ROWS, a, b, k, n, alpha, beta));
}

/// `out[M,N] = inp[M,K] · w[N,K]ᵀ (+ bias[N])`.
pub fn linear_fwd(out: &mut [f32], inp: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) {
    assert!(inp.len() == m * k && w.len() == n * k);
    // With a bias: start every row at the bias and accumulate (beta = 1).
    let beta = match bias {
        Some(b) => {
            out.par_chunks_mut(n.max(1)).for_each(|row| row.copy_from_slice(b));
            1.0
        }
        None => 0.0,
    };
    par_sgemm(out, Operand::new(inp, k, false), Operand::new(w, k, true), m, k, n, 1.0, beta);
}

/// Backward of `linear_fwd`:
///   dinp[M,K]  = dout[M,N] · w[N,K]          (overwrite)
///   dw[N,K]   += dout[M,N]ᵀ · inp[M,K]       (accumulate)
///   dbias[N]  += Σ_rows dout                 (accumulate)
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd(dinp: &mut [f32], dw: &mut [f32], dbias: Option<&mut [f32]>, dout: &[f32], inp: &[f32], w: &[f32], m: usize, k: usize, n: usize) {
    assert!(dinp.len() == m * k && dw.len() == n * k && dout.len() == m * n && inp.len() == m * k && w.len() == n * k);
    par_sgemm(dinp, Operand::new(dout, n, false), Operand::new(w, k, false), m, n, k, 1.0, 0.0);
    // dout read transposed: its [N, M] view has row stride 1, column stride N.
    par_sgemm(dw, Operand::new(dout, n, true), Operand::new(inp, k, false), n, m, k, 1.0, 1.0);
    if let Some(db) = dbias {
        bias_grad(db, dout, n);
    }
}

/// `db[j] += Σ_r dout[r, j]`, summing rows in order (deterministic). Each task
/// owns a block of columns and walks all rows.
fn bias_grad(db: &mut [f32], dout: &[f32], n: usize) {
    const COLS: usize = 256;
    db.par_chunks_mut(COLS).enumerate().for_each(|(blk, db)| {
        let j0 = blk * COLS;
        let mut acc = vec![0.0f32; db.len()];
        for row in dout.chunks_exact(n) {
            for (a, x) in acc.iter_mut().zip(&row[j0..j0 + db.len()]) {
                *a += x;
            }
        }
        db.iter_mut().zip(&acc).for_each(|(d, a)| *d += a);
    });
}

/// `c[M,N] = alpha · op(a) · op(b) + beta · c`; `op(a)` is `[M,K]` (a stored
/// `[K,M]` if `trans_a`), `op(b)` is `[K,N]` (b stored `[N,K]` if `trans_b`).
/// With `beta == 0`, `c` is not read (NaNs in it are overwritten, like BLAS).
#[allow(clippy::too_many_arguments)]
pub fn gemm(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) {
    assert!(a.len() == m * k && b.len() == k * n);
    let a = Operand::new(a, if trans_a { m } else { k }, trans_a);
    let b = Operand::new(b, if trans_b { k } else { n }, trans_b);
    par_sgemm(c, a, b, m, k, n, alpha, beta);
}
