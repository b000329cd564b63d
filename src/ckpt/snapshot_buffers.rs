//! The host buffers of stage 1 of a two-stage save (`async_save`),
//! allocated and page-locked once and reused from save to save.
//!
//! Fresh pageable vectors made every save cost twice: the allocation's page
//! faults and copies at a fraction of bus speed (1.4 GB/s measured on an
//! H200 for 17 GB). Page-locked (`Backend::pin_host`) buffers take the
//! device's asynchronous copies at full speed, and keeping them means they
//! are faulted in and locked only once. A buffer travels with its
//! checkpoint to the writer thread and comes back ([`recycle`]) when the
//! write is done; the next save waits for that write anyway.
//!
//! Slots: 0 holds the model's weights, 1 + i the i-th fp32 optimizer state
//! tensor (`Optimizer::state_tensors` order).
//!
//! [`recycle`]: SnapshotBuffers::recycle

use super::async_save::HostCheckpoint;
use crate::backend::Backend;
use anyhow::Result;
use std::collections::HashMap;

/// Slot of the model's weights.
pub const WEIGHTS_SLOT: usize = 0;

/// Slot of the `i`-th fp32 optimizer state tensor.
pub fn state_slot(i: usize) -> usize {
    1 + i
}

/// The reusable buffers, by slot.
#[derive(Default)]
pub struct SnapshotBuffers {
    free: HashMap<usize, Vec<f32>>,
    /// Start address → whether `pin_host` locked it (false: the backend
    /// has nothing to lock, or the range could not be). Addresses as
    /// numbers keep the pool `Send`; every one belongs to a buffer of
    /// this pool, in `free` or out with a checkpoint.
    owned: HashMap<usize, bool>,
}

impl SnapshotBuffers {
    /// A buffer of `len` values for `slot`: the one used last time (already
    /// locked), or a new one locked now. Its contents are stale: the caller
    /// overwrites all of it.
    pub fn take<B: Backend>(&mut self, b: &mut B, slot: usize, len: usize) -> Result<Vec<f32>> {
        if let Some(buf) = self.free.remove(&slot) {
            if buf.len() == len {
                return Ok(buf);
            }
            // The state changed size (not in a normal run): let it go.
            self.release_one(b, buf);
        }
        let buf = vec![0.0f32; len];
        // SAFETY: the pool keeps `buf` allocated (here or with a checkpoint
        // that hands it back) until `release_one` unpins it first.
        let locked = match unsafe { b.pin_host(buf.as_ptr() as *const u8, std::mem::size_of_val(&buf[..])) } {
            Ok(locked) => locked,
            // Unlocked memory still takes the copies, only slower: a save
            // must not fail for it (a low `ulimit -l`, say).
            Err(e) => {
                eprintln!("warning: checkpoint host buffers are not page-locked, so saves copy slower: {e:#}");
                false
            }
        };
        self.owned.insert(buf.as_ptr() as usize, locked);
        Ok(buf)
    }

    /// Takes back a buffer from [`take`](Self::take); others are dropped.
    pub fn give_back(&mut self, slot: usize, buf: Vec<f32>) {
        if self.owned.contains_key(&(buf.as_ptr() as usize)) {
            self.free.insert(slot, buf);
        }
    }

    /// The pool's buffers inside a written checkpoint, back in their slots.
    pub fn recycle(&mut self, host: HostCheckpoint) {
        if let Some(lead) = host.lead {
            self.give_back(WEIGHTS_SLOT, lead.weights);
        }
        for (i, (_, buf)) in host.opt.floats.into_iter().enumerate() {
            self.give_back(state_slot(i), buf);
        }
    }

    /// Host bytes the pool holds (locked or not).
    pub fn held_bytes(&self) -> u64 {
        self.free.values().map(|v| 4 * v.len() as u64).sum()
    }

    /// Unlocks and frees every buffer (the end of the run, while the
    /// backend that locked them is still there).
    pub fn release<B: Backend>(&mut self, b: &mut B) {
        let bufs: Vec<Vec<f32>> = self.free.drain().map(|(_, v)| v).collect();
        for buf in bufs {
            self.release_one(b, buf);
        }
    }

    fn release_one<B: Backend>(&mut self, b: &mut B, buf: Vec<f32>) {
        if self.owned.remove(&(buf.as_ptr() as usize)) == Some(true) {
            // SAFETY: locked by `take`; no copy into it is in flight (every
            // checkpoint's copies are waited for before it comes back).
            unsafe { b.unpin_host(buf.as_ptr() as *const u8) };
        }
    }
}

/// Without `release` (an error exit), locked buffers are leaked rather than
/// freed: memory the driver still has locked must not go back to the
/// allocator, and the process is ending anyway.
impl Drop for SnapshotBuffers {
    fn drop(&mut self) {
        for (_, buf) in self.free.drain() {
            if self.owned.get(&(buf.as_ptr() as usize)) == Some(&true) {
                std::mem::forget(buf);
            }
        }
    }
}
