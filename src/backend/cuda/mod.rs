//! CUDA backend: bf16 activations, fp32 master weights/grads/optimizer
//! state, cuBLASLt matmuls, NVRTC-compiled kernels (kernels/*.cu).
//!
//! Libraries (libcuda, libnvrtc, libcublasLt) are loaded at run time, so a
//! machine without CUDA still builds this code; `CudaBackend::new` returns
//! an error saying what is missing instead of panicking.
//!
//! Ops are queued on one stream; host-visible results (download,
//! sum_squares) synchronize. Files: `device` (setup, memory, shadows,
//! scratch), `ops_*` (one group of trait ops each), `matmul` (cuBLASLt),
//! `compiler`/`kernels` (NVRTC, launching), `loader` (library probing).

mod compiler;
mod device;
mod kernels;
mod loader;
mod matmul;
mod memory;
mod ops;

pub use compiler::compile_all as compile_all_kernels;
pub use device::CudaBackend;
/// For dist::nccl (raw device pointers of views).
pub(crate) use device::RawView;

pub use ops::attention::HEAD_DIMS;

/// Whether the CUDA attention kernels implement this head size ([`HEAD_DIMS`]).
pub fn supports_head_dim(d: usize) -> bool {
    HEAD_DIMS.contains(&d)
}

use crate::backend::{AdamSegment, AdamWArgs, AttnShape, Backend, BufId, DType, LionArgs, Mark, PrecondArgs, Rope, SignArgs, View};
use anyhow::Result;

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }
    /// e.g. "NVIDIA H200".
    fn device_name(&self) -> String {
        self.device_name.clone()
    }

    fn alloc(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        self.alloc_buf(len, dtype)
    }
    fn free(&mut self, buf: BufId) {
        self.free_buf(buf)
    }
    fn upload(&mut self, dst: View, src: &[f32]) -> Result<()> {
        self.upload_f32(dst, src)
    }
    fn download(&mut self, src: View, dst: &mut [f32]) -> Result<()> {
        self.download_f32(src, dst)
    }
    fn upload_u32(&mut self, dst: View, src: &[u32]) -> Result<()> {
        self.upload_ids(dst, src)
    }
    fn upload_u8(&mut self, dst: View, src: &[u8]) -> Result<()> {
        self.upload_bytes(dst, src)
    }
    fn download_u8(&mut self, src: View, dst: &mut [u8]) -> Result<()> {
        self.download_bytes(src, dst)
    }
    fn fill(&mut self, dst: View, value: f32) -> Result<()> {
        self.fill_op(dst, value)
    }
    fn copy(&mut self, dst: View, src: View) -> Result<()> {
        self.copy_op(dst, src)
    }
    fn synchronize(&mut self) -> Result<()> {
        self.sync()
    }
    fn peak_memory_bytes(&self) -> u64 {
        self.alloc.bytes_peak
    }
    fn live_memory_bytes(&self) -> u64 {
        self.alloc.bytes_now
    }
    fn mark(&mut self) -> Result<Mark> {
        self.record_mark()
    }
    fn elapsed_ms(&mut self, from: Mark, to: Mark) -> Result<f64> {
        self.mark_elapsed_ms(from, to)
    }
    fn clear_marks(&mut self) {
        self.marks.clear();
    }

    fn add(&mut self, out: View, a: View, b: View) -> Result<()> {
        self.add_op(out, a, b)
    }
    fn accumulate(&mut self, dst: View, src: View) -> Result<()> {
        self.accumulate_op(dst, src)
    }
    fn scale(&mut self, x: View, s: f32) -> Result<()> {
        self.scale_op(x, s)
    }
    fn sum_squares(&mut self, x: View) -> Result<f64> {
        self.sum_squares_op(x)
    }
    fn copy_strided(&mut self, dst: View, dst_stride: usize, src: View, src_stride: usize, rows: usize, cols: usize, accumulate: bool) -> Result<()> {
        self.copy_strided_op(dst, dst_stride, src, src_stride, rows, cols, accumulate)
    }
    fn axpby(&mut self, y: View, x: View, a: f32, b: f32) -> Result<()> {
        self.axpby_op(y, x, a, b)
    }
    fn muon_momentum(&mut self, m: View, u: View, g: View, mu: f32, grad_scale: f32) -> Result<f64> {
        self.muon_momentum_op(m, u, g, mu, grad_scale)
    }
    fn sign_compress(&mut self, bits: View, scales: View, x: View, block: usize) -> Result<()> {
        self.sign_compress_op(bits, scales, x, block)
    }
    fn sign_decompress(&mut self, out: View, bits: View, scales: View, block: usize, alpha: f32, beta: f32) -> Result<()> {
        self.sign_decompress_op(out, bits, scales, block, alpha, beta)
    }
    fn axis_sum_squares(&mut self, out: View, x: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        self.axis_sum_squares_op(out, x, rows, cols, per_row)
    }
    fn scale_axis(&mut self, x: View, s: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        self.scale_axis_op(x, s, rows, cols, per_row)
    }

    fn embed_fwd(&mut self, out: View, tokens: View, wte: View, wpe: Option<View>, seq: usize, c: usize) -> Result<()> {
        self.embed_fwd_op(out, tokens, wte, wpe, seq, c)
    }
    fn embed_bwd(&mut self, dwte: View, dwpe: Option<View>, dout: View, tokens: View, seq: usize, c: usize) -> Result<()> {
        self.embed_bwd_op(dwte, dwpe, dout, tokens, seq, c)
    }

    fn linear_fwd(&mut self, out: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> {
        self.linear_fwd_op(out, inp, w, bias, m, k, n)
    }
    fn linear_gelu_fwd(&mut self, pre: View, act: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> {
        self.linear_gelu_fwd_op(pre, act, inp, w, bias, (m, k, n))
    }
    fn linear_gelu_bwd(&mut self, dpre: View, dact: View, dw: View, dbias: Option<View>, dout: View, act: View, w: View, pre: View, m: usize, k: usize, n: usize) -> Result<()> {
        self.linear_gelu_bwd_op((dpre, dact), dw, dbias, (dout, act, w, pre), (m, k, n))
    }
    fn linear_bwd(&mut self, dinp: View, dw: View, dbias: Option<View>, dout: View, inp: View, w: View, m: usize, k: usize, n: usize) -> Result<()> {
        self.linear_bwd_op(dinp, dw, dbias, dout, inp, w, m, k, n)
    }
    fn gemm(&mut self, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> {
        self.gemm_op(c, a, b, (m, k, n), (trans_a, trans_b), alpha, beta, false)
    }
    fn gemm_bf16(&mut self, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> {
        self.gemm_op(c, a, b, (m, k, n), (trans_a, trans_b), alpha, beta, true)
    }
    fn gemm_bf16_plus(&mut self, d: View, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> {
        self.gemm_with_c_op(d, Some(c), a, b, (m, k, n), (trans_a, trans_b), alpha, beta, true)
    }

    fn layernorm_fwd(&mut self, out: View, mean: View, rstd: View, inp: View, w: View, b: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.layernorm_fwd_op(out, mean, rstd, inp, w, b, n, c, eps)
    }
    fn layernorm_bwd(&mut self, dinp: View, dw: View, db: View, dout: View, inp: View, w: View, mean: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.layernorm_bwd_op(dinp, dw, db, dout, inp, w, mean, rstd, n, c)
    }
    fn rmsnorm_fwd(&mut self, out: View, rstd: View, inp: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.rmsnorm_fwd_op(out, rstd, inp, w, n, c, eps)
    }
    fn rmsnorm_bwd(&mut self, dinp: View, dw: View, dout: View, inp: View, w: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.rmsnorm_bwd_op(dinp, dw, dout, inp, w, rstd, n, c)
    }
    fn add_rmsnorm_fwd(&mut self, sum: View, out: View, rstd: View, a: View, b: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        self.add_rmsnorm_fwd_op(sum, out, rstd, a, b, w, n, c, eps)
    }

    fn gelu_fwd(&mut self, out: View, inp: View) -> Result<()> {
        self.gelu_fwd_op(out, inp)
    }
    fn gelu_bwd(&mut self, dinp: View, inp: View, dout: View) -> Result<()> {
        self.gelu_bwd_op(dinp, inp, dout)
    }
    fn swiglu_fwd(&mut self, out: View, inp: View, n: usize, f: usize) -> Result<()> {
        self.swiglu_fwd_op(out, inp, n, f)
    }
    fn swiglu_bwd(&mut self, dinp: View, inp: View, dout: View, n: usize, f: usize) -> Result<()> {
        self.swiglu_bwd_op(dinp, inp, dout, n, f)
    }

    fn rope_fwd(&mut self, qkv: View, shape: AttnShape, rope: Rope) -> Result<()> {
        self.rope_op(qkv, shape, rope, 1.0)
    }
    fn rope_bwd(&mut self, dqkv: View, shape: AttnShape, rope: Rope) -> Result<()> {
        self.rope_op(dqkv, shape, rope, -1.0)
    }
    fn attention_fwd(&mut self, out: View, lse: View, qkv: View, shape: AttnShape) -> Result<()> {
        self.attention_fwd_op(out, lse, qkv, shape)
    }
    fn attention_bwd(&mut self, dqkv: View, dout: View, qkv: View, out: View, lse: View, shape: AttnShape) -> Result<()> {
        self.attention_bwd_op(dqkv, dout, qkv, out, lse, shape)
    }

    #[allow(clippy::too_many_arguments)]
    fn softmax_xent(&mut self, losses: View, dlogits: Option<View>, logits: View, targets: View, n: usize, v: usize, classes: usize, grad_scale: f32) -> Result<()> {
        self.softmax_xent_op(losses, dlogits, logits, targets, (n, v, classes), grad_scale)
    }
    fn adamw(&mut self, params: View, grads: View, m: View, v: View, args: AdamWArgs) -> Result<()> {
        self.adamw_op(params, grads, m, v, args)
    }
    fn adamw_segments(&mut self, params: BufId, grads: BufId, m: View, v: View, segs: &[AdamSegment], args: AdamWArgs) -> Result<()> {
        self.adamw_segments_op(params, grads, m, v, segs, args)
    }
    fn lion(&mut self, params: View, grads: View, m: View, args: LionArgs) -> Result<()> {
        self.lion_op(params, grads, m, args)
    }
    fn sign_descent(&mut self, params: View, grads: View, args: SignArgs) -> Result<()> {
        self.sign_descent_op(params, grads, args)
    }
    fn rms_precondition(&mut self, out: View, num: View, v: View, grads: View, args: PrecondArgs) -> Result<()> {
        self.rms_precondition_op(out, num, v, grads, args)
    }
    fn adamw8bit(&mut self, params: View, grads: View, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, args: AdamWArgs) -> Result<()> {
        self.adamw8bit_op(params, grads, m_codes, v_codes, m_absmax, v_absmax, args)
    }
    fn params_changed(&mut self, params: View) -> Result<()> {
        self.refresh_shadow(params)
    }
}
