//! 1-bit compression ops (1-bit Adam's compressed all-reduce): sign packing
//! with per-block scales, and scaled unpacking. Values are F32 buffers,
//! bits U8 buffers.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::{Dev, Elem};
use crate::backend::View;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "onebit", source: include_str!("onebit.cu") };

kernel! {
    /// A block per group of `block` values (grid-strided): scale, then bits.
    struct SignCompress(FILE, sign_compress_k) { bits: u64, scales: u64, x: u64, n: i64, block: i64 }
    struct SignDecompress(FILE, sign_decompress_k) { out: u64, bits: u64, scales: u64, n: i64, block: i64, alpha: f32, beta: f32 }
}

fn check(block: usize, n: usize, bits: &Dev, scales: &Dev, x: &Dev, op: &str) -> Result<()> {
    ensure!(block > 0 && block.is_multiple_of(8), "{op}: block = {block} must be a positive multiple of 8 (whole bytes of sign bits)");
    ensure!(bits.elem == Elem::U8, "{op}: bits must be a U8 buffer, got {:?}", bits.elem);
    ensure!(scales.elem == Elem::F32 && x.elem == Elem::F32, "{op}: values and scales must be F32 buffers");
    ensure!(bits.len == n.div_ceil(8), "{op}: bits has {} bytes, {n} values need {}", bits.len, n.div_ceil(8));
    ensure!(scales.len == n.div_ceil(block), "{op}: scales has {} values, {n} values in blocks of {block} need {}", scales.len, n.div_ceil(block));
    Ok(())
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn sign_compress(&mut self, bits: View, scales: View, x: View, block: usize) -> Result<()> {
        self.begin()?;
        let xd = self.dev(x)?;
        // U8 buffers have no bf16 shadow to invalidate (`out` is for floats).
        let (bd, sd) = (self.dev(bits)?, self.out(scales)?);
        check(block, x.len, &bd, &sd, &xd, "sign_compress")?;
        let nblocks = x.len.div_ceil(block);
        if nblocks == 0 {
            return Ok(());
        }
        let grid = nblocks.min(self.sms as usize * 32) as u32;
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch(cfg, SignCompress { bits: bd.ptr, scales: sd.ptr, x: xd.ptr, n: x.len as i64, block: block as i64 })
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn sign_decompress(&mut self, out: View, bits: View, scales: View, block: usize, alpha: f32, beta: f32) -> Result<()> {
        self.begin()?;
        let (bd, sd) = (self.dev(bits)?, self.dev(scales)?);
        let od = self.out(out)?;
        check(block, out.len, &bd, &sd, &od, "sign_decompress")?;
        if out.len == 0 {
            return Ok(());
        }
        let cfg = self.grid(out.len);
        self.launch(cfg, SignDecompress { out: od.ptr, bits: bd.ptr, scales: sd.ptr, n: out.len as i64, block: block as i64, alpha, beta })
    }
}
