//! APOLLO and APOLLO-Mini (Zhu et al. 2024, "APOLLO: SGD-like Memory,
//! AdamW-level Performance"), following the reference `apollo_torch`.
//!
//! Per attention/MLP matrix G `[rows, cols]` (other tensors: AdamW):
//! - a Gaussian projection P with variance 1/r on the smaller side
//!   (`rows >= cols`: P `[r, cols]`, R = G·Pᵀ `[rows, r]`; else P
//!   `[rows, r]`, R = Pᵀ·G `[r, cols]`), redrawn every `update_every` steps
//!   from (seed, tensor index, refresh index) — regenerated, never saved,
//!   so resume reproduces it exactly;
//! - Adam moments on R: m, v (`bias_correction` folded into the step size as
//!   in the reference: N = m/(sqrt(v)+eps), step = lr·sqrt(1-b2^t)/(1-b1^t));
//! - scaling s = ||N|| / (||R|| + 1e-8), per channel (APOLLO: along the
//!   larger side of R) or for the whole tensor (Mini);
//! - G~ = G·s·sqrt(scale) (Mini: scale 128, applied before the limiter);
//! - norm-growth limiter (Fira): if ||G~|| > 1.01·previous, rescale to
//!   1.01·previous; the previous norm is kept per tensor;
//! - p = (p - step·G~)·(1 - lr·wd) (decay after the update, as the reference).
//!
//! r = `optimizer.rank` capped at the matrix's smaller side ([`rank_for`]).
//! State per matrix: m, v (r·max side each) and P (r·min side), exactly
//! 4·(2·r·max + r·min) bytes. Host work: drawing P (every `update_every`
//! steps) and the per-channel ratio of two norm vectors (max side values).

use super::adamw::{plan_groups, AdamHyper, AdamWPart};
use super::groups::matrix_split;
use super::plan::{matrix_rows, GroupPlan, WorkspacePlan};
use super::{adamw_lr, Optimizer, StateSlice, StateTensor, TensorRef};
use crate::backend::{Backend, BufId, DType, PrecondArgs, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use crate::util::rng::{mix, Rng};
use anyhow::{ensure, Result};

/// Added to denominators of the scaling ratio and the limiter (reference).
const TINY: f64 = 1e-8;
/// Norm-growth limit per step.
const GROWTH: f64 = 1.01;

fn rule(cfg: &OptimizerConfig, mini: bool) -> String {
    let kind = if mini { "tensor" } else { "channel" };
    format!("{} (rank {} capped at the smaller side, {kind} scale ×{})", if mini { "apollo_mini" } else { "apollo" }, cfg.rank, cfg.scale)
}

/// Rank used for a matrix: the configured rank capped at its smaller side
/// (as COSMOS caps its basis), so a small model runs with the default 256.
pub fn rank_for(cfg: &OptimizerConfig, t: &TensorRef) -> usize {
    cfg.rank.min(t.rows().min(t.cols()))
}

/// State elements of one matrix: m and v on R plus P.
fn state_elems(t: &TensorRef, r: usize) -> usize {
    let (hi, lo) = (t.rows().max(t.cols()), t.rows().min(t.cols()));
    2 * r * hi + r * lo
}

fn check(cfg: &OptimizerConfig) -> Result<()> {
    ensure!(cfg.rank >= 1, "optimizer.rank must be at least 1 for APOLLO");
    ensure!(cfg.update_every >= 1, "optimizer.update_every must be at least 1 (steps between projection refreshes)");
    ensure!(cfg.scale > 0.0 && cfg.scale.is_finite(), "optimizer.scale must be a positive number, got {}", cfg.scale);
    Ok(())
}

/// Element counts of the workspace buffers (R, N, G~, two norm vectors,
/// the scaling vector), sized for the largest matrix.
fn workspace_lens(cfg: &OptimizerConfig, matrices: &[TensorRef]) -> [usize; 6] {
    let max_hi = matrices.iter().map(|t| t.rows().max(t.cols())).max().unwrap_or(0);
    let max_r = matrices.iter().map(|t| rank_for(cfg, t) * t.rows().max(t.cols())).max().unwrap_or(0);
    let max_numel = matrices.iter().map(|t| t.numel()).max().unwrap_or(0);
    [max_r, max_r, max_numel, max_hi, max_hi, max_hi]
}

/// Scratch bytes the optimizer will allocate.
pub fn workspace_plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> WorkspacePlan {
    let (matrices, _) = matrix_split(layout, cfg);
    let elems: usize = workspace_lens(cfg, &matrices.tensors).iter().sum();
    WorkspacePlan { fp32_bytes: 4 * elems as u64, newton_schulz_bytes: 0 }
}

pub fn plan(cfg: &OptimizerConfig, layout: &ParamLayout, mini: bool) -> Result<Vec<GroupPlan>> {
    let (matrices, rest) = matrix_split(layout, cfg);
    check(cfg)?;
    let mut rows = matrix_rows(&matrices, &rule(cfg, mini), |t| 4 * state_elems(t, rank_for(cfg, t)) as u64);
    rows.extend(plan_groups(&rest));
    rows.retain(|r| r.params > 0);
    Ok(rows)
}

/// One projected matrix and its state.
struct Mat {
    t: TensorRef,
    /// `rows >= cols`: project from the right (R = G·Pᵀ).
    right: bool,
    /// Projection rank of this matrix ([`rank_for`]).
    r: usize,
    m: View,
    v: View,
    p: View,
}

impl Mat {
    /// Shape of R.
    fn r_shape(&self) -> (usize, usize) {
        if self.right { (self.t.rows(), self.r) } else { (self.r, self.t.cols()) }
    }
}

/// Scratch: R, N, G~, two norm vectors and the scaling vector.
struct Workspace {
    r: View,
    n: View,
    gt: View,
    n1: View,
    n2: View,
    s: View,
}

pub struct Apollo {
    cfg: OptimizerConfig,
    mini: bool,
    seed: u64,
    mats: Vec<Mat>,
    adam: AdamWPart,
    ws: Workspace,
    steps: u64,
    /// Refresh index the resident projections were drawn for (None after a
    /// resume: they are redrawn on the next step).
    proj_for: Option<u64>,
    /// Limiter memory: ||G~|| of the previous step, per matrix.
    prev_norm: Vec<Option<f64>>,
}

fn alloc<B: Backend>(b: &mut B, len: usize) -> Result<View> {
    Ok(View::whole(b.alloc(len, DType::F32)?, len))
}

impl Apollo {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout, seed: u64, mini: bool) -> Result<Self> {
        let (matrices, rest) = matrix_split(layout, cfg);
        check(cfg)?;
        let mut mats = vec![];
        for t in &matrices.tensors {
            let (hi, lo, r) = (t.rows().max(t.cols()), t.rows().min(t.cols()), rank_for(cfg, t));
            let (m, v, p) = (alloc(b, r * hi)?, alloc(b, r * hi)?, alloc(b, r * lo)?);
            mats.push(Mat { t: t.clone(), right: t.rows() >= t.cols(), r, m, v, p });
        }
        let [rl, nl, gl, n1, n2, sl] = workspace_lens(cfg, &matrices.tensors);
        let ws = Workspace { r: alloc(b, rl)?, n: alloc(b, nl)?, gt: alloc(b, gl)?, n1: alloc(b, n1)?, n2: alloc(b, n2)?, s: alloc(b, sl)? };
        let adam = AdamWPart::new(b, &rest)?;
        let prev_norm = vec![None; mats.len()];
        Ok(Apollo { cfg: cfg.clone(), mini, seed, mats, adam, ws, steps: 0, proj_for: None, prev_norm })
    }

    fn name_str(&self) -> &'static str {
        if self.mini { "apollo_mini" } else { "apollo" }
    }

    /// Draw every projection for refresh `k` on the host and upload it.
    fn draw_projections<B: Backend>(&self, b: &mut B, k: u64) -> Result<()> {
        for mat in &self.mats {
            let std = (1.0 / mat.r as f64).sqrt() as f32;
            let mut host = vec![0f32; mat.p.len];
            Rng::new(mix(mix(self.seed, mat.t.index as u64), k)).fill_normal(&mut host, std);
            b.upload(mat.p, &host)?;
        }
        Ok(())
    }

    /// R = projected (clipped) gradient.
    fn project<B: Backend>(&self, b: &mut B, mat: &Mat, g: View, rv: View, gs: f32) -> Result<()> {
        let (rows, cols, r) = (mat.t.rows(), mat.t.cols(), mat.r);
        if mat.right {
            b.gemm(rv, g, mat.p, rows, cols, r, false, true, gs, 0.0)
        } else {
            b.gemm(rv, mat.p, g, r, rows, cols, true, false, gs, 0.0)
        }
    }

    /// G~ = G·s (unscaled by grad_scale and sqrt(scale) yet); returns the
    /// tensor-wise factor still to apply (1 for channel scaling).
    fn scale_gradient<B: Backend>(&self, b: &mut B, mat: &Mat, g: View, gt: View, rv: View, nv: View) -> Result<f64> {
        b.copy(gt, g)?;
        if self.mini {
            let num = b.sum_squares(nv)?.sqrt();
            let den = b.sum_squares(rv)?.sqrt();
            return Ok(num / (den + TINY));
        }
        let (rr, rc) = mat.r_shape();
        // Reference: norms along dim 0 (per column) when R is wide, else per row.
        let per_row = rr >= rc;
        let len = if per_row { rr } else { rc };
        let (n1, n2, s) = (self.ws.n1.sub(0, len), self.ws.n2.sub(0, len), self.ws.s.sub(0, len));
        b.axis_sum_squares(n1, nv, rr, rc, per_row)?;
        b.axis_sum_squares(n2, rv, rr, rc, per_row)?;
        // Host: the ratio of two vectors of `len` (≤ max side) values.
        let (mut h1, mut h2) = (vec![0f32; len], vec![0f32; len]);
        b.download(n1, &mut h1)?;
        b.download(n2, &mut h2)?;
        let ratio: Vec<f32> = h1.iter().zip(&h2).map(|(a, c)| ((*a as f64).sqrt() / ((*c as f64).sqrt() + TINY)) as f32).collect();
        b.upload(s, &ratio)?;
        b.scale_axis(gt, s, mat.t.rows(), mat.t.cols(), per_row)?;
        Ok(1.0)
    }

    fn step_matrix<B: Backend>(&mut self, b: &mut B, i: usize, params: BufId, grads: BufId, lr: f32, gs: f32) -> Result<()> {
        let c = &self.cfg;
        let mat = &self.mats[i];
        let (rr, rc) = mat.r_shape();
        let (rv, nv, gt) = (self.ws.r.sub(0, rr * rc), self.ws.n.sub(0, rr * rc), self.ws.gt.sub(0, mat.t.numel()));
        let g = mat.t.view(grads);
        self.project(b, mat, g, rv, gs)?;
        b.axpby(mat.m, rv, 1.0 - c.beta1, c.beta1)?;
        let pre = PrecondArgs { beta2: c.beta2, eps: c.eps, step: self.steps, bias_correction: false, grad_scale: 1.0 };
        b.rms_precondition(nv, mat.m, mat.v, rv, pre)?;
        let tensor_factor = self.scale_gradient(b, mat, g, gt, rv, nv)?;
        b.scale(gt, (gs as f64 * tensor_factor * (c.scale as f64).sqrt()) as f32)?;
        let norm = b.sum_squares(gt)?.sqrt();
        let limiter = match self.prev_norm[i] {
            Some(prev) => (norm / (prev + TINY)).max(GROWTH) / GROWTH,
            None => 1.0,
        };
        self.prev_norm[i] = Some(norm / limiter);
        let t = self.steps as f64;
        let step_size = lr as f64 * (1.0 - (c.beta2 as f64).powf(t)).sqrt() / (1.0 - (c.beta1 as f64).powf(t));
        let decay = 1.0 - lr as f64 * mat.t.weight_decay as f64;
        let p = mat.t.view(params);
        b.axpby(p, gt, (-decay * step_size / limiter) as f32, decay as f32)?;
        b.params_changed(p)
    }
}

impl<B: Backend> Optimizer<B> for Apollo {
    fn name(&self) -> &'static str {
        self.name_str()
    }

    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        let refresh = self.steps / self.cfg.update_every;
        if self.proj_for != Some(refresh) {
            self.draw_projections(b, refresh)?;
            self.proj_for = Some(refresh);
        }
        self.steps += 1;
        for i in 0..self.mats.len() {
            self.step_matrix(b, i, params, grads, lr, grad_scale)?;
        }
        let h = AdamHyper::from_cfg(&self.cfg, adamw_lr(&self.cfg, lr), self.steps, grad_scale);
        self.adam.step(b, params, grads, &h)
    }

    fn state_slices(&self) -> Option<Vec<StateSlice>> {
        let mut out = vec![];
        for mat in &self.mats {
            out.push(StateSlice::whole(&StateTensor::f32(format!("apollo.{}.m", mat.t.name), mat.m), &mat.t));
            out.push(StateSlice::whole(&StateTensor::f32(format!("apollo.{}.v", mat.t.name), mat.v), &mat.t));
        }
        out.extend(self.adam.state_slices());
        Some(out)
    }

    fn state_tensors(&self) -> Vec<StateTensor> {
        let mut out = vec![];
        for mat in &self.mats {
            out.push(StateTensor::f32(format!("apollo.{}.m", mat.t.name), mat.m));
            out.push(StateTensor::f32(format!("apollo.{}.v", mat.t.name), mat.v));
        }
        out.extend(self.adam.state_tensors());
        out
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": self.name_str(), "steps": self.steps, "prev_norm": self.prev_norm })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        self.steps = super::meta_steps(meta, self.name_str())?;
        let prev: Vec<Option<f64>> = serde_json::from_value(meta.get("prev_norm").cloned().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("checkpoint {} state: bad prev_norm: {e}", self.name_str()))?;
        ensure!(prev.len() == self.mats.len(), "checkpoint {} state has {} limiter norms, the model has {} matrices", self.name_str(), prev.len(), self.mats.len());
        self.prev_norm = prev;
        self.proj_for = None;
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        self.mats.iter().map(|m| 4 * (m.m.len + m.v.len + m.p.len) as u64).sum::<u64>() + self.adam.bytes()
    }

    fn workspace_bytes(&self) -> u64 {
        let w = &self.ws;
        4 * (w.r.len + w.n.len + w.gt.len + w.n1.len + w.n2.len + w.s.len) as u64
    }
}
