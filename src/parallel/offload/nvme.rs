//! The NVMe tier: one scratch file per unit holding its fp32 master weights
//! and its optimizer state, read and written whole in 4 KiB-aligned blocks
//! with `O_DIRECT` (no page cache: the state does not also fill host
//! memory). Filesystems that refuse `O_DIRECT` (tmpfs, some overlay
//! filesystems) get buffered I/O instead, noted once.
//!
//! File layout, every section padded to [`ALIGN`] bytes:
//! 1. with `offload.params = nvme` on a device computing in bf16 (CUDA):
//!    the unit's bf16 image of its master weights (round to nearest even,
//!    as [`UnitHost::refresh_image`]), what a pass reads: 2 bytes per
//!    parameter in one aligned read from the start of the file;
//! 2. the fp32 master weights (without an image section they come first,
//!    and a pass on an fp32 device reads them);
//! 3. each optimizer state tensor in `state_tensors` order.
//!
//! [`StateFiles::read_pass`] reads the leading section only; the
//! optimizer's [`StateFiles::read`] skips the image; every
//! [`StateFiles::write`] (a unit's step, a checkpoint load) rounds the
//! image afresh from the master it writes, so the image never lags it.
//!
//! These files are scratch, never checkpoints: checkpoints are written by
//! `ckpt/` (atomic, as for every run) and a resume rewrites every file
//! from the checkpoint, so a kill in the middle of a write here loses
//! nothing. Each folder's process keeps the folder itself locked (`flock`
//! on its directory, released by the kernel however the process ends): the next
//! run removes the folders of killed runs ([`sweep_dead_scratch`]) before
//! it checks the free disk, so their gigabytes do not block a resume.

use super::host_optimizer::UnitHost;
use crate::backend::{Backend, DType};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use anyhow::{bail, Context, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Block size and buffer alignment of every read and write.
pub const ALIGN: usize = 4096;

fn padded(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// A zeroed heap buffer aligned to [`ALIGN`], a multiple of it long.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Result<Self> {
        let len = padded(len.max(1));
        let layout = Layout::from_size_align(len, ALIGN).context("aligned buffer layout")?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            bail!("cannot allocate {len} bytes of host memory for NVMe I/O");
        }
        Ok(AlignedBuf { ptr, len })
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// `n` f32 values starting at byte `off` (a multiple of 4: sections
    /// start at multiples of ALIGN).
    pub fn f32s(&self, off: usize, n: usize) -> &[f32] {
        assert!(off % 4 == 0 && off + 4 * n <= self.len);
        // SAFETY: in range (checked), aligned (base is ALIGN-aligned, off % 4 == 0), any bits are valid f32.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off) as *const f32, n) }
    }
    fn f32s_mut(&mut self, off: usize, n: usize) -> &mut [f32] {
        assert!(off % 4 == 0 && off + 4 * n <= self.len);
        // SAFETY: as in f32s, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off) as *mut f32, n) }
    }
    /// `n` bf16 bit patterns starting at byte `off` (a multiple of 2).
    pub fn u16s(&self, off: usize, n: usize) -> &[u16] {
        assert!(off % 2 == 0 && off + 2 * n <= self.len);
        // SAFETY: in range (checked), aligned as f32s, any bits are valid u16.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off) as *const u16, n) }
    }
    fn u16s_mut(&mut self, off: usize, n: usize) -> &mut [u16] {
        assert!(off % 2 == 0 && off + 2 * n <= self.len);
        // SAFETY: as in u16s, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off) as *mut u16, n) }
    }
    /// Bytes the buffer holds (a multiple of [`ALIGN`]).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align_unchecked(self.len, ALIGN)) }
    }
}

/// The state files of every unit in one folder.
/// Name prefix of a scratch folder under `offload.path`.
pub const SCRATCH_PREFIX: &str = "ferrotron-offload-";

pub struct StateFiles {
    pub dir: PathBuf,
    /// Held (flock) while this process uses the folder.
    _lock: File,
    /// Each file leads with the unit's bf16 image (see the module doc).
    images: bool,
    direct: AtomicBool,
    noted: AtomicBool,
}

impl StateFiles {
    /// Creates `dir` (a folder of its own under `offload.path`); `images`:
    /// each file leads with a bf16 image of the master weights.
    pub fn create(dir: &Path, images: bool) -> Result<Self> {
        // Made under a hidden name, locked, then renamed: a sweep by
        // another process never sees it unlocked.
        let (parent, name) = (dir.parent().unwrap_or(Path::new(".")), dir.file_name().unwrap_or_default().to_string_lossy());
        let staging = parent.join(format!(".{name}"));
        std::fs::create_dir_all(&staging).with_context(|| format!("cannot create offload.path folder {}", staging.display()))?;
        let lock = File::open(&staging).with_context(|| format!("cannot open folder {}", staging.display()))?;
        if !try_lock(&lock) {
            bail!("offload scratch folder {} is in use by another process", staging.display());
        }
        std::fs::rename(&staging, dir).with_context(|| format!("cannot rename {} to {}", staging.display(), dir.display()))?;
        Ok(StateFiles { dir: dir.to_path_buf(), _lock: lock, images, direct: AtomicBool::new(true), noted: AtomicBool::new(false) })
    }

    /// Whether the files lead with bf16 images of the master weights.
    pub fn images(&self) -> bool {
        self.images
    }

    /// Bytes of the leading section a pass reads for a unit of `n`
    /// parameters (its bf16 image, else its fp32 master), padded.
    pub fn pass_bytes(&self, n: usize) -> usize {
        padded(if self.images { 2 * n } else { 4 * n })
    }

    /// Section sizes (unpadded bytes) of a unit's file.
    fn sections(&self, n: usize, states: &[crate::optim::StateTensor]) -> Vec<usize> {
        let mut sizes = if self.images { vec![2 * n] } else { vec![] };
        sizes.push(4 * n);
        sizes.extend(states.iter().map(|t| t.bytes() as usize));
        sizes
    }

    /// Bytes before the master weights (the image section, if any).
    fn master_offset(&self, n: usize) -> usize {
        if self.images { padded(2 * n) } else { 0 }
    }

    pub fn path(&self, unit: usize) -> PathBuf {
        self.dir.join(format!("unit_{unit:04}.state"))
    }

    /// Whether reads and writes bypass the page cache.
    pub fn direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    fn fall_back(&self, why: &std::io::Error) {
        self.direct.store(false, Ordering::Relaxed);
        if !self.noted.swap(true, Ordering::Relaxed) {
            eprintln!("note: {} does not support O_DIRECT ({why}); the NVMe tier uses buffered I/O there", self.dir.display());
        }
    }

    fn open(&self, unit: usize, write: bool) -> Result<File> {
        let path = self.path(unit);
        let mut opts = OpenOptions::new();
        opts.read(!write).write(write).create(write);
        if self.direct() {
            let mut d = opts.clone();
            d.custom_flags(libc::O_DIRECT);
            match d.open(&path) {
                Ok(f) => return Ok(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.fall_back(&e),
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            }
        }
        opts.open(&path).with_context(|| format!("cannot open {}", path.display()))
    }

    /// File bytes of a unit with these sections (bytes each).
    pub fn file_bytes(sections: impl IntoIterator<Item = u64>) -> u64 {
        sections.into_iter().map(|b| padded(b as usize) as u64).sum()
    }

    /// Writes `host`'s master weights and state to its file.
    pub fn write(&self, host: &mut UnitHost) -> Result<u64> {
        let states = host.opt.state_tensors();
        let n = host.master.len;
        let total: usize = self.sections(n, &states).iter().map(|&s| padded(s)).sum();
        let mut buf = AlignedBuf::new(total)?;
        let at = self.master_offset(n);
        if self.images {
            host.write_image(buf.u16s_mut(0, n));
        }
        buf.f32s_mut(at, n).copy_from_slice(host.master());
        let mut off = at + padded(4 * n);
        for t in &states {
            match t.dtype {
                DType::U8 => host.h.download_u8(t.view, &mut buf.bytes_mut()[off..off + t.view.len])?,
                _ => host.h.download(t.view, buf.f32s_mut(off, t.view.len))?,
            }
            off += padded(t.bytes() as usize);
        }
        let path = self.path(host.unit);
        let attempt = |f: &mut File| f.write_all(buf.bytes());
        let mut f = self.open(host.unit, true)?;
        if let Err(e) = attempt(&mut f) {
            if !(self.direct() && e.raw_os_error() == Some(libc::EINVAL)) {
                return Err(e).with_context(|| format!("cannot write {}", path.display()));
            }
            self.fall_back(&e);
            let mut f = self.open(host.unit, true)?;
            attempt(&mut f).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(total as u64)
    }

    /// A unit's master weights and state, read back from its file, with
    /// the optimizer's scalar state `meta` (step count; `Null`: fresh).
    pub fn read(&self, unit: usize, cfg: &OptimizerConfig, layout: &ParamLayout, meta: &serde_json::Value) -> Result<UnitHost> {
        let mut host = UnitHost::new(unit, cfg, layout)?;
        if !meta.is_null() {
            host.opt.load_meta(meta)?;
        }
        let states = host.opt.state_tensors();
        let n = host.master.len;
        let total: usize = self.sections(n, &states).iter().map(|&s| padded(s)).sum();
        let skip = self.master_offset(n);
        let mut buf = AlignedBuf::new(total - skip)?;
        let got = std::fs::metadata(self.path(unit)).map(|m| m.len()).unwrap_or(0);
        if got != total as u64 {
            bail!("offload state file {} has {got} bytes, expected {total}: it is not this run's (delete offload.path's folder)", self.path(unit).display());
        }
        // The optimizer does not need the image: read from the master on.
        self.read_at(unit, skip as u64, &mut buf.bytes_mut()[..total - skip])?;
        host.set_master(buf.f32s(0, n))?;
        let mut off = padded(4 * n);
        for t in &states {
            match t.dtype {
                DType::U8 => host.h.upload_u8(t.view, &buf.bytes()[off..off + t.view.len])?,
                _ => host.h.upload(t.view, buf.f32s(off, t.view.len))?,
            }
            off += padded(t.bytes() as usize);
        }
        Ok(host)
    }

    /// The leading section of unit `unit`'s file (`n` parameters): its
    /// compute weights, what a pass uploads (`offload.params = nvme`).
    pub fn read_pass(&self, unit: usize, n: usize, buf: &mut AlignedBuf) -> Result<()> {
        let bytes = self.pass_bytes(n);
        if buf.len() < bytes {
            bail!("offload: a {}-byte buffer cannot hold unit {unit}'s {bytes}-byte weights", buf.len());
        }
        self.read_at(unit, 0, &mut buf.bytes_mut()[..bytes])
    }

    /// Fills `dst` (aligned, a multiple of ALIGN long) from byte `at` of
    /// unit `unit`'s file, in one read (O_DIRECT unless refused).
    fn read_at(&self, unit: usize, at: u64, dst: &mut [u8]) -> Result<()> {
        let path = self.path(unit);
        let f = self.open(unit, false)?;
        if let Err(e) = f.read_exact_at(dst, at) {
            if !(self.direct() && e.raw_os_error() == Some(libc::EINVAL)) {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
            self.fall_back(&e);
            self.open(unit, false)?.read_exact_at(dst, at).with_context(|| format!("cannot read {}", path.display()))?;
        }
        Ok(())
    }
}

/// Takes an exclusive `flock` on `f` without waiting: false if another
/// open of the file holds it.
fn try_lock(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes the scratch folders under `path` whose process is gone (their
/// lock is free: killed runs; a clean end removes its own). Returns the
/// folders and bytes removed. Live folders, of this or another process,
/// stay.
pub fn sweep_dead_scratch(path: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(path) else { return (0, 0) };
    let (mut folders, mut bytes) = (0, 0);
    for e in entries.flatten() {
        let dir = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        // This process's own folders are alive (or being created).
        let own = format!("{SCRATCH_PREFIX}{}-", std::process::id());
        if !name.starts_with(SCRATCH_PREFIX) || name.starts_with(&own) || !dir.is_dir() {
            continue;
        }
        let Ok(lock) = File::open(&dir) else { continue };
        if !try_lock(&lock) {
            continue;
        }
        let size: u64 = std::fs::read_dir(&dir).map(|d| d.flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0);
        if std::fs::remove_dir_all(&dir).is_ok() {
            folders += 1;
            bytes += size;
        }
    }
    (folders, bytes)
}
