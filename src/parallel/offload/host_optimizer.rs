//! One unit's optimizer on the host: its fp32 master weights and its
//! optimizer state in a `CpuBackend` of its own, so a unit can be handed to
//! a worker thread while the device runs the rest of backward.
//!
//! The update is the CPU backend's AdamW / 8-bit AdamW (the tested
//! reference kernels, rayon over 16K-element chunks, auto-vectorised inner
//! loops). Both are elementwise (8-bit: per 256-element block, blocks never
//! span tensors), so running them unit by unit gives exactly the bits of
//! one call over the whole model.

use crate::backend::cpu::{elementwise::CHUNK, CpuBackend};
use crate::backend::{Backend, DType, View};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use crate::optim::{adamw::AdamW, adamw8bit::AdamW8bit, Optimizer};
use anyhow::{bail, Result};
use rayon::prelude::*;
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

    /// Rounds the master weights into [`UnitHost::image`] (in parallel on
    /// the calling rayon pool).
    pub fn refresh_image(&mut self) {
        let master = self.h.slice(self.master);
        self.image.resize(master.len(), 0);
        crate::backend::cpu::bf16::round_to_bf16(&mut self.image, master);
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

/// Σ x² of the concatenation of `parts`, bit for bit what the CPU
/// backend's `sum_squares` gives on one buffer holding them all: the same
/// 16K-element chunks counted from the start of the whole, each summed
/// in order in f64, then the chunk sums in order. So the gradient norm (and
/// the clipping factor) of an offloaded run equals the plain run's.
pub fn sum_squares_concat(parts: &[&[f32]]) -> f64 {
    let mut starts = Vec::with_capacity(parts.len());
    let mut total = 0;
    for p in parts {
        starts.push(total);
        total += p.len();
    }
    let partial: Vec<f64> = (0..total.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            let (lo, hi) = (k * CHUNK, ((k + 1) * CHUNK).min(total));
            parts
                .iter()
                .zip(&starts)
                .filter(|(p, &s)| s < hi && s + p.len() > lo)
                .flat_map(|(p, &s)| p[lo.max(s) - s..hi.min(s + p.len()) - s].iter())
                .map(|&v| (v as f64) * (v as f64))
                .sum()
        })
        .collect();
    partial.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_norm_is_the_backends_bit_for_bit() {
        let mut rng = crate::util::rng::Rng::new(7);
        let sizes = [5, CHUNK - 3, 1, 2 * CHUNK + 17, 0, 999, CHUNK];
        let parts: Vec<Vec<f32>> = sizes.iter().map(|&n| (0..n).map(|_| rng.normal() as f32 * 1.7).collect()).collect();
        let all: Vec<f32> = parts.concat();
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        assert_eq!(sum_squares_concat(&refs).to_bits(), crate::backend::cpu::elementwise::sum_squares(&all).to_bits());
    }
}
