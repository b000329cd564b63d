//! COSMOS (Liu et al. 2025, "COSMOS: A Hybrid Adaptive Optimizer for
//! Memory-Efficient Training of LLMs"), following the reference
//! `COSMOS_optim.py`.
//!
//! Per attention/MLP matrix G `[m, n]` (others: AdamW with the configured
//! betas — the reference hard-codes beta1 = 0.9 there; we do not):
//! - momentum M = b1·M + G (unnormalized), Nesterov mix
//!   G' = (G + b1·M) / (1 + b1·(1-b1^t)/(1-b1));
//! - a rank-r basis P `[n, r]` of the input side tracking the leading
//!   eigenvectors of the gradient covariance GᵀG, with its r×r projection
//!   GG: P ← QR(b2·P·GG + (1-b2)·Gᵀ·G·P), t = P_oldᵀ·P,
//!   GG ← b2·tᵀ·GG·t + (1-b2)·(G·P)ᵀ(G·P);
//! - Adam in the basis: v = b2·v + (1-b2)·(G·P)², A = [(G'·P) /
//!   (sqrt(v)/sqrt(1-b2^t) + eps)]·Pᵀ;
//! - Muon on the residual: B = NS5(G' - G'·P·Pᵀ), B̂ = B / (||B|| + eps);
//! - u = A + 0.2·sqrt(mn)·B̂ (γ = 0.2 on the RMS-normalized B̂);
//!   p *= 1 - lr·wd; p -= lr·sqrt(mn)·u / (||u|| + eps).
//!   `lr` here is the reference's `lr·lr_ratio` (matrices); the AdamW part
//!   runs at `optimizer.adamw_lr` (the reference's `lr`).
//!
//! r = `optimizer.rank` capped at n. State: M (mn) + P (nr) + GG (r²) +
//! v (mr) fp32.
//!
//! The thin QR of the n×r basis runs on the device (CholeskyQR2, see
//! `cholesky_qr`: only r×r matrices go to the host). At step 1 the reference
//! takes the exact top-r singular vectors of GᵀG (an n×n SVD); we run
//! seeded subspace iteration (`INIT_ITERS` rounds of Gᵀ·G·Q and a QR)
//! followed by Rayleigh–Ritz (an r×r host eigensolver), which is exact when
//! r = n and converges to the same subspace otherwise.

use super::adamw::{plan_groups, AdamHyper, AdamWPart};
use super::groups::matrix_split;
use super::cholesky_qr::{download64, orthonormalize, upload64, QrScratch};
use super::linalg::sym_eig;
use super::newton_schulz::{NsWorkspace, STEPS};
use super::plan::{matrix_rows, GroupPlan, WorkspacePlan};
use super::{adamw_lr, meta_steps, Optimizer, StateSlice, StateTensor, TensorRef};
use crate::backend::{Backend, BufId, DType, PrecondArgs, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use crate::util::rng::{mix, Rng};
use anyhow::{ensure, Result};

/// Subspace-iteration rounds of the step-1 basis initialization.
pub const INIT_ITERS: usize = 4;
/// Weight of the normalized Muon branch (reference: `scale * 0.2`).
pub const GAMMA: f64 = 0.2;

/// Rank used for a matrix: the configured rank capped at its input side.
pub fn rank_for(cfg: &OptimizerConfig, t: &TensorRef) -> usize {
    cfg.rank.min(t.cols())
}

fn state_elems(t: &TensorRef, r: usize) -> usize {
    let (m, n) = (t.rows(), t.cols());
    m * n + n * r + r * r + m * r
}

pub fn plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Vec<GroupPlan>> {
    ensure!(cfg.rank >= 1, "optimizer.rank must be at least 1 for COSMOS");
    let (matrices, rest) = matrix_split(layout, cfg);
    let mut rows = matrix_rows(&matrices, &format!("cosmos (rank {} capped at the input side)", cfg.rank), |t| 4 * state_elems(t, rank_for(cfg, t)) as u64);
    rows.extend(plan_groups(&rest));
    rows.retain(|r| r.params > 0);
    Ok(rows)
}

/// Element counts of the workspace buffers (g, a, gp, z, z2, tm, t1, rr1,
/// rr2) and the Newton–Schulz sizes, for matrices with their ranks.
fn workspace_lens(mats: &[(&TensorRef, usize)]) -> ([usize; 9], (usize, usize)) {
    let max = |f: &dyn Fn(&TensorRef, usize) -> usize| mats.iter().map(|&(t, r)| f(t, r)).max().unwrap_or(0);
    let (mn, mr, nr, rr) = (max(&|t, _| t.numel()), max(&|t, r| t.rows() * r), max(&|t, r| t.cols() * r), max(&|_, r| r * r));
    let side = max(&|t, _| t.rows().min(t.cols()));
    ([mn, mn, mr, nr, nr, mr, mr, rr, rr], (mn, side))
}

/// Scratch bytes the optimizer will allocate.
pub fn workspace_plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> WorkspacePlan {
    let (matrices, _) = matrix_split(layout, cfg);
    let mats: Vec<(&TensorRef, usize)> = matrices.tensors.iter().map(|t| (t, rank_for(cfg, t))).collect();
    let (lens, (numel, side)) = workspace_lens(&mats);
    let ns = NsWorkspace::bytes_for(numel, side);
    WorkspacePlan { fp32_bytes: 4 * lens.iter().sum::<usize>() as u64 + ns, newton_schulz_bytes: ns }
}

struct Mat {
    t: TensorRef,
    r: usize,
    mom: View,
    p: View,
    gg: View,
    v: View,
}

/// Scratch buffers, sized for the largest matrix.
struct Workspace {
    g: View,
    a: View,
    gp: View,
    z: View,
    z2: View,
    tm: View,
    t1: View,
    rr1: View,
    rr2: View,
    ns: NsWorkspace,
}

impl Workspace {
    fn bytes(&self) -> u64 {
        4 * [self.g, self.a, self.gp, self.z, self.z2, self.tm, self.t1, self.rr1, self.rr2].iter().map(|v| v.len as u64).sum::<u64>() + self.ns.bytes()
    }
}

fn alloc<B: Backend>(b: &mut B, len: usize) -> Result<View> {
    Ok(View::whole(b.alloc(len, DType::F32)?, len))
}

pub struct Cosmos {
    cfg: OptimizerConfig,
    seed: u64,
    mats: Vec<Mat>,
    adam: AdamWPart,
    ws: Workspace,
    steps: u64,
}

impl Cosmos {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout, seed: u64) -> Result<Self> {
        plan(cfg, layout)?;
        let (matrices, rest) = matrix_split(layout, cfg);
        let mut mats = vec![];
        for t in &matrices.tensors {
            let (m, n, r) = (t.rows(), t.cols(), rank_for(cfg, t));
            mats.push(Mat { t: t.clone(), r, mom: alloc(b, m * n)?, p: alloc(b, n * r)?, gg: alloc(b, r * r)?, v: alloc(b, m * r)? });
        }
        let sized: Vec<(&TensorRef, usize)> = mats.iter().map(|x| (&x.t, x.r)).collect();
        let ([g, a, gp, z, z2, tm, t1, rr1, rr2], (numel, side)) = workspace_lens(&sized);
        let ws = Workspace {
            g: alloc(b, g)?,
            a: alloc(b, a)?,
            gp: alloc(b, gp)?,
            z: alloc(b, z)?,
            z2: alloc(b, z2)?,
            tm: alloc(b, tm)?,
            t1: alloc(b, t1)?,
            rr1: alloc(b, rr1)?,
            rr2: alloc(b, rr2)?,
            ns: NsWorkspace::new(b, numel, side)?,
        };
        let adam = AdamWPart::new(b, &rest)?;
        Ok(Cosmos { cfg: cfg.clone(), seed, mats, adam, ws, steps: 0 })
    }

    /// Step 1: P = leading eigenvectors of GᵀG (subspace iteration +
    /// Rayleigh–Ritz), GG = (1-b2)·(G·P)ᵀ(G·P). Leaves G·P in `gp`.
    fn init_basis<B: Backend>(&self, b: &mut B, x: &Mat, g: View, gp: View) -> Result<()> {
        let (m, n, r) = (x.t.rows(), x.t.cols(), x.r);
        let mut q0 = vec![0f32; n * r];
        Rng::new(mix(self.seed ^ 0xC05_0505, x.t.index as u64)).fill_normal(&mut q0, 1.0);
        b.upload(x.p, &q0)?;
        self.orthonormalize(b, x.p, n, r)?;
        let z = self.ws.z.sub(0, n * r);
        for _ in 0..INIT_ITERS {
            b.gemm(gp, g, x.p, m, n, r, false, false, 1.0, 0.0)?;
            b.gemm(z, g, gp, n, m, r, true, false, 1.0, 0.0)?;
            self.orthonormalize(b, z, n, r)?;
            b.copy(x.p, z)?;
        }
        // Rayleigh–Ritz: rotate Q by the eigenvectors of Qᵀ·GᵀG·Q (host, r×r).
        b.gemm(gp, g, x.p, m, n, r, false, false, 1.0, 0.0)?;
        let (h, vecs) = (self.ws.rr1.sub(0, r * r), self.ws.rr2.sub(0, r * r));
        b.gemm(h, gp, gp, r, m, r, true, false, 1.0, 0.0)?;
        let (_, eigvecs) = sym_eig(&download64(b, h)?, r);
        upload64(b, vecs, &eigvecs)?;
        b.gemm(z, x.p, vecs, n, r, r, false, false, 1.0, 0.0)?;
        b.copy(x.p, z)?;
        b.gemm(gp, g, x.p, m, n, r, false, false, 1.0, 0.0)?;
        b.gemm(x.gg, gp, gp, r, m, r, true, false, 1.0 - self.cfg.beta2, 0.0)
    }

    fn orthonormalize<B: Backend>(&self, b: &mut B, v: View, n: usize, r: usize) -> Result<()> {
        let scratch = QrScratch { tmp: self.ws.z2, gram: self.ws.rr1, rinv: self.ws.rr2 };
        orthonormalize(b, v, &scratch, n, r)
    }

    /// Steps ≥ 2: EMA of the covariance in the basis, one QR and the
    /// rotation of GG into the new basis. Leaves G·P (new P) in `gp`.
    fn update_basis<B: Backend>(&self, b: &mut B, x: &Mat, g: View, gp: View) -> Result<()> {
        let (m, n, r, b2) = (x.t.rows(), x.t.cols(), x.r, self.cfg.beta2);
        let z = self.ws.z.sub(0, n * r);
        let (t, tmp) = (self.ws.rr1.sub(0, r * r), self.ws.rr2.sub(0, r * r));
        b.gemm(gp, g, x.p, m, n, r, false, false, 1.0, 0.0)?;
        b.gemm(z, g, gp, n, m, r, true, false, 1.0 - b2, 0.0)?; // (1-b2)·Gᵀ·G·P
        b.gemm(z, x.p, x.gg, n, r, r, false, false, b2, 1.0)?; // + b2·P·GG
        self.orthonormalize(b, z, n, r)?; // z = P_new
        b.gemm(t, x.p, z, r, n, r, true, false, 1.0, 0.0)?; // t = P_oldᵀ·P_new
        b.gemm(tmp, x.gg, t, r, r, r, false, false, 1.0, 0.0)?;
        b.gemm(x.gg, t, tmp, r, r, r, true, false, b2, 0.0)?; // b2·tᵀ·GG·t
        b.copy(x.p, z)?;
        b.gemm(gp, g, x.p, m, n, r, false, false, 1.0, 0.0)?;
        b.gemm(x.gg, gp, gp, r, m, r, true, false, 1.0 - b2, 1.0)
    }

    fn step_matrix<B: Backend>(&self, b: &mut B, x: &Mat, params: BufId, grads: BufId, lr: f32, gs: f32) -> Result<()> {
        let c = &self.cfg;
        let (m, n, r, t) = (x.t.rows(), x.t.cols(), x.r, self.steps);
        let (g, a) = (self.ws.g.sub(0, m * n), self.ws.a.sub(0, m * n));
        let (gp, tm, t1) = (self.ws.gp.sub(0, m * r), self.ws.tm.sub(0, m * r), self.ws.t1.sub(0, m * r));
        b.axpby(g, x.t.view(grads), gs, 0.0)?;
        b.axpby(x.mom, g, 1.0, c.beta1)?;
        if t == 1 { self.init_basis(b, x, g, gp)? } else { self.update_basis(b, x, g, gp)? }
        // Nesterov mix, normalized so its weights sum to one.
        let b1 = c.beta1 as f64;
        let d = 1.0 + b1 * (1.0 - b1.powf(t as f64)) / (1.0 - b1);
        b.axpby(g, x.mom, (b1 / d) as f32, (1.0 / d) as f32)?;
        b.gemm(tm, g, x.p, m, n, r, false, false, 1.0, 0.0)?;
        let pre = PrecondArgs { beta2: c.beta2, eps: c.eps, step: t, bias_correction: true, grad_scale: 1.0 };
        b.rms_precondition(t1, tm, x.v, gp, pre)?;
        b.gemm(a, t1, x.p, m, r, n, false, true, 1.0, 0.0)?; // A = T1·Pᵀ
        let res = self.ws.ns.input(m * n);
        b.copy(res, g)?;
        b.gemm(res, tm, x.p, m, r, n, false, true, -1.0, 1.0)?; // G' - (G'P)Pᵀ
        let o = self.ws.ns.run(b, m, n, STEPS)?;
        let scale = ((m * n) as f64).sqrt();
        let on = b.sum_squares(o)?.sqrt();
        b.axpby(a, o, (GAMMA * scale / (on + c.eps as f64)) as f32, 1.0)?;
        let un = b.sum_squares(a)?.sqrt();
        let p = x.t.view(params);
        b.axpby(p, a, (-(lr as f64) * scale / (un + c.eps as f64)) as f32, 1.0 - lr * x.t.weight_decay)?;
        b.params_changed(p)
    }
}

impl<B: Backend> Optimizer<B> for Cosmos {
    fn name(&self) -> &'static str {
        "cosmos"
    }

    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        self.steps += 1;
        for x in &self.mats {
            self.step_matrix(b, x, params, grads, lr, grad_scale)?;
        }
        let h = AdamHyper::from_cfg(&self.cfg, adamw_lr(&self.cfg, lr), self.steps, grad_scale);
        self.adam.step(b, params, grads, &h)
    }

    fn state_slices(&self) -> Option<Vec<StateSlice>> {
        let mut out = vec![];
        for x in &self.mats {
            for (what, v) in [("mom", x.mom), ("basis", x.p), ("gg", x.gg), ("v", x.v)] {
                out.push(StateSlice::whole(&StateTensor::f32(format!("cosmos.{}.{what}", x.t.name), v), &x.t));
            }
        }
        out.extend(self.adam.state_slices());
        Some(out)
    }

    fn state_tensors(&self) -> Vec<StateTensor> {
        let mut out = vec![];
        for x in &self.mats {
            for (what, v) in [("mom", x.mom), ("basis", x.p), ("gg", x.gg), ("v", x.v)] {
                out.push(StateTensor::f32(format!("cosmos.{}.{what}", x.t.name), v));
            }
        }
        out.extend(self.adam.state_tensors());
        out
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": "cosmos", "steps": self.steps })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        self.steps = meta_steps(meta, "cosmos")?;
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        self.mats.iter().map(|x| 4 * (x.mom.len + x.p.len + x.gg.len + x.v.len) as u64).sum::<u64>() + self.adam.bytes()
    }

    fn workspace_bytes(&self) -> u64 {
        self.ws.bytes()
    }
}
