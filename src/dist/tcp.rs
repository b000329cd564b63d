//! `TcpComm`: the communicator for any backend, over TCP through host
//! copies (`download`/`upload`; memcpys on the CPU backend). What CI runs
//! every distributed path on.
//!
//! Topology: a star through rank 0 (see `star`). Rank 0 receives every
//! rank's payload, combines in rank order 0, 1, 2, … (sums are
//! `((x0 + x1) + x2) + …` in f32, or f64 for host values: the same bits
//! every run and on every rank) and sends each rank its result. Fine for
//! the small models CI trains; NCCL is the fast path.
//!
//! `bytes_sent` counts the payload bytes this rank writes (headers and
//! status bytes excluded), per collective (`n` elements of `e` bytes,
//! world `w`):
//!
//! | collective          | rank 0 writes          | every other rank writes |
//! |---------------------|------------------------|-------------------------|
//! | all_reduce_sum      | (w-1)·n·e              | n·e                     |
//! | reduce_scatter_sum  | (n - own segment)·e    | n·e                     |
//! | all_gather          | Σ over ranks k≠0 of (n - own_k)·e | own segment·e |
//! | broadcast (root 0)  | (w-1)·n·e              | 0                       |
//! | all_to_all          | (w-1)·(w-1)/w·n·e      | (w-1)/w·n·e             |
//! | all_reduce_host     | (w-1)·8·len            | 8·len                   |
//!
//! A ring all-reduce would have every rank write 2·(w-1)/w·n·e instead:
//! the star loads rank 0 with w-1 times what the others send. The count is
//! per payload and consistent across ops, so a compressed collective
//! (1-bit Adam) and a dense one compare fairly on the same communicator.

use super::comm::{segment, Comm, Elem};
use super::rendezvous::WorldInfo;
use super::star::{Op, Star, Wire};
use super::store::rendezvous;
use crate::backend::{Backend, View};
use anyhow::{bail, Result};
use std::time::Duration;

pub struct TcpComm {
    star: Star,
}

impl TcpComm {
    /// Meet the other ranks of `info` (see `store`); a world of 1 meets no one.
    pub fn connect(info: &WorldInfo, timeout: Duration) -> Result<TcpComm> {
        Ok(TcpComm { star: rendezvous(info, timeout, &[])?.0 })
    }

    pub fn from_star(star: Star) -> TcpComm {
        TcpComm { star }
    }

    /// The transport, for `NcclComm`'s header checks.
    pub(crate) fn star_mut(&mut self) -> &mut Star {
        &mut self.star
    }

    fn world(&self) -> usize {
        self.star.world()
    }
}

impl<B: Backend> Comm<B> for TcpComm {
    fn rank(&self) -> usize {
        self.star.rank()
    }
    fn world(&self) -> usize {
        self.star.world()
    }
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce_sum(&mut self, b: &mut B, v: View) -> Result<()> {
        let call = self.star.begin(Op::AllReduceSum, Wire::F32, 0, v.len, &[])?;
        if self.world() == 1 {
            return Ok(());
        }
        let mine = download(b, v, Elem::F32)?;
        let w = self.world();
        let out = self.star.run(&call, |s| {
            if !s.is_root() {
                s.send_up(&mine)?;
                return s.recv_down(mine.len());
            }
            let mut acc = f32s(&mine);
            for k in 1..w {
                add_into(&mut acc, &s.recv_from(k, mine.len())?);
            }
            let out = f32_bytes(&acc);
            for k in 1..w {
                s.reply(k, &out)?;
            }
            Ok(out)
        })?;
        upload(b, v, Elem::F32, &out)
    }

    fn reduce_scatter_sum(&mut self, b: &mut B, full: View, counts: &[usize]) -> Result<()> {
        check_counts("reduce_scatter_sum", full, counts, self.world())?;
        let call = self.star.begin(Op::ReduceScatterSum, Wire::F32, 0, full.len, counts)?;
        if self.world() == 1 {
            return Ok(());
        }
        let mine = download(b, full, Elem::F32)?;
        let (off, len) = segment(counts, self.star.rank());
        let out = self.star.run(&call, |s| {
            if !s.is_root() {
                s.send_up(&mine)?;
                return s.recv_down(4 * len);
            }
            let mut acc = f32s(&mine);
            for k in 1..counts.len() {
                add_into(&mut acc, &s.recv_from(k, mine.len())?);
            }
            for k in 1..counts.len() {
                let (o, l) = segment(counts, k);
                s.reply(k, &f32_bytes(&acc[o..o + l]))?;
            }
            Ok(f32_bytes(&acc[off..off + len]))
        })?;
        upload(b, full.sub(off, len), Elem::F32, &out)
    }

    fn all_gather(&mut self, b: &mut B, full: View, counts: &[usize], elem: Elem) -> Result<()> {
        check_counts("all_gather", full, counts, self.world())?;
        let call = self.star.begin(Op::AllGather, elem.into(), 0, full.len, counts)?;
        if self.world() == 1 {
            return Ok(());
        }
        let e = elem.bytes();
        let (off, len) = segment(counts, self.star.rank());
        let own = download(b, full.sub(off, len), elem)?;
        let all = self.star.run(&call, |s| {
            if !s.is_root() {
                // Rank 0 sends everything but our own segment.
                s.send_up(&own)?;
                let mut rest = s.recv_down(e * (full.len - len))?;
                rest.splice(e * off..e * off, own.iter().copied());
                return Ok(rest);
            }
            let mut all = vec![0u8; e * full.len];
            all[e * off..e * (off + len)].copy_from_slice(&own);
            for k in 1..counts.len() {
                let (o, l) = segment(counts, k);
                all[e * o..e * (o + l)].copy_from_slice(&s.recv_from(k, e * l)?);
            }
            for k in 1..counts.len() {
                let (o, l) = segment(counts, k);
                s.reply(k, &[&all[..e * o], &all[e * (o + l)..]].concat())?;
            }
            Ok(all)
        })?;
        upload(b, full, elem, &all)
    }

    fn broadcast(&mut self, b: &mut B, v: View, root: usize, elem: Elem) -> Result<()> {
        if root >= self.world() {
            bail!("broadcast: root {root} is not a rank of a world of {}", self.world());
        }
        let call = self.star.begin(Op::Broadcast, elem.into(), root, v.len, &[])?;
        if self.world() == 1 {
            return Ok(());
        }
        let (me, w, n) = (self.star.rank(), self.world(), elem.bytes() * v.len);
        let mine = if me == root { download(b, v, elem)? } else { Vec::new() };
        let got = self.star.run(&call, |s| {
            if !s.is_root() {
                s.send_up(&mine)?;
                return s.recv_down(if me == root { 0 } else { n });
            }
            let data = if root == 0 { mine.clone() } else { s.recv_from(root, n)? };
            for k in 1..w {
                s.reply(k, if k == root { &[] } else { &data })?;
            }
            Ok(data)
        })?;
        if me == root {
            return Ok(());
        }
        upload(b, v, elem, &got)
    }

    fn all_to_all(&mut self, b: &mut B, send: View, recv: View, elem: Elem) -> Result<()> {
        let w = self.world();
        if send.len != recv.len || !send.len.is_multiple_of(w) {
            bail!("all_to_all: send ({}) and recv ({}) must have one length, divisible by the world size {w}", send.len, recv.len);
        }
        let call = self.star.begin(Op::AllToAll, elem.into(), 0, send.len, &[])?;
        let (me, c) = (self.star.rank(), elem.bytes() * send.len / w);
        let mine = download(b, send, elem)?;
        let chunk = |data: &[u8], i: usize| data[c * i..c * (i + 1)].to_vec();
        // Chunks of `data` except chunk `skip`, in order (what crosses the wire).
        let others = |data: &[u8], skip: usize| (0..w).filter(|&i| i != skip).flat_map(|i| chunk(data, i)).collect::<Vec<u8>>();
        let out = self.star.run(&call, |s| {
            if w == 1 {
                return Ok(mine.clone());
            }
            if !s.is_root() {
                s.send_up(&others(&mine, me))?;
                let got = s.recv_down(c * (w - 1))?;
                // got holds chunk j from rank j for every j != me, in order.
                return Ok((0..w).flat_map(|j| if j == me { chunk(&mine, me) } else { chunk(&got, j - (j > me) as usize) }).collect());
            }
            // sends[j] = rank j's send buffer without its chunk j.
            let mut sends = vec![others(&mine, 0)];
            for k in 1..w {
                sends.push(s.recv_from(k, c * (w - 1))?);
            }
            let from = |j: usize, i: usize| if j == i { chunk(&mine, 0) } else { chunk(&sends[j], i - (i > j) as usize) };
            for k in 1..w {
                s.reply(k, &(0..w).filter(|&j| j != k).flat_map(|j| from(j, k)).collect::<Vec<u8>>())?;
            }
            Ok((0..w).flat_map(|j| if j == 0 { chunk(&mine, 0) } else { from(j, 0) }).collect())
        })?;
        upload(b, recv, elem, &out)
    }

    fn all_reduce_host(&mut self, vals: &mut [f64]) -> Result<()> {
        let call = self.star.begin(Op::AllReduceHost, Wire::F64, 0, vals.len(), &[])?;
        if self.world() == 1 {
            return Ok(());
        }
        let w = self.world();
        let mine: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        let out = self.star.run(&call, |s| {
            if !s.is_root() {
                s.send_up(&mine)?;
                return s.recv_down(mine.len());
            }
            let mut acc = vals.to_vec();
            for k in 1..w {
                let got = s.recv_from(k, mine.len())?;
                acc.iter_mut().zip(got.chunks_exact(8)).for_each(|(a, x)| *a += f64::from_le_bytes(x.try_into().expect("8 bytes")));
            }
            let out: Vec<u8> = acc.iter().flat_map(|x| x.to_le_bytes()).collect();
            for k in 1..w {
                s.reply(k, &out)?;
            }
            Ok(out)
        })?;
        vals.iter_mut().zip(out.chunks_exact(8)).for_each(|(v, x)| *v = f64::from_le_bytes(x.try_into().expect("8 bytes")));
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        // Agreeing on the header is the barrier: rank 0 answers only once
        // every rank has arrived.
        self.star.begin(Op::Barrier, Wire::None, 0, 0, &[]).map(|_| ())
    }

    fn bytes_sent(&self) -> u64 {
        self.star.bytes_sent()
    }
    /// The star's all-reduce (table above).
    fn all_reduce_bytes(&self, n: usize, elem: Elem) -> u64 {
        let w = self.world();
        let per = (n * elem.bytes()) as u64;
        if w == 1 { 0 } else if self.star.rank() == 0 { (w as u64 - 1) * per } else { per }
    }
}

/// `counts` cut `full` into one segment per rank.
pub fn check_counts(op: &str, full: View, counts: &[usize], world: usize) -> Result<()> {
    if counts.len() != world {
        bail!("{op}: {} segment counts for a world of {world}", counts.len());
    }
    let total: usize = counts.iter().sum();
    if total != full.len {
        bail!("{op}: segment counts {counts:?} add up to {total}, the buffer holds {}", full.len);
    }
    Ok(())
}

/// A view's elements as little-endian bytes.
fn download<B: Backend>(b: &mut B, v: View, elem: Elem) -> Result<Vec<u8>> {
    match elem {
        Elem::F32 => {
            let mut x = vec![0f32; v.len];
            b.download(v, &mut x)?;
            Ok(f32_bytes(&x))
        }
        Elem::U8 => {
            let mut x = vec![0u8; v.len];
            b.download_u8(v, &mut x)?;
            Ok(x)
        }
    }
}

fn upload<B: Backend>(b: &mut B, v: View, elem: Elem, bytes: &[u8]) -> Result<()> {
    match elem {
        Elem::F32 => b.upload(v, &f32s(bytes)),
        Elem::U8 => b.upload_u8(v, bytes),
    }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * x.len());
    x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

/// `acc += x` (x as little-endian f32 bytes), element by element.
fn add_into(acc: &mut [f32], x: &[u8]) {
    acc.iter_mut().zip(x.chunks_exact(4)).for_each(|(a, c)| *a += f32::from_le_bytes(c.try_into().expect("4 bytes")));
}
