//! A training run's checkpoints from the trainer's side: what its state
//! puts into one (weights gathered whole, each rank's optimizer shard, the
//! manifest's loader, RNG, guard and optimizer scalars) and how a resume
//! takes it back, checking that it continues the same run (the global
//! batch may not change; the number of ranks and the per-rank batch may).
//! Saves are two-stage by default (`train.async_checkpoint`): a host copy
//! at the step boundary, written in the background (`ckpt/async_save.rs`).
//! The files themselves are `ckpt/train_state.rs`'s business.

use super::run_dir;
use super::trainer::State;
use crate::backend::Backend;
use crate::ckpt::async_save::{self, AsyncSaver, HostCheckpoint, LeadParts, WriteOptions, Written};
use crate::ckpt::{self, train_state::{self, HostOptState, SaveParts, Sharding}};
use crate::config::Config;
use crate::parallel::offload;
use crate::telemetry::metrics::CkptMetrics;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The run's saves as the loop sees them: two-stage (`train.async_checkpoint`,
/// `ckpt::async_save`) or synchronous, and the timing line each save logs
/// once it is complete (metrics.jsonl `kind: "ckpt"`).
pub(super) struct Checkpoints {
    saver: AsyncSaver,
    async_write: bool,
    opts: WriteOptions,
    /// The line of the save in flight, completed when its write finishes.
    pending: Option<CkptMetrics>,
}

impl Checkpoints {
    pub(super) fn new(cfg: &Config) -> Self {
        let opts = WriteOptions { delay: Duration::from_millis(cfg.debug.ckpt_write_delay_ms), timeout: Duration::from_secs_f64(cfg.dist.timeout_s) };
        Checkpoints { saver: AsyncSaver::default(), async_write: cfg.train.async_checkpoint, opts, pending: None }
    }

    /// A checkpoint of the whole state (a collective: every rank calls it).
    /// Synchronous: written and published before this returns. Two-stage:
    /// the previous write is waited for, the state copied to host memory
    /// and handed to the background writer. Returns the line of a save
    /// that is complete now (this one, or the previous one).
    pub(super) fn save<B: Backend>(&mut self, b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<Option<CkptMetrics>> {
        let start = Instant::now();
        if !self.async_write {
            save_sync(b, st, cfg, run_dir, self.opts.delay)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            return Ok(Some(CkptMetrics { step: st.step, async_write: false, ckpt_block_ms: ms, ckpt_wait_ms: 0.0, ckpt_write_ms: ms, ckpt_bytes: 0 }));
        }
        let previous = self.saver.wait()?;
        let done = self.complete(previous);
        let wait_ms = start.elapsed().as_secs_f64() * 1e3;
        let host = capture(b, st, cfg, run_dir)?;
        // Stale markers of a killed attempt at this step are gone before
        // any writer of this save starts (ckpt/async_save.rs).
        if st.zero.world() > 1 && cfg.dist.zero_stage > 0 {
            if st.zero.rank() == 0 {
                async_save::clear_stale_shards(run_dir, st.step)?;
            }
            st.zero.comm.barrier()?;
        }
        let bytes = host.as_ref().map_or(0, HostCheckpoint::size_bytes);
        if let Some(host) = host {
            self.saver.start(host, self.opts)?;
        }
        let block_ms = start.elapsed().as_secs_f64() * 1e3;
        self.pending = Some(CkptMetrics { step: st.step, async_write: true, ckpt_block_ms: block_ms, ckpt_wait_ms: wait_ms, ckpt_write_ms: 0.0, ckpt_bytes: bytes });
        Ok(done)
    }

    /// The line of the save in flight if its write has finished (never
    /// blocks); an error if the write failed.
    pub(super) fn poll(&mut self) -> Result<Option<CkptMetrics>> {
        let written = self.saver.poll()?;
        Ok(self.complete(written))
    }

    /// Waits for the save in flight (the end of the run).
    pub(super) fn finish(&mut self) -> Result<Option<CkptMetrics>> {
        let written = self.saver.wait()?;
        Ok(self.complete(written))
    }

    fn complete(&mut self, written: Option<Written>) -> Option<CkptMetrics> {
        let w = written?;
        let line = self.pending.take()?;
        Some(CkptMetrics { ckpt_write_ms: w.write_ms, ..line })
    }
}

/// Stage 1 of a two-stage save (a collective at ZeRO-3, which gathers the
/// weights): this rank's part of the checkpoint copied to host memory;
/// `None` on a rank that writes nothing (ranks > 0 without ZeRO).
fn capture<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<Option<HostCheckpoint>> {
    let weights = full_weights(b, st)?;
    let (rank, world) = (st.zero.rank(), st.zero.world());
    let sharding = Sharding { world, zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    if rank > 0 && cfg.dist.zero_stage == 0 {
        return Ok(None);
    }
    let (opt, meta) = match st.off.as_mut() {
        Some(off) => {
            let (mut h, opt) = off.full_optimizer()?;
            (HostOptState::download(&mut h, opt.as_ref())?, opt.meta())
        }
        None => (HostOptState::download(b, st.opt.as_ref())?, st.opt.meta()),
    };
    let lead = match rank {
        0 => Some(LeadParts { layout: st.model.layout.clone(), weights, manifest: manifest(st, cfg, meta)?, keep_last: cfg.train.keep_ckpts }),
        _ => None,
    };
    Ok(Some(HostCheckpoint { run_dir: run_dir.to_path_buf(), step: st.step, rank, sharding, opt, lead }))
}

/// The full model's fp32 weights on the host: an offloaded run's are its
/// host master weights (the device holds only the compute dtype).
fn full_weights<B: Backend>(b: &mut B, st: &mut State<B>) -> Result<Vec<f32>> {
    match st.off.as_mut() {
        Some(off) => off.master_weights(),
        None => st.zero.full_weights(b),
    }
}

/// The manifest's state fields; `optimizer` = the optimizer's scalars.
fn manifest<B: Backend>(st: &State<B>, cfg: &Config, optimizer: serde_json::Value) -> Result<ckpt::Manifest> {
    Ok(ckpt::Manifest {
        loader: serde_json::to_value(st.train.state())?,
        rng: serde_json::to_value(&st.rng)?,
        optimizer,
        guard: st.guard.to_json(),
        ..ckpt::Manifest::new(st.step, cfg.to_toml())
    })
}

/// The synchronous save (`train.async_checkpoint = false`): every rank
/// but 0 writes its shard, all meet, rank 0 publishes, all meet again.
fn save_sync<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path, delay: Duration) -> Result<PathBuf> {
    let weights = full_weights(b, st)?;
    let (rank, world) = (st.zero.rank(), st.zero.world());
    let sharding = Sharding { world, zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    if rank > 0 && cfg.dist.zero_stage > 0 {
        train_state::write_shard(b, st.opt.as_ref(), run_dir, st.step, rank)?;
    }
    st.zero.comm.barrier()?;
    let mut dir = ckpt::step_dir(run_dir, st.step);
    // An offloaded run saves the same checkpoint as the plain run: its
    // units' state assembled into the whole model's optimizer.
    let mut host = match st.off.as_mut() {
        Some(off) => Some(off.full_optimizer()?),
        None => None,
    };
    if rank == 0 {
        let meta = match &host {
            Some((_, opt)) => opt.meta(),
            None => st.opt.meta(),
        };
        let parts = SaveParts { layout: &st.model.layout, weights: &weights, manifest: manifest(st, cfg, meta)?, sharding, rank, keep_last: cfg.train.keep_ckpts };
        let mut pause = || {
            std::thread::sleep(delay);
            Ok(())
        };
        dir = match host.as_mut() {
            Some((h, opt)) => train_state::publish(h, opt.as_ref(), run_dir, parts, &mut pause)?,
            None => train_state::publish(b, st.opt.as_ref(), run_dir, parts, &mut pause)?,
        };
    }
    // No rank runs ahead of a checkpoint that is not yet published.
    st.zero.comm.barrier()?;
    Ok(dir)
}

/// Load the newest usable checkpoint (ckpt/recover.rs: damaged ones are
/// passed over, saying so); `false` when the run has none.
pub(super) fn restore<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<bool> {
    let Some(loaded) = ckpt::load_newest_good(run_dir)? else { return Ok(false) };
    run_dir::check_against_checkpoint(&loaded.manifest.config_toml, cfg, run_dir, &loaded.dir)?;
    check_global_batch(&loaded, cfg, st.zero.world())?;
    let mut params = vec![0.0f32; st.model.layout.total];
    ckpt::load_into_layout(&loaded, &st.model.layout, &mut params)?;
    st.zero.set_weights(b, &params)?;
    let now = Sharding { world: st.zero.world(), zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    match st.off.as_mut() {
        Some(off) => {
            off.set_weights(&params)?;
            let mut h = crate::backend::cpu::CpuBackend::new();
            let mut opt = offload::host_optimizer::host_optimizer(&mut h, &cfg.optimizer, &st.model.layout)?;
            train_state::restore_optimizer(&mut h, opt.as_mut(), &loaded, &now, st.zero.rank())?;
            off.load_optimizer(&mut h, &opt)?;
        }
        None => train_state::restore_optimizer(b, st.opt.as_mut(), &loaded, &now, st.zero.rank())?,
    }
    st.train.restore(&serde_json::from_value(loaded.manifest.loader.clone())?)?;
    st.rng = serde_json::from_value(loaded.manifest.rng.clone())?;
    st.step = loaded.manifest.step;
    st.guard.load_json(&loaded.manifest.guard)?;
    Ok(true)
}

/// A resume may change the number of ranks and the per-rank batch, not the
/// global batch (the same sequences per step, whatever the world size).
fn check_global_batch(loaded: &ckpt::Loaded, cfg: &Config, world: usize) -> Result<()> {
    let saved = crate::config::from_run_toml(&loaded.manifest.config_toml, "the checkpoint's config")?;
    // Groups of dist.sp ranks share their sequences.
    let was = saved.train.batch_size * saved.dist.world.max(1) / saved.dist.sp.max(1);
    let now = cfg.train.batch_size * world / cfg.dist.sp.max(1);
    if was != now {
        bail!(
            "cannot resume {}: it trained with a global batch of {was} sequences (train.batch_size {} × {} rank(s)); \
             this run has {now} ({} × {world}). Set train.batch_size = {} for {world} rank(s)",
            loaded.dir.display(),
            saved.train.batch_size,
            saved.dist.world.max(1),
            cfg.train.batch_size,
            if was % world == 0 { (was / world).to_string() } else { format!("{was}/{world} (not a whole number: use a world size that divides {was})") }
        );
    }
    Ok(())
}

