//! Page-aligned host buffers for the NVMe tier's file I/O: the buffer type
//! (`O_DIRECT` wants 4 KiB-aligned memory, lengths and offsets), a small
//! pool of them that a step reuses unit after unit, and the parallel copy
//! that moves a unit between a buffer and its master weights and state.
//!
//! A unit file is a gigabyte at a 27B scale. Allocating its buffer per read
//! or write maps fresh pages every time, and the first touch of each page
//! is a fault; a pooled buffer faults once per step. The pool is bounded
//! (a caller waits for a buffer to come back rather than allocate more),
//! so its host bytes are a fixed count of the largest unit file, and it
//! gives its free buffers back between steps ([`IoBufs::release`]): the
//! host then holds no unit of the tier.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::{Condvar, Mutex};

/// Block size and buffer alignment of every read and write.
pub const ALIGN: usize = 4096;

pub fn padded(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// A zeroed heap buffer aligned to [`ALIGN`], a multiple of it long.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Result<Self> {
        let len = padded(len.max(1));
        let layout = Layout::from_size_align(len, ALIGN).context("aligned buffer layout")?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            bail!("cannot allocate {len} bytes of host memory for NVMe I/O");
        }
        Ok(AlignedBuf { ptr, len })
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// `n` f32 values starting at byte `off` (a multiple of 4: sections
    /// start at multiples of ALIGN).
    pub fn f32s(&self, off: usize, n: usize) -> &[f32] {
        assert!(off.is_multiple_of(4) && off + 4 * n <= self.len);
        // SAFETY: in range (checked), aligned (base is ALIGN-aligned, off % 4 == 0), any bits are valid f32.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off) as *const f32, n) }
    }
    /// `n` bf16 bit patterns starting at byte `off` (a multiple of 2).
    pub fn u16s(&self, off: usize, n: usize) -> &[u16] {
        assert!(off.is_multiple_of(2) && off + 2 * n <= self.len);
        // SAFETY: in range (checked), aligned as f32s, any bits are valid u16.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off) as *const u16, n) }
    }
    pub fn u16s_mut(&mut self, off: usize, n: usize) -> &mut [u16] {
        assert!(off.is_multiple_of(2) && off + 2 * n <= self.len);
        // SAFETY: as in u16s, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off) as *mut u16, n) }
    }
    /// Bytes the buffer holds (a multiple of [`ALIGN`]).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align_unchecked(self.len, ALIGN)) }
    }
}

/// Copies `src` into `dst` (equal lengths) in 1 MiB pieces on the calling
/// rayon pool: a unit moves at the memory's bandwidth, not one core's.
pub fn par_copy(dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 1 << 20;
    assert_eq!(dst.len(), src.len(), "par_copy of {} bytes into {}", src.len(), dst.len());
    dst.par_chunks_mut(PIECE).zip(src.par_chunks(PIECE)).for_each(|(d, s)| d.copy_from_slice(s));
}

/// At most `cap` buffers; a free one too short for a request makes room
/// for a longer one.
pub struct IoBufs {
    inner: Mutex<Pool>,
    back: Condvar,
}

#[derive(Default)]
struct Pool {
    cap: usize,
    free: Vec<AlignedBuf>,
    /// Buffers allocated and not dropped (free or lent out).
    made: usize,
    /// Their bytes.
    bytes: u64,
}

impl IoBufs {
    pub fn new(cap: usize) -> Self {
        IoBufs { inner: Mutex::new(Pool { cap: cap.max(1), ..Default::default() }), back: Condvar::new() }
    }

    /// Allows `cap` buffers (set before the pool is used).
    pub fn set_cap(&self, cap: usize) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).cap = cap.max(1);
        self.back.notify_all();
    }

    /// A buffer of at least `len` bytes: a free one, else a new one while
    /// fewer than `cap` exist, else (all lent out) the next one back.
    pub fn take(&self, len: usize) -> Result<AlignedBuf> {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = p.free.iter().position(|b| b.len() >= len) {
                return Ok(p.free.swap_remove(i));
            }
            // A free buffer too short for this unit makes room for one that is not.
            if p.made >= p.cap {
                if let Some(short) = p.free.pop() {
                    p.made -= 1;
                    p.bytes -= short.len() as u64;
                }
            }
            if p.made < p.cap {
                let buf = AlignedBuf::new(len)?;
                p.made += 1;
                p.bytes += buf.len() as u64;
                return Ok(buf);
            }
            p = self.back.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn give(&self, buf: AlignedBuf) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).free.push(buf);
        self.back.notify_all();
    }

    /// Drops the free buffers (those lent out come back and stay).
    pub fn release(&self) {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let free = std::mem::take(&mut p.free);
        p.made -= free.len();
        p.bytes -= free.iter().map(|b| b.len() as u64).sum::<u64>();
    }

    /// Host bytes of the buffers that exist now.
    pub fn held_bytes(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}
