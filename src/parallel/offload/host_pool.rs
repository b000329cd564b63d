//! A few reusable host buffers for the offload's gradients, instead of one
//! host copy per unit kept for the whole run.
//!
//! Each buffer holds the biggest unit. A buffer goes through one unit's
//! life at a time: its gradients land in it (device → host), the unit's
//! optimizer step reads them in place, then (CUDA, `offload.params =
//! none`) the step writes the unit's bf16 weights into the same memory —
//! the gradients are no longer needed, and a bf16 image takes half of
//! their bytes — and the upload reads them from there. Then it is free
//! again. The buffers are allocated once and page-locked once (the caller
//! pins [`HostPool::ranges`]), so no step faults in fresh pages.

use super::COPY_LAG;

/// Units the optimizer worker may hold at once: the one stepping and the
/// one queued behind it (so the worker never waits for the next job).
pub const WORKER_UNITS: usize = 2;

/// Buffers in the pool: the gradient copies in flight, the worker's
/// units, and one weight upload in flight.
pub const POOL_BUFFERS: usize = COPY_LAG + WORKER_UNITS + 1;

pub struct HostPool {
    free: Vec<Vec<f32>>,
    /// Elements of each buffer (the biggest unit's).
    full: usize,
    /// Every buffer's start address and bytes, for pinning.
    ranges: Vec<(usize, usize)>,
}

impl HostPool {
    /// `count` buffers of `full` elements each, zeroed and resident.
    pub fn new(full: usize, count: usize) -> Self {
        let free: Vec<Vec<f32>> = (0..count)
            .map(|_| {
                let mut v = vec![0.0f32; full.max(1)];
                touch(&mut v);
                v
            })
            .collect();
        let ranges = free.iter().map(|v| (v.as_ptr() as usize, 4 * v.capacity())).collect();
        HostPool { free, full: full.max(1), ranges }
    }

    /// Host bytes the pool holds.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|&(_, b)| b as u64).sum()
    }

    /// Each buffer's (address, bytes): what to page-lock.
    pub fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// A free buffer cut to `len` elements (no allocation), if any.
    pub fn take(&mut self, len: usize) -> Option<Vec<f32>> {
        assert!(len <= self.full, "a unit of {len} elements is bigger than the pool's buffers of {}", self.full);
        let mut v = self.free.pop()?;
        v.truncate(len);
        Some(v)
    }

    /// Returns a buffer [`HostPool::take`] gave out.
    pub fn give(&mut self, mut v: Vec<f32>) {
        debug_assert!(self.ranges.iter().any(|&(p, _)| p == v.as_ptr() as usize), "not a buffer of this pool");
        assert!(v.capacity() >= self.full, "a pool buffer came back reallocated");
        // SAFETY: the buffer was made with `full` initialised elements
        // (vec![0.0; full]) and never reallocated (checked above: same
        // capacity; `take` only truncates), so its first `full` elements
        // are still initialised f32s (any bit pattern is a valid f32).
        unsafe { v.set_len(self.full) };
        self.free.push(v);
    }
}

/// Writes every page of `v`: the pool's memory is resident from the
/// start (as page-locking makes it on CUDA), not faulted in by the first
/// steps, so the host budget holds from the first moment.
fn touch(v: &mut [f32]) {
    const PAGE_FLOATS: usize = 4096 / 4;
    for i in (0..v.len()).step_by(PAGE_FLOATS) {
        // SAFETY: i < v.len(). Volatile: a zero stored into memory known
        // to be zero would otherwise be optimised away.
        unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 0.0) };
    }
}

/// The first `buf.len()` 16-bit slots of `buf`'s memory: where a unit of
/// `buf.len()` elements gets its bf16 image after its step (2 of the 4
/// bytes each gradient took).
pub fn image_mut(buf: &mut [f32]) -> &mut [u16] {
    // SAFETY: `buf.len()` u16 values take half of the buffer's bytes; u16
    // needs less alignment than f32; the borrow of `buf` covers the result.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u16, buf.len()) }
}

/// The image [`image_mut`] wrote.
pub fn image(buf: &[f32]) -> &[u16] {
    // SAFETY: as in image_mut, read-only.
    unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u16, buf.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_keep_their_memory_across_uses() {
        let mut pool = HostPool::new(100, 2);
        let addrs: Vec<usize> = pool.ranges().iter().map(|r| r.0).collect();
        let a = pool.take(30).unwrap();
        let b = pool.take(100).unwrap();
        assert!(pool.take(1).is_none(), "two buffers only");
        assert_eq!((a.len(), b.len()), (30, 100));
        assert!(addrs.contains(&(a.as_ptr() as usize)) && addrs.contains(&(b.as_ptr() as usize)));
        pool.give(a);
        pool.give(b);
        let c = pool.take(100).unwrap();
        assert!(addrs.contains(&(c.as_ptr() as usize)), "no new allocation");
        assert_eq!(pool.bytes(), 2 * 400);
    }

    #[test]
    fn image_fits_in_the_gradients_memory() {
        let mut buf = vec![1.5f32; 7];
        let img = image_mut(&mut buf);
        assert_eq!(img.len(), 7);
        for (i, x) in img.iter_mut().enumerate() {
            *x = i as u16 * 3;
        }
        assert_eq!(image(&buf), &[0, 3, 6, 9, 12, 15, 18]);
    }
}
