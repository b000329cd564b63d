//! linear_fwd / linear_bwd / gemm on cuBLASLt.
//!
//! Row-major X[r,c] is column-major Xᵀ, so each row-major product is
//! computed as its transpose: out[M,N] = inp·wᵀ becomes outᵀ = w·inpᵀ, etc.
//! bf16 operands (F32 weights via their bf16 shadow), fp32 accumulation,
//! output in the output buffer's dtype; weight grads accumulate (beta = 1):
//! into bf16 gradients (`train.grad_dtype = bf16`) cuBLASLt reads the bf16
//! C, adds it to the fp32 product and rounds once (one rounding per call:
//! per micro-batch, and per chunk of logit rows for the head). The bias
//! gradient then comes from the fp32 column sum, rounded once (the BGRADB
//! epilogue path is kept for fp32 gradients).

use super::super::device::CudaBackend;
use super::super::matmul::{alignment, Epilogue, Problem};
use super::super::memory::{Dev, Elem};
use super::elementwise::{Accumulate, AddBias, ColsumPartial, CopyPad};
use crate::backend::View;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    fn matmul(&mut self, ta: bool, tb: bool, mnk: (usize, usize, usize), ld: (usize, usize, usize), ops: (u64, u64, u64), ab: Elem, c: Elem, bias: Option<u64>, alpha: f32, beta: f32) -> Result<()> {
        self.matmul_with_c(ta, tb, mnk, ld, ops, ops.2, ab, c, bias, alpha, beta)
    }

    /// [`Self::matmul`] with `beta` scaling the buffer at `c_in` (D's type
    /// and layout) instead of D itself.
    #[allow(clippy::too_many_arguments)]
    fn matmul_with_c(&mut self, ta: bool, tb: bool, mnk: (usize, usize, usize), ld: (usize, usize, usize), ops: (u64, u64, u64), c_in: u64, ab: Elem, c: Elem, bias: Option<u64>, alpha: f32, beta: f32) -> Result<()> {
        let (m, n, _) = mnk;
        if m == 0 || n == 0 {
            return Ok(());
        }
        // The plan is chosen for D's alignment: C's must be as good.
        let less_aligned = if alignment(c_in) < alignment(ops.2) { c_in } else { ops.2 };
        let p = problem((ta, tb), mnk, ld, (ops.0, ops.1, less_aligned), (ab, c), if bias.is_some() { Epilogue::Bias } else { Epilogue::None });
        let stream = self.stream.cu_stream() as *mut std::ffi::c_void;
        self.lt.run_with_c(p, ops.0, ops.1, (c_in, ops.2), (bias.unwrap_or(0), 0), alpha, beta, stream)
    }

    /// `pre = inp·wᵀ (+ bias)`, `act = gelu(pre)` in one cuBLASLt call (GELU
    /// epilogue, `pre` as its auxiliary output) when the shapes need no
    /// padding, everything is bf16 and aligned and cuBLASLt has an
    /// algorithm; else the matmul and the GELU kernel.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn linear_gelu_fwd(&mut self, pre: View, act: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == m * k && w.len == n * k && pre.len == m * n && act.len == m * n, "linear_gelu_fwd: views do not match m={m} k={k} n={n}");
        let (pd, ad) = (self.dev(pre)?, self.dev(act)?);
        let plain = (padded_dim(k, m * k), padded_dim(n, m * n)) == (k, n);
        let bf16 = pd.is_bf16x8() && ad.is_bf16x8() && n.is_multiple_of(8);
        if plain && bf16 && m > 0 {
            let wp = self.bf16_operand(w)?;
            let ip = self.bf16_operand(inp)?;
            let bp = match bias {
                Some(bv) => {
                    ensure!(bv.len == n, "linear_gelu_fwd: bias has {} values, needs n = {n}", bv.len);
                    Some(self.bf16_operand(bv)?).filter(|p| p % 16 == 0)
                }
                None => None,
            };
            let epilogue = if bp.is_some() { Epilogue::GeluAuxBias } else { Epilogue::GeluAux };
            let p = problem((true, false), (n, m, k), (k, k, n), (wp, ip, ad.ptr), (Elem::Bf16, Elem::Bf16), epilogue);
            if (bias.is_none() || bp.is_some()) && self.lt.supports(&p) {
                self.out(pre)?;
                self.out(act)?;
                let stream = self.stream.cu_stream() as *mut std::ffi::c_void;
                return self.lt.run(p, wp, ip, ad.ptr, (bp.unwrap_or(0), pd.ptr), 1.0, 0.0, stream);
            }
        }
        self.linear_fwd(pre, inp, w, bias, m, k, n)?;
        self.gelu_fwd(act, pre)
    }
}

impl CudaBackend {
    /// [`crate::backend::Backend::linear_gelu_bwd`]: `dpre` straight from
    /// the dinp matmul with the GELU derivative in its epilogue (DGELU, `pre`
    /// as the auxiliary input) when nothing needs padding and everything is
    /// bf16 and aligned; else linear_bwd into `dact` and the GELU kernel.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn linear_gelu_bwd(&mut self, dpre: View, dact: View, dw: View, dbias: Option<View>, dout: View, act: View, w: View, pre: View, m: usize, k: usize, n: usize) -> Result<()> {
        self.begin()?;
        ensure!(
            dpre.len == m * k && dact.len == m * k && pre.len == m * k && act.len == m * k && w.len == n * k && dw.len == n * k && dout.len == m * n,
            "linear_gelu_bwd: views do not match m={m} k={k} n={n}"
        );
        let (dp, pr) = (self.dev(dpre)?, self.dev(pre)?);
        let plain = (padded_dim(k, m * k), padded_dim(n, m * n)) == (k, n) && m > 0;
        let bf16 = dp.is_bf16x8() && pr.is_bf16x8() && k.is_multiple_of(8);
        if plain && bf16 {
            let wp = self.bf16_operand(w)?;
            let gp = self.bf16_operand(dout)?;
            // dpreᵀ[K,M] = w(col-major [K,N]) · doutᵀ([N,M]), ⊙ gelu'(pre).
            let p = problem((false, false), (k, m, n), (k, n, k), (wp, gp, dp.ptr), (Elem::Bf16, Elem::Bf16), Epilogue::DGelu);
            if self.lt.supports(&p) {
                let ip = self.bf16_operand(act)?;
                let dwd = self.out(dw)?;
                self.out(dpre)?;
                let stream = self.stream.cu_stream() as *mut std::ffi::c_void;
                self.lt.run(p, wp, gp, dp.ptr, (0, pr.ptr), 1.0, 0.0, stream)?;
                return self.weight_and_bias_grads((ip, gp), dwd, dbias, dout, (m, k, n));
            }
        }
        self.linear_bwd(dact, dw, dbias, dout, act, w, m, k, n)?;
        self.gelu_bwd(dpre, pre, dact)
    }
}

/// A column-major cuBLASLt problem (see `matmul.rs`) with its pointers'
/// alignments.
fn problem((ta, tb): (bool, bool), (m, n, k): (usize, usize, usize), ld: (usize, usize, usize), (a, b, d): (u64, u64, u64), (ab, c): (Elem, Elem), epilogue: Epilogue) -> Problem {
    Problem {
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
        epilogue,
        align: [alignment(a), alignment(b), alignment(d)],
    }
}

impl CudaBackend {

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn linear_fwd(&mut self, out: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == m * k && w.len == n * k && out.len == m * n, "linear_fwd: views do not match m={m} k={k} n={n}");
        let wp = self.bf16_operand(w)?;
        let ip = self.bf16_operand(inp)?;
        let o = self.out(out)?;
        let mut epi = self.bias_epilogue(o, bias, n, "linear_fwd")?;
        let (kp, np) = (padded_dim(k, m * k), padded_dim(n, m * n));
        if (kp, np) != (k, n) {
            self.linear_fwd_padded(o, wp, ip, (m, k, n), (kp, np))?;
            epi = None;
        } else {
            self.matmul(true, false, (n, m, k), (k, k, n), (wp, ip, o.ptr), Elem::Bf16, o.elem, epi, 1.0, 0.0)?;
        }
        if let (Some(bv), None) = (bias, epi) {
            let bd = self.dev(bv)?;
            let cfg = self.grid(m * n);
            self.launch(cfg, AddBias { out: o.ptr, dto: o.dt(), bias: bd.ptr, dtb: bd.dt(), rows: m as i64, cols: n as i32 })?;
        }
        Ok(())
    }

    /// The bias pointer for cuBLASLt's bias epilogue when the bias can be
    /// had in the output's dtype and is 16-byte aligned; None otherwise
    /// (the caller adds it with a separate kernel).
    fn bias_epilogue(&mut self, o: Dev, bias: Option<View>, n: usize, op: &str) -> Result<Option<u64>> {
        let Some(bv) = bias else { return Ok(None) };
        ensure!(bv.len == n, "{op}: bias has {} values, needs n = {n}", bv.len);
        let bd = self.dev(bv)?;
        let ptr = match (o.elem, bd.elem) {
            (Elem::Bf16, _) => Some(self.bf16_operand(bv)?),
            (Elem::F32, Elem::F32) => Some(bd.ptr),
            _ => None,
        };
        Ok(ptr.filter(|p| p % 16 == 0))
    }

    /// `out = residual + inp·wᵀ (+ bias)` in one cuBLASLt call: the residual
    /// is C (beta = 1, C apart from D), added to the fp32 product (and the
    /// bias epilogue) before D's one rounding. This saves the separate add's
    /// three passes over the rows (llama-1b 4×2048: 0.83 ms a step). Padded
    /// shapes, a residual of another dtype than `out`, or a bias the
    /// epilogue cannot take go through linear_fwd and an accumulate.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn linear_residual_fwd(&mut self, out: View, inp: View, w: View, bias: Option<View>, residual: View, m: usize, k: usize, n: usize) -> Result<()> {
        self.begin()?;
        ensure!(
            inp.len == m * k && w.len == n * k && out.len == m * n && residual.len == m * n,
            "linear_residual_fwd: views do not match m={m} k={k} n={n}"
        );
        let (o, r) = (self.dev(out)?, self.dev(residual)?);
        let plain = (padded_dim(k, m * k), padded_dim(n, m * n)) == (k, n);
        let epi = if plain && r.elem == o.elem { self.bias_epilogue(o, bias, n, "linear_residual_fwd")? } else { None };
        if !plain || r.elem != o.elem || (bias.is_some() && epi.is_none()) {
            self.linear_fwd(out, inp, w, bias, m, k, n)?;
            return self.accumulate(out, residual);
        }
        let wp = self.bf16_operand(w)?;
        let ip = self.bf16_operand(inp)?;
        let o = self.out(out)?;
        self.matmul_with_c(true, false, (n, m, k), (k, k, n), (wp, ip, o.ptr), r.ptr, Elem::Bf16, o.elem, epi, 1.0, 1.0)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn linear_bwd(&mut self, dinp: View, dw: View, dbias: Option<View>, dout: View, inp: View, w: View, m: usize, k: usize, n: usize) -> Result<()> {
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
        let (kp, np) = (padded_dim(k, m * k), padded_dim(n, m * n));
        if (kp, np) != (k, n) {
            self.linear_bwd_padded((di, dwd), (wp, gp, ip), (m, k, n), (kp, np))?;
            if let Some(bv) = dbias {
                ensure!(bv.len == n, "linear_bwd: dbias has {} values, needs n = {n}", bv.len);
                self.colsum_accumulate(bv, dout, m, n)?;
            }
            return Ok(());
        }
        // dinpᵀ[K,M] = w(col-major [K,N]) · doutᵀ([N,M]).
        self.matmul(false, false, (k, m, n), (k, n, k), (wp, gp, di.ptr), Elem::Bf16, di.elem, None, 1.0, 0.0)?;
        self.weight_and_bias_grads((ip, gp), dwd, dbias, dout, (m, k, n))
    }

    /// `dw += doutᵀ · inp` and `dbias += Σ_rows dout` (unpadded shapes): the
    /// bias gradient comes out of the dW matmul's epilogue (BGRADB, into
    /// scratch, then accumulated) when dout is bf16 and cuBLASLt can, else a
    /// column sum.
    fn weight_and_bias_grads(&mut self, (ip, gp): (u64, u64), dwd: Dev, dbias: Option<View>, dout: View, (m, k, n): (usize, usize, usize)) -> Result<()> {
        // dwᵀ[K,N] += inpᵀ([K,M]) · dout([M,N] = transposed col-major [N,M]).
        let p = problem((false, true), (k, n, m), (k, n, k), (ip, gp, dwd.ptr), (Elem::Bf16, dwd.elem), Epilogue::BGradB);
        if let Some(bv) = dbias {
            ensure!(bv.len == n, "linear_bwd: dbias has {} values, needs n = {n}", bv.len);
            // The epilogue sums the bf16 operand: only exact when dout itself
            // is bf16 (an fp32 dout keeps the fp32 column sum; measured on the
            // H200: 1.5e-3 relative error through its bf16 copy vs 1e-4 allowed).
            let dout_bf16 = self.dev(dout)?.elem == Elem::Bf16;
            if dwd.elem == Elem::F32 && dout_bf16 && m > 0 && self.lt.supports(&p) {
                let partial = self.scratch(n * 4)?;
                let stream = self.stream.cu_stream() as *mut std::ffi::c_void;
                self.lt.run(p, ip, gp, dwd.ptr, (partial, 0), 1.0, 1.0, stream)?;
                let d = self.out(bv)?;
                let cfg = self.grid(n);
                return self.launch(cfg, Accumulate { dst: d.ptr, dtd: d.dt(), src: partial, dts: Elem::F32 as i32, n: n as i64 });
            }
        }
        self.matmul(false, true, (k, n, m), (k, n, k), (ip, gp, dwd.ptr), Elem::Bf16, dwd.elem, None, 1.0, 1.0)?;
        match dbias {
            Some(bv) => self.colsum_accumulate(bv, dout, m, n),
            None => Ok(()),
        }
    }

    /// A bf16 `[rows, cols]` operand as `[rows_p, cols_p]` with zero padding
    /// (a scratch copy), or itself when no padding is needed.
    fn padded_operand(&mut self, ptr: u64, (rows, cols): (usize, usize), (rows_p, cols_p): (usize, usize)) -> Result<u64> {
        if (rows, cols) == (rows_p, cols_p) {
            return Ok(ptr);
        }
        let bf16 = Elem::Bf16 as i32;
        let pad = self.scratch(rows_p * cols_p * 2)?;
        self.copy_pad((pad, bf16, cols_p, rows_p, cols_p), (ptr, bf16, cols, rows, cols))?;
        Ok(pad)
    }

    /// linear_fwd with `k` and/or `n` padded to `kp`, `np`: zero columns of
    /// the input and zero rows/columns of w leave the product exact; with a
    /// padded `n` the product goes to scratch and its first `n` columns are
    /// copied out.
    fn linear_fwd_padded(&mut self, o: Dev, wp: u64, ip: u64, (m, k, n): (usize, usize, usize), (kp, np): (usize, usize)) -> Result<()> {
        let wpad = self.padded_operand(wp, (n, k), (np, kp))?;
        let ipad = self.padded_operand(ip, (m, k), (m, kp))?;
        if np == n {
            return self.matmul(true, false, (n, m, kp), (kp, kp, n), (wpad, ipad, o.ptr), Elem::Bf16, o.elem, None, 1.0, 0.0);
        }
        let tmp = self.scratch(m * np * o.elem.size())?;
        self.matmul(true, false, (np, m, kp), (kp, kp, np), (wpad, ipad, tmp), Elem::Bf16, o.elem, None, 1.0, 0.0)?;
        self.copy_pad((o.ptr, o.dt(), n, m, n), (tmp, o.dt(), np, m, n))
    }

    /// linear_bwd with `k` and/or `n` padded to `kp`, `np`: dout gets zero
    /// columns, w zero rows and columns, the input zero columns, so dinp and
    /// dW are exact; dinp (if `k` is padded) and dW are formed in scratch and
    /// their unpadded blocks copied / accumulated out.
    fn linear_bwd_padded(&mut self, (di, dwd): (Dev, Dev), (wp, gp, ip): (u64, u64, u64), (m, k, n): (usize, usize, usize), (kp, np): (usize, usize)) -> Result<()> {
        let wpad = self.padded_operand(wp, (n, k), (np, kp))?;
        let gpad = self.padded_operand(gp, (m, n), (m, np))?;
        let ipad = self.padded_operand(ip, (m, k), (m, kp))?;
        if kp == k {
            self.matmul(false, false, (k, m, np), (k, np, k), (wpad, gpad, di.ptr), Elem::Bf16, di.elem, None, 1.0, 0.0)?;
        } else {
            let tmp = self.scratch(m * kp * di.elem.size())?;
            self.matmul(false, false, (kp, m, np), (kp, np, kp), (wpad, gpad, tmp), Elem::Bf16, di.elem, None, 1.0, 0.0)?;
            self.copy_pad((di.ptr, di.dt(), k, m, k), (tmp, di.dt(), kp, m, k))?;
        }
        let f32 = Elem::F32 as i32;
        let dwp = self.scratch(np * kp * 4)?;
        self.matmul(false, true, (kp, np, m), (kp, np, kp), (ipad, gpad, dwp), Elem::Bf16, Elem::F32, None, 1.0, 0.0)?;
        // dW's first n rows, first k columns, made contiguous when k is padded.
        let dw_block = if kp == k {
            dwp
        } else {
            let c = self.scratch(n * k * 4)?;
            self.copy_pad((c, f32, k, n, k), (dwp, f32, kp, n, k))?;
            c
        };
        let cfg = self.grid(n * k);
        self.launch(cfg, Accumulate { dst: dwd.ptr, dtd: dwd.dt(), src: dw_block, dts: f32, n: (n * k) as i64 })
    }

    /// `copy_pad_k` between (pointer, dtype, row pitch, rows, cols) blocks.
    fn copy_pad(&mut self, dst: (u64, i32, usize, usize, usize), src: (u64, i32, usize, usize, usize)) -> Result<()> {
        let cfg = self.grid(dst.3 * dst.4);
        let k = CopyPad {
            dst: dst.0,
            dtd: dst.1,
            dst_ld: dst.2 as i64,
            dst_rows: dst.3 as i64,
            dst_cols: dst.4 as i32,
            src: src.0,
            dts: src.1,
            src_ld: src.2 as i64,
            src_rows: src.3 as i64,
            src_cols: src.4 as i32,
        };
        self.launch(cfg, k)
    }

    /// dst[c] += sum over rows of x[rows, cols]: deterministic two-stage sum.
    fn colsum_accumulate(&mut self, dst: View, x: View, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let xd = self.dev(x)?;
        let d = self.out(dst)?;
        let rpc = rows.div_ceil(256).max(128);
        let chunks = rows.div_ceil(rpc);
        let partial = self.scratch(chunks * cols * 4)?;
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, chunks as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
        self.launch(cfg, ColsumPartial { partial, x: xd.ptr, dt: xd.dt(), rows: rows as i64, cols: cols as i32, rpc: rpc as i32 })?;
        self.colsum_finish(d, partial, chunks, cols)
    }

    /// c[M,N] = alpha op(a) op(b) + beta c. All-F32 runs in true fp32
    /// (CUBLAS_COMPUTE_32F, no TF32); any bf16 input runs bf16 x bf16 -> fp32.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn gemm(&mut self, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> {
        self.gemm_with_c(c, None, a, b, (m, k, n), (trans_a, trans_b), alpha, beta, false)
    }

    /// [`Self::gemm`] with F32 operands through their bf16 shadows.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn gemm_bf16(&mut self, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> {
        self.gemm_with_c(c, None, a, b, (m, k, n), (trans_a, trans_b), alpha, beta, true)
    }

    /// `d = alpha·op(a)·op(b) + beta·c` in bf16 operands, `c` only read.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn gemm_bf16_plus(&mut self, d: View, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> {
        self.gemm_with_c(d, Some(c), a, b, (m, k, n), (trans_a, trans_b), alpha, beta, true)
    }

    /// `c = alpha·op(a)·op(b) + beta·c_in` (`c_in` None: `c` itself). A
    /// `c_in` of another element type than `c` is copied into `c` first.
    /// `force_bf16`: F32 operands through their bf16 shadows.
    #[allow(clippy::too_many_arguments)]
    fn gemm_with_c(&mut self, c: View, c_in: Option<View>, a: View, b: View, mkn: (usize, usize, usize), trans: (bool, bool), alpha: f32, beta: f32, force_bf16: bool) -> Result<()> {
        self.begin()?;
        let (m, k, n) = mkn;
        ensure!(a.len == m * k && b.len == k * n && c.len == m * n, "gemm: views do not match m={m} k={k} n={n}");
        ensure!(c_in.is_none_or(|v| v.len == m * n), "gemm: the C input has {} values, needs m·n = {}", c_in.map_or(0, |v| v.len), m * n);
        let (ad, bd, c_elem) = (self.dev(a)?, self.dev(b)?, self.dev(c)?.elem);
        let (ap, bp, ab) = if !force_bf16 && ad.elem == Elem::F32 && bd.elem == Elem::F32 && c_elem == Elem::F32 {
            (ad.ptr, bd.ptr, Elem::F32)
        } else {
            (self.bf16_operand(a)?, self.bf16_operand(b)?, Elem::Bf16)
        };
        // cuBLASLt's C has D's type: another type is copied into D first.
        let c_in = match c_in {
            Some(v) if self.dev(v)?.elem != c_elem => {
                self.copy(c, v)?;
                None
            }
            other => other,
        };
        let cd = self.out(c)?;
        let c_in_ptr = match c_in {
            Some(v) => self.dev(v)?.ptr,
            None => cd.ptr,
        };
        // cᵀ[N,M] = op(b)ᵀ · op(a)ᵀ, both read from row-major storage.
        let lda = if trans.1 { k } else { n };
        let ldb = if trans.0 { m } else { k };
        self.matmul_with_c(trans.1, trans.0, (n, m, k), (lda, ldb, n), (bp, ap, cd.ptr), c_in_ptr, ab, cd.elem, None, alpha, beta)
    }
}

/// A matmul dimension `dim` rounded up to a multiple of 64 when it is not
/// one and the operand it shapes (`area` elements) is big: cuBLASLt's
/// kernels run several times slower on such a dimension (measured on the
/// H200: the GPT-2 head took 7.7 ms at n = 50257 and about 1.3 ms at 50304;
/// llama-1b's SwiGLU width 5461 is both a `k` and, as 2·5461, an `n`).
/// Small problems are left alone: the copies would dominate.
fn padded_dim(dim: usize, area: usize) -> usize {
    if !dim.is_multiple_of(64) && area >= 1 << 16 {
        dim.div_ceil(64) * 64
    } else {
        dim
    }
}
