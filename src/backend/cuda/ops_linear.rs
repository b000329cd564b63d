//! linear_fwd / linear_bwd / gemm on cuBLASLt.
//!
//! Row-major X[r,c] is column-major Xᵀ, so each row-major product is
//! computed as its transpose: out[M,N] = inp·wᵀ becomes outᵀ = w·inpᵀ, etc.
//! bf16 operands (F32 weights via their bf16 shadow), fp32 accumulation,
//! output in the output buffer's dtype; weight grads accumulate (beta = 1).

use super::device::CudaBackend;
use super::kernels::KArg::{I, L, P};
use super::matmul::{alignment, Problem};
use super::memory::{Dev, Elem};
use crate::backend::View;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    fn matmul(&mut self, ta: bool, tb: bool, mnk: (usize, usize, usize), ld: (usize, usize, usize), ops: (u64, u64, u64), ab: Elem, c: Elem, bias: Option<u64>, alpha: f32, beta: f32) -> Result<()> {
        let (m, n, k) = mnk;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (a, b, d) = ops;
        let p = Problem {
            ta,
            tb,
            m: m as u64,
            n: n as u64,
            k: k as u64,
            lda: ld.0 as i64,
            ldb: ld.1 as i64,
            ldc: ld.2 as i64,
            ab,
            c,
            bias: bias.is_some(),
            align: [alignment(a), alignment(b), alignment(d)],
        };
        let stream = self.stream.cu_stream() as *mut std::ffi::c_void;
        self.lt.run(p, a, b, d, bias.unwrap_or(0), alpha, beta, stream)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_fwd_op(&mut self, out: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == m * k && w.len == n * k && out.len == m * n, "linear_fwd: views do not match m={m} k={k} n={n}");
        let wp = self.bf16_operand(w)?;
        let ip = self.bf16_operand(inp)?;
        let o = self.out(out)?;
        // Bias epilogue when the bias can be had in the output's dtype and is
        // 16-byte aligned; otherwise a separate add kernel.
        let mut epi = None;
        if let Some(bv) = bias {
            ensure!(bv.len == n, "linear_fwd: bias has {} values, needs n = {n}", bv.len);
            let bd = self.dev(bv)?;
            let ptr = match (o.elem, bd.elem) {
                (Elem::Bf16, _) => Some(self.bf16_operand(bv)?),
                (Elem::F32, Elem::F32) => Some(bd.ptr),
                _ => None,
            };
            epi = ptr.filter(|p| p % 16 == 0);
        }
        if let Some(np) = padded_dim(m, n) {
            self.linear_fwd_padded(o, wp, ip, (m, k, n, np))?;
            epi = None;
        } else {
            self.matmul(true, false, (n, m, k), (k, k, n), (wp, ip, o.ptr), Elem::Bf16, o.elem, epi, 1.0, 0.0)?;
        }
        if let (Some(bv), None) = (bias, epi) {
            let bd = self.dev(bv)?;
            let cfg = self.grid(m * n);
            let args = [P(o.ptr), I(o.dt()), P(bd.ptr), I(bd.dt()), L(m as i64), I(n as i32)];
            self.launch("elementwise", "add_bias_k", cfg, &args)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_bwd_op(&mut self, dinp: View, dw: View, dbias: Option<View>, dout: View, inp: View, w: View, m: usize, k: usize, n: usize) -> Result<()> {
        self.begin()?;
        ensure!(
            inp.len == m * k && dinp.len == m * k && w.len == n * k && dw.len == n * k && dout.len == m * n,
            "linear_bwd: views do not match m={m} k={k} n={n}"
        );
        let wp = self.bf16_operand(w)?;
        let gp = self.bf16_operand(dout)?;
        let ip = self.bf16_operand(inp)?;
        let di = self.out(dinp)?;
        let dwd = self.out(dw)?;
        if let Some(np) = padded_dim(m, n) {
            self.linear_bwd_padded((di, dwd), (wp, gp, ip), (m, k, n, np))?;
        } else {
            // dinpᵀ[K,M] = w(col-major [K,N]) · doutᵀ([N,M]).
            self.matmul(false, false, (k, m, n), (k, n, k), (wp, gp, di.ptr), Elem::Bf16, di.elem, None, 1.0, 0.0)?;
            // dwᵀ[K,N] += inpᵀ([K,M]) · dout([M,N] = transposed col-major [N,M]).
            self.matmul(false, true, (k, n, m), (k, n, k), (ip, gp, dwd.ptr), Elem::Bf16, dwd.elem, None, 1.0, 1.0)?;
        }
        if let Some(bv) = dbias {
            ensure!(bv.len == n, "linear_bwd: dbias has {} values, needs n = {n}", bv.len);
            self.colsum_accumulate(bv, dout, m, n)?;
        }
        Ok(())
    }

    /// linear_fwd with `n` padded to `np`: w gets zero rows, the product goes
    /// to scratch, and its first `n` columns are copied out.
    fn linear_fwd_padded(&mut self, o: Dev, wp: u64, ip: u64, (m, k, n, np): (usize, usize, usize, usize)) -> Result<()> {
        let bf16 = Elem::Bf16 as i32;
        let wpad = self.scratch(np * k * 2)?;
        self.copy_pad((wpad, bf16, k, np, k), (wp, bf16, k, n, k))?;
        let tmp = self.scratch(m * np * o.elem.size())?;
        self.matmul(true, false, (np, m, k), (k, k, np), (wpad, ip, tmp), Elem::Bf16, o.elem, None, 1.0, 0.0)?;
        self.copy_pad((o.ptr, o.dt(), n, m, n), (tmp, o.dt(), np, m, n))
    }

    /// linear_bwd with `n` padded to `np`: dout gets zero columns and w zero
    /// rows (so dinp is exact), dW is formed in fp32 scratch and its first
    /// `n` rows are accumulated into dw.
    fn linear_bwd_padded(&mut self, (di, dwd): (Dev, Dev), (wp, gp, ip): (u64, u64, u64), (m, k, n, np): (usize, usize, usize, usize)) -> Result<()> {
        let bf16 = Elem::Bf16 as i32;
        let wpad = self.scratch(np * k * 2)?;
        self.copy_pad((wpad, bf16, k, np, k), (wp, bf16, k, n, k))?;
        let gpad = self.scratch(m * np * 2)?;
        self.copy_pad((gpad, bf16, np, m, np), (gp, bf16, n, m, n))?;
        self.matmul(false, false, (k, m, np), (k, np, k), (wpad, gpad, di.ptr), Elem::Bf16, di.elem, None, 1.0, 0.0)?;
        let dwp = self.scratch(np * k * 4)?;
        self.matmul(false, true, (k, np, m), (k, np, k), (ip, gpad, dwp), Elem::Bf16, Elem::F32, None, 1.0, 0.0)?;
        let cfg = self.grid(n * k);
        self.launch("elementwise", "accumulate_k", cfg, &[P(dwd.ptr), I(dwd.dt()), P(dwp), I(Elem::F32 as i32), L((n * k) as i64)])
    }

    /// `copy_pad_k` between (pointer, dtype, row pitch, rows, cols) blocks.
    fn copy_pad(&mut self, dst: (u64, i32, usize, usize, usize), src: (u64, i32, usize, usize, usize)) -> Result<()> {
        let cfg = self.grid(dst.3 * dst.4);
        let args = [P(dst.0), I(dst.1), L(dst.2 as i64), L(dst.3 as i64), I(dst.4 as i32), P(src.0), I(src.1), L(src.2 as i64), L(src.3 as i64), I(src.4 as i32)];
        self.launch("elementwise", "copy_pad_k", cfg, &args)
    }

    /// dst[c] += sum over rows of x[rows, cols]: deterministic two-stage sum.
    pub(super) fn colsum_accumulate(&mut self, dst: View, x: View, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let xd = self.dev(x)?;
        let d = self.out(dst)?;
        let rpc = rows.div_ceil(256).max(128);
        let chunks = rows.div_ceil(rpc);
        let partial = self.scratch(chunks * cols * 4)?;
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, chunks as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
        let args = [P(partial), P(xd.ptr), I(xd.dt()), L(rows as i64), I(cols as i32), I(rpc as i32)];
        self.launch("elementwise", "colsum_partial_k", cfg, &args)?;
        let cfg = self.grid(cols);
        self.launch("elementwise", "colsum_finish_k", cfg, &[P(d.ptr), I(d.dt()), P(partial), I(chunks as i32), I(cols as i32)])
    }

    /// c[M,N] = alpha op(a) op(b) + beta c. All-F32 runs in true fp32
    /// (CUBLAS_COMPUTE_32F, no TF32) unless `force_bf16`; any bf16 input (or
    /// `force_bf16`: F32 operands through their bf16 shadows) runs
    /// bf16 x bf16 -> fp32.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_op(&mut self, c: View, a: View, b: View, mkn: (usize, usize, usize), trans: (bool, bool), alpha: f32, beta: f32, force_bf16: bool) -> Result<()> {
        self.begin()?;
        let (m, k, n) = mkn;
        ensure!(a.len == m * k && b.len == k * n && c.len == m * n, "gemm: views do not match m={m} k={k} n={n}");
        let (ad, bd) = (self.dev(a)?, self.dev(b)?);
        let (ap, bp, ab) = if !force_bf16 && ad.elem == Elem::F32 && bd.elem == Elem::F32 && self.dev(c)?.elem == Elem::F32 {
            (ad.ptr, bd.ptr, Elem::F32)
        } else {
            (self.bf16_operand(a)?, self.bf16_operand(b)?, Elem::Bf16)
        };
        let cd = self.out(c)?;
        // cᵀ[N,M] = op(b)ᵀ · op(a)ᵀ, both read from row-major storage.
        let lda = if trans.1 { k } else { n };
        let ldb = if trans.0 { m } else { k };
        self.matmul(trans.1, trans.0, (n, m, k), (lda, ldb, n), (bp, ap, cd.ptr), ab, cd.elem, None, alpha, beta)
    }
}

/// The padded size of a big matmul dimension `n` that is not a multiple of
/// 64 (cuBLASLt's kernels run several times slower on such a dimension:
/// measured on the H200, the GPT-2 head took 7.7 ms at n = 50257 and about
/// 1.3 ms at 50304). Small problems are left alone: copies would dominate.
fn padded_dim(m: usize, n: usize) -> Option<usize> {
    (!n.is_multiple_of(64) && m * n >= 1 << 16).then(|| n.div_ceil(64) * 64)
}
