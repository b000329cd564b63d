//! The CPU backend's twin of the CUDA copy stream (cuda/host_memory.rs),
//! for tests: with [`CpuBackend::defer_copies`] on, a started download
//! lands in host memory only at `copy_wait` (as late as a real copy
//! stream may), and a started upload checks at `copy_wait` that its host
//! source did not change while "in flight". A caller that reads gradients
//! before waiting, frees the device buffer under a copy, or rewrites
//! weights being uploaded then fails the CPU tests instead of corrupting
//! a GPU run. Off (the default), copies finish before their start call
//! returns.

use super::CpuBackend;
use crate::backend::{Backend, CopyTicket, HostSrc, View};
use anyhow::{anyhow, ensure, Result};
use std::collections::HashMap;

pub(super) enum InFlight {
    /// A download: the device view and where its values go.
    Down { src: View, dst: *mut f32 },
    /// An upload (already applied): a fingerprint of the host source.
    Up { src: *const u8, bytes: usize, sum: u64 },
}

// SAFETY: the pointers are only dereferenced in `copy_wait` by the
// backend's owner, under the start call's contract (the memory stays valid
// until then); a backend moved to another thread carries that contract.
unsafe impl Send for InFlight {}

#[derive(Default)]
pub(super) struct Deferred {
    next: usize,
    in_flight: HashMap<usize, InFlight>,
}

fn fingerprint(p: *const u8, bytes: usize) -> u64 {
    // SAFETY: the caller of upload_start promised the range stays valid
    // until copy_wait.
    let s = unsafe { std::slice::from_raw_parts(p, bytes) };
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl CpuBackend {
    /// Turns the copy-stream twin on or off (tests).
    pub fn defer_copies(&mut self, on: bool) {
        self.deferred = on.then(Deferred::default);
    }

    /// Copies started and not yet waited for.
    pub fn copies_in_flight(&self) -> usize {
        self.deferred.as_ref().map_or(0, |d| d.in_flight.len())
    }

    fn enqueue(&mut self, c: InFlight) -> CopyTicket {
        let d = self.deferred.as_mut().expect("checked by the caller");
        d.next += 1;
        d.in_flight.insert(d.next, c);
        CopyTicket(d.next)
    }

    pub(super) fn download_start_op(&mut self, src: View, dst: &mut [f32]) -> Result<CopyTicket> {
        ensure!(src.len == dst.len(), "download_start: view of {} into {} host elements", src.len, dst.len());
        if self.deferred.is_none() {
            self.download(src, dst)?;
            return Ok(CopyTicket::DONE);
        }
        self.try_slice(src)?;
        Ok(self.enqueue(InFlight::Down { src, dst: dst.as_mut_ptr() }))
    }

    pub(super) fn upload_start_op(&mut self, dst: View, src: HostSrc<'_>) -> Result<CopyTicket> {
        let (p, bytes) = match src {
            HostSrc::F32(v) => {
                self.upload(dst, v)?;
                (v.as_ptr() as *const u8, std::mem::size_of_val(v))
            }
            HostSrc::Bf16(_) => anyhow::bail!("upload_start: the CPU backend computes in f32; it takes no bf16 values"),
        };
        if self.deferred.is_none() {
            return Ok(CopyTicket::DONE);
        }
        let sum = fingerprint(p, bytes);
        Ok(self.enqueue(InFlight::Up { src: p, bytes, sum }))
    }

    pub(super) fn copy_wait_op(&mut self, t: CopyTicket) -> Result<()> {
        if t == CopyTicket::DONE {
            return Ok(());
        }
        let c = self.deferred.as_mut().and_then(|d| d.in_flight.remove(&t.0)).ok_or_else(|| anyhow!("copy ticket {} is unknown or was already waited for", t.0))?;
        match c {
            InFlight::Down { src, dst } => {
                let vals = self.try_slice(src).map_err(|e| e.context("a download's device buffer went away before its copy was waited for"))?;
                // SAFETY: the download_start caller keeps dst alive and
                // unread until this wait; it is host memory, not a buffer of
                // this backend.
                unsafe { std::slice::from_raw_parts_mut(dst, src.len) }.copy_from_slice(vals);
                Ok(())
            }
            InFlight::Up { src, bytes, sum } => {
                ensure!(fingerprint(src, bytes) == sum, "an upload's host values changed before its copy was waited for");
                Ok(())
            }
        }
    }
}
