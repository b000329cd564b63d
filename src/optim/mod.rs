//! Optimizers over flat parameter ranges.
//!
//! Every optimizer sees the model as one flat parameter buffer, one flat
//! gradient buffer and a list of parameter groups (ranges of that buffer
//! with their own settings). ZeRO can later hand each rank its own ranges.
//!
//! Matrix optimizers (APOLLO, FRUGAL, Muon, COSMOS) act on the attention and
//! MLP weight matrices (`ParamKind::Matrix`, shape `[out, in]`); every other
//! tensor (embeddings, head, norms, biases) gets AdamW inside the same
//! optimizer object. All numeric work runs through backend ops; the few
//! host-side computations (random projections, QR and eigensolvers of tiny
//! matrices, per-channel ratios) are marked where they happen.

pub mod adamw;
pub mod adamw8bit;
pub mod cholesky_qr;
pub mod apollo;
pub mod cosmos;
pub mod frugal;
pub mod groups;
pub mod linalg;
pub mod lion;
pub mod muon;
pub mod newton_schulz;
pub mod onebit;
pub mod plan;
pub mod quant_bins;
pub mod quant_map;

use crate::backend::{Backend, BufId, DType, View};
use crate::config::OptimizerConfig;
use crate::dist::Comm;
use crate::model::layout::ParamLayout;
use crate::parallel::partition::Partition;
use anyhow::{bail, Result};
pub use groups::{default_groups, ParamGroup, TensorRef};
pub use plan::{plan, workspace_plan, GroupPlan, WorkspacePlan};

/// One named state tensor for checkpoints, with its storage type (`F32` or
/// `U8`). 8-bit state is saved as codes plus its fp32 absmax tensors, never
/// dequantized.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    pub name: String,
    pub view: View,
    pub dtype: DType,
}

impl StateTensor {
    pub fn f32(name: impl Into<String>, view: View) -> Self {
        StateTensor { name: name.into(), view, dtype: DType::F32 }
    }
    pub fn u8(name: impl Into<String>, view: View) -> Self {
        StateTensor { name: name.into(), view, dtype: DType::U8 }
    }
    pub fn bytes(&self) -> u64 {
        (self.view.len * self.dtype.bytes()) as u64
    }
}

/// One tensor's (or one piece's) share of a state tensor: what resharding
/// a checkpoint to another world size moves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateSlice {
    /// The state tensor's name (`StateTensor::name`).
    pub state: String,
    /// The parameter tensor's index in the full layout.
    pub tensor: usize,
    /// Elements of that tensor the slice describes.
    pub piece: std::ops::Range<usize>,
    /// Where the slice starts in the state tensor, and its length.
    pub off: usize,
    pub len: usize,
    pub per: SlicePer,
}

/// How a slice's values follow its tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SlicePer {
    /// One value per element.
    Element,
    /// One value per 256-element block counted from the tensor's start.
    Block,
    /// State of the whole tensor (matrix optimizers): moved as one.
    Whole,
}

impl StateSlice {
    /// Slices of `names` with one value per element of each `(index, piece,
    /// state offset)`.
    pub fn per_element(names: &[&str], tensors: &[(usize, std::ops::Range<usize>, usize)]) -> Vec<StateSlice> {
        names
            .iter()
            .flat_map(|n| tensors.iter().map(move |(i, p, off)| StateSlice { state: n.to_string(), tensor: *i, piece: p.clone(), off: *off, len: p.len(), per: SlicePer::Element }))
            .collect()
    }
    /// The whole state tensor `st` belongs to the whole tensor `t`.
    pub fn whole(st: &StateTensor, t: &TensorRef) -> StateSlice {
        StateSlice { state: st.name.clone(), tensor: t.index, piece: t.piece.clone(), off: 0, len: st.view.len, per: SlicePer::Whole }
    }
}

/// What an optimizer that communicates by itself (1-bit Adam) gets for a
/// step: the communicator, the model's gradients as this rank computed
/// them, and where its shard sits in the model.
pub struct DistStep<'a, B: Backend> {
    pub comm: &'a mut dyn Comm<B>,
    /// Every gradient of the model in the full layout, as summed on this
    /// rank (not reduced when [`Optimizer::local_gradients`] said so).
    /// `None`: the optimizer's own gradient buffer is the whole model
    /// (one process), or the store keeps no full gradients (ZeRO 2–3).
    pub local_grads: Option<View>,
    /// `None`: the optimizer's layout is the whole model (ZeRO stage 0);
    /// else the partition whose rank-`comm.rank()` shard it updates.
    pub shard: Option<&'a Partition>,
}

pub trait Optimizer<B: Backend> {
    fn name(&self) -> &'static str;
    /// One update of `params` from `grads` (multiplied by `grad_scale`, the
    /// clipping factor) at learning rate `lr` (`optimizer.lr` after the
    /// schedule; `optimizer.adamw_lr` follows the same schedule).
    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()>;
    /// True when the NEXT step wants each rank's own gradients, not their
    /// sum: the store skips its gradient reduction and the optimizer
    /// averages what it needs in [`Optimizer::step_dist`] (1-bit Adam
    /// after its freeze step).
    fn local_gradients(&self) -> bool {
        false
    }
    /// [`Optimizer::step`] with the communicator at hand; optimizers that
    /// do not communicate ignore it.
    fn step_dist(&mut self, b: &mut B, dist: DistStep<'_, B>, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        let _ = dist;
        self.step(b, params, grads, lr, grad_scale)
    }
    /// Named state tensors, saved in and restored from checkpoints. State
    /// that is regenerated from the seed (APOLLO's projections) is not
    /// listed.
    fn state_tensors(&self) -> Vec<StateTensor>;
    /// Scalar state (step counts, limiter norms) for the checkpoint
    /// manifest. Together with `state_tensors` it makes resume exact.
    fn meta(&self) -> serde_json::Value;
    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()>;
    /// Bytes of optimizer state held on the device (including regenerated
    /// state such as projection matrices); equals [`plan`]'s total.
    fn state_bytes(&self) -> u64;
    /// Which part of each state tensor belongs to which tensor (or piece):
    /// with it a checkpoint's state moves to another partition (ZeRO at
    /// another world size). `None`: this optimizer's state cannot be cut
    /// by tensor (FRUGAL's shared subspace).
    fn state_slices(&self) -> Option<Vec<StateSlice>> {
        None
    }
    /// Bytes of scratch buffers the optimizer keeps between steps (not
    /// state: never saved, contents dead between steps).
    fn workspace_bytes(&self) -> u64 {
        0
    }
}

/// Builds the optimizer named in the config. `seed` seeds random
/// projections and subset choices (reproducible across resume).
pub fn build<B: Backend + 'static>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout, seed: u64) -> Result<Box<dyn Optimizer<B>>> {
    Ok(match cfg.name.as_str() {
        "adamw" => Box::new(adamw::AdamW::new(b, cfg, layout)?),
        "adamw8bit" => Box::new(adamw8bit::AdamW8bit::new(b, cfg, layout)?),
        "lion" => Box::new(lion::Lion::new(b, cfg, layout)?),
        "apollo" => Box::new(apollo::Apollo::new(b, cfg, layout, seed, false)?),
        "apollo_mini" => Box::new(apollo::Apollo::new(b, cfg, layout, seed, true)?),
        "frugal" => Box::new(frugal::Frugal::new(b, cfg, layout, seed)?),
        "muon" => Box::new(muon::Muon::new(b, cfg, layout)?),
        "cosmos" => Box::new(cosmos::Cosmos::new(b, cfg, layout, seed)?),
        onebit::NAME => Box::new(onebit::OneBitAdam::new(b, cfg, layout)?),
        other => bail!("optimizer `{other}` is not available; use one of {}", crate::config::OPTIMIZERS.join(", ")),
    })
}

/// Learning rate of the AdamW-handled tensors inside a matrix optimizer:
/// `optimizer.adamw_lr` scaled by the same schedule factor as `lr`
/// (`adamw_lr = 0` means "same as lr"). With `optimizer.lr = 0` every
/// rate is 0 (no-op steps).
pub fn adamw_lr(cfg: &OptimizerConfig, lr: f32) -> f32 {
    if cfg.lr == 0.0 {
        0.0
    } else if cfg.adamw_lr > 0.0 {
        (lr as f64 * cfg.adamw_lr as f64 / cfg.lr as f64) as f32
    } else {
        lr
    }
}

/// Steps counter from a manifest written by [`Optimizer::meta`], checking
/// the optimizer name so a checkpoint of another optimizer is refused.
pub fn meta_steps(meta: &serde_json::Value, name: &str) -> Result<u64> {
    if meta.get("name").and_then(|n| n.as_str()) != Some(name) {
        bail!("checkpoint optimizer state is not {name}'s: {meta}");
    }
    Ok(meta.get("steps").and_then(|s| s.as_u64()).unwrap_or(0))
}
