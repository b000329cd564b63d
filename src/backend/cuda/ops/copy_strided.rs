//! Strided 2-D copies (the layout transforms around Ulysses' all-to-alls).

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use crate::backend::View;
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "copy_strided", source: include_str!("copy_strided.cu") };

kernel! {
    /// Element by element, any dtypes, copy or accumulate.
    struct CopyStrided(FILE, copy_strided_k) {
        dst: u64, dtd: i32, ds: i64, src: u64, dts: i32, ss: i64, rows: i64, cols: i64, accumulate: i32,
    }
    /// 16-byte units; strides and row length in units.
    struct CopyStridedV16(FILE, copy_strided_v16_k) { dst: u64, ds: i64, src: u64, ss: i64, rows: i64, cols: i64 }
}

impl CudaBackend {
    /// [`crate::backend::Backend::copy_strided`]: 16-byte units when
    /// both sides have one dtype, no accumulation and every offset, stride
    /// and row length is a multiple of 16 bytes (bf16 heads of 64), else
    /// element by element.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn copy_strided(&mut self, dst: View, ds: usize, src: View, ss: usize, rows: usize, cols: usize, accumulate: bool) -> Result<()> {
        self.begin()?;
        crate::backend::cpu::check_strided("copy_strided", dst, ds, src, ss, rows, cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        ensure!(dst.buf != src.buf || dst.off + dst.len <= src.off || src.off + src.len <= dst.off, "copy_strided: dst and src overlap");
        let sd = self.dev(src)?;
        let dd = self.out(dst)?;
        let size = dd.elem.size();
        let aligned = |x: usize| (x * size).is_multiple_of(16);
        if !accumulate && sd.elem == dd.elem && dd.ptr.is_multiple_of(16) && sd.ptr.is_multiple_of(16) && aligned(ds) && aligned(ss) && aligned(cols) {
            let units = |x: usize| (x * size / 16) as i64;
            let cfg = self.grid(rows * cols * size / 16);
            return self.launch(cfg, CopyStridedV16 { dst: dd.ptr, ds: units(ds), src: sd.ptr, ss: units(ss), rows: rows as i64, cols: units(cols) });
        }
        let cfg = self.grid(rows * cols);
        let k = CopyStrided {
            dst: dd.ptr,
            dtd: dd.dt(),
            ds: ds as i64,
            src: sd.ptr,
            dts: sd.dt(),
            ss: ss as i64,
            rows: rows as i64,
            cols: cols as i64,
            accumulate: accumulate as i32,
        };
        self.launch(cfg, k)
    }
}
