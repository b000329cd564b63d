//! `offload.params = nvme` (ZeRO-Infinity's parameter tier): neither the
//! device nor host memory holds a unit's weights between uses. When a pass
//! fetches a unit, its compute weights (the bf16 image on CUDA, the fp32
//! master on the CPU backend: the leading section of the unit's file, see
//! [`super::nvme`]) are read from disk into one of a small pool of aligned,
//! page-locked host buffers, uploaded on the copy stream by [`Streamed`]
//! (which also uploads the unit after it ahead when its read has landed),
//! and the buffer goes back to the pool once the device copy is dropped.
//!
//! A reader thread keeps `offload.prefetch` units ahead of the pass: the
//! passes fetch units in a fixed order ([`Order`]), so the units after the
//! current one are read while it computes, and disk reads, uploads and
//! compute overlap.
//!
//! Ordering with the optimizer: a unit's file is rewritten by its step
//! (`run_job`), so from the moment its step is dispatched until the step
//! is installed ([`DiskStream::begin_unit_step`] / `end_unit_step`) no read
//! of it is started, and a read already in flight is waited for and thrown
//! away (its values are the old weights). The step's write goes on behind
//! it (`super::write_behind`): a read started later waits for it in
//! `StateFiles::read_pass`.

use super::nvme::AlignedBuf;
use super::stream::Streamed;
use crate::backend::{Backend, HostSrc};
use anyhow::{anyhow, bail, Result};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

/// Host buffers besides the read-ahead window: the units on the device
/// whose buffers an upload may still read (the one computing, the one
/// uploaded ahead, the tied embeddings while the head runs) and the one
/// read for the fetch at hand.
const EXTRA_BUFFERS: usize = 4;

/// Host buffers of the pool for a read-ahead window of `prefetch` units.
pub fn pool_buffers(prefetch: usize) -> usize {
    prefetch + EXTRA_BUFFERS
}

/// Reads unit `u`'s compute weights into the buffer.
pub type ReadFn = Box<dyn Fn(usize, &mut AlignedBuf) -> Result<()> + Send>;

/// Where a unit's compute weights are on the host.
enum Slot {
    /// Not on the host.
    Empty,
    /// Its read is with the reader thread.
    Reading,
    /// Read, not uploaded.
    Ready(AlignedBuf),
    /// Uploaded (the upload may still read it): kept until the device
    /// copy is dropped.
    Lent(AlignedBuf),
    /// Its read failed; the pass that fetches it gets the error.
    Failed(anyhow::Error),
}

struct Landed {
    unit: usize,
    buf: AlignedBuf,
    out: Result<()>,
}

/// Counters of the parameter reads (tests, benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReadStats {
    /// Units read from disk.
    pub reads: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Milliseconds the training thread waited for a read to land.
    pub wait_ms: f64,
    /// Host buffers allocated (at most [`pool_buffers`] but for a pass
    /// that holds more units at once than it has).
    pub buffers: usize,
}

/// The order in which the passes fetch units, by the unit a fetch names
/// (for tied embeddings the head's fetch brings the embeddings too):
/// forward 0, 1, …, n+1, and in a training step backward n, …, 1 after
/// it; then the next micro-batch's (or evaluation batch's) forward again.
struct Order {
    units: usize,
    tied: bool,
    /// Between `begin_step` and `finish`: the passes are training passes.
    training: bool,
    /// The micro-batch running is the step's last: reading past its
    /// backward would read weights its step is about to change.
    last_micro: bool,
    /// Index in [`Order::cycle`] of the latest fetch.
    pos: Option<usize>,
    /// Units whose weights are in files (the others, resident in host
    /// memory with `offload.host_gb`, are never read ahead).
    in_files: Vec<bool>,
}

impl Order {
    fn cycle(&self) -> Vec<usize> {
        let mut c: Vec<usize> = (0..self.units).collect();
        if self.training {
            c.extend((1..self.units - 1).rev());
        }
        c
    }

    /// The pass fetches `named`: the first place after the latest fetch
    /// where the cycle names it.
    fn advance(&mut self, named: usize) {
        let c = self.cycle();
        let from = self.pos.map_or(0, |p| p + 1);
        self.pos = (0..c.len()).map(|k| (from + k) % c.len()).find(|&i| c[i] == named).or(self.pos);
    }

    /// Up to `k` units the passes will fetch next, soonest first.
    fn ahead(&self, k: usize) -> Vec<usize> {
        let Some(pos) = self.pos else { return vec![] };
        let c = self.cycle();
        let wrap = !(self.training && self.last_micro);
        let steps = if wrap { c.len() - 1 } else { c.len() - 1 - pos };
        let mut out = vec![];
        for v in (1..=steps).map(|s| c[(pos + s) % c.len()]) {
            let with_tied = if self.tied && v == self.units - 1 { vec![0, v] } else { vec![v] };
            for w in with_tied {
                if self.in_files[w] && out.len() < k && !out.contains(&w) {
                    out.push(w);
                }
            }
        }
        out
    }
}

pub struct DiskStream {
    /// Each unit's parameter count and start in the layout.
    lens: Vec<usize>,
    starts: Vec<usize>,
    /// Units whose weights are in files; the others are resident in host
    /// memory and come from the caller's source.
    on_disk: Vec<bool>,
    /// The files hold bf16 images (the device computes in bf16).
    bf16: bool,
    /// Bytes of one pool buffer (the largest unit's pass section).
    buf_bytes: usize,
    cap: usize,
    prefetch: usize,
    slots: Vec<Slot>,
    free: Vec<AlignedBuf>,
    /// Units whose optimizer step is running: their files are being
    /// rewritten.
    stepping: Vec<bool>,
    order: Order,
    reading: usize,
    requests: Option<Sender<(usize, AlignedBuf)>>,
    landed: Receiver<Landed>,
    reader: Option<JoinHandle<()>>,
    stats: ReadStats,
}

impl DiskStream {
    /// Units with `lens` parameters starting at `starts`, those marked in
    /// `on_disk` in files; `pass_bytes`: the largest file unit's pass
    /// section; `read` runs on the reader thread.
    #[allow(clippy::too_many_arguments)]
    pub fn new(lens: Vec<usize>, starts: Vec<usize>, on_disk: Vec<bool>, bf16: bool, pass_bytes: usize, prefetch: usize, tied: bool, read: ReadFn) -> Result<Self> {
        let units = lens.len();
        let (requests, rx) = channel::<(usize, AlignedBuf)>();
        let (tx, landed) = channel();
        let reader = std::thread::Builder::new()
            .name("offload-param-reader".into())
            .spawn(move || {
                for (unit, mut buf) in rx {
                    let out = read(unit, &mut buf);
                    if tx.send(Landed { unit, buf, out }).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| anyhow!("cannot start the offload parameter reader thread: {e}"))?;
        let in_files = on_disk.clone();
        Ok(DiskStream {
            lens,
            starts,
            on_disk,
            bf16,
            buf_bytes: pass_bytes,
            cap: pool_buffers(prefetch),
            prefetch,
            slots: (0..units).map(|_| Slot::Empty).collect(),
            free: vec![],
            stepping: vec![false; units],
            order: Order { units, tied, training: false, last_micro: true, pos: None, in_files },
            reading: 0,
            requests: Some(requests),
            landed,
            reader: Some(reader),
            stats: ReadStats::default(),
        })
    }

    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// Units whose weights are in host memory now (read, being read, or
    /// lent to an upload).
    pub fn host_units(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s, Slot::Reading | Slot::Ready(_) | Slot::Lent(_))).count()
    }

    /// Host bytes of the read buffers allocated so far (they are kept for
    /// the run and reused).
    pub fn host_bytes(&self) -> u64 {
        (self.stats.buffers * self.buf_bytes) as u64
    }

    /// A training step starts (`true`) or ends: the passes' order.
    pub fn set_training(&mut self, training: bool) {
        self.order.training = training;
        self.order.last_micro = true;
        self.order.pos = None;
    }

    pub fn set_last_micro(&mut self, last: bool) {
        self.order.last_micro = last;
    }

    /// The pass fetches `units` (the unit it names last, after the tied
    /// embeddings): each is read from disk unless on the device or read
    /// ahead already, then uploaded; reads for the units after them start.
    /// Units not in files upload from `host_src` (their start in the
    /// layout and host values, `None` while their step runs).
    pub fn fetch<'h, B: Backend>(&mut self, b: &mut B, s: &mut Streamed, units: &[usize], host_src: impl Fn(usize) -> Option<(usize, HostSrc<'h>)>) -> Result<()> {
        let named = *units.last().ok_or_else(|| anyhow!("offload: a fetch of no unit"))?;
        self.land_done()?;
        self.order.advance(named);
        let window = self.order.ahead(self.prefetch);
        let from_files: Vec<usize> = units.iter().copied().filter(|&u| self.on_disk[u]).collect();
        for &u in &from_files {
            if self.stepping[u] {
                bail!("offload.params = nvme: unit {u} is fetched while its optimizer step rewrites its file");
            }
            if !s.resident(u) {
                self.make_ready(b, u, units, &window)?;
            }
        }
        self.read_ahead(b, s, units, &window)?;
        for &u in units {
            let (slots, starts, lens, bf16, on_disk) = (&self.slots, &self.starts, &self.lens, self.bf16, &self.on_disk);
            let src_of = |v: usize| match &slots[v] {
                _ if !on_disk[v] => host_src(v),
                Slot::Ready(buf) | Slot::Lent(buf) => Some((starts[v], source(buf, lens[v], bf16))),
                _ => None,
            };
            s.fetch(b, u, src_of)?;
            self.lend(s);
        }
        Ok(())
    }

    /// Buffers of units no longer on the device go back to the pool (after
    /// a release or the end of a step).
    pub fn recycle(&mut self, s: &Streamed) {
        for v in 0..self.slots.len() {
            if matches!(self.slots[v], Slot::Lent(_)) && !s.resident(v) {
                if let Slot::Lent(buf) = std::mem::replace(&mut self.slots[v], Slot::Empty) {
                    self.free.push(buf);
                }
            }
        }
    }

    /// Unit `u`'s step is dispatched: its file will be rewritten. A read
    /// in flight is waited for, and what was read is dropped.
    pub fn begin_unit_step(&mut self, u: usize) -> Result<()> {
        self.forget(u)?;
        self.stepping[u] = true;
        Ok(())
    }

    /// Unit `u`'s step is installed: its file holds the new weights.
    pub fn end_unit_step(&mut self, u: usize) {
        self.stepping[u] = false;
    }

    /// Drops unit `u`'s host copy (not one lent to an upload), waiting for
    /// its read if one is in flight: its file is about to change.
    pub fn forget(&mut self, u: usize) -> Result<()> {
        while matches!(self.slots[u], Slot::Reading) {
            self.land_one()?;
        }
        match std::mem::replace(&mut self.slots[u], Slot::Empty) {
            Slot::Ready(buf) => self.free.push(buf),
            Slot::Lent(buf) => self.slots[u] = Slot::Lent(buf),
            _ => {}
        }
        Ok(())
    }

    /// Waits until unit `u`'s weights are in a host buffer.
    fn make_ready<B: Backend>(&mut self, b: &mut B, u: usize, keep: &[usize], window: &[usize]) -> Result<()> {
        let waited = Instant::now();
        loop {
            match &self.slots[u] {
                Slot::Ready(_) | Slot::Lent(_) => break,
                Slot::Failed(_) => {
                    let Slot::Failed(e) = std::mem::replace(&mut self.slots[u], Slot::Empty) else { unreachable!() };
                    return Err(e);
                }
                Slot::Reading => self.land_one()?,
                Slot::Empty => {
                    let protect: Vec<usize> = keep.iter().chain(window).copied().collect();
                    let buf = match self.take_buffer(b, &protect)? {
                        Some(buf) => Some(buf),
                        None => self.take_buffer(b, keep)?,
                    };
                    match buf {
                        Some(buf) => self.request(u, buf)?,
                        // Every buffer is being read into: wait for one.
                        None if self.reading > 0 => self.land_one()?,
                        // Every buffer is lent to the device: one more.
                        None => {
                            let buf = self.alloc(b)?;
                            self.request(u, buf)?;
                        }
                    }
                }
            }
        }
        self.stats.wait_ms += waited.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    /// Starts reads of the window's units, as far as buffers allow without
    /// dropping a unit the window or this fetch needs.
    fn read_ahead<B: Backend>(&mut self, b: &mut B, s: &Streamed, keep: &[usize], window: &[usize]) -> Result<()> {
        let protect: Vec<usize> = keep.iter().chain(window).copied().collect();
        for &v in window {
            if !matches!(self.slots[v], Slot::Empty) || self.stepping[v] || s.resident(v) {
                continue;
            }
            match self.take_buffer(b, &protect)? {
                Some(buf) => self.request(v, buf)?,
                None => break,
            }
        }
        Ok(())
    }

    /// A free buffer, a new one while the pool is below its size, else the
    /// buffer of a read-ahead unit not in `protect` (the one read last).
    fn take_buffer<B: Backend>(&mut self, b: &mut B, protect: &[usize]) -> Result<Option<AlignedBuf>> {
        if let Some(buf) = self.free.pop() {
            return Ok(Some(buf));
        }
        if self.stats.buffers < self.cap {
            return self.alloc(b).map(Some);
        }
        let victim = (0..self.slots.len()).rev().find(|v| matches!(self.slots[*v], Slot::Ready(_)) && !protect.contains(v));
        Ok(victim.and_then(|v| match std::mem::replace(&mut self.slots[v], Slot::Empty) {
            Slot::Ready(buf) => Some(buf),
            _ => None,
        }))
    }

    /// A new pool buffer, page-locked so that uploads from it run on the
    /// copy stream at full speed.
    fn alloc<B: Backend>(&mut self, b: &mut B) -> Result<AlignedBuf> {
        let buf = AlignedBuf::new(self.buf_bytes)?;
        // SAFETY: the buffer lives in this pool for the run (buffers are
        // recycled, never freed before the stream is dropped).
        unsafe { b.pin_host(buf.bytes().as_ptr(), buf.len()) }?;
        self.stats.buffers += 1;
        Ok(buf)
    }

    fn request(&mut self, u: usize, buf: AlignedBuf) -> Result<()> {
        let tx = self.requests.as_ref().ok_or_else(|| anyhow!("offload parameter reader is gone"))?;
        tx.send((u, buf)).map_err(|_| anyhow!("the offload parameter reader thread stopped"))?;
        self.slots[u] = Slot::Reading;
        self.reading += 1;
        self.stats.reads += 1;
        self.stats.bytes += self.read_bytes(u) as u64;
        Ok(())
    }

    /// Bytes a read of unit `u` moves (its pass section, padded).
    fn read_bytes(&self, u: usize) -> usize {
        let elem = if self.bf16 { 2 } else { 4 };
        (elem * self.lens[u]).div_ceil(super::nvme::ALIGN) * super::nvme::ALIGN
    }

    /// Waits for the oldest read in flight.
    fn land_one(&mut self) -> Result<()> {
        let l = self.landed.recv().map_err(|_| anyhow!("the offload parameter reader thread stopped"))?;
        self.land(l);
        Ok(())
    }

    /// Takes every read that has landed, without waiting.
    fn land_done(&mut self) -> Result<()> {
        loop {
            match self.landed.try_recv() {
                Ok(l) => self.land(l),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) if self.reading == 0 => return Ok(()),
                Err(TryRecvError::Disconnected) => bail!("the offload parameter reader thread stopped"),
            }
        }
    }

    fn land(&mut self, l: Landed) {
        self.reading -= 1;
        self.slots[l.unit] = match l.out {
            Ok(()) => Slot::Ready(l.buf),
            Err(e) => {
                self.free.push(l.buf);
                Slot::Failed(e)
            }
        };
    }

    /// Read-ahead units the device now holds lend their buffers.
    fn lend(&mut self, s: &Streamed) {
        for v in 0..self.slots.len() {
            if matches!(self.slots[v], Slot::Ready(_)) && s.resident(v) {
                if let Slot::Ready(buf) = std::mem::replace(&mut self.slots[v], Slot::Empty) {
                    self.slots[v] = Slot::Lent(buf);
                }
            }
        }
    }
}

/// A unit's compute weights in its buffer: `n` bf16 or f32 values.
fn source(buf: &AlignedBuf, n: usize, bf16: bool) -> HostSrc<'_> {
    if bf16 { HostSrc::Bf16(buf.u16s(0, n)) } else { HostSrc::F32(buf.f32s(0, n)) }
}

impl Drop for DiskStream {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(units: usize, tied: bool, training: bool) -> Order {
        Order { units, tied, training, last_micro: true, pos: None, in_files: vec![true; units] }
    }

    #[test]
    fn reads_ahead_in_the_passes_order() {
        // 2 layers: units 0 (embed), 1, 2, 3 (head).
        let mut o = order(4, false, true);
        o.last_micro = false;
        o.advance(0);
        assert_eq!(o.ahead(3), vec![1, 2, 3]);
        o.advance(1);
        o.advance(2);
        o.advance(3);
        assert_eq!(o.ahead(3), vec![2, 1, 0], "backward, then the next micro-batch's forward");
        o.advance(2);
        o.advance(1);
        assert_eq!(o.ahead(2), vec![0, 1]);
        o.last_micro = true;
        assert_eq!(o.ahead(2), Vec::<usize>::new(), "nothing past the step's last backward");
        // Evaluation: forward after forward; tied: the head brings the embeddings.
        let mut e = order(4, true, false);
        e.advance(0);
        e.advance(1);
        assert_eq!(e.ahead(3), vec![2, 0, 3]);
        e.advance(2);
        e.advance(3);
        assert_eq!(e.ahead(2), vec![0, 1]);
        e.advance(0);
        assert_eq!(e.pos, Some(0));
    }
}
