//! `DType::Bf16` buffers on the CPU reference: bf16 gradients
//! (`train.grad_dtype = bf16`) stored as f32 values that are always
//! bf16-representable, so every op reads them as plain f32 slices.
//!
//! Only the ops that write gradients (upload, fill, copy, accumulate,
//! scale and the weight-gradient backward ops) may write such a buffer;
//! each computes in f32 exactly as for an F32 buffer and rounds its bf16
//! outputs to nearest even once when it returns. That is the CUDA
//! arithmetic: a weight-gradient GEMM adds its fp32 product to the bf16
//! gradient and rounds once (cuBLASLt, D in bf16, beta = 1); the norm,
//! bias and embedding kernels sum in fp32 and round into the bf16
//! gradient once. Any other op given a bf16 output is an error, so no
//! write can skip the rounding.

use super::{CpuBackend, CpuBuf};
use crate::backend::View;
use anyhow::{bail, Result};

/// `x` rounded to the nearest bf16 (ties to even), as an f32.
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits((super::bf16::to_bf16(x) as u32) << 16)
}

impl CpuBackend {
    /// Runs `op`, which may write the `Bf16` buffers among `outs`, then
    /// rounds those views to bf16.
    pub(super) fn writing_bf16<R>(&mut self, outs: &[Option<View>], op: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        let before = std::mem::replace(&mut self.bf16_writes, true);
        let out = op(self);
        self.bf16_writes = before;
        let out = out?;
        for v in outs.iter().flatten() {
            self.round_if_bf16(*v);
        }
        Ok(out)
    }

    /// An error when `out` is in a `Bf16` buffer and the running op does
    /// not round its outputs.
    pub(super) fn check_bf16_write(&self, out: View) -> Result<()> {
        if !self.bf16_writes && matches!(self.bufs.get(out.buf.0), Some(Some(CpuBuf::Bf16(_)))) {
            bail!("view {out:?} is a bf16 buffer (train.grad_dtype = bf16 gradients): only upload, fill, copy, accumulate, scale and the weight-gradient backward ops write bf16 buffers");
        }
        Ok(())
    }

    fn round_if_bf16(&mut self, v: View) {
        if let Some(Some(CpuBuf::Bf16(data))) = self.bufs.get_mut(v.buf.0) {
            // The op checked the view's range before writing it.
            data[v.off..v.off + v.len].iter_mut().for_each(|x| *x = round_to_bf16(*x));
        }
    }
}
