//! FRUGAL (Zmushko et al. 2024, "FRUGAL: Memory-Efficient Optimization by
//! Reducing State Overhead for Scalable Training"), blockwise variant.
//!
//! The attention/MLP matrices are split every `update_every` steps into a
//! state-full subset (AdamW, fresh zero state and a restarted bias
//! correction after each re-choice) and a state-free rest (signSGD:
//! p -= lr·scale·sign(g)). Everything else uses AdamW throughout.
//!
//! The subset is drawn from (seed, refresh index): a seeded shuffle of the
//! matrices, taken greedily while their sizes fit a budget of
//! `rho · (all matrix parameters)` (at least the largest matrix, so one
//! always fits). The budget is allocated once as the state pool, so memory
//! is exactly 8 bytes × pool size ≈ 2 B per matrix parameter at rho = 0.25
//! and never changes between refreshes. Resume recomputes the subset from
//! the seed; the pool itself is checkpointed.

use super::adamw::{plan_groups, AdamHyper, AdamWPart};
use super::groups::matrix_split;
use super::plan::{row, GroupPlan};
use super::{adamw_lr, meta_steps, Optimizer, StateTensor, TensorRef};
use crate::backend::{AdamWArgs, Backend, BufId, DType, SignArgs, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use crate::util::rng::{mix, Rng};
use anyhow::{ensure, Result};

fn check(cfg: &OptimizerConfig) -> Result<()> {
    ensure!(cfg.rho > 0.0 && cfg.rho <= 1.0, "optimizer.rho must be in (0, 1] (fraction of matrix parameters with AdamW state), got {}", cfg.rho);
    ensure!(cfg.update_every >= 1, "optimizer.update_every must be at least 1 (steps between subset re-choices)");
    ensure!(cfg.scale > 0.0 && cfg.scale.is_finite(), "optimizer.scale (state-free learning-rate factor) must be positive, got {}", cfg.scale);
    Ok(())
}

/// Elements of the state-full pool (per moment).
pub fn pool_len(rho: f32, matrices: &[TensorRef]) -> usize {
    let total: usize = matrices.iter().map(|t| t.numel()).sum();
    let largest = matrices.iter().map(|t| t.numel()).max().unwrap_or(0);
    ((rho as f64 * total as f64).floor() as usize).max(largest)
}

/// Indices (into `matrices`) of the state-full subset for refresh `k`, in
/// layout order.
pub fn choose(seed: u64, k: u64, matrices: &[TensorRef], budget: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..matrices.len()).collect();
    Rng::new(mix(seed ^ 0x4652_5547, k)).shuffle(&mut order);
    let mut used = 0;
    let mut chosen: Vec<usize> = order
        .into_iter()
        .filter(|&i| {
            let fits = used + matrices[i].numel() <= budget;
            if fits {
                used += matrices[i].numel();
            }
            fits
        })
        .collect();
    chosen.sort_unstable();
    chosen
}

pub fn plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Vec<GroupPlan>> {
    check(cfg)?;
    let (matrices, rest) = matrix_split(layout, cfg);
    let pool = pool_len(cfg.rho, &matrices.tensors);
    let rule = format!("frugal (AdamW on rho = {} of them, signSGD on the rest, re-chosen every {} steps)", cfg.rho, cfg.update_every);
    let mut rows = vec![row(&matrices.combined(), &rule, 8 * pool as u64)];
    rows.extend(plan_groups(&rest));
    rows.retain(|r| r.params > 0);
    Ok(rows)
}

pub struct Frugal {
    cfg: OptimizerConfig,
    seed: u64,
    matrices: Vec<TensorRef>,
    m: View,
    v: View,
    adam: AdamWPart,
    steps: u64,
    /// The current subset and each member's pool offset.
    chosen: Vec<(usize, usize)>,
    chosen_for: Option<u64>,
}

impl Frugal {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout, seed: u64) -> Result<Self> {
        check(cfg)?;
        let (matrices, rest) = matrix_split(layout, cfg);
        let pool = pool_len(cfg.rho, &matrices.tensors);
        let m = View::whole(b.alloc(pool, DType::F32)?, pool);
        let v = View::whole(b.alloc(pool, DType::F32)?, pool);
        let adam = AdamWPart::new(b, &rest)?;
        Ok(Frugal { cfg: cfg.clone(), seed, matrices: matrices.tensors, m, v, adam, steps: 0, chosen: vec![], chosen_for: None })
    }

    /// The state-full matrices (layout names) for the current period.
    pub fn state_full(&self) -> Vec<String> {
        self.chosen.iter().map(|&(i, _)| self.matrices[i].name.clone()).collect()
    }

    /// Lay the subset of refresh `k` out in the pool.
    fn select(&mut self, k: u64) {
        let idx = choose(self.seed, k, &self.matrices, self.m.len);
        let mut off = 0;
        self.chosen = idx.into_iter().map(|i| { let at = off; off += self.matrices[i].numel(); (i, at) }).collect();
        self.chosen_for = Some(k);
    }
}

impl<B: Backend> Optimizer<B> for Frugal {
    fn name(&self) -> &'static str {
        "frugal"
    }

    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        let period = self.cfg.update_every;
        let k = self.steps / period;
        if self.chosen_for != Some(k) {
            self.select(k);
            // A new subset starts from zero state (reset), exactly at the
            // period boundary; on resume mid-period the pool is restored.
            if self.steps.is_multiple_of(period) {
                b.fill(self.m, 0.0)?;
                b.fill(self.v, 0.0)?;
            }
        }
        // Bias correction restarts with the state.
        let local_step = self.steps % period + 1;
        self.steps += 1;
        let c = &self.cfg;
        let mut full = vec![None; self.matrices.len()];
        self.chosen.iter().for_each(|&(i, off)| full[i] = Some(off));
        for (t, off) in self.matrices.iter().zip(full) {
            let (p, g) = (t.view(params), t.view(grads));
            match off {
                Some(o) => {
                    let args = AdamWArgs { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: t.weight_decay, step: local_step, grad_scale };
                    b.adamw(p, g, self.m.sub(o, t.numel()), self.v.sub(o, t.numel()), args)?;
                }
                None => b.sign_descent(p, g, SignArgs { lr: lr * c.scale, weight_decay: t.weight_decay, grad_scale })?,
            }
            b.params_changed(p)?;
        }
        let h = AdamHyper::from_cfg(c, adamw_lr(c, lr), self.steps, grad_scale);
        self.adam.step(b, params, grads, &h)
    }

    fn state_tensors(&self) -> Vec<StateTensor> {
        let mut out = vec![StateTensor::f32("frugal.m", self.m), StateTensor::f32("frugal.v", self.v)];
        out.extend(self.adam.state_tensors());
        out
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": "frugal", "steps": self.steps })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        self.steps = meta_steps(meta, "frugal")?;
        self.chosen_for = None;
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        4 * (self.m.len + self.v.len) as u64 + self.adam.bytes()
    }
}
