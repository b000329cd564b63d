//! A backend wrapper that times every op: it forwards each call to the inner
//! backend, synchronizes, and adds the wall time to a per-op total. Used by
//! `ferrotron bench train|optim --profile` to show where a step's time goes.
//! Synchronizing after every op removes overlap between launches, so totals
//! are slightly higher than in an unprofiled step; the split is what matters.

use super::{AdamSegment, AdamWArgs, AttnShape, Backend, BufId, DType, LionArgs, Mark, PrecondArgs, Rope, SignArgs, View};
use anyhow::Result;
use std::collections::BTreeMap;
use std::time::Instant;

/// `m×k×n` and which operands are transposed (`Aᵀ`, `Bᵀ`), e.g. "2048x6144x2048 ABᵀ".
fn gemm_shape(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> String {
    format!("{m}x{k}x{n} {}{}", if ta { "Aᵀ" } else { "A" }, if tb { "Bᵀ" } else { "B" })
}

pub struct Profiled<B: Backend> {
    pub inner: B,
    /// op name (matmuls: with their m×k×n) → (calls, total milliseconds)
    totals: BTreeMap<String, (u64, f64)>,
}

impl<B: Backend> Profiled<B> {
    pub fn new(inner: B) -> Self {
        Profiled { inner, totals: BTreeMap::new() }
    }

    pub fn reset(&mut self) {
        self.totals.clear();
    }

    /// (op, calls, total ms), slowest first.
    pub fn report(&self) -> Vec<(String, u64, f64)> {
        let mut rows: Vec<_> = self.totals.iter().map(|(k, (n, ms))| (k.clone(), *n, *ms)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    fn time<T>(&mut self, op: &'static str, f: impl FnOnce(&mut B) -> Result<T>) -> Result<T> {
        self.time_keyed(op.to_string(), f)
    }

    fn time_keyed<T>(&mut self, key: String, f: impl FnOnce(&mut B) -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f(&mut self.inner)?;
        self.inner.synchronize()?;
        let entry = self.totals.entry(key).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += start.elapsed().as_secs_f64() * 1e3;
        Ok(out)
    }
}

impl<B: Backend> Backend for Profiled<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn device_name(&self) -> String {
        self.inner.device_name()
    }
    fn alloc(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        self.inner.alloc(len, dtype)
    }
    fn free(&mut self, buf: BufId) {
        self.inner.free(buf)
    }
    fn upload(&mut self, dst: View, src: &[f32]) -> Result<()> {
        self.time("upload", |b| b.upload(dst, src))
    }
    fn download(&mut self, src: View, dst: &mut [f32]) -> Result<()> {
        self.time("download", |b| b.download(src, dst))
    }
    fn upload_u32(&mut self, dst: View, src: &[u32]) -> Result<()> {
        self.time("upload", |b| b.upload_u32(dst, src))
    }
    fn upload_u8(&mut self, dst: View, src: &[u8]) -> Result<()> {
        self.time("upload", |b| b.upload_u8(dst, src))
    }
    fn download_u8(&mut self, src: View, dst: &mut [u8]) -> Result<()> {
        self.time("download", |b| b.download_u8(src, dst))
    }
    fn fill(&mut self, dst: View, value: f32) -> Result<()> {
        self.time("fill", |b| b.fill(dst, value))
    }
    fn copy(&mut self, dst: View, src: View) -> Result<()> {
        self.time("copy", |b| b.copy(dst, src))
    }
    fn synchronize(&mut self) -> Result<()> {
        self.inner.synchronize()
    }
    fn peak_memory_bytes(&self) -> u64 {
        self.inner.peak_memory_bytes()
    }
    fn live_memory_bytes(&self) -> u64 {
        self.inner.live_memory_bytes()
    }
    fn mark(&mut self) -> Result<Mark> {
        self.inner.mark()
    }
    fn elapsed_ms(&mut self, from: Mark, to: Mark) -> Result<f64> {
        self.inner.elapsed_ms(from, to)
    }
    fn clear_marks(&mut self) {
        self.inner.clear_marks()
    }
    fn add(&mut self, out: View, a: View, b2: View) -> Result<()> {
        self.time("add", |b| b.add(out, a, b2))
    }
    fn accumulate(&mut self, dst: View, src: View) -> Result<()> {
        self.time("accumulate", |b| b.accumulate(dst, src))
    }
    fn scale(&mut self, x: View, s: f32) -> Result<()> {
        self.time("scale", |b| b.scale(x, s))
    }
    fn sum_squares(&mut self, x: View) -> Result<f64> {
        self.time("sum_squares", |b| b.sum_squares(x))
    }
    fn copy_strided(&mut self, dst: View, dst_stride: usize, src: View, src_stride: usize, rows: usize, cols: usize, accumulate: bool) -> Result<()> {
        self.time("copy_strided", |b| b.copy_strided(dst, dst_stride, src, src_stride, rows, cols, accumulate))
    }
    fn axpby(&mut self, y: View, x: View, a: f32, b2: f32) -> Result<()> {
        self.time("axpby", |b| b.axpby(y, x, a, b2))
    }
    fn muon_momentum(&mut self, m: View, u: View, g: View, mu: f32, grad_scale: f32) -> Result<f64> {
        self.time("muon_momentum", |b| b.muon_momentum(m, u, g, mu, grad_scale))
    }
    fn sign_compress(&mut self, bits: View, scales: View, x: View, block: usize) -> Result<()> {
        self.time("sign_compress", |b| b.sign_compress(bits, scales, x, block))
    }
    fn sign_decompress(&mut self, out: View, bits: View, scales: View, block: usize, alpha: f32, beta: f32) -> Result<()> {
        self.time("sign_decompress", |b| b.sign_decompress(out, bits, scales, block, alpha, beta))
    }
    fn axis_sum_squares(&mut self, out: View, x: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        self.time("axis_sum_squares", |b| b.axis_sum_squares(out, x, rows, cols, per_row))
    }
    fn scale_axis(&mut self, x: View, s: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        self.time("scale_axis", |b| b.scale_axis(x, s, rows, cols, per_row))
    }
    fn embed_fwd(&mut self, out: View, tokens: View, wte: View, wpe: Option<View>, seq: usize, c: usize) -> Result<()> {
        self.time("embed_fwd", |b| b.embed_fwd(out, tokens, wte, wpe, seq, c))
    }
    fn embed_bwd(&mut self, dwte: View, dwpe: Option<View>, dout: View, tokens: View, seq: usize, c: usize) -> Result<()> {
        self.time("embed_bwd", |b| b.embed_bwd(dwte, dwpe, dout, tokens, seq, c))
    }
    fn linear_fwd(&mut self, out: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> {
        self.time_keyed(format!("linear_fwd {m}x{k}x{n}"), |b| b.linear_fwd(out, inp, w, bias, m, k, n))
    }
    fn linear_gelu_fwd(&mut self, pre: View, act: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> {
        self.time_keyed(format!("linear_gelu_fwd {m}x{k}x{n}"), |b| b.linear_gelu_fwd(pre, act, inp, w, bias, m, k, n))
    }
    fn linear_gelu_bwd(&mut self, dpre: View, dact: View, dw: View, dbias: Option<View>, dout: View, act: View, w: View, pre: View, m: usize, k: usize, n: usize) -> Result<()> {
        self.time_keyed(format!("linear_gelu_bwd {m}x{k}x{n}"), |b| b.linear_gelu_bwd(dpre, dact, dw, dbias, dout, act, w, pre, m, k, n))
    }
    fn linear_bwd(&mut self, dinp: View, dw: View, dbias: Option<View>, dout: View, inp: View, w: View, m: usize, k: usize, n: usize) -> Result<()> {
        self.time_keyed(format!("linear_bwd {m}x{k}x{n}"), |b| b.linear_bwd(dinp, dw, dbias, dout, inp, w, m, k, n))
    }
    fn gemm(&mut self, c: View, a: View, b2: View, m: usize, k: usize, n: usize, ta: bool, tb: bool, alpha: f32, beta: f32) -> Result<()> {
        self.time_keyed(format!("gemm {}", gemm_shape(m, k, n, ta, tb)), |b| b.gemm(c, a, b2, m, k, n, ta, tb, alpha, beta))
    }
    fn gemm_bf16(&mut self, c: View, a: View, b2: View, m: usize, k: usize, n: usize, ta: bool, tb: bool, alpha: f32, beta: f32) -> Result<()> {
        self.time_keyed(format!("gemm_bf16 {}", gemm_shape(m, k, n, ta, tb)), |b| b.gemm_bf16(c, a, b2, m, k, n, ta, tb, alpha, beta))
    }
    fn gemm_bf16_plus(&mut self, d: View, c: View, a: View, b2: View, m: usize, k: usize, n: usize, ta: bool, tb: bool, alpha: f32, beta: f32) -> Result<()> {
        self.time_keyed(format!("gemm_bf16 {} + C", gemm_shape(m, k, n, ta, tb)), |b| b.gemm_bf16_plus(d, c, a, b2, m, k, n, ta, tb, alpha, beta))
    }
    fn layernorm_fwd(&mut self, out: View, mean: View, rstd: View, inp: View, w: View, bias: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.time("layernorm_fwd", |b| b.layernorm_fwd(out, mean, rstd, inp, w, bias, n, c, eps))
    }
    fn layernorm_bwd(&mut self, dinp: View, dw: View, db: View, dout: View, inp: View, w: View, mean: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.time("layernorm_bwd", |b| b.layernorm_bwd(dinp, dw, db, dout, inp, w, mean, rstd, n, c))
    }
    fn rmsnorm_fwd(&mut self, out: View, rstd: View, inp: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.time("rmsnorm_fwd", |b| b.rmsnorm_fwd(out, rstd, inp, w, n, c, eps))
    }
    fn add_rmsnorm_fwd(&mut self, sum: View, out: View, rstd: View, a: View, b: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.time("add_rmsnorm_fwd", |bk| bk.add_rmsnorm_fwd(sum, out, rstd, a, b, w, n, c, eps))
    }
    fn rmsnorm_bwd(&mut self, dinp: View, dw: View, dout: View, inp: View, w: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.time("rmsnorm_bwd", |b| b.rmsnorm_bwd(dinp, dw, dout, inp, w, rstd, n, c))
    }
    fn gelu_fwd(&mut self, out: View, inp: View) -> Result<()> {
        self.time("gelu_fwd", |b| b.gelu_fwd(out, inp))
    }
    fn gelu_bwd(&mut self, dinp: View, inp: View, dout: View) -> Result<()> {
        self.time("gelu_bwd", |b| b.gelu_bwd(dinp, inp, dout))
    }
    fn swiglu_fwd(&mut self, out: View, inp: View, n: usize, f: usize) -> Result<()> {
        self.time("swiglu_fwd", |b| b.swiglu_fwd(out, inp, n, f))
    }
    fn swiglu_bwd(&mut self, dinp: View, inp: View, dout: View, n: usize, f: usize) -> Result<()> {
        self.time("swiglu_bwd", |b| b.swiglu_bwd(dinp, inp, dout, n, f))
    }
    fn rope_fwd(&mut self, qkv: View, shape: AttnShape, rope: Rope) -> Result<()> {
        self.time("rope_fwd", |b| b.rope_fwd(qkv, shape, rope))
    }
    fn rope_bwd(&mut self, dqkv: View, shape: AttnShape, rope: Rope) -> Result<()> {
        self.time("rope_bwd", |b| b.rope_bwd(dqkv, shape, rope))
    }
    fn attention_fwd(&mut self, out: View, lse: View, qkv: View, shape: AttnShape) -> Result<()> {
        self.time("attention_fwd", |b| b.attention_fwd(out, lse, qkv, shape))
    }
    fn attention_bwd(&mut self, dqkv: View, dout: View, qkv: View, out: View, lse: View, shape: AttnShape) -> Result<()> {
        self.time("attention_bwd", |b| b.attention_bwd(dqkv, dout, qkv, out, lse, shape))
    }
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent(&mut self, losses: View, dlogits: Option<View>, logits: View, targets: View, n: usize, v: usize, classes: usize, grad_scale: f32) -> Result<()> {
        self.time("softmax_xent", |b| b.softmax_xent(losses, dlogits, logits, targets, n, v, classes, grad_scale))
    }
    fn adamw(&mut self, params: View, grads: View, m: View, v: View, args: AdamWArgs) -> Result<()> {
        self.time("adamw", |b| b.adamw(params, grads, m, v, args))
    }
    fn adamw_segments(&mut self, params: BufId, grads: BufId, m: View, v: View, segs: &[AdamSegment], args: AdamWArgs) -> Result<()> {
        self.time("adamw", |b| b.adamw_segments(params, grads, m, v, segs, args))
    }
    fn lion(&mut self, params: View, grads: View, m: View, args: LionArgs) -> Result<()> {
        self.time("lion", |b| b.lion(params, grads, m, args))
    }
    fn sign_descent(&mut self, params: View, grads: View, args: SignArgs) -> Result<()> {
        self.time("sign_descent", |b| b.sign_descent(params, grads, args))
    }
    fn rms_precondition(&mut self, out: View, num: View, v: View, grads: View, args: PrecondArgs) -> Result<()> {
        self.time("rms_precondition", |b| b.rms_precondition(out, num, v, grads, args))
    }
    fn adamw8bit(&mut self, params: View, grads: View, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, args: AdamWArgs) -> Result<()> {
        self.time("adamw8bit", |b| b.adamw8bit(params, grads, m_codes, v_codes, m_absmax, v_absmax, args))
    }
    fn params_changed(&mut self, params: View) -> Result<()> {
        self.time("params_changed", |b| b.params_changed(params))
    }
}
