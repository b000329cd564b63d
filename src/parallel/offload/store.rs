//! The parameter stores of an offloaded run: [`OffloadStore`] (the
//! offload's gradients, and its streamed weights with `offload.params =
//! cpu | nvme`, else ZeRO's weights) and [`RunStore`], which a run's passes read
//! through whether it is offloaded or not.

use super::Offload;
use crate::backend::Backend;
use crate::model::store::{ParamStore, Unit};
use crate::model::views::ModelViews;
use crate::parallel::zero::Zero;
use anyhow::Result;

/// The parameter store of an offloaded run.
pub struct OffloadStore<'a, B: Backend> {
    pub(super) zero: &'a mut Zero<B>,
    pub(super) off: &'a mut Offload,
}

impl<B: Backend> OffloadStore<'_, B> {
    /// The offload behind this store (tests watch its host memory).
    pub fn offload(&self) -> &Offload {
        self.off
    }
}

impl<B: Backend> ParamStore<B> for OffloadStore<'_, B> {
    fn fetch(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        match self.off.stream.is_some() {
            true => self.off.fetch_streamed(b, unit),
            false => self.zero.fetch(b, unit),
        }
    }
    fn release(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        let (units, n_layers) = (self.off.with_tied(unit), self.off.n_layers);
        match self.off.stream.as_mut() {
            Some(s) => {
                for unit in units {
                    s.release(b, unit.index(n_layers))?;
                }
                if let Some(d) = self.off.disk.as_mut() {
                    d.recycle(s);
                }
                Ok(())
            }
            None => self.zero.release(b, unit),
        }
    }
    fn fetch_grads(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        self.off.fetch_grads(b, unit)
    }
    fn grads_done(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        self.off.grads_done(b, self.zero, unit)
    }
    fn params(&self) -> &ModelViews {
        match &self.off.stream {
            Some(s) => &s.pv,
            None => self.zero.params(),
        }
    }
    fn grads(&self) -> &ModelViews {
        &self.off.gv
    }
}

/// The store a run's passes read through: an offloaded run's (it may
/// stream the weights: `offload.params = cpu | nvme`), else ZeRO's.
pub enum RunStore<'a, B: Backend> {
    Offloaded(OffloadStore<'a, B>),
    Zero(&'a mut Zero<B>),
}

impl<'a, B: Backend> RunStore<'a, B> {
    pub fn new(off: Option<&'a mut Offload>, zero: &'a mut Zero<B>) -> Self {
        match off {
            Some(off) => RunStore::Offloaded(off.store(zero)),
            None => RunStore::Zero(zero),
        }
    }

    fn inner(&mut self) -> &mut dyn ParamStore<B> {
        match self {
            RunStore::Offloaded(s) => s,
            RunStore::Zero(z) => *z,
        }
    }
}

impl<B: Backend> ParamStore<B> for RunStore<'_, B> {
    fn fetch(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        self.inner().fetch(b, unit)
    }
    fn release(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        self.inner().release(b, unit)
    }
    fn fetch_grads(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        self.inner().fetch_grads(b, unit)
    }
    fn grads_done(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        self.inner().grads_done(b, unit)
    }
    fn params(&self) -> &ModelViews {
        match self {
            RunStore::Offloaded(s) => s.params(),
            RunStore::Zero(z) => z.params(),
        }
    }
    fn grads(&self) -> &ModelViews {
        match self {
            RunStore::Offloaded(s) => s.grads(),
            RunStore::Zero(z) => z.grads(),
        }
    }
}
