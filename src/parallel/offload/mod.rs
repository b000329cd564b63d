//! CPU and NVMe offload of the optimizer (ZeRO-Offload / Fuyou style).
//!
//! With `offload.optimizer = cpu | nvme` the device keeps only what the
//! passes use: the compute weights (fp32, plus the bf16 shadow on CUDA)
//! and the gradients of the units whose backward is running. The fp32
//! master weights and the optimizer state live per unit (embeddings, each
//! block, head) in host memory (`cpu`) or in one file per unit under
//! `offload.path` (`nvme`, see [`nvme`]).
//!
//! One step:
//! 1. backward: as each unit's gradients complete (`grads_done` of the last
//!    micro-batch) they are copied to the host and the unit's device
//!    buffer is freed;
//! 2. the unit's optimizer step runs on a worker thread
//!    ([`host_optimizer`], the CPU backend's AdamW / 8-bit AdamW kernels);
//! 3. the updated master weights are uploaded to the device (and the bf16
//!    shadow refreshed) before the step returns, so the next forward reads
//!    them.
//!
//! Gradient clipping needs the global norm before any update. With
//! `train.grad_clip = 0` nothing needs it, so each unit's step starts as
//! soon as its gradients are on the host and overlaps the rest of backward
//! (Fuyou). With clipping on, the order is DeepSpeed's: the gradients are
//! copied as backward goes, the norm is taken over all of them (bit for
//! bit the device's `sum_squares`), then the steps run (the NVMe tier has
//! already read the first units ahead while backward ran). Either way the
//! update is the plain run's, not a delayed or approximated one.
//!
//! `offload.params = cpu` streams each unit's compute weights to the device
//! per use from the cpu tier's hosts ([`stream`]); `offload.params = nvme`
//! from the nvme tier's files, read ahead into a small pool of host
//! buffers ([`stream_nvme`]; the files' layout is in [`nvme`]).
//!
//! One process only for now (`dist.world = 1`, ZeRO stage 0).

pub mod budget;
pub mod host_optimizer;
pub mod nvme;
pub mod store;
pub mod stream;
pub mod stream_nvme;
pub mod timing;

pub use store::{OffloadStore, RunStore};

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, BufId, CopyTicket, DType, HostSrc, View};
use crate::config::{Config, OptimizerConfig};
use crate::model::layout::ParamLayout;
use crate::model::store::{unit_ranges, Unit};
use crate::model::views::ModelViews;
use crate::optim::{Optimizer, StateTensor};
use crate::parallel::zero::Zero;
use anyhow::{anyhow, bail, ensure, Context, Result};
use host_optimizer::{host_optimizer, sum_squares_concat, unit_layout, HostOpt, UnitHost};
use nvme::StateFiles;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use timing::{ms_since, OffloadTimes};

/// Views of units whose gradients are not on the device point here.
const NOT_HERE: BufId = BufId(usize::MAX);

/// Which tier holds the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Cpu,
    Nvme,
}

/// Everything a worker needs to read a unit from its file.
struct Shared {
    cfg: OptimizerConfig,
    layouts: Vec<ParamLayout>,
    files: Option<StateFiles>,
    /// The threads the host optimizer's kernels run on: every core but
    /// one, which stays with the thread driving the device.
    pool: rayon::ThreadPool,
    /// The device holds bf16 weights: each step also rounds the unit's
    /// master weights into its bf16 image (set from the backend).
    bf16_images: AtomicBool,
}

/// Gradient copies in flight at once: unit u's gradients go to the host
/// while the backward of the next units runs; the host waits for the
/// oldest copy only when more than this many are in flight.
pub const COPY_LAG: usize = 2;

/// A unit's gradients on their way to the host.
struct Landing {
    u: usize,
    /// The device buffer being read (freed once the copy is done).
    buf: BufId,
    host: Vec<f32>,
    ticket: CopyTicket,
}

/// Host optimizer threads: the available cores minus one (at least one).
fn optimizer_pool() -> Result<rayon::ThreadPool> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(cores.saturating_sub(1).max(1))
        .thread_name(|i| format!("offload-opt-{i}"))
        .build()
        .context("cannot start the offload optimizer's threads")
}

struct Job {
    unit: usize,
    /// The resident unit (cpu tier); `None`: read it from its file.
    host: Option<UnitHost>,
    grads: Vec<f32>,
    lr: f32,
    clip: f32,
    /// The optimizer's scalar state before this step (a unit read from
    /// its file needs it).
    meta: serde_json::Value,
}

struct Done {
    unit: usize,
    host: UnitHost,
    grads: Vec<f32>,
    /// How long the unit's step took on the worker.
    opt_ms: f64,
}

enum Msg {
    /// Units read ahead from their files, in the order the steps will want them.
    Prefetch(Receiver<(usize, Result<UnitHost>)>),
    Job(Job),
}

pub struct Offload {
    pub tier: Tier,
    shared: Arc<Shared>,
    ranges: Vec<Range<usize>>,
    layout: ParamLayout,
    n_layers: usize,
    tied: bool,
    prefetch: usize,
    /// cpu tier: each unit's resident host (`None` while its step runs).
    hosts: Vec<Option<UnitHost>>,
    /// Each unit's gradient buffer on the device during backward.
    dev_grads: Vec<Option<BufId>>,
    gv: ModelViews,
    /// Each unit's complete gradients on the host, this step.
    host_grads: Vec<Option<Vec<f32>>>,
    /// Each unit's host gradient vector between steps, reused so that a
    /// step does not fault in fresh pages for every gradient.
    spare_grads: Vec<Vec<f32>>,
    last_micro: bool,
    /// The optimizer's scalar state (step count) after the latest step:
    /// the NVMe tier's files hold tensors only.
    meta: serde_json::Value,
    lr: f32,
    overlap: bool,
    in_flight: usize,
    jobs: Option<Sender<Msg>>,
    done: Receiver<Result<Done>>,
    worker: Option<JoinHandle<()>>,
    /// This step's host-side phases.
    times: OffloadTimes,
    /// Gradient copies in flight, oldest first.
    landing: VecDeque<Landing>,
    /// Weight uploads in flight and the hosts they read from.
    uploading: Vec<(CopyTicket, UnitHost)>,
    /// Host ranges this offload had the backend pin (start addresses).
    pinned: HashSet<usize>,
    /// `offload.params = cpu | nvme`: the weights stream to the device per unit.
    stream: Option<stream::Streamed>,
    /// `offload.params = nvme`: the weights stream from the units' files.
    disk: Option<stream_nvme::DiskStream>,
    /// The disk stream's counters when this step began.
    reads_at_begin: stream_nvme::ReadStats,
    /// The units' bf16 images match their master weights (CUDA, before
    /// the first step and after the weights were replaced).
    images_ready: bool,
    /// `debug.offload_fp32_weights`: the device holds fp32 weights.
    fp32_device: bool,
}

impl Offload {
    /// Master weights `weights` (full layout) and fresh optimizer state,
    /// in host memory or (nvme) in a new scratch folder under `offload.path`.
    pub fn new(cfg: &Config, layout: &ParamLayout, weights: &[f32]) -> Result<Self> {
        ensure!(weights.len() == layout.total, "{} initial weights for a layout of {}", weights.len(), layout.total);
        let params = cfg.offload.params.as_str();
        ensure!(params == "none" || params == cfg.offload.optimizer, "offload.params = {params} needs offload.optimizer = {params} (the weights stream from where the optimizer keeps the master weights)");
        let tier = match cfg.offload.optimizer.as_str() {
            "cpu" => Tier::Cpu,
            "nvme" => Tier::Nvme,
            other => bail!("offload.optimizer = {other}: nothing to offload"),
        };
        let ranges = unit_ranges(&cfg.model, layout);
        let layouts: Vec<ParamLayout> = ranges.iter().map(|r| unit_layout(layout, r)).collect();
        let files = match tier {
            // params = nvme on a bf16 device: the files lead with bf16 images.
            Tier::Nvme => Some(StateFiles::create(&scratch_dir(&cfg.offload.path), params == "nvme" && cfg.device == "cuda")?),
            Tier::Cpu => None,
        };
        let mut hosts = vec![];
        for (u, l) in layouts.iter().enumerate() {
            let mut host = UnitHost::new(u, &cfg.optimizer, l)?;
            host.set_master(&weights[ranges[u].clone()])?;
            match &files {
                Some(f) => {
                    f.write(&mut host)?;
                    hosts.push(None);
                }
                None => hosts.push(Some(host)),
            }
        }
        let shared = Arc::new(Shared { cfg: cfg.optimizer.clone(), layouts, files, pool: optimizer_pool()?, bf16_images: AtomicBool::new(false) });
        let (jobs, job_rx) = channel::<Msg>();
        let (done_tx, done) = channel();
        let sh = shared.clone();
        let worker = std::thread::Builder::new()
            .name("offload-optimizer".into())
            .spawn(move || worker_loop(sh, job_rx, done_tx))
            .context("cannot start the offload optimizer thread")?;
        let units = ranges.len();
        let disk = if params == "nvme" { Some(disk_stream(&shared, &ranges, cfg)?) } else { None };
        Ok(Offload {
            tier,
            shared,
            ranges,
            layout: layout.clone(),
            n_layers: cfg.model.n_layers,
            tied: cfg.model.tied_embeddings,
            prefetch: cfg.offload.prefetch,
            hosts,
            dev_grads: vec![None; units],
            gv: ModelViews::new(layout, NOT_HERE, cfg.model.n_layers),
            host_grads: vec![None; units],
            spare_grads: vec![Vec::new(); units],
            last_micro: true,
            meta: serde_json::Value::Null,
            lr: 0.0,
            overlap: false,
            in_flight: 0,
            jobs: Some(jobs),
            done,
            worker: Some(worker),
            times: OffloadTimes::default(),
            landing: VecDeque::new(),
            uploading: Vec::new(),
            pinned: HashSet::new(),
            stream: (params != "none").then(|| stream::Streamed::new(layout, cfg.model.n_layers, units)),
            disk,
            reads_at_begin: Default::default(),
            images_ready: false,
            fp32_device: cfg.debug.offload_fp32_weights,
        })
    }

    /// The NVMe tier's scratch folder.
    pub fn files_dir(&self) -> Option<&std::path::Path> {
        self.shared.files.as_ref().map(|f| f.dir.as_path())
    }

    /// Units whose master weights and state are in host memory now.
    pub fn resident_units(&self) -> usize {
        self.hosts.iter().filter(|h| h.is_some()).count()
    }

    /// `offload.params = nvme`: units whose compute weights are in host
    /// memory now (read ahead, or lent to an upload), and the reads so far.
    pub fn streamed_from_disk(&self) -> Option<(usize, stream_nvme::ReadStats)> {
        self.disk.as_ref().map(|d| (d.host_units(), d.stats()))
    }

    /// Starts a step at learning rate `lr`. `grad_clip = 0` (no clipping)
    /// lets each unit's step overlap the rest of backward.
    pub fn begin_step(&mut self, lr: f32, grad_clip: f32) -> Result<()> {
        ensure!(self.in_flight == 0, "offload: a step begins while {} unit steps are still running", self.in_flight);
        self.lr = lr;
        self.times = OffloadTimes::default();
        self.overlap = grad_clip == 0.0;
        self.last_micro = true;
        if let Some(d) = self.disk.as_mut() {
            d.set_training(true);
            self.reads_at_begin = d.stats();
        }
        if self.shared.files.is_some() {
            let order: Vec<usize> = (0..self.ranges.len()).rev().collect();
            let (tx, rx) = sync_channel(self.prefetch);
            let sh = self.shared.clone();
            let meta = self.meta.clone();
            std::thread::Builder::new()
                .name("offload-prefetch".into())
                .spawn(move || {
                    let files = sh.files.as_ref().expect("nvme tier has files");
                    for u in order {
                        if tx.send((u, files.read(u, &sh.cfg, &sh.layouts[u], &meta))).is_err() {
                            return;
                        }
                    }
                })
                .context("cannot start the offload prefetch thread")?;
            self.send(Msg::Prefetch(rx))?;
        }
        Ok(())
    }

    /// Whether the coming micro-batch is the step's last (gradients are
    /// complete only after it).
    pub fn set_last_micro(&mut self, last: bool) {
        self.last_micro = last;
        if let Some(d) = self.disk.as_mut() {
            d.set_last_micro(last);
        }
    }

    fn send(&mut self, msg: Msg) -> Result<()> {
        let tx = self.jobs.as_ref().ok_or_else(|| anyhow!("offload worker is gone"))?;
        tx.send(msg).map_err(|_| anyhow!("the offload optimizer thread stopped (an earlier error or panic)"))
    }

    fn dispatch<B: Backend>(&mut self, b: &mut B, u: usize, grads: Vec<f32>, clip: f32) -> Result<()> {
        // A streamed unit's upload reads the host the step will change.
        if let Some(s) = self.stream.as_mut() {
            s.settle(b, u)?;
        }
        // Its file is about to be rewritten: no pass reads it meanwhile.
        if let Some(d) = self.disk.as_mut() {
            d.begin_unit_step(u)?;
        }
        let host = self.hosts[u].take();
        ensure!(host.is_some() || self.tier == Tier::Nvme, "offload: unit {u} is already being stepped");
        self.send(Msg::Job(Job { unit: u, host, grads, lr: self.lr, clip, meta: self.meta.clone() }))?;
        self.in_flight += 1;
        Ok(())
    }

    /// After the last micro-batch: the gradient norm (the plain run's,
    /// bit for bit), every unit's step done and its weights uploaded into
    /// `zero`'s device weights. Returns the norm.
    pub fn finish<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, grad_clip: f32) -> Result<f32> {
        let idle = match self.stream.as_mut() {
            Some(s) => s.clear_idle(b),
            None => Ok(()),
        };
        if let (Some(d), Some(s)) = (self.disk.as_mut(), self.stream.as_ref()) {
            d.recycle(s);
        }
        if let Err(e) = idle.and_then(|_| self.land_all(b)) {
            self.abandon_copies(b);
            return Err(e);
        }
        let units = self.ranges.len();
        let mut norm = None;
        if !self.overlap {
            let parts = (0..units).map(|u| self.host_grads[u].as_deref().ok_or_else(|| anyhow!("offload: unit {u} has no gradients this step"))).collect::<Result<Vec<_>>>()?;
            let n = sum_squares_concat(&parts).sqrt() as f32;
            let clip = if grad_clip > 0.0 && n > grad_clip { grad_clip / n } else { 1.0 };
            for u in (0..units).rev() {
                let g = self.host_grads[u].take().expect("checked above");
                self.dispatch(b, u, g, clip)?;
            }
            norm = Some(n);
        }
        let mut first_err = None;
        while self.in_flight > 0 {
            let waited = Instant::now();
            let got = self.done.recv();
            self.times.offload_wait_ms += ms_since(waited);
            let got = got.map_err(|_| anyhow!("the offload optimizer thread stopped"));
            self.in_flight -= 1;
            match got.and_then(|r| r).and_then(|d| self.install(b, zero, d)) {
                Ok(()) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if first_err.is_none() {
            first_err = self.finish_uploads(b).err();
        }
        if let Some(e) = first_err {
            self.abandon_copies(b);
            return Err(e);
        }
        let norm = match norm {
            Some(n) => n,
            None => {
                let parts = (0..units).map(|u| self.host_grads[u].as_deref().ok_or_else(|| anyhow!("offload: unit {u} has no gradients this step"))).collect::<Result<Vec<_>>>()?;
                sum_squares_concat(&parts).sqrt() as f32
            }
        };
        for (spare, g) in self.spare_grads.iter_mut().zip(self.host_grads.iter_mut()) {
            if let Some(g) = g.take() {
                *spare = g;
            }
        }
        if let Some(d) = self.disk.as_mut() {
            d.set_training(false);
            let (now, then) = (d.stats(), self.reads_at_begin);
            self.times.offload_read_mb = (now.bytes - then.bytes) as f64 / 1e6;
            self.times.offload_read_wait_ms = now.wait_ms - then.wait_ms;
        }
        Ok(norm)
    }

    /// A stepped unit: its weights to the device, its host kept (cpu tier).
    fn install<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, d: Done) -> Result<()> {
        let r = self.ranges[d.unit].clone();
        let view = View { buf: zero.shard_params, off: r.start, len: r.len() };
        let t = Instant::now();
        self.times.offload_opt_ms += d.opt_ms;
        self.meta = d.host.opt.meta();
        if self.overlap {
            self.host_grads[d.unit] = Some(d.grads);
        } else {
            self.spare_grads[d.unit] = d.grads;
        }
        let host = d.host;
        if self.stream.is_some() {
            // The weights go to the device when the next pass fetches them
            // (params = nvme: from the file the step wrote).
            let u = host.unit;
            match self.disk.as_mut() {
                Some(d) => d.end_unit_step(u),
                None => self.hosts[u] = Some(host),
            }
            self.times.offload_h2d_ms += ms_since(t);
            return Ok(());
        }
        let src = if b.compute_is_bf16() && !self.fp32_device { HostSrc::Bf16(&host.image) } else { HostSrc::F32(host.master()) };
        self.pin(b, src)?;
        // SAFETY: `host` (and so `src`) stays in `uploading`, unchanged,
        // until finish_uploads waits for the ticket.
        let ticket = unsafe { b.upload_start(view, src) }?;
        self.uploading.push((ticket, host));
        b.params_changed(view)?;
        self.times.offload_h2d_ms += ms_since(t);
        Ok(())
    }

    /// Waits for the weight uploads; the cpu tier's hosts go back home.
    fn finish_uploads<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        let t = Instant::now();
        let mut first_err = None;
        for (ticket, host) in std::mem::take(&mut self.uploading) {
            if let Err(e) = b.copy_wait(ticket) {
                first_err = first_err.or(Some(e));
            }
            if self.tier == Tier::Cpu {
                let u = host.unit;
                self.hosts[u] = Some(host);
            }
        }
        self.times.offload_h2d_ms += ms_since(t);
        first_err.map_or(Ok(()), Err)
    }

    /// Page-locks a long-lived host range (cpu tier only: the NVMe tier's
    /// units are read into fresh memory every step).
    fn pin<B: Backend>(&mut self, b: &mut B, src: HostSrc<'_>) -> Result<()> {
        let (ptr, bytes) = match src {
            HostSrc::F32(v) => (v.as_ptr() as *const u8, std::mem::size_of_val(v)),
            HostSrc::Bf16(v) => (v.as_ptr() as *const u8, std::mem::size_of_val(v)),
        };
        if self.tier != Tier::Cpu || bytes == 0 || self.pinned.contains(&(ptr as usize)) {
            return Ok(());
        }
        // SAFETY: the range belongs to a unit's host (its gradient vector,
        // master or image), allocated once and kept for the whole run; the
        // backend unpins what is left at its end.
        unsafe { b.pin_host(ptr, bytes) }?;
        self.pinned.insert(ptr as usize);
        Ok(())
    }

    /// Waits for the oldest gradient copy: frees its device buffer and
    /// hands the gradients on (a step now, or kept for the norm).
    fn land_oldest<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        let Some(l) = self.landing.pop_front() else { return Ok(()) };
        let t = Instant::now();
        let out = b.copy_wait(l.ticket);
        b.free(l.buf);
        self.times.offload_d2h_ms += ms_since(t);
        out?;
        if self.overlap {
            self.dispatch(b, l.u, l.host, 1.0)
        } else {
            self.host_grads[l.u] = Some(l.host);
            Ok(())
        }
    }

    fn land_all<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        while !self.landing.is_empty() {
            self.land_oldest(b)?;
        }
        Ok(())
    }

    /// After an error: no copy may still write into or read from host
    /// memory that is about to be dropped.
    fn abandon_copies<B: Backend>(&mut self, b: &mut B) {
        for l in std::mem::take(&mut self.landing) {
            let _ = b.copy_wait(l.ticket);
            b.free(l.buf);
        }
        for (ticket, _) in std::mem::take(&mut self.uploading) {
            let _ = b.copy_wait(ticket);
        }
    }

    /// This step's host-side phases (complete after [`Offload::finish`]).
    pub fn times(&self) -> OffloadTimes {
        self.times
    }

    /// Replaces the master weights (init from Hugging Face, resume).
    pub fn set_weights(&mut self, weights: &[f32]) -> Result<()> {
        ensure!(weights.len() == self.layout.total, "{} weights for a layout of {}", weights.len(), self.layout.total);
        for u in 0..self.ranges.len() {
            let w = &weights[self.ranges[u].clone()];
            self.with_unit(u, |h| h.set_master(w))?;
        }
        self.images_ready = false;
        Ok(())
    }

    /// The master weights of the whole model (layout order): what a
    /// checkpoint saves (the device may hold only their bf16 rounding).
    pub fn master_weights(&mut self) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.layout.total];
        for u in 0..self.ranges.len() {
            let r = self.ranges[u].clone();
            self.with_unit(u, |h| {
                out[r].copy_from_slice(h.master());
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Runs `f` on unit `u`'s host (read from and written back to its file
    /// in the nvme tier). Not while steps run.
    fn with_unit(&mut self, u: usize, f: impl FnOnce(&mut UnitHost) -> Result<()>) -> Result<()> {
        ensure!(self.in_flight == 0, "offload: state accessed while unit steps run");
        if let Some(d) = self.disk.as_mut() {
            d.forget(u)?;
        }
        match (&mut self.hosts[u], &self.shared.files) {
            (Some(h), _) => f(h),
            (None, Some(files)) => {
                let mut h = files.read(u, &self.shared.cfg, &self.shared.layouts[u], &self.meta)?;
                f(&mut h)?;
                files.write(&mut h).map(|_| ())
            }
            (None, None) => bail!("offload: unit {u}'s state is missing"),
        }
    }

    /// The whole model's optimizer, assembled on a host backend of its
    /// own from every unit's state: what a checkpoint saves (the same
    /// tensors and names as the plain run's optimizer).
    pub fn full_optimizer(&mut self) -> Result<(CpuBackend, HostOpt)> {
        let mut th = CpuBackend::new();
        let mut full = host_optimizer(&mut th, &self.shared.cfg, &self.layout)?;
        let targets = full.state_tensors();
        let mut offs = vec![0usize; targets.len()];
        let mut meta = None;
        for u in 0..self.ranges.len() {
            self.with_unit(u, |h| {
                let parts = h.opt.state_tensors();
                check_names(&targets, &parts)?;
                for (i, (t, p)) in targets.iter().zip(&parts).enumerate() {
                    copy_state(&mut h.h, p.view, &mut th, t.view.sub(offs[i], p.view.len), t.dtype)?;
                    offs[i] += p.view.len;
                }
                meta.get_or_insert_with(|| h.opt.meta());
                Ok(())
            })?;
        }
        for (t, o) in targets.iter().zip(&offs) {
            ensure!(*o == t.view.len, "offload: units hold {o} elements of {} but the model's optimizer has {}", t.name, t.view.len);
        }
        if let Some(m) = meta {
            full.load_meta(&m)?;
        }
        Ok((th, full))
    }

    /// Splits a whole-model optimizer's state (restored from a
    /// checkpoint) into the units.
    pub fn load_optimizer(&mut self, th: &mut CpuBackend, full: &HostOpt) -> Result<()> {
        let sources = full.state_tensors();
        let meta = full.meta();
        let mut offs = vec![0usize; sources.len()];
        for u in 0..self.ranges.len() {
            self.with_unit(u, |h| {
                let parts = h.opt.state_tensors();
                check_names(&sources, &parts)?;
                for (i, (s, p)) in sources.iter().zip(&parts).enumerate() {
                    copy_state(th, s.view.sub(offs[i], p.view.len), &mut h.h, p.view, s.dtype)?;
                    offs[i] += p.view.len;
                }
                h.opt.load_meta(&meta)
            })?;
        }
        self.meta = meta;
        Ok(())
    }

    fn unit_index(&self, unit: Unit) -> usize {
        unit.index(self.n_layers)
    }

    /// For tied embeddings the head writes the embedding matrix's gradient.
    fn with_tied(&self, unit: Unit) -> Vec<Unit> {
        if unit == Unit::Head && self.tied { vec![Unit::Embed, Unit::Head] } else { vec![unit] }
    }

    /// Unit `unit`'s gradient buffer on the device (tests).
    pub fn device_grads(&self, unit: Unit) -> Option<View> {
        let u = self.unit_index(unit);
        self.dev_grads[u].map(|buf| View::whole(buf, self.ranges[u].len()))
    }

    pub fn fetch_grads<B: Backend>(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        for unit in self.with_tied(unit) {
            let u = self.unit_index(unit);
            if self.dev_grads[u].is_none() {
                let len = self.ranges[u].len();
                let buf = b.alloc(len.max(1), DType::F32)?;
                b.fill(View::whole(buf, len), 0.0)?;
                self.dev_grads[u] = Some(buf);
                self.gv.point_unit(&self.layout, unit, self.ranges[u].start, buf);
            }
        }
        Ok(())
    }

    /// After the last micro-batch: the unit's gradients to the host, its
    /// device buffer freed, its step started (no clipping) or queued.
    pub fn grads_done<B: Backend>(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        if !self.last_micro {
            return Ok(());
        }
        let u = self.unit_index(unit);
        let Some(buf) = self.dev_grads[u].take() else { return Ok(()) };
        self.shared.bf16_images.store(b.compute_is_bf16(), Ordering::Relaxed);
        self.gv.point_unit(&self.layout, unit, self.ranges[u].start, NOT_HERE);
        let t = Instant::now();
        let mut host = std::mem::take(&mut self.spare_grads[u]);
        host.resize(self.ranges[u].len(), 0.0);
        let started = self.pin(b, HostSrc::F32(&host)).and_then(|_| {
            // SAFETY: `host` moves into `landing` (its heap memory does not
            // move) and `buf` is freed only after copy_wait (land_oldest,
            // abandon_copies).
            unsafe { b.download_start(View::whole(buf, host.len()), &mut host) }
        });
        let ticket = match started {
            Ok(t) => t,
            Err(e) => {
                b.free(buf);
                return Err(e);
            }
        };
        self.landing.push_back(Landing { u, buf, host, ticket });
        self.times.offload_d2h_ms += ms_since(t);
        // Copies already done (the CPU backend's always are) land at once.
        while self.landing.len() > COPY_LAG || self.landing.front().is_some_and(|l| l.ticket == CopyTicket::DONE) {
            self.land_oldest(b)?;
        }
        Ok(())
    }

    /// `offload.params = cpu`: brings `unit` (and, tied, the embeddings)
    /// to the device from the host, and the next unit ahead.
    fn fetch_streamed<B: Backend>(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        let bf16 = b.compute_is_bf16();
        if self.disk.is_some() {
            let images = self.shared.files.as_ref().is_some_and(|f| f.images());
            ensure!(images == bf16, "offload.params = nvme: the files hold {} weights but the device computes in {} (device = cuda computes in bf16)", if images { "bf16" } else { "fp32" }, if bf16 { "bf16" } else { "fp32" });
            let units: Vec<usize> = self.with_tied(unit).into_iter().map(|v| v.index(self.n_layers)).collect();
            let (d, s) = (self.disk.as_mut().expect("checked"), self.stream.as_mut().expect("params = nvme streams"));
            return d.fetch(b, s, &units);
        }
        if bf16 && !self.images_ready {
            for h in self.hosts.iter_mut().flatten() {
                h.refresh_image();
            }
            self.images_ready = true;
            // Page-locked once: the images keep their memory for the run.
            let images: Vec<(*const u16, usize)> = self.hosts.iter().flatten().map(|h| (h.image.as_ptr(), h.image.len())).collect();
            for (p, n) in images {
                // SAFETY: a unit's image, alive and not resized for the run.
                self.pin(b, HostSrc::Bf16(unsafe { std::slice::from_raw_parts(p, n) }))?;
            }
        }
        for unit in self.with_tied(unit) {
            let u = self.unit_index(unit);
            let (hosts, ranges) = (&self.hosts, &self.ranges);
            let src_of = |v: usize| {
                hosts[v].as_ref().map(|h| (ranges[v].start, if bf16 { HostSrc::Bf16(&h.image) } else { HostSrc::F32(h.master()) }))
            };
            self.stream.as_mut().expect("streaming").fetch(b, u, src_of)?;
        }
        Ok(())
    }

    /// The store the passes run with: `zero` (stage 0, one process) holds
    /// the device weights, this offload the gradients.
    pub fn store<'a, B: Backend>(&'a mut self, zero: &'a mut Zero<B>) -> OffloadStore<'a, B> {
        OffloadStore { zero, off: self }
    }
}

impl Drop for Offload {
    fn drop(&mut self) {
        // The parameter reader stops before the files go.
        self.disk = None;
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        if let Some(f) = &self.shared.files {
            let _ = std::fs::remove_dir_all(&f.dir);
        }
    }
}

/// A fresh scratch folder under `offload.path` for this process.
fn scratch_dir(path: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::path::Path::new(path).join(format!("{}{}-{n}", nvme::SCRATCH_PREFIX, std::process::id()))
}

/// `offload.params = nvme`: the parameter stream over `shared`'s files.
fn disk_stream(shared: &Arc<Shared>, ranges: &[Range<usize>], cfg: &Config) -> Result<stream_nvme::DiskStream> {
    let files = shared.files.as_ref().ok_or_else(|| anyhow!("offload.params = nvme needs offload.optimizer = nvme"))?;
    let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    let pass_bytes = lens.iter().map(|&n| files.pass_bytes(n)).max().unwrap_or(0);
    let (sh, sizes) = (shared.clone(), lens.clone());
    let read: stream_nvme::ReadFn = Box::new(move |u, buf| sh.files.as_ref().expect("nvme tier has files").read_pass(u, sizes[u], buf));
    let starts = ranges.iter().map(|r| r.start).collect();
    stream_nvme::DiskStream::new(lens, starts, files.images(), pass_bytes, cfg.offload.prefetch, cfg.model.tied_embeddings, read)
}

fn check_names(full: &[StateTensor], unit: &[StateTensor]) -> Result<()> {
    let (a, b): (Vec<_>, Vec<_>) = (full.iter().map(|t| &t.name).collect(), unit.iter().map(|t| &t.name).collect());
    ensure!(a == b, "offload: a unit's optimizer state {b:?} does not match the model's {a:?}");
    Ok(())
}

/// Copies a state tensor's values between two host backends.
fn copy_state(from: &mut CpuBackend, src: View, to: &mut CpuBackend, dst: View, dtype: DType) -> Result<()> {
    ensure!(src.len == dst.len, "offload: state copy of {} into {} elements", src.len, dst.len);
    if src.len == 0 {
        return Ok(());
    }
    match dtype {
        DType::U8 => {
            let mut tmp = vec![0u8; src.len];
            from.download_u8(src, &mut tmp)?;
            to.upload_u8(dst, &tmp)
        }
        _ => {
            let mut tmp = vec![0.0f32; src.len];
            from.download(src, &mut tmp)?;
            to.upload(dst, &tmp)
        }
    }
}

fn worker_loop(sh: Arc<Shared>, jobs: Receiver<Msg>, done: Sender<Result<Done>>) {
    let mut ahead: Option<Receiver<(usize, Result<UnitHost>)>> = None;
    let mut stash: HashMap<usize, Result<UnitHost>> = HashMap::new();
    for msg in jobs {
        let job = match msg {
            Msg::Prefetch(rx) => {
                ahead = Some(rx);
                stash.clear();
                continue;
            }
            Msg::Job(job) => job,
        };
        let out = run_job(&sh, job, &mut ahead, &mut stash);
        if done.send(out).is_err() {
            return;
        }
    }
}

fn run_job(sh: &Shared, job: Job, ahead: &mut Option<Receiver<(usize, Result<UnitHost>)>>, stash: &mut HashMap<usize, Result<UnitHost>>) -> Result<Done> {
    let u = job.unit;
    let mut host = match job.host {
        Some(h) => h,
        None => {
            let files = sh.files.as_ref().ok_or_else(|| anyhow!("offload: unit {u} is neither in memory nor in a file"))?;
            // Take it from the read-ahead window, else read it now.
            while !stash.contains_key(&u) {
                match ahead.as_ref().map(|rx| rx.recv()) {
                    Some(Ok((v, h))) => {
                        stash.insert(v, h);
                    }
                    _ => {
                        *ahead = None;
                        stash.insert(u, files.read(u, &sh.cfg, &sh.layouts[u], &job.meta));
                    }
                }
            }
            stash.remove(&u).expect("just checked")?
        }
    };
    let t = Instant::now();
    // A file with an image section gets it from `files.write`.
    let bf16 = sh.bf16_images.load(Ordering::Relaxed) && !sh.files.as_ref().is_some_and(|f| f.images());
    let (out, grads) = sh.pool.install(|| {
        let out = host.step(job.grads, job.lr, job.clip);
        if bf16 && out.0.is_ok() {
            host.refresh_image();
        }
        out
    });
    out.with_context(|| format!("offloaded optimizer step of unit {u}"))?;
    if let Some(files) = &sh.files {
        files.write(&mut host)?;
    }
    Ok(Done { unit: u, host, grads, opt_ms: ms_since(t) })
}

/// Stands in for the device optimizer of an offloaded run (the state is
/// in the [`Offload`]): no state on the device, and a step is an error.
pub struct OnHost {
    pub name: &'static str,
}

impl<B: Backend> Optimizer<B> for OnHost {
    fn name(&self) -> &'static str {
        self.name
    }
    fn step(&mut self, _: &mut B, _: BufId, _: BufId, _: f32, _: f32) -> Result<()> {
        bail!("the optimizer of an offloaded run steps on the host (parallel::offload), not on the device")
    }
    fn state_tensors(&self) -> Vec<StateTensor> {
        vec![]
    }
    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": self.name, "offloaded": true })
    }
    fn load_meta(&mut self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    fn state_bytes(&self) -> u64 {
        0
    }
}
