//! The NVMe tier: one scratch file per unit holding its fp32 master weights
//! and its optimizer state, read and written whole in 4 KiB-aligned blocks
//! with `O_DIRECT` (no page cache: the state does not also fill host
//! memory). Filesystems that refuse `O_DIRECT` (tmpfs, some overlay
//! filesystems) get buffered I/O instead, noted once.
//!
//! File layout: the master weights, then each optimizer state tensor in
//! `state_tensors` order, every section padded to [`ALIGN`] bytes.
//!
//! These files are scratch, never checkpoints: checkpoints are written by
//! `ckpt/` (atomic, as for every run) and a resume rewrites every file
//! from the checkpoint, so a kill in the middle of a write here loses
//! nothing.

use super::host_optimizer::UnitHost;
use crate::backend::{Backend, DType};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use anyhow::{bail, Context, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
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
    fn f32s(&self, off: usize, n: usize) -> &[f32] {
        assert!(off % 4 == 0 && off + 4 * n <= self.len);
        // SAFETY: in range (checked), aligned (base is ALIGN-aligned, off % 4 == 0), any bits are valid f32.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off) as *const f32, n) }
    }
    fn f32s_mut(&mut self, off: usize, n: usize) -> &mut [f32] {
        assert!(off % 4 == 0 && off + 4 * n <= self.len);
        // SAFETY: as in f32s, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off) as *mut f32, n) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align_unchecked(self.len, ALIGN)) }
    }
}

/// The state files of every unit in one folder.
pub struct StateFiles {
    pub dir: PathBuf,
    direct: AtomicBool,
    noted: AtomicBool,
}

impl StateFiles {
    /// Creates `dir` (a folder of its own under `offload.path`).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create offload.path folder {}", dir.display()))?;
        Ok(StateFiles { dir: dir.to_path_buf(), direct: AtomicBool::new(true), noted: AtomicBool::new(false) })
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
        let mut sizes = vec![4 * host.master.len];
        sizes.extend(states.iter().map(|t| t.bytes() as usize));
        let total: usize = sizes.iter().map(|&s| padded(s)).sum();
        let mut buf = AlignedBuf::new(total)?;
        buf.f32s_mut(0, host.master.len).copy_from_slice(host.master());
        let mut off = padded(sizes[0]);
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
        let mut sizes = vec![4 * host.master.len];
        sizes.extend(states.iter().map(|t| t.bytes() as usize));
        let total: usize = sizes.iter().map(|&s| padded(s)).sum();
        let mut buf = AlignedBuf::new(total)?;
        let path = self.path(unit);
        let mut f = self.open(unit, false)?;
        let got = f.metadata().map(|m| m.len()).unwrap_or(0);
        if got != total as u64 {
            bail!("offload state file {} has {got} bytes, expected {total}: it is not this run's (delete offload.path's folder)", path.display());
        }
        if let Err(e) = f.read_exact(buf.bytes_mut()) {
            if !(self.direct() && e.raw_os_error() == Some(libc::EINVAL)) {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
            self.fall_back(&e);
            self.open(unit, false)?.read_exact(buf.bytes_mut()).with_context(|| format!("cannot read {}", path.display()))?;
        }
        let n = host.master.len;
        host.set_master(buf.f32s(0, n))?;
        let mut off = padded(sizes[0]);
        for t in &states {
            match t.dtype {
                DType::U8 => host.h.upload_u8(t.view, &buf.bytes()[off..off + t.view.len])?,
                _ => host.h.upload(t.view, buf.f32s(off, t.view.len))?,
            }
            off += padded(t.bytes() as usize);
        }
        Ok(host)
    }
}
