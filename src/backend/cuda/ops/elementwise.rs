//! Memory transfers, elementwise ops, sum of squares, embedding.

use super::super::device::CudaBackend;
use super::super::kernels::KArg::{self, I, L, P, U};
use super::super::memory::{bf16x8_groups, Elem};
use crate::backend::View;
use anyhow::{anyhow, bail, ensure, Result};
use cudarc::driver::{result, LaunchConfig};
use half::bf16;

impl CudaBackend {
    pub(in crate::backend::cuda) fn htod<T>(&mut self, dst: u64, src: &[T]) -> Result<()> {
        // SAFETY: dst was bounds-checked for src.len() elements of T; we
        // synchronize before `src` can go away.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(|e| anyhow!("upload: {e:?}"))?;
        self.sync()
    }

    fn dtoh<T>(&mut self, dst: &mut [T], src: u64) -> Result<()> {
        // SAFETY: src was bounds-checked; synchronize before reading dst.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(|e| anyhow!("download: {e:?}"))?;
        self.sync()
    }

    pub(in crate::backend::cuda) fn upload_f32(&mut self, dst: View, src: &[f32]) -> Result<()> {
        self.begin()?;
        ensure!(src.len() == dst.len, "upload: {} values into a view of {}", src.len(), dst.len);
        let d = self.out(dst)?;
        match d.elem {
            Elem::F32 => self.htod(d.ptr, src),
            // Round to nearest even, like the kernels' __float2bfloat16_rn.
            _ => self.htod(d.ptr, &src.iter().map(|&x| bf16::from_f32(x).to_bits()).collect::<Vec<u16>>()),
        }
    }

    pub(in crate::backend::cuda) fn upload_ids(&mut self, dst: View, src: &[u32]) -> Result<()> {
        self.begin()?;
        ensure!(src.len() == dst.len, "upload_u32: {} values into a view of {}", src.len(), dst.len);
        let d = self.dev(dst)?;
        ensure!(d.elem == Elem::U32, "upload_u32 needs a U32 buffer");
        self.htod(d.ptr, src)
    }

    pub(in crate::backend::cuda) fn upload_bytes(&mut self, dst: View, src: &[u8]) -> Result<()> {
        self.begin()?;
        ensure!(src.len() == dst.len, "upload_u8: {} host bytes into a view of {}", src.len(), dst.len);
        let d = self.dev(dst)?;
        ensure!(d.elem == Elem::U8, "upload_u8 needs a U8 buffer, got {:?}", d.elem);
        self.htod(d.ptr, src)
    }

    pub(in crate::backend::cuda) fn download_bytes(&mut self, src: View, dst: &mut [u8]) -> Result<()> {
        self.begin()?;
        ensure!(src.len == dst.len(), "download_u8: view of {} into {} host bytes", src.len, dst.len());
        let d = self.dev(src)?;
        ensure!(d.elem == Elem::U8, "download_u8 needs a U8 buffer, got {:?}", d.elem);
        self.dtoh(dst, d.ptr)
    }

    pub(in crate::backend::cuda) fn download_f32(&mut self, src: View, dst: &mut [f32]) -> Result<()> {
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

    pub(in crate::backend::cuda) fn fill_op(&mut self, dst: View, value: f32) -> Result<()> {
        self.begin()?;
        let d = self.out(dst)?;
        let cfg = self.grid(d.len);
        self.launch("elementwise", "fill_k", cfg, &[P(d.ptr), I(d.dt()), L(d.len as i64), KArg::F(value)])
    }

    pub(in crate::backend::cuda) fn copy_op(&mut self, dst: View, src: View) -> Result<()> {
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
        self.launch("elementwise", "convert_k", cfg, &[P(d.ptr), I(d.dt()), P(s.ptr), I(s.dt()), L(d.len as i64)])
    }

    pub(in crate::backend::cuda) fn add_op(&mut self, out: View, a: View, b: View) -> Result<()> {
        self.begin()?;
        ensure!(out.len == a.len && a.len == b.len, "add: lengths differ");
        let (a, b) = (self.dev(a)?, self.dev(b)?);
        let o = self.out(out)?;
        let n8 = bf16x8_groups(&[o, a, b]);
        if n8 > 0 {
            let cfg = self.grid(n8);
            self.launch("elementwise", "add_bf16x8_k", cfg, &[P(o.ptr), P(a.ptr), P(b.ptr), L(n8 as i64)])?;
        }
        let (done, rest) = (8 * n8, o.len - 8 * n8);
        if rest == 0 {
            return Ok(());
        }
        let cfg = self.grid(rest);
        self.launch("elementwise", "add_k", cfg, &[P(o.at(done)), I(o.dt()), P(a.at(done)), I(a.dt()), P(b.at(done)), I(b.dt()), L(rest as i64)])
    }

    pub(in crate::backend::cuda) fn accumulate_op(&mut self, dst: View, src: View) -> Result<()> {
        self.begin()?;
        ensure!(dst.len == src.len, "accumulate: lengths differ ({} vs {})", dst.len, src.len);
        let s = self.dev(src)?;
        let d = self.out(dst)?;
        let cfg = self.grid(d.len);
        self.launch("elementwise", "accumulate_k", cfg, &[P(d.ptr), I(d.dt()), P(s.ptr), I(s.dt()), L(d.len as i64)])
    }

    pub(in crate::backend::cuda) fn scale_op(&mut self, x: View, s: f32) -> Result<()> {
        self.begin()?;
        let d = self.out(x)?;
        let cfg = self.grid(d.len);
        self.launch("elementwise", "scale_k", cfg, &[P(d.ptr), I(d.dt()), L(d.len as i64), KArg::F(s)])
    }

    /// fp64 per-block partials on the device, summed here in a fixed order.
    pub(in crate::backend::cuda) fn sum_squares_op(&mut self, x: View) -> Result<f64> {
        self.begin()?;
        let d = self.dev(x)?;
        if d.len == 0 {
            return Ok(0.0);
        }
        let (cfg, partial) = self.partial_sums(d.len)?;
        if d.elem == Elem::F32 && d.ptr % 16 == 0 {
            self.launch("sum_squares", "sumsq_partial_f32x4_k", cfg, &[P(partial), P(d.ptr), L(d.len as i64)])?;
        } else {
            self.launch("sum_squares", "sumsq_partial_k", cfg, &[P(partial), P(d.ptr), I(d.dt()), L(d.len as i64)])?;
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

    /// [`crate::backend::Backend::copy_strided`]: 16-byte units when
    /// both sides have one dtype, no accumulation and every offset, stride
    /// and row length is a multiple of 16 bytes (bf16 heads of 64), else
    /// element by element.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn copy_strided_op(&mut self, dst: View, ds: usize, src: View, ss: usize, rows: usize, cols: usize, accumulate: bool) -> Result<()> {
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
            let args = [P(dd.ptr), L(units(ds)), P(sd.ptr), L(units(ss)), L(rows as i64), L(units(cols))];
            return self.launch("copy_strided", "copy_strided_v16_k", cfg, &args);
        }
        let cfg = self.grid(rows * cols);
        let args = [P(dd.ptr), I(dd.dt()), L(ds as i64), P(sd.ptr), I(sd.dt()), L(ss as i64), L(rows as i64), L(cols as i64), I(accumulate as i32)];
        self.launch("copy_strided", "copy_strided_k", cfg, &args)
    }

    pub(in crate::backend::cuda) fn embed_fwd_op(&mut self, out: View, tokens: View, wte: View, wpe: Option<View>, seq: usize, c: usize) -> Result<()> {
        self.begin()?;
        let rows = tokens.len;
        ensure!(out.len == rows * c && wte.len.is_multiple_of(c), "embed_fwd: out {} != tokens {} * c {}", out.len, rows, c);
        let t = self.dev(tokens)?;
        ensure!(t.elem == Elem::U32, "embed_fwd: tokens must be a U32 buffer");
        let w = self.dev(wte)?;
        let p = match wpe {
            Some(v) => {
                ensure!(v.len >= seq * c, "embed_fwd: wpe has {} values, needs seq*c = {}", v.len, seq * c);
                Some(self.dev(v)?)
            }
            None => None,
        };
        let o = self.out(out)?;
        if rows == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (pp, pd) = p.map_or((0, 0), |p| (p.ptr, p.dt()));
        let args = [P(o.ptr), I(o.dt()), P(t.ptr), P(w.ptr), I(w.dt()), P(pp), I(pd), I(seq as i32), I(c as i32), U((wte.len / c) as u32)];
        self.launch("embed", "embed_fwd_k", cfg, &args)
    }

    pub(in crate::backend::cuda) fn embed_bwd_op(&mut self, dwte: View, dwpe: Option<View>, dout: View, tokens: View, seq: usize, c: usize) -> Result<()> {
        self.begin()?;
        let rows = tokens.len;
        ensure!(dout.len == rows * c && dwte.len.is_multiple_of(c), "embed_bwd: dout {} != tokens {} * c {}", dout.len, rows, c);
        let (t, g) = (self.dev(tokens)?, self.dev(dout)?);
        ensure!(t.elem == Elem::U32, "embed_bwd: tokens must be a U32 buffer");
        let w = self.out(dwte)?;
        if w.elem != Elem::F32 {
            bail!("embed_bwd: dwte must be an F32 buffer (fp32 atomics accumulate it)");
        }
        if rows == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let args = [P(w.ptr), P(g.ptr), I(g.dt()), P(t.ptr), I(c as i32), U((dwte.len / c) as u32)];
        self.launch("embed", "embed_bwd_wte_k", cfg, &args)?;
        if let Some(pv) = dwpe {
            ensure!(pv.len >= seq * c, "embed_bwd: dwpe has {} values, needs seq*c = {}", pv.len, seq * c);
            let p = self.out(pv)?;
            let cfg = self.grid(seq * c);
            let args = [P(p.ptr), I(p.dt()), P(g.ptr), I(g.dt()), I(seq as i32), I(c as i32), L(rows as i64)];
            self.launch("embed", "embed_bwd_wpe_k", cfg, &args)?;
        }
        Ok(())
    }
}
