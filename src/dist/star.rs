//! The star transport under `TcpComm` (and the host-side collectives of
//! `NcclComm`): every rank holds one TCP connection to rank 0, and rank 0
//! one to every other rank.
//!
//! Every collective runs in two phases:
//! 1. **Agree.** Each rank sends rank 0 a header describing its call
//!    (sequence number, op, element type, root, length, segment counts).
//!    Rank 0 compares them with its own and answers every rank with a
//!    verdict: go, or an error text naming the ranks that disagree. Data is
//!    sent only after a "go", so a mismatch never leaves a half-written
//!    payload in a socket.
//! 2. **Data.** Ranks send their payload to rank 0; rank 0 combines (in
//!    rank order 0, 1, 2, …: deterministic) and replies to each rank with a
//!    status byte and its result, or with an error text if some rank failed
//!    meanwhile, so every rank fails with the same message.
//!
//! Timeouts (`timeout` = `dist.timeout_s`): rank 0 waits at most `timeout`
//! for all headers of a collective, and at most `timeout` of silence while
//! reading a payload. Other ranks wait up to twice as long for rank 0, so
//! that rank 0, which sees everyone, is the one that names a missing rank.
//! A closed socket is noticed at once. After any failure the star is
//! unusable: later calls fail with the first error.

use super::Elem;
use anyhow::{anyhow, bail, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const HEADER_MAGIC: [u8; 4] = *b"FTc1";
const HEADER_BYTES: usize = 30;
const STATUS_OK: u8 = 0;
const STATUS_ERR: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AllReduceSum = 1,
    ReduceScatterSum = 2,
    AllGather = 3,
    Broadcast = 4,
    AllToAll = 5,
    AllReduceHost = 6,
    Barrier = 7,
}

impl Op {
    /// The `Comm` method's name, as error messages show it.
    pub fn name(self) -> &'static str {
        match self {
            Op::AllReduceSum => "all_reduce_sum",
            Op::ReduceScatterSum => "reduce_scatter_sum",
            Op::AllGather => "all_gather",
            Op::Broadcast => "broadcast",
            Op::AllToAll => "all_to_all",
            Op::AllReduceHost => "all_reduce_host",
            Op::Barrier => "barrier",
        }
    }
    fn from_u8(x: u8) -> Option<Op> {
        [Op::AllReduceSum, Op::ReduceScatterSum, Op::AllGather, Op::Broadcast, Op::AllToAll, Op::AllReduceHost, Op::Barrier]
            .into_iter()
            .find(|op| *op as u8 == x)
    }
}

/// Element type on the wire: the `Comm` element types plus the f64 of host
/// reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    None = 0,
    F32 = 1,
    U8 = 2,
    F64 = 3,
}

impl From<Elem> for Wire {
    fn from(e: Elem) -> Wire {
        match e {
            Elem::F32 => Wire::F32,
            Elem::U8 => Wire::U8,
        }
    }
}

/// One rank's description of a collective call; ranks must agree on all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub seq: u64,
    pub op: Op,
    pub wire: Wire,
    pub root: u32,
    pub len: u64,
    pub counts: Vec<u64>,
}

impl Call {
    /// `#7 all_gather(len 16, u8, counts [8, 8])`.
    pub fn describe(&self) -> String {
        let mut args = vec![format!("len {}", self.len)];
        match self.wire {
            Wire::None => {}
            w => args.push(format!("{w:?}").to_lowercase()),
        }
        if matches!(self.op, Op::Broadcast) {
            args.push(format!("root {}", self.root));
        }
        if !self.counts.is_empty() {
            args.push(format!("counts {:?}", self.counts));
        }
        format!("#{} {}({})", self.seq, self.op.name(), args.join(", "))
    }

    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_BYTES + 8 * self.counts.len());
        h.extend_from_slice(&HEADER_MAGIC);
        h.extend_from_slice(&self.seq.to_le_bytes());
        h.push(self.op as u8);
        h.push(self.wire as u8);
        h.extend_from_slice(&self.root.to_le_bytes());
        h.extend_from_slice(&self.len.to_le_bytes());
        h.extend_from_slice(&(self.counts.len() as u32).to_le_bytes());
        self.counts.iter().for_each(|c| h.extend_from_slice(&c.to_le_bytes()));
        h
    }

    /// Reads one header; `None` text describes what was wrong with it.
    fn decode(fixed: &[u8; HEADER_BYTES]) -> std::result::Result<(Call, usize), String> {
        if fixed[..4] != HEADER_MAGIC {
            return Err("sent bytes that are not a collective header (a different program or version?)".into());
        }
        let u64_at = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(fixed[i..i + 4].try_into().expect("4 bytes"));
        let op = Op::from_u8(fixed[12]).ok_or_else(|| format!("sent unknown collective code {}", fixed[12]))?;
        let wire = match fixed[13] {
            0 => Wire::None,
            1 => Wire::F32,
            2 => Wire::U8,
            3 => Wire::F64,
            x => return Err(format!("sent unknown element code {x}")),
        };
        let ncounts = u32_at(26) as usize;
        if ncounts > 1 << 20 {
            return Err(format!("sent a header with {ncounts} segment counts"));
        }
        Ok((Call { seq: u64_at(4), op, wire, root: u32_at(14), len: u64_at(18), counts: Vec::new() }, ncounts))
    }
}

pub struct Star {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Rank 0: `links[k]` talks to rank k (`links[0]` is None). Other ranks:
    /// `links[0]` talks to rank 0. Empty for a world of 1.
    links: Vec<Option<TcpStream>>,
    seq: u64,
    /// The first failure; the star refuses further collectives after it.
    broken: Option<String>,
    bytes_sent: u64,
}

impl Star {
    /// A world of one: collectives have no one to talk to.
    pub fn single(timeout: Duration) -> Star {
        Star { rank: 0, world: 1, timeout, links: Vec::new(), seq: 0, broken: None, bytes_sent: 0 }
    }

    /// From the rendezvous' sockets (see `store`).
    pub(super) fn new(rank: usize, world: usize, timeout: Duration, links: Vec<Option<TcpStream>>) -> Result<Star> {
        // A write blocks while its reader is busy elsewhere: rank 0 reads
        // the ranks one after another, so the others may wait longer.
        let write_wait = if rank == 0 { timeout } else { 2 * timeout };
        for s in links.iter().flatten() {
            s.set_write_timeout(Some(write_wait)).map_err(|e| anyhow!("setting a socket timeout: {e}"))?;
        }
        Ok(Star { rank, world, timeout, links, seq: 0, broken: None, bytes_sent: 0 })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world(&self) -> usize {
        self.world
    }
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Number the next collective and make every rank agree on it (phase 1).
    pub fn begin(&mut self, op: Op, wire: Wire, root: usize, len: usize, counts: &[usize]) -> Result<Call> {
        if let Some(first) = &self.broken {
            bail!("the communicator failed earlier and cannot be used again: {first}");
        }
        self.seq += 1;
        let call = Call { seq: self.seq, op, wire, root: root as u32, len: len as u64, counts: counts.iter().map(|&c| c as u64).collect() };
        if self.world > 1 {
            self.run(&call, |s| if s.is_root() { s.agree_root(&call) } else { s.agree_peer(&call) })?;
        }
        Ok(call)
    }

    /// Runs the data phase `f` of `call`: on failure, rank 0 tells every
    /// other rank why, the star is marked broken, and the error names the
    /// collective and this rank.
    pub fn run<T>(&mut self, call: &Call, f: impl FnOnce(&mut Star) -> Result<T>) -> Result<T> {
        match f(self) {
            Ok(t) => Ok(t),
            Err(e) => {
                let why = format!("{e:#}");
                if self.is_root() {
                    self.tell_all_failed(&why);
                }
                let msg = format!("collective {} failed on rank {}: {why}", call.describe(), self.rank);
                self.broken = Some(msg.clone());
                Err(anyhow!(msg))
            }
        }
    }

    // ---- phase 1 ----

    fn agree_root(&mut self, mine: &Call) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut calls = vec![mine.clone()];
        for k in 1..self.world {
            calls.push(self.read_header(k, deadline)?);
        }
        if calls.iter().all(|c| c == mine) {
            for k in 1..self.world {
                self.write_to(k, &[STATUS_OK], 0)?;
            }
            return Ok(());
        }
        bail!("ranks are out of step: {}", describe_groups(&calls))
    }

    fn agree_peer(&mut self, mine: &Call) -> Result<()> {
        self.write_to(0, &mine.encode(), 0)?;
        self.read_status(2 * self.timeout)
    }

    fn read_header(&mut self, k: usize, deadline: Instant) -> Result<Call> {
        let timeout = self.timeout;
        let s = self.link(k)?;
        let mut fixed = [0u8; HEADER_BYTES];
        read_until(s, &mut fixed, deadline).map_err(|e| arrival_error(k, e, timeout))?;
        let (mut call, ncounts) = Call::decode(&fixed).map_err(|why| anyhow!("rank {k} {why}"))?;
        let mut counts = vec![0u8; 8 * ncounts];
        read_until(s, &mut counts, deadline).map_err(|e| arrival_error(k, e, timeout))?;
        call.counts = counts.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        Ok(call)
    }

    // ---- phase 2, rank 0 ----

    /// Rank 0: the `bytes` payload rank `k` sends in this collective.
    pub fn recv_from(&mut self, k: usize, bytes: usize) -> Result<Vec<u8>> {
        let idle = self.timeout;
        let mut buf = vec![0u8; bytes];
        read_idle(self.link(k)?, &mut buf, idle).map_err(|e| peer_error(k, e, idle))?;
        Ok(buf)
    }

    /// Rank 0: "ok" and `data` (this collective's result) to rank `k`.
    pub fn reply(&mut self, k: usize, data: &[u8]) -> Result<()> {
        self.write_to(k, &[STATUS_OK], 0)?;
        self.write_to(k, data, data.len())
    }

    /// Rank 0, after a failure: tell every rank why (best effort: some may
    /// be gone already).
    fn tell_all_failed(&mut self, why: &str) {
        let mut msg = vec![STATUS_ERR];
        msg.extend_from_slice(&(why.len() as u32).to_le_bytes());
        msg.extend_from_slice(why.as_bytes());
        for s in self.links.iter_mut().flatten() {
            let _ = s.write_all(&msg);
        }
    }

    // ---- phase 2, other ranks ----

    /// This rank's payload to rank 0.
    pub fn send_up(&mut self, data: &[u8]) -> Result<()> {
        match self.write_to(0, data, data.len()) {
            Ok(()) => Ok(()),
            // Rank 0 stopped reading because some rank failed: its reason
            // is likely waiting in our socket.
            Err(e) => Err(self.read_status(Duration::from_secs(1)).err().unwrap_or(e)),
        }
    }

    /// Rank 0's reply of `bytes` bytes (or the failure it reports).
    pub fn recv_down(&mut self, bytes: usize) -> Result<Vec<u8>> {
        let idle = 2 * self.timeout;
        self.read_status(idle)?;
        let mut buf = vec![0u8; bytes];
        read_idle(self.link(0)?, &mut buf, idle).map_err(|e| peer_error(0, e, idle))?;
        Ok(buf)
    }

    /// A status byte from rank 0; an error status carries rank 0's reason.
    fn read_status(&mut self, idle: Duration) -> Result<()> {
        let s = self.link(0)?;
        let mut st = [0u8; 1];
        read_idle(s, &mut st, idle).map_err(|e| peer_error(0, e, idle))?;
        match st[0] {
            STATUS_OK => Ok(()),
            STATUS_ERR => {
                let mut len = [0u8; 4];
                read_idle(s, &mut len, idle).map_err(|e| peer_error(0, e, idle))?;
                let mut text = vec![0u8; (u32::from_le_bytes(len) as usize).min(1 << 20)];
                read_idle(s, &mut text, idle).map_err(|e| peer_error(0, e, idle))?;
                bail!("{} (reported by rank 0)", String::from_utf8_lossy(&text))
            }
            x => bail!("rank 0 sent status byte {x}, expected 0 or 1 (a different program or version?)"),
        }
    }

    // ---- sockets ----

    fn link(&mut self, k: usize) -> Result<&mut TcpStream> {
        self.links.get_mut(k).and_then(|l| l.as_mut()).ok_or_else(|| anyhow!("no connection to rank {k}"))
    }

    /// Writes to rank `k`; `payload` bytes of it count as sent.
    fn write_to(&mut self, k: usize, data: &[u8], payload: usize) -> Result<()> {
        let timeout = self.timeout;
        self.link(k)?.write_all(data).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                anyhow!("rank {k} did not read what this rank sent for {:.1} s (dist.timeout_s)", timeout.as_secs_f64())
            }
            _ => anyhow!("rank {k} closed its connection ({e}); did it exit or crash?"),
        })?;
        self.bytes_sent += payload as u64;
        Ok(())
    }
}

/// "rank 0 called #5 all_reduce_sum(len 16, f32); ranks 1, 2 called #5 barrier(len 0)".
fn describe_groups(calls: &[Call]) -> String {
    let mut groups: Vec<(&Call, Vec<usize>)> = Vec::new();
    for (r, c) in calls.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == c) {
            Some((_, ranks)) => ranks.push(r),
            None => groups.push((c, vec![r])),
        }
    }
    let part = |(c, ranks): &(&Call, Vec<usize>)| {
        let who = if ranks.len() == 1 { format!("rank {}", ranks[0]) } else { format!("ranks {}", join(ranks)) };
        format!("{who} called {}", c.describe())
    };
    groups.iter().map(part).collect::<Vec<_>>().join("; ")
}

pub fn join(ranks: &[usize]) -> String {
    ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

/// Fill `buf` before `deadline` (Ok) or say why not.
fn read_until(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fill `buf`, failing after `idle` without a single byte arriving.
fn read_idle(s: &mut TcpStream, buf: &mut [u8], idle: Duration) -> std::io::Result<()> {
    s.set_read_timeout(Some(idle))?;
    s.read_exact(buf)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn arrival_error(k: usize, e: std::io::Error, timeout: Duration) -> anyhow::Error {
    if is_timeout(&e) {
        anyhow!(
            "rank {k} did not reach this collective within {:.1} s (dist.timeout_s): it is stuck, slower than the timeout, \
             or called a different number of collectives",
            timeout.as_secs_f64()
        )
    } else {
        peer_error(k, e, timeout)
    }
}

fn peer_error(k: usize, e: std::io::Error, waited: Duration) -> anyhow::Error {
    if is_timeout(&e) {
        anyhow!("rank {k} sent nothing for {:.1} s (dist.timeout_s)", waited.as_secs_f64())
    } else if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe) {
        // A peer that exits with unread data in its socket resets the
        // connection instead of closing it: the same event for us.
        anyhow!("rank {k} closed its connection ({e}); did it exit or crash?")
    } else {
        anyhow!("the connection to rank {k} failed: {e}")
    }
}
