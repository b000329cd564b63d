//! Who holds the weights and gradients the passes read and write.
//!
//! The passes walk the model in units — the embeddings, each block, the
//! head (final norm and output matrix) — and tell the store when they enter
//! and leave one. A store that holds everything (one flat buffer, the
//! single-process case) does nothing on those calls; a ZeRO-3 store gathers
//! a unit's weights on `fetch` and frees them on `release`; every sharded
//! store reduces a unit's gradients on `grads_done`. The model never knows
//! which one it runs with.

use super::layout::ParamLayout;
use super::views::ModelViews;
use crate::backend::{Backend, BufId};
use crate::config::ModelConfig;
use anyhow::Result;
use std::ops::Range;

/// A part of the model the passes enter and leave as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Token (and learned position) embeddings.
    Embed,
    /// Transformer block `l`.
    Layer(usize),
    /// Final norm and output head (for tied embeddings the head matrix is
    /// the embedding's, which stays in `Embed`).
    Head,
}

impl Unit {
    /// Every unit in layout order.
    pub fn all(n_layers: usize) -> Vec<Unit> {
        let mut out = vec![Unit::Embed];
        out.extend((0..n_layers).map(Unit::Layer));
        out.push(Unit::Head);
        out
    }
    /// Position in [`Unit::all`].
    pub fn index(self, n_layers: usize) -> usize {
        match self {
            Unit::Embed => 0,
            Unit::Layer(l) => 1 + l,
            Unit::Head => 1 + n_layers,
        }
    }
}

/// Each unit's range of the flat layout, in [`Unit::all`] order (learned
/// positions sit in the embeddings' range). The layout is unit-ordered, so
/// the ranges tile `0..layout.total`.
pub fn unit_ranges(cfg: &ModelConfig, layout: &ParamLayout) -> Vec<Range<usize>> {
    let start = |name: &str| layout.must(name).offset;
    let mut starts = vec![0];
    starts.extend((0..cfg.n_layers).map(|l| start(&format!("h.{l}.ln1.w"))));
    starts.push(start("ln_f.w"));
    starts.push(layout.total);
    starts.windows(2).map(|w| w[0]..w[1]).collect()
}

pub trait ParamStore<B: Backend> {
    /// `unit`'s parameters are about to be read: after this call its entries
    /// in [`params`](Self::params) are valid until [`release`](Self::release).
    fn fetch(&mut self, b: &mut B, unit: Unit) -> Result<()>;
    /// A hint: `unit` will be fetched soon (the next block in forward, the
    /// previous one in backward), so a store that gathers may start now and
    /// overlap the transfer with the current unit's compute. The next
    /// `fetch` of `unit` is still required; stores that hold everything
    /// ignore it.
    fn prefetch(&mut self, _b: &mut B, _unit: Unit) -> Result<()> {
        Ok(())
    }
    /// The pass is done reading `unit`'s parameters for now.
    fn release(&mut self, b: &mut B, unit: Unit) -> Result<()>;
    /// `unit`'s gradients are about to be accumulated: its entries in
    /// [`grads`](Self::grads) are valid until [`grads_done`](Self::grads_done).
    fn fetch_grads(&mut self, b: &mut B, unit: Unit) -> Result<()>;
    /// Every gradient of `unit` for this micro-batch is accumulated.
    fn grads_done(&mut self, b: &mut B, unit: Unit) -> Result<()>;
    fn params(&self) -> &ModelViews;
    fn grads(&self) -> &ModelViews;
}

/// Everything in two flat buffers (parameters, gradients) with the model's
/// layout: the first implementation, and what one process uses.
#[derive(Clone)]
pub struct FlatStore {
    pub params: BufId,
    pub grads: BufId,
    pv: ModelViews,
    gv: ModelViews,
}

impl FlatStore {
    pub fn new(layout: &ParamLayout, params: BufId, grads: BufId, n_layers: usize) -> Self {
        FlatStore { params, grads, pv: ModelViews::new(layout, params, n_layers), gv: ModelViews::new(layout, grads, n_layers) }
    }
}

impl<B: Backend> ParamStore<B> for FlatStore {
    fn fetch(&mut self, _: &mut B, _: Unit) -> Result<()> {
        Ok(())
    }
    fn release(&mut self, _: &mut B, _: Unit) -> Result<()> {
        Ok(())
    }
    fn fetch_grads(&mut self, _: &mut B, _: Unit) -> Result<()> {
        Ok(())
    }
    fn grads_done(&mut self, _: &mut B, _: Unit) -> Result<()> {
        Ok(())
    }
    fn params(&self) -> &ModelViews {
        &self.pv
    }
    fn grads(&self) -> &ModelViews {
        &self.gv
    }
}
