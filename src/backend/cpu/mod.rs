//! fp32 CPU reference backend.
//!
//! Readable and deterministic rather than fast: every op is a pure function on
//! slices in its own file (llm.c style), and this file only turns [`View`]s
//! into slices and checks them. Parallel code (rayon) never reduces floats in
//! an order that depends on the thread count, so results are bit-identical
//! from run to run and machine to machine.
//!
//! Aliasing contract: within one op call, no output view may overlap another
//! output or any input view (the trait's rule), except where an op is
//! documented "in place" (then the in-place operand is passed once, as an
//! output). [`CpuBackend`] CHECKS this and returns an error instead of
//! creating aliasing `&mut` slices, so a bad call is never undefined behaviour.

pub mod adamw;
pub mod adamw8bit;
#[cfg(target_arch = "x86_64")]
mod adamw8bit_x86;
pub mod attention;
mod deferred_copies;
pub mod axis;
pub mod bf16;
mod bf16_buffers;
pub mod elementwise;
pub mod embed;
pub mod gelu;
pub mod isa;
pub mod layernorm;
pub mod lion;
pub mod matmul;
pub mod onebit;
pub mod precondition;
pub mod quant_search;
pub mod rmsnorm;
pub mod rope;
pub mod sign_descent;
pub mod swiglu;
pub mod xent;

use super::{AdamWArgs, AttnShape, Backend, BufId, DType, LionArgs, Mark, PrecondArgs, Rope, SignArgs, View, QUANT_BLOCK};
use anyhow::{bail, ensure, Context, Result};

/// Storage of one buffer. `DType::Compute` is stored as f32 on CPU;
/// `DType::Bf16` as f32 values that are always bf16-representable
/// (bf16_buffers.rs).
enum CpuBuf {
    F32(Vec<f32>),
    Bf16(Vec<f32>),
    U32(Vec<u32>),
    U8(Vec<u8>),
}

impl CpuBuf {
    fn bytes(&self) -> u64 {
        match self {
            CpuBuf::F32(v) | CpuBuf::Bf16(v) => 4 * v.len() as u64,
            CpuBuf::U32(v) => 4 * v.len() as u64,
            CpuBuf::U8(v) => v.len() as u64,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            CpuBuf::F32(_) => "an f32",
            CpuBuf::Bf16(_) => "a bf16",
            CpuBuf::U32(_) => "a u32",
            CpuBuf::U8(_) => "a u8",
        }
    }
}

/// The fp32 reference backend. Buffer ids are never reused, so a stale id
/// gives an error rather than silently naming a newer buffer.
#[derive(Default)]
pub struct CpuBackend {
    bufs: Vec<Option<CpuBuf>>,
    live_bytes: u64,
    peak_bytes: u64,
    /// Host clock readings of `mark` (ops run synchronously here).
    marks: Vec<std::time::Instant>,
    /// Test twin of the CUDA copy stream (deferred_copies.rs); None: off.
    deferred: Option<deferred_copies::Deferred>,
    /// Whether the op running now may write `Bf16` buffers
    /// (bf16_buffers.rs: it rounds them when it returns).
    bf16_writes: bool,
}

/// Output slices, input slices and token-id slices of one op call.
type Io<'a, const O: usize, const I: usize, const U: usize> =
    ([Option<&'a mut [f32]>; O], [Option<&'a [f32]>; I], [&'a [u32]; U]);

/// Output and input slices of an op call whose views are all present.
type Req<'a, const O: usize, const I: usize> = ([&'a mut [f32]; O], [&'a [f32]; I]);

fn check_range(v: View, buf_len: usize) -> Result<()> {
    match v.off.checked_add(v.len) {
        Some(end) if end <= buf_len => Ok(()),
        _ => bail!("view {v:?} is out of range of buffer {} ({buf_len} elements)", v.buf.0),
    }
}

fn overlaps(a: View, b: View) -> bool {
    a.buf == b.buf && a.len > 0 && b.len > 0 && a.off < b.off + b.len && b.off < a.off + a.len
}

/// Product of dimensions, as an error (not a panic or wrap) on overflow.
fn numel(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .with_context(|| format!("shape {dims:?} overflows usize"))
}

fn expect_len(v: View, dims: &[usize], what: &str) -> Result<()> {
    let want = numel(dims)?;
    ensure!(v.len == want, "{what}: view has {} elements, expected {want} (shape {dims:?})", v.len);
    Ok(())
}

fn check_attn(s: &AttnShape) -> Result<()> {
    ensure!(s.seq > 0 && s.kv_heads > 0 && s.head_dim > 0, "attention: seq, kv_heads and head_dim must be > 0 ({s:?})");
    ensure!(s.heads.is_multiple_of(s.kv_heads), "attention: heads ({}) must be a multiple of kv_heads ({})", s.heads, s.kv_heads);
    Ok(())
}

/// The shape checks of [`Backend::copy_strided`] (shared with the CUDA backend).
pub fn check_strided(what: &str, dst: View, dst_stride: usize, src: View, src_stride: usize, rows: usize, cols: usize) -> Result<()> {
    ensure!(cols <= dst_stride && cols <= src_stride, "{what}: {cols} columns do not fit the strides (dst {dst_stride}, src {src_stride})");
    let (dl, sl) = (super::strided_len(rows, cols, dst_stride), super::strided_len(rows, cols, src_stride));
    ensure!(dst.len == dl && src.len == sl, "{what}: {rows}×{cols} at strides {dst_stride}/{src_stride} spans {dl}/{sl} elements, views have {}/{}", dst.len, src.len);
    Ok(())
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validated f32 pointer to the start of `v`. `Vec::as_mut_ptr` is
    /// documented not to invalidate earlier pointers into the same Vec, so
    /// several views of one buffer can be resolved one after another.
    fn ptr_f32(&mut self, v: View) -> Result<*mut f32> {
        match self.bufs.get_mut(v.buf.0) {
            Some(Some(CpuBuf::F32(data) | CpuBuf::Bf16(data))) => {
                check_range(v, data.len())?;
                // SAFETY: off <= len was just checked (one-past-the-end is allowed).
                Ok(unsafe { data.as_mut_ptr().add(v.off) })
            }
            Some(Some(other)) => bail!("view {v:?}: expected an f32 buffer, got {} buffer", other.kind()),
            _ => bail!("view {v:?}: buffer {} does not exist (never allocated, or freed)", v.buf.0),
        }
    }

    /// Validated u8 pointer to the start of `v` (see [`Self::ptr_f32`]).
    fn ptr_u8(&mut self, v: View) -> Result<*mut u8> {
        match self.bufs.get_mut(v.buf.0) {
            Some(Some(CpuBuf::U8(data))) => {
                check_range(v, data.len())?;
                // SAFETY: off <= len was just checked.
                Ok(unsafe { data.as_mut_ptr().add(v.off) })
            }
            Some(Some(other)) => bail!("view {v:?}: expected a u8 buffer, got {} buffer", other.kind()),
            _ => bail!("view {v:?}: buffer {} does not exist (never allocated, or freed)", v.buf.0),
        }
    }

    fn ptr_u32(&self, v: View) -> Result<*const u32> {
        match self.bufs.get(v.buf.0) {
            Some(Some(CpuBuf::U32(data))) => {
                check_range(v, data.len())?;
                // SAFETY: off <= len was just checked.
                Ok(unsafe { data.as_ptr().add(v.off) })
            }
            Some(Some(other)) => bail!("view {v:?}: expected a u32 buffer, got {} buffer", other.kind()),
            _ => bail!("view {v:?}: buffer {} does not exist (never allocated, or freed)", v.buf.0),
        }
    }

    /// Resolve the views of one op call into slices: outputs (`&mut`), f32
    /// inputs and u32 inputs. Checks buffer existence, dtype, range, and that
    /// no output overlaps any other view. This is the only place that makes
    /// slices from raw pointers.
    fn io<const O: usize, const I: usize, const U: usize>(
        &mut self,
        outs: [Option<View>; O],
        ins: [Option<View>; I],
        ids: [View; U],
    ) -> Result<Io<'_, O, I, U>> {
        for (i, o) in outs.iter().enumerate().filter_map(|(i, o)| o.map(|o| (i, o))) {
            let others = outs.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, v)| v);
            for other in others.chain(ins.iter()).flatten() {
                ensure!(!overlaps(o, *other), "output view {o:?} overlaps view {other:?} (only in-place ops may alias)");
            }
            self.check_bf16_write(o)?;
        }
        let mut po = [None; O];
        for (p, v) in po.iter_mut().zip(outs) {
            *p = v.map(|v| self.ptr_f32(v)).transpose()?;
        }
        let mut pi = [None; I];
        for (p, v) in pi.iter_mut().zip(ins) {
            *p = v.map(|v| self.ptr_f32(v)).transpose()?;
        }
        let mut pu = [std::ptr::null(); U];
        for (p, v) in pu.iter_mut().zip(ids) {
            *p = self.ptr_u32(v)?;
        }
        // SAFETY: every pointer is in range for its view's length; outputs are
        // pairwise disjoint and disjoint from inputs (checked above); the
        // slices borrow `self` mutably, so no buffer can be freed or resized
        // while they live. Inputs may overlap each other (shared reads).
        let outs_s = std::array::from_fn(|i| {
            po[i].map(|p| unsafe { std::slice::from_raw_parts_mut(p, outs[i].unwrap().len) })
        });
        let ins_s = std::array::from_fn(|i| {
            pi[i].map(|p| unsafe { std::slice::from_raw_parts(p as *const f32, ins[i].unwrap().len) })
        });
        let ids_s = std::array::from_fn(|i| unsafe { std::slice::from_raw_parts(pu[i], ids[i].len) });
        Ok((outs_s, ins_s, ids_s))
    }

    /// Like [`Self::io`] for calls whose views are all present.
    fn req<const O: usize, const I: usize>(&mut self, outs: [View; O], ins: [View; I]) -> Result<Req<'_, O, I>> {
        let (o, i, []) = self.io(outs.map(Some), ins.map(Some), [])?;
        Ok((o.map(|x| x.expect("present view")), i.map(|x| x.expect("present view"))))
    }

    /// Read access to an f32 view, as an error on a bad view.
    pub fn try_slice(&self, v: View) -> Result<&[f32]> {
        match self.bufs.get(v.buf.0) {
            Some(Some(CpuBuf::F32(data) | CpuBuf::Bf16(data))) => {
                check_range(v, data.len())?;
                Ok(&data[v.off..v.off + v.len])
            }
            Some(Some(other)) => bail!("view {v:?}: expected an f32 buffer, got {} buffer", other.kind()),
            _ => bail!("view {v:?}: buffer {} does not exist", v.buf.0),
        }
    }

    /// Read access to an f32 view (for tests and host-side code). Panics on a bad view.
    pub fn slice(&self, v: View) -> &[f32] {
        self.try_slice(v).unwrap()
    }

    /// Bytes currently allocated (all live buffers).
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Read access to a u8 view. Panics on a bad view.
    pub fn slice_u8(&self, v: View) -> &[u8] {
        self.slice_u8_checked(v).unwrap()
    }

    /// Lends `data` to the backend as an f32 buffer, without copying (the
    /// offloaded optimizer steps on gradients that arrived in a host
    /// vector); [`CpuBackend::take_f32`] hands it back.
    pub fn adopt_f32(&mut self, data: Vec<f32>) -> BufId {
        let buf = CpuBuf::F32(data);
        self.live_bytes += buf.bytes();
        self.peak_bytes = self.peak_bytes.max(self.live_bytes);
        self.bufs.push(Some(buf));
        BufId(self.bufs.len() - 1)
    }

    /// Frees an f32 buffer and returns its contents.
    pub fn take_f32(&mut self, buf: BufId) -> Result<Vec<f32>> {
        match self.bufs.get_mut(buf.0).and_then(Option::take) {
            Some(CpuBuf::F32(v)) => {
                self.live_bytes -= 4 * v.len() as u64;
                Ok(v)
            }
            Some(other) => {
                let kind = other.kind();
                self.bufs[buf.0] = Some(other);
                bail!("take_f32: buffer {} is {kind} buffer", buf.0)
            }
            None => bail!("take_f32: buffer {} does not exist", buf.0),
        }
    }

    /// The bytes of an f32 or u8 view, for host code that moves whole
    /// buffers in bulk and in parallel (the offload's unit files).
    pub fn view_bytes(&self, v: View) -> Result<&[u8]> {
        match self.bufs.get(v.buf.0) {
            Some(Some(CpuBuf::F32(data))) => {
                check_range(v, data.len())?;
                let s = &data[v.off..v.off + v.len];
                // SAFETY: the f32s' own memory, borrowed as long; u8 has no alignment.
                Ok(unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, 4 * s.len()) })
            }
            Some(Some(CpuBuf::U8(data))) => {
                check_range(v, data.len())?;
                Ok(&data[v.off..v.off + v.len])
            }
            Some(Some(other)) => bail!("view {v:?}: expected an f32 or u8 buffer, got {} buffer", other.kind()),
            _ => bail!("view {v:?}: buffer {} does not exist", v.buf.0),
        }
    }

    /// [`CpuBackend::view_bytes`], writable. Not for bf16 buffers, whose
    /// writes must round.
    pub fn view_bytes_mut(&mut self, v: View) -> Result<&mut [u8]> {
        match self.bufs.get_mut(v.buf.0) {
            Some(Some(CpuBuf::F32(data))) => {
                check_range(v, data.len())?;
                let s = &mut data[v.off..v.off + v.len];
                // SAFETY: as in view_bytes, uniquely borrowed; any bytes are a valid f32.
                Ok(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, 4 * s.len()) })
            }
            Some(Some(CpuBuf::U8(data))) => {
                check_range(v, data.len())?;
                Ok(&mut data[v.off..v.off + v.len])
            }
            Some(Some(other)) => bail!("view {v:?}: expected an f32 or u8 buffer, got {} buffer", other.kind()),
            _ => bail!("view {v:?}: buffer {} does not exist", v.buf.0),
        }
    }

    /// Read access to a u32 view. Panics on a bad view.
    pub fn slice_u32(&self, v: View) -> &[u32] {
        let p = self.ptr_u32(v).unwrap();
        // SAFETY: ptr_u32 checked the range; the slice borrows self.
        unsafe { std::slice::from_raw_parts(p, v.len) }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    // ---- memory -------------------------------------------------------
    fn alloc(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        let buf = match dtype {
            DType::F32 | DType::Compute => CpuBuf::F32(vec![0.0; len]),
            DType::Bf16 => CpuBuf::Bf16(vec![0.0; len]),
            DType::U32 => CpuBuf::U32(vec![0; len]),
            DType::U8 => CpuBuf::U8(vec![0; len]),
        };
        self.live_bytes += buf.bytes();
        self.peak_bytes = self.peak_bytes.max(self.live_bytes);
        self.bufs.push(Some(buf));
        Ok(BufId(self.bufs.len() - 1))
    }

    fn free(&mut self, buf: BufId) {
        if let Some(b) = self.bufs.get_mut(buf.0).and_then(Option::take) {
            self.live_bytes -= b.bytes();
        }
    }

    fn upload(&mut self, dst: View, src: &[f32]) -> Result<()> {
        self.writing_bf16(&[Some(dst)], |s| {
            ensure!(src.len() == dst.len, "upload: {} host elements into a view of {}", src.len(), dst.len);
            let ([d], []) = s.req([dst], [])?;
            d.copy_from_slice(src);
            Ok(())
        })
    }

    unsafe fn download_start(&mut self, src: View, dst: &mut [f32]) -> Result<super::CopyTicket> {
        self.download_start_op(src, dst)
    }
    unsafe fn upload_start(&mut self, dst: View, src: super::HostSrc<'_>) -> Result<super::CopyTicket> {
        self.upload_start_op(dst, src)
    }
    fn copy_wait(&mut self, t: super::CopyTicket) -> Result<()> {
        self.copy_wait_op(t)
    }

    fn download(&mut self, src: View, dst: &mut [f32]) -> Result<()> {
        ensure!(src.len == dst.len(), "download: view of {} into {} host elements", src.len, dst.len());
        dst.copy_from_slice(self.try_slice(src)?);
        Ok(())
    }

    fn upload_u32(&mut self, dst: View, src: &[u32]) -> Result<()> {
        ensure!(src.len() == dst.len, "upload_u32: {} host elements into a view of {}", src.len(), dst.len);
        match self.bufs.get_mut(dst.buf.0) {
            Some(Some(CpuBuf::U32(data))) => {
                check_range(dst, data.len())?;
                data[dst.off..dst.off + dst.len].copy_from_slice(src);
                Ok(())
            }
            Some(Some(other)) => bail!("upload_u32: view {dst:?} is in {} buffer", other.kind()),
            _ => bail!("upload_u32: buffer {} does not exist", dst.buf.0),
        }
    }

    fn upload_u8(&mut self, dst: View, src: &[u8]) -> Result<()> {
        ensure!(src.len() == dst.len, "upload_u8: {} host bytes into a view of {}", src.len(), dst.len);
        let p = self.ptr_u8(dst)?;
        // SAFETY: ptr_u8 checked that dst is in range; `src` is host memory
        // and cannot alias a backend buffer borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(p, dst.len) }.copy_from_slice(src);
        Ok(())
    }

    fn download_u8(&mut self, src: View, dst: &mut [u8]) -> Result<()> {
        ensure!(src.len == dst.len(), "download_u8: view of {} into {} host bytes", src.len, dst.len());
        dst.copy_from_slice(self.slice_u8_checked(src)?);
        Ok(())
    }

    fn fill(&mut self, dst: View, value: f32) -> Result<()> {
        self.writing_bf16(&[Some(dst)], |s| {
            let ([d], []) = s.req([dst], [])?;
            elementwise::fill(d, value);
            Ok(())
        })
    }

    fn copy(&mut self, dst: View, src: View) -> Result<()> {
        self.writing_bf16(&[Some(dst)], |s| {
            ensure!(dst.len == src.len, "copy: dst has {} elements, src {}", dst.len, src.len);
            let ([d], [s]) = s.req([dst], [src])?;
            elementwise::copy(d, s);
            Ok(())
        })
    }

    fn copy_strided(&mut self, dst: View, dst_stride: usize, src: View, src_stride: usize, rows: usize, cols: usize, accumulate: bool) -> Result<()> {
        check_strided("copy_strided", dst, dst_stride, src, src_stride, rows, cols)?;
        let ([d], [s]) = self.req([dst], [src])?;
        elementwise::copy_strided(d, dst_stride, s, src_stride, rows, cols, accumulate);
        Ok(())
    }

    fn peak_memory_bytes(&self) -> u64 {
        self.peak_bytes
    }
    fn live_memory_bytes(&self) -> u64 {
        self.live_bytes
    }
    fn mark(&mut self) -> Result<Mark> {
        self.marks.push(std::time::Instant::now());
        Ok(Mark(self.marks.len() - 1))
    }
    fn elapsed_ms(&mut self, from: Mark, to: Mark) -> Result<f64> {
        let at = |m: Mark| self.marks.get(m.0).copied().ok_or_else(|| anyhow::anyhow!("mark {} was cleared or never made", m.0));
        Ok(at(to)?.saturating_duration_since(at(from)?).as_secs_f64() * 1e3)
    }
    fn clear_marks(&mut self) {
        self.marks.clear();
    }

    // ---- elementwise --------------------------------------------------
    fn add(&mut self, out: View, a: View, b: View) -> Result<()> {
        ensure!(out.len == a.len && a.len == b.len, "add: lengths differ ({}, {}, {})", out.len, a.len, b.len);
        let ([o], [a, b]) = self.req([out], [a, b])?;
        elementwise::add(o, a, b);
        Ok(())
    }

    fn accumulate(&mut self, dst: View, src: View) -> Result<()> {
        self.writing_bf16(&[Some(dst)], |s| {
            ensure!(dst.len == src.len, "accumulate: lengths differ ({}, {})", dst.len, src.len);
            let ([d], [s]) = s.req([dst], [src])?;
            elementwise::accumulate(d, s);
            Ok(())
        })
    }

    fn scale(&mut self, x: View, factor: f32) -> Result<()> {
        self.writing_bf16(&[Some(x)], |s| {
            let ([x], []) = s.req([x], [])?;
            elementwise::scale(x, factor);
            Ok(())
        })
    }

    fn sum_squares(&mut self, x: View) -> Result<f64> {
        Ok(elementwise::sum_squares(self.try_slice(x)?))
    }

    fn axpby(&mut self, y: View, x: View, a: f32, b: f32) -> Result<()> {
        ensure!(y.len == x.len, "axpby: lengths differ ({}, {})", y.len, x.len);
        let ([y], [x]) = self.req([y], [x])?;
        elementwise::axpby(y, x, a, b);
        Ok(())
    }

    fn axis_sum_squares(&mut self, out: View, x: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        expect_len(x, &[rows, cols], "axis_sum_squares x")?;
        expect_len(out, &[if per_row { rows } else { cols }], "axis_sum_squares out")?;
        let ([o], [x]) = self.req([out], [x])?;
        axis::axis_sum_squares(o, x, rows, cols, per_row);
        Ok(())
    }

    fn scale_axis(&mut self, x: View, s: View, rows: usize, cols: usize, per_row: bool) -> Result<()> {
        expect_len(x, &[rows, cols], "scale_axis x")?;
        expect_len(s, &[if per_row { rows } else { cols }], "scale_axis s")?;
        let ([x], [s]) = self.req([x], [s])?;
        axis::scale_axis(x, s, rows, cols, per_row);
        Ok(())
    }

    // ---- embedding ----------------------------------------------------
    fn embed_fwd(&mut self, out: View, tokens: View, wte: View, wpe: Option<View>, seq: usize, c: usize) -> Result<()> {
        ensure!(c > 0 && seq > 0 && wte.len.is_multiple_of(c), "embed_fwd: bad c={c} / seq={seq} for wte of {}", wte.len);
        expect_len(out, &[tokens.len, c], "embed_fwd out")?;
        if let Some(p) = wpe {
            expect_len(p, &[seq, c], "embed_fwd wpe")?;
        }
        let ([o], [wte, wpe], [tok]) = self.io([Some(out)], [Some(wte), wpe], [tokens])?;
        embed::check_tokens(tok, wte.unwrap().len() / c)?;
        embed::embed_fwd(o.unwrap(), tok, wte.unwrap(), wpe, seq, c);
        Ok(())
    }

    fn embed_bwd(&mut self, dwte: View, dwpe: Option<View>, dout: View, tokens: View, seq: usize, c: usize) -> Result<()> {
        self.writing_bf16(&[Some(dwte), dwpe], |s| {
            ensure!(c > 0 && seq > 0 && dwte.len.is_multiple_of(c), "embed_bwd: bad c={c} / seq={seq} for dwte of {}", dwte.len);
            expect_len(dout, &[tokens.len, c], "embed_bwd dout")?;
            if let Some(p) = dwpe {
                expect_len(p, &[seq, c], "embed_bwd dwpe")?;
            }
            let ([dwte, dwpe], [dout], [tok]) = s.io([Some(dwte), dwpe], [Some(dout)], [tokens])?;
            let dwte = dwte.unwrap();
            embed::check_tokens(tok, dwte.len() / c)?;
            embed::embed_bwd(dwte, dwpe, dout.unwrap(), tok, seq, c);
            Ok(())
        })
    }

    // ---- matmul -------------------------------------------------------
    fn linear_fwd(&mut self, out: View, inp: View, w: View, bias: Option<View>, m: usize, k: usize, n: usize) -> Result<()> {
        expect_len(out, &[m, n], "linear_fwd out")?;
        expect_len(inp, &[m, k], "linear_fwd inp")?;
        expect_len(w, &[n, k], "linear_fwd w")?;
        if let Some(b) = bias {
            expect_len(b, &[n], "linear_fwd bias")?;
        }
        let ([o], [x, w, b], []) = self.io([Some(out)], [Some(inp), Some(w), bias], [])?;
        matmul::linear_fwd(o.unwrap(), x.unwrap(), w.unwrap(), b, m, k, n);
        Ok(())
    }

    fn linear_bwd(&mut self, dinp: View, dw: View, dbias: Option<View>, dout: View, inp: View, w: View, m: usize, k: usize, n: usize) -> Result<()> {
        self.writing_bf16(&[Some(dinp), Some(dw), dbias], |s| {
            expect_len(dinp, &[m, k], "linear_bwd dinp")?;
            expect_len(dw, &[n, k], "linear_bwd dw")?;
            expect_len(dout, &[m, n], "linear_bwd dout")?;
            expect_len(inp, &[m, k], "linear_bwd inp")?;
            expect_len(w, &[n, k], "linear_bwd w")?;
            if let Some(b) = dbias {
                expect_len(b, &[n], "linear_bwd dbias")?;
            }
            let ([dx, dw, db], [dy, x, w], []) = s.io([Some(dinp), Some(dw), dbias], [Some(dout), Some(inp), Some(w)], [])?;
            matmul::linear_bwd(dx.unwrap(), dw.unwrap(), db, dy.unwrap(), x.unwrap(), w.unwrap(), m, k, n);
            Ok(())
        })
    }

    fn gemm(&mut self, c: View, a: View, b: View, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> {
        expect_len(c, &[m, n], "gemm c")?;
        expect_len(a, &[m, k], "gemm a")?;
        expect_len(b, &[k, n], "gemm b")?;
        let ([cs], [a, b]) = self.req([c], [a, b])?;
        matmul::gemm(cs, a, b, m, k, n, trans_a, trans_b, alpha, beta);
        Ok(())
    }

    // ---- normalization -------------------------------------------------
    fn layernorm_fwd(&mut self, out: View, mean: View, rstd: View, inp: View, w: View, b: View, n: usize, c: usize, eps: f32) -> Result<()> {
        for (v, d, what) in [(out, &[n, c][..], "out"), (inp, &[n, c], "inp"), (mean, &[n], "mean"), (rstd, &[n], "rstd"), (w, &[c], "w"), (b, &[c], "b")] {
            expect_len(v, d, &format!("layernorm_fwd {what}"))?;
        }
        ensure!(c > 0, "layernorm_fwd: c must be > 0");
        let ([o, mu, rs], [x, w, b]) = self.req([out, mean, rstd], [inp, w, b])?;
        layernorm::layernorm_fwd(o, mu, rs, x, w, b, c, eps);
        Ok(())
    }

    fn layernorm_bwd(&mut self, dinp: View, dw: View, db: View, dout: View, inp: View, w: View, mean: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.writing_bf16(&[Some(dinp), Some(dw), Some(db)], |s| {
            for (v, d, what) in [(dinp, &[n, c][..], "dinp"), (dout, &[n, c], "dout"), (inp, &[n, c], "inp"), (mean, &[n], "mean"), (rstd, &[n], "rstd"), (w, &[c], "w"), (dw, &[c], "dw"), (db, &[c], "db")] {
                expect_len(v, d, &format!("layernorm_bwd {what}"))?;
            }
            ensure!(c > 0, "layernorm_bwd: c must be > 0");
            let ([dx, dw, db], [dy, x, w, mu, rs]) = s.req([dinp, dw, db], [dout, inp, w, mean, rstd])?;
            layernorm::layernorm_bwd(dx, dw, db, dy, x, w, mu, rs, c);
            Ok(())
        })
    }

    fn rmsnorm_fwd(&mut self, out: View, rstd: View, inp: View, w: View, n: usize, c: usize, eps: f32) -> Result<()> {
        for (v, d, what) in [(out, &[n, c][..], "out"), (inp, &[n, c], "inp"), (rstd, &[n], "rstd"), (w, &[c], "w")] {
            expect_len(v, d, &format!("rmsnorm_fwd {what}"))?;
        }
        ensure!(c > 0, "rmsnorm_fwd: c must be > 0");
        let ([o, rs], [x, w]) = self.req([out, rstd], [inp, w])?;
        rmsnorm::rmsnorm_fwd(o, rs, x, w, c, eps);
        Ok(())
    }

    fn rmsnorm_bwd(&mut self, dinp: View, dw: View, dout: View, inp: View, w: View, rstd: View, n: usize, c: usize) -> Result<()> {
        self.writing_bf16(&[Some(dinp), Some(dw)], |s| {
            for (v, d, what) in [(dinp, &[n, c][..], "dinp"), (dout, &[n, c], "dout"), (inp, &[n, c], "inp"), (rstd, &[n], "rstd"), (w, &[c], "w"), (dw, &[c], "dw")] {
                expect_len(v, d, &format!("rmsnorm_bwd {what}"))?;
            }
            ensure!(c > 0, "rmsnorm_bwd: c must be > 0");
            let ([dx, dw], [dy, x, w, rs]) = s.req([dinp, dw], [dout, inp, w, rstd])?;
            rmsnorm::rmsnorm_bwd(dx, dw, dy, x, w, rs, c);
            Ok(())
        })
    }

    // ---- activations --------------------------------------------------
    fn gelu_fwd(&mut self, out: View, inp: View) -> Result<()> {
        ensure!(out.len == inp.len, "gelu_fwd: lengths differ ({}, {})", out.len, inp.len);
        let ([o], [x]) = self.req([out], [inp])?;
        gelu::gelu_fwd(o, x);
        Ok(())
    }

    fn gelu_bwd(&mut self, dinp: View, inp: View, dout: View) -> Result<()> {
        ensure!(dinp.len == inp.len && inp.len == dout.len, "gelu_bwd: lengths differ");
        let ([dx], [x, dy]) = self.req([dinp], [inp, dout])?;
        gelu::gelu_bwd(dx, x, dy);
        Ok(())
    }

    fn swiglu_fwd(&mut self, out: View, inp: View, n: usize, f: usize) -> Result<()> {
        ensure!(f > 0, "swiglu_fwd: f must be > 0");
        expect_len(out, &[n, f], "swiglu_fwd out")?;
        expect_len(inp, &[n, 2, f], "swiglu_fwd inp")?;
        let ([o], [x]) = self.req([out], [inp])?;
        swiglu::swiglu_fwd(o, x, f);
        Ok(())
    }

    fn swiglu_bwd(&mut self, dinp: View, inp: View, dout: View, n: usize, f: usize) -> Result<()> {
        ensure!(f > 0, "swiglu_bwd: f must be > 0");
        expect_len(dinp, &[n, 2, f], "swiglu_bwd dinp")?;
        expect_len(inp, &[n, 2, f], "swiglu_bwd inp")?;
        expect_len(dout, &[n, f], "swiglu_bwd dout")?;
        let ([dx], [x, dy]) = self.req([dinp], [inp, dout])?;
        swiglu::swiglu_bwd(dx, x, dy, f);
        Ok(())
    }

    // ---- attention ----------------------------------------------------
    fn rope_fwd(&mut self, qkv: View, s: AttnShape, rope: Rope) -> Result<()> {
        self.rope(qkv, s, rope, false)
    }

    fn rope_bwd(&mut self, dqkv: View, s: AttnShape, rope: Rope) -> Result<()> {
        self.rope(dqkv, s, rope, true)
    }

    fn attention_fwd(&mut self, out: View, lse: View, qkv: View, s: AttnShape) -> Result<()> {
        check_attn(&s)?;
        expect_len(qkv, &[s.batch, s.seq, s.qkv_width()], "attention_fwd qkv")?;
        expect_len(out, &[s.batch, s.seq, s.heads, s.head_dim], "attention_fwd out")?;
        expect_len(lse, &[s.batch, s.heads, s.seq], "attention_fwd lse")?;
        let ([o, l], [x]) = self.req([out, lse], [qkv])?;
        attention::attention_fwd(o, l, x, &s);
        Ok(())
    }

    fn attention_bwd(&mut self, dqkv: View, dout: View, qkv: View, out: View, lse: View, s: AttnShape) -> Result<()> {
        check_attn(&s)?;
        expect_len(qkv, &[s.batch, s.seq, s.qkv_width()], "attention_bwd qkv")?;
        expect_len(dqkv, &[s.batch, s.seq, s.qkv_width()], "attention_bwd dqkv")?;
        expect_len(out, &[s.batch, s.seq, s.heads, s.head_dim], "attention_bwd out")?;
        expect_len(dout, &[s.batch, s.seq, s.heads, s.head_dim], "attention_bwd dout")?;
        expect_len(lse, &[s.batch, s.heads, s.seq], "attention_bwd lse")?;
        let ([dx], [dy, x, o, l]) = self.req([dqkv], [dout, qkv, out, lse])?;
        attention::attention_bwd(dx, dy, x, o, l, &s);
        Ok(())
    }

    // ---- loss ---------------------------------------------------------
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent(&mut self, losses: View, dlogits: Option<View>, logits: View, targets: View, n: usize, v: usize, classes: usize, grad_scale: f32) -> Result<()> {
        ensure!((1..=v).contains(&classes), "softmax_xent: classes = {classes} must be in 1..=v (v = {v})");
        expect_len(losses, &[n], "softmax_xent losses")?;
        expect_len(logits, &[n, v], "softmax_xent logits")?;
        expect_len(targets, &[n], "softmax_xent targets")?;
        match dlogits {
            None => {
                let ([l], [x], [t]) = self.io([Some(losses)], [Some(logits)], [targets])?;
                xent::check_targets(t, classes)?;
                xent::xent_loss(l.unwrap(), x.unwrap(), t, v, classes);
            }
            Some(d) => {
                expect_len(d, &[n, v], "softmax_xent dlogits")?;
                // Not in place: copy the logits into dlogits, then work in place there.
                if d != logits {
                    self.copy(d, logits)?;
                }
                let ([l, g], [], [t]) = self.io([Some(losses), Some(d)], [], [targets])?;
                xent::check_targets(t, classes)?;
                xent::xent_loss_grad_in_place(l.unwrap(), g.unwrap(), t, v, classes, grad_scale);
            }
        }
        Ok(())
    }

    // ---- optimizer ----------------------------------------------------
    fn adamw(&mut self, params: View, grads: View, m: View, v: View, args: AdamWArgs) -> Result<()> {
        ensure!(params.len == grads.len && grads.len == m.len && m.len == v.len, "adamw: params/grads/m/v lengths differ");
        ensure!(args.step >= 1, "adamw: step is 1-based, got 0");
        let ([p, m, v], [g]) = self.req([params, m, v], [grads])?;
        adamw::adamw(p, g, m, v, &args);
        Ok(())
    }

    fn lion(&mut self, params: View, grads: View, m: View, args: LionArgs) -> Result<()> {
        ensure!(params.len == grads.len && grads.len == m.len, "lion: params/grads/m lengths differ");
        let ([p, m], [g]) = self.req([params, m], [grads])?;
        lion::lion(p, g, m, &args);
        Ok(())
    }

    fn sign_descent(&mut self, params: View, grads: View, args: SignArgs) -> Result<()> {
        ensure!(params.len == grads.len, "sign_descent: params/grads lengths differ");
        let ([p], [g]) = self.req([params], [grads])?;
        sign_descent::sign_descent(p, g, &args);
        Ok(())
    }

    fn rms_precondition(&mut self, out: View, num: View, v: View, grads: View, args: PrecondArgs) -> Result<()> {
        ensure!(out.len == num.len && num.len == v.len && v.len == grads.len, "rms_precondition: out/num/v/grads lengths differ");
        ensure!(!args.bias_correction || args.step >= 1, "rms_precondition: step is 1-based, got 0");
        let ([o, v], [n, g]) = self.req([out, v], [num, grads])?;
        precondition::rms_precondition(o, n, v, g, &args);
        Ok(())
    }

    fn adamw8bit(&mut self, params: View, grads: View, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, args: AdamWArgs) -> Result<()> {
        let n = params.len;
        ensure!(grads.len == n && m_codes.len == n && v_codes.len == n, "adamw8bit: params/grads/m_codes/v_codes lengths differ");
        let blocks = n.div_ceil(QUANT_BLOCK);
        ensure!(m_absmax.len == blocks && v_absmax.len == blocks, "adamw8bit: absmax views need {blocks} values (one per {QUANT_BLOCK}-element block)");
        ensure!(args.step >= 1, "adamw8bit: step is 1-based, got 0");
        ensure!(!overlaps(m_codes, v_codes), "adamw8bit: m_codes {m_codes:?} overlaps v_codes {v_codes:?}");
        let (pm, pv) = (self.ptr_u8(m_codes)?, self.ptr_u8(v_codes)?);
        let ([p, ma, va], [g]) = self.req([params, m_absmax, v_absmax], [grads])?;
        // SAFETY: both code views were range-checked by ptr_u8 and do not
        // overlap each other; they live in u8 buffers, which the f32 slices
        // above cannot point into. Nothing is (re)allocated during the call.
        let (mc, vc) = unsafe { (std::slice::from_raw_parts_mut(pm, n), std::slice::from_raw_parts_mut(pv, n)) };
        adamw8bit::adamw8bit(p, g, mc, vc, ma, va, &args);
        Ok(())
    }

    fn sign_compress(&mut self, bits: View, scales: View, x: View, block: usize) -> Result<()> {
        check_sign_block(block)?;
        ensure!(bits.len == x.len.div_ceil(8), "sign_compress: bits has {} bytes, {} values need {}", bits.len, x.len, x.len.div_ceil(8));
        ensure!(scales.len == x.len.div_ceil(block), "sign_compress: scales has {} values, {} values in blocks of {block} need {}", scales.len, x.len, x.len.div_ceil(block));
        let pb = self.ptr_u8(bits)?;
        let ([s], [x]) = self.req([scales], [x])?;
        // SAFETY: ptr_u8 range-checked `bits`; it lives in a u8 buffer, which
        // the f32 slices cannot point into; nothing is reallocated meanwhile.
        let b = unsafe { std::slice::from_raw_parts_mut(pb, bits.len) };
        onebit::sign_compress(b, s, x, block);
        Ok(())
    }

    fn sign_decompress(&mut self, out: View, bits: View, scales: View, block: usize, alpha: f32, beta: f32) -> Result<()> {
        check_sign_block(block)?;
        ensure!(bits.len == out.len.div_ceil(8), "sign_decompress: bits has {} bytes, {} values need {}", bits.len, out.len, out.len.div_ceil(8));
        ensure!(scales.len == out.len.div_ceil(block), "sign_decompress: scales has {} values, {} values in blocks of {block} need {}", scales.len, out.len, out.len.div_ceil(block));
        let pb = self.ptr_u8(bits)?;
        let ([o], [s]) = self.req([out], [scales])?;
        // SAFETY: as in sign_compress (read-only here).
        let b = unsafe { std::slice::from_raw_parts(pb as *const u8, bits.len) };
        onebit::sign_decompress(o, b, s, block, alpha, beta);
        Ok(())
    }
}

fn check_sign_block(block: usize) -> Result<()> {
    ensure!(block > 0 && block.is_multiple_of(8), "1-bit compression: block = {block} must be a positive multiple of 8 (whole bytes of sign bits)");
    Ok(())
}

impl CpuBackend {
    fn slice_u8_checked(&self, v: View) -> Result<&[u8]> {
        match self.bufs.get(v.buf.0) {
            Some(Some(CpuBuf::U8(data))) => {
                check_range(v, data.len())?;
                Ok(&data[v.off..v.off + v.len])
            }
            Some(Some(other)) => bail!("view {v:?}: expected a u8 buffer, got {} buffer", other.kind()),
            _ => bail!("view {v:?}: buffer {} does not exist", v.buf.0),
        }
    }

    fn rope(&mut self, qkv: View, s: AttnShape, r: Rope, inverse: bool) -> Result<()> {
        check_attn(&s)?;
        ensure!(s.head_dim.is_multiple_of(2), "rope: head_dim must be even, got {}", s.head_dim);
        expect_len(qkv, &[s.batch, s.seq, s.qkv_width()], "rope qkv")?;
        let ([x], []) = self.req([qkv], [])?;
        rope::rope(x, &s, &r.inv_freq(s.head_dim), inverse);
        Ok(())
    }
}
