//! The communicator every distributed path talks to: the collectives of one
//! group of ranks over buffers that live inside a backend.
//!
//! Two implementations: NCCL (CUDA buffers, one process per GPU) and a CPU
//! one over TCP (any backend, through host copies), so CI runs every
//! distributed path without a GPU. Lengths are checked here, never trusted
//! to the transport.
//!
//! Conventions:
//! - Reductions are sums. Callers that want a mean scale before or after.
//! - `counts` describe a buffer cut into `world` consecutive segments, rank
//!   `r`'s segment first at `sum(counts[..r])`; segments may differ in
//!   length (uneven shards, whole-tensor ownership) and may be empty.
//! - Every collective is numbered; ranks that call collectives in a
//!   different order or with different lengths get an error that names the
//!   collective, its number and the ranks that disagree, not a hang.
//! - Asynchronous collectives (`start_*` → [`Ticket`], then [`Comm::wait`]):
//!   the collective may still run after `start_*` returns, on the
//!   communicator's own stream (NCCL), while the caller queues compute.
//!   Until `wait(ticket)` the caller must neither read nor write the
//!   buffer, nor free it; after `wait` every op queued on the backend is
//!   ordered after the collective (on CUDA: the compute stream waits for
//!   it on the device, no host sync). Tickets are waited in any order,
//!   each once. The default implementation runs the collective at once
//!   (wait is a no-op): what `TcpComm` does.

use crate::backend::{Backend, DType, View};
use anyhow::Result;

/// Element type of a collective's buffers (views do not carry one).
/// `F32` means "float values": on CUDA a `Compute` buffer holds them as
/// bf16, and NCCL then communicates (and sums) bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    U8,
}

impl Elem {
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::U8 => 1,
        }
    }
    pub fn dtype(self) -> DType {
        match self {
            Elem::F32 => DType::F32,
            Elem::U8 => DType::U8,
        }
    }
}

/// A collective started with one of the `start_*` calls, to be handed to
/// [`Comm::wait`]. `Ticket::DONE`: already complete (nothing to wait for).
#[must_use = "a started collective must be waited for before its buffer is used"]
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket(pub u64);

impl Ticket {
    pub const DONE: Ticket = Ticket(0);
}

pub trait Comm<B: Backend> {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Which implementation (`tcp`, `nccl`), for logs.
    fn kind(&self) -> &'static str;

    /// `v = sum over ranks of v` (f32).
    fn all_reduce_sum(&mut self, b: &mut B, v: View) -> Result<()>;
    /// `full` cut by `counts`; on return this rank's segment holds the sum
    /// over ranks of that segment. Other segments are left unspecified.
    fn reduce_scatter_sum(&mut self, b: &mut B, full: View, counts: &[usize]) -> Result<()>;
    /// `full` cut by `counts`; each rank's own segment is the input, and on
    /// return every segment holds its owner's values.
    fn all_gather(&mut self, b: &mut B, full: View, counts: &[usize], elem: Elem) -> Result<()>;
    /// `v` on every rank becomes `root`'s `v`.
    fn broadcast(&mut self, b: &mut B, v: View, root: usize, elem: Elem) -> Result<()>;
    /// `send` and `recv` are cut into `world` equal chunks; chunk `j` of this
    /// rank's `send` lands in chunk `rank` of rank `j`'s `recv`.
    fn all_to_all(&mut self, b: &mut B, send: View, recv: View, elem: Elem) -> Result<()>;
    /// [`Comm::all_reduce_sum`], possibly still running on return.
    fn start_all_reduce_sum(&mut self, b: &mut B, v: View) -> Result<Ticket> {
        self.all_reduce_sum(b, v).map(|_| Ticket::DONE)
    }
    /// [`Comm::reduce_scatter_sum`], possibly still running on return.
    fn start_reduce_scatter_sum(&mut self, b: &mut B, full: View, counts: &[usize]) -> Result<Ticket> {
        self.reduce_scatter_sum(b, full, counts).map(|_| Ticket::DONE)
    }
    /// [`Comm::all_gather`], possibly still running on return.
    fn start_all_gather(&mut self, b: &mut B, full: View, counts: &[usize], elem: Elem) -> Result<Ticket> {
        self.all_gather(b, full, counts, elem).map(|_| Ticket::DONE)
    }
    /// Orders every op queued on `b` from now on after the started
    /// collective (its buffer may then be used and freed).
    fn wait(&mut self, _b: &mut B, _ticket: Ticket) -> Result<()> {
        Ok(())
    }
    /// Host values summed over ranks (losses, norms, counts), in f64.
    fn all_reduce_host(&mut self, vals: &mut [f64]) -> Result<()>;
    fn barrier(&mut self) -> Result<()>;
    /// Payload bytes this rank has sent so far (what compression saves).
    /// `TcpComm`: the bytes it writes (a star: rank 0 writes w-1 times what
    /// the others do; table in `tcp.rs`). `NcclComm`: what a ring algorithm
    /// sends per rank (NCCL's own traffic is not observable). Headers are
    /// not counted, so compressed and dense collectives compare by payload.
    fn bytes_sent(&self) -> u64;
    /// What [`Comm::bytes_sent`] would count for one dense all-reduce of
    /// `n` values of `elem` on this rank: the yardstick of compressed
    /// communication (`comm_ratio` in metrics.jsonl). Default: a ring,
    /// `2·(w-1)/w·n·e` (what `NcclComm` counts).
    fn all_reduce_bytes(&self, n: usize, elem: Elem) -> u64 {
        let w = self.world() as f64;
        (2.0 * (w - 1.0) / w * (n * elem.bytes()) as f64).round() as u64
    }
}

/// Segment boundaries of `counts`: `(offset, len)` of rank `r`'s segment.
pub fn segment(counts: &[usize], r: usize) -> (usize, usize) {
    (counts[..r].iter().sum(), counts[r])
}
