//! A training run's checkpoints from the trainer's side: what its state
//! puts into one (weights gathered whole, each rank's optimizer shard, the
//! manifest's loader, RNG, guard and optimizer scalars) and how a resume
//! takes it back, checking that it continues the same run (the global
//! batch may not change; the number of ranks and the per-rank batch may).
//! Saves are two-stage by default (`train.async_checkpoint`): a host copy
//! at the step boundary, written in the background (`ckpt/async_save.rs`).
//! Offloaded runs save and resume unit by unit, synchronously
//! (`checkpoint_offload.rs`): the same files, no whole-model host copy.
//! The files themselves are `ckpt/train_state.rs`'s business.

use super::checkpoint_offload;
use super::run_dir;
use super::trainer::State;
use crate::backend::{Backend, CopyTicket, DType, View};
use crate::ckpt::async_save::{self, AsyncSaver, HostCheckpoint, LeadParts, WriteOptions, Written};
use crate::ckpt::snapshot_buffers::{state_slot, SnapshotBuffers, WEIGHTS_SLOT};
use crate::optim::Optimizer;
use crate::ckpt::{self, train_state::{self, HostOptState, SaveParts, Sharding}};
use crate::config::Config;
use crate::telemetry::metrics::CkptMetrics;
use anyhow::{bail, ensure, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The run's saves as the loop sees them: two-stage (`train.async_checkpoint`,
/// `ckpt::async_save`) or synchronous, and the timing line each save logs
/// once it is complete (metrics.jsonl `kind: "ckpt"`).
///
/// Stage 1 does not block: at the step boundary the device→host copies of
/// the weights and the optimizer state start on the copy stream into
/// reused page-locked buffers (`ckpt::snapshot_buffers`), and the loop goes
/// on. The copies must land before anything overwrites their sources, so
/// the trainer calls [`before_update`] right before the next optimizer
/// update: it waits for them and hands the copy to the background writer.
pub(super) struct Checkpoints {
    writer: Arc<Mutex<Writer>>,
    async_write: bool,
    opts: WriteOptions,
    /// Land the copies inside `save` (no overlap): AutoLRS rewrites the
    /// weights (its trials' restores) before the next optimizer update.
    land_at_once: bool,
}

/// The state of two-stage saves shared by [`Checkpoints`] and the update
/// hook (`State::ckpt_hook`).
#[derive(Default)]
pub(super) struct Writer {
    saver: AsyncSaver,
    /// Stage 1 of the newest save while its copies may still be landing.
    landing: Option<Landing>,
    buffers: SnapshotBuffers,
    /// The line of the save in flight, completed when its write finishes.
    pending: Option<CkptMetrics>,
}

/// A host copy whose device→host copies were started, not yet waited for.
struct Landing {
    host: HostCheckpoint,
    tickets: Vec<CopyTicket>,
    opts: WriteOptions,
}

/// The trainer's handle on the save in flight (a field of `State`), set
/// by the first two-stage save.
#[derive(Clone, Default)]
pub(crate) struct UpdateHook(Option<Arc<Mutex<Writer>>>);

/// Called by the trainer right before every optimizer update: the copies
/// of a checkpoint taken at the last step boundary land (the host waits for
/// them) before the update overwrites their sources, and the copy goes to
/// the background writer. Its wait counts into the save's `ckpt_block_ms`.
pub(super) fn before_update<B: Backend>(b: &mut B, st: &mut State<B>) -> Result<()> {
    match &st.ckpt_hook.0 {
        Some(writer) => lock(writer).land(b),
        None => Ok(()),
    }
}

fn lock(writer: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    // Only the training thread locks it; a panic there ends the run anyway.
    writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Writer {
    /// Waits for the started copies (if any) and starts the write.
    fn land<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        let Some(landing) = self.landing.take() else { return Ok(()) };
        let start = Instant::now();
        // Every ticket is waited for, even after an error: no copy may
        // still be landing in a buffer that goes back to the pool.
        let mut landed = Ok(());
        for t in landing.tickets {
            let r = b.copy_wait(t);
            if landed.is_ok() {
                landed = r;
            }
        }
        if let Some(line) = self.pending.as_mut() {
            line.ckpt_block_ms += start.elapsed().as_secs_f64() * 1e3;
        }
        if let Err(e) = landed {
            self.buffers.recycle(landing.host);
            return Err(e.context("the checkpoint's copy to host memory failed"));
        }
        self.saver.start(landing.host, landing.opts)
    }

    /// Waits for the write in flight; its buffers go back to the pool.
    fn wait(&mut self) -> Result<Option<Written>> {
        let written = self.saver.wait();
        self.take_back_buffers();
        written
    }

    fn take_back_buffers(&mut self) {
        if let Some(host) = self.saver.take_returned() {
            self.buffers.recycle(host);
        }
    }

    fn complete(&mut self, written: Option<Written>) -> Option<CkptMetrics> {
        let w = written?;
        let line = self.pending.take()?;
        Some(CkptMetrics { ckpt_write_ms: w.write_ms, ..line })
    }
}

/// An error exit: the write in flight finishes (`AsyncSaver`'s rule), and
/// buffers that copies may still be landing in are leaked, never freed.
impl Drop for Writer {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("warning: {e:#}");
        }
        if let Some(landing) = self.landing.take() {
            std::mem::forget(landing.host);
        }
    }
}

impl Checkpoints {
    pub(super) fn new(cfg: &Config) -> Self {
        let opts = WriteOptions { delay: Duration::from_millis(cfg.debug.ckpt_write_delay_ms), timeout: Duration::from_secs_f64(cfg.dist.timeout_s) };
        let land_at_once = cfg.train.schedule == "autolrs";
        Checkpoints { writer: Arc::default(), async_write: cfg.train.async_checkpoint, opts, land_at_once }
    }

    /// A checkpoint of the whole state (a collective: every rank calls it).
    /// Synchronous: written and published before this returns. Two-stage:
    /// the previous write is waited for and the copies to host memory
    /// started; the write starts once they landed ([`before_update`]).
    /// Returns the line of a save that is complete now (this one, or the
    /// previous one).
    pub(super) fn save<B: Backend>(&mut self, b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<Option<CkptMetrics>> {
        let start = Instant::now();
        // Offloaded runs save unit by unit, synchronously: a background
        // write would need a host copy of the whole model.
        if !self.async_write || st.off.is_some() {
            save_sync(b, st, cfg, run_dir, self.opts.delay)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            return Ok(Some(CkptMetrics { step: st.step, async_write: false, ckpt_block_ms: ms, ckpt_wait_ms: 0.0, ckpt_write_ms: ms, ckpt_bytes: 0 }));
        }
        st.ckpt_hook = UpdateHook(Some(self.writer.clone()));
        let mut w = lock(&self.writer);
        // A save with no update since the last one: that one lands first.
        w.land(b)?;
        let previous = w.wait()?;
        let done = w.complete(previous);
        let wait_ms = start.elapsed().as_secs_f64() * 1e3;
        let captured = capture(b, st, cfg, run_dir, &mut w.buffers)?;
        // Stale markers of a killed attempt at this step are gone before
        // any writer of this save starts (ckpt/async_save.rs).
        if st.zero.world() > 1 && cfg.dist.zero_stage > 0 {
            if st.zero.rank() == 0 {
                async_save::clear_stale_shards(run_dir, st.step)?;
            }
            st.zero.comm.barrier()?;
        }
        let bytes = captured.as_ref().map_or(0, |(host, _)| host.size_bytes());
        w.pending = Some(CkptMetrics { step: st.step, async_write: true, ckpt_block_ms: 0.0, ckpt_wait_ms: wait_ms, ckpt_write_ms: 0.0, ckpt_bytes: bytes });
        if let Some((host, tickets)) = captured {
            let in_flight = tickets.iter().any(|t| *t != CopyTicket::DONE);
            w.landing = Some(Landing { host, tickets, opts: self.opts });
            if self.land_at_once || !in_flight {
                w.land(b)?;
            }
        }
        // The hook's wait is added to this when the copies land.
        if let Some(line) = w.pending.as_mut() {
            line.ckpt_block_ms = start.elapsed().as_secs_f64() * 1e3;
        }
        Ok(done)
    }

    /// Allocates and page-locks the host buffers of two-stage saves at the
    /// start of the run, so that no save pays for it: locking 17 GB (and
    /// faulting it in) takes seconds, which would otherwise block the loop
    /// at the first save.
    pub(super) fn prepare<B: Backend>(&mut self, b: &mut B, st: &State<B>, cfg: &Config) -> Result<()> {
        if !self.async_write || st.off.is_some() {
            return Ok(());
        }
        let mut w = lock(&self.writer);
        let buffers = &mut w.buffers;
        if let (0, Some(view)) = (st.zero.rank(), st.zero.full_weights_view()) {
            let buf = buffers.take(b, WEIGHTS_SLOT, view.len)?;
            buffers.give_back(WEIGHTS_SLOT, buf);
        }
        if st.zero.rank() == 0 || cfg.dist.zero_stage > 0 {
            for (i, t) in st.opt.state_tensors().iter().filter(|t| t.dtype != DType::U8).enumerate() {
                let buf = buffers.take(b, state_slot(i), t.view.len)?;
                buffers.give_back(state_slot(i), buf);
            }
        }
        Ok(())
    }

    /// The line of the save in flight if its write has finished (never
    /// blocks); an error if the write failed.
    pub(super) fn poll(&mut self) -> Result<Option<CkptMetrics>> {
        let mut w = lock(&self.writer);
        let written = w.saver.poll();
        w.take_back_buffers();
        let written = written?;
        Ok(w.complete(written))
    }

    /// Lands and writes the save in flight (the end of the run) and frees
    /// the host buffers.
    pub(super) fn finish<B: Backend>(&mut self, b: &mut B) -> Result<Option<CkptMetrics>> {
        let mut w = lock(&self.writer);
        w.land(b)?;
        let written = w.wait()?;
        w.buffers.release(b);
        Ok(w.complete(written))
    }
}

/// Stage 1 of a two-stage save (a collective at ZeRO-3, which gathers the
/// weights): this rank's part of the checkpoint, its copies to host memory
/// started (the tickets to wait for); `None` on a rank that writes nothing
/// (ranks > 0 without ZeRO). The buffers come from `buffers`.
fn capture<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path, buffers: &mut SnapshotBuffers) -> Result<Option<(HostCheckpoint, Vec<CopyTicket>)>> {
    let (rank, world) = (st.zero.rank(), st.zero.world());
    let mut tickets = vec![];
    // Offloaded runs never get here (`checkpoint_offload`, synchronous).
    ensure!(st.off.is_none(), "internal: a two-stage save of an offloaded run");
    // Stage 3: today's synchronous weights, on every rank (a gather).
    let weights = match st.zero.full_weights_view() {
        Some(view) if rank == 0 => Some(start_download(b, view, buffers, WEIGHTS_SLOT, &mut tickets)?),
        Some(_) => None,
        None => Some(st.zero.full_weights(b)?),
    };
    let sharding = Sharding { world, zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    if rank > 0 && cfg.dist.zero_stage == 0 {
        return Ok(None);
    }
    let (opt, meta) = (start_state_download(b, st.opt.as_ref(), buffers, &mut tickets)?, st.opt.meta());
    let lead = match (rank, weights) {
        (0, Some(weights)) => Some(LeadParts { layout: st.model.layout.clone(), weights, manifest: manifest(st, cfg, meta)?, keep_last: cfg.train.keep_ckpts }),
        _ => None,
    };
    Ok(Some((HostCheckpoint { run_dir: run_dir.to_path_buf(), step: st.step, rank, sharding, opt, lead }, tickets)))
}

/// Starts copying `view` into the pool's buffer of `slot`.
fn start_download<B: Backend>(b: &mut B, view: View, buffers: &mut SnapshotBuffers, slot: usize, tickets: &mut Vec<CopyTicket>) -> Result<Vec<f32>> {
    let mut host = buffers.take(b, slot, view.len)?;
    // SAFETY: `host` is read only after its ticket is waited for (the
    // writer gets it from `Writer::land`, or it is leaked), and the source
    // is not written before then: `before_update` runs before the next
    // optimizer update, the only writer of weights and state in the loop
    // (AutoLRS, which restores weights earlier, lands at once).
    tickets.push(unsafe { b.download_start(view, &mut host)? });
    Ok(host)
}

/// This rank's optimizer state: fp32 tensors by started copies into pool
/// buffers, 8-bit codes downloaded at once (small, and the copy stream
/// moves f32 only).
fn start_state_download<B: Backend>(b: &mut B, opt: &dyn Optimizer<B>, buffers: &mut SnapshotBuffers, tickets: &mut Vec<CopyTicket>) -> Result<HostOptState> {
    let (floats, bytes) = train_state::collect_state(b, opt, |b, view, i| start_download(b, view, buffers, state_slot(i), tickets))?;
    Ok(HostOptState { floats, bytes, slices: opt.state_slices() })
}

/// The manifest's state fields; `optimizer` = the optimizer's scalars.
pub(super) fn manifest<B: Backend>(st: &State<B>, cfg: &Config, optimizer: serde_json::Value) -> Result<ckpt::Manifest> {
    Ok(ckpt::Manifest {
        loader: serde_json::to_value(st.train.state())?,
        rng: serde_json::to_value(&st.rng)?,
        optimizer,
        guard: st.guard.to_json(),
        ..ckpt::Manifest::new(st.step, cfg.to_toml())
    })
}

/// The synchronous save (`train.async_checkpoint = false`, and every
/// save of an offloaded run: `checkpoint_offload`, unit by unit): every
/// rank but 0 writes its shard, all meet, rank 0 publishes, all meet again.
fn save_sync<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path, delay: Duration) -> Result<PathBuf> {
    if st.off.is_some() {
        // One process (offload refuses more), so no rank to meet.
        return checkpoint_offload::save(b, st, cfg, run_dir, delay);
    }
    let weights = st.zero.full_weights(b)?;
    let (rank, world) = (st.zero.rank(), st.zero.world());
    let sharding = Sharding { world, zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    if rank > 0 && cfg.dist.zero_stage > 0 {
        train_state::write_shard(b, st.opt.as_ref(), run_dir, st.step, rank)?;
    }
    st.zero.comm.barrier()?;
    let mut dir = ckpt::step_dir(run_dir, st.step);
    if rank == 0 {
        let parts = SaveParts { layout: &st.model.layout, weights: &weights, manifest: manifest(st, cfg, st.opt.meta())?, sharding, rank, keep_last: cfg.train.keep_ckpts };
        let mut pause = || {
            std::thread::sleep(delay);
            Ok(())
        };
        dir = train_state::publish(b, st.opt.as_ref(), run_dir, parts, &mut pause)?;
    }
    // No rank runs ahead of a checkpoint that is not yet published.
    st.zero.comm.barrier()?;
    Ok(dir)
}

/// Load the newest usable checkpoint (ckpt/recover.rs: damaged ones are
/// passed over, saying so); `false` when the run has none. Offloaded runs
/// load unit by unit (`checkpoint_offload`).
pub(super) fn restore<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<bool> {
    if st.off.is_some() {
        return checkpoint_offload::restore(b, st, cfg, run_dir);
    }
    let Some(loaded) = ckpt::load_newest_good(run_dir)? else { return Ok(false) };
    check_resume(st, cfg, run_dir, &loaded.dir, &loaded.manifest)?;
    let mut params = vec![0.0f32; st.model.layout.total];
    ckpt::load_into_layout(&loaded, &st.model.layout, &mut params)?;
    st.zero.set_weights(b, &params)?;
    let now = Sharding { world: st.zero.world(), zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    train_state::restore_optimizer(b, st.opt.as_mut(), &loaded, &now, st.zero.rank())?;
    restore_run_state(st, &loaded.manifest)?;
    Ok(true)
}

/// Whether the checkpoint in `dir` continues this run (its config, its
/// global batch); litter of killed saves up to it is removed.
pub(super) fn check_resume<B: Backend>(st: &State<B>, cfg: &Config, run_dir: &Path, dir: &Path, manifest: &ckpt::Manifest) -> Result<()> {
    run_dir::check_against_checkpoint(&manifest.config_toml, cfg, run_dir, dir)?;
    if st.zero.rank() == 0 {
        // No save is in flight yet on any rank: litter up to this
        // checkpoint belongs to killed attempts.
        ckpt::checkpoint::remove_litter(run_dir, Some(manifest.step))?;
    }
    check_global_batch(manifest, dir, cfg, st.zero.world())
}

/// The manifest's part of a resume: loader position, RNG, step, guard.
pub(super) fn restore_run_state<B: Backend>(st: &mut State<B>, manifest: &ckpt::Manifest) -> Result<()> {
    st.train.restore(&serde_json::from_value(manifest.loader.clone())?)?;
    st.rng = serde_json::from_value(manifest.rng.clone())?;
    st.step = manifest.step;
    st.guard.load_json(&manifest.guard)
}

/// A resume may change the number of ranks and the per-rank batch, not the
/// global batch (the same sequences per step, whatever the world size).
fn check_global_batch(manifest: &ckpt::Manifest, dir: &Path, cfg: &Config, world: usize) -> Result<()> {
    let saved = crate::config::from_run_toml(&manifest.config_toml, "the checkpoint's config")?;
    // Groups of dist.sp ranks share their sequences.
    let was = saved.train.batch_size * saved.dist.world.max(1) / saved.dist.sp.max(1);
    let now = cfg.train.batch_size * world / cfg.dist.sp.max(1);
    if was != now {
        bail!(
            "cannot resume {}: it trained with a global batch of {was} sequences (train.batch_size {} × {} rank(s)); \
             this run has {now} ({} × {world}). Set train.batch_size = {} for {world} rank(s)",
            dir.display(),
            saved.train.batch_size,
            saved.dist.world.max(1),
            cfg.train.batch_size,
            if was % world == 0 { (was / world).to_string() } else { format!("{was}/{world} (not a whole number: use a world size that divides {was})") }
        );
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::super::trainer::{new_state, train_step_at};
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::ckpt::train_state::download_state;
    use crate::config;
    use crate::data::Dataset;

    /// The state at a step, downloaded synchronously (the reference).
    fn state_now(b: &mut CpuBackend, st: &mut State<CpuBackend>) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
        let weights = st.zero.full_weights(b).unwrap().iter().map(|x| x.to_bits()).collect();
        let (floats, _) = download_state(b, st.opt.as_ref()).unwrap();
        (weights, floats.into_iter().map(|(n, v)| (n, v.iter().map(|x| x.to_bits()).collect())).collect())
    }

    /// The same, read back from the checkpoint of `step`.
    fn state_saved(run_dir: &Path, st: &State<CpuBackend>, step: u64) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
        let loaded = ckpt::load(&ckpt::step_dir(run_dir, step)).unwrap();
        let mut weights = vec![0.0f32; st.model.layout.total];
        ckpt::load_into_layout(&loaded, &st.model.layout, &mut weights).unwrap();
        let mut floats: Vec<(String, Vec<u32>)> = loaded.optim.iter().map(|t| (t.name.clone(), t.data.iter().map(|x| x.to_bits()).collect())).collect();
        floats.sort();
        (weights.iter().map(|x| x.to_bits()).collect(), floats)
    }

    /// With the CPU backend's deferred copies (a started download lands
    /// only when waited for, as late as a GPU copy stream may), the
    /// checkpoint of step N holds step N's weights and optimizer state bit
    /// for bit although the next step ran before the copies landed; a
    /// second save into the reused buffers holds its own step's state.
    #[test]
    fn checkpoint_holds_its_step_though_copies_land_during_the_next_step() {
        let data = Dataset::open("builtin").unwrap();
        let sets: Vec<String> = ["optimizer.name=adamw", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=64", "train.batch_size=2", "train.seq_len=16", "train.async_checkpoint=true", "train.keep_ckpts=3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cfg = config::load(None, &sets).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut b = CpuBackend::new();
        b.defer_copies(true);
        let mut st = new_state(&mut b, &cfg, &data, Box::new(crate::dist::SoloComm)).unwrap();
        let mut ckpts = Checkpoints::new(&cfg);
        ckpts.prepare(&mut b, &st, &cfg).unwrap();
        let mut saved = vec![];
        for round in 0..2 {
            for _ in 0..2 {
                train_step_at(&mut b, &mut st, &cfg, 1e-3).unwrap();
            }
            let (weights, mut floats) = state_now(&mut b, &mut st);
            floats.sort();
            ckpts.save(&mut b, &mut st, &cfg, dir.path()).unwrap();
            assert!(b.copies_in_flight() > 0, "round {round}: stage 1 should leave its copies in flight");
            train_step_at(&mut b, &mut st, &cfg, 1e-3).unwrap();
            assert_eq!(b.copies_in_flight(), 0, "round {round}: the update hook lands the copies");
            assert_ne!(state_now(&mut b, &mut st).0, weights, "round {round}: the next step should change the weights");
            saved.push((st.step - 1, weights, floats));
        }
        ckpts.finish(&mut b).unwrap();
        for (step, weights, floats) in saved {
            let (w, f) = state_saved(dir.path(), &st, step);
            assert!(w == weights, "step {step}: the checkpoint's weights are not that step's");
            assert!(f == floats, "step {step}: the checkpoint's optimizer state is not that step's");
        }
    }
}
