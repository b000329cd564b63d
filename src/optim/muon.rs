//! Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers"):
//! SGD momentum with Nesterov, whose update is orthogonalized by 5
//! Newton–Schulz iterations, for the attention/MLP weight matrices only;
//! every other tensor uses AdamW at `optimizer.adamw_lr`.
//!
//! Per matrix G `[rows, cols]`:
//!   buf = μ·buf + (1-μ)·g;  u = (1-μ)·g + μ·buf          (Nesterov)
//!   O = NewtonSchulz5(u / ||u||_F)
//!   p *= 1 - lr·wd;  p -= lr · sqrt(max(1, rows/cols)) · O
//! State: the momentum buffer, 4 B per matrix parameter.

use super::adamw::{plan_groups, AdamHyper, AdamWPart};
use super::groups::matrix_split;
use super::newton_schulz::{NsWorkspace, STEPS};
use super::plan::{matrix_rows, GroupPlan, WorkspacePlan};
use super::{adamw_lr, meta_steps, Optimizer, StateSlice, StateTensor, TensorRef};
use crate::backend::{Backend, BufId, DType, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use anyhow::Result;

/// Scratch bytes (fp32) the optimizer will allocate: the Newton–Schulz
/// buffers for the largest matrix.
pub fn workspace_plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> WorkspacePlan {
    let (matrices, _) = matrix_split(layout, cfg);
    let (numel, side) = NsWorkspace::sizes_for(&matrices.tensors);
    let ns = NsWorkspace::bytes_for(numel, side);
    WorkspacePlan { fp32_bytes: ns, newton_schulz_bytes: ns }
}

pub fn plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> Vec<GroupPlan> {
    let (matrices, rest) = matrix_split(layout, cfg);
    let mut rows = matrix_rows(&matrices, "muon", |t| 4 * t.numel() as u64);
    rows.extend(plan_groups(&rest));
    rows.retain(|r| r.params > 0);
    rows
}

/// Update scale that keeps the RMS of the update comparable across shapes.
pub fn shape_scale(rows: usize, cols: usize) -> f32 {
    (rows as f32 / cols as f32).max(1.0).sqrt()
}

pub struct Muon {
    cfg: OptimizerConfig,
    matrices: Vec<TensorRef>,
    /// Momentum buffers, compact in layout order; `offs[i]` per matrix.
    buf: View,
    offs: Vec<usize>,
    adam: AdamWPart,
    ns: NsWorkspace,
    steps: u64,
}

impl Muon {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Self> {
        let (matrices, rest) = matrix_split(layout, cfg);
        let offs: Vec<usize> = matrices.tensors.iter().scan(0, |o, t| { let at = *o; *o += t.numel(); Some(at) }).collect();
        let total = matrices.numel();
        let buf = View::whole(b.alloc(total, DType::F32)?, total);
        let (max_numel, max_side) = NsWorkspace::sizes_for(&matrices.tensors);
        let ns = NsWorkspace::new(b, max_numel, max_side)?;
        let adam = AdamWPart::new(b, &rest)?;
        Ok(Muon { cfg: cfg.clone(), matrices: matrices.tensors, buf, offs, adam, ns, steps: 0 })
    }

    #[allow(clippy::too_many_arguments)]
    fn step_matrix<B: Backend>(&self, b: &mut B, t: &TensorRef, off: usize, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        let (n, mu) = (t.numel(), self.cfg.momentum);
        let (g, p, m) = (t.view(grads), t.view(params), self.buf.sub(off, n));
        let u = self.ns.input(n);
        let sum_squares = b.muon_momentum(m, u, g, mu, grad_scale)?;
        let o = self.ns.run_with_sum_squares(b, t.rows(), t.cols(), STEPS, sum_squares)?;
        b.axpby(p, o, -lr * shape_scale(t.rows(), t.cols()), 1.0 - lr * t.weight_decay)?;
        b.params_changed(p)
    }
}

impl<B: Backend> Optimizer<B> for Muon {
    fn name(&self) -> &'static str {
        "muon"
    }

    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        self.steps += 1;
        for (t, &off) in self.matrices.iter().zip(&self.offs) {
            self.step_matrix(b, t, off, params, grads, lr, grad_scale)?;
        }
        let h = AdamHyper::from_cfg(&self.cfg, adamw_lr(&self.cfg, lr), self.steps, grad_scale);
        self.adam.step(b, params, grads, &h)
    }

    fn state_slices(&self) -> Option<Vec<StateSlice>> {
        let tensors: Vec<_> = self.matrices.iter().zip(&self.offs).map(|(t, &off)| (t.index, t.piece.clone(), off)).collect();
        let mut out = StateSlice::per_element(&["muon.momentum"], &tensors);
        out.extend(self.adam.state_slices());
        Some(out)
    }

    fn state_tensors(&self) -> Vec<StateTensor> {
        let mut out = vec![StateTensor::f32("muon.momentum", self.buf)];
        out.extend(self.adam.state_tensors());
        out
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": "muon", "steps": self.steps })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        self.steps = meta_steps(meta, "muon")?;
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        4 * self.buf.len as u64 + self.adam.bytes()
    }

    fn workspace_bytes(&self) -> u64 {
        self.ns.bytes()
    }
}
