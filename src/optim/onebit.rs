//! 1-bit Adam (Tang et al. 2021; DeepSpeed's `OnebitAdam`): AdamW with
//! dense gradient all-reduce for `optimizer.freeze_step` steps (the warmup
//! that estimates the variance), then the variance is frozen and ranks
//! stop exchanging gradients: each rank folds its LOCAL gradient into its
//! momentum, and the momentum is averaged by the error-compensated 1-bit
//! all-reduce (`dist::compressed`), about 1/32 of a dense all-reduce.
//!
//! Update rules (`t` = 1-based step, `F` = freeze step, `s = sqrt(1 - β2^F)`):
//! - `t <= F`: exactly `adamw` (decoupled weight decay, bias corrections).
//! - `t > F`: `m = β1·m + (1-β1)·g_local`; `m = compressed_mean(m)`;
//!   `p *= 1 - lr·wd`; `p -= lr/(1-β1^t) · m / (sqrt(v)/s + eps)`, with v
//!   and its bias correction frozen at step F (the local gradient is
//!   scaled by the world size: the store's gradients are each rank's share
//!   of a sum). Values that saw no gradient in the warmup (v = 0) are
//!   masked: see `OneBitAdam::mask_unseen`. DeepSpeed applies no bias
//!   correction at all; keeping AdamW's makes the step at the freeze
//!   continuous (and 1-β1^t → 1 within a few dozen steps anyway).
//!   No gradient clipping in this phase (local gradients differ per rank;
//!   DeepSpeed clips none either): the trainer passes a factor of 1.
//!
//! ZeRO: stage 0 (every rank holds all state) and stage 1 (m and v of its
//! shard are the checkpointed state; after the freeze each rank also keeps
//! the full momentum, which is identical on every rank after each average,
//! and updates its shard; the weights are then all-gathered as stage 1
//! always does, dense). Stages 2 and 3 keep no full local gradient and are
//! refused (config validation).
//!
//! Checkpoints hold m, v (like AdamW, so they reshard) and the step; the
//! error buffers are not saved and restart at zero on resume (DeepSpeed
//! does the same).

use super::adamw::{AdamHyper, AdamWPart};
use super::{default_groups, meta_steps, DistStep, Optimizer, StateSlice, StateTensor};
use crate::backend::{AdamSegment, Backend, BufId, DType, PrecondArgs, View};
use crate::config::OptimizerConfig;
use crate::dist::compressed::{CompressedAllReduce, SCALE_BLOCK};
use crate::dist::{Comm, Elem, SoloComm};
use crate::model::layout::ParamLayout;
use crate::parallel::partition::Partition;
use anyhow::{bail, ensure, Result};

pub const NAME: &str = "onebit_adam";

pub struct OneBitAdam {
    cfg: OptimizerConfig,
    part: AdamWPart,
    segments: Vec<AdamSegment>,
    /// Elements of the optimizer's layout (this rank's shard).
    n: usize,
    /// Completed steps.
    steps: u64,
    /// The step v was frozen at (None: still in warmup).
    frozen_at: Option<u64>,
    /// Built at the first compressed step (after a resume: fresh, zero errors).
    comp: Option<CompressedAllReduce>,
    /// ZeRO-1 after the freeze: the whole model's momentum (same on every rank).
    m_full: Option<View>,
}

impl OneBitAdam {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Self> {
        ensure!(cfg.freeze_step >= 1, "optimizer.freeze_step must be at least 1 for onebit_adam (dense Adam steps that estimate the variance)");
        let part = AdamWPart::new(b, &default_groups(layout, cfg))?;
        let segments = part.segments().to_vec();
        Ok(OneBitAdam { cfg: cfg.clone(), part, segments, n: layout.total, steps: 0, frozen_at: None, comp: None, m_full: None })
    }

    /// Whether the next step runs compressed.
    fn compressed_next(&self) -> bool {
        self.frozen_at.is_some() || self.steps >= self.cfg.freeze_step
    }

    /// `m = β1·m + (1-β1)·grad_scale·g` over `m` (a whole vector).
    fn momentum<B: Backend>(&self, b: &mut B, m: View, g: View, grad_scale: f32) -> Result<()> {
        let b1 = self.cfg.beta1;
        b.axpby(m, g, (1.0 - b1) * grad_scale, b1)
    }

    /// The frozen-variance update of every segment with the (averaged)
    /// momentum in `part.m`; `scratch` (the gradient buffer, consumed by
    /// now) holds `m / (sqrt(v) + eps·s)` per segment.
    fn frozen_update<B: Backend>(&self, b: &mut B, params: BufId, scratch: BufId, lr: f32, t: u64, frozen_at: u64) -> Result<()> {
        let bc1 = 1.0 - (self.cfg.beta1 as f64).powf(t as f64);
        let s = (1.0 - (self.cfg.beta2 as f64).powf(frozen_at as f64)).sqrt();
        // m/(sqrt(v)/s + eps) = s·m/(sqrt(v) + eps·s): rms_precondition with
        // β2 = 1 and a zero gradient leaves v exactly as it is.
        let args = PrecondArgs { beta2: 1.0, eps: (self.cfg.eps as f64 * s) as f32, step: t, bias_correction: false, grad_scale: 0.0 };
        let step = (lr as f64 * s / bc1) as f32;
        for seg in &self.segments {
            let [p, u, m, v] = seg.views(params, scratch, self.part.m, self.part.v);
            b.rms_precondition(u, m, v, m, args)?;
            b.axpby(p, u, -step, 1.0 - lr * seg.weight_decay)?;
            b.params_changed(p)?;
        }
        Ok(())
    }

    /// At the freeze: values whose gradient was exactly 0 through the
    /// whole warmup (vocabulary and SwiGLU padding, unused positions) get
    /// v = f32::MAX, so the frozen update leaves them alone (m/1.8e19 ≈ 0)
    /// although the compressed momentum carries noise there (finite, so
    /// checkpoints stay finite). This is DeepSpeed's
    /// momentum mask, derived from the data; it is saved with v. One host
    /// round trip of v, once per run.
    fn mask_unseen<B: Backend>(&self, b: &mut B) -> Result<()> {
        let mut v = vec![0f32; self.part.v.len];
        b.download(self.part.v, &mut v)?;
        v.iter_mut().filter(|x| **x == 0.0).for_each(|x| *x = f32::MAX);
        b.upload(self.part.v, &v)
    }

    /// ZeRO-1: the full momentum from every rank's shard of it (a collective).
    fn gather_full<B: Backend>(&self, b: &mut B, comm: &mut dyn Comm<B>, shard: &Partition, full: View) -> Result<()> {
        let r = comm.rank();
        for u in 0..shard.units.len() {
            let (seg, unit) = (shard.segment(u, r), shard.units[u].clone());
            b.copy(full.sub(seg.start, seg.len()), self.part.m.sub(shard.shard_offset(u, r), seg.len()))?;
            comm.all_gather(b, full.sub(unit.start, unit.len()), &shard.counts[u], Elem::F32)?;
        }
        Ok(())
    }

    fn compressed_step<B: Backend>(&mut self, b: &mut B, d: DistStep<'_, B>, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        let t = self.steps + 1;
        let frozen_at = match self.frozen_at {
            Some(f) => f,
            None => {
                self.mask_unseen(b)?;
                *self.frozen_at.insert(self.steps)
            }
        };
        let (rank, world) = (d.comm.rank(), d.comm.world());
        // Each rank's gradient is its share of the global mean (the store
        // sums gradients over ranks): times `world`, its mean over ranks is
        // the global gradient, and so the averaged momentum is Adam's.
        let grad_scale = grad_scale * world as f32;
        ensure!(self.segments.iter().all(|s| s.param_off == s.state_off), "onebit_adam: the state is not laid out like the parameters");
        let m = match d.shard {
            None => {
                // The shard is the whole model: part.m is the momentum.
                let g = d.local_grads.unwrap_or(View::whole(grads, self.n));
                ensure!(g.len == self.n && self.part.m.len == self.n, "onebit_adam: {} gradients, {} momentum values for {} parameters", g.len, self.part.m.len, self.n);
                self.momentum(b, self.part.m, g, grad_scale)?;
                self.part.m
            }
            Some(shard) => {
                let Some(g) = d.local_grads else { bail!("onebit_adam needs every rank's full local gradient (ZeRO stage 0 or 1)") };
                let full = match self.m_full {
                    Some(v) => v,
                    None => {
                        let v = View::whole(b.alloc(g.len.max(1), DType::F32)?, g.len);
                        self.gather_full(b, d.comm, shard, v)?;
                        self.m_full = Some(v);
                        v
                    }
                };
                self.momentum(b, full, g, grad_scale)?;
                full
            }
        };
        if self.comp.is_none() {
            self.comp = Some(CompressedAllReduce::new(b, m.len, rank, world, SCALE_BLOCK)?);
        }
        self.comp.as_mut().expect("built above").all_reduce_mean(b, d.comm, m)?;
        if let Some(shard) = d.shard {
            for u in 0..shard.units.len() {
                let seg = shard.segment(u, rank);
                b.copy(self.part.m.sub(shard.shard_offset(u, rank), seg.len()), m.sub(seg.start, seg.len()))?;
            }
        }
        self.frozen_update(b, params, grads, lr, t, frozen_at)?;
        self.steps = t;
        Ok(())
    }
}

impl<B: Backend> Optimizer<B> for OneBitAdam {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Without a communicator: a world of one (compression still applies
    /// after the freeze, as it would on one rank).
    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        let mut solo = SoloComm;
        let d = DistStep { comm: &mut solo, local_grads: None, shard: None };
        self.step_dist(b, d, params, grads, lr, grad_scale)
    }

    fn local_gradients(&self) -> bool {
        self.compressed_next()
    }

    fn step_dist(&mut self, b: &mut B, d: DistStep<'_, B>, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        if self.compressed_next() {
            return self.compressed_step(b, d, params, grads, lr, grad_scale);
        }
        self.steps += 1;
        self.part.step(b, params, grads, &AdamHyper::from_cfg(&self.cfg, lr, self.steps, grad_scale))
    }

    fn state_tensors(&self) -> Vec<StateTensor> {
        self.part.state_tensors()
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": NAME, "steps": self.steps, "frozen_at": self.frozen_at })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        self.steps = meta_steps(meta, NAME)?;
        self.frozen_at = meta.get("frozen_at").and_then(|f| f.as_u64());
        // Error buffers and the gathered momentum restart (see the module docs).
        self.comp = None;
        self.m_full = None;
        Ok(())
    }

    /// m and v, plus (after the freeze) the error buffers, packed buffers
    /// and, at ZeRO-1, the full momentum.
    fn state_bytes(&self) -> u64 {
        self.part.bytes() + self.comp.as_ref().map_or(0, |c| c.bytes()) + self.m_full.map_or(0, |v| 4 * v.len as u64)
    }

    fn state_slices(&self) -> Option<Vec<StateSlice>> {
        Some(self.part.state_slices())
    }
}
