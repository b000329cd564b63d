//! Sum of squares of a view (the global gradient norm): fp64 partials per
//! block on the device, summed on the host in a fixed order.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::Elem;
use crate::backend::View;
use anyhow::Result;
use cudarc::driver::LaunchConfig;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "sum_squares", source: include_str!("sum_squares.cu") };

kernel! {
    struct SumsqPartial(FILE, sumsq_partial_k) { partial: u64, x: u64, dt: i32, n: i64 }
    /// F32, 16-byte aligned: float4 loads.
    struct SumsqPartialF32x4(FILE, sumsq_partial_f32x4_k) { partial: u64, x: u64, n: i64 }
    /// bf16, 16-byte aligned: 8 values per load (bf16 gradients).
    struct SumsqPartialBf16x8(FILE, sumsq_partial_bf16x8_k) { partial: u64, x: u64, n: i64 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn sum_squares(&mut self, x: View) -> Result<f64> {
        self.begin()?;
        let d = self.dev(x)?;
        if d.len == 0 {
            return Ok(0.0);
        }
        let (cfg, partial) = self.partial_sums(d.len)?;
        if d.elem == Elem::F32 && d.ptr % 16 == 0 {
            self.launch(cfg, SumsqPartialF32x4 { partial, x: d.ptr, n: d.len as i64 })?;
        } else if d.is_bf16x8() {
            self.launch(cfg, SumsqPartialBf16x8 { partial, x: d.ptr, n: d.len as i64 })?;
        } else {
            self.launch(cfg, SumsqPartial { partial, x: d.ptr, dt: d.dt(), n: d.len as i64 })?;
        }
        self.sum_partials(cfg, partial)
    }

    /// Launch shape and fp64 scratch of a kernel that leaves one partial sum
    /// per block over `n` elements: up to 1024 blocks (enough to stream HBM;
    /// fixed, so the sum order does not depend on the GPU model).
    pub(in crate::backend::cuda) fn partial_sums(&mut self, n: usize) -> Result<(LaunchConfig, u64)> {
        let blocks = n.div_ceil(1024).min(1024);
        let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        Ok((cfg, self.scratch(blocks * 8)?))
    }

    /// The host's sum, in block order, of the partials a kernel launched
    /// with [`Self::partial_sums`] left (waits for it).
    pub(in crate::backend::cuda) fn sum_partials(&mut self, cfg: LaunchConfig, partial: u64) -> Result<f64> {
        let mut host = vec![0f64; cfg.grid_dim.0 as usize];
        self.dtoh(&mut host, partial)?;
        Ok(host.iter().sum())
    }
}
