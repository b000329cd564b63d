//! Elementwise ops: fill, copy (with dtype conversion), add, accumulate,
//! scale; and the elementwise kernels other ops share (bias add, padding
//! copies, column sums, the fp32 -> bf16 shadow conversion).

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::{bf16x8_groups, Dev};
use cudarc::driver::LaunchConfig;
use crate::backend::View;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::result;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "elementwise", source: include_str!("elementwise.cu") };

kernel! {
    struct Fill(FILE, fill_k) { x: u64, dt: i32, n: i64, v: f32 }
    /// Copy with dtype conversion (also refreshes the bf16 shadow of weights).
    struct Convert(FILE, convert_k) { out: u64, dto: i32, inp: u64, dti: i32, n: i64 }
    /// The fp32 -> bf16 shadow conversion, 4 values per thread.
    struct F32ToBf16Vec4(FILE, f32_to_bf16_vec4_k) { out: u64, inp: u64, n4: i64 }
    struct Add(FILE, add_k) { out: u64, dto: i32, a: u64, dta: i32, b: u64, dtb: i32, n: i64 }
    struct AddBf16x8(FILE, add_bf16x8_k) { out: u64, a: u64, b: u64, n8: i64 }
    struct Accumulate(FILE, accumulate_k) { dst: u64, dtd: i32, src: u64, dts: i32, n: i64 }
    struct Scale(FILE, scale_k) { x: u64, dt: i32, n: i64, s: f32 }
    /// `out[r, c] += bias[c]` when the matmul's bias epilogue cannot be used.
    struct AddBias(FILE, add_bias_k) { out: u64, dto: i32, bias: u64, dtb: i32, rows: i64, cols: i32 }
    /// Deterministic column sums, stage 1: one partial per chunk of `rpc` rows.
    struct ColsumPartial(FILE, colsum_partial_k) { partial: u64, x: u64, dt: i32, rows: i64, cols: i32, rpc: i32 }
    /// Stage 2: `dst[c] += Σ partials` in chunk order.
    struct ColsumFinish(FILE, colsum_finish_k) { dst: u64, dt: i32, partial: u64, chunks: i32, cols: i32 }
    /// A `[rows, cols]` block between row pitches, zero-filling the padding.
    struct CopyPad(FILE, copy_pad_k) {
        dst: u64, dtd: i32, dst_ld: i64, dst_rows: i64, dst_cols: i32,
        src: u64, dts: i32, src_ld: i64, src_rows: i64, src_cols: i32,
    }
}

impl CudaBackend {
    /// `dst[c] += Σ_k partial[k, c]`, in chunk order: the second stage of
    /// every deterministic column sum (32 columns × 32 chunk lanes a block).
    pub(in crate::backend::cuda) fn colsum_finish(&mut self, dst: Dev, partial: u64, chunks: usize, cols: usize) -> Result<()> {
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, 1, 1), block_dim: (32, 32, 1), shared_mem_bytes: 0 };
        self.launch(cfg, ColsumFinish { dst: dst.ptr, dt: dst.dt(), partial, chunks: chunks as i32, cols: cols as i32 })
    }

    pub(in crate::backend::cuda) fn fill(&mut self, dst: View, value: f32) -> Result<()> {
        self.begin()?;
        let d = self.out(dst)?;
        let cfg = self.grid(d.len);
        self.launch(cfg, Fill { x: d.ptr, dt: d.dt(), n: d.len as i64, v: value })
    }

    pub(in crate::backend::cuda) fn copy(&mut self, dst: View, src: View) -> Result<()> {
        self.begin()?;
        ensure!(dst.len == src.len, "copy: lengths differ ({} vs {})", dst.len, src.len);
        let s = self.dev(src)?;
        let d = self.out(dst)?;
        if s.elem == d.elem {
            let bytes = d.len * d.elem.size();
            // SAFETY: both ranges bounds-checked; stream-ordered copy.
            return unsafe { result::memcpy_dtod_async(d.ptr, s.ptr, bytes, self.stream.cu_stream()) }
                .map_err(|e| anyhow!("copy: {e:?}"));
        }
        let cfg = self.grid(d.len);
        self.launch(cfg, Convert { out: d.ptr, dto: d.dt(), inp: s.ptr, dti: s.dt(), n: d.len as i64 })
    }

    pub(in crate::backend::cuda) fn add(&mut self, out: View, a: View, b: View) -> Result<()> {
        self.begin()?;
        ensure!(out.len == a.len && a.len == b.len, "add: lengths differ");
        let (a, b) = (self.dev(a)?, self.dev(b)?);
        let o = self.out(out)?;
        let n8 = bf16x8_groups(&[o, a, b]);
        if n8 > 0 {
            let cfg = self.grid(n8);
            self.launch(cfg, AddBf16x8 { out: o.ptr, a: a.ptr, b: b.ptr, n8: n8 as i64 })?;
        }
        let (done, rest) = (8 * n8, o.len - 8 * n8);
        if rest == 0 {
            return Ok(());
        }
        let cfg = self.grid(rest);
        self.launch(cfg, Add { out: o.at(done), dto: o.dt(), a: a.at(done), dta: a.dt(), b: b.at(done), dtb: b.dt(), n: rest as i64 })
    }

    pub(in crate::backend::cuda) fn accumulate(&mut self, dst: View, src: View) -> Result<()> {
        self.begin()?;
        ensure!(dst.len == src.len, "accumulate: lengths differ ({} vs {})", dst.len, src.len);
        let s = self.dev(src)?;
        let d = self.out(dst)?;
        let cfg = self.grid(d.len);
        self.launch(cfg, Accumulate { dst: d.ptr, dtd: d.dt(), src: s.ptr, dts: s.dt(), n: d.len as i64 })
    }

    pub(in crate::backend::cuda) fn scale(&mut self, x: View, s: f32) -> Result<()> {
        self.begin()?;
        let d = self.out(x)?;
        let cfg = self.grid(d.len);
        self.launch(cfg, Scale { x: d.ptr, dt: d.dt(), n: d.len as i64, s })
    }
}
