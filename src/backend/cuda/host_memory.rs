//! Host↔device copies of the offloaded optimizer (parallel::offload) on a
//! copy stream of their own, ordered with the compute stream by events,
//! from and to page-locked host memory.
//!
//! - `download_start`: the copy stream waits (on the device) for the work
//!   queued on the compute stream so far, then copies; the compute stream
//!   goes on with the next unit's backward meanwhile. The host learns the
//!   copy is done from the ticket's event (`copy_wait`).
//! - `upload_start`: the copy stream waits for the compute stream, copies,
//!   and the compute stream waits for the copy before its next op, so the
//!   next forward reads the new weights while the host moves on to the
//!   next unit.
//! - `pin_host`: page-locks host memory in place (cuMemHostRegister)
//!   rather than allocating pinned buffers (cuMemHostAlloc): the host
//!   optimizer's gradients and weight images stay ordinary vectors, lent to
//!   its kernels without copies; the DMA engine sees the same pinned pages.
//!   Memory that cannot be pinned (a page already registered) still copies
//!   correctly, through the driver's staging buffers.
//!
//! Everything lives in [`Copies`], made on first use, so a run without
//! offload creates no second stream.

use super::device::CudaBackend;
use super::memory::Elem;
use crate::backend::{CopyTicket, HostSrc, View};
use anyhow::{anyhow, bail, ensure, Result};
use cudarc::driver::{result, sys, CudaContext};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The copy stream, its events and the host memory pinned through it.
pub struct Copies {
    ctx: Arc<CudaContext>,
    stream: sys::CUstream,
    /// Events of copies not yet waited for, by ticket number.
    in_flight: HashMap<usize, sys::CUevent>,
    spare_events: Vec<sys::CUevent>,
    next_ticket: usize,
    /// Start addresses of the host ranges registered by `pin_host`.
    pinned: HashSet<usize>,
}

impl Copies {
    fn new(ctx: Arc<CudaContext>) -> Result<Self> {
        ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking).map_err(|e| anyhow!("creating the copy stream: {e:?}"))?;
        Ok(Copies { ctx, stream, in_flight: HashMap::new(), spare_events: Vec::new(), next_ticket: 0, pinned: HashSet::new() })
    }

    fn event(&mut self) -> Result<sys::CUevent> {
        match self.spare_events.pop() {
            Some(e) => Ok(e),
            None => result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| anyhow!("cuEventCreate: {e:?}")),
        }
    }

    /// Makes stream `waiter` wait (on the device) for the work queued on
    /// `on` so far.
    fn order(&mut self, waiter: sys::CUstream, on: sys::CUstream) -> Result<()> {
        let e = self.event()?;
        // SAFETY: live event and streams of this context. A stream wait
        // captures the event's latest record at call time, so the event can
        // be recorded again at once.
        unsafe {
            result::event::record(e, on).map_err(|err| anyhow!("cuEventRecord: {err:?}"))?;
            result::stream::wait_event(waiter, e, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT).map_err(|err| anyhow!("cuStreamWaitEvent: {err:?}"))?;
        }
        self.spare_events.push(e);
        Ok(())
    }

    /// A ticket for the copies queued on the copy stream so far.
    fn ticket(&mut self) -> Result<(CopyTicket, sys::CUevent)> {
        let e = self.event()?;
        // SAFETY: live event and stream.
        unsafe { result::event::record(e, self.stream) }.map_err(|err| anyhow!("cuEventRecord: {err:?}"))?;
        self.next_ticket += 1;
        self.in_flight.insert(self.next_ticket, e);
        Ok((CopyTicket(self.next_ticket), e))
    }

    fn wait(&mut self, t: CopyTicket) -> Result<()> {
        if t == CopyTicket::DONE {
            return Ok(());
        }
        let e = self.in_flight.remove(&t.0).ok_or_else(|| anyhow!("copy ticket {} is unknown or was already waited for", t.0))?;
        // SAFETY: live event recorded on the copy stream.
        let out = unsafe { result::event::synchronize(e) }.map_err(|err| anyhow!("CUDA error in a host↔device copy: {err:?}"));
        self.spare_events.push(e);
        out
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: the stream and events are ours; copies finish before the
        // host ranges are unregistered and the stream destroyed.
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            for e in self.in_flight.drain().map(|(_, e)| e).chain(self.spare_events.drain(..)) {
                let _ = result::event::destroy(e);
            }
            for p in self.pinned.drain() {
                let _ = sys::cuMemHostUnregister(p as *mut std::ffi::c_void);
            }
            let _ = result::stream::destroy(self.stream);
        }
    }
}

impl CudaBackend {
    fn copies(&mut self) -> Result<&mut Copies> {
        if self.copies.is_none() {
            self.copies = Some(Copies::new(self.ctx.clone())?);
        }
        Ok(self.copies.as_mut().expect("made above"))
    }

    pub(super) fn pin_host_op(&mut self, ptr: *const u8, bytes: usize) -> Result<bool> {
        if bytes == 0 {
            return Ok(false);
        }
        let c = self.copies()?;
        c.ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        // SAFETY: the caller keeps the range allocated until unpin_host.
        let r = unsafe { sys::cuMemHostRegister_v2(ptr as *mut std::ffi::c_void, bytes, sys::CU_MEMHOSTREGISTER_PORTABLE) };
        match r {
            sys::CUresult::CUDA_SUCCESS => {
                c.pinned.insert(ptr as usize);
                Ok(true)
            }
            // Shares a page with a pinned range: copies still work, unpinned.
            sys::CUresult::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED => Ok(false),
            other => bail!("cuMemHostRegister of {bytes} bytes of host memory failed: {other:?} (is the locked-memory limit, ulimit -l, too low?)"),
        }
    }

    pub(super) fn unpin_host_op(&mut self, ptr: *const u8) {
        if let Some(c) = self.copies.as_mut() {
            if c.pinned.remove(&(ptr as usize)) {
                let _ = c.ctx.bind_to_thread();
                // SAFETY: registered by pin_host_op; no copy in flight (caller).
                unsafe {
                    let _ = sys::cuMemHostUnregister(ptr as *mut std::ffi::c_void);
                }
            }
        }
    }

    pub(super) fn download_start_op(&mut self, src: View, dst: &mut [f32]) -> Result<CopyTicket> {
        self.begin()?;
        ensure!(src.len == dst.len(), "download_start: view of {} into {} values", src.len, dst.len());
        let d = self.dev(src)?;
        if d.elem != Elem::F32 {
            CudaBackend::download(self, src, dst)?;
            return Ok(CopyTicket::DONE);
        }
        let compute = self.stream.cu_stream();
        let c = self.copies()?;
        c.order(c.stream, compute)?;
        // SAFETY: the view was range-checked; the caller keeps `dst` and
        // the device buffer alive until copy_wait.
        unsafe { result::memcpy_dtoh_async(dst, d.ptr, c.stream) }.map_err(|e| anyhow!("download_start: {e:?}"))?;
        Ok(c.ticket()?.0)
    }

    pub(super) fn upload_start_op(&mut self, dst: View, src: HostSrc<'_>) -> Result<CopyTicket> {
        self.begin()?;
        let d = self.out(dst)?;
        let n = match src {
            HostSrc::F32(v) => v.len(),
            HostSrc::Bf16(v) => v.len(),
        };
        ensure!(n == dst.len, "upload_start: {n} values into a view of {}", dst.len);
        let compute = self.stream.cu_stream();
        let c = self.copies()?;
        c.order(c.stream, compute)?;
        // SAFETY: the view was range-checked for `n` elements of its type;
        // the caller keeps `src` unchanged until copy_wait.
        let r = unsafe {
            match (src, d.elem) {
                (HostSrc::F32(v), Elem::F32) => result::memcpy_htod_async(d.ptr, v, c.stream),
                (HostSrc::Bf16(v), Elem::Bf16) => result::memcpy_htod_async(d.ptr, v, c.stream),
                (_, e) => bail!("upload_start: these host values cannot go into a {e:?} buffer"),
            }
        };
        r.map_err(|e| anyhow!("upload_start: {e:?}"))?;
        let (ticket, done) = c.ticket()?;
        // The compute stream reads the new values: it waits for the copy.
        // SAFETY: live event and stream.
        unsafe { result::stream::wait_event(compute, done, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }.map_err(|e| anyhow!("cuStreamWaitEvent: {e:?}"))?;
        Ok(ticket)
    }

    pub(super) fn copy_wait_op(&mut self, t: CopyTicket) -> Result<()> {
        if t == CopyTicket::DONE {
            return Ok(());
        }
        self.copies()?.wait(t)
    }
}
