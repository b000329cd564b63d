//! A second stream beside the compute stream, and the events that order
//! the two on the device (no host sync): what the NCCL communicator runs
//! its collectives on, so they overlap with compute.
//!
//! Pattern (dist::nccl): record an event on the compute stream, make the
//! side stream wait for it, queue the collective on the side stream,
//! record an event there; later the compute stream waits for that event.
//! Memory: the allocator is stream-ordered on the compute stream, so a
//! buffer used on the side stream may be freed only after the compute
//! stream waited for the side stream's event (the free is then queued
//! after the collective).

use super::device::CudaBackend;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::CUresult;
use cudarc::driver::{result, CudaEvent, CudaStream};
use std::sync::Arc;

impl CudaBackend {
    /// A new non-blocking stream on this GPU, starting after everything
    /// queued on the compute stream so far.
    pub(crate) fn side_stream(&self) -> Result<Arc<CudaStream>> {
        self.stream.fork().map_err(|e| anyhow!("creating a side stream: {e:?}"))
    }

    /// An event after everything queued on the compute stream so far.
    pub(crate) fn compute_event(&self) -> Result<CudaEvent> {
        record(&self.stream)
    }

    /// Ops queued on the compute stream from now on run after `ev`.
    pub(crate) fn compute_waits(&self, ev: &CudaEvent) -> Result<()> {
        stream_waits(&self.stream, ev)
    }
}

/// An event after everything queued on `stream` so far (timing off: the
/// cheapest kind).
pub(crate) fn record(stream: &CudaStream) -> Result<CudaEvent> {
    stream.record_event(None).map_err(|e| anyhow!("cuEventRecord: {e:?}"))
}

/// Work queued on `stream` from now on runs after `ev`.
pub(crate) fn stream_waits(stream: &CudaStream, ev: &CudaEvent) -> Result<()> {
    stream.wait(ev).map_err(|e| anyhow!("cuStreamWaitEvent: {e:?}"))
}

/// Whether the work before `ev` is done; an error if the device reports one
/// (callable from any thread).
pub(crate) fn event_done(ev: &CudaEvent) -> Result<bool> {
    ev.context().bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
    // SAFETY: queries a live event we hold.
    match unsafe { result::event::query(ev.cu_event()) } {
        Ok(()) => Ok(true),
        Err(e) if e.0 == CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        Err(e) => bail!("{e:?}"),
    }
}
