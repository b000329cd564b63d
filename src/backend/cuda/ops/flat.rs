//! Helpers of the ops on flat F32 ranges (optimizers, axpby): element
//! addresses, the float4 split, the bf16 shadow of parameters.

use super::super::device::CudaBackend;
use super::super::memory::{Dev, Elem};
use crate::backend::View;
use anyhow::{ensure, Result};

/// Address of element `k` of `d`.
pub(super) fn at(d: Dev, k: usize) -> u64 {
    d.ptr + (k * d.elem.size()) as u64
}

/// Groups of 4 elements the float4 kernel can take (the rest go to the
/// scalar kernel): `n / 4` when every buffer is F32 and 16-byte aligned and
/// the bf16 shadow (0 = none) is 8-byte aligned, else 0.
pub(super) fn vec4_groups(n: usize, devs: &[Dev], shadow: u64) -> usize {
    let ok = devs.iter().all(|d| d.elem == Elem::F32 && d.ptr.is_multiple_of(16)) && shadow.is_multiple_of(8);
    if ok { n / 4 } else { 0 }
}

/// Shadow pointer `k` elements on (0 stays 0: no shadow).
pub(super) fn shadow_at(shadow: u64, k: usize) -> u64 {
    if shadow == 0 { 0 } else { shadow + 2 * k as u64 }
}

impl CudaBackend {
    /// Resolve an F32 view an optimizer kernel writes (shadow goes stale).
    pub(super) fn f32_out(&mut self, v: View, what: &str) -> Result<Dev> {
        let d = self.out(v)?;
        ensure!(d.elem == Elem::F32, "{what} must be an F32 buffer (fp32 master weights / optimizer state), got {:?}", d.elem);
        Ok(d)
    }

    /// Resolve F32 params and their shadow pointer (0 = none); the kernel
    /// rewrites the shadow, so the range counts as fresh afterwards.
    pub(super) fn params_and_shadow(&mut self, params: View, op: &str) -> Result<(Dev, u64)> {
        let p = self.dev(params)?;
        ensure!(p.elem == Elem::F32, "{op}: params must be an F32 buffer (fp32 master weights), got {:?}", p.elem);
        Ok((p, self.shadow_for_write(params)?))
    }

    /// [`crate::backend::Backend::params_changed`]: the bf16 shadow (if
    /// any) of the changed range is brought up to date.
    pub(in crate::backend::cuda) fn params_changed(&mut self, params: View) -> Result<()> {
        self.refresh_shadow(params)
    }
}
