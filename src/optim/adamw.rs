//! AdamW with PyTorch semantics (decoupled weight decay, bias correction),
//! fp32 moments: 8 bytes of state per parameter.

use super::{Optimizer, ParamGroup};
use crate::backend::{AdamWArgs, Backend, BufId, DType, View};
use crate::config::OptimizerConfig;
use anyhow::{bail, Result};

pub struct AdamW {
    cfg: OptimizerConfig,
    groups: Vec<ParamGroup>,
    m: View,
    v: View,
    /// Completed steps (bias correction uses step + 1).
    steps: u64,
}

impl AdamW {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, numel: usize, groups: Vec<ParamGroup>) -> Result<Self> {
        let m = View::whole(b.alloc(numel, DType::F32)?, numel);
        let v = View::whole(b.alloc(numel, DType::F32)?, numel);
        Ok(AdamW { cfg: cfg.clone(), groups, m, v, steps: 0 })
    }
}

impl<B: Backend> Optimizer<B> for AdamW {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        self.steps += 1;
        for g in &self.groups {
            let args = AdamWArgs { lr, beta1: self.cfg.beta1, beta2: self.cfg.beta2, eps: self.cfg.eps, weight_decay: g.weight_decay, step: self.steps, grad_scale };
            for r in &g.ranges {
                let at = |buf: BufId| View { buf, off: r.start, len: r.len() };
                let state = |v: View| v.sub(r.start, r.len());
                b.adamw(at(params), at(grads), state(self.m), state(self.v), args)?;
                b.params_changed(at(params))?;
            }
        }
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, View)> {
        vec![("adamw.m".into(), self.m), ("adamw.v".into(), self.v)]
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": "adamw", "steps": self.steps })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        if meta.get("name").and_then(|n| n.as_str()) != Some("adamw") {
            bail!("checkpoint optimizer state is not AdamW's: {meta}");
        }
        self.steps = meta.get("steps").and_then(|s| s.as_u64()).unwrap_or(0);
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        ((self.m.len + self.v.len) * 4) as u64
    }
}
