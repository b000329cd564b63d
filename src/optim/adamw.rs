//! AdamW with PyTorch semantics (decoupled weight decay, bias correction),
//! fp32 moments: 8 bytes of state per parameter.
//!
//! [`AdamWPart`] is AdamW over any set of groups with compact state; the
//! matrix optimizers use it for everything that is not a matrix.

use super::plan::{row, GroupPlan};
use super::{default_groups, meta_steps, Optimizer, ParamGroup, StateSlice, StateTensor, TensorRef};
use crate::backend::{AdamSegment, AdamWArgs, Backend, BufId, DType, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use anyhow::Result;
use std::collections::HashMap;
use std::ops::Range;

/// fp32 m and v.
pub const BYTES_PER_PARAM: u64 = 8;

/// Hyper-parameters of one AdamW update of a part.
#[derive(Clone, Copy, Debug)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1-based.
    pub step: u64,
    pub grad_scale: f32,
}

impl AdamHyper {
    pub fn from_cfg(cfg: &OptimizerConfig, lr: f32, step: u64, grad_scale: f32) -> Self {
        AdamHyper { lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, step, grad_scale }
    }
    fn args(&self, weight_decay: f32) -> AdamWArgs {
        AdamWArgs { lr: self.lr, beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay, step: self.step, grad_scale: self.grad_scale }
    }
}

/// (parameter range, offset in the compact state) pairs.
type Ranges = Vec<(Range<usize>, usize)>;

/// AdamW over some groups. The state is compact: the groups' tensors are
/// laid out in layout order, so for all tensors of a model the state has
/// exactly the parameter layout.
pub struct AdamWPart {
    /// Every group's merged ranges, each with its weight decay, in layout
    /// order: one `adamw_segments` call per step.
    segments: Vec<AdamSegment>,
    /// (tensor index, piece, state offset) of every tensor, for resharding.
    index: Vec<(usize, Range<usize>, usize)>,
    pub m: View,
    pub v: View,
}

impl AdamWPart {
    pub fn new<B: Backend>(b: &mut B, groups: &[ParamGroup]) -> Result<Self> {
        let mut tensors: Vec<&TensorRef> = groups.iter().flat_map(|g| &g.tensors).collect();
        tensors.sort_by_key(|t| t.offset);
        let mut state_off = HashMap::new();
        let mut index = vec![];
        let mut next = 0;
        for t in tensors {
            state_off.insert(t.offset, next);
            index.push((t.index, t.piece.clone(), next));
            next += t.numel();
        }
        let mut segments: Vec<AdamSegment> = groups
            .iter()
            .flat_map(|g| merged(g, &state_off).into_iter().map(|(r, s)| AdamSegment { param_off: r.start, state_off: s, len: r.len(), weight_decay: g.weight_decay }))
            .collect();
        segments.sort_by_key(|s| s.param_off);
        let m = View::whole(b.alloc(next, DType::F32)?, next);
        let v = View::whole(b.alloc(next, DType::F32)?, next);
        Ok(AdamWPart { segments, index, m, v })
    }

    pub fn step<B: Backend>(&self, b: &mut B, params: BufId, grads: BufId, h: &AdamHyper) -> Result<()> {
        b.adamw_segments(params, grads, self.m, self.v, &self.segments, h.args(0.0))?;
        for s in &self.segments {
            b.params_changed(View { buf: params, off: s.param_off, len: s.len })?;
        }
        Ok(())
    }

    /// The merged parameter runs, each with its state offset and decay.
    pub fn segments(&self) -> &[AdamSegment] {
        &self.segments
    }

    pub fn state_tensors(&self) -> Vec<StateTensor> {
        vec![StateTensor::f32("adamw.m", self.m), StateTensor::f32("adamw.v", self.v)]
    }

    pub fn bytes(&self) -> u64 {
        ((self.m.len + self.v.len) * 4) as u64
    }

    pub fn state_slices(&self) -> Vec<StateSlice> {
        StateSlice::per_element(&["adamw.m", "adamw.v"], &self.index)
    }
}

/// (parameter range, state offset) of a group's tensors, merging neighbours
/// that are contiguous in both (fewer op calls, same arithmetic).
fn merged(g: &ParamGroup, state_off: &HashMap<usize, usize>) -> Ranges {
    let mut out: Ranges = vec![];
    for t in &g.tensors {
        let s = state_off[&t.offset];
        match out.last_mut() {
            Some((r, s0)) if r.end == t.offset && *s0 + r.len() == s => r.end = t.range().end,
            _ => out.push((t.range(), s)),
        }
    }
    out
}

/// Plan rows for groups handled by AdamW.
pub fn plan_groups(groups: &[ParamGroup]) -> Vec<GroupPlan> {
    groups.iter().map(|g| row(g, "adamw", BYTES_PER_PARAM * g.numel() as u64)).collect()
}

pub fn plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> Vec<GroupPlan> {
    plan_groups(&default_groups(layout, cfg))
}

pub struct AdamW {
    cfg: OptimizerConfig,
    part: AdamWPart,
    /// Completed steps (bias correction uses step + 1).
    steps: u64,
}

impl AdamW {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Self> {
        let part = AdamWPart::new(b, &default_groups(layout, cfg))?;
        Ok(AdamW { cfg: cfg.clone(), part, steps: 0 })
    }
}

impl<B: Backend> Optimizer<B> for AdamW {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        self.steps += 1;
        self.part.step(b, params, grads, &AdamHyper::from_cfg(&self.cfg, lr, self.steps, grad_scale))
    }

    fn state_tensors(&self) -> Vec<StateTensor> {
        self.part.state_tensors()
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": "adamw", "steps": self.steps })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        self.steps = meta_steps(meta, "adamw")?;
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        self.part.bytes()
    }

    fn state_slices(&self) -> Option<Vec<StateSlice>> {
        Some(self.part.state_slices())
    }
}
