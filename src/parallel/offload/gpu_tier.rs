//! The device tier of an offloaded run (`offload.gpu_gb`): the units the
//! GPU budget takes ([`super::placement`]) keep their fp32 master weights
//! and optimizer state on the device, and the device optimizer
//! (`optim::build` on the unit's layout) steps them there. Their gradients
//! never leave the device; after a step the master is rounded into the
//! device's compute weights (bf16 on CUDA) that the passes read.
//!
//! On the CPU backend the device optimizer is the host optimizer's
//! arithmetic (the same AdamW / 8-bit AdamW kernels, run per unit, which
//! are elementwise or blocked inside tensors), so a run with units here is
//! the plain run bit for bit.
//!
//! Checkpoints read a unit through a host copy made for the moment
//! ([`DeviceUnits::to_host`]) and write one back ([`DeviceUnits::from_host`]):
//! the unit-by-unit writer and reader do not know where a unit lives.

use super::host_optimizer::{unit_layout, UnitHost};
use crate::backend::{Backend, BufId, DType, View};
use crate::config::Config;
use crate::model::layout::ParamLayout;
use crate::optim::{self, Optimizer};
use anyhow::{anyhow, ensure, Result};
use std::ops::Range;

/// One unit kept on the device.
struct DeviceUnit<B: Backend> {
    /// fp32 master weights, the unit's length.
    master: BufId,
    opt: Box<dyn Optimizer<B>>,
    layout: ParamLayout,
}

/// The units an offloaded run keeps on the device (indexed by unit; `None`
/// for the units offloaded to host memory or files).
pub struct DeviceUnits<B: Backend> {
    units: Vec<Option<DeviceUnit<B>>>,
    ranges: Vec<Range<usize>>,
}

/// The units `cfg`'s placement keeps on the device (`offload.gpu_gb`),
/// from `weights`; `None` when it keeps none.
pub fn device_units<B: Backend + 'static>(b: &mut B, cfg: &Config, layout: &ParamLayout, weights: &[f32]) -> Result<Option<DeviceUnits<B>>> {
    ensure!(weights.len() == layout.total, "{} initial weights for a layout of {}", weights.len(), layout.total);
    device_units_by(b, cfg, layout, &mut |_, r| Ok(weights[r].to_vec()))
}

/// A unit's initial weights, given its range (and the backend).
pub type WeightsOf<'a, B> = dyn FnMut(&mut B, Range<usize>) -> Result<Vec<f32>> + 'a;

/// [`device_units`] with each unit's initial weights from `weights_of`
/// (given the backend: an offloaded start-up also uploads the unit's
/// compute weights from the same draw).
pub fn device_units_by<B: Backend + 'static>(b: &mut B, cfg: &Config, layout: &ParamLayout, weights_of: &mut WeightsOf<B>) -> Result<Option<DeviceUnits<B>>> {
    let (_, places) = super::placement::plan_places(cfg, layout)?;
    let on_gpu: Vec<bool> = places.iter().map(|p| *p == super::placement::Place::Gpu).collect();
    if !on_gpu.contains(&true) {
        return Ok(None);
    }
    let ranges = crate::model::store::unit_ranges(&cfg.model, layout);
    DeviceUnits::new_by(b, cfg, layout, &ranges, &on_gpu, weights_of).map(Some)
}

impl<B: Backend + 'static> DeviceUnits<B> {
    /// The units with `on_gpu` set, each with its part of `weights` (the
    /// whole model, layout order) as master and fresh optimizer state.
    pub fn new(b: &mut B, cfg: &Config, layout: &ParamLayout, ranges: &[Range<usize>], on_gpu: &[bool], weights: &[f32]) -> Result<Self> {
        ensure!(weights.len() == layout.total, "{} initial weights for a layout of {}", weights.len(), layout.total);
        Self::new_by(b, cfg, layout, ranges, on_gpu, &mut |_, r| Ok(weights[r].to_vec()))
    }

    /// [`DeviceUnits::new`] with each unit's weights from `weights_of`.
    pub fn new_by(b: &mut B, cfg: &Config, layout: &ParamLayout, ranges: &[Range<usize>], on_gpu: &[bool], weights_of: &mut WeightsOf<B>) -> Result<Self> {
        let mut units = Vec::with_capacity(ranges.len());
        for (r, &here) in ranges.iter().zip(on_gpu) {
            if !here {
                units.push(None);
                continue;
            }
            let l = unit_layout(layout, r);
            let master = b.alloc(r.len().max(1), DType::F32)?;
            let w = weights_of(b, r.clone())?;
            b.upload(View { buf: master, off: 0, len: r.len() }, &w)?;
            let opt = optim::build(b, &cfg.optimizer, &l, cfg.seed)?;
            units.push(Some(DeviceUnit { master, opt, layout: l }));
        }
        Ok(DeviceUnits { units, ranges: ranges.to_vec() })
    }
}

impl<B: Backend> DeviceUnits<B> {
    /// Whether unit `u` lives on the device.
    pub fn holds(&self, u: usize) -> bool {
        self.units.get(u).is_some_and(Option::is_some)
    }

    /// How many units live on the device.
    pub fn count(&self) -> usize {
        self.units.iter().flatten().count()
    }

    fn unit(&mut self, u: usize) -> Result<&mut DeviceUnit<B>> {
        self.units.get_mut(u).and_then(Option::as_mut).ok_or_else(|| anyhow!("offload: unit {u} is not kept on the device"))
    }

    fn master_view(&self, u: usize) -> Result<View> {
        let d = self.units.get(u).and_then(Option::as_ref).ok_or_else(|| anyhow!("offload: unit {u} is not kept on the device"))?;
        Ok(View { buf: d.master, off: 0, len: self.ranges[u].len() })
    }

    /// One optimizer step of unit `u` from its gradients `grads` (a device
    /// buffer of the unit's length), then its master rounded into
    /// `compute` (the unit's range of the device's compute weights).
    pub fn step(&mut self, b: &mut B, u: usize, grads: BufId, lr: f32, clip: f32, compute: View) -> Result<()> {
        let d = self.unit(u)?;
        d.opt.step(b, d.master, grads, lr, clip)?;
        self.refresh_compute(b, u, compute)
    }

    /// The compute weights `compute` of unit `u` from its master.
    pub fn refresh_compute(&mut self, b: &mut B, u: usize, compute: View) -> Result<()> {
        let master = self.master_view(u)?;
        ensure!(compute.len == master.len, "offload: unit {u}'s compute weights have {} values, its master {}", compute.len, master.len);
        if master.len == 0 {
            return Ok(());
        }
        b.copy(compute, master)?;
        b.params_changed(compute)
    }

    /// The optimizer's scalar state (step count) of unit `u`.
    pub fn meta(&self, u: usize) -> Option<serde_json::Value> {
        self.units.get(u).and_then(Option::as_ref).map(|d| d.opt.meta())
    }

    /// A host copy of unit `u`'s master weights and optimizer state (a
    /// checkpoint's reader; one unit at a time).
    pub fn to_host(&mut self, b: &mut B, u: usize, cfg: &crate::config::OptimizerConfig) -> Result<UnitHost> {
        let master = self.master_view(u)?;
        let d = self.unit(u)?;
        let mut h = UnitHost::new(u, cfg, &d.layout)?;
        let mut w = vec![0.0f32; master.len];
        b.download(master, &mut w)?;
        h.set_master(&w)?;
        drop(w);
        let (from, to) = (d.opt.state_tensors(), h.opt.state_tensors());
        check_same(&from, &to)?;
        for (f, t) in from.iter().zip(&to) {
            match f.dtype {
                DType::U8 => {
                    let mut v = vec![0u8; f.view.len];
                    b.download_u8(f.view, &mut v)?;
                    h.h.upload_u8(t.view, &v)?;
                }
                _ => {
                    let mut v = vec![0.0f32; f.view.len];
                    b.download(f.view, &mut v)?;
                    h.h.upload(t.view, &v)?;
                }
            }
        }
        h.opt.load_meta(&d.opt.meta())?;
        Ok(h)
    }

    /// Unit `u`'s master weights, optimizer state and scalars from `h`
    /// (a resume), and its compute weights `compute` from the master.
    pub fn from_host(&mut self, b: &mut B, h: &UnitHost, compute: View) -> Result<()> {
        let u = h.unit;
        let master = self.master_view(u)?;
        b.upload(master, h.master())?;
        let d = self.unit(u)?;
        let (from, to) = (h.opt.state_tensors(), d.opt.state_tensors());
        check_same(&from, &to)?;
        for (f, t) in from.iter().zip(&to) {
            match f.dtype {
                DType::U8 => b.upload_u8(t.view, h.h.slice_u8(f.view))?,
                _ => b.upload(t.view, h.h.slice(f.view))?,
            }
        }
        d.opt.load_meta(&h.opt.meta())?;
        self.refresh_compute(b, u, compute)
    }
}

/// The host and device optimizers of a unit hold the same state tensors.
fn check_same(a: &[optim::StateTensor], b: &[optim::StateTensor]) -> Result<()> {
    let key = |t: &optim::StateTensor| (t.name.clone(), t.dtype == DType::U8, t.view.len);
    let (ka, kb): (Vec<_>, Vec<_>) = (a.iter().map(key).collect(), b.iter().map(key).collect());
    ensure!(ka == kb, "offload: a device unit's optimizer state {ka:?} does not match the host's {kb:?}");
    Ok(())
}
