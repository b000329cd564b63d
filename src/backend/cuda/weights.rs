//! Weights in bf16 for kernels that read them as fp32. A ZeRO-3 unit is
//! gathered in the `Compute` dtype (bf16 here, parallel/zero.rs), so its
//! norm weights and biases arrive as bf16 buffers, while the norm kernels'
//! vector paths take fp32 weights. Widening them into scratch is exact
//! (every bf16 is an fp32), costs one small kernel per norm, and keeps the
//! fast path and its results: the same bits as the fp32 weights a plain
//! run holds when those are bf16-representable.

use super::device::CudaBackend;
use super::memory::{Dev, Elem};
use super::ops::elementwise::Convert;
use anyhow::Result;

impl CudaBackend {
    /// `d` itself unless it is bf16; then an fp32 copy in this op's scratch.
    pub(super) fn f32_weight(&mut self, d: Dev) -> Result<Dev> {
        if d.elem != Elem::Bf16 || d.len == 0 {
            return Ok(d);
        }
        let ptr = self.scratch(d.len * Elem::F32.size())?;
        let cfg = self.grid(d.len);
        self.launch(cfg, Convert { out: ptr, dto: Elem::F32 as i32, inp: d.ptr, dti: d.dt(), n: d.len as i64 })?;
        Ok(Dev { ptr, elem: Elem::F32, len: d.len })
    }
}
