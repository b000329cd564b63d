//! Per-row / per-column sums of squares and scaling of a row-major matrix
//! (APOLLO's channel-wise scaling).

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use crate::backend::View;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "axis", source: include_str!("axis.cu") };

kernel! {
    /// One signature: a block per row, or 32 columns per block.
    struct AxisSumsq(FILE, AxisSumsqKernel { Rows: row_sumsq_k, Cols: col_sumsq_k }) { out: u64, dto: i32, x: u64, dt: i32, rows: i64, cols: i64 }
    struct ScaleAxis(FILE, scale_axis_k) { x: u64, dt: i32, s: u64, dts: i32, rows: i64, cols: i64, per_row: i32 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn axis_sum_squares(&mut self, out: View, x: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        self.begin()?;
        ensure!(x.len == rows * cols, "axis_sum_squares: x has {} values, not {rows}x{cols}", x.len);
        let want = if per_row { rows } else { cols };
        ensure!(out.len == want, "axis_sum_squares: out has {} values, needs {want}", out.len);
        let xd = self.dev(x)?;
        let o = self.out(out)?;
        if want == 0 {
            return Ok(());
        }
        let k = AxisSumsq { kernel: AxisSumsqKernel::Rows, out: o.ptr, dto: o.dt(), x: xd.ptr, dt: xd.dt(), rows: rows as i64, cols: cols as i64 };
        if per_row {
            let blocks = rows.min(self.sms as usize * 16) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            self.launch(cfg, k)
        } else {
            // 32 columns per block, 32 row lanes (COL_LANES in axis.cu).
            let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, 1, 1), block_dim: (32, 32, 1), shared_mem_bytes: 0 };
            self.launch(cfg, AxisSumsq { kernel: AxisSumsqKernel::Cols, ..k })
        }
    }

    pub(in crate::backend::cuda) fn scale_axis(&mut self, x: View, s: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        self.begin()?;
        ensure!(x.len == rows * cols, "scale_axis: x has {} values, not {rows}x{cols}", x.len);
        let want = if per_row { rows } else { cols };
        ensure!(s.len == want, "scale_axis: s has {} values, needs {want}", s.len);
        let sd = self.dev(s)?;
        let xd = self.out(x)?;
        if x.len == 0 {
            return Ok(());
        }
        let cfg = self.grid(x.len);
        self.launch(cfg, ScaleAxis { x: xd.ptr, dt: xd.dt(), s: sd.ptr, dts: sd.dt(), rows: rows as i64, cols: cols as i64, per_row: per_row as i32 })
    }
}
