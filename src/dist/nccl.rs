//! `NcclComm`: the communicator of CUDA ranks, one process per GPU.
//!
//! - Rendezvous: rank 0 makes NCCL's unique id and hands it out over the
//!   TCP store (`store`); the TCP connections stay open for the host-side
//!   collectives (`all_reduce_host`, `barrier`), which need no GPU.
//! - Streams: collectives run on a stream of their own (`side`), ordered
//!   with the compute stream by events (backend/cuda/streams.rs): before a
//!   collective the side stream waits for an event recorded on the compute
//!   stream (its input is ready); after it an event is recorded on the
//!   side stream, and `wait(ticket)` makes the compute stream wait for that
//!   event on the device (no host sync). The synchronous calls are
//!   `start_*` + `wait`; ZeRO uses `start_*` to overlap (parallel/zero.rs).
//! - Element types follow the buffers: F32 buffers as fp32, `Compute`
//!   buffers (bf16 on CUDA) as bf16 (sums then run in NCCL's bf16), U8 as
//!   bytes. Every length is checked here; NCCL trusts its caller.
//! - Uneven segments (`counts` not all equal): reduce_scatter is a group
//!   of one in-place `ncclReduce` per rank (root = the segment's owner),
//!   all_gather a group of one in-place `ncclBroadcast` per rank. No
//!   padding and no scratch memory; NCCL runs each group as one launch.
//!   Equal segments use ncclReduceScatter / ncclAllGather in place.
//! - all_to_all: a group of `ncclSend`/`ncclRecv` to every other rank, plus
//!   a device copy of the rank's own chunk.
//! - `bytes_sent`: NCCL's algorithm is not observable, so this counts what
//!   a ring sends per rank: all_reduce 2(w-1)/w·n·e; reduce_scatter,
//!   all_gather and broadcast (w-1)/w·n·e; all_to_all (w-1)/w·n·e; plus the
//!   TCP bytes of host collectives.
//! - Sequence checks: with FERROTRON_DIST_CHECK=1 every collective first
//!   agrees on its header over TCP (as `TcpComm` does), so ranks out of
//!   step fail with a message instead of hanging in NCCL; off by default
//!   (one TCP round trip per collective).
//! - Timeouts: NCCL itself waits forever for a rank that never joins a
//!   collective, so every device collective is numbered and registered
//!   with a watchdog thread (dist/watchdog.rs) that polls its end event and
//!   ncclCommGetAsyncError; past `dist.timeout_s`, or on an NCCL error, it
//!   aborts the communicator and exits non-zero naming this rank, the
//!   collective and its number. The rendezvous, host collectives and
//!   checked headers time out on their own (TCP).
//! - Drop aborts the communicator (ncclCommAbort: no wait for other ranks).

use super::comm::{segment, Comm, Elem, Ticket};
use super::nccl_lib::{nccl, NcclLib};
use super::rendezvous::WorldInfo;
use super::star::{Op, Wire};
use super::store::rendezvous;
use super::tcp::{check_counts, TcpComm};
use super::watchdog::{self, Watchdog};
use crate::backend::cuda::{event_done, record, stream_waits, CudaBackend, RawView};
use crate::backend::{DType, View};
use anyhow::{bail, Result};
use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

pub struct NcclComm {
    /// First field: stopped (joined) before the communicator is aborted.
    watchdog: Option<Watchdog>,
    lib: &'static NcclLib,
    comm: ncclComm_t,
    /// The stream collectives run on.
    side: Arc<CudaStream>,
    /// The backend's compute stream (kept alive as long as the comm).
    compute: Arc<CudaStream>,
    /// Device collectives queued so far (their sequence numbers).
    seq: u64,
    /// End events of started collectives not yet waited for, by ticket.
    flights: HashMap<u64, Arc<CudaEvent>>,
    /// Host collectives and optional header checks.
    host: TcpComm,
    rank: usize,
    world: usize,
    check: bool,
    /// Nominal ring bytes of the device collectives.
    device_bytes: u64,
}

impl NcclComm {
    /// Meet the other ranks and create the NCCL communicator on `b`'s GPU.
    pub fn connect(info: &WorldInfo, timeout: Duration, b: &mut CudaBackend) -> Result<NcclComm> {
        // NVLink multicast must stay off on the machines we run on; NCCL
        // reads this when the communicator is created.
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            std::env::set_var("NCCL_NVLS_ENABLE", "0");
        }
        let lib = nccl()?;
        let mut id = ncclUniqueId { internal: [0; 128] };
        if info.rank == 0 {
            // SAFETY: writes one ncclUniqueId.
            lib.check("ncclGetUniqueId", unsafe { (lib.get_unique_id)(&mut id) }, std::ptr::null_mut())?;
        }
        let id_bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
        let (star, got) = rendezvous(info, timeout, &id_bytes)?;
        if got.len() != id.internal.len() {
            bail!("rank 0 published {} bytes as the NCCL id, expected {}: is it running dist.backend=nccl too?", got.len(), id.internal.len());
        }
        id.internal.iter_mut().zip(&got).for_each(|(c, &b)| *c = b as _);
        b.comm_bind()?;
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: every rank passes the same id and world, its own rank;
        // this blocks until all ranks have called it.
        let r = unsafe { (lib.comm_init_rank)(&mut comm, info.world as i32, id, info.rank as i32) };
        lib.check("ncclCommInitRank", r, std::ptr::null_mut())?;
        let side = match b.side_stream() {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: the communicator just made, never used.
                unsafe { (lib.comm_abort)(comm) };
                return Err(e);
            }
        };
        Ok(NcclComm {
            watchdog: Some(start_watchdog(lib, comm, info, timeout)),
            lib,
            comm,
            side,
            compute: b.comm_stream(),
            seq: 0,
            flights: HashMap::new(),
            host: TcpComm::from_star(star),
            rank: info.rank,
            world: info.world,
            check: std::env::var("FERROTRON_DIST_CHECK").is_ok_and(|v| v == "1"),
            device_bytes: 0,
        })
    }

    /// Turn the per-collective header agreement on or off (default: on
    /// when FERROTRON_DIST_CHECK=1). Every rank must choose the same.
    pub fn set_checked(&mut self, on: bool) {
        self.check = on;
    }

    /// "NCCL 2.28.3 (libnccl.so.2)".
    pub fn describe(&self) -> String {
        format!("{} ({})", self.lib.version(), self.lib.path)
    }

    /// The stream NCCL calls are queued on.
    fn stream(&self) -> cudaStream_t {
        self.side.cu_stream() as cudaStream_t
    }

    /// Before queuing a collective: the side stream waits for everything
    /// queued on the compute stream so far (the collective's input).
    fn enter(&mut self, b: &CudaBackend) -> Result<()> {
        b.comm_bind()?;
        stream_waits(&self.side, &b.compute_event()?)
    }

    /// After queuing collective `name`: its end event, watched by the
    /// watchdog and waited for through the returned ticket.
    fn leave(&mut self, name: &str) -> Result<Ticket> {
        self.seq += 1;
        let end = Arc::new(record(&self.side)?);
        if let Some(w) = &self.watchdog {
            let probe = end.clone();
            w.register(name, self.seq, Box::new(move || event_done(&probe)));
        }
        self.flights.insert(self.seq, end);
        Ok(Ticket(self.seq))
    }

    /// With FERROTRON_DIST_CHECK=1: all ranks agree on this call first.
    fn agree(&mut self, op: Op, elem: Elem, root: usize, len: usize, counts: &[usize]) -> Result<()> {
        if self.check {
            self.host.star_mut().begin(op, Wire::from(elem), root, len, counts)?;
        }
        Ok(())
    }

    fn ok(&self, what: &str, r: cudarc::nccl::sys::ncclResult_t) -> Result<()> {
        self.lib.check(what, r, self.comm)
    }

    /// Runs `f` between ncclGroupStart and ncclGroupEnd (ended even if `f` fails).
    fn group(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        // SAFETY: group calls only bracket the calls queued by `f`.
        self.ok("ncclGroupStart", unsafe { (self.lib.group_start)() })?;
        let r = f(self);
        let end = self.ok("ncclGroupEnd", unsafe { (self.lib.group_end)() });
        r.and(end)
    }

    fn ring_bytes(&mut self, n: usize, elem_bytes: usize, factor: f64) {
        let w = self.world as f64;
        self.device_bytes += (factor * (w - 1.0) / w * (n * elem_bytes) as f64).round() as u64;
    }
}

impl NcclComm {
    /// [`Comm::broadcast`], possibly still running on return.
    fn start_broadcast(&mut self, b: &mut CudaBackend, v: View, root: usize, elem: Elem) -> Result<Ticket> {
        if root >= self.world {
            bail!("broadcast: root {root} is not a rank of a world of {}", self.world);
        }
        self.agree(Op::Broadcast, elem, root, v.len, &[])?;
        let r = b.comm_write(v)?;
        let t = nccl_type(&r, elem, "broadcast")?;
        if v.len == 0 {
            return Ok(Ticket::DONE);
        }
        self.enter(b)?;
        // SAFETY: in place over a checked view.
        let res = unsafe { (self.lib.broadcast)(at(&r, 0), at(&r, 0), v.len, t, root as i32, self.comm, self.stream()) };
        self.ok("broadcast (ncclBroadcast)", res)?;
        self.ring_bytes(v.len, r.elem_bytes, 1.0);
        self.leave("broadcast")
    }

    /// [`Comm::all_to_all`], possibly still running on return.
    fn start_all_to_all(&mut self, b: &mut CudaBackend, send: View, recv: View, elem: Elem) -> Result<Ticket> {
        let w = self.world;
        if send.len != recv.len || !send.len.is_multiple_of(w) {
            bail!("all_to_all: send ({}) and recv ({}) must have one length, divisible by the world size {w}", send.len, recv.len);
        }
        if send.buf == recv.buf && send.off < recv.off + recv.len && recv.off < send.off + send.len {
            bail!("all_to_all: send and recv overlap; use two buffers");
        }
        self.agree(Op::AllToAll, elem, 0, send.len, &[])?;
        let s = b.comm_read(send)?;
        let r = b.comm_write(recv)?;
        let t = nccl_type(&s, elem, "all_to_all send")?;
        if nccl_type(&r, elem, "all_to_all recv")? != t {
            bail!("all_to_all: send is {:?} but recv is {:?}; use one storage type", s.dtype, r.dtype);
        }
        if send.len == 0 {
            return Ok(Ticket::DONE);
        }
        self.enter(b)?;
        let (c, me, comm, stream) = (send.len / w, self.rank, self.comm, self.stream());
        // Our own chunk does not leave the GPU.
        let own = self.side.cu_stream();
        // SAFETY: two disjoint ranges of checked views, on our stream.
        unsafe { cudarc::driver::result::memcpy_dtod_async(at(&r, c * me) as u64, at(&s, c * me) as u64, c * s.elem_bytes, own) }
            .map_err(|e| anyhow::anyhow!("all_to_all: copying the own chunk: {e:?}"))?;
        self.group(|x| {
            for j in (0..w).filter(|&j| j != me) {
                // SAFETY: chunk j of checked views; NCCL pairs our send to j
                // with j's receive from us.
                let res = unsafe { (x.lib.send)(at(&s, c * j), c, t, j as i32, comm, stream) };
                x.ok("all_to_all (ncclSend)", res)?;
                let res = unsafe { (x.lib.recv)(at(&r, c * j), c, t, j as i32, comm, stream) };
                x.ok("all_to_all (ncclRecv)", res)?;
            }
            Ok(())
        })?;
        self.ring_bytes(send.len, s.elem_bytes, 1.0);
        self.leave("all_to_all")
    }

}

/// The watchdog of `comm`'s collectives; on a hang or an NCCL error it
/// aborts the communicator, says why and exits the process (status 3), so
/// the launcher stops the other ranks.
fn start_watchdog(lib: &'static NcclLib, comm: ncclComm_t, info: &WorldInfo, timeout: Duration) -> Watchdog {
    let handle = CommHandle(comm);
    let async_error = Box::new(move || {
        let h = &handle;
        let mut state = cudarc::nccl::sys::ncclResult_t::ncclSuccess;
        // SAFETY: the communicator outlives the watchdog (joined before
        // abort, see Drop); this query is thread-safe in NCCL.
        let r = unsafe { (lib.comm_get_async_error)(h.0, &mut state) };
        match (r, state) {
            (cudarc::nccl::sys::ncclResult_t::ncclSuccess, cudarc::nccl::sys::ncclResult_t::ncclSuccess | cudarc::nccl::sys::ncclResult_t::ncclInProgress) => None,
            (cudarc::nccl::sys::ncclResult_t::ncclSuccess, e) => Some(lib.check("(asynchronous)", e, h.0).err().map(|e| format!("{e:#}")).unwrap_or_default()),
            (e, _) => Some(format!("ncclCommGetAsyncError itself failed: {e:?}")),
        }
    });
    let on_failure = Box::new(move |msg: String| {
        let h = handle; // the whole handle moves in (Send), not its pointer
        // SAFETY: ends every NCCL operation of this communicator so no
        // kernel keeps the GPU; the process exits right after.
        unsafe {
            let _ = (lib.comm_abort)(h.0);
        }
        eprintln!("error: {msg}");
        std::process::exit(3);
    });
    Watchdog::start(info.rank, info.world, timeout, watchdog::POLL, async_error, on_failure)
}

/// The communicator handle, for the watchdog thread.
#[derive(Clone, Copy)]
struct CommHandle(ncclComm_t);
// SAFETY: NCCL allows ncclCommGetAsyncError and ncclCommAbort from another
// thread than the one that queues work.
unsafe impl Send for CommHandle {}

/// NCCL's type for a buffer used as `elem`.
fn nccl_type(v: &RawView, elem: Elem, what: &str) -> Result<ncclDataType_t> {
    Ok(match (v.dtype, elem) {
        (DType::F32, Elem::F32) => ncclDataType_t::ncclFloat32,
        (DType::Compute, Elem::F32) => ncclDataType_t::ncclBfloat16,
        (DType::U8, Elem::U8) => ncclDataType_t::ncclUint8,
        (d, e) => bail!("{what}: a {d:?} buffer cannot be communicated as {e:?}"),
    })
}

fn at(v: &RawView, elems: usize) -> *mut c_void {
    (v.ptr + (elems * v.elem_bytes) as u64) as *mut c_void
}

fn equal(counts: &[usize]) -> bool {
    counts.windows(2).all(|w| w[0] == w[1])
}

impl Comm<CudaBackend> for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn kind(&self) -> &'static str {
        "nccl"
    }

    fn start_all_reduce_sum(&mut self, b: &mut CudaBackend, v: View) -> Result<Ticket> {
        self.agree(Op::AllReduceSum, Elem::F32, 0, v.len, &[])?;
        let r = b.comm_write(v)?;
        let t = nccl_type(&r, Elem::F32, "all_reduce_sum")?;
        if v.len == 0 {
            return Ok(Ticket::DONE);
        }
        self.enter(b)?;
        // SAFETY: in place over a checked view, on the stream that orders it.
        let res = unsafe { (self.lib.all_reduce)(at(&r, 0), at(&r, 0), v.len, t, ncclRedOp_t::ncclSum, self.comm, self.stream()) };
        self.ok("all_reduce_sum (ncclAllReduce)", res)?;
        self.ring_bytes(v.len, r.elem_bytes, 2.0);
        self.leave("all_reduce_sum")
    }

    fn start_reduce_scatter_sum(&mut self, b: &mut CudaBackend, full: View, counts: &[usize]) -> Result<Ticket> {
        check_counts("reduce_scatter_sum", full, counts, self.world)?;
        self.agree(Op::ReduceScatterSum, Elem::F32, 0, full.len, counts)?;
        let r = b.comm_write(full)?;
        let t = nccl_type(&r, Elem::F32, "reduce_scatter_sum")?;
        if full.len == 0 {
            return Ok(Ticket::DONE);
        }
        self.enter(b)?;
        let (comm, stream, sum) = (self.comm, self.stream(), ncclRedOp_t::ncclSum);
        if equal(counts) {
            let (c, own) = (counts[0], at(&r, counts[0] * self.rank));
            // SAFETY: in place: our segment is at rank·c, as NCCL requires.
            let res = unsafe { (self.lib.reduce_scatter)(at(&r, 0), own, c, t, sum, comm, stream) };
            self.ok("reduce_scatter_sum (ncclReduceScatter)", res)?;
        } else {
            self.group(|s| {
                for (root, &c) in counts.iter().enumerate().filter(|(_, &c)| c > 0) {
                    let p = at(&r, segment(counts, root).0);
                    // SAFETY: in place over segment `root` of a checked view.
                    let res = unsafe { (s.lib.reduce)(p, p, c, t, sum, root as i32, comm, stream) };
                    s.ok("reduce_scatter_sum (grouped ncclReduce)", res)?;
                }
                Ok(())
            })?;
        }
        self.ring_bytes(full.len, r.elem_bytes, 1.0);
        self.leave("reduce_scatter_sum")
    }

    fn start_all_gather(&mut self, b: &mut CudaBackend, full: View, counts: &[usize], elem: Elem) -> Result<Ticket> {
        check_counts("all_gather", full, counts, self.world)?;
        self.agree(Op::AllGather, elem, 0, full.len, counts)?;
        let r = b.comm_write(full)?;
        let t = nccl_type(&r, elem, "all_gather")?;
        if full.len == 0 {
            return Ok(Ticket::DONE);
        }
        self.enter(b)?;
        let (comm, stream) = (self.comm, self.stream());
        if equal(counts) {
            let (c, own) = (counts[0], at(&r, counts[0] * self.rank));
            // SAFETY: in place: our segment is at rank·c, as NCCL requires.
            let res = unsafe { (self.lib.all_gather)(own, at(&r, 0), c, t, comm, stream) };
            self.ok("all_gather (ncclAllGather)", res)?;
        } else {
            self.group(|s| {
                for (root, &c) in counts.iter().enumerate().filter(|(_, &c)| c > 0) {
                    let p = at(&r, segment(counts, root).0);
                    // SAFETY: in place over segment `root` of a checked view.
                    let res = unsafe { (s.lib.broadcast)(p, p, c, t, root as i32, comm, stream) };
                    s.ok("all_gather (grouped ncclBroadcast)", res)?;
                }
                Ok(())
            })?;
        }
        self.ring_bytes(full.len, r.elem_bytes, 1.0);
        self.leave("all_gather")
    }

    fn all_reduce_sum(&mut self, b: &mut CudaBackend, v: View) -> Result<()> {
        let t = self.start_all_reduce_sum(b, v)?;
        self.wait(b, t)
    }

    fn reduce_scatter_sum(&mut self, b: &mut CudaBackend, full: View, counts: &[usize]) -> Result<()> {
        let t = self.start_reduce_scatter_sum(b, full, counts)?;
        self.wait(b, t)
    }

    fn all_gather(&mut self, b: &mut CudaBackend, full: View, counts: &[usize], elem: Elem) -> Result<()> {
        let t = self.start_all_gather(b, full, counts, elem)?;
        self.wait(b, t)
    }

    fn broadcast(&mut self, b: &mut CudaBackend, v: View, root: usize, elem: Elem) -> Result<()> {
        let t = self.start_broadcast(b, v, root, elem)?;
        self.wait(b, t)
    }

    fn all_to_all(&mut self, b: &mut CudaBackend, send: View, recv: View, elem: Elem) -> Result<()> {
        let t = self.start_all_to_all(b, send, recv, elem)?;
        self.wait(b, t)
    }

    /// The compute stream waits (on the device) for the collective's end.
    fn wait(&mut self, b: &mut CudaBackend, ticket: Ticket) -> Result<()> {
        if ticket == Ticket::DONE {
            return Ok(());
        }
        let Some(end) = self.flights.remove(&ticket.0) else {
            bail!("wait: collective #{} was never started or was waited for already", ticket.0)
        };
        b.comm_bind()?;
        b.compute_waits(&end)
    }

    fn all_reduce_host(&mut self, vals: &mut [f64]) -> Result<()> {
        Comm::<CudaBackend>::all_reduce_host(&mut self.host, vals)
    }

    /// Waits for this rank's queued GPU work (both streams), then for every rank.
    fn barrier(&mut self) -> Result<()> {
        for s in [&self.compute, &self.side] {
            s.synchronize().map_err(|e| anyhow::anyhow!("barrier: CUDA error while waiting for the GPU: {e:?}"))?;
        }
        Comm::<CudaBackend>::barrier(&mut self.host)
    }

    fn bytes_sent(&self) -> u64 {
        self.device_bytes + Comm::<CudaBackend>::bytes_sent(&self.host)
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Stop watching first: the thread uses the communicator.
        self.watchdog = None;
        // SAFETY: our communicator, aborted once; abort does not wait for
        // other ranks (destroy would).
        unsafe {
            let _ = (self.lib.comm_abort)(self.comm);
        }
    }
}
