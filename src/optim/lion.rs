//! Lion (Chen et al. 2023): sign of an interpolated momentum, one fp32
//! moment (4 B/param). Applies to every tensor, decoupled weight decay
//! except on norms and biases. Paper defaults: betas (0.9, 0.99), a learning
//! rate 3–10× smaller and weight decay 3–10× larger than AdamW's.

use super::plan::{row, GroupPlan};
use super::{default_groups, meta_steps, Optimizer, ParamGroup, StateSlice, StateTensor};
use crate::backend::{Backend, BufId, DType, LionArgs, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use anyhow::Result;

pub const BYTES_PER_PARAM: u64 = 4;

pub fn plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> Vec<GroupPlan> {
    default_groups(layout, cfg).iter().map(|g| row(g, "lion", BYTES_PER_PARAM * g.numel() as u64)).collect()
}

pub struct Lion {
    cfg: OptimizerConfig,
    groups: Vec<ParamGroup>,
    /// Momentum with the parameter layout (state offset = parameter offset).
    m: View,
    steps: u64,
}

impl Lion {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Self> {
        let m = View::whole(b.alloc(layout.total, DType::F32)?, layout.total);
        Ok(Lion { cfg: cfg.clone(), groups: default_groups(layout, cfg), m, steps: 0 })
    }
}

impl<B: Backend> Optimizer<B> for Lion {
    fn name(&self) -> &'static str {
        "lion"
    }

    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        self.steps += 1;
        for g in &self.groups {
            let args = LionArgs { lr, beta1: self.cfg.beta1, beta2: self.cfg.beta2, weight_decay: g.weight_decay, grad_scale };
            for r in &g.ranges {
                let at = |buf: BufId| View { buf, off: r.start, len: r.len() };
                b.lion(at(params), at(grads), self.m.sub(r.start, r.len()), args)?;
                b.params_changed(at(params))?;
            }
        }
        Ok(())
    }

    fn state_tensors(&self) -> Vec<StateTensor> {
        vec![StateTensor::f32("lion.m", self.m)]
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": "lion", "steps": self.steps })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        self.steps = meta_steps(meta, "lion")?;
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        (self.m.len * 4) as u64
    }

    fn state_slices(&self) -> Option<Vec<StateSlice>> {
        let tensors: Vec<_> = self.groups.iter().flat_map(|g| g.tensors.iter().map(|t| (t.index, t.piece.clone(), t.offset))).collect();
        Some(StateSlice::per_element(&["lion.m"], &tensors))
    }
}
