//! Host and disk bytes of an offloaded run, and the check that refuses to
//! start one that would run out of either (before anything is allocated).

use super::host_optimizer::unit_layout;
use super::host_pool::POOL_BUFFERS;
use super::nvme::{sweep_dead_scratch, ALIGN};
use super::stream_nvme::pool_buffers;
use crate::config::Config;
use crate::model::layout::ParamLayout;
use crate::model::store::unit_ranges;
use anyhow::{bail, Result};
use std::path::Path;

/// Bytes an offloaded run keeps off the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadBytes {
    /// Host memory at its peak: master weights and state (cpu tier) or the
    /// read-ahead window (nvme tier), plus the gradient pool and the kept
    /// bf16 images (the two parts below), plus (`offload.params = nvme`)
    /// the buffers the passes read weights into (`host_reads`).
    pub host: u64,
    /// Of `host`: the pooled gradient buffers ([`POOL_BUFFERS`] of the
    /// biggest unit), which also carry the bf16 images to the device.
    pub host_pool: u64,
    /// Of `host`: every unit's bf16 image, kept for the run (CUDA with
    /// `offload.params = cpu`: the passes upload the weights from them).
    pub host_images: u64,
    /// Of `host`: `offload.params = nvme`'s read buffers (each holds the
    /// largest unit's pass section: bf16 image on CUDA, else fp32 master).
    pub host_reads: u64,
    /// The NVMe tier's state files (0 for the cpu tier), with each unit's
    /// bf16 image for `offload.params = nvme` on CUDA.
    pub disk: u64,
}

/// State tensors per unit an optimizer has at most (8-bit AdamW: codes
/// and absmax of m and v, and fp32 m, v for small tensors): the padding
/// each file section may add.
const MAX_STATE_TENSORS: u64 = 6;

/// Host and disk bytes of `cfg`'s offload setting (zeros when off).
pub fn offload_bytes(cfg: &Config) -> Result<OffloadBytes> {
    if !cfg.offload.enabled() {
        return Ok(OffloadBytes::default());
    }
    let layout = ParamLayout::new(&cfg.model);
    let ranges = unit_ranges(&cfg.model, &layout);
    let mut per_unit = vec![];
    for r in &ranges {
        let state: u64 = crate::optim::plan(&cfg.optimizer, &unit_layout(&layout, r))?.iter().map(|g| g.state_bytes).sum();
        per_unit.push((4 * r.len() as u64, state));
    }
    // The gradient pool: buffers of the biggest unit (fp32), allocated
    // once (parallel::offload::host_pool).
    let biggest_len = ranges.iter().map(|r| r.len()).max().unwrap_or(0).max(1) as u64;
    let pool = POOL_BUFFERS as u64 * 4 * biggest_len;
    // Streamed weights on CUDA (bf16 passes) upload from a bf16 image of
    // each unit, kept for the run (params = cpu); params = nvme reads them
    // from the files; otherwise the image of a stepped unit is written
    // into its pool buffer.
    let cuda = cfg.device == "cuda";
    let images = if cuda && cfg.offload.params == "cpu" { 2 * layout.total as u64 } else { 0 };
    let biggest = per_unit.iter().map(|(m, s)| m + s).max().unwrap_or(0);
    Ok(match cfg.offload.optimizer.as_str() {
        "cpu" => OffloadBytes { host: per_unit.iter().map(|(m, s)| m + s).sum::<u64>() + pool + images, host_pool: pool, host_images: images, host_reads: 0, disk: 0 },
        _ => {
            // Units alive at once: the read-ahead window, the one being
            // read, the one stepping, the one being written (its I/O
            // buffer doubles it).
            let alive = cfg.offload.prefetch as u64 + 3;
            let mut disk: u64 = per_unit.iter().map(|(m, s)| m + s + (1 + MAX_STATE_TENSORS) * ALIGN as u64).sum();
            let mut reads = 0;
            if cfg.offload.params == "nvme" {
                // The leading bf16 image section of each file (CUDA), and
                // the pool the passes read into: each buffer holds the
                // largest unit's pass section (bf16 image or fp32 master).
                if cuda {
                    disk += ranges.iter().map(|r| padded(2 * r.len() as u64)).sum::<u64>();
                }
                let pass = ranges.iter().map(|r| padded(if cuda { 2 } else { 4 } * r.len() as u64)).max().unwrap_or(0);
                reads = pool_buffers(cfg.offload.prefetch) as u64 * pass;
            }
            OffloadBytes { host: pool + images + alive * 2 * biggest + reads, host_pool: pool, host_images: images, host_reads: reads, disk }
        }
    })
}

/// Bytes of host memory available now (`MemAvailable` of /proc/meminfo).
pub fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
                "offload.optimizer = {tier} needs {} of disk for the state files under offload.path = {} but only {} is free there; \
                 point offload.path at a larger disk, use offload.optimizer = cpu if host memory allows, or a smaller model / optimizer.name = adamw8bit{}",
                gib(need.disk),
                cfg.offload.path,
                gib(free),
                if cfg.offload.params == "nvme" && cfg.device == "cuda" { " (offload.params = nvme adds a bf16 image of the weights to the files)" } else { "" }
            );
        }
    }
    if let Some(free) = host {
        if need.host > free {
            bail!(
                "offload.optimizer = {tier} needs {} of host memory (master weights, optimizer state, gradient buffers) but only {} is available; \
                 use offload.optimizer = nvme with offload.path on a fast disk, optimizer.name = adamw8bit, or a smaller model",
                gib(need.host),
                gib(free)
            );
        }
    }
    Ok(())
}

/// The check a run makes before it allocates anything. The scratch
/// folders of killed nvme runs under `offload.path` are removed first (a
/// resume after a kill must not find its disk full of its own past).
pub fn check_before_start(cfg: &Config) -> Result<()> {
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
