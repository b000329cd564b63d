//! Write-behind of the unit files (`offload.optimizer = nvme`): a stepped
//! unit (or, at start-up, a unit just made) is packed into one of a few
//! pooled I/O buffers and handed to a writer thread, so the optimizer
//! worker goes on to the next unit while the disk writes this one. At most
//! [`WRITES_IN_FLIGHT`] buffers exist; a unit packed while all are with
//! the writer waits for one to come back, so host memory stays bounded
//! (`budget::offload_bytes` counts them in the window).
//!
//! Each unit's queued writes are counted until done: anything that reads
//! or rewrites a unit's file waits for them first ([`WriteBehind::wait_unit`],
//! called by `StateFiles` before every read and write), and a step ends
//! with [`WriteBehind::flush`]. A failed write is kept, with the file's
//! path: waiting for that unit, flushing, or queueing any later write
//! returns it, so it stops the run instead of being lost on the thread.
//! One writer, units in the order queued: the files are the same, byte
//! for byte, as written in line.

use super::direct_io::DirectIo;
use super::io_bufs::{AlignedBuf, IoBufs};
use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Sender};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

/// Units' buffers written behind at once: one on the disk, one packed
/// and waiting, so the disk never idles between two units.
pub const WRITES_IN_FLIGHT: usize = 2;

struct Queued {
    unit: usize,
    buf: AlignedBuf,
    /// Bytes of `buf` that make the file.
    len: usize,
}

#[derive(Default)]
struct Pending {
    /// Writes queued or running, per unit.
    queued: HashMap<usize, usize>,
    /// Units whose write failed, with why (their files are not the state).
    failed: HashMap<usize, String>,
    /// The first failure: the cause of any after it.
    first: Option<(usize, String)>,
}

type Shared = Arc<(Mutex<Pending>, Condvar)>;

pub struct WriteBehind {
    bufs: Arc<IoBufs>,
    /// `debug.offload_write_delay_ms`: each write sleeps this long first.
    delay_ms: Arc<AtomicU64>,
    tx: Mutex<Option<Sender<Queued>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    state: Shared,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WriteBehind {
    /// Starts the writer thread for the files of `io`.
    pub fn start(io: Arc<DirectIo>) -> Result<Self> {
        let bufs = Arc::new(IoBufs::new(WRITES_IN_FLIGHT));
        let state: Shared = Arc::default();
        let (tx, rx) = channel::<Queued>();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (st, back, delay) = (state.clone(), bufs.clone(), delay_ms.clone());
        let thread = std::thread::Builder::new()
            .name("offload-writer".into())
            .spawn(move || {
                for q in rx {
                    let why = write_one(&io, &st, &delay, &q);
                    back.give(q.buf);
                    let (m, cv) = &*st;
                    let mut p = lock(m);
                    if let Some(why) = why {
                        p.first.get_or_insert_with(|| (q.unit, why.clone()));
                        p.failed.insert(q.unit, why);
                    }
                    done_one(&mut p.queued, q.unit);
                    cv.notify_all();
                }
            })
            .context("cannot start the offload file writer thread")?;
        Ok(WriteBehind { bufs, delay_ms, tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), state })
    }

    /// `debug.offload_write_delay_ms`.
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Packs unit `unit`'s whole file (`len` bytes) into a pooled buffer
    /// with `pack` — waiting for one while [`WRITES_IN_FLIGHT`] are with
    /// the writer — and hands it to the writer; the milliseconds it waited
    /// for the buffer (the disk behind). After a failed write nothing more
    /// is queued: that failure is returned.
    pub fn queue(&self, unit: usize, len: usize, pack: impl FnOnce(&mut AlignedBuf) -> Result<()>) -> Result<f64> {
        self.failed_any()?;
        let t = Instant::now();
        let mut buf = self.bufs.take(len)?;
        let waited = t.elapsed().as_secs_f64() * 1e3;
        if let Err(e) = pack(&mut buf) {
            self.bufs.give(buf);
            return Err(e);
        }
        let (m, _) = &*self.state;
        *lock(m).queued.entry(unit).or_default() += 1;
        let q = Queued { unit, buf, len };
        let unsent = match lock(&self.tx).as_ref() {
            Some(tx) => tx.send(q).err().map(|e| e.0),
            None => Some(q),
        };
        if let Some(q) = unsent {
            self.bufs.give(q.buf);
            done_one(&mut lock(m).queued, unit);
            return Err(anyhow!("offload: the file writer thread is gone (unit {unit}'s file not written)"));
        }
        Ok(waited)
    }

    /// The first failed write so far, as an error.
    fn failed_any(&self) -> Result<()> {
        let (m, _) = &*self.state;
        lock(m).first.as_ref().map_or(Ok(()), |(u, why)| Err(failure(*u, why)))
    }

    /// Waits until unit `unit`'s queued writes are on disk; its write's
    /// failure, if one failed.
    pub fn wait_unit(&self, unit: usize) -> Result<()> {
        let (m, cv) = &*self.state;
        let mut p = lock(m);
        while p.queued.contains_key(&unit) {
            p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.failed.get(&unit).map_or(Ok(()), |why| Err(failure(unit, why)))
    }

    /// Waits until every queued write is on disk; the first failure, if any.
    pub fn flush(&self) -> Result<()> {
        let (m, cv) = &*self.state;
        let mut p = lock(m);
        while !p.queued.is_empty() {
            p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        drop(p);
        self.failed_any()
    }

    /// Drops the free buffers (between steps).
    pub fn release(&self) {
        self.bufs.release();
    }

    /// Host bytes of the write buffers that exist now.
    pub fn held_bytes(&self) -> u64 {
        self.bufs.held_bytes()
    }

    /// Lets the queued writes finish and stops the thread (before the
    /// folder goes).
    pub fn close(&self) {
        drop(lock(&self.tx).take());
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.close();
    }
}

/// Writes `q` to its file; why it failed, if it did. After a failure the
/// writes still queued are not tried (the run is stopping; the tier's
/// files are no longer one state).
fn write_one(io: &DirectIo, st: &Shared, delay_ms: &AtomicU64, q: &Queued) -> Option<String> {
    if let Some((u, _)) = &lock(&st.0).first {
        return Some(format!("skipped: unit {u}'s write failed before it"));
    }
    let ms = delay_ms.load(Ordering::Relaxed);
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    match catch_unwind(AssertUnwindSafe(|| io.write(q.unit, &q.buf.bytes()[..q.len]))) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!("the writer of {} panicked", io.path(q.unit).display())),
    }
}

fn done_one(queued: &mut HashMap<usize, usize>, unit: usize) {
    if let Some(n) = queued.get_mut(&unit) {
        *n -= 1;
        if *n == 0 {
            queued.remove(&unit);
        }
    }
}

fn failure(unit: usize, why: &str) -> anyhow::Error {
    anyhow!("offload: unit {unit}'s state file was not written ({why}); the NVMe tier's files no longer hold the run's state, so the run stops (resume from the newest checkpoint once offload.path is writable)")
}
