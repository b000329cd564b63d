//! Device buffers: raw allocations owned by the backend, addressed by
//! `BufId`. Ops work on raw pointers so several views of one buffer can be
//! passed to one kernel (in-place ops, dw/db views of one flat grad buffer).
//!
//! F32 buffers used as matmul operands get a bf16 *shadow* (same length).
//! A shadow tracks which ranges are fresh; any write to the F32 buffer
//! drops the overlapping fresh ranges, so a stale shadow is never used.

use crate::backend::{BufId, DType, View};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{result, sys};

/// One raw device allocation, freed (stream-ordered) on drop.
pub struct DevMem {
    pub ptr: u64,
    pub bytes: usize,
    stream: sys::CUstream,
    pooled: bool,
}

impl Drop for DevMem {
    fn drop(&mut self) {
        // SAFETY: ptr came from malloc on this stream; frees are ordered
        // after all work queued so far, so in-flight kernels are safe.
        unsafe {
            let _ = if self.pooled { result::free_async(self.ptr, self.stream) } else { result::free_sync(self.ptr) };
        }
    }
}

/// Raw allocator with usage accounting and OOM errors that say what to change.
pub struct Allocator {
    pub stream: sys::CUstream,
    pub pooled: bool,
    pub bytes_now: u64,
    pub bytes_peak: u64,
}

impl Allocator {
    pub fn alloc(&mut self, bytes: usize) -> Result<DevMem> {
        let mem = self.alloc_unzeroed(bytes)?;
        // SAFETY: mem is a fresh allocation of `mem.bytes` bytes.
        unsafe { result::memset_d8_async(mem.ptr, 0, mem.bytes, self.stream) }.map_err(|e| anyhow!("memset: {e:?}"))?;
        Ok(mem)
    }

    /// [`Self::alloc`] without zeroing: for memory written whole before it
    /// is read.
    pub fn alloc_unzeroed(&mut self, bytes: usize) -> Result<DevMem> {
        let bytes = bytes.max(1);
        // SAFETY: plain allocation on our stream; `alloc` zeroes it, the
        // callers of this one write it whole before reading it.
        let ptr = unsafe {
            if self.pooled { result::malloc_async(self.stream, bytes) } else { result::malloc_sync(bytes) }
        };
        let ptr = match ptr {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => return Err(oom(bytes, self.bytes_now)),
            Err(e) => bail!("cuMemAlloc of {bytes} bytes failed: {e:?}"),
        };
        self.bytes_now += bytes as u64;
        self.bytes_peak = self.bytes_peak.max(self.bytes_now);
        Ok(DevMem { ptr, bytes, stream: self.stream, pooled: self.pooled })
    }

    pub fn release(&mut self, m: DevMem) {
        self.bytes_now -= m.bytes as u64;
        drop(m);
    }
}

fn oom(bytes: usize, held: u64) -> anyhow::Error {
    let (free, total) = result::mem_get_info().unwrap_or((0, 0));
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    anyhow!(
        "out of GPU memory: asked for {bytes} bytes ({:.2} GiB); {:.2} GiB free of {:.2} GiB, ferrotron holds {:.2} GiB. \
         Reduce train.batch_size or train.seq_len, or turn on train.recompute \
         (norms and MLP activations recomputed) or train.checkpoint_layers (whole blocks recomputed: least memory); \
         dist.zero_stage=3 in one process drops the bf16 copy of every weight (2 bytes per parameter). \
         `ferrotron info` estimates each setting.",
        gib(bytes as u64),
        gib(free as u64),
        gib(total as u64),
        gib(held)
    )
}

pub struct Shadow {
    pub mem: DevMem,
    /// (start, len) element ranges whose bf16 copy matches the F32 master.
    pub fresh: Vec<(usize, usize)>,
}

impl Shadow {
    pub fn is_fresh(&self, off: usize, len: usize) -> bool {
        self.fresh.iter().any(|&(s, l)| s <= off && off + len <= s + l)
    }
    pub fn invalidate(&mut self, off: usize, len: usize) {
        self.fresh.retain(|&(s, l)| off + len <= s || s + l <= off);
    }
    pub fn mark_fresh(&mut self, off: usize, len: usize) {
        self.invalidate(off, len);
        if self.fresh.len() > 4096 {
            self.fresh.clear(); // bounded bookkeeping; ranges get refreshed again on use
        }
        self.fresh.push((off, len));
    }
}

pub struct Buffer {
    pub mem: DevMem,
    pub len: usize,
    pub dtype: DType,
    pub shadow: Option<Shadow>,
}

/// Device element type of a buffer, as passed to kernels (`DT_*` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32 = 0,
    Bf16 = 1,
    U32 = 2,
    /// 8-bit optimizer state codes; only the 8-bit optimizer kernels and
    /// `upload_u8`/`download_u8` touch these buffers.
    U8 = 3,
}

impl Elem {
    pub fn of(d: DType) -> Elem {
        match d {
            DType::F32 => Elem::F32,
            DType::Compute | DType::Bf16 => Elem::Bf16,
            DType::U32 => Elem::U32,
            DType::U8 => Elem::U8,
        }
    }
    pub fn size(self) -> usize {
        match self {
            Elem::U8 => 1,
            Elem::Bf16 => 2,
            Elem::F32 | Elem::U32 => 4,
        }
    }
}

/// A checked view resolved to a device address.
#[derive(Clone, Copy, Debug)]
pub struct Dev {
    pub ptr: u64,
    pub elem: Elem,
    pub len: usize,
}

impl Dev {
    pub fn dt(&self) -> i32 {
        self.elem as i32
    }

    /// Address of element `i`.
    pub fn at(&self, i: usize) -> u64 {
        self.ptr + (i * self.elem.size()) as u64
    }

    /// bf16 and 16-byte aligned: what the 8-wide (uint4) kernels need.
    pub fn is_bf16x8(&self) -> bool {
        self.elem == Elem::Bf16 && self.ptr.is_multiple_of(16)
    }
}

/// Groups of 8 elements an 8-wide bf16 kernel can take over these
/// equal-length operands (0 unless every one is bf16 and 16-byte aligned);
/// the rest is the general kernel's tail.
pub fn bf16x8_groups(ops: &[Dev]) -> usize {
    if ops.iter().all(Dev::is_bf16x8) { ops[0].len / 8 } else { 0 }
}

pub struct Buffers {
    pub slots: Vec<Option<Buffer>>,
}

impl Buffers {
    pub fn get(&self, id: BufId) -> Result<&Buffer> {
        self.slots.get(id.0).and_then(|b| b.as_ref()).ok_or_else(|| anyhow!("cuda: unknown or freed buffer {:?}", id))
    }
    pub fn get_mut(&mut self, id: BufId) -> Result<&mut Buffer> {
        self.slots.get_mut(id.0).and_then(|b| b.as_mut()).ok_or_else(|| anyhow!("cuda: unknown or freed buffer {:?}", id))
    }

    /// Resolve a view, checking it lies inside its buffer.
    pub fn dev(&self, v: View) -> Result<Dev> {
        let b = self.get(v.buf)?;
        if v.off + v.len > b.len {
            bail!("cuda: view {}+{} outside buffer {:?} of {} elements", v.off, v.len, v.buf, b.len);
        }
        let elem = Elem::of(b.dtype);
        Ok(Dev { ptr: b.mem.ptr + (v.off * elem.size()) as u64, elem, len: v.len })
    }

    /// Record that `v` is about to be overwritten: its shadow range goes stale.
    pub fn written(&mut self, v: View) {
        if let Ok(b) = self.get_mut(v.buf) {
            if let Some(s) = b.shadow.as_mut() {
                s.invalidate(v.off, v.len);
            }
        }
    }
}
