//! Checkpoints of offloaded runs (`offload.optimizer = cpu | nvme`), unit
//! by unit: the same files as every run's checkpoint (a plain run resumes
//! from them and they from a plain run's), but the host never holds the
//! whole model's weights or optimizer state a second time — the offload
//! already holds them once (cpu tier) or keeps them in files (nvme tier),
//! and for the largest models a second copy does not fit.
//!
//! Save: the file headers follow from the layout and the units' state
//! sizes; then each unit in turn (read from its file in the nvme tier)
//! puts its tensors into `model.safetensors` and its part of every
//! optimizer state tensor into `optimizer.safetensors` with positioned
//! writes (`ckpt::part_write`), while the staging folder, checksums,
//! manifest, publication and pruning are every save's
//! (`train_state::publish_by`). The save is synchronous also with
//! `train.async_checkpoint = true`: a background write would need a host
//! copy of everything.
//!
//! Resume: the newest checkpoint that passes the integrity checks, checked
//! in one streamed pass (`ckpt::part_read::verify`), then each unit's
//! weights and state read by range into the unit. Extra host memory is
//! about one unit (a few of its buffers), not the model.

use super::checkpointing;
use super::trainer::State;
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, DType, View};
use crate::ckpt::checkpoint::{Manifest, MODEL_FILE, OPTIM_FILE};
use crate::ckpt::part_read::{self, Kind, TensorFile};
use crate::ckpt::part_write::{PartFile, TensorSpec};
use crate::ckpt::stream_write::crc_entry;
use crate::ckpt::train_state::{self, Sharding};
use crate::ckpt::{self, recover};
use crate::config::{Config, OptimizerConfig};
use crate::model::layout::ParamLayout;
use crate::optim::StateSlice;
use crate::parallel::offload::host_optimizer::{host_optimizer, unit_layout, UnitHost};
use crate::parallel::offload::{self, Offload};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a unit holds, known without its data: its tensors (offsets from
/// the unit's start) and its optimizer's state tensors and slices.
pub(crate) struct UnitPlan {
    layout: ParamLayout,
    /// (name, is U8, values) of each state tensor, in `state_tensors` order.
    states: Vec<(String, bool, usize)>,
    slices: Option<Vec<StateSlice>>,
}

/// Every unit's plan. The sizes come from an optimizer built for the
/// unit's layout alone (its zeroed state, one unit at a time, freed at
/// once): the nvme tier's files need not be read for them.
pub(crate) fn plan(units: &[std::ops::Range<usize>], cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Vec<UnitPlan>> {
    units
        .iter()
        .map(|r| {
            let layout = unit_layout(layout, r);
            let mut h = CpuBackend::new();
            let opt = host_optimizer(&mut h, cfg, &layout)?;
            let states = opt.state_tensors().iter().map(|t| (t.name.clone(), t.dtype == DType::U8, t.view.len)).collect();
            Ok(UnitPlan { layout, states, slices: opt.state_slices() })
        })
        .collect()
}

/// The whole model's optimizer state tensors: each the units' parts one
/// after the other (what the plain run's optimizer holds, in its order).
pub(crate) fn full_states(units: &[UnitPlan]) -> Result<Vec<TensorSpec>> {
    let first = units.first().ok_or_else(|| anyhow!("internal: a model without units"))?;
    let mut out: Vec<TensorSpec> = first.states.iter().map(|(name, u8s, _)| TensorSpec { name: name.clone(), shape: vec![0], u8s: *u8s }).collect();
    for unit in units {
        let kinds: Vec<(&String, &bool)> = unit.states.iter().map(|(n, u, _)| (n, u)).collect();
        let want: Vec<(&String, &bool)> = out.iter().map(|t| (&t.name, &t.u8s)).collect();
        ensure!(kinds == want, "offload: a unit's optimizer state {kinds:?} does not match the model's {want:?}");
        for (t, (_, _, len)) in out.iter_mut().zip(&unit.states) {
            t.shape[0] += len;
        }
    }
    Ok(out)
}

/// The whole model's state slices (`optimizer.rank00000.slices.json`),
/// the plain run's optimizer's list: each state's slices over all units,
/// offsets past the earlier units' parts (a unit's layout keeps each
/// tensor's index in the whole layout). `None` when the optimizer's
/// state cannot be cut.
pub(crate) fn full_slices(units: &[UnitPlan]) -> Option<Vec<StateSlice>> {
    let first = units.first()?;
    let mut out = vec![];
    for (s, (state, _, _)) in first.states.iter().enumerate() {
        let mut before = 0;
        for unit in units {
            let slices = unit.slices.as_ref()?;
            out.extend(slices.iter().filter(|sl| sl.state == *state).map(|sl| StateSlice { off: sl.off + before, ..sl.clone() }));
            before += unit.states[s].2;
        }
    }
    Some(out)
}

/// The model file's tensors: the layout's, fp32.
fn model_specs(layout: &ParamLayout) -> Vec<TensorSpec> {
    layout.params.iter().map(|p| TensorSpec { name: p.name.clone(), shape: p.shape.clone(), u8s: false }).collect()
}

/// The synchronous save of an offloaded run (see the module doc).
pub(super) fn save<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path, delay: Duration) -> Result<PathBuf> {
    let base = checkpointing::manifest(st, cfg, serde_json::Value::Null)?;
    let sharding = Sharding { world: st.zero.world(), zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    let off = st.off.as_mut().ok_or_else(|| anyhow!("internal: the unit-by-unit save of a run that is not offloaded"))?;
    let mut pause = || {
        std::thread::sleep(delay);
        Ok(())
    };
    let (zero, ranges) = (&mut st.zero, off.unit_ranges().to_vec());
    let mut read = |u: usize, f: &mut dyn FnMut(&UnitHost) -> Result<()>| off.read_unit_on(b, zero, u, |h| f(h));
    write_units(&mut read, ranges, &st.model.layout, cfg, run_dir, &base, &sharding, &mut pause)
}

/// Reads unit `u` for a save: `f` sees its master weights and state.
type ReadUnit<'a> = dyn FnMut(usize, &mut dyn FnMut(&UnitHost) -> Result<()>) -> Result<()> + 'a;

/// Publishes the checkpoint of step `base.step` of the offloaded run
/// `off` (model `layout`) in `run_dir`, unit by unit: `base` is its
/// manifest but for the optimizer's scalars (read from the units);
/// `before_publish` runs once the files are staged.
/// Host and file units only (a run without `offload.gpu_gb`).
pub fn write_checkpoint(off: &mut Offload, layout: &ParamLayout, cfg: &Config, run_dir: &Path, base: &Manifest, sharding: &Sharding, before_publish: &mut dyn FnMut() -> Result<()>) -> Result<PathBuf> {
    let ranges = off.unit_ranges().to_vec();
    let mut read = |u: usize, f: &mut dyn FnMut(&UnitHost) -> Result<()>| off.read_unit(u, |h| f(h));
    write_units(&mut read, ranges, layout, cfg, run_dir, base, sharding, before_publish)
}

/// [`write_checkpoint`] of the units `ranges`, each read by `read`.
#[allow(clippy::too_many_arguments)]
fn write_units(read: &mut ReadUnit<'_>, ranges: Vec<std::ops::Range<usize>>, layout: &ParamLayout, cfg: &Config, run_dir: &Path, base: &Manifest, sharding: &Sharding, before_publish: &mut dyn FnMut() -> Result<()>) -> Result<PathBuf> {
    let units = plan(&ranges, &cfg.optimizer, layout)?;
    let (states, slices, models) = (full_states(&units)?, full_slices(&units), model_specs(layout));
    let mut write_files = |staging: &Path| {
        let mut model = PartFile::create(&staging.join(MODEL_FILE), &models)?;
        let mut optim = PartFile::create(&staging.join(OPTIM_FILE), &states)?;
        let mut at = vec![0usize; states.len()];
        let mut meta = None;
        for (u, unit) in units.iter().enumerate() {
            read(u, &mut |h| {
                // The units share the optimizer's scalars (the step count).
                meta.get_or_insert_with(|| h.opt.meta());
                write_unit(h, unit, &mut model, &mut optim, &mut at)
            })?;
        }
        let sums = BTreeMap::from([(MODEL_FILE.to_string(), crc_entry(model.finish()?)), (OPTIM_FILE.to_string(), crc_entry(optim.finish()?))]);
        Ok((sums, Manifest { optimizer: meta.unwrap_or_default(), ..base.clone() }))
    };
    train_state::publish_by(slices.as_deref(), run_dir, base.step, sharding, cfg.train.keep_ckpts, &mut write_files, before_publish)
}

/// One unit into the two files: its weights (a thread of their own, as
/// the whole-file save writes the two files in parallel) and its part of
/// each state tensor, at `at` (advanced past it).
fn write_unit(h: &UnitHost, unit: &UnitPlan, model: &mut PartFile, optim: &mut PartFile, at: &mut [usize]) -> Result<()> {
    let master = h.master();
    let states = h.opt.state_tensors();
    let got: Vec<(String, bool, usize)> = states.iter().map(|t| (t.name.clone(), t.dtype == DType::U8, t.view.len)).collect();
    ensure!(got == unit.states, "offload: unit {} holds optimizer state {got:?}, planned {:?}", h.unit, unit.states);
    std::thread::scope(|s| {
        let weights = s.spawn(|| unit.layout.params.iter().try_for_each(|p| model.put_f32(&p.name, 0, &master[p.offset..p.offset + p.numel()])));
        let state = states.iter().zip(at.iter_mut()).try_for_each(|(t, a)| {
            match t.dtype {
                DType::U8 => optim.put_u8(&t.name, *a, h.h.slice_u8(t.view))?,
                _ => optim.put_f32(&t.name, *a, h.h.slice(t.view))?,
            }
            *a += t.view.len;
            Ok(())
        });
        let weights = weights.join().unwrap_or_else(|_| Err(anyhow!("the writer of {MODEL_FILE} panicked")));
        weights.and(state)
    })
}

/// Resume of an offloaded run (see the module doc); `false` when the run
/// has no checkpoint.
pub(super) fn restore<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, run_dir: &Path) -> Result<bool> {
    let found = recover::newest_good_by(run_dir, |dir| Ok((dir.to_path_buf(), part_read::verify(dir)?)))?;
    let Some((dir, manifest)) = found else { return Ok(false) };
    checkpointing::check_resume(st, cfg, run_dir, &dir, &manifest)?;
    let now = Sharding { world: st.zero.world(), zero_stage: cfg.dist.zero_stage, whole_tensors: st.zero.part.whole_tensors };
    if train_state::sharding_in(&manifest).same_partition(&now) {
        load_units(b, st, cfg, &dir, &manifest)?;
    } else {
        load_resharded(b, st, cfg, &dir, &now)?;
    }
    checkpointing::restore_run_state(st, &manifest)?;
    Ok(true)
}

/// Each unit's weights (also to the device's copy, where there is one)
/// and state, read by range from the checkpoint's files.
fn load_units<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, dir: &Path, manifest: &Manifest) -> Result<()> {
    let device = st.zero.full_weights_view();
    let off = st.off.as_mut().ok_or_else(|| anyhow!("internal: a unit-by-unit resume of a run that is not offloaded"))?;
    let (zero, ranges) = (&mut st.zero, off.unit_ranges().to_vec());
    let mut restore = |b: &mut B, u: usize, meta: &serde_json::Value, f: &mut dyn FnMut(&mut UnitHost) -> Result<()>| off.restore_unit_on(b, zero, u, meta, |h| f(h));
    read_units_by(b, device, &mut restore, &ranges, &st.model.layout, cfg, dir, manifest)
}

/// Restores unit `u` for a resume: `f` fills its master weights and
/// state; the optimizer's scalars come from `meta`.
type RestoreUnit<'a, B> = dyn FnMut(&mut B, usize, &serde_json::Value, &mut dyn FnMut(&mut UnitHost) -> Result<()>) -> Result<()> + 'a;

/// Loads the verified checkpoint in `dir` (`ckpt::part_read::verify`
/// gave `manifest`) into the offloaded run `off` unit by unit, and each
/// unit's weights into `device` (the device's whole-model weights, where
/// there are such). Its optimizer state must be one file (not sharded).
/// Host and file units only (a run without `offload.gpu_gb`).
pub fn read_units<B: Backend>(b: &mut B, device: Option<View>, off: &mut Offload, layout: &ParamLayout, cfg: &Config, dir: &Path, manifest: &Manifest) -> Result<()> {
    let ranges = off.unit_ranges().to_vec();
    let mut restore = |_: &mut B, u: usize, meta: &serde_json::Value, f: &mut dyn FnMut(&mut UnitHost) -> Result<()>| off.restore_unit(u, meta, |h| f(h));
    read_units_by(b, device, &mut restore, &ranges, layout, cfg, dir, manifest)
}

/// [`read_units`] into the units `ranges`, each restored by `restore`.
#[allow(clippy::too_many_arguments)]
fn read_units_by<B: Backend>(b: &mut B, device: Option<View>, restore: &mut RestoreUnit<'_, B>, ranges: &[std::ops::Range<usize>], layout: &ParamLayout, cfg: &Config, dir: &Path, manifest: &Manifest) -> Result<()> {
    let (model, optim) = (TensorFile::open(&dir.join(MODEL_FILE))?, TensorFile::open(&dir.join(OPTIM_FILE))?);
    part_read::check_model(&model, layout)?;
    let units = plan(ranges, &cfg.optimizer, layout)?;
    let states = full_states(&units)?;
    check_states(&optim, &states, dir)?;
    let mut at = vec![0usize; states.len()];
    for (u, unit) in units.iter().enumerate() {
        let r = ranges[u].clone();
        let mut master = vec![0.0f32; r.len()];
        for p in &unit.layout.params {
            model.read_f32(&p.name, 0, &mut master[p.offset..p.offset + p.numel()])?;
        }
        if let Some(view) = device {
            let v = view.sub(r.start, r.len());
            b.upload(v, &master)?;
            b.params_changed(v)?;
        }
        restore(b, u, &manifest.optimizer, &mut |h| {
            h.set_master(&master)?;
            read_unit_state(h, &optim, &mut at)
        })?;
    }
    Ok(())
}

/// A unit's part of each state tensor, from `at` on (advanced past it).
fn read_unit_state(h: &mut UnitHost, optim: &TensorFile, at: &mut [usize]) -> Result<()> {
    for (t, a) in h.opt.state_tensors().iter().zip(at.iter_mut()) {
        match t.dtype {
            DType::U8 => {
                let mut part = vec![0u8; t.view.len];
                optim.read_u8(&t.name, *a, &mut part)?;
                h.h.upload_u8(t.view, &part)?;
            }
            _ => {
                let mut part = vec![0.0f32; t.view.len];
                optim.read_f32(&t.name, *a, &mut part)?;
                h.h.upload(t.view, &part)?;
            }
        }
        *a += t.view.len;
    }
    Ok(())
}

/// `train_state`'s checks on the optimizer file: every state tensor the
/// units need, whole-model length, the right dtype.
fn check_states(optim: &TensorFile, states: &[TensorSpec], dir: &Path) -> Result<()> {
    for s in states {
        let t = optim.entry(&s.name).with_context(|| format!("checkpoint {}: optimizer tensor {} is missing (was it saved by another optimizer?)", dir.display(), s.name))?;
        if t.numel() != s.shape[0] {
            bail!("checkpoint {}: optimizer tensor {} has {} values, expected {}", dir.display(), s.name, t.numel(), s.shape[0]);
        }
        if (t.kind == Kind::U8) != s.u8s || t.kind == Kind::Other {
            bail!("checkpoint {}: optimizer tensor {} has dtype {}, expected {}", dir.display(), s.name, t.dtype, if s.u8s { "U8" } else { "F32" });
        }
    }
    Ok(())
}

/// A checkpoint whose optimizer state is sharded (saved by several ranks
/// under ZeRO): the state is resharded into a whole-model optimizer on the
/// host and split into the units — the one resume that holds the whole
/// model on the host (once for the weights, once for the state).
fn load_resharded<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, dir: &Path, now: &Sharding) -> Result<()> {
    let loaded = ckpt::load(dir)?;
    let mut params = vec![0.0f32; st.model.layout.total];
    ckpt::load_into_layout(&loaded, &st.model.layout, &mut params)?;
    st.zero.set_weights(b, &params)?;
    let off: &mut Offload = st.off.as_mut().ok_or_else(|| anyhow!("internal: not an offloaded run"))?;
    off.set_weights_on(b, &mut st.zero, &params)?;
    drop(params);
    let mut h = CpuBackend::new();
    let mut opt = offload::host_optimizer::host_optimizer(&mut h, &cfg.optimizer, &st.model.layout)?;
    train_state::restore_optimizer(&mut h, opt.as_mut(), &loaded, now, st.zero.rank())?;
    off.load_optimizer_on(b, &mut st.zero, &mut h, &opt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::model::store::unit_ranges;

    /// The assembled state tensors and slices are the whole-model
    /// optimizer's, for both offloadable optimizers, tied or not.
    #[test]
    fn assembled_states_and_slices_are_the_whole_optimizers() {
        for opt in ["adamw", "adamw8bit"] {
            for tied in [true, false] {
                let sets: Vec<String> = [format!("optimizer.name={opt}"), format!("model.tied_embeddings={tied}"), "model.d_model=64".into(), "model.n_layers=3".into(), "model.n_heads=2".into(), "model.n_kv_heads=2".into(), "model.d_ff=128".into()].to_vec();
                let c = config::load(None, &sets).unwrap();
                let layout = ParamLayout::new(&c.model);
                let units = plan(&unit_ranges(&c.model, &layout), &c.optimizer, &layout).unwrap();
                let mut h = CpuBackend::new();
                let whole = host_optimizer(&mut h, &c.optimizer, &layout).unwrap();
                let want: Vec<TensorSpec> = whole.state_tensors().iter().map(|t| TensorSpec { name: t.name.clone(), shape: vec![t.view.len], u8s: t.dtype == DType::U8 }).collect();
                assert_eq!(full_states(&units).unwrap(), want, "{opt} tied={tied}: state tensors");
                let (got, want) = (full_slices(&units).unwrap(), whole.state_slices().unwrap());
                assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&want).unwrap(), "{opt} tied={tied}: slices");
            }
        }
    }
}
