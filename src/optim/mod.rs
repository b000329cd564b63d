//! Optimizers over flat parameter ranges.
//!
//! Every optimizer sees the model as one flat parameter buffer, one flat
//! gradient buffer and a list of parameter groups (ranges of that buffer
//! with their own settings). ZeRO can later hand each rank its own ranges.

pub mod adamw;
pub mod groups;

use crate::backend::{Backend, BufId, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use anyhow::{bail, Result};
pub use groups::{default_groups, ParamGroup};

pub trait Optimizer<B: Backend> {
    fn name(&self) -> &'static str;
    /// One update of `params` from `grads` (multiplied by `grad_scale`, the
    /// clipping factor) at learning rate `lr`.
    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()>;
    /// Named fp32 state tensors, saved in and restored from checkpoints.
    fn state_tensors(&self) -> Vec<(String, View)>;
    /// Scalar state (step counts, seeds) for the checkpoint manifest.
    fn meta(&self) -> serde_json::Value;
    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()>;
    /// Bytes of optimizer state held on the device.
    fn state_bytes(&self) -> u64;
}

/// Builds the optimizer named in the config.
pub fn build<B: Backend + 'static>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Box<dyn Optimizer<B>>> {
    let groups = default_groups(layout, cfg.weight_decay);
    match cfg.name.as_str() {
        "adamw" => Ok(Box::new(adamw::AdamW::new(b, cfg, layout.total, groups)?)),
        other => bail!("optimizer `{other}` is not available; use adamw"),
    }
}
