//! A training run's checkpoints from the trainer's side: what its state
//! puts into one (weights gathered whole, each rank's optimizer shard, the
//! manifest's loader, RNG, guard and optimizer scalars) and how a resume
//! takes it back, checking that it continues the same run (the global
//! batch may not change; the number of ranks and the per-rank batch may).
//! The files themselves are `ckpt/train_state.rs`'s business.

use super::run_dir;
use super::trainer::State;
use crate::backend::Backend;
use crate::ckpt::{self, train_state::{self, SaveParts, Sharding}};
use crate::config::Config;
use crate::parallel::offload;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A checkpoint of the whole state (a collective: every rank calls it).
pub(super) fn save<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<PathBuf> {
    // An offloaded run's fp32 weights are its host master weights (the
    // device holds the compute dtype).
    let weights = match st.off.as_mut() {
        Some(off) => off.master_weights()?,
        None => st.zero.full_weights(b)?,
    };
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
        let manifest = ckpt::Manifest {
            loader: serde_json::to_value(st.train.state())?,
            rng: serde_json::to_value(&st.rng)?,
            optimizer: match &host {
                Some((_, opt)) => opt.meta(),
                None => st.opt.meta(),
            },
            guard: st.guard.to_json(),
            ..ckpt::Manifest::new(st.step, cfg.to_toml())
        };
        let parts = SaveParts { layout: &st.model.layout, weights: &weights, manifest, sharding, rank, keep_last: cfg.train.keep_ckpts };
        dir = match host.as_mut() {
            Some((h, opt)) => train_state::publish(h, opt.as_ref(), run_dir, parts)?,
            None => train_state::publish(b, st.opt.as_ref(), run_dir, parts)?,
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

