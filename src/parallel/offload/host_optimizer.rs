//! One unit's optimizer on the host: its fp32 master weights and its
//! optimizer state in a `CpuBackend` of its own, so a unit can be handed to
//! a worker thread while the device runs the rest of backward.
//!
//! The update is the CPU backend's AdamW / 8-bit AdamW (the tested
//! reference kernels, rayon over 16K-element chunks, auto-vectorised inner
//! loops). Both are elementwise (8-bit: per 256-element block, blocks never
//! span tensors), so running them unit by unit gives exactly the bits of
//! one call over the whole model.

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, DType, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use crate::optim::{adamw::AdamW, adamw8bit::AdamW8bit, Optimizer};
use anyhow::{bail, ensure, Result};
use std::ops::Range;

pub type HostOpt = Box<dyn Optimizer<CpuBackend> + Send>;

/// The optimizers the CPU step supports.
pub fn host_optimizer(h: &mut CpuBackend, cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<HostOpt> {
    Ok(match cfg.name.as_str() {
        "adamw" => Box::new(AdamW::new(h, cfg, layout)?),
        "adamw8bit" => Box::new(AdamW8bit::new(h, cfg, layout)?),
        other => bail!("offload runs adamw and adamw8bit on the CPU; `{other}` is not offloadable yet"),
    })
}

/// The layout of the tensors inside `range` (a unit), offsets from its start.
pub fn unit_layout(layout: &ParamLayout, range: &Range<usize>) -> ParamLayout {
    let params = layout
        .params
        .iter()
        .filter(|p| range.contains(&p.offset))
        .map(|p| crate::model::layout::ParamInfo { offset: p.offset - range.start, ..p.clone() })
        .collect();
    ParamLayout { params, total: range.len() }
}

/// One unit's master weights and optimizer state, resident in host memory.
pub struct UnitHost {
    pub unit: usize,
    pub h: CpuBackend,
    pub opt: HostOpt,
    pub master: View,
    /// The master weights rounded to bf16 (round to nearest even, as the
    /// device's conversions): what a device holding bf16 weights receives
    /// (half the bytes of fp32). Empty when the device computes in fp32.
    pub image: Vec<u16>,
}

impl UnitHost {
    /// Fresh state (zeros) and zero weights.
    pub fn new(unit: usize, cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Self> {
        let mut h = CpuBackend::new();
        let opt = host_optimizer(&mut h, cfg, layout)?;
        let master = View::whole(h.alloc(layout.total.max(1), DType::F32)?, layout.total);
        Ok(UnitHost { unit, h, opt, master, image: Vec::new() })
    }

    pub fn master(&self) -> &[f32] {
        self.h.slice(self.master)
    }

    pub fn set_master(&mut self, w: &[f32]) -> Result<()> {
        self.h.upload(self.master, w)
    }

    /// [`UnitHost::set_master`] from weights it may keep: the vector
    /// becomes the master buffer (no copy; the fresh zero buffer, never
    /// touched, goes back).
    pub fn set_master_owned(&mut self, w: Vec<f32>) -> Result<()> {
        ensure!(w.len() == self.master.len, "{} weights for a unit of {}", w.len(), self.master.len);
        if w.is_empty() {
            return Ok(());
        }
        self.h.free(self.master.buf);
        self.master = View::whole(self.h.adopt_f32(w), self.master.len);
        Ok(())
    }

    /// Rounds the master weights into [`UnitHost::image`] (in parallel on
    /// the calling rayon pool).
    pub fn refresh_image(&mut self) {
        let mut image = std::mem::take(&mut self.image);
        image.resize(self.master.len, 0);
        self.write_image(&mut image);
        self.image = image;
    }

    /// Rounds the master weights into `out` (one value per weight), in
    /// parallel on the calling rayon pool: a bf16 image kept elsewhere
    /// (the offload's pooled upload buffers).
    pub fn write_image(&self, out: &mut [u16]) {
        let master = self.h.slice(self.master);
        assert_eq!(out.len(), master.len(), "a bf16 image of {} values for {} weights", out.len(), master.len());
        crate::backend::cpu::bf16::round_to_bf16(out, master);
    }

    /// One optimizer step of this unit from its gradients `grads`, which
    /// the step reads in place (lent to the unit's backend, no copy) and
    /// hands back for the next step to fill.
    pub fn step(&mut self, grads: Vec<f32>, lr: f32, clip: f32) -> (Result<()>, Vec<f32>) {
        let g = self.h.adopt_f32(grads);
        let out = self.opt.step(&mut self.h, self.master.buf, g, lr, clip);
        match self.h.take_f32(g) {
            Ok(grads) => (out, grads),
            Err(e) => (out.and(Err(e)), Vec::new()),
        }
    }
}
