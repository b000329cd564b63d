//! A training run's state in a checkpoint, and back: model weights (always
//! whole, world-independent), optimizer state (one file, or one shard per
//! rank under ZeRO 1–3), and the manifest's loader position, RNG and
//! optimizer scalars.
//!
//! Sharded saves are atomic across ranks: every rank but 0 writes its
//! optimizer shard into the run's `checkpoints/step_N.shards/`, all ranks
//! meet at a barrier, and rank 0 writes the model, its own shard and the
//! manifest into the staging folder, moves the other shards in, and
//! publishes the folder with one rename. A crash before that rename leaves
//! the previous checkpoint the newest complete one.
//!
//! Resuming with the same partition (world size and kind of partition;
//! ZeRO 1, 2 and 3 share one) loads each rank's shard. A different world
//! size or a change to or from stage 0 is refused with what works.

use super::checkpoint::{self, Loaded, Manifest, NamedBytes, NamedTensor};
use super::tensors::{ByteTensor, Tensor};
use crate::backend::{Backend, DType};
use crate::model::layout::ParamLayout;
use crate::optim::{Optimizer, StateTensor};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How a checkpoint's optimizer state is cut (`Manifest::sharding`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sharding {
    /// Ranks that wrote a shard.
    pub world: usize,
    pub zero_stage: u32,
    /// Whole-tensor partition (matrix optimizers) or element ranges.
    pub whole_tensors: bool,
}

impl Sharding {
    /// Whether optimizer state saved as `self` loads as `now` shard by shard.
    fn same_partition(&self, now: &Sharding) -> bool {
        let sharded = |s: &Sharding| s.zero_stage > 0 && s.world > 1;
        match (sharded(self), sharded(now)) {
            (false, false) => true,
            (true, true) => self.world == now.world && self.whole_tensors == now.whole_tensors,
            _ => false,
        }
    }
}

/// File of rank `r`'s optimizer shard (rank 0's is the usual optimizer file).
fn shard_file(r: usize) -> String {
    format!("optimizer.rank{r:05}.safetensors")
}

fn shards_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoint::checkpoints_dir(run_dir).join(format!("step_{step:08}.shards"))
}

/// This rank's optimizer state, downloaded: (fp32 tensors, byte tensors).
pub fn download_state<B: Backend>(b: &mut B, opt: &dyn Optimizer<B>) -> Result<(Vec<(String, Vec<f32>)>, Vec<(String, Vec<u8>)>)> {
    let (mut floats, mut bytes) = (vec![], vec![]);
    for t in opt.state_tensors() {
        match t.dtype {
            DType::U8 => {
                let mut host = vec![0u8; t.view.len];
                b.download_u8(t.view, &mut host)?;
                bytes.push((t.name, host));
            }
            _ => {
                let mut host = vec![0.0; t.view.len];
                b.download(t.view, &mut host)?;
                floats.push((t.name, host));
            }
        }
    }
    Ok((floats, bytes))
}

/// Everything of one rank a checkpoint needs.
pub struct SaveParts<'a> {
    pub layout: &'a ParamLayout,
    /// The whole model's weights (every rank has them at save time).
    pub weights: &'a [f32],
    pub manifest: Manifest,
    pub sharding: Sharding,
    pub rank: usize,
    pub keep_last: usize,
}

/// Phase 1 of a save, on every rank but 0: its optimizer shard to disk.
pub fn write_shard<B: Backend>(b: &mut B, opt: &dyn Optimizer<B>, run_dir: &Path, step: u64, rank: usize) -> Result<()> {
    let (floats, bytes) = download_state(b, opt)?;
    let dir = shards_dir(run_dir, step);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let f: Vec<NamedTensor> = floats.iter().map(|(n, d)| NamedTensor { name: n.clone(), shape: vec![d.len()], data: d }).collect();
    let u: Vec<NamedBytes> = bytes.iter().map(|(n, d)| NamedBytes { name: n.clone(), shape: vec![d.len()], data: d }).collect();
    checkpoint::write_tensors(&dir.join(shard_file(rank)), &f, &u)
}

/// Phase 2, on rank 0 after every shard is written: the checkpoint itself.
pub fn publish<B: Backend>(b: &mut B, opt: &dyn Optimizer<B>, run_dir: &Path, parts: SaveParts) -> Result<PathBuf> {
    let model: Vec<NamedTensor> = parts.layout.params.iter().map(|p| NamedTensor { name: p.name.clone(), shape: p.shape.clone(), data: &parts.weights[p.offset..p.offset + p.numel()] }).collect();
    let (floats, bytes) = download_state(b, opt)?;
    let f: Vec<NamedTensor> = floats.iter().map(|(n, d)| NamedTensor { name: n.clone(), shape: vec![d.len()], data: d }).collect();
    let u: Vec<NamedBytes> = bytes.iter().map(|(n, d)| NamedBytes { name: n.clone(), shape: vec![d.len()], data: d }).collect();
    let step = parts.manifest.step;
    let shards: Vec<PathBuf> = (1..parts.sharding.world).map(|r| shards_dir(run_dir, step).join(shard_file(r))).filter(|_| parts.sharding.zero_stage > 0).collect();
    let manifest = Manifest { sharding: serde_json::to_value(&parts.sharding)?, ..parts.manifest };
    let dir = checkpoint::save_with_shards(run_dir, &manifest, &model, &f, &u, &shards, parts.keep_last)?;
    let _ = std::fs::remove_dir(shards_dir(run_dir, step));
    Ok(dir)
}

/// The sharding a checkpoint was saved with (unsharded for older ones).
pub fn sharding_of(loaded: &Loaded) -> Sharding {
    serde_json::from_value(loaded.manifest.sharding.clone()).unwrap_or(Sharding { world: 1, zero_stage: 0, whole_tensors: false })
}

/// Loads this rank's optimizer state (tensors and scalars) from `loaded`.
pub fn restore_optimizer<B: Backend>(b: &mut B, opt: &mut dyn Optimizer<B>, loaded: &Loaded, now: &Sharding, rank: usize) -> Result<()> {
    let saved = sharding_of(loaded);
    if !saved.same_partition(now) {
        bail!(
            "checkpoint {} holds optimizer state sharded over {} rank(s) at ZeRO stage {}; this run has {} rank(s) at stage {}. \
             Resume with the same number of ranks (ZeRO stages 1, 2 and 3 share one partition, so changing between them works), \
             or start a new run from these weights with model.init_from after `ferrotron export`",
            loaded.dir.display(),
            saved.world,
            saved.zero_stage,
            now.world,
            now.zero_stage
        );
    }
    let (floats, bytes): (Vec<Tensor>, Vec<ByteTensor>) = if rank == 0 || saved.zero_stage == 0 || saved.world == 1 {
        (loaded.optim.clone(), loaded.optim_u8.clone())
    } else {
        super::tensors::read_all_mixed(&loaded.dir.join(shard_file(rank)))?
    };
    for t in opt.state_tensors() {
        upload_state(b, &t, &floats, &bytes, &loaded.dir)?;
    }
    opt.load_meta(&loaded.manifest.optimizer)
}

fn upload_state<B: Backend>(b: &mut B, t: &StateTensor, floats: &[Tensor], bytes: &[ByteTensor], dir: &Path) -> Result<()> {
    let missing = || format!("checkpoint {}: optimizer tensor {} is missing (was it saved by another optimizer?)", dir.display(), t.name);
    match t.dtype {
        DType::U8 => {
            let found = bytes.iter().find(|x| x.name == t.name).with_context(missing)?;
            check_len(&t.name, found.data.len(), t.view.len, dir)?;
            b.upload_u8(t.view, &found.data)
        }
        _ => {
            let found = floats.iter().find(|x| x.name == t.name).with_context(missing)?;
            check_len(&t.name, found.data.len(), t.view.len, dir)?;
            b.upload(t.view, &found.data)
        }
    }
}

fn check_len(name: &str, found: usize, want: usize, dir: &Path) -> Result<()> {
    if found != want {
        bail!("checkpoint {}: optimizer tensor {name} has {found} values, expected {want}", dir.display());
    }
    Ok(())
}
