//! CPU and NVMe offload of the optimizer (ZeRO-Offload / Fuyou style).
//!
//! With `offload.optimizer = cpu | nvme` the device keeps only what the
//! passes use: the compute weights (fp32, plus the bf16 shadow on CUDA)
//! and the gradients of the units whose backward is running. The fp32
//! master weights and the optimizer state live per unit (embeddings, each
//! block, head) in host memory (`cpu`) or in one file per unit under
//! `offload.path` (`nvme`, see [`nvme`]: read ahead of the steps, and
//! written behind them by a writer thread, [`write_behind`]; a step ends
//! with its writes on disk).
//!
//! One step:
//! 1. backward: as each unit's gradients complete (`grads_done` of the last
//!    micro-batch) they are copied to the host, into one of a few pooled
//!    host buffers ([`host_pool`]), and the unit's device buffer is freed;
//! 2. the unit's optimizer step runs on a worker thread
//!    ([`host_optimizer`], the CPU backend's AdamW / 8-bit AdamW kernels),
//!    reading the gradients in place; on CUDA it then writes the unit's
//!    bf16 weights into the same buffer;
//! 3. the updated weights are uploaded to the device from there (the bf16
//!    image) or from the master weights (fp32 devices), and the buffer goes
//!    back to the pool. Every upload is waited for before the step
//!    returns, so the next forward reads the new weights.
//!
//! Host memory is the master weights and the state plus [`POOL_BUFFERS`]
//! buffers of the biggest unit — not a gradient copy (and a bf16 image)
//! of every unit. `offload.params = cpu` keeps each unit's bf16 image,
//! since the weights are uploaded from it on every pass; `offload.params
//! = nvme` keeps none (the passes read them from the files into a pool of
//! their own, [`stream_nvme`]).
//!
//! Gradient clipping needs the global norm before any update. With
//! `train.grad_clip = 0` nothing needs it, so each unit's step starts as
//! soon as its gradients are on the host and overlaps the rest of backward
//! (Fuyou); when the pool runs dry, backward waits for the worker, and a
//! stepped unit's upload then starts during backward (on CUDA the compute
//! stream waits for it: the host optimizer is the slower side anyway).
//! The reported norm is summed from the units as they pass ([`grad_norm`]).
//! With clipping on, the gradients stay on the device — one buffer for
//! the whole model, as the plain run's: the device holds only bf16 weights
//! besides, so it has room — until backward ends; the norm is the
//! device's `sum_squares` over that buffer (the plain run's, bit for bit),
//! then the units stream through the pool: copy to the host, step, upload,
//! a few in flight. Either way the update is the plain run's, not a
//! delayed or approximated one.
//!
//! A step the bad-step guard skips (`train::offload_step`) is
//! [`Offload::discard`]ed before any unit steps: before the last
//! micro-batch's backward (a bad loss), or with clipping after backward
//! ([`Offload::norm_before_update`]: a non-finite norm). Its gradients are
//! dropped (each unit's squares kept for the norm the step reports) and
//! nothing is stepped. Overlapped, a unit's step is the only place its
//! gradients are seen before the update: one whose gradients are not
//! finite is not stepped and the step fails ([`not_finite_unit`]), since
//! the units stepped before it cannot be taken back.
//!
//! The two tiers mix (ZeRO-Infinity style): with `offload.optimizer = nvme`
//! and `offload.host_gb > 0` the units that budget holds ([`placement`]:
//! the largest first) stay resident in host memory as the cpu tier keeps
//! them (page-locked the same way, no file) and the rest live in their
//! files; each step reads and rewrites only those. Every path above is per
//! unit, so a unit behaves as its tier's would; the checkpoint accessors
//! (`with_unit`) read either kind.
//!
//! `offload.params = cpu` streams each unit's compute weights to the device
//! per use from the cpu tier's hosts ([`stream`]); `offload.params = nvme`
//! from the nvme tier's files, read ahead into a small pool of host
//! buffers ([`stream_nvme`]; the files' layout is in [`nvme`]) — with
//! `offload.host_gb`, the resident units' from the bf16 image each keeps
//! in host memory, as `params = cpu` does.
//!
//! A third tier on the device ([`gpu_tier`], `offload.gpu_gb`): the units
//! that budget takes (largest first, before host memory and files) keep
//! master weights and optimizer state on the device, next to the compute
//! weights. Their gradients never leave it: overlapped, a unit steps on
//! the device as soon as its gradients are complete (its part of the norm
//! taken there); with clipping, after the norm, from its part of the
//! whole-model buffer. The step rounds the master into the compute
//! weights. Checkpoints read and write them through a host copy of one
//! unit at a time (the `*_on` accessors, which take the backend).
//!
//! One process only for now (`dist.world = 1`, ZeRO stage 0).

pub mod budget;
pub mod direct_io;
pub mod gpu_tier;
pub mod grad_norm;
pub mod host_optimizer;
pub mod host_pool;
pub mod io_bufs;
pub mod nvme;
pub mod placement;
pub mod store;
pub mod stream;
pub mod stream_nvme;
pub mod timing;
pub mod write_behind;

pub use store::{OffloadStore, RunStore};

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, BufId, CopyTicket, DType, HostSrc, View};
use crate::config::{Config, OptimizerConfig};
use crate::model::init::InitWeights;
use crate::model::layout::ParamLayout;
use crate::model::store::{unit_ranges, Unit};
use crate::model::views::ModelViews;
use crate::optim::{Optimizer, StateTensor};
use crate::parallel::zero::Zero;
use anyhow::{anyhow, bail, ensure, Context, Result};
use grad_norm::UnitSquares;
use host_optimizer::{host_optimizer, unit_layout, HostOpt, UnitHost};
use host_pool::HostPool;
pub use host_pool::POOL_BUFFERS;
use nvme::StateFiles;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use timing::{ms_since, OffloadTimes};

/// Views of units whose gradients are not on the device point here.
const NOT_HERE: BufId = BufId(usize::MAX);

/// Sees each unit's initial weights (unit, range, weights) as the offload
/// takes them over ([`Offload::new_from`]).
pub type OnUnit<'a> = dyn FnMut(usize, Range<usize>, &[f32]) -> Result<()> + 'a;

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
    /// master weights into a bf16 image (set from the backend).
    bf16_images: AtomicBool,
    /// Per unit: its image is its own, kept for the passes (`offload.params
    /// = cpu`, or `nvme` for a unit resident in host memory); else it goes
    /// into the step's pooled buffer or (params = nvme) its file.
    keep_images: Vec<bool>,
    /// Per unit: its master weights and state live in its file (nvme
    /// tier), else in host memory or on the device ([`placement`]).
    on_disk: Vec<bool>,
    /// Per unit: its master weights and state live on the device
    /// (`offload.gpu_gb`, [`gpu_tier`]), in the ZeRO store's device units.
    on_gpu: Vec<bool>,
}

/// The device and its ZeRO store, for units kept on the device; `None`
/// where the caller has none (host-only accessors).
type Dev<'a, B> = Option<(&'a mut B, &'a mut Zero<B>)>;

/// No device: the accessors that reach host and file units only.
fn no_device<'a>() -> Dev<'a, CpuBackend> {
    None
}

/// Gradient copies in flight at once: unit u's gradients go to the host
/// while the backward of the next units runs; the host waits for the
/// oldest copy only when more than this many are in flight.
pub const COPY_LAG: usize = 2;

/// A unit's gradients on their way to the host.
struct Landing {
    u: usize,
    /// The unit's own device buffer, freed once the copy is done (`None`:
    /// a part of the whole-model buffer, freed at the end).
    free: Option<BufId>,
    /// A pool buffer.
    host: Vec<f32>,
    ticket: CopyTicket,
}

/// A stepped unit's weights on their way to the device.
struct Upload {
    ticket: CopyTicket,
    /// The unit's host while its master weights are the source (fp32
    /// device weights); `None` when the image in `image` is.
    host: Option<UnitHost>,
    /// The pool buffer holding the bf16 image being read, if that is the
    /// source.
    image: Option<Vec<f32>>,
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
    /// A pool buffer holding the unit's gradients.
    grads: Vec<f32>,
    /// The unit's offset in the whole model and whether to sum its
    /// gradients' squares for the norm (overlapped steps).
    start: usize,
    squares: bool,
    lr: f32,
    clip: f32,
    /// The optimizer's scalar state before this step (a unit read from
    /// its file needs it).
    meta: serde_json::Value,
}

struct Done {
    unit: usize,
    host: UnitHost,
    /// The pool buffer back (holding the bf16 image, when one was made
    /// for the upload).
    grads: Vec<f32>,
    squares: Option<UnitSquares>,
    /// How long the unit's step took on the worker (its write handed over
    /// included).
    opt_ms: f64,
    /// Of `opt_ms`: the wait for a free write buffer (the disk behind).
    write_wait_ms: f64,
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
    /// Each unit's gradients on the device, from its first fetch until
    /// they are copied to the host.
    dev_grads: Vec<Option<View>>,
    /// With clipping: the whole model's gradients on the device, one
    /// buffer (the units' are views of it) kept until the norm is known.
    whole: Option<BufId>,
    gv: ModelViews,
    /// Host buffers the gradients land in (see [`host_pool`]).
    pool: HostPool,
    pool_pinned: bool,
    /// Overlapped steps: each unit's part of the norm, this step.
    squares: Vec<Option<UnitSquares>>,
    /// This step's clipping factor, once known (1 while overlapping).
    clip: f32,
    /// With clipping: this step's global norm, once taken.
    norm: Option<f32>,
    /// This step is skipped ([`Offload::discard`]): no unit is stepped.
    discarding: bool,
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
    /// Weight uploads in flight, oldest first.
    uploading: VecDeque<Upload>,
    /// Host ranges this offload had the backend pin (start addresses).
    pinned: HashSet<usize>,
    /// `offload.params = cpu | nvme`: the weights stream to the device per unit.
    stream: Option<stream::Streamed>,
    /// `offload.params = nvme`: the weights stream from the units' files.
    disk: Option<stream_nvme::DiskStream>,
    /// The disk stream's counters when this step began.
    reads_at_begin: stream_nvme::ReadStats,
    /// The unit files' I/O counters when this step began.
    io_at_begin: direct_io::IoStats,
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
        Self::build(cfg, layout, |h, r| h.set_master(&weights[r]))
    }

    /// [`Offload::new`] from weights it may consume: each unit's part is
    /// released as soon as the unit holds it (last unit first, the vector
    /// shrunk behind it), so building adds about one unit to host memory,
    /// not a second copy of the model.
    pub fn new_owned(cfg: &Config, layout: &ParamLayout, weights: Vec<f32>) -> Result<Self> {
        Self::consuming(cfg, layout, weights, &mut |_, _, _| Ok(()))
    }

    /// [`Offload::new`] from initial weights that may be made unit by unit
    /// (`InitWeights::Lazy`): host memory then never holds the whole model,
    /// only the units that live there. Each unit's weights are made once:
    /// `on_unit(unit, range, weights)` sees them before they become the
    /// unit's master (the start-up uploads the device's copy from there).
    /// Units of the device tier are not made here (`gpu_tier`).
    pub fn new_from(cfg: &Config, layout: &ParamLayout, weights: InitWeights, on_unit: &mut OnUnit) -> Result<Self> {
        match weights {
            InitWeights::Whole(w) => Self::consuming(cfg, layout, w, on_unit),
            lazy => Self::build(cfg, layout, |h, r| {
                let w = lazy.range(r.clone()).into_owned();
                on_unit(h.unit, r, &w)?;
                h.set_master_owned(w)
            }),
        }
    }

    /// [`Offload::new_owned`], showing each unit's part to `on_unit` first.
    fn consuming(cfg: &Config, layout: &ParamLayout, mut weights: Vec<f32>, on_unit: &mut OnUnit) -> Result<Self> {
        ensure!(weights.len() == layout.total, "{} initial weights for a layout of {}", weights.len(), layout.total);
        Self::build(cfg, layout, |h, r| {
            on_unit(h.unit, r.clone(), &weights[r.clone()])?;
            h.set_master(&weights[r.clone()])?;
            weights.truncate(r.start);
            weights.shrink_to_fit();
            Ok(())
        })
    }

    /// Makes the units, last first; `set_master(host, range)` gives each its
    /// weights.
    fn build(cfg: &Config, layout: &ParamLayout, mut set_master: impl FnMut(&mut UnitHost, Range<usize>) -> Result<()>) -> Result<Self> {
        let params = cfg.offload.params.as_str();
        ensure!(params == "none" || params == cfg.offload.optimizer, "offload.params = {params} needs offload.optimizer = {params} (the weights stream from where the optimizer keeps the master weights)");
        let tier = match cfg.offload.optimizer.as_str() {
            "cpu" => Tier::Cpu,
            "nvme" => Tier::Nvme,
            other => bail!("offload.optimizer = {other}: nothing to offload"),
        };
        let ranges = unit_ranges(&cfg.model, layout);
        let layouts: Vec<ParamLayout> = ranges.iter().map(|r| unit_layout(layout, r)).collect();
        let (_, places) = placement::plan_places(cfg, layout)?;
        let on_disk: Vec<bool> = places.iter().map(|p| *p == placement::Place::Disk).collect();
        let on_gpu: Vec<bool> = places.iter().map(|p| *p == placement::Place::Gpu).collect();
        ensure!(params == "none" || !on_gpu.contains(&true), "offload.gpu_gb needs offload.params = none (got {params})");
        let files = match tier {
            // params = nvme on a bf16 device: the files lead with bf16 images.
            Tier::Nvme => Some(StateFiles::create(&scratch_dir(&cfg.offload.path), params == "nvme" && cfg.device == "cuda")?),
            Tier::Cpu => None,
        };
        let mut hosts: Vec<Option<UnitHost>> = (0..ranges.len()).map(|_| None).collect();
        let mut make = |to_file: &mut dyn FnMut(UnitHost) -> Result<()>| -> Result<()> {
            for (u, l) in layouts.iter().enumerate().rev() {
                if on_gpu[u] {
                    // Its master and state are made on the device (gpu_tier).
                    continue;
                }
                let mut host = UnitHost::new(u, &cfg.optimizer, l)?;
                set_master(&mut host, ranges[u].clone())?;
                if files.is_some() && on_disk[u] {
                    to_file(host)?;
                } else {
                    hosts[u] = Some(host);
                }
            }
            Ok(())
        };
        match &files {
            // File units are written behind while the next unit is drawn;
            // the build returns with every file on disk and no I/O buffer.
            Some(f) => {
                f.set_write_delay_ms(cfg.debug.offload_write_delay_ms);
                f.limit_read_buffers(cfg.offload.prefetch + 1);
                let made = make(&mut |host| f.write_behind(&host).map(|_| ()));
                let flushed = f.flush();
                f.release_buffers();
                made.and(flushed)?
            }
            None => make(&mut |_| bail!("offload: a file unit without files"))?,
        }
        let keep_images = on_disk.iter().map(|&d| params == "cpu" || (params == "nvme" && !d)).collect();
        let shared = Arc::new(Shared { cfg: cfg.optimizer.clone(), layouts, files, pool: optimizer_pool()?, bf16_images: AtomicBool::new(false), keep_images, on_disk, on_gpu });
        let (jobs, job_rx) = channel::<Msg>();
        let (done_tx, done) = channel();
        let sh = shared.clone();
        let worker = std::thread::Builder::new()
            .name("offload-optimizer".into())
            .spawn(move || worker_loop(sh, job_rx, done_tx))
            .context("cannot start the offload optimizer thread")?;
        let units = ranges.len();
        let disk = if params == "nvme" { Some(disk_stream(&shared, &ranges, cfg)?) } else { None };
        // The pool carries the gradients of the units not on the device.
        let biggest = ranges.iter().zip(&shared.on_gpu).filter(|(_, g)| !**g).map(|(r, _)| r.len()).max().unwrap_or(0).max(1);
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
            whole: None,
            gv: ModelViews::new(layout, NOT_HERE, cfg.model.n_layers),
            pool: HostPool::new(biggest, POOL_BUFFERS),
            pool_pinned: false,
            squares: vec![None; units],
            clip: 1.0,
            norm: None,
            discarding: false,
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
            uploading: VecDeque::new(),
            pinned: HashSet::new(),
            stream: (params != "none").then(|| stream::Streamed::new(layout, cfg.model.n_layers, units)),
            disk,
            reads_at_begin: Default::default(),
            io_at_begin: Default::default(),
            images_ready: false,
            // The flag applies to resident device weights (params = none).
            fp32_device: cfg.debug.offload_fp32_weights && params == "none",
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

    /// Host bytes this offload holds now, counted from its allocations:
    /// the resident units' master weights and state, their kept bf16
    /// images, the gradient pool and (`offload.params = nvme`) the buffers
    /// the passes read weights into (what `budget::offload_bytes` predicts
    /// for the cpu tier; call it between steps), and the nvme tier's I/O
    /// buffers that exist now (none between steps: a step gives them back
    /// at its end; a checkpoint's unit-by-unit reads may leave one until
    /// the next step's end).
    pub fn host_bytes(&self) -> u64 {
        let units: u64 = self.hosts.iter().flatten().map(|h| h.h.live_bytes() + 2 * h.image.capacity() as u64).sum();
        let reads = self.disk.as_ref().map_or(0, |d| d.host_bytes());
        let io = self.shared.files.as_ref().map_or(0, |f| f.held_bytes());
        units + self.pool.bytes() + reads + io
    }

    /// Starts a step at learning rate `lr`. `grad_clip = 0` (no clipping)
    /// lets each unit's step overlap the rest of backward.
    pub fn begin_step(&mut self, lr: f32, grad_clip: f32) -> Result<()> {
        ensure!(self.in_flight == 0, "offload: a step begins while {} unit steps are still running", self.in_flight);
        self.lr = lr;
        self.times = OffloadTimes::default();
        self.overlap = grad_clip == 0.0;
        self.clip = 1.0;
        self.norm = None;
        self.discarding = false;
        self.squares.iter_mut().for_each(|s| *s = None);
        self.last_micro = true;
        if let Some(d) = self.disk.as_mut() {
            d.set_training(true);
            self.reads_at_begin = d.stats();
        }
        if let Some(f) = &self.shared.files {
            self.io_at_begin = f.io_stats();
        }
        // The units in files, read ahead in the order backward steps them.
        let order: Vec<usize> = (0..self.ranges.len()).rev().filter(|&u| self.shared.on_disk[u]).collect();
        if self.shared.files.is_some() && !order.is_empty() {
            let (tx, rx) = sync_channel(self.prefetch);
            let sh = self.shared.clone();
            let meta = self.meta.clone();
            std::thread::Builder::new()
                .name("offload-prefetch".into())
                .spawn(move || read_ahead(&sh, &order, &meta, tx))
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

    fn dispatch<B: Backend>(&mut self, b: &mut B, u: usize, grads: Vec<f32>) -> Result<()> {
        // A streamed unit's upload reads the host the step will change.
        if let Some(s) = self.stream.as_mut() {
            s.settle(b, u)?;
        }
        // Its file is about to be rewritten: no pass reads it meanwhile.
        if let Some(d) = self.disk.as_mut() {
            d.begin_unit_step(u)?;
        }
        let host = self.hosts[u].take();
        ensure!(host.is_some() || self.shared.on_disk[u], "offload: unit {u} is already being stepped");
        let job = Job { unit: u, host, grads, start: self.ranges[u].start, squares: self.overlap, lr: self.lr, clip: self.clip, meta: self.meta.clone() };
        self.send(Msg::Job(job))?;
        self.in_flight += 1;
        Ok(())
    }

    /// After the last micro-batch: the gradient norm (the plain run's,
    /// bit for bit), every unit's step done and its weights uploaded into
    /// `zero`'s device weights (none stepped when the step was
    /// [`discard`](Offload::discard)ed). Returns the norm.
    pub fn finish<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, grad_clip: f32) -> Result<f32> {
        self.note_device(b);
        let out = self.finish_steps(b, zero, grad_clip);
        if out.is_err() {
            self.abandon_copies(b);
        }
        if let Some(d) = self.disk.as_mut() {
            d.set_training(false);
            let (now, then) = (d.stats(), self.reads_at_begin);
            self.times.offload_read_mb = (now.bytes - then.bytes) as f64 / 1e6;
            self.times.offload_read_wait_ms = now.wait_ms - then.wait_ms;
        }
        if let Some(f) = &self.shared.files {
            // finish_steps flushed the writes: the buffers are all free.
            f.release_buffers();
            let (now, then) = (f.io_stats(), self.io_at_begin);
            self.times.offload_file_read_ms = now.read_ms - then.read_ms;
            self.times.offload_file_write_ms = now.write_ms - then.write_ms;
            self.times.offload_file_mb = (now.read_bytes + now.write_bytes - then.read_bytes - then.write_bytes) as f64 / 1e6;
        }
        // Device gradients no copy reads any more (none after a good step).
        let whole = self.whole.take();
        for v in self.dev_grads.iter_mut().filter_map(Option::take) {
            if Some(v.buf) != whole {
                b.free(v.buf);
            }
        }
        if let Some(w) = whole {
            b.free(w);
        }
        out
    }

    fn finish_steps<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, grad_clip: f32) -> Result<f32> {
        if let Some(s) = self.stream.as_mut() {
            let idle = s.clear_idle(b);
            // Read buffers of units no longer on the device go back.
            if let Some(d) = self.disk.as_mut() {
                d.recycle(s);
            }
            idle?;
        }
        self.land_all(b)?;
        let norm = match self.overlap {
            true => None,
            false => Some(self.whole_norm(b)?),
        };
        if let (Some(n), false) = (norm, self.discarding) {
            self.stream_clipped(b, zero, n, grad_clip)?;
        }
        let mut first_err = None;
        while self.in_flight > 0 {
            if let Err(e) = self.receive(b, zero) {
                first_err = first_err.or(Some(e));
            }
        }
        // The step ends with its units' files on disk (a failed write
        // stops it here, naming the file).
        if let Some(f) = &self.shared.files {
            let t = Instant::now();
            let flushed = f.flush();
            self.times.offload_write_wait_ms += ms_since(t);
            first_err = first_err.or(flushed.err());
        }
        if first_err.is_none() {
            first_err = self.finish_uploads(b).err();
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        match norm {
            Some(n) => Ok(n),
            None => {
                let parts = (0..self.ranges.len()).map(|u| self.squares[u].as_ref().ok_or_else(|| anyhow!("offload: unit {u} has no gradients this step"))).collect::<Result<Vec<_>>>()?;
                Ok(grad_norm::total(parts).sqrt() as f32)
            }
        }
    }

    /// With clipping: the norm over the whole-model gradient buffer on the
    /// device (the plain run's `sum_squares`, bit for bit), taken once.
    fn whole_norm<B: Backend>(&mut self, b: &mut B) -> Result<f32> {
        if let Some(n) = self.norm {
            return Ok(n);
        }
        let whole = self.whole.ok_or_else(|| anyhow!("offload: no gradients this step (no unit's backward ran)"))?;
        let n = b.sum_squares(View::whole(whole, self.layout.total))?.sqrt() as f32;
        self.norm = Some(n);
        Ok(n)
    }

    /// With clipping, after backward: the global gradient norm, known
    /// before any unit is stepped (the bad-step guard judges it; see
    /// [`Offload::discard`]). `None` while overlapping: units were stepped
    /// during backward, and [`Offload::finish`] returns the norm.
    pub fn norm_before_update<B: Backend>(&mut self, b: &mut B) -> Result<Option<f32>> {
        match self.overlap {
            true => Ok(None),
            false => self.whole_norm(b).map(Some),
        }
    }

    /// Skips this step: no unit is stepped, the gradients are dropped as
    /// they complete (their squares kept for the norm the step reports)
    /// or, with clipping, at [`Offload::finish`]; the weights and the
    /// optimizer state stay as they were. Call it before the last
    /// micro-batch's backward (overlapped steps start there) or, with
    /// clipping, before `finish`.
    pub fn discard(&mut self) -> Result<()> {
        if self.discarding {
            return Ok(());
        }
        let stepped = self.in_flight > 0 || !self.landing.is_empty() || self.squares.iter().any(Option::is_some);
        ensure!(!stepped, "offload: the step cannot be skipped, units were already stepped");
        self.discarding = true;
        // The units read ahead for the steps are not wanted: an empty
        // read-ahead replaces them, so the reader thread ends now.
        if self.shared.files.is_some() {
            let (_, none) = sync_channel(0);
            self.send(Msg::Prefetch(none))?;
        }
        Ok(())
    }

    /// Whether this step is skipped ([`Offload::discard`]).
    pub fn discarded(&self) -> bool {
        self.discarding
    }

    /// A skipped step's unit `u`: its part of the norm from its gradients
    /// `view`, then the buffer freed (so a skipped step holds no more
    /// gradients on the device than an applied one).
    fn drop_grads<B: Backend>(&mut self, b: &mut B, u: usize, view: View) -> Result<()> {
        let sq = device_squares(b, self.ranges[u].start, view);
        b.free(view.buf);
        self.squares[u] = Some(sq?);
        Ok(())
    }

    /// With clipping, the norm `n` known: every unit, last first, through
    /// the pool: copy to the host, step with the clipping factor (the
    /// worker), upload (as steps finish).
    fn stream_clipped<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, n: f32, grad_clip: f32) -> Result<()> {
        let whole = self.whole.ok_or_else(|| anyhow!("offload: no gradients this step (no unit's backward ran)"))?;
        self.clip = if grad_clip > 0.0 && n > grad_clip { grad_clip / n } else { 1.0 };
        for u in (0..self.ranges.len()).rev() {
            let view = self.dev_grads[u].take().unwrap_or(View { buf: whole, off: self.ranges[u].start, len: self.ranges[u].len() });
            match self.shared.on_gpu[u] {
                true => self.step_on_device(b, zero, u, view, false)?,
                false => self.start_landing(b, zero, u, view, None)?,
            }
        }
        self.land_all(b)?;
        Ok(())
    }

    /// Unit `u`'s gradients (device `view`) start their copy into a pool
    /// buffer (waiting for one to come back if none is free); `free`: the
    /// device buffer to free once the copy is done. Copies beyond
    /// [`COPY_LAG`] (and copies already done) land and go to the worker.
    fn start_landing<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, u: usize, view: View, free: Option<BufId>) -> Result<()> {
        let got = self.reclaim(b, zero).and_then(|_| self.pool.take(view.len).ok_or_else(|| anyhow!("offload: no host gradient buffer is free")));
        let t = Instant::now();
        let mut host = match got {
            Ok(h) => h,
            Err(e) => {
                if let Some(buf) = free {
                    b.free(buf);
                }
                return Err(e);
            }
        };
        // SAFETY: `host` moves into `landing` (its heap memory does not
        // move) and the device buffer is freed only after copy_wait
        // (land_oldest, abandon_copies, finish).
        let started = unsafe { b.download_start(view, &mut host) };
        let ticket = match started {
            Ok(t) => t,
            Err(e) => {
                self.pool.give(host);
                if let Some(buf) = free {
                    b.free(buf);
                }
                return Err(e);
            }
        };
        self.landing.push_back(Landing { u, free, host, ticket });
        self.times.offload_d2h_ms += ms_since(t);
        // Copies already done (the CPU backend's always are) land at once.
        while self.landing.len() > COPY_LAG || self.landing.front().is_some_and(|l| l.ticket == CopyTicket::DONE) {
            self.land_oldest(b)?;
        }
        Ok(())
    }

    /// Until a pool buffer is free: wait for the oldest upload that reads
    /// one, else hand the worker a landed copy, else wait for a step.
    fn reclaim<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>) -> Result<()> {
        self.pin_pool(b)?;
        while self.pool.is_empty() {
            if let Some(i) = self.uploading.iter().position(|up| up.image.is_some()) {
                let up = self.uploading.remove(i).expect("found above");
                self.upload_done(b, up)?;
            } else if !self.landing.is_empty() {
                self.land_oldest(b)?;
            } else if self.in_flight > 0 {
                self.receive(b, zero)?;
            } else {
                bail!("offload: every host gradient buffer is taken and none is on its way back");
            }
        }
        Ok(())
    }

    /// Page-locks the pool's buffers, once.
    fn pin_pool<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        if self.pool_pinned {
            return Ok(());
        }
        for &(ptr, bytes) in self.pool.ranges() {
            // SAFETY: a pool buffer, allocated once and never reallocated
            // for the offload's life; the backend unpins what is left at
            // its end.
            unsafe { b.pin_host(ptr as *const u8, bytes) }?;
        }
        self.pool_pinned = true;
        Ok(())
    }

    /// Waits for the worker's next finished unit and installs it.
    fn receive<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>) -> Result<()> {
        let waited = Instant::now();
        let got = self.done.recv();
        self.times.offload_wait_ms += ms_since(waited);
        // Counted as back even when the thread is gone, so that a caller
        // draining the steps ends.
        self.in_flight -= 1;
        let done = got.map_err(|_| anyhow!("the offload optimizer thread stopped"))??;
        self.install(b, zero, done)
    }

    /// A stepped unit: its weights to the device (from the bf16 image in
    /// its pool buffer, or from its master weights), its host kept (cpu
    /// tier).
    fn install<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, d: Done) -> Result<()> {
        let r = self.ranges[d.unit].clone();
        let view = View { buf: zero.shard_params, off: r.start, len: r.len() };
        let t = Instant::now();
        self.times.offload_opt_ms += d.opt_ms;
        self.times.offload_write_wait_ms += d.write_wait_ms;
        self.meta = d.host.opt.meta();
        if d.squares.is_some() {
            self.squares[d.unit] = d.squares;
        }
        let host = d.host;
        if self.stream.is_some() {
            // The weights go to the device when the next pass fetches them
            // (from the unit's kept image or master, or, for a unit in a
            // file, from the file the step wrote).
            self.pool.give(d.grads);
            let u = host.unit;
            if let Some(d) = self.disk.as_mut() {
                d.end_unit_step(u);
            }
            if !self.shared.on_disk[u] {
                self.hosts[u] = Some(host);
            }
            self.times.offload_h2d_ms += ms_since(t);
            return Ok(());
        }
        let image = if self.bf16_device(b) {
            Some(d.grads)
        } else {
            self.pool.give(d.grads);
            None
        };
        let src = match &image {
            Some(buf) => HostSrc::Bf16(host_pool::image(buf)),
            None => HostSrc::F32(host.master()),
        };
        if image.is_none() {
            self.pin(b, d.unit, src)?;
        }
        // SAFETY: what `src` reads (`image`, else `host`) stays in
        // `uploading`, unchanged, until upload_done waits for the ticket.
        let ticket = unsafe { b.upload_start(view, src) };
        let ticket = match ticket {
            Ok(t) => t,
            Err(e) => {
                self.park(Some(host), image);
                return Err(e);
            }
        };
        // An upload from the image does not read the host: it goes home
        // (cpu tier) or is dropped (nvme tier: a whole unit's state, its
        // file already written) now, not when the upload is waited for.
        let host = match image {
            Some(_) => {
                self.park(Some(host), None);
                None
            }
            None => Some(host),
        };
        self.uploading.push_back(Upload { ticket, host, image });
        let params_changed = b.params_changed(view);
        // Done copies (the CPU backend's) and copies beyond the pool's
        // count give back what they read now: an NVMe unit's host is a
        // whole unit's state, not kept for the step.
        while self.uploading.front().is_some_and(|up| up.ticket == CopyTicket::DONE) || self.uploading.len() > POOL_BUFFERS {
            let up = self.uploading.pop_front().expect("checked");
            self.upload_done(b, up)?;
        }
        self.times.offload_h2d_ms += ms_since(t);
        params_changed
    }

    /// A unit's host back home (cpu tier) and its pool buffer back.
    fn park(&mut self, host: Option<UnitHost>, image: Option<Vec<f32>>) {
        if let Some(buf) = image {
            self.pool.give(buf);
        }
        if let Some(host) = host.filter(|h| !self.shared.on_disk[h.unit]) {
            let u = host.unit;
            self.hosts[u] = Some(host);
        }
    }

    /// Waits for one upload, then parks what it read from.
    fn upload_done<B: Backend>(&mut self, b: &mut B, up: Upload) -> Result<()> {
        let t = Instant::now();
        let out = b.copy_wait(up.ticket);
        self.park(up.host, up.image);
        self.times.offload_h2d_ms += ms_since(t);
        out
    }

    /// Waits for every weight upload.
    fn finish_uploads<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        let mut first_err = None;
        while let Some(up) = self.uploading.pop_front() {
            if let Err(e) = self.upload_done(b, up) {
                first_err = first_err.or(Some(e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Page-locks a long-lived host range of unit `u` (resident units only:
    /// the NVMe tier's units in files are read into fresh memory every step).
    fn pin<B: Backend>(&mut self, b: &mut B, u: usize, src: HostSrc<'_>) -> Result<()> {
        let (ptr, bytes) = match src {
            HostSrc::F32(v) => (v.as_ptr() as *const u8, std::mem::size_of_val(v)),
            HostSrc::Bf16(v) => (v.as_ptr() as *const u8, std::mem::size_of_val(v)),
        };
        if self.shared.on_disk[u] || bytes == 0 || self.pinned.contains(&(ptr as usize)) {
            return Ok(());
        }
        // SAFETY: the range belongs to a unit's host (its master or kept
        // image), allocated once and kept for the whole run; the backend
        // unpins what is left at its end.
        unsafe { b.pin_host(ptr, bytes) }?;
        self.pinned.insert(ptr as usize);
        Ok(())
    }

    /// Waits for the oldest gradient copy, frees its device buffer (a
    /// unit's own) and hands the gradients to the worker.
    fn land_oldest<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        let Some(l) = self.landing.pop_front() else { return Ok(()) };
        let t = Instant::now();
        let out = b.copy_wait(l.ticket);
        if let Some(buf) = l.free {
            b.free(buf);
        }
        self.times.offload_d2h_ms += ms_since(t);
        if let Err(e) = out {
            self.pool.give(l.host);
            return Err(e);
        }
        self.dispatch(b, l.u, l.host)
    }

    fn land_all<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        while !self.landing.is_empty() {
            self.land_oldest(b)?;
        }
        Ok(())
    }

    /// After an error: no copy may still write into or read from host
    /// memory that is about to be reused or dropped.
    fn abandon_copies<B: Backend>(&mut self, b: &mut B) {
        for l in std::mem::take(&mut self.landing) {
            let _ = b.copy_wait(l.ticket);
            if let Some(buf) = l.free {
                b.free(buf);
            }
            self.pool.give(l.host);
        }
        while let Some(up) = self.uploading.pop_front() {
            let _ = self.upload_done(b, up);
        }
    }

    /// This step's host-side phases (complete after [`Offload::finish`]).
    pub fn times(&self) -> OffloadTimes {
        self.times
    }

    /// Replaces the master weights (init from Hugging Face, resume).
    /// Host and file units only: [`Offload::set_weights_on`] reaches the
    /// units kept on the device too.
    pub fn set_weights(&mut self, weights: &[f32]) -> Result<()> {
        self.set_weights_in(&mut no_device(), weights)
    }

    /// [`Offload::set_weights`] of every unit, those kept on the device
    /// (`offload.gpu_gb`, in `zero`) included.
    pub fn set_weights_on<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, weights: &[f32]) -> Result<()> {
        self.set_weights_in(&mut Some((b, zero)), weights)
    }

    fn set_weights_in<B: Backend>(&mut self, dev: &mut Dev<'_, B>, weights: &[f32]) -> Result<()> {
        ensure!(weights.len() == self.layout.total, "{} weights for a layout of {}", weights.len(), self.layout.total);
        for u in 0..self.ranges.len() {
            let w = &weights[self.ranges[u].clone()];
            self.with_unit_in(dev, u, |h| h.set_master(w))?;
        }
        self.images_ready = false;
        Ok(())
    }

    /// The master weights of the whole model (layout order; the device may
    /// hold only their bf16 rounding), in one new vector: a second copy of
    /// the model on the host. Checkpoints go unit by unit instead
    /// ([`Offload::read_unit`], `train::checkpoint_offload`). Host and file
    /// units only: see [`Offload::master_weights_on`].
    pub fn master_weights(&mut self) -> Result<Vec<f32>> {
        self.master_weights_in(&mut no_device())
    }

    /// [`Offload::master_weights`] of every unit, those kept on the
    /// device (`offload.gpu_gb`, in `zero`) included.
    pub fn master_weights_on<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>) -> Result<Vec<f32>> {
        self.master_weights_in(&mut Some((b, zero)))
    }

    fn master_weights_in<B: Backend>(&mut self, dev: &mut Dev<'_, B>) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.layout.total];
        for u in 0..self.ranges.len() {
            let r = self.ranges[u].clone();
            self.read_unit_in(dev, u, |h| {
                out[r].copy_from_slice(h.master());
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Whether every unit's master weights are finite (asked after a
    /// skipped step: did the last applied update overflow them?). Units in
    /// files are read for it; units on the device through `zero`.
    pub fn master_finite_on<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>) -> Result<bool> {
        let mut dev = Some((b, zero));
        let mut finite = true;
        for u in 0..self.ranges.len() {
            self.read_unit_in(&mut dev, u, |h| {
                finite = h.master().iter().all(|w| w.is_finite());
                Ok(())
            })?;
            if !finite {
                break;
            }
        }
        Ok(finite)
    }

    /// Whether unit `u` is kept on the device (`offload.gpu_gb`).
    pub fn on_device(&self, u: usize) -> bool {
        self.shared.on_gpu[u]
    }

    /// [`Offload::with_unit`], reaching units kept on the device through
    /// `dev` (a host copy of the unit, written back afterwards).
    fn with_unit_in<B: Backend>(&mut self, dev: &mut Dev<'_, B>, u: usize, f: impl FnOnce(&mut UnitHost) -> Result<()>) -> Result<()> {
        if !self.shared.on_gpu[u] {
            return self.with_unit(u, f);
        }
        let r = self.ranges[u].clone();
        let (b, zero) = device_of(dev, u)?;
        let compute = View { buf: zero.shard_params, off: r.start, len: r.len() };
        let units = zero.device_units.as_mut().ok_or_else(|| anyhow!("offload: unit {u} is placed on the device but the device holds no units"))?;
        let mut h = units.to_host(*b, u, &self.shared.cfg)?;
        f(&mut h)?;
        units.from_host(*b, &h, compute)
    }

    /// [`Offload::read_unit`], reaching units kept on the device through
    /// `dev` (a host copy of the unit, dropped afterwards).
    fn read_unit_in<B: Backend>(&mut self, dev: &mut Dev<'_, B>, u: usize, f: impl FnOnce(&UnitHost) -> Result<()>) -> Result<()> {
        if !self.shared.on_gpu[u] {
            return self.read_unit(u, f);
        }
        let (b, zero) = device_of(dev, u)?;
        let units = zero.device_units.as_mut().ok_or_else(|| anyhow!("offload: unit {u} is placed on the device but the device holds no units"))?;
        f(&units.to_host(*b, u, &self.shared.cfg)?)
    }

    /// [`Offload::read_unit`] of any unit, those kept on the device
    /// (`offload.gpu_gb`, in `zero`) included.
    pub fn read_unit_on<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, u: usize, f: impl FnOnce(&UnitHost) -> Result<()>) -> Result<()> {
        self.read_unit_in(&mut Some((b, zero)), u, f)
    }

    /// [`Offload::restore_unit`] of any unit, those kept on the device
    /// (`offload.gpu_gb`, in `zero`: master, state and compute weights) included.
    pub fn restore_unit_on<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, u: usize, meta: &serde_json::Value, f: impl FnOnce(&mut UnitHost) -> Result<()>) -> Result<()> {
        self.restore_unit_in(&mut Some((b, zero)), u, meta, f)
    }

    /// Runs `f` on unit `u`'s host (read from and written back to its file
    /// in the nvme tier). Not while steps run.
    fn with_unit(&mut self, u: usize, f: impl FnOnce(&mut UnitHost) -> Result<()>) -> Result<()> {
        ensure!(self.in_flight == 0, "offload: state accessed while unit steps run");
        ensure!(!self.shared.on_gpu[u], "offload: unit {u} is kept on the device (offload.gpu_gb): its state is reached through the backend (the *_on accessors)");
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

    /// Each unit's part of the whole model (layout order).
    pub fn unit_ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Runs `f` on unit `u`'s master weights and state, changing nothing
    /// (in the nvme tier read from its file and not written back): a
    /// checkpoint save, one unit at a time. Not while steps run.
    pub fn read_unit(&mut self, u: usize, f: impl FnOnce(&UnitHost) -> Result<()>) -> Result<()> {
        ensure!(self.in_flight == 0, "offload: state read while unit steps run");
        ensure!(!self.shared.on_gpu[u], "offload: unit {u} is kept on the device (offload.gpu_gb): read it with read_unit_on");
        match (&self.hosts[u], &self.shared.files) {
            (Some(h), _) => f(h),
            (None, Some(files)) => f(&files.read(u, &self.shared.cfg, &self.shared.layouts[u], &self.meta)?),
            (None, None) => bail!("offload: unit {u}'s state is missing"),
        }
    }

    /// Unit `u`'s master weights and state replaced by `f` (written to
    /// its file in the nvme tier), its optimizer's scalars by `meta`: a
    /// resume, one unit at a time.
    pub fn restore_unit(&mut self, u: usize, meta: &serde_json::Value, f: impl FnOnce(&mut UnitHost) -> Result<()>) -> Result<()> {
        self.restore_unit_in(&mut no_device(), u, meta, f)
    }

    fn restore_unit_in<B: Backend>(&mut self, dev: &mut Dev<'_, B>, u: usize, meta: &serde_json::Value, f: impl FnOnce(&mut UnitHost) -> Result<()>) -> Result<()> {
        let mut loaded = None;
        self.with_unit_in(dev, u, |h| {
            f(h)?;
            h.opt.load_meta(meta)?;
            loaded = Some(h.opt.meta());
            Ok(())
        })?;
        self.meta = loaded.unwrap_or_default();
        self.images_ready = false;
        Ok(())
    }

    /// The whole model's optimizer, assembled on a host backend of its
    /// own from every unit's state (the same tensors and names as the
    /// plain run's optimizer): a second copy of all state on the host, so
    /// only for a resume from a sharded checkpoint (and tests).
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
    /// checkpoint) into the units (host and file units only: see
    /// [`Offload::load_optimizer_on`]).
    pub fn load_optimizer(&mut self, th: &mut CpuBackend, full: &HostOpt) -> Result<()> {
        self.load_optimizer_in(&mut no_device(), th, full)
    }

    /// [`Offload::load_optimizer`] into every unit, those kept on the
    /// device (`offload.gpu_gb`, in `zero`) included.
    pub fn load_optimizer_on<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, th: &mut CpuBackend, full: &HostOpt) -> Result<()> {
        self.load_optimizer_in(&mut Some((b, zero)), th, full)
    }

    fn load_optimizer_in<B: Backend>(&mut self, dev: &mut Dev<'_, B>, th: &mut CpuBackend, full: &HostOpt) -> Result<()> {
        let sources = full.state_tensors();
        let meta = full.meta();
        let mut offs = vec![0usize; sources.len()];
        for u in 0..self.ranges.len() {
            self.with_unit_in(dev, u, |h| {
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

    /// Unit `unit`'s gradients on the device (tests).
    pub fn device_grads(&self, unit: Unit) -> Option<View> {
        self.dev_grads[self.unit_index(unit)]
    }

    /// Whether the gradients of the step stay on the device, in one
    /// buffer, until backward ends (clipping: the norm comes first).
    fn keeps_whole(&self) -> bool {
        !self.overlap
    }

    /// The unit's (and, for the head with tied embeddings, the
    /// embeddings') gradients on the device, zeroed on first use this step:
    /// a buffer of its own, or its part of the whole-model buffer.
    pub fn fetch_grads<B: Backend>(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        for unit in self.with_tied(unit) {
            let u = self.unit_index(unit);
            if self.dev_grads[u].is_some() {
                continue;
            }
            let r = self.ranges[u].clone();
            let (view, buf_start) = if self.keeps_whole() {
                let whole = match self.whole {
                    Some(w) => w,
                    None => {
                        let w = b.alloc(self.layout.total.max(1), DType::F32)?;
                        b.fill(View::whole(w, self.layout.total), 0.0)?;
                        self.whole = Some(w);
                        w
                    }
                };
                (View { buf: whole, off: r.start, len: r.len() }, 0)
            } else {
                let buf = b.alloc(r.len().max(1), DType::F32)?;
                b.fill(View::whole(buf, r.len()), 0.0)?;
                (View::whole(buf, r.len()), r.start)
            };
            self.dev_grads[u] = Some(view);
            self.gv.point_unit(&self.layout, unit, buf_start, view.buf);
        }
        Ok(())
    }

    /// Whether the device's weights are bf16 (CUDA, unless
    /// `debug.offload_fp32_weights` keeps them fp32): the uploads read a
    /// bf16 image, not the master weights.
    fn bf16_device<B: Backend>(&self, b: &B) -> bool {
        b.compute_is_bf16() && !self.fp32_device
    }

    /// Tells the worker whether to make bf16 images (the device's dtype).
    fn note_device<B: Backend>(&self, b: &B) {
        self.shared.bf16_images.store(self.bf16_device(b), Ordering::Relaxed);
    }

    /// After the last micro-batch: overlapped, the unit's gradients go to
    /// the host, its device buffer is freed and its step starts (`zero`:
    /// where stepped units' weights are uploaded, should one be installed
    /// to free a host buffer). With clipping they stay on the device until
    /// [`Offload::finish`]. A discarded step drops them instead.
    pub fn grads_done<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, unit: Unit) -> Result<()> {
        if !self.last_micro {
            return Ok(());
        }
        self.note_device(b);
        let u = self.unit_index(unit);
        self.gv.point_unit(&self.layout, unit, self.ranges[u].start, NOT_HERE);
        if self.keeps_whole() {
            return Ok(());
        }
        let Some(view) = self.dev_grads[u].take() else { return Ok(()) };
        if self.discarding {
            return self.drop_grads(b, u, view);
        }
        if self.shared.on_gpu[u] {
            let out = self.step_on_device(b, zero, u, view, true);
            b.free(view.buf);
            return out;
        }
        self.start_landing(b, zero, u, view, Some(view.buf))
    }

    /// Unit `u` kept on the device: its step from its gradients `view` (a
    /// buffer of its own, or, with clipping, its part of the whole-model
    /// buffer, copied into one for the optimizer), the master rounded into
    /// `zero`'s compute weights; `squares`: its part of the norm too
    /// (overlapped steps).
    fn step_on_device<B: Backend>(&mut self, b: &mut B, zero: &mut Zero<B>, u: usize, view: View, squares: bool) -> Result<()> {
        let r = self.ranges[u].clone();
        if squares {
            let sq = device_squares(b, r.start, view)?;
            ensure!(grad_norm::total([&sq]).is_finite(), "{}", not_finite_unit(u));
            self.squares[u] = Some(sq);
        }
        let compute = View { buf: zero.shard_params, off: r.start, len: r.len() };
        let units = zero.device_units.as_mut().ok_or_else(|| anyhow!("offload: unit {u} is placed on the device but the device holds no units (offload.gpu_gb)"))?;
        let t = Instant::now();
        let out = if Some(view.buf) != self.whole {
            units.step(b, u, view.buf, self.lr, self.clip, compute)
        } else {
            let own = b.alloc(r.len().max(1), DType::F32)?;
            let copied = b.copy(View::whole(own, r.len()), view);
            let out = copied.and_then(|_| units.step(b, u, own, self.lr, self.clip, compute));
            b.free(own);
            out
        };
        self.times.offload_opt_ms += ms_since(t);
        out.with_context(|| format!("device optimizer step of unit {u} (offload.gpu_gb)"))
    }

    /// `offload.params = cpu | nvme`: brings `unit` (and, tied, the
    /// embeddings) to the device from the host (or the files), and the
    /// next unit ahead.
    fn fetch_streamed<B: Backend>(&mut self, b: &mut B, unit: Unit) -> Result<()> {
        let bf16 = b.compute_is_bf16();
        if bf16 && !self.images_ready {
            for h in self.hosts.iter_mut().flatten() {
                h.refresh_image();
            }
            self.images_ready = true;
            // Page-locked once: the images keep their memory for the run.
            let images: Vec<(usize, *const u16, usize)> = self.hosts.iter().flatten().map(|h| (h.unit, h.image.as_ptr(), h.image.len())).collect();
            for (u, p, n) in images {
                // SAFETY: a unit's image, alive and not resized for the run.
                self.pin(b, u, HostSrc::Bf16(unsafe { std::slice::from_raw_parts(p, n) }))?;
            }
        }
        let units: Vec<usize> = self.with_tied(unit).into_iter().map(|v| v.index(self.n_layers)).collect();
        let (hosts, ranges) = (&self.hosts, &self.ranges);
        // Resident units upload from their host (kept image or master).
        let host_src = |v: usize| hosts[v].as_ref().map(|h| (ranges[v].start, if bf16 { HostSrc::Bf16(&h.image) } else { HostSrc::F32(h.master()) }));
        let s = self.stream.as_mut().expect("streaming");
        match self.disk.as_mut() {
            Some(d) => {
                let images = self.shared.files.as_ref().is_some_and(|f| f.images());
                ensure!(images == bf16, "offload.params = nvme: the files hold {} weights but the device computes in {} (device = cuda computes in bf16)", if images { "bf16" } else { "fp32" }, if bf16 { "bf16" } else { "fp32" });
                d.fetch(b, s, &units, host_src)
            }
            None => units.iter().try_for_each(|&u| s.fetch(b, u, host_src)),
        }
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
            // No write may still be going into the folder.
            f.close();
            let _ = std::fs::remove_dir_all(&f.dir);
        }
    }
}

/// The device of `dev`, for unit `u` kept there.
fn device_of<'d, 'a, B: Backend>(dev: &'d mut Dev<'a, B>, u: usize) -> Result<&'d mut (&'a mut B, &'a mut Zero<B>)> {
    dev.as_mut().ok_or_else(|| anyhow!("offload: unit {u} is kept on the device (offload.gpu_gb): its state is reached through the backend (the *_on accessors)"))
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
    // The read buffers hold the largest unit in a file.
    let pass_bytes = lens.iter().zip(&shared.on_disk).filter(|(_, &d)| d).map(|(&n, _)| files.pass_bytes(n)).max().unwrap_or(0);
    let (sh, sizes) = (shared.clone(), lens.clone());
    let read: stream_nvme::ReadFn = Box::new(move |u, buf| sh.files.as_ref().expect("nvme tier has files").read_pass(u, sizes[u], buf));
    let starts = ranges.iter().map(|r| r.start).collect();
    stream_nvme::DiskStream::new(lens, starts, shared.on_disk.clone(), files.images(), pass_bytes, cfg.offload.prefetch, cfg.model.tied_embeddings, read)
}

/// Unit `u`'s part of the norm from its gradients `view` on the device.
/// The CPU backend copies them out (a memcpy) for the chunked sum the
/// plain run's norm is, bit for bit; a bf16 device (CUDA), whose norm is
/// its own arithmetic anyway, sums them where they are rather than copy a
/// unit's gradients to the host only for this.
fn device_squares<B: Backend>(b: &mut B, start: usize, view: View) -> Result<UnitSquares> {
    if view.len == 0 {
        return Ok(UnitSquares::default());
    }
    if b.compute_is_bf16() {
        return Ok(grad_norm::lump(b.sum_squares(view)?));
    }
    let mut g = vec![0.0f32; view.len];
    b.download(view, &mut g)?;
    Ok(grad_norm::unit_squares(start, &g))
}

/// Why an overlapped step (`train.grad_clip = 0`) stops the run when unit
/// `u`'s gradients are not finite, where the bad-step guard would skip it.
pub fn not_finite_unit(u: usize) -> String {
    format!(
        "unit {u}'s gradients are not finite (NaN or infinity). With train.grad_clip = 0 an offloaded run steps each unit \
         as soon as its gradients are complete, overlapping the rest of backward, so the units stepped before this one \
         cannot be taken back and the step cannot be skipped: unit {u} was not updated and the run stops (no checkpoint \
         is saved from these weights). {OVERLAP_ADVICE}"
    )
}

/// What to do when an overlapped step cannot be skipped.
pub const OVERLAP_ADVICE: &str = "Set train.grad_clip > 0 (the global norm is then known before any unit is stepped, so \
    the bad-step guard skips such a step as in a run without offload) and resume from the newest checkpoint, at a lower \
    optimizer.lr if the run was diverging";

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

/// The read-ahead of a step's file units, in `order`, into `tx`: a disk
/// thread reads each file into a pooled buffer (after its pending write)
/// while this one copies the unit read before into its host, so the disk
/// does not idle during the copies (the read pool's buffers bound it).
fn read_ahead(sh: &Shared, order: &[usize], meta: &serde_json::Value, tx: SyncSender<(usize, Result<UnitHost>)>) {
    let files = sh.files.as_ref().expect("nvme tier has files");
    let (raw_tx, raw_rx) = sync_channel(0);
    std::thread::scope(|s| {
        let disk = std::thread::Builder::new().name("offload-disk-read".into()).spawn_scoped(s, move || {
            for &u in order {
                if raw_tx.send(files.read_raw(u, sh.layouts[u].total)).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = disk {
            // No disk thread: the first unit's read carries the error.
            let _ = tx.send((order[0], Err(anyhow!("cannot start the offload disk reader thread: {e}"))));
            return;
        }
        for (&u, raw) in order.iter().zip(raw_rx) {
            let host = raw.and_then(|r| files.unpack(r, &sh.cfg, &sh.layouts[u], meta));
            // The consumer is gone (a discarded step): dropping the
            // receiver stops the disk thread too.
            if tx.send((u, host)).is_err() {
                return;
            }
        }
    });
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
    let to_file = sh.on_disk[u];
    let bf16 = sh.bf16_images.load(Ordering::Relaxed) && !(to_file && sh.files.as_ref().is_some_and(|f| f.images()));
    let (squares, out, grads) = sh.pool.install(|| {
        let squares = job.squares.then(|| grad_norm::unit_squares(job.start, &job.grads));
        // An overlapped step's only check: its norm comes after the update.
        if squares.as_ref().is_some_and(|s| !grad_norm::total([s]).is_finite()) {
            return (squares, Err(anyhow!("{}", not_finite_unit(u))), job.grads);
        }
        let (out, mut grads) = host.step(job.grads, job.lr, job.clip);
        if bf16 && out.is_ok() {
            // The gradients are spent: the upload's image goes where they were.
            match sh.keep_images[u] {
                true => host.refresh_image(),
                false => host.write_image(host_pool::image_mut(&mut grads)),
            }
        }
        (squares, out, grads)
    });
    out.with_context(|| format!("offloaded optimizer step of unit {u}"))?;
    // Written behind: the worker goes on to the next unit meanwhile.
    let write_wait_ms = match sh.files.as_ref().filter(|_| to_file) {
        Some(files) => {
            // (A `&mut` crosses into the pool: a unit's host is Send, not Sync.)
            let h = &mut host;
            sh.pool.install(move || files.write_behind(h))?
        }
        None => 0.0,
    };
    Ok(Done { unit: u, host, grads, squares, opt_ms: ms_since(t), write_wait_ms })
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
