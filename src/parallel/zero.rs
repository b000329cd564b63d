//! ZeRO over the data-parallel group: one engine for stages 0–3, and the
//! parameter store the passes run with.
//!
//! | stage | every rank holds                       | gradients                         | after the step          |
//! |-------|----------------------------------------|-----------------------------------|-------------------------|
//! | 0     | all weights, all gradients, all state  | all-reduce once per step          | —                       |
//! | 1     | all weights and gradients, its state   | reduce-scatter once per step      | all-gather the weights  |
//! | 2     | all weights, its gradients and state   | reduce-scatter as each unit ends  | all-gather the weights  |
//! | 3     | its weights, gradients and state       | reduce-scatter as each unit ends  | — (gathered when used)  |
//!
//! "Its" = this rank's shard of the [`Partition`]: fp32 master weights and
//! gradients packed in two flat buffers, which its optimizer is built on
//! (`Partition::shard_layout`). Stage 3 gathers a unit's weights into a
//! buffer of its own on `fetch` and frees it on `release` (forward and
//! again in backward); stages 2 and 3 accumulate a unit's gradients in a
//! buffer of its own from `fetch_grads` to `grads_done`, then reduce-scatter
//! it into the shard. Gradients are summed over ranks: callers scale each
//! rank's loss gradient by 1 / (global tokens), so the sum is the mean.
//!
//! Overlap (the communicator's `start_*`/`wait`: on NCCL a stream of its
//! own, ordered with compute by events; on TCP synchronous):
//! - Stages 2–3 start a unit's reduce-scatter at `grads_done` and wait for
//!   it (then add the rank's segment to the shard and free the buffer) at
//!   the next unit's `grads_done`, so it runs while the next unit's
//!   backward computes; the last unit of backward (the embeddings) waits at
//!   once. Two units' gradient buffers are alive at a time.
//! - Stages 0–1, on the last micro-batch (`reduce_during_backward`): each
//!   unit's all-reduce (stage 0, DDP-style) or reduce-scatter (stage 1) of
//!   the full gradient buffer starts at its `grads_done`; `finish_grads`
//!   waits for them all.
//! - Stage 3 prefetches: `prefetch(unit)` (hinted by the passes: the next
//!   block in forward, the previous one in backward) starts the unit's
//!   all-gather, `fetch` waits for it. At most two units are gathered at
//!   once (fetched or prefetched): a prefetch beyond that is skipped.
//! - Bucketing: a unit (every tensor of a block, norms and biases included;
//!   the embeddings; the final norm with the head) is one buffer and one
//!   collective; no collective ever runs per tensor.
//!
//! One process (world 1), stages 2–3: the shard is the whole model in
//! layout order, so the gradient views point straight into the shard's
//! gradient buffer: no per-unit buffer, no copy, and the same sums in the
//! same order as stage 0 (bit-identical gradients). Stage 3 at world 1
//! still gathers each unit, but a gather is only a conversion fp32 →
//! `Compute` into the unit's buffer (no collective, whatever the
//! communicator) and nothing is prefetched (the conversion runs on the
//! compute stream: nothing to overlap), so one unit is held at a time:
//! the device holds no bf16 copy of every weight, only of the unit in use.
//!
//! Gradients in bf16 (`train.grad_dtype = bf16`, [`Zero::with_grad_dtype`]):
//! one process only (the reductions and per-unit buffers are fp32), the
//! gradient buffer (stages 0–1) or the shard's (stages 2–3, the views
//! pointing into it) is allocated `DType::Bf16`: 2 bytes per parameter.
//!
//! Stage 3 gathers in the backend's `Compute` dtype (bf16 on CUDA: half the
//! bytes of fp32; f32 on CPU): each rank converts its fp32 master segment
//! and the passes read the gathered weights directly (the matmuls take bf16
//! operands anyway). Gradients are reduced in fp32. `full_weights` (for
//! checkpoints) gathers fp32.

use super::partition::Partition;
use crate::backend::{Backend, BufId, DType, View};
use crate::config::ModelConfig;
use crate::dist::{Comm, Elem, Ticket};
use crate::model::layout::ParamLayout;
use crate::model::store::{ParamStore, Unit};
use crate::model::views::ModelViews;
use anyhow::{ensure, Result};
use std::collections::VecDeque;

/// A buffer no op may use: views of units not fetched point here.
const UNFETCHED: BufId = BufId(usize::MAX);

pub struct Zero<B: Backend> {
    pub stage: u32,
    pub part: Partition,
    pub comm: Box<dyn Comm<B>>,
    layout: ParamLayout,
    n_layers: usize,
    tied: bool,
    /// Stages 0–2: every weight (fp32). Stage 3: none.
    full_params: Option<BufId>,
    /// Stages 0–1: every gradient. Stages 2–3: none (per-unit buffers).
    full_grads: Option<BufId>,
    /// This rank's master weights and gradients (stage 0: the full buffers).
    pub shard_params: BufId,
    pub shard_grads: BufId,
    /// Stage 3: each unit's gathered weights and how many fetches hold them.
    gathered: Vec<Option<(BufId, usize)>>,
    /// Stages 2–3: each unit's gradient buffer while its backward runs.
    grad_bufs: Vec<Option<BufId>>,
    /// Stages 2–3 at world 1: the gradient views point into `shard_grads`
    /// (see the module doc); `grad_bufs` stays empty.
    grads_in_shard: bool,
    /// Stage 3: units gathered ahead of their fetch, all-gather in flight.
    prefetched: Vec<Option<(BufId, Ticket)>>,
    /// Gradient reductions started in backward and not yet waited for,
    /// oldest first.
    pending: VecDeque<Pending>,
    /// Stages 0–1: reduce each unit's gradients as its backward ends (the
    /// last micro-batch of a step), and which units have been.
    reduce_in_backward: bool,
    reduced: Vec<bool>,
    /// Stage 3: most units gathered at once since `take_peak_gathered`.
    peak_gathered: usize,
    pv: ModelViews,
    gv: ModelViews,
    /// An offloaded run with `offload.gpu_gb`: the units whose master
    /// weights and optimizer state stay on the device
    /// (`parallel::offload::gpu_tier`), stepped into `shard_params`.
    pub device_units: Option<crate::parallel::offload::gpu_tier::DeviceUnits<B>>,
}

/// A gradient reduction in flight.
enum Pending {
    /// Stages 2–3: unit `u`'s own gradient buffer, reduce-scattered.
    Unit { u: usize, buf: BufId, ticket: Ticket },
    /// Stages 0–1: unit `u`'s range of the full gradient buffer.
    Full { u: usize, ticket: Ticket },
}

/// Most units stage 3 holds gathered at once (fetched plus prefetched).
pub const MAX_GATHERED_UNITS: usize = 2;

/// Whether rank 0's shard is the whole layout in layout order (world 1:
/// every unit's segment is the whole unit, at the unit's own offset), so
/// that views of the layout can point into the shard's buffers.
fn shard_is_layout(part: &Partition) -> bool {
    part.world == 1 && (0..part.units.len()).all(|u| part.shard_offset(u, 0) == part.units[u].start && part.counts[u][0] == part.units[u].len())
}

impl<B: Backend> Zero<B> {
    /// Shards `weights` (the full model, layout order, identical on every
    /// rank) for `stage`. `whole_tensors`: the optimizer needs whole
    /// matrices (see `Partition`).
    pub fn new(b: &mut B, cfg: &ModelConfig, layout: &ParamLayout, stage: u32, comm: Box<dyn Comm<B>>, whole_tensors: bool, weights: &[f32]) -> Result<Self> {
        Self::with_grad_dtype(b, cfg, layout, stage, comm, whole_tensors, weights, DType::F32)
    }

    /// [`Zero::new`] with the gradients stored in `grad_dtype` (`F32`, or
    /// `Bf16` in one process: see the module doc). Refuses bf16 over
    /// several ranks before allocating anything.
    #[allow(clippy::too_many_arguments)]
    pub fn with_grad_dtype(b: &mut B, cfg: &ModelConfig, layout: &ParamLayout, stage: u32, comm: Box<dyn Comm<B>>, whole_tensors: bool, weights: &[f32], grad_dtype: DType) -> Result<Self> {
        ensure!(matches!(grad_dtype, DType::F32 | DType::Bf16), "ZeRO gradients are F32 or Bf16, not {grad_dtype:?}");
        ensure!(
            grad_dtype == DType::F32 || comm.world() == 1,
            "train.grad_dtype = bf16 runs in one process; this run has {} ranks, whose gradient reductions are fp32 (use train.grad_dtype = fp32)",
            comm.world()
        );
        Self::build(b, cfg, layout, stage, comm, whole_tensors, Some(weights), Some(grad_dtype), true, true)
    }

    /// Stage 0 without the gradient buffer, weights in the compute dtype:
    /// an offloaded run (`parallel::offload`) keeps the fp32 master weights
    /// on the host and each unit's gradients on the device only while its
    /// backward runs, so the device holds just what the passes read (bf16
    /// on CUDA: 2 bytes per parameter instead of 4 + a 2-byte shadow).
    /// `fp32`: keep fp32 weights instead (`debug.offload_fp32_weights`).
    pub fn new_offloaded(b: &mut B, cfg: &ModelConfig, layout: &ParamLayout, comm: Box<dyn Comm<B>>, weights: &[f32], fp32: bool) -> Result<Self> {
        Self::build(b, cfg, layout, 0, comm, false, Some(weights), None, true, fp32)
    }

    /// [`Zero::new_offloaded`] with the weights not yet uploaded: an
    /// offloaded start-up draws each unit once and uploads it from that
    /// draw ([`Zero::upload_unit_weights`], then [`Zero::weights_uploaded`]).
    pub fn new_offloaded_unfilled(b: &mut B, cfg: &ModelConfig, layout: &ParamLayout, comm: Box<dyn Comm<B>>, fp32: bool) -> Result<Self> {
        Self::build(b, cfg, layout, 0, comm, false, None, None, true, fp32)
    }

    /// The device weights of `range` (layout order) from `w`; nothing when
    /// the device holds no weights (`new_streamed`).
    pub fn upload_unit_weights(&self, b: &mut B, range: std::ops::Range<usize>, w: &[f32]) -> Result<()> {
        ensure!(w.len() == range.len(), "{} weights for a range of {}", w.len(), range.len());
        match self.full_params {
            Some(full) => b.upload(View { buf: full, off: range.start, len: range.len() }, w),
            None => Ok(()),
        }
    }

    /// After every unit's [`Zero::upload_unit_weights`]: the backend learns
    /// that the weights changed (once, for the whole buffer).
    pub fn weights_uploaded(&self, b: &mut B) -> Result<()> {
        match self.full_params {
            Some(full) => b.params_changed(View::whole(full, self.layout.total)),
            None => Ok(()),
        }
    }

    /// [`Zero::new_offloaded`] with no weights on the device at all
    /// (`offload.params = cpu`: the offload's store streams them per unit).
    pub fn new_streamed(b: &mut B, cfg: &ModelConfig, layout: &ParamLayout, comm: Box<dyn Comm<B>>) -> Result<Self> {
        Self::build(b, cfg, layout, 0, comm, false, None, None, false, false)
    }

    /// `grads`: the device gradients' dtype, None for none on the device.
    #[allow(clippy::too_many_arguments)]
    fn build(b: &mut B, cfg: &ModelConfig, layout: &ParamLayout, stage: u32, comm: Box<dyn Comm<B>>, whole_tensors: bool, weights: Option<&[f32]>, grads: Option<DType>, device_weights: bool, fp32_weights: bool) -> Result<Self> {
        let (device_grads, grad_dtype) = (grads.is_some(), grads.unwrap_or(DType::F32));
        ensure!(stage <= 3, "dist.zero_stage = {stage}: use 0, 1, 2 or 3");
        if let Some(w) = weights {
            ensure!(w.len() == layout.total, "{} initial weights for a layout of {}", w.len(), layout.total);
        }
        let (rank, world) = (comm.rank(), comm.world());
        let part = Partition::new(cfg, layout, if stage == 0 { 1 } else { world }, whole_tensors);
        let units = part.units.len();
        let weight_dtype = if fp32_weights { DType::F32 } else { DType::Compute };
        let full_params = if stage <= 2 && device_weights { Some(b.alloc(layout.total, weight_dtype)?) } else { None };
        let full_grads = if stage <= 1 && device_grads { Some(b.alloc(layout.total, grad_dtype)?) } else { None };
        // One process: the shard is the whole model in layout order, so a
        // full buffer, where there is one, is the shard too (no fp32 copy).
        // (Stage 0 partitions for one rank whatever the rank: no shard.)
        let one_copy = stage == 0 || shard_is_layout(&part);
        let mut shard_buf = |full: Option<BufId>, dtype| match full {
            Some(full) if one_copy => Ok(full),
            _ if stage == 0 => Ok(UNFETCHED),
            _ => b.alloc(part.shard_len(rank).max(1), dtype),
        };
        let (shard_params, shard_grads) = (shard_buf(full_params, DType::F32)?, shard_buf(full_grads, grad_dtype)?);
        let grads_in_shard = stage >= 2 && device_grads && shard_is_layout(&part);
        let pv = ModelViews::new(layout, full_params.unwrap_or(UNFETCHED), cfg.n_layers);
        let grads_home = if grads_in_shard { shard_grads } else { full_grads.unwrap_or(UNFETCHED) };
        let gv = ModelViews::new(layout, grads_home, cfg.n_layers);
        let mut z = Zero {
            stage,
            part,
            comm,
            layout: layout.clone(),
            n_layers: cfg.n_layers,
            tied: cfg.tied_embeddings,
            full_params,
            full_grads,
            shard_params,
            shard_grads,
            gathered: vec![None; units],
            grad_bufs: vec![None; units],
            grads_in_shard,
            prefetched: (0..units).map(|_| None).collect(),
            pending: VecDeque::new(),
            reduce_in_backward: false,
            reduced: vec![false; units],
            peak_gathered: 0,
            pv,
            gv,
            device_units: None,
        };
        // None: the caller uploads them (new_offloaded_unfilled), or there is
        // nothing on the device to hold them (new_streamed).
        if let Some(w) = weights {
            z.set_weights(b, w)?;
        }
        z.zero_grads(b)?;
        Ok(z)
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    pub fn world(&self) -> usize {
        self.comm.world()
    }

    /// The layout this rank's optimizer works on: its shard (stage 0: the
    /// whole model).
    pub fn optimizer_layout(&self) -> ParamLayout {
        if self.stage == 0 { self.layout.clone() } else { self.part.shard_layout(&self.layout, self.rank()) }
    }

    /// Loads the full model's weights (layout order, the same on every rank).
    pub fn set_weights(&mut self, b: &mut B, weights: &[f32]) -> Result<()> {
        ensure!(weights.len() == self.layout.total, "{} weights for a layout of {}", weights.len(), self.layout.total);
        self.drop_prefetched(b)?;
        if let Some(full) = self.full_params {
            b.upload(View::whole(full, self.layout.total), weights)?;
            b.params_changed(View::whole(full, self.layout.total))?;
        }
        if self.stage > 0 {
            let r = self.rank();
            for u in 0..self.part.units.len() {
                let seg = self.part.segment(u, r);
                b.upload(self.shard_view(u), &weights[seg])?;
            }
        }
        Ok(())
    }

    /// The device buffer of the full model's fp32 weights (stages 0–2, and
    /// stage 3 at world 1, whose shard is the whole model in layout order;
    /// `None` at stage 3 over several ranks, which hold only shards): a
    /// checkpoint copies it to the host asynchronously.
    pub fn full_weights_view(&self) -> Option<View> {
        let whole = |buf| View::whole(buf, self.layout.total);
        self.full_params.map(whole).or_else(|| (self.stage == 3 && shard_is_layout(&self.part)).then(|| whole(self.shard_params)))
    }

    /// The full model's weights on the host, on every rank (a collective at
    /// stage 3 over several ranks, which gathers unit by unit).
    pub fn full_weights(&mut self, b: &mut B) -> Result<Vec<f32>> {
        let mut host = vec![0.0; self.layout.total];
        match self.full_weights_view() {
            Some(full) => b.download(full, &mut host)?,
            None => {
                for u in 0..self.part.units.len() {
                    let range = self.part.units[u].clone();
                    let buf = self.gather_unit_f32(b, u)?;
                    let out = b.download(View::whole(buf, range.len()), &mut host[range]);
                    b.free(buf);
                    out?;
                }
            }
        }
        Ok(host)
    }

    /// Values in this rank's master-weight shard (stage 0: every weight).
    pub fn shard_len(&self) -> usize {
        if self.stage == 0 { self.layout.total } else { self.part.shard_len(self.rank()) }
    }

    /// This rank's master weights (its shard, fp32) on the host; no
    /// collective.
    pub fn shard_weights(&self, b: &mut B) -> Result<Vec<f32>> {
        let n = self.shard_len();
        let mut host = vec![0.0; n];
        if n > 0 {
            b.download(View::whole(self.shard_params, n), &mut host)?;
        }
        Ok(host)
    }

    /// Puts back master weights taken with [`Zero::shard_weights`] and
    /// brings every copy up to date: stage 0 the device's derived copies
    /// (bf16), stages 1–2 the full weights (an all-gather: a collective
    /// every rank must join), stage 3 nothing more (gathered when used).
    pub fn set_shard_weights(&mut self, b: &mut B, shard: &[f32]) -> Result<()> {
        let n = self.shard_len();
        ensure!(shard.len() == n, "{} weights for a shard of {n}", shard.len());
        self.drop_prefetched(b)?;
        if n > 0 {
            b.upload(View::whole(self.shard_params, n), shard)?;
        }
        match self.stage {
            0 => b.params_changed(View::whole(self.shard_params, n)),
            _ => self.after_step(b),
        }
    }

    /// This rank's segment of unit `u` inside its shard.
    fn shard_view(&self, u: usize) -> View {
        let r = self.rank();
        View { buf: self.shard_params, off: self.part.shard_offset(u, r), len: self.part.counts[u][r] }
    }

    fn shard_grad_view(&self, u: usize) -> View {
        View { buf: self.shard_grads, ..self.shard_view(u) }
    }

    /// Rank's segment of unit `u` inside a buffer holding the whole unit.
    fn local_segment(&self, u: usize, buf: BufId) -> View {
        let seg = self.part.segment(u, self.rank());
        View { buf, off: seg.start - self.part.units[u].start, len: seg.len() }
    }

    /// A new fp32 buffer with unit `u`'s master weights gathered from
    /// every rank (checkpoints: exact values).
    fn gather_unit_f32(&mut self, b: &mut B, u: usize) -> Result<BufId> {
        let len = self.part.units[u].len();
        let buf = b.alloc(len, DType::F32)?;
        b.copy(self.local_segment(u, buf), self.shard_view(u))?;
        if let Err(e) = self.comm.all_gather(b, View::whole(buf, len), &self.part.counts[u], Elem::F32) {
            b.free(buf);
            return Err(e);
        }
        Ok(buf)
    }

    /// Starts gathering unit `u`'s weights for the passes into a new
    /// `Compute` buffer (bf16 on CUDA: this rank's fp32 segment converted
    /// by the copy, half the bytes on the wire).
    fn start_gather(&mut self, b: &mut B, u: usize) -> Result<(BufId, Ticket)> {
        let len = self.part.units[u].len();
        // Written whole: this rank's segment by the copy, the rest by the
        // all-gather (at world 1 the segment is the unit).
        let buf = b.alloc_for_overwrite(len, DType::Compute)?;
        let converted = b.copy(self.local_segment(u, buf), self.shard_view(u));
        let started = match self.world() {
            1 => converted.map(|_| Ticket::DONE),
            _ => converted.and_then(|_| self.comm.start_all_gather(b, View::whole(buf, len), &self.part.counts[u], Elem::F32)),
        };
        match started {
            Ok(t) => Ok((buf, t)),
            Err(e) => {
                b.free(buf);
                Err(e)
            }
        }
    }

    /// Units gathered now (fetched or prefetched).
    fn gathered_units(&self) -> usize {
        self.gathered.iter().filter(|g| g.is_some()).count() + self.prefetched.iter().filter(|p| p.is_some()).count()
    }

    /// The most units gathered at once since the last call (stage 3; the
    /// bound is [`MAX_GATHERED_UNITS`]).
    pub fn take_peak_gathered(&mut self) -> usize {
        std::mem::take(&mut self.peak_gathered)
    }

    fn note_gathered(&mut self) {
        self.peak_gathered = self.peak_gathered.max(self.gathered_units());
    }

    /// Waits for and frees every prefetched unit (their weights would be
    /// stale once the shard changes).
    fn drop_prefetched(&mut self, b: &mut B) -> Result<()> {
        for u in 0..self.prefetched.len() {
            if let Some((buf, ticket)) = self.prefetched[u].take() {
                let waited = self.comm.wait(b, ticket);
                b.free(buf);
                waited?;
            }
        }
        Ok(())
    }

    /// Stages 0–1: whether the backward about to run (the step's last
    /// micro-batch) reduces each unit's gradients as it completes; the
    /// trainer sets it per micro-batch (off: everything in `finish_grads`).
    pub fn reduce_during_backward(&mut self, on: bool) {
        self.reduce_in_backward = on;
    }

    /// Waits for the oldest gradient reductions until at most `keep` are in
    /// flight, and puts their results in place: stages 2–3 add the rank's
    /// segment to its shard and free the unit's buffer; stage 1 copies its
    /// segment into the shard.
    fn drain(&mut self, b: &mut B, keep: usize) -> Result<()> {
        while self.pending.len() > keep {
            match self.pending.pop_front().expect("pending is longer than keep") {
                Pending::Unit { u, buf, ticket } => {
                    let out = self.comm.wait(b, ticket).and_then(|_| b.accumulate(self.shard_grad_view(u), self.local_segment(u, buf)));
                    b.free(buf);
                    out?;
                }
                Pending::Full { u, ticket } => {
                    self.comm.wait(b, ticket)?;
                    if self.stage == 1 {
                        let full = self.full_grads.expect("stage 1 holds the full gradients");
                        b.copy(self.shard_grad_view(u), self.local_segment_full(u, full))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Stages 0–1: starts unit `u`'s reduction over its range of the full
    /// gradient buffer.
    fn start_full_reduction(&mut self, b: &mut B, u: usize) -> Result<()> {
        let full = self.full_grads.expect("stages 0-1 hold the full gradients");
        let range = self.part.units[u].clone();
        let unit = View { buf: full, off: range.start, len: range.len() };
        let ticket = if self.stage == 0 { self.comm.start_all_reduce_sum(b, unit)? } else { self.comm.start_reduce_scatter_sum(b, unit, &self.part.counts[u])? };
        self.pending.push_back(Pending::Full { u, ticket });
        self.reduced[u] = true;
        Ok(())
    }

    pub fn zero_grads(&mut self, b: &mut B) -> Result<()> {
        self.drain(b, 0)?;
        self.reduced.iter_mut().for_each(|r| *r = false);
        if let Some(g) = self.full_grads {
            b.fill(View::whole(g, self.layout.total), 0.0)?;
        }
        if self.stage > 0 {
            let n = self.part.shard_len(self.rank());
            if n > 0 {
                b.fill(View::whole(self.shard_grads, n), 0.0)?;
            }
        }
        Ok(())
    }

    /// After the last micro-batch: waits for the reductions started in
    /// backward; stage 0 all-reduces every gradient not yet reduced, stage 1
    /// reduce-scatters them into the shard (stages 2–3 did so as each
    /// unit's backward ended).
    pub fn finish_grads(&mut self, b: &mut B) -> Result<()> {
        self.drain(b, 0)?;
        self.drop_prefetched(b)?;
        self.reduce_in_backward = false;
        let reduced = std::mem::replace(&mut self.reduced, vec![false; self.part.units.len()]);
        let Some(full) = self.full_grads else { return Ok(()) };
        if self.world() == 1 {
            // The shard's gradients are the full buffer (see `build`).
            return Ok(());
        }
        for u in (0..self.part.units.len()).filter(|&u| !reduced[u]) {
            let range = self.part.units[u].clone();
            let unit = View { buf: full, off: range.start, len: range.len() };
            if self.stage == 0 {
                self.comm.all_reduce_sum(b, unit)?;
            } else {
                self.comm.reduce_scatter_sum(b, unit, &self.part.counts[u])?;
                b.copy(self.shard_grad_view(u), self.local_segment_full(u, full))?;
            }
        }
        Ok(())
    }

    /// Rank's segment of unit `u` inside a full-layout buffer.
    fn local_segment_full(&self, u: usize, buf: BufId) -> View {
        let seg = self.part.segment(u, self.rank());
        View { buf, off: seg.start, len: seg.len() }
    }

    /// The global gradient norm (every rank gets the same value).
    pub fn grad_norm(&mut self, b: &mut B) -> Result<f64> {
        let n = if self.stage == 0 { self.layout.total } else { self.part.shard_len(self.rank()) };
        let mut sq = [if n > 0 { b.sum_squares(View::whole(self.shard_grads, n))? } else { 0.0 }];
        if self.stage > 0 {
            self.comm.all_reduce_host(&mut sq)?;
        }
        Ok(sq[0].sqrt())
    }

    /// When the optimizer keeps gradients local (1-bit Adam after its
    /// freeze): the root mean square over ranks of each rank's own gradient
    /// norm (its share of the sum times the world size), the same value on
    /// every rank (one host all-reduce of 8 bytes), so that every rank's
    /// bad-step guard decides alike.
    pub fn local_grad_norm(&mut self, b: &mut B) -> Result<f64> {
        let Some(full) = self.full_grads else { anyhow::bail!("ZeRO stage {} keeps no full local gradients", self.stage) };
        let w = self.world() as f64;
        let mut sq = [b.sum_squares(View::whole(full, self.layout.total))? * w * w];
        self.comm.all_reduce_host(&mut sq)?;
        Ok((sq[0] / w).sqrt())
    }

    /// What an optimizer that communicates by itself needs for a step.
    pub fn dist_step(&mut self) -> crate::optim::DistStep<'_, B> {
        crate::optim::DistStep {
            comm: self.comm.as_mut(),
            local_grads: self.full_grads.map(|g| View::whole(g, self.layout.total)),
            shard: (self.stage > 0).then_some(&self.part),
        }
    }

    /// After the optimizer updated the shard: stages 1–2 bring every
    /// rank's full weights up to date (one process: the shard is the full
    /// buffer, only its bf16 copy may need it).
    pub fn after_step(&mut self, b: &mut B) -> Result<()> {
        self.drop_prefetched(b)?;
        let (Some(full), true) = (self.full_params, self.stage > 0) else { return Ok(()) };
        if full == self.shard_params {
            return b.params_changed(View::whole(full, self.layout.total));
        }
        for u in 0..self.part.units.len() {
            let range = self.part.units[u].clone();
            b.copy(self.local_segment_full(u, full), self.shard_view(u))?;
            let unit = View { buf: full, off: range.start, len: range.len() };
            self.comm.all_gather(b, unit, &self.part.counts[u], Elem::F32)?;
            b.params_changed(unit)?;
        }
        Ok(())
    }

    /// Mean of a host value over ranks.
    pub fn mean_host(&mut self, x: f64) -> Result<f64> {
        let mut v = [x];
        self.comm.all_reduce_host(&mut v)?;
        Ok(v[0] / self.world() as f64)
    }

    fn unit_index(&self, unit: Unit) -> usize {
        unit.index(self.n_layers)
    }

    /// For tied embeddings the head reads (and writes the gradient of) the
    /// embedding matrix: fetching the head fetches the embeddings too.
    fn with_tied(&self, unit: Unit) -> Vec<Unit> {
        if unit == Unit::Head && self.tied { vec![Unit::Embed, Unit::Head] } else { vec![unit] }
    }
}

impl<B: Backend> ParamStore<B> for Zero<B> {
    fn fetch(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        if self.stage < 3 {
            return Ok(());
        }
        for unit in self.with_tied(unit) {
            let u = self.unit_index(unit);
            if let Some((_, holders)) = self.gathered[u].as_mut() {
                *holders += 1;
                continue;
            }
            let (buf, ticket) = match self.prefetched[u].take() {
                Some(p) => p,
                None => self.start_gather(b, u)?,
            };
            self.gathered[u] = Some((buf, 1));
            self.pv.point_unit(&self.layout, unit, self.part.units[u].start, buf);
            self.note_gathered();
            self.comm.wait(b, ticket)?;
        }
        Ok(())
    }

    /// Stage 3 over several ranks: starts gathering `unit` unless it is
    /// gathered already or [`MAX_GATHERED_UNITS`] are (then its fetch
    /// gathers it). Only the unit itself: the tied embeddings of the head
    /// are gathered on fetch. At world 1 nothing (see the module doc).
    fn prefetch(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        let u = self.unit_index(unit);
        if self.stage < 3 || self.world() == 1 || self.gathered[u].is_some() || self.prefetched[u].is_some() || self.gathered_units() >= MAX_GATHERED_UNITS {
            return Ok(());
        }
        self.prefetched[u] = Some(self.start_gather(b, u)?);
        self.note_gathered();
        Ok(())
    }

    fn release(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        if self.stage < 3 {
            return Ok(());
        }
        for unit in self.with_tied(unit) {
            let u = self.unit_index(unit);
            if let Some((buf, holders)) = self.gathered[u].as_mut() {
                *holders -= 1;
                if *holders == 0 {
                    b.free(*buf);
                    self.gathered[u] = None;
                    self.pv.point_unit(&self.layout, unit, self.part.units[u].start, UNFETCHED);
                }
            }
        }
        Ok(())
    }

    fn fetch_grads(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        if self.stage < 2 || self.grads_in_shard {
            return Ok(());
        }
        for unit in self.with_tied(unit) {
            let u = self.unit_index(unit);
            if self.grad_bufs[u].is_none() {
                let len = self.part.units[u].len();
                let buf = b.alloc(len, DType::F32)?;
                b.fill(View::whole(buf, len), 0.0)?;
                self.grad_bufs[u] = Some(buf);
                self.gv.point_unit(&self.layout, unit, self.part.units[u].start, buf);
            }
        }
        Ok(())
    }

    /// Stages 2–3: starts the reduce-scatter of the unit's gradients and
    /// finishes the previous unit's (see the module doc). Stages 0–1 on
    /// the last micro-batch: starts the unit's reduction. (Tied
    /// embeddings: the head's call leaves the embeddings' buffer, still
    /// accumulating, to the embeddings' call.)
    fn grads_done(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        let u = self.unit_index(unit);
        // The embeddings end backward: nothing left to overlap with.
        let keep = if unit == Unit::Embed { 0 } else { 1 };
        if self.stage < 2 {
            if self.reduce_in_backward && self.world() > 1 && self.full_grads.is_some() && !self.reduced[u] {
                self.start_full_reduction(b, u)?;
            }
            return Ok(());
        }
        let Some(buf) = self.grad_bufs[u].take() else { return self.drain(b, keep) };
        self.gv.point_unit(&self.layout, unit, self.part.units[u].start, UNFETCHED);
        let len = self.part.units[u].len();
        match self.comm.start_reduce_scatter_sum(b, View::whole(buf, len), &self.part.counts[u]) {
            Ok(ticket) => self.pending.push_back(Pending::Unit { u, buf, ticket }),
            Err(e) => {
                b.free(buf);
                return Err(e);
            }
        }
        self.drain(b, keep)
    }

    fn params(&self) -> &ModelViews {
        &self.pv
    }
    fn grads(&self) -> &ModelViews {
        &self.gv
    }
}
