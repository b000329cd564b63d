//! What each optimizer will allocate, computed from the layout alone (no
//! backend): which tensors get which update rule and how many bytes of
//! state each group holds. `ferrotron info` prints it; a test checks it
//! against the bytes the CPU backend actually allocates.

use super::{adamw, adamw8bit, apollo, cosmos, frugal, lion, muon};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use anyhow::{bail, Result};

/// One group of tensors sharing an update rule and weight decay.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupPlan {
    /// Group name (`matrices`, `decay`, `no_decay`, …).
    pub group: String,
    /// Update rule applied to it (`muon`, `adamw`, `adamw8bit`, …).
    pub rule: String,
    pub weight_decay: f32,
    pub tensors: Vec<String>,
    pub params: usize,
    /// Exact bytes of optimizer state for this group.
    pub state_bytes: u64,
}

impl GroupPlan {
    pub fn bytes_per_param(&self) -> f64 {
        if self.params == 0 { 0.0 } else { self.state_bytes as f64 / self.params as f64 }
    }
}

/// Scratch memory an optimizer allocates besides its state (sized by the
/// largest matrix; not saved in checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkspacePlan {
    /// fp32 scratch buffers, all included.
    pub fp32_bytes: u64,
    /// Of those, the Newton–Schulz buffers: a GPU backend also keeps a bf16
    /// copy of them (operands of its bf16 matmuls), half their size again.
    pub newton_schulz_bytes: u64,
}

impl WorkspacePlan {
    /// Bytes on `device` (`cpu` or `cuda`).
    pub fn bytes_on(&self, device: &str) -> u64 {
        self.fp32_bytes + if device == "cuda" { self.newton_schulz_bytes / 2 } else { 0 }
    }
}

/// The workspace the configured optimizer allocates.
pub fn workspace_plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> WorkspacePlan {
    match cfg.name.as_str() {
        "apollo" | "apollo_mini" => apollo::workspace_plan(cfg, layout),
        "muon" => muon::workspace_plan(cfg, layout),
        "cosmos" => cosmos::workspace_plan(cfg, layout),
        _ => WorkspacePlan::default(),
    }
}

/// The plan of the configured optimizer; an error for settings that do not
/// fit the model (e.g. a projection rank above a matrix's smaller side).
pub fn plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Vec<GroupPlan>> {
    Ok(match cfg.name.as_str() {
        "adamw" => adamw::plan(cfg, layout),
        "adamw8bit" => adamw8bit::plan(cfg, layout),
        "lion" => lion::plan(cfg, layout),
        "apollo" => apollo::plan(cfg, layout, false)?,
        "apollo_mini" => apollo::plan(cfg, layout, true)?,
        "frugal" => frugal::plan(cfg, layout)?,
        "muon" => muon::plan(cfg, layout),
        "cosmos" => cosmos::plan(cfg, layout)?,
        // m and v; the error buffers come at the freeze step (see onebit.rs).
        super::onebit::NAME => adamw::plan(cfg, layout),
        other => bail!("optimizer `{other}` is not available; use one of {}", crate::config::OPTIMIZERS.join(", ")),
    })
}

/// Plan rows of a matrix optimizer's matrix groups: `bytes(t)` of state per
/// tensor, summed per group.
pub fn matrix_rows(m: &super::groups::Matrices, rule: &str, bytes: impl Fn(&super::TensorRef) -> u64) -> Vec<GroupPlan> {
    m.groups.iter().map(|g| row(g, rule, g.tensors.iter().map(&bytes).sum())).collect()
}

/// A plan row for `group` under `rule` with `state_bytes`.
pub fn row(group: &super::ParamGroup, rule: &str, state_bytes: u64) -> GroupPlan {
    GroupPlan {
        group: group.name.clone(),
        rule: rule.into(),
        weight_decay: group.weight_decay,
        tensors: group.tensors.iter().map(|t| t.name.clone()).collect(),
        params: group.numel(),
        state_bytes,
    }
}
