//! Training checkpoints inside a run folder.
//!
//! ```text
//! <run_dir>/checkpoints/step_00000200/
//!     model.safetensors      named fp32 parameters (ParamLayout names)
//!     optimizer.safetensors  named optimizer state: fp32, plus U8 tensors
//!                            for 8-bit state (codes; their absmax is fp32)
//!     manifest.json          step, config, loader/rng/optimizer state
//! ```
//! A checkpoint is staged as `step_00000200.tmp/` and renamed into place
//! only when complete (see `atomic`), so whatever instant a run dies at, the
//! newest `step_*` directory is loadable. Everything here works on host
//! memory; the trainer downloads device buffers first.

use crate::util::atomic;
use super::tensors::{self, shape_str, ByteTensor, Tensor};
use crate::model::layout::ParamLayout;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use super::checksum;
use super::stream_write;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Manifest format this build writes and the only one it reads.
pub const FORMAT: u32 = 1;
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIM_FILE: &str = "optimizer.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything about a checkpoint that is not a big tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Layout version of the checkpoint folder; bumped on breaking changes.
    pub format: u32,
    /// Optimizer steps completed when the checkpoint was taken.
    pub step: u64,
    /// The resolved run config (`Config::to_toml`), so a resume needs no flags.
    pub config_toml: String,
    /// Data-loader position (owned by `data`).
    pub loader: serde_json::Value,
    /// RNG states (owned by `train`).
    pub rng: serde_json::Value,
    /// Optimizer scalars such as the step counter (owned by `optim`).
    pub optimizer: serde_json::Value,
    /// UTC time of saving, RFC 3339.
    pub created: String,
    /// How the optimizer state is sharded (`ckpt::train_state::Sharding`);
    /// null = one optimizer file for the whole model.
    #[serde(default)]
    pub sharding: serde_json::Value,
    /// `"crc32:…"` of each tensor file (shards included), verified on load
    /// (see `checksum`). Empty in checkpoints saved before checksums existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
    /// Bad-step policy state (owned by `train::guard`); null in older checkpoints.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub guard: serde_json::Value,
}

impl Manifest {
    /// A manifest for `step` stamped with the current time; the trainer fills
    /// the state fields it owns.
    pub fn new(step: u64, config_toml: impl Into<String>) -> Self {
        Manifest {
            format: FORMAT,
            step,
            config_toml: config_toml.into(),
            loader: serde_json::Value::Null,
            sharding: serde_json::Value::Null,
            rng: serde_json::Value::Null,
            optimizer: serde_json::Value::Null,
            created: crate::util::time::now_rfc3339(),
            checksums: BTreeMap::new(),
            guard: serde_json::Value::Null,
        }
    }
}

/// A tensor to save, borrowing its data (typically a view of a flat buffer).
#[derive(Clone, Debug)]
pub struct NamedTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// A byte tensor to save (8-bit optimizer state codes), borrowing its data.
#[derive(Clone, Debug)]
pub struct NamedBytes<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// One `NamedTensor` per layout entry, viewing `params` (a flat buffer with
/// that layout: parameters, or any per-parameter optimizer state).
pub fn named_from_layout<'a>(layout: &ParamLayout, params: &'a [f32]) -> Result<Vec<NamedTensor<'a>>> {
    if params.len() != layout.total {
        bail!("flat buffer has {} values but the layout has {}", params.len(), layout.total);
    }
    let view = |p: &crate::model::layout::ParamInfo| NamedTensor {
        name: p.name.clone(),
        shape: p.shape.clone(),
        data: &params[p.offset..p.offset + p.numel()],
    };
    Ok(layout.params.iter().map(view).collect())
}

/// A checkpoint read back into host memory.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The checkpoint directory (for error messages and follow-up reads).
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Model tensors, sorted by name.
    pub model: Vec<Tensor>,
    /// Optimizer-state tensors, sorted by name.
    pub optim: Vec<Tensor>,
    /// 8-bit optimizer-state tensors (U8 in the file), sorted by name.
    pub optim_u8: Vec<ByteTensor>,
}

impl Loaded {
    /// The optimizer tensor `name`, or an error naming the file.
    pub fn optim_tensor(&self, name: &str) -> Result<&Tensor> {
        self.optim.iter().find(|t| t.name == name).ok_or_else(|| {
            anyhow!("checkpoint {}: optimizer tensor {name} is missing", self.dir.join(OPTIM_FILE).display())
        })
    }

    /// The 8-bit (U8) optimizer tensor `name`, or an error naming the file.
    pub fn optim_u8_tensor(&self, name: &str) -> Result<&ByteTensor> {
        self.optim_u8.iter().find(|t| t.name == name).ok_or_else(|| {
            anyhow!("checkpoint {}: 8-bit optimizer tensor {name} is missing", self.dir.join(OPTIM_FILE).display())
        })
    }
}

/// `<run_dir>/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// `<run_dir>/checkpoints/step_<8 digits>`.
pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("step_{step:08}"))
}

/// Save a complete checkpoint atomically, then prune: keep the newest
/// `keep_last` complete checkpoints (the new one always survives) and remove
/// `*.tmp` leftovers of crashed saves. Returns the new checkpoint directory.
pub fn save(
    run_dir: &Path,
    manifest: &Manifest,
    model: &[NamedTensor],
    optim: &[NamedTensor],
    keep_last: usize,
) -> Result<PathBuf> {
    save_with_bytes(run_dir, manifest, model, optim, &[], keep_last)
}

/// [`save`] with 8-bit optimizer state: `optim_bytes` are written as U8
/// tensors next to the fp32 `optim` tensors in `optimizer.safetensors`.
pub fn save_with_bytes(
    run_dir: &Path,
    manifest: &Manifest,
    model: &[NamedTensor],
    optim: &[NamedTensor],
    optim_bytes: &[NamedBytes],
    keep_last: usize,
) -> Result<PathBuf> {
    save_with_shards(run_dir, manifest, model, optim, optim_bytes, &[], keep_last)
}

/// [`save_with_bytes`] that also moves `shard_files` (other ranks' optimizer
/// shards, already written) into the checkpoint before it is published: the
/// checkpoint appears complete with every shard or not at all.
pub fn save_with_shards(
    run_dir: &Path,
    manifest: &Manifest,
    model: &[NamedTensor],
    optim: &[NamedTensor],
    optim_bytes: &[NamedBytes],
    shard_files: &[PathBuf],
    keep_last: usize,
) -> Result<PathBuf> {
    save_staged(run_dir, manifest, (model, optim, optim_bytes), shard_files, keep_last, &mut || Ok(()))
}

/// Tensors of a checkpoint's own files: (model, fp32 optimizer state,
/// 8-bit optimizer state).
pub type Tensors<'a, 'b> = (&'a [NamedTensor<'b>], &'a [NamedTensor<'b>], &'a [NamedBytes<'b>]);

/// [`save_with_shards`] that calls `before_shards` once the model and
/// optimizer files are staged and before the shard files are moved in and
/// the manifest written: the asynchronous save waits there for the other
/// ranks' shards, and `debug.ckpt_write_delay_ms` sleeps there.
pub fn save_staged(
    run_dir: &Path,
    manifest: &Manifest,
    (model, optim, optim_bytes): Tensors,
    shard_files: &[PathBuf],
    keep_last: usize,
    before_shards: &mut dyn FnMut() -> Result<()>,
) -> Result<PathBuf> {
    let mut write_files = |staging: &Path| Ok((write_model_and_optim(staging, (model, optim, optim_bytes))?, manifest.clone()));
    save_staged_by(run_dir, manifest.step, &mut write_files, shard_files, keep_last, before_shards)
}

/// The manifest's checksums of a checkpoint's own tensor files, by file name.
pub type FileSums = BTreeMap<String, String>;

/// Writes a checkpoint's own tensor files into the staging folder it is
/// given; returns their checksums and the manifest (which may depend on
/// what was written, such as an optimizer's scalars read unit by unit).
pub type WriteFiles<'a> = dyn FnMut(&Path) -> Result<(FileSums, Manifest)> + 'a;

/// [`save_staged`] whose tensor files are written by `write_files` (an
/// offloaded run writes them unit by unit, `ckpt::part_write`): the same
/// staging, shards, checksums, manifest-last, publication and pruning.
pub fn save_staged_by(
    run_dir: &Path,
    step: u64,
    write_files: &mut WriteFiles,
    shard_files: &[PathBuf],
    keep_last: usize,
    before_shards: &mut dyn FnMut() -> Result<()>,
) -> Result<PathBuf> {
    let dir = step_dir(run_dir, step);
    let parent = checkpoints_dir(run_dir);
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    atomic::publish_dir(&dir, |staging| {
        let (mut checksums, manifest) = write_files(staging)?;
        if manifest.step != step {
            bail!("internal: the manifest of a save of step {step} says step {}", manifest.step);
        }
        before_shards()?;
        let mut shards = vec![];
        for f in shard_files {
            let name = f.file_name().with_context(|| format!("shard file {} has no name", f.display()))?;
            fs::rename(f, staging.join(name)).with_context(|| format!("cannot move shard {} into the checkpoint", f.display()))?;
            shards.push(name.to_string_lossy().into_owned());
        }
        // Other ranks' shards were written elsewhere: read back for theirs.
        let names: Vec<&str> = shards.iter().map(|f| f.as_str()).collect();
        checksums.extend(checksum::checksums(staging, &names)?);
        let manifest = Manifest { checksums, ..manifest };
        let manifest_json = serde_json::to_vec_pretty(&manifest).context("cannot serialize the checkpoint manifest")?;
        // The manifest goes last: a directory with a manifest is complete.
        fs::write(staging.join(MANIFEST_FILE), &manifest_json)
            .with_context(|| format!("cannot write {}", staging.join(MANIFEST_FILE).display()))
    })?;
    prune(run_dir, &dir, keep_last)?;
    Ok(dir)
}

/// The model and optimizer files of a checkpoint from host tensors, in
/// parallel (each one sequential, in large writes); their CRCs come from
/// the writing itself.
pub(crate) fn write_model_and_optim(staging: &Path, (model, optim, optim_bytes): Tensors) -> Result<FileSums> {
    let (model_crc, optim_crc) = std::thread::scope(|s| {
        let model_writer = s.spawn(|| write_tensors(&staging.join(MODEL_FILE), model, &[]));
        let optim_crc = write_tensors(&staging.join(OPTIM_FILE), optim, optim_bytes);
        let model_crc = model_writer.join().unwrap_or_else(|_| Err(anyhow!("the writer of {MODEL_FILE} panicked")));
        (model_crc, optim_crc)
    });
    Ok(BTreeMap::from([(MODEL_FILE.to_string(), stream_write::crc_entry(model_crc?)), (OPTIM_FILE.to_string(), stream_write::crc_entry(optim_crc?))]))
}

/// Writes one tensor file and returns its CRC-32 (`stream_write`). A
/// checkpoint never holds a non-finite value: the first one met is an
/// error (the staging folder is then dropped, so nothing is published).
pub(crate) fn write_tensors(path: &Path, list: &[NamedTensor], bytes: &[NamedBytes]) -> Result<u32> {
    stream_write::check_shapes(path, list, bytes)?;
    stream_write::write_tensors(path, list, bytes, &|_| diverged(path))
}

/// The error's words for a non-finite value in the tensor file `path` of a
/// save.
pub(crate) fn diverged(path: &Path) -> String {
    format!("cannot save {}: training has diverged; the checkpoint is not published and the older ones are kept (resume the newest with a lower optimizer.lr)", path.display())
}

/// Step number of a `step_<digits>` directory name; `None` for anything
/// else, including `step_N.tmp` staging directories.
pub(super) fn parse_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `dir` holds all three files of a checkpoint.
pub(super) fn is_complete(dir: &Path) -> bool {
    [MANIFEST_FILE, MODEL_FILE, OPTIM_FILE].iter().all(|f| dir.join(f).is_file())
}

/// Every `step_<N>` directory of a run, complete or not, oldest first
/// (none when the run has no checkpoint folder).
pub(super) fn step_dirs(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let parent = checkpoints_dir(run_dir);
    let entries = match fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", parent.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", parent.display()))?;
        let Some(step) = entry.file_name().to_str().and_then(parse_step) else { continue };
        if entry.path().is_dir() {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// All complete checkpoints, oldest first.
fn complete_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    Ok(step_dirs(run_dir)?.into_iter().filter(|(_, d)| is_complete(d)).collect())
}

/// The newest complete checkpoint of a run, if any. Staging (`*.tmp`) and
/// incomplete directories are ignored.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(complete_checkpoints(run_dir)?.pop().map(|(_, dir)| dir))
}

/// Delete complete checkpoints beyond the newest `keep_last` (never `keep`)
/// and staging leftovers of crashed saves. A checkpoint is deleted by first
/// renaming it to `step_N.pruned.tmp` (atomic), so a kill during deletion
/// leaves only `*.tmp` litter, which the next save removes. Incomplete
/// `step_*` directories older than `keep` (left by a kill during a deletion
/// of an older ferrotron) are removed too, and so are `step_N.shards`
/// staging folders of older saves that were killed before publishing;
/// newer ones are left alone.
fn prune(run_dir: &Path, keep: &Path, keep_last: usize) -> Result<()> {
    // The new checkpoint counts toward `keep_last`; of the others, the
    // newest `keep_last - 1` stay.
    let others: Vec<PathBuf> = complete_checkpoints(run_dir)?.into_iter().map(|(_, d)| d).filter(|d| d != keep).collect();
    let excess = others.len().saturating_sub(keep_last.max(1) - 1);
    for dir in &others[..excess] {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(".pruned.tmp");
        let doomed = dir.with_file_name(name);
        atomic::remove_dir_if_exists(&doomed)?;
        fs::rename(dir, &doomed).with_context(|| format!("cannot rename {} for deletion", dir.display()))?;
    }
    let keep_step = keep.file_name().and_then(|n| n.to_str()).and_then(parse_step);
    remove_litter(run_dir, keep_step)
}

/// Removes the staging leftovers of interrupted saves and prunes (see
/// [`prune`]) up to the checkpoint of step `keep_step`. A resumed run calls
/// it for the checkpoint it continues from: a run killed after publishing
/// its last checkpoint but before its prune has nothing left to save, so
/// no later save would clear them.
pub fn remove_litter(run_dir: &Path, keep_step: Option<u64>) -> Result<()> {
    let parent = checkpoints_dir(run_dir);
    atomic::sync_dir(&parent)?;
    for entry in fs::read_dir(&parent).with_context(|| format!("cannot list {}", parent.display()))? {
        let path = entry.with_context(|| format!("cannot list {}", parent.display()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let older = |n: &str| parse_step(n).is_some_and(|s| keep_step.is_some_and(|k| s < k));
        let older_incomplete = older(name) && !is_complete(&path);
        // Shard staging of an older save that was killed before publishing,
        // or of this save (its files are in the checkpoint by now).
        let stale_shards = name.strip_suffix(".shards").is_some_and(|n| parse_step(n).is_some_and(|s| keep_step.is_some_and(|k| s <= k)));
        if path.is_dir() && ((name.starts_with("step_") && name.ends_with(".tmp")) || older_incomplete || stale_shards) {
            atomic::remove_dir_if_exists(&path)?;
        }
    }
    atomic::sync_dir(&parent)
}

/// Read a checkpoint directory: manifest (format-checked) and both tensor
/// files. Errors name the file and the problem.
///
/// Then the integrity checks: each file against the manifest's checksum (a
/// checkpoint without checksums, saved by an older ferrotron, loads with a
/// warning) and every fp32 value finite.
pub fn load(ckpt_dir: &Path) -> Result<Loaded> {
    let manifest = read_manifest(ckpt_dir)?;
    // read_all's errors already name the file and the problem.
    let model = tensors::read_all(&ckpt_dir.join(MODEL_FILE))?;
    let (optim, optim_u8) = tensors::read_all_mixed(&ckpt_dir.join(OPTIM_FILE))?;
    if manifest.checksums.is_empty() {
        eprintln!("warning: checkpoint {} has no checksums (saved by an older ferrotron): loaded without verifying its data", ckpt_dir.display());
    }
    checksum::verify(ckpt_dir, &manifest.checksums)?;
    for (file, list) in [(MODEL_FILE, &model), (OPTIM_FILE, &optim)] {
        for t in list {
            checksum::ensure_finite(file, &t.name, &t.data).with_context(|| {
                format!("checkpoint {} is unusable: it was saved after training diverged (older ferrotron versions did that)", ckpt_dir.display())
            })?;
        }
    }
    Ok(Loaded { dir: ckpt_dir.to_path_buf(), manifest, model, optim, optim_u8 })
}

/// Parse `manifest.json`, checking the format version before the fields so
/// that a newer format gets a version error, not a confusing field error.
pub fn read_manifest(ckpt_dir: &Path) -> Result<Manifest> {
    let path = ckpt_dir.join(MANIFEST_FILE);
    if !path.is_file() {
        bail!(
            "checkpoint {} has no {MANIFEST_FILE}: it is incomplete (a crashed save?) or not a checkpoint",
            ckpt_dir.display()
        );
    }
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{} is not valid JSON: {e}", path.display()))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == FORMAT as u64 => {}
        Some(f) => bail!(
            "{} has checkpoint format {f}, but this ferrotron reads format {FORMAT} only (saved by a different version?)",
            path.display()
        ),
        None => bail!("{} has no numeric `format` field; it is not a ferrotron checkpoint manifest", path.display()),
    }
    serde_json::from_value(value).map_err(|e| anyhow!("{} is not a valid checkpoint manifest: {e}", path.display()))
}

/// Fill the flat buffer `params` from the loaded model tensors, checking that
/// every layout tensor is present with the right shape and nothing is extra.
pub fn load_into_layout(loaded: &Loaded, layout: &ParamLayout, params: &mut [f32]) -> Result<()> {
    fill_flat(&loaded.model, layout, params, &loaded.dir.join(MODEL_FILE))
}

/// Scatter named tensors into a flat buffer with `layout`; `origin` names
/// the file in errors. Usable for per-parameter optimizer state as well.
pub fn fill_flat(list: &[Tensor], layout: &ParamLayout, params: &mut [f32], origin: &Path) -> Result<()> {
    let file = origin.display();
    if params.len() != layout.total {
        bail!("flat buffer has {} values but the layout has {}", params.len(), layout.total);
    }
    let by_name: HashMap<&str, &Tensor> = list.iter().map(|t| (t.name.as_str(), t)).collect();
    let expected: HashSet<&str> = layout.params.iter().map(|p| p.name.as_str()).collect();
    if let Some(extra) = list.iter().find(|t| !expected.contains(t.name.as_str())) {
        bail!("checkpoint {file}: tensor {} is not part of the configured model (a different config?)", extra.name);
    }
    for p in &layout.params {
        let t = by_name
            .get(p.name.as_str())
            .ok_or_else(|| anyhow!("checkpoint {file}: tensor {} is missing (the config expects shape {})", p.name, shape_str(&p.shape)))?;
        if t.shape != p.shape {
            bail!(
                "checkpoint {file}: tensor {} has shape {} but the config expects {}",
                p.name,
                shape_str(&t.shape),
                shape_str(&p.shape)
            );
        }
        params[p.offset..p.offset + p.numel()].copy_from_slice(&t.data);
    }
    Ok(())
}

