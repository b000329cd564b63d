//! Asynchronous two-stage checkpoints (`train.async_checkpoint`).
//!
//! Stage 1, at the step boundary on the training thread: everything the
//! checkpoint holds is copied to host memory ([`HostCheckpoint`]: whole
//! weights on rank 0, each rank's optimizer shard, the manifest with the
//! loader position, RNG, guard and optimizer scalars). Stage 2, on a
//! background thread ([`AsyncSaver`]): the same files as the synchronous
//! save are written, checksummed and published by one rename, then old
//! checkpoints are pruned, while training goes on. At most one write is in
//! flight: the next save, the end of the run and every error exit (the
//! saver's `Drop`) wait for it first.
//!
//! Several ranks: the communicator is not thread-safe, so the background
//! threads never use it. Each rank with a shard writes it into
//! `checkpoints/step_N.shards/` and then a done-marker
//! (`rankNNNNN.done`, written atomically after the shard's files); rank 0's
//! writer stages its own files, waits for every marker (up to
//! `dist.timeout_s`), moves the shards in and publishes. Stale markers of a
//! killed attempt cannot be taken for new ones: rank 0 clears the shard
//! folder in stage 1 and all ranks meet at a barrier (main thread) before
//! any writer starts. A kill at any instant of stage 2 leaves only `*.tmp`
//! and `*.shards` litter, which readers ignore and the next save removes:
//! the previous checkpoint stays the newest complete one.

use super::checkpoint::Manifest;
use super::train_state::{self, HostOptState, SaveParts, Sharding};
use crate::model::layout::ParamLayout;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What rank 0 adds to its shard: the whole model and the manifest.
pub struct LeadParts {
    pub layout: ParamLayout,
    pub weights: Vec<f32>,
    pub manifest: Manifest,
    pub keep_last: usize,
}

/// One rank's part of a checkpoint, in host memory (stage 1's result).
pub struct HostCheckpoint {
    pub run_dir: PathBuf,
    pub step: u64,
    pub rank: usize,
    pub sharding: Sharding,
    pub opt: HostOptState,
    /// Rank 0 only.
    pub lead: Option<LeadParts>,
}

impl HostCheckpoint {
    /// Whether this rank writes anything: rank 0 always, the others when the
    /// optimizer state is sharded (ZeRO 1–3).
    pub fn writes(&self) -> bool {
        self.lead.is_some() || self.sharding.zero_stage > 0
    }

    /// Host bytes held by the copy.
    pub fn size_bytes(&self) -> u64 {
        self.opt.size_bytes() + self.lead.as_ref().map_or(0, |l| 4 * l.weights.len() as u64)
    }
}

/// Settings of stage 2.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// `debug.ckpt_write_delay_ms`: sleep once the tensor files are written.
    pub delay: Duration,
    /// How long rank 0 waits for the other ranks' shards (`dist.timeout_s`).
    pub timeout: Duration,
}

/// A finished stage 2.
#[derive(Clone, Debug)]
pub struct Written {
    pub step: u64,
    /// The published checkpoint (rank 0), `None` on the other ranks.
    pub dir: Option<PathBuf>,
    /// Wall time of the write (rank 0: until published, waiting for shards included).
    pub write_ms: f64,
}

/// Marker that rank `r`'s shard of a save is completely written.
fn marker(shards: &Path, r: usize) -> PathBuf {
    shards.join(format!("rank{r:05}.done"))
}

/// Stage 1's cross-rank part, on rank 0 before the barrier: remove what a
/// killed earlier attempt at the same step left, so every marker the
/// writer will see is this save's.
pub fn clear_stale_shards(run_dir: &Path, step: u64) -> Result<()> {
    crate::util::atomic::remove_dir_if_exists(&train_state::shards_dir(run_dir, step))
}

/// Stage 2: write this rank's part (rank 0: publish the checkpoint).
/// Borrows `host`, so its buffers can be reused for the next save.
pub fn write(host: &HostCheckpoint, opts: WriteOptions) -> Result<Written> {
    let start = Instant::now();
    let shards = train_state::shards_dir(&host.run_dir, host.step);
    let dir = match &host.lead {
        Some(lead) => {
            let world = if host.sharding.zero_stage > 0 { host.sharding.world } else { 1 };
            let parts = SaveParts { layout: &lead.layout, weights: &lead.weights, manifest: lead.manifest.clone(), sharding: host.sharding.clone(), rank: 0, keep_last: lead.keep_last };
            let mut before_publish = || {
                std::thread::sleep(opts.delay);
                wait_for_markers(&shards, world, opts.timeout)
            };
            Some(train_state::publish_host(&host.opt, &host.run_dir, parts, &mut before_publish)?)
        }
        None => {
            train_state::write_shard_host(&host.opt, &host.run_dir, host.step, host.rank)?;
            std::thread::sleep(opts.delay);
            crate::util::atomic::write_file(&marker(&shards, host.rank), b"")?;
            None
        }
    };
    Ok(Written { step: host.step, dir, write_ms: start.elapsed().as_secs_f64() * 1e3 })
}

/// Waits until ranks 1..world have each left their done-marker.
fn wait_for_markers(shards: &Path, world: usize, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let missing: Vec<usize> = (1..world).filter(|&r| !marker(shards, r).is_file()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "rank(s) {missing:?} did not finish writing their optimizer shard into {} within dist.timeout_s ({:.0} s); the checkpoint is not published and the previous one is kept",
                shards.display(),
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The background writer: at most one stage 2 in flight.
#[derive(Default)]
pub struct AsyncSaver {
    pending: Option<(u64, JoinHandle<Finished>)>,
    /// The host copy of the last finished write, for reuse (`take_returned`).
    returned: Option<HostCheckpoint>,
}

/// What the writer thread gives back: the copy it wrote, and how that went.
type Finished = (HostCheckpoint, Result<Written>);

impl AsyncSaver {
    /// Starts stage 2 of `host` on a background thread; the previous write
    /// must have been waited for (`wait`).
    pub fn start(&mut self, host: HostCheckpoint, opts: WriteOptions) -> Result<()> {
        if let Some((step, _)) = &self.pending {
            bail!("internal: a checkpoint write (step {step}) is still in flight; wait for it before starting another");
        }
        let step = host.step;
        let handle = std::thread::Builder::new()
            .name(format!("ckpt-write-{step}"))
            .spawn(move || {
                let written = write(&host, opts);
                (host, written)
            })
            .context("cannot start the checkpoint writer thread")?;
        self.pending = Some((step, handle));
        Ok(())
    }

    /// Waits for the write in flight, if any, and returns its result.
    pub fn wait(&mut self) -> Result<Option<Written>> {
        match self.pending.take() {
            Some((step, handle)) => {
                let (host, written) = join(step, handle)?;
                self.returned = Some(host);
                written.with_context(|| format!("the checkpoint of step {step} was not written")).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The finished write, if the one in flight has finished (never blocks).
    pub fn poll(&mut self) -> Result<Option<Written>> {
        match &self.pending {
            Some((_, handle)) if handle.is_finished() => self.wait(),
            _ => Ok(None),
        }
    }

    pub fn in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// The host copy of the last write waited for (written or not), so its
    /// buffers can serve the next save.
    pub fn take_returned(&mut self) -> Option<HostCheckpoint> {
        self.returned.take()
    }
}

fn join(step: u64, handle: JoinHandle<Finished>) -> Result<Finished> {
    handle.join().map_err(|_| anyhow!("the checkpoint writer of step {step} panicked"))
}

/// An error exit (or a panic) still finishes the write in flight: the
/// checkpoint it holds is as good as any, and a half-done one must not be
/// abandoned while the run folder's lock is released.
impl Drop for AsyncSaver {
    fn drop(&mut self) {
        if self.pending.is_some() {
            if let Err(e) = self.wait() {
                eprintln!("warning: {e:#}");
            }
        }
    }
}
