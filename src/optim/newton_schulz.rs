//! Approximate orthogonalization by the quintic Newton–Schulz iteration of
//! Muon (Jordan et al. 2024): maps a matrix `G = U·S·Vᵀ` to roughly `U·Vᵀ`
//! (every singular value pushed into ~[0.7, 1.2]) with matrix multiplies
//! only, so it runs on the device as GEMMs alone (each iteration's sums in
//! the GEMM's `beta·C` term, read from a buffer of its own: no copies).
//!
//! For `X` of shape `[rows, cols]` with `rows <= cols` one iteration is
//! `A = X·Xᵀ; B = b·A + c·A²; X = a·X + B·X`. For a tall `X` (rows > cols)
//! the reference transposes, iterates, and transposes back; we instead
//! iterate on the small Gram matrix from the right, `A = Xᵀ·X;
//! X = a·X + X·B`, which is the same map without any transpose.

use super::TensorRef;
use crate::backend::{Backend, DType, View};
use anyhow::Result;

/// Muon's tuned coefficients (a, b, c).
pub const COEFFS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);
/// Iterations used by Muon and COSMOS.
pub const STEPS: usize = 5;
/// Added to the Frobenius norm before normalizing (reference value).
pub const NORM_EPS: f64 = 1e-7;

/// Scratch buffers for matrices up to `max_numel` elements whose smaller
/// side is at most `max_side`.
pub struct NsWorkspace {
    x: View,
    y: View,
    a: View,
    b: View,
}

impl NsWorkspace {
    /// Element counts of (x, y, a, b) for matrices up to `max_numel`
    /// elements with smaller side at most `max_side`.
    pub fn lens(max_numel: usize, max_side: usize) -> [usize; 4] {
        let sq = max_side * max_side;
        [max_numel, max_numel, sq, sq]
    }

    /// (max_numel, max_side) over a set of matrices.
    pub fn sizes_for(matrices: &[TensorRef]) -> (usize, usize) {
        let max_numel = matrices.iter().map(|t| t.numel()).max().unwrap_or(0);
        let max_side = matrices.iter().map(|t| t.rows().min(t.cols())).max().unwrap_or(0);
        (max_numel, max_side)
    }

    /// fp32 bytes of the workspace for these sizes.
    pub fn bytes_for(max_numel: usize, max_side: usize) -> u64 {
        4 * Self::lens(max_numel, max_side).iter().sum::<usize>() as u64
    }

    pub fn new<B: Backend>(bk: &mut B, max_numel: usize, max_side: usize) -> Result<Self> {
        let [x, y, a, b] = Self::lens(max_numel, max_side);
        let mut alloc = |len| -> Result<View> { Ok(View::whole(bk.alloc(len, DType::F32)?, len)) };
        Ok(NsWorkspace { x: alloc(x)?, y: alloc(y)?, a: alloc(a)?, b: alloc(b)? })
    }

    pub fn bytes(&self) -> u64 {
        4 * (self.x.len + self.y.len + self.a.len + self.b.len) as u64
    }

    /// Where the caller writes the `n`-element matrix to orthogonalize.
    pub fn input(&self, n: usize) -> View {
        self.x.sub(0, n)
    }

    /// Orthogonalize the `[rows, cols]` matrix in [`Self::input`]: normalize
    /// by its Frobenius norm (+1e-7), then `steps` iterations. Returns the
    /// view holding the result (inside the workspace).
    pub fn run<B: Backend>(&self, bk: &mut B, rows: usize, cols: usize, steps: usize) -> Result<View> {
        let sum_squares = bk.sum_squares(self.input(rows * cols))?;
        self.run_with_sum_squares(bk, rows, cols, steps, sum_squares)
    }

    /// [`Self::run`] when the caller already has the input's sum of squares
    /// (Muon's fused momentum computes it while writing the input).
    pub fn run_with_sum_squares<B: Backend>(&self, bk: &mut B, rows: usize, cols: usize, steps: usize, sum_squares: f64) -> Result<View> {
        let n = rows * cols;
        let (mut x, mut y) = (self.x.sub(0, n), self.y.sub(0, n));
        let norm = sum_squares.sqrt();
        bk.scale(x, (1.0 / (norm + NORM_EPS)) as f32)?;
        let s = rows.min(cols);
        let (a, b) = (self.a.sub(0, s * s), self.b.sub(0, s * s));
        let (ca, cb, cc) = COEFFS;
        let wide = rows <= cols;
        for _ in 0..steps {
            if wide {
                bk.gemm_bf16(a, x, x, rows, cols, rows, false, true, 1.0, 0.0)?; // A = X·Xᵀ
            } else {
                bk.gemm_bf16(a, x, x, cols, rows, cols, true, false, 1.0, 0.0)?; // A = Xᵀ·X
            }
            bk.gemm_bf16_plus(b, a, a, a, s, s, s, false, false, cc, cb)?; // B = c·A² + b·A
            if wide {
                bk.gemm_bf16_plus(y, x, b, x, rows, rows, cols, false, false, 1.0, ca)?; // Y = a·X + B·X
            } else {
                bk.gemm_bf16_plus(y, x, x, b, rows, cols, cols, false, false, 1.0, ca)?; // Y = a·X + X·B
            }
            std::mem::swap(&mut x, &mut y);
        }
        Ok(x)
    }
}
