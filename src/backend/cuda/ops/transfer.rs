//! Host <-> device copies: upload, download (bf16 rounded / widened on the
//! way) and the raw copies other ops use for their tables and partial sums.

use super::super::device::CudaBackend;
use super::super::memory::Elem;
use crate::backend::View;
use anyhow::{anyhow, bail, ensure, Result};
use cudarc::driver::result;
use half::bf16;

impl CudaBackend {
    pub(in crate::backend::cuda) fn htod<T>(&mut self, dst: u64, src: &[T]) -> Result<()> {
        // SAFETY: dst was bounds-checked for src.len() elements of T; we
        // synchronize before `src` can go away.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(|e| anyhow!("upload: {e:?}"))?;
        self.sync()
    }

    pub(in crate::backend::cuda) fn dtoh<T>(&mut self, dst: &mut [T], src: u64) -> Result<()> {
        // SAFETY: src was bounds-checked; synchronize before reading dst.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(|e| anyhow!("download: {e:?}"))?;
        self.sync()
    }

    pub(in crate::backend::cuda) fn upload(&mut self, dst: View, src: &[f32]) -> Result<()> {
        self.begin()?;
        ensure!(src.len() == dst.len, "upload: {} values into a view of {}", src.len(), dst.len);
        let d = self.out(dst)?;
        match d.elem {
            Elem::F32 => self.htod(d.ptr, src),
            // Round to nearest even, like the kernels' __float2bfloat16_rn,
            // a chunk at a time: a whole-model upload (an offloaded run's
            // initial bf16 weights, tens of GB) must not hold a bf16 copy
            // of the model in host memory besides the fp32 one.
            _ => {
                // Rounded on every core: one thread converting tens of GB
                // was most of an offloaded 27B run's start-up.
                use rayon::prelude::*;
                const CHUNK: usize = 1 << 26;
                let mut tmp: Vec<u16> = Vec::with_capacity(src.len().min(CHUNK));
                for (i, part) in src.chunks(CHUNK).enumerate() {
                    tmp.resize(part.len(), 0);
                    tmp.par_chunks_mut(1 << 16).zip(part.par_chunks(1 << 16)).for_each(|(out, inp)| {
                        for (o, &x) in out.iter_mut().zip(inp) {
                            *o = bf16::from_f32(x).to_bits();
                        }
                    });
                    self.htod(d.ptr + (i * CHUNK * std::mem::size_of::<u16>()) as u64, &tmp)?;
                }
                Ok(())
            }
        }
    }

    pub(in crate::backend::cuda) fn upload_u32(&mut self, dst: View, src: &[u32]) -> Result<()> {
        self.begin()?;
        ensure!(src.len() == dst.len, "upload_u32: {} values into a view of {}", src.len(), dst.len);
        let d = self.dev(dst)?;
        ensure!(d.elem == Elem::U32, "upload_u32 needs a U32 buffer");
        self.htod(d.ptr, src)
    }

    pub(in crate::backend::cuda) fn upload_u8(&mut self, dst: View, src: &[u8]) -> Result<()> {
        self.begin()?;
        ensure!(src.len() == dst.len, "upload_u8: {} host bytes into a view of {}", src.len(), dst.len);
        let d = self.dev(dst)?;
        ensure!(d.elem == Elem::U8, "upload_u8 needs a U8 buffer, got {:?}", d.elem);
        self.htod(d.ptr, src)
    }

    pub(in crate::backend::cuda) fn download_u8(&mut self, src: View, dst: &mut [u8]) -> Result<()> {
        self.begin()?;
        ensure!(src.len == dst.len(), "download_u8: view of {} into {} host bytes", src.len, dst.len());
        let d = self.dev(src)?;
        ensure!(d.elem == Elem::U8, "download_u8 needs a U8 buffer, got {:?}", d.elem);
        self.dtoh(dst, d.ptr)
    }

    pub(in crate::backend::cuda) fn download(&mut self, src: View, dst: &mut [f32]) -> Result<()> {
        self.begin()?;
        ensure!(src.len == dst.len(), "download: view of {} into {} values", src.len, dst.len());
        let d = self.dev(src)?;
        match d.elem {
            Elem::F32 => self.dtoh(dst, d.ptr),
            Elem::Bf16 => {
                let mut tmp = vec![0u16; dst.len()];
                self.dtoh(&mut tmp, d.ptr)?;
                dst.iter_mut().zip(tmp).for_each(|(o, b)| *o = bf16::from_bits(b).to_f32());
                Ok(())
            }
            Elem::U32 => {
                let mut tmp = vec![0u32; dst.len()];
                self.dtoh(&mut tmp, d.ptr)?;
                dst.iter_mut().zip(tmp).for_each(|(o, b)| *o = b as f32);
                Ok(())
            }
            // Like the CPU backend: codes are bytes, read them as bytes.
            Elem::U8 => bail!("download: view {src:?} is in a U8 buffer; use download_u8"),
        }
    }
}
