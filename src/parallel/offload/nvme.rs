//! The NVMe tier: one scratch file per unit holding its fp32 master weights
//! and its optimizer state, read and written whole in 4 KiB-aligned blocks
//! with `O_DIRECT` ([`super::direct_io`]: no page cache, buffered where a
//! filesystem refuses it), through a few pooled aligned buffers
//! ([`super::io_bufs`]) that a unit is copied into and out of on all
//! cores. A stepped unit's write goes to a writer thread
//! ([`super::write_behind`]); every read and rewrite of a unit waits for
//! its pending write first, so no reader sees a file half written.
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

use super::direct_io::{DirectIo, IoStats};
use super::host_optimizer::UnitHost;
pub use super::io_bufs::{AlignedBuf, ALIGN};
use super::io_bufs::{padded, par_copy, IoBufs};
use super::write_behind::WriteBehind;
use crate::backend::DType;
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use crate::optim::StateTensor;
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name prefix of a scratch folder under `offload.path`.
pub const SCRATCH_PREFIX: &str = "ferrotron-offload-";

/// Buffers the optimizer's reads of whole units use at most: one the disk
/// fills while the unit read before it is copied out of the other, on all
/// cores ([`StateFiles::read_raw`], [`StateFiles::unpack`]).
pub const READ_BUFFERS: usize = 2;

/// The state files of every unit in one folder.
pub struct StateFiles {
    pub dir: PathBuf,
    /// Held (flock) while this process uses the folder.
    _lock: File,
    /// Each file leads with the unit's bf16 image (see the module doc).
    images: bool,
    io: Arc<DirectIo>,
    writes: WriteBehind,
    reads: IoBufs,
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
        let io = Arc::new(DirectIo::new(dir.to_path_buf()));
        let writes = WriteBehind::start(io.clone())?;
        Ok(StateFiles { dir: dir.to_path_buf(), _lock: lock, images, io, writes, reads: IoBufs::new(READ_BUFFERS) })
    }

    /// Lowers the read buffers to `n` (at least 1, at most
    /// [`READ_BUFFERS`]): a read-ahead window of `n - 1` units has room
    /// for that many (`budget::offload_bytes`).
    pub fn limit_read_buffers(&self, n: usize) {
        self.reads.set_cap(n.clamp(1, READ_BUFFERS));
    }

    /// `debug.offload_write_delay_ms`: each write sleeps this long before
    /// it opens its file (tests).
    pub fn set_write_delay_ms(&self, ms: u64) {
        self.writes.set_delay_ms(ms);
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
    fn sections(&self, n: usize, states: &[StateTensor]) -> Vec<usize> {
        let mut sizes = if self.images { vec![2 * n] } else { vec![] };
        sizes.push(4 * n);
        sizes.extend(states.iter().map(|t| t.bytes() as usize));
        sizes
    }

    /// Bytes of a unit's file (its sections, each padded).
    fn total(&self, n: usize, states: &[StateTensor]) -> usize {
        self.sections(n, states).iter().map(|&s| padded(s)).sum()
    }

    /// Bytes before the master weights (the image section, if any).
    fn master_offset(&self, n: usize) -> usize {
        if self.images { padded(2 * n) } else { 0 }
    }

    pub fn path(&self, unit: usize) -> PathBuf {
        self.io.path(unit)
    }

    /// Whether reads and writes bypass the page cache.
    pub fn direct(&self) -> bool {
        self.io.direct()
    }

    /// File bytes of a unit with these sections (bytes each).
    pub fn file_bytes(sections: impl IntoIterator<Item = u64>) -> u64 {
        sections.into_iter().map(|b| padded(b as usize) as u64).sum()
    }

    /// Writes `host`'s master weights and state to its file, returning
    /// when they are on disk; the file's bytes.
    pub fn write(&self, host: &mut UnitHost) -> Result<u64> {
        self.write_behind(host)?;
        self.writes.wait_unit(host.unit)?;
        Ok(self.total(host.master.len, &host.opt.state_tensors()) as u64)
    }

    /// Copies `host`'s master weights and state into a pooled buffer (on
    /// the calling rayon pool) and hands it to the writer thread: returns
    /// before the disk has it (see [`super::write_behind`]); the
    /// milliseconds it waited for a free buffer.
    pub fn write_behind(&self, host: &UnitHost) -> Result<f64> {
        let total = self.total(host.master.len, &host.opt.state_tensors());
        self.writes.queue(host.unit, total, |buf| self.pack(host, buf))
    }

    /// Lays `host` out in `buf` as its file: sections at their offsets, the
    /// padding between them zeroed (a pooled buffer holds an earlier
    /// unit's bytes there).
    fn pack(&self, host: &UnitHost, buf: &mut AlignedBuf) -> Result<()> {
        let states = host.opt.state_tensors();
        let n = host.master.len;
        let total = self.total(n, &states);
        ensure!(buf.len() >= total, "offload: a {}-byte buffer cannot hold unit {}'s {total}-byte file", buf.len(), host.unit);
        let mut off = 0;
        if self.images {
            host.write_image(buf.u16s_mut(0, n));
            off = 2 * n;
        }
        let parts = std::iter::once((host.master, DType::F32)).chain(states.iter().map(|t| (t.view, t.dtype)));
        for (view, dtype) in parts {
            let at = padded(off);
            buf.bytes_mut()[off..at].fill(0);
            let src = state_bytes(host, view, dtype)?;
            par_copy(&mut buf.bytes_mut()[at..at + src.len()], src);
            off = at + src.len();
        }
        buf.bytes_mut()[off..total].fill(0);
        Ok(())
    }

    /// A unit's master weights and state, read back from its file, with
    /// the optimizer's scalar state `meta` (step count; `Null`: fresh).
    /// Waits for the unit's pending write first.
    pub fn read(&self, unit: usize, cfg: &OptimizerConfig, layout: &ParamLayout, meta: &serde_json::Value) -> Result<UnitHost> {
        self.unpack(self.read_raw(unit, layout.total)?, cfg, layout, meta)
    }

    /// [`StateFiles::read`]'s disk half: unit `unit`'s file (`n`
    /// parameters) from the master section on, in a pooled buffer, after
    /// its pending write. A reader can start the next unit's while
    /// [`StateFiles::unpack`] copies this one.
    pub fn read_raw(&self, unit: usize, n: usize) -> Result<RawUnit<'_>> {
        self.writes.wait_unit(unit)?;
        let path = self.path(unit);
        let got = std::fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
        // The optimizer does not need the image: read from the master on.
        let skip = self.master_offset(n);
        if got < skip || !got.is_multiple_of(ALIGN) {
            bail!("offload state file {} has {got} bytes: it is not this run's (delete offload.path's folder)", path.display());
        }
        let mut raw = RawUnit { unit, file_bytes: got, buf: Some(self.reads.take(got - skip)?), pool: &self.reads };
        self.io.read_at(unit, skip as u64, &mut raw.bytes_mut()[..got - skip])?;
        Ok(raw)
    }

    /// [`StateFiles::read`]'s memory half: the unit made from `raw` (on the
    /// calling rayon pool); the buffer goes back to the pool.
    pub fn unpack(&self, mut raw: RawUnit<'_>, cfg: &OptimizerConfig, layout: &ParamLayout, meta: &serde_json::Value) -> Result<UnitHost> {
        let mut host = UnitHost::new(raw.unit, cfg, layout)?;
        if !meta.is_null() {
            host.opt.load_meta(meta)?;
        }
        let states = host.opt.state_tensors();
        let total = self.total(host.master.len, &states);
        if raw.file_bytes != total {
            bail!("offload state file {} has {} bytes, expected {total}: it is not this run's (delete offload.path's folder)", self.path(raw.unit).display(), raw.file_bytes);
        }
        unpack(raw.bytes_mut(), &mut host, &states)?;
        Ok(host)
    }

    /// The leading section of unit `unit`'s file (`n` parameters): its
    /// compute weights, what a pass uploads (`offload.params = nvme`).
    /// Waits for the unit's pending write first.
    pub fn read_pass(&self, unit: usize, n: usize, buf: &mut AlignedBuf) -> Result<()> {
        let bytes = self.pass_bytes(n);
        if buf.len() < bytes {
            bail!("offload: a {}-byte buffer cannot hold unit {unit}'s {bytes}-byte weights", buf.len());
        }
        self.writes.wait_unit(unit)?;
        self.io.read_at(unit, 0, &mut buf.bytes_mut()[..bytes])
    }

    /// Waits until every write handed to the writer is on disk; the first
    /// that failed, as an error naming its file.
    pub fn flush(&self) -> Result<()> {
        self.writes.flush()
    }

    /// Gives back the free I/O buffers (between steps, after a flush: the
    /// host then holds nothing of the units in files).
    pub fn release_buffers(&self) {
        self.writes.release();
        self.reads.release();
    }

    /// Host bytes of the I/O buffers that exist now.
    pub fn held_bytes(&self) -> u64 {
        self.writes.held_bytes() + self.reads.held_bytes()
    }

    /// The files' reads and writes so far.
    pub fn io_stats(&self) -> IoStats {
        self.io.stats()
    }

    /// Lets the pending writes finish and stops the writer (before the
    /// folder is removed).
    pub fn close(&self) {
        self.writes.close();
    }
}

/// A unit's file read into a pooled buffer, not yet copied into its host
/// ([`StateFiles::read_raw`]); the buffer goes back to the pool when this
/// is dropped.
pub struct RawUnit<'a> {
    unit: usize,
    /// The whole file's bytes (image section included).
    file_bytes: usize,
    buf: Option<AlignedBuf>,
    pool: &'a IoBufs,
}

impl RawUnit<'_> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut().expect("a raw unit's buffer").bytes_mut()
    }
}

impl Drop for RawUnit<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give(buf);
        }
    }
}

/// The bytes of one of `host`'s tensors (master or state) as the file
/// holds them.
fn state_bytes(host: &UnitHost, view: crate::backend::View, dtype: DType) -> Result<&[u8]> {
    ensure!(matches!(dtype, DType::F32 | DType::U8), "offload: a {dtype:?} state tensor cannot go to a file");
    host.h.view_bytes(view)
}

/// Fills `host`'s master weights and `states` from `buf`, the file from
/// the master section on, on the calling rayon pool.
fn unpack(buf: &[u8], host: &mut UnitHost, states: &[StateTensor]) -> Result<()> {
    let mut off = 0;
    let parts = std::iter::once((host.master, DType::F32)).chain(states.iter().map(|t| (t.view, t.dtype)));
    for (view, dtype) in parts {
        ensure!(matches!(dtype, DType::F32 | DType::U8), "offload: a {dtype:?} state tensor cannot come from a file");
        let dst = host.h.view_bytes_mut(view)?;
        let n = dst.len();
        par_copy(dst, &buf[off..off + n]);
        off = padded(off + n);
    }
    Ok(())
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
