//! `ferrotron bench comm`: a communicator self-test and all-reduce
//! bandwidth measurement, run under a launcher
//! (`ferrotron launch --nproc-per-node 2 bench comm --set device=cuda`).
//!
//! First it checks results: all_reduce_sum over the whole buffer,
//! reduce_scatter_sum and all_gather with uneven segments, broadcast and
//! all_reduce_host, on small integers (exact in f32, and in bf16 below 256),
//! so any wrong byte fails. Then it times all_reduce_sum (each call waited
//! for), and reports nccl-tests' figures: algorithm bandwidth = bytes /
//! time, bus bandwidth = algbw · 2(w-1)/w (what each link carries in a
//! ring; comparable across world sizes). The time is the slowest rank's
//! median. The trainer's start-of-run self-test (`dist::self_test`) runs
//! the same checks and timing ([`check_collectives`], [`time_all_reduce`]).

use super::{connect, segment, Comm, Elem, WorldInfo};
use crate::backend::{Backend, DType, View};
use crate::config::Config;
use anyhow::{bail, Result};
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct CommBenchResult {
    /// `tcp` or `nccl`.
    pub comm: String,
    pub device: String,
    pub world: usize,
    pub bytes: usize,
    pub iters: usize,
    /// Slowest rank's median time of one all-reduce.
    pub median_ms: f64,
    /// Every rank's median, in rank order.
    pub rank_median_ms: Vec<f64>,
    pub algbw_gbps: f64,
    pub busbw_gbps: f64,
    /// `bytes_sent` of rank 0 per all-reduce.
    pub bytes_sent_per_iter: u64,
    pub checked: Vec<String>,
}

pub struct CommBenchArgs {
    pub size_mb: f64,
    pub warmup: usize,
    pub iters: usize,
    /// Hidden test hook: this rank fails before the rendezvous.
    pub fail_rank: Option<usize>,
}

/// Runs on every rank; returns the report on rank 0.
pub fn bench_comm(cfg: &Config, args: &CommBenchArgs) -> Result<Option<CommBenchResult>> {
    if args.iters == 0 || args.size_mb.is_nan() || args.size_mb <= 0.0 {
        bail!("--iters must be at least 1 and --size-mb positive");
    }
    let info = WorldInfo::from_env()?;
    if args.fail_rank == Some(info.rank) {
        bail!("rank {} fails on purpose (--fail-rank)", info.rank);
    }
    match cfg.device.as_str() {
        "cpu" => run(crate::backend::cpu::CpuBackend::new(), cfg, &info, args),
        _ => run(super::open_cuda(&info)?, cfg, &info, args),
    }
}

fn run<B: Backend + 'static>(mut b: B, cfg: &Config, info: &WorldInfo, args: &CommBenchArgs) -> Result<Option<CommBenchResult>> {
    let mut comm = connect(&cfg.dist, info, &mut b)?;
    let c = comm.as_mut();
    let checked = check_collectives(&mut b, c)?;
    let n = ((args.size_mb * 1e6 / 4.0) as usize).max(1);
    let t = time_all_reduce(&mut b, c, n, args.warmup, args.iters)?;
    c.barrier()?;
    if info.rank != 0 {
        return Ok(None);
    }
    Ok(Some(CommBenchResult {
        comm: c.kind().into(),
        device: b.device_name(),
        world: info.world,
        bytes: t.bytes,
        iters: args.iters,
        median_ms: t.median_ms,
        rank_median_ms: t.rank_median_ms,
        algbw_gbps: t.algbw_gbps,
        busbw_gbps: t.busbw_gbps,
        bytes_sent_per_iter: t.bytes_sent_per_iter,
        checked,
    }))
}

/// One timed series of all-reduces, the same on every rank.
#[derive(Clone, Debug)]
pub struct AllReduceTiming {
    pub bytes: usize,
    /// Slowest rank's median time of one all-reduce.
    pub median_ms: f64,
    /// Every rank's median, in rank order.
    pub rank_median_ms: Vec<f64>,
    pub algbw_gbps: f64,
    pub busbw_gbps: f64,
    pub bytes_sent_per_iter: u64,
}

/// Times `iters` all-reduces of `n` f32 values after `warmup` untimed ones
/// (each call waited for); a collective. The buffer is freed afterwards.
pub fn time_all_reduce<B: Backend>(b: &mut B, c: &mut dyn Comm<B>, n: usize, warmup: usize, iters: usize) -> Result<AllReduceTiming> {
    let buf = b.alloc(n, DType::F32)?;
    let v = View::whole(buf, n);
    let timed = time_on(b, c, v, warmup, iters.max(1));
    b.free(buf);
    let (ms, per_iter) = timed?;
    // Every rank's median, gathered through a host sum of one-hot slots.
    let (rank, world) = (c.rank(), c.world());
    let mut medians = vec![0.0; world];
    medians[rank] = ms;
    c.all_reduce_host(&mut medians)?;
    let slowest = medians.iter().cloned().fold(0.0, f64::max);
    let w = world as f64;
    let algbw = 4.0 * n as f64 / (slowest * 1e-3) / 1e9;
    Ok(AllReduceTiming {
        bytes: 4 * n,
        median_ms: slowest,
        rank_median_ms: medians,
        algbw_gbps: algbw,
        busbw_gbps: algbw * 2.0 * (w - 1.0) / w,
        bytes_sent_per_iter: per_iter,
    })
}

/// This rank's median time of one all-reduce of `v` and its bytes sent per call.
fn time_on<B: Backend>(b: &mut B, c: &mut dyn Comm<B>, v: View, warmup: usize, iters: usize) -> Result<(f64, u64)> {
    b.fill(v, 0.0)?; // zeros stay zeros however often they are summed
    for _ in 0..warmup {
        c.all_reduce_sum(b, v)?;
    }
    b.synchronize()?;
    let mut ms = Vec::with_capacity(iters);
    let sent0 = c.bytes_sent();
    for _ in 0..iters {
        let t = Instant::now();
        c.all_reduce_sum(b, v)?;
        b.synchronize()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(&mut ms), (c.bytes_sent() - sent0) / iters as u64))
}

/// Exact-result checks of the collectives; returns what was checked. The
/// test buffers are freed afterwards (the trainer runs this at its start).
pub fn check_collectives<B: Backend>(b: &mut B, c: &mut dyn Comm<B>) -> Result<Vec<String>> {
    let mut bufs = Vec::new();
    let result = checks(b, c, &mut bufs);
    for buf in bufs {
        b.free(buf);
    }
    result
}

fn checks<B: Backend>(b: &mut B, c: &mut dyn Comm<B>, bufs: &mut Vec<crate::backend::BufId>) -> Result<Vec<String>> {
    let mut upload = |b: &mut B, x: &[f32]| -> Result<View> {
        let v = upload(b, x)?;
        bufs.push(v.buf);
        Ok(v)
    };
    let (r, w) = (c.rank(), c.world());
    let n = 1000 + 7 * w;
    // Rank r holds (i % 13) + r: sums are small integers.
    let v = upload(b, &(0..n).map(|i| ((i % 13) + r) as f32).collect::<Vec<_>>())?;
    c.all_reduce_sum(b, v)?;
    expect(b, v, |i| (w * (i % 13) + w * (w - 1) / 2) as f32, "all_reduce_sum")?;

    let counts: Vec<usize> = (0..w).map(|k| [5, 0, 9, 2][k % 4]).collect();
    let total: usize = counts.iter().sum();
    let v = upload(b, &(0..total).map(|i| (i % 5 + r) as f32).collect::<Vec<_>>())?;
    c.reduce_scatter_sum(b, v, &counts)?;
    let (off, len) = segment(&counts, r);
    expect(b, v.sub(off, len), |i| (w * ((off + i) % 5) + w * (w - 1) / 2) as f32, "reduce_scatter_sum")?;

    // Segment k of the gathered buffer holds k + 1 everywhere.
    let v = upload(b, &vec![(r + 1) as f32; total])?;
    c.all_gather(b, v, &counts, Elem::F32)?;
    let owner = |i: usize| (0..w).find(|&k| { let (o, l) = segment(&counts, k); i >= o && i < o + l }).unwrap_or(0);
    expect(b, v, |i| (owner(i) + 1) as f32, "all_gather")?;

    let root = w - 1;
    let v = upload(b, &(0..n).map(|i| ((i + r) % 7) as f32).collect::<Vec<_>>())?;
    c.broadcast(b, v, root, Elem::F32)?;
    expect(b, v, |i| ((i + root) % 7) as f32, "broadcast")?;

    let mut h = [r as f64, 1.0];
    c.all_reduce_host(&mut h)?;
    if h != [(w * (w - 1) / 2) as f64, w as f64] {
        bail!("all_reduce_host gave {h:?} on rank {r}, expected [{}, {w}]", w * (w - 1) / 2);
    }
    Ok(["all_reduce_sum", "reduce_scatter_sum", "all_gather", "broadcast", "all_reduce_host"].map(String::from).to_vec())
}

fn upload<B: Backend>(b: &mut B, x: &[f32]) -> Result<View> {
    let v = View::whole(b.alloc(x.len(), DType::F32)?, x.len());
    b.upload(v, x)?;
    Ok(v)
}

fn expect<B: Backend>(b: &mut B, v: View, want: impl Fn(usize) -> f32, what: &str) -> Result<()> {
    let mut got = vec![0.0; v.len];
    b.download(v, &mut got)?;
    if let Some(i) = (0..v.len).find(|&i| got[i] != want(i)) {
        bail!("self-test: {what} is wrong at element {i}: got {}, expected {}", got[i], want(i));
    }
    Ok(())
}

fn median(x: &mut [f64]) -> f64 {
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}
