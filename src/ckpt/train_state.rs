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
//! ZeRO 1, 2 and 3 share one) loads each rank's shard. Any other partition
//! (another world size, to or from stage 0) is resharded: every rank also
//! saves which part of each state tensor belongs to which tensor or piece
//! (`optim::StateSlice`, `optimizer.rankNNNNN.slices.json`), and a resuming
//! rank assembles its own state from the overlapping slices of all saved
//! shards.

use super::checkpoint::{self, Loaded, Manifest, NamedBytes, NamedTensor};
use super::tensors::{ByteTensor, Tensor};
use crate::backend::{Backend, DType, QUANT_BLOCK};
use crate::model::layout::ParamLayout;
use crate::optim::{Optimizer, SlicePer, StateSlice, StateTensor};
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
    pub fn same_partition(&self, now: &Sharding) -> bool {
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

/// File of rank `r`'s state slices (JSON list of `StateSlice`).
fn slices_file(r: usize) -> String {
    format!("optimizer.rank{r:05}.slices.json")
}

/// Writes the state slices of rank `r` into `dir` (nothing for an
/// optimizer whose state cannot be cut by tensor).
fn write_slices(slices: Option<&[StateSlice]>, dir: &Path, r: usize) -> Result<Option<PathBuf>> {
    let Some(slices) = slices else { return Ok(None) };
    let path = dir.join(slices_file(r));
    std::fs::write(&path, serde_json::to_vec(slices)?).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(path))
}

/// Where ranks other than 0 put their shards before rank 0 publishes.
pub(crate) fn shards_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoint::checkpoints_dir(run_dir).join(format!("step_{step:08}.shards"))
}

/// This rank's optimizer state, downloaded: (fp32 tensors, byte tensors).
pub fn download_state<B: Backend>(b: &mut B, opt: &dyn Optimizer<B>) -> Result<(Vec<(String, Vec<f32>)>, Vec<(String, Vec<u8>)>)> {
    collect_state(b, opt, |b, view, _| {
        let mut host = vec![0.0; view.len];
        b.download(view, &mut host)?;
        Ok(host)
    })
}

/// This rank's optimizer state on the host: byte tensors (8-bit codes)
/// downloaded here, fp32 tensors by `floats_of(backend, view, index among
/// the fp32 tensors)` (a plain download, or a copy started into a reused
/// buffer).
pub fn collect_state<B: Backend>(
    b: &mut B,
    opt: &dyn Optimizer<B>,
    mut floats_of: impl FnMut(&mut B, crate::backend::View, usize) -> Result<Vec<f32>>,
) -> Result<(Vec<(String, Vec<f32>)>, Vec<(String, Vec<u8>)>)> {
    let (mut floats, mut bytes) = (vec![], vec![]);
    for t in opt.state_tensors() {
        match t.dtype {
            DType::U8 => {
                let mut host = vec![0u8; t.view.len];
                b.download_u8(t.view, &mut host)?;
                bytes.push((t.name, host));
            }
            _ => {
                let host = floats_of(b, t.view, floats.len())?;
                floats.push((t.name, host));
            }
        }
    }
    Ok((floats, bytes))
}

/// One rank's optimizer state copied to host memory: everything of the
/// optimizer a save writes besides the manifest's scalars. Owned, so a
/// background thread can write it while training changes the device copy.
pub struct HostOptState {
    pub floats: Vec<(String, Vec<f32>)>,
    pub bytes: Vec<(String, Vec<u8>)>,
    /// Which part of which tensor each state holds (`None`: the optimizer's
    /// state cannot be cut by tensor, so it cannot be resharded).
    pub slices: Option<Vec<StateSlice>>,
}

impl HostOptState {
    pub fn download<B: Backend>(b: &mut B, opt: &dyn Optimizer<B>) -> Result<Self> {
        let (floats, bytes) = download_state(b, opt)?;
        Ok(HostOptState { floats, bytes, slices: opt.state_slices() })
    }

    /// Host bytes held (for logs).
    pub fn size_bytes(&self) -> u64 {
        (self.floats.iter().map(|(_, v)| 4 * v.len()).sum::<usize>() + self.bytes.iter().map(|(_, v)| v.len()).sum::<usize>()) as u64
    }

    fn named(&self) -> (Vec<NamedTensor<'_>>, Vec<NamedBytes<'_>>) {
        let f = self.floats.iter().map(|(n, d)| NamedTensor { name: n.clone(), shape: vec![d.len()], data: d }).collect();
        let u = self.bytes.iter().map(|(n, d)| NamedBytes { name: n.clone(), shape: vec![d.len()], data: d }).collect();
        (f, u)
    }
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
    write_shard_host(&HostOptState::download(b, opt)?, run_dir, step, rank)
}

/// [`write_shard`] from a host copy of the state.
pub fn write_shard_host(state: &HostOptState, run_dir: &Path, step: u64, rank: usize) -> Result<()> {
    let dir = shards_dir(run_dir, step);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (f, u) = state.named();
    checkpoint::write_tensors(&dir.join(shard_file(rank)), &f, &u)?;
    write_slices(state.slices.as_deref(), &dir, rank).map(|_| ())
}

/// Phase 2, on rank 0 after every shard is written: the checkpoint itself.
pub fn publish<B: Backend>(b: &mut B, opt: &dyn Optimizer<B>, run_dir: &Path, parts: SaveParts, before_publish: &mut dyn FnMut() -> Result<()>) -> Result<PathBuf> {
    publish_host(&HostOptState::download(b, opt)?, run_dir, parts, before_publish)
}

/// [`publish`] from a host copy of rank 0's state. `before_publish` runs
/// once rank 0's own files are staged, before the other ranks' shards are
/// moved in (the asynchronous save waits for them there).
pub fn publish_host(state: &HostOptState, run_dir: &Path, parts: SaveParts, before_publish: &mut dyn FnMut() -> Result<()>) -> Result<PathBuf> {
    let model: Vec<NamedTensor> = parts.layout.params.iter().map(|p| NamedTensor { name: p.name.clone(), shape: p.shape.clone(), data: &parts.weights[p.offset..p.offset + p.numel()] }).collect();
    let (f, u) = state.named();
    let manifest = parts.manifest;
    let mut write_files = |staging: &Path| {
        let sums = checkpoint::write_model_and_optim(staging, (&model, &f, &u))?;
        Ok((sums, manifest.clone()))
    };
    let step = manifest.step;
    publish_by(state.slices.as_deref(), run_dir, step, &parts.sharding, parts.keep_last, &mut write_files, before_publish)
}

/// [`publish_host`] whose model and optimizer files are written by
/// `write_files` (an offloaded run's, unit by unit): rank 0's state
/// `slices`, the other ranks' shards and the manifest's sharding exactly
/// as every save has them.
pub fn publish_by(slices: Option<&[StateSlice]>, run_dir: &Path, step: u64, sharding: &Sharding, keep_last: usize, write_files: &mut checkpoint::WriteFiles, before_publish: &mut dyn FnMut() -> Result<()>) -> Result<PathBuf> {
    let staged = shards_dir(run_dir, step);
    std::fs::create_dir_all(&staged).with_context(|| format!("cannot create {}", staged.display()))?;
    let mut shards: Vec<PathBuf> = write_slices(slices, &staged, 0)?.into_iter().collect();
    if sharding.zero_stage > 0 {
        for r in 1..sharding.world {
            shards.push(staged.join(shard_file(r)));
            if slices.is_some() {
                shards.push(staged.join(slices_file(r)));
            }
        }
    }
    let sharding = serde_json::to_value(sharding)?;
    let mut with_sharding = |staging: &Path| {
        let (sums, manifest) = write_files(staging)?;
        Ok((sums, Manifest { sharding: sharding.clone(), ..manifest }))
    };
    let dir = checkpoint::save_staged_by(run_dir, step, &mut with_sharding, &shards, keep_last, before_publish)?;
    let _ = std::fs::remove_dir(shards_dir(run_dir, step));
    Ok(dir)
}

/// The sharding a checkpoint was saved with (unsharded for older ones).
pub fn sharding_of(loaded: &Loaded) -> Sharding {
    sharding_in(&loaded.manifest)
}

/// [`sharding_of`] from the manifest alone.
pub fn sharding_in(manifest: &Manifest) -> Sharding {
    serde_json::from_value(manifest.sharding.clone()).unwrap_or(Sharding { world: 1, zero_stage: 0, whole_tensors: false })
}

/// Loads this rank's optimizer state (tensors and scalars) from `loaded`.
pub fn restore_optimizer<B: Backend>(b: &mut B, opt: &mut dyn Optimizer<B>, loaded: &Loaded, now: &Sharding, rank: usize) -> Result<()> {
    let saved = sharding_of(loaded);
    if !saved.same_partition(now) {
        reshard(b, opt, loaded, &saved, now)?;
        return opt.load_meta(&loaded.manifest.optimizer);
    }
    let (floats, bytes) = saved_shard(loaded, &saved, rank)?;
    for t in opt.state_tensors() {
        upload_state(b, &t, &floats, &bytes, &loaded.dir)?;
    }
    opt.load_meta(&loaded.manifest.optimizer)
}

/// Rank `r`'s optimizer tensors as saved.
fn saved_shard(loaded: &Loaded, saved: &Sharding, r: usize) -> Result<(Vec<Tensor>, Vec<ByteTensor>)> {
    if r == 0 || saved.zero_stage == 0 || saved.world == 1 {
        Ok((loaded.optim.clone(), loaded.optim_u8.clone()))
    } else {
        super::tensors::read_all_mixed(&loaded.dir.join(shard_file(r)))
    }
}

/// This rank's optimizer state assembled from every saved shard: each of
/// its state slices is filled from the saved slices of the same state
/// tensor and tensor whose pieces overlap it.
fn reshard<B: Backend>(b: &mut B, opt: &mut dyn Optimizer<B>, loaded: &Loaded, saved: &Sharding, now: &Sharding) -> Result<()> {
    let dir = &loaded.dir;
    let Some(want) = opt.state_slices() else {
        bail!(
            "checkpoint {} was saved by {} rank(s) at ZeRO stage {}; this run has {} at stage {}, and {}'s state cannot be moved between partitions. \
             Resume with the saved number of ranks and a stage of the same kind (1, 2 and 3 share one partition; 0 has none)",
            dir.display(), saved.world, saved.zero_stage, now.world, now.zero_stage, opt.name()
        );
    };
    let ranks = if saved.zero_stage == 0 { 1 } else { saved.world };
    let mut floats: Vec<(String, Vec<f32>)> = opt.state_tensors().iter().filter(|t| t.dtype != DType::U8).map(|t| (t.name.clone(), vec![0.0; t.view.len])).collect();
    let mut bytes: Vec<(String, Vec<u8>)> = opt.state_tensors().iter().filter(|t| t.dtype == DType::U8).map(|t| (t.name.clone(), vec![0; t.view.len])).collect();
    let mut filled = vec![0usize; want.len()];
    for r in 0..ranks {
        let path = dir.join(slices_file(r));
        let text = std::fs::read(&path).with_context(|| format!("cannot reshard {}: {} is missing (checkpoints from before resharding existed cannot change world size)", dir.display(), path.display()))?;
        let have: Vec<StateSlice> = serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display()))?;
        let (src_f, src_u) = saved_shard(loaded, saved, r)?;
        for (w, done) in want.iter().zip(filled.iter_mut()) {
            for h in have.iter().filter(|h| h.state == w.state && h.tensor == w.tensor) {
                let Some((from, to, n)) = overlap(h, w) else { continue };
                *done += n;
                if let Some((_, dst)) = floats.iter_mut().find(|(name, _)| *name == w.state) {
                    let src = &src_f.iter().find(|t| t.name == h.state).with_context(|| format!("{}: rank {r}'s shard lacks {}", dir.display(), h.state))?.data;
                    dst[to..to + n].copy_from_slice(&src[from..from + n]);
                } else if let Some((_, dst)) = bytes.iter_mut().find(|(name, _)| *name == w.state) {
                    let src = &src_u.iter().find(|t| t.name == h.state).with_context(|| format!("{}: rank {r}'s shard lacks {}", dir.display(), h.state))?.data;
                    dst[to..to + n].copy_from_slice(&src[from..from + n]);
                }
            }
        }
    }
    if let Some((w, n)) = want.iter().zip(&filled).find(|(w, n)| **n != w.len) {
        bail!("cannot reshard {}: {} of {} values of {} (tensor {}) were found in the saved shards", dir.display(), n, w.len, w.state, w.tensor);
    }
    for t in opt.state_tensors() {
        match t.dtype {
            DType::U8 => b.upload_u8(t.view, &bytes.iter().find(|(n, _)| *n == t.name).expect("allocated above").1)?,
            _ => b.upload(t.view, &floats.iter().find(|(n, _)| *n == t.name).expect("allocated above").1)?,
        }
    }
    Ok(())
}

/// Where saved slice `h` and wanted slice `w` (same state, same tensor)
/// share values: (offset in `h`'s state tensor, offset in `w`'s, count).
fn overlap(h: &StateSlice, w: &StateSlice) -> Option<(usize, usize, usize)> {
    let (start, end) = (h.piece.start.max(w.piece.start), h.piece.end.min(w.piece.end));
    if start >= end {
        return None;
    }
    match w.per {
        SlicePer::Element => Some((h.off + start - h.piece.start, w.off + start - w.piece.start, end - start)),
        // Pieces start on block boundaries (the partition snaps them), so
        // the shared blocks are whole blocks of both.
        SlicePer::Block => {
            let (first, last) = (start / QUANT_BLOCK, end.div_ceil(QUANT_BLOCK));
            Some((h.off + first - h.piece.start / QUANT_BLOCK, w.off + first - w.piece.start / QUANT_BLOCK, last - first))
        }
        SlicePer::Whole => (h.piece == w.piece && h.len == w.len).then_some((h.off, w.off, w.len)),
    }
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
