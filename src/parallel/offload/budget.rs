//! Host and disk bytes of an offloaded run, and the check that refuses to
//! start one that would run out of either (before anything is allocated).

use super::host_pool::POOL_BUFFERS;
use super::placement;
use super::nvme::{sweep_dead_scratch, ALIGN};
use super::stream_nvme::pool_buffers;
use super::write_behind::WRITES_IN_FLIGHT;

// The window counts as many I/O buffers as units alive (prefetch + 3):
// min(prefetch + 1, READ_BUFFERS) read, WRITES_IN_FLIGHT written behind.
const _: () = assert!(super::nvme::READ_BUFFERS <= 2 && WRITES_IN_FLIGHT <= 2);
use crate::config::Config;
use crate::model::layout::ParamLayout;
use anyhow::{bail, Result};
use std::path::Path;

/// Bytes an offloaded run keeps off the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadBytes {
    /// Host memory at its peak: the resident units' master weights and
    /// state (every unit in the cpu tier, those `offload.host_gb` holds in
    /// the nvme tier), the nvme tier's read-ahead / write-behind window of
    /// the units in files, plus the gradient pool and the kept bf16 images
    /// (the parts below), plus (`offload.params = nvme`) the buffers the
    /// passes read weights into (`host_reads`).
    pub host: u64,
    /// Of `host`: the pooled gradient buffers ([`POOL_BUFFERS`] of the
    /// biggest unit), which also carry the bf16 images to the device.
    pub host_pool: u64,
    /// Of `host`: the resident units' bf16 images, kept for the run (CUDA
    /// with `offload.params = cpu`, or `nvme` for the units not in files:
    /// the passes upload the weights from them).
    pub host_images: u64,
    /// Of `host`: `offload.params = nvme`'s read buffers (each holds the
    /// largest file unit's pass section: bf16 image on CUDA, else fp32
    /// master).
    pub host_reads: u64,
    /// Of `host`: the nvme tier's units passing through a step (read
    /// ahead, being read, stepping, being installed) and its pooled I/O
    /// buffers (the one reads fill, those written behind), sized by the
    /// largest unit in a file. Given back at each step's end.
    pub host_window: u64,
    /// The NVMe tier's state files (0 for the cpu tier), with each unit's
    /// bf16 image for `offload.params = nvme` on CUDA.
    pub disk: u64,
    /// Units (and their parameters) resident in host memory and in files
    /// (those kept on the device: [`gpu_units`]).
    pub host_units: usize,
    pub host_params: u64,
    pub disk_units: usize,
    pub disk_params: u64,
    /// Host memory at start-up beyond the steady state: a padded model's
    /// initial fp32 weights are made whole before the units take them over
    /// (an unpadded one's unit by unit: 0 here). When it was made whole for
    /// every model, 27.44B parameters on the H200 peaked at 111.0 GB of RSS
    /// against 101.7 GB of steady state (109.8 GB predicted by this).
    pub host_init: u64,
}

impl OffloadBytes {
    /// Of `host`: the resident units' master weights and state.
    pub fn host_resident(&self) -> u64 {
        self.host - self.host_pool - self.host_images - self.host_reads - self.host_window
    }

    /// Host memory at the run's peak: the steady state or the start-up.
    pub fn host_peak(&self) -> u64 {
        self.host.max(self.host_init)
    }
}

/// The units `offload.gpu_gb` keeps on the device (counted in the
/// device's estimate, `telemetry::memory`, not in [`OffloadBytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuUnits {
    pub units: usize,
    pub params: u64,
    /// fp32 master weights and optimizer state on the device.
    pub master: u64,
    pub state: u64,
    /// Parameters of the largest unit kept there.
    pub biggest: u64,
}

impl GpuUnits {
    pub fn bytes(&self) -> u64 {
        self.master + self.state
    }
}

/// The device tier of `cfg`'s placement ([`placement`]).
pub fn gpu_units(cfg: &Config) -> Result<GpuUnits> {
    if !cfg.offload.enabled() || cfg.offload.gpu_gb <= 0.0 {
        return Ok(GpuUnits::default());
    }
    let layout = ParamLayout::new(&cfg.model);
    let (units, places) = placement::plan_places(cfg, &layout)?;
    let on = || units.iter().zip(&places).filter(|(_, p)| **p == placement::Place::Gpu).map(|(u, _)| u);
    Ok(GpuUnits {
        units: on().count(),
        params: on().map(|u| u.params).sum(),
        master: on().map(|u| u.master).sum(),
        state: on().map(|u| u.state).sum(),
        biggest: on().map(|u| u.params).max().unwrap_or(0),
    })
}

/// Refuses a run whose device estimate (`telemetry::memory`, with the
/// units `offload.gpu_gb` keeps there) exceeds `dist.gpu_memory_gb`.
pub fn check_device(cfg: &Config) -> Result<()> {
    if cfg.offload.gpu_gb <= 0.0 {
        return Ok(());
    }
    let need = crate::telemetry::memory::estimate(cfg).total();
    let have = (cfg.dist.gpu_memory_gb * 1e9) as u64;
    if need > have {
        let gpu = gpu_units(cfg)?;
        bail!(
            "offload.gpu_gb = {} keeps {} units ({} parameters, {} of fp32 master weights and optimizer state) on the device, which then needs {} in all but dist.gpu_memory_gb = {} GB ({}) is all it has; \
             lower offload.gpu_gb, or shorten train.seq_len / train.batch_size, or turn on train.checkpoint_layers",
            cfg.offload.gpu_gb,
            gpu.units,
            gpu.params,
            gib(gpu.bytes()),
            gib(need),
            cfg.dist.gpu_memory_gb,
            gib(have)
        );
    }
    Ok(())
}

/// State tensors per unit an optimizer has at most (8-bit AdamW: codes
/// and absmax of m and v, and fp32 m, v for small tensors): the padding
/// each file section may add.
const MAX_STATE_TENSORS: u64 = 6;

/// Host and disk bytes of `cfg`'s offload setting (zeros when off), with
/// the units split between host memory and files as the run splits them
/// ([`placement`]).
pub fn offload_bytes(cfg: &Config) -> Result<OffloadBytes> {
    if !cfg.offload.enabled() {
        return Ok(OffloadBytes::default());
    }
    let layout = ParamLayout::new(&cfg.model);
    let (units, places) = placement::plan_places(cfg, &layout)?;
    // Units kept on the device (offload.gpu_gb) cost neither host nor disk.
    let resident = || units.iter().zip(&places).filter(|(_, p)| **p == placement::Place::Host).map(|(u, _)| u);
    let in_files = || units.iter().zip(&places).filter(|(_, p)| **p == placement::Place::Disk).map(|(u, _)| u);
    // The gradient pool: buffers of the biggest unit (fp32), allocated
    // once (parallel::offload::host_pool).
    // Units kept on the device never pass through it.
    let biggest_len = units.iter().zip(&places).filter(|(_, p)| **p != placement::Place::Gpu).map(|(u, _)| u.params).max().unwrap_or(0).max(1);
    let pool = POOL_BUFFERS as u64 * 4 * biggest_len;
    // Streamed weights on CUDA (bf16 passes) upload from a bf16 image of
    // each resident unit, kept for the run; params = nvme reads the file
    // units' images from their files; otherwise the image of a stepped
    // unit is written into its pool buffer.
    let images: u64 = resident().map(|u| u.image).sum();
    let resident_bytes: u64 = resident().map(|u| u.master_state()).sum();
    let cuda = cfg.device == "cuda";
    let mut out = OffloadBytes {
        host_pool: pool,
        host_images: images,
        host_units: resident().count(),
        host_params: resident().map(|u| u.params).sum(),
        disk_units: in_files().count(),
        disk_params: in_files().map(|u| u.params).sum(),
        ..Default::default()
    };
    if out.disk_units > 0 {
        // Units alive at once: the read-ahead window, the one being read,
        // the one stepping, the one being installed; and the I/O buffers
        // (whole unit files): up to two the reads fill and WRITES_IN_FLIGHT
        // written behind, no more than the units (checked above), so at
        // most doubling them.
        let alive = cfg.offload.prefetch as u64 + 3;
        let biggest = in_files().map(|u| u.master_state()).max().unwrap_or(0);
        out.host_window = alive * 2 * biggest;
        out.disk = in_files().map(|u| u.master_state() + (1 + MAX_STATE_TENSORS) * ALIGN as u64).sum();
        if cfg.offload.params == "nvme" {
            // The leading bf16 image section of each file (CUDA), and the
            // pool the passes read into: each buffer holds the largest
            // file unit's pass section (bf16 image or fp32 master).
            if cuda {
                out.disk += in_files().map(|u| padded(2 * u.params)).sum::<u64>();
            }
            let pass = in_files().map(|u| padded(if cuda { 2 } else { 4 } * u.params)).max().unwrap_or(0);
            out.host_reads = pool_buffers(cfg.offload.prefetch) as u64 * pass;
        }
    }
    out.host = resident_bytes + pool + images + out.host_window + out.host_reads;
    let made_whole = crate::model::init::init_range(&cfg.model, &layout, cfg.seed, 0..0).is_none();
    out.host_init = if made_whole { 4 * layout.total as u64 } else { 0 };
    Ok(out)
}

/// Bytes of host memory available now (`MemAvailable` of /proc/meminfo).
pub fn host_available() -> Option<u64> {
    crate::util::meminfo::mem_available()
}

/// Free bytes (for an unprivileged user) of the filesystem holding `path`
/// or its nearest existing parent.
pub fn disk_available(path: &Path) -> Option<u64> {
    let mut p = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    while !p.exists() {
        p = p.parent().filter(|q| !q.as_os_str().is_empty()).unwrap_or(Path::new("."));
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string, s a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

fn padded(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGN as u64) * ALIGN as u64
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Refuses `need` when more than `host` / `disk` bytes (`None`: unknown,
/// not checked). The message names the numbers and the knobs to turn.
pub fn check(cfg: &Config, need: OffloadBytes, host: Option<u64>, disk: Option<u64>) -> Result<()> {
    let tier = &cfg.offload.optimizer;
    if let Some(free) = disk {
        if need.disk > free {
            bail!(
                "offload.optimizer = {tier} needs {} of disk for the state files of {} units ({} parameters) under offload.path = {} but only {} is free there; \
                 point offload.path at a larger disk, keep more units in host memory (offload.host_gb = {}), use offload.optimizer = cpu if host memory allows, or a smaller model / optimizer.name = adamw8bit{}",
                gib(need.disk),
                need.disk_units,
                need.disk_params,
                cfg.offload.path,
                gib(free),
                cfg.offload.host_gb,
                if cfg.offload.params == "nvme" && cfg.device == "cuda" { " (offload.params = nvme adds a bf16 image of the weights to the files)" } else { "" }
            );
        }
    }
    if let Some(free) = host {
        if need.host_init > free && need.host_init > need.host {
            bail!(
                "offload.optimizer = {tier}: the model's initial fp32 weights ({} parameters, {}) are made in host memory before the units take them over, but only {} is available;                  a smaller model, or a machine with more host memory",
                need.host_init / 4,
                gib(need.host_init),
                gib(free)
            );
        }
        if need.host > free {
            bail!(
                "offload.optimizer = {tier} needs {} of host memory ({} resident units' master weights and optimizer state {}, gradient buffers, read-ahead / write-behind window) but only {} is available; \
                 {}, optimizer.name = adamw8bit, or a smaller model",
                gib(need.host),
                need.host_units,
                gib(need.host_resident()),
                gib(free),
                if tier == "nvme" { format!("lower offload.host_gb (now {}) to keep fewer units in host memory", cfg.offload.host_gb) } else { "use offload.optimizer = nvme with offload.path on a fast disk (offload.host_gb mixes the two)".to_string() }
            );
        }
    }
    Ok(())
}

/// The check a run makes before it allocates anything. The scratch
/// folders of killed nvme runs under `offload.path` are removed first (a
/// resume after a kill must not find its disk full of its own past).
pub fn check_before_start(cfg: &Config) -> Result<()> {
    check_device(cfg)?;
    let need = offload_bytes(cfg)?;
    if cfg.offload.optimizer == "nvme" {
        let (folders, bytes) = sweep_dead_scratch(Path::new(&cfg.offload.path));
        if folders > 0 {
            eprintln!("note: removed {folders} scratch folder(s) of ended runs under offload.path = {} ({})", cfg.offload.path, gib(bytes));
        }
    }
    let disk = if cfg.offload.optimizer == "nvme" { disk_available(Path::new(&cfg.offload.path)) } else { None };
    check(cfg, need, host_available(), disk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// Every unit on the device: the steady host need is the gradient pool
    /// alone, but start-up makes a padded model's whole initial fp32
    /// weights in host memory (tiny-llama: SwiGLU width 352 padded to 384);
    /// the check
    /// refuses a host that cannot hold them. Unpadded (d_ff 384), nothing
    /// is counted.
    #[test]
    fn start_up_weights_count_when_the_units_live_elsewhere() {
        let base = ["model.preset=tiny-llama", "model.n_layers=8", "offload.optimizer=cpu", "offload.gpu_gb=1"];
        let load = |extra: &[&str]| config::load(None, &base.iter().chain(extra).map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        assert_eq!(offload_bytes(&load(&["model.d_ff=384"])).unwrap().host_init, 0, "unpadded: made unit by unit");
        let cfg = load(&[]);
        let need = offload_bytes(&cfg).unwrap();
        let total = ParamLayout::new(&cfg.model).total as u64;
        assert_eq!(need.host_init, 4 * total);
        assert!(need.host < need.host_init && need.host_peak() == need.host_init, "{need:?}");
        let err = check(&cfg, need, Some(need.host_init - 1), None).unwrap_err().to_string();
        assert!(err.contains("initial fp32 weights"), "{err}");
        check(&cfg, need, Some(need.host_init), None).unwrap();
    }
}
