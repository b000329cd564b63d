//! Whole-file writes and aligned reads of the unit files in one folder,
//! with `O_DIRECT` (no page cache: the state does not also fill host
//! memory). Filesystems that refuse `O_DIRECT` (tmpfs, some overlay
//! filesystems) get buffered I/O instead, noted once. Shared by the
//! threads that read and write the files, each read and write timed.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

pub struct DirectIo {
    pub dir: PathBuf,
    direct: AtomicBool,
    noted: AtomicBool,
    stats: [AtomicU64; 4],
}

/// Totals of the files' reads and writes so far (a step takes the
/// difference).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IoStats {
    pub read_bytes: u64,
    pub read_ms: f64,
    pub write_bytes: u64,
    pub write_ms: f64,
}

const READ_BYTES: usize = 0;
const READ_NS: usize = 1;
const WRITE_BYTES: usize = 2;
const WRITE_NS: usize = 3;

impl DirectIo {
    pub fn new(dir: PathBuf) -> Self {
        DirectIo { dir, direct: AtomicBool::new(true), noted: AtomicBool::new(false), stats: Default::default() }
    }

    pub fn path(&self, unit: usize) -> PathBuf {
        self.dir.join(format!("unit_{unit:04}.state"))
    }

    /// Whether reads and writes bypass the page cache.
    pub fn direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> IoStats {
        let get = |i: usize| self.stats[i].load(Ordering::Relaxed);
        IoStats { read_bytes: get(READ_BYTES), read_ms: get(READ_NS) as f64 / 1e6, write_bytes: get(WRITE_BYTES), write_ms: get(WRITE_NS) as f64 / 1e6 }
    }

    /// Adds `n` bytes moved since `t` to the counters at `bytes`, `ns`.
    fn count(&self, bytes: usize, ns: usize, n: usize, t: Instant) {
        self.stats[bytes].fetch_add(n as u64, Ordering::Relaxed);
        self.stats[ns].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
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

    /// Writes `bytes` (aligned, a multiple of the block long) as unit
    /// `unit`'s file from its start.
    pub fn write(&self, unit: usize, bytes: &[u8]) -> Result<()> {
        let t = Instant::now();
        self.with_fallback(unit, true, |f| f.write_all(bytes))?;
        self.count(WRITE_BYTES, WRITE_NS, bytes.len(), t);
        Ok(())
    }

    /// Fills `dst` (aligned, a multiple of the block long) from byte `at`
    /// of unit `unit`'s file, in one read.
    pub fn read_at(&self, unit: usize, at: u64, dst: &mut [u8]) -> Result<()> {
        let t = Instant::now();
        self.with_fallback(unit, false, |f| f.read_exact_at(dst, at))?;
        self.count(READ_BYTES, READ_NS, dst.len(), t);
        Ok(())
    }

    /// Runs `io` on unit `unit`'s file opened for writing or reading; when
    /// `O_DIRECT` refuses it (EINVAL: the filesystem or the buffer), falls
    /// back to buffered I/O and runs it once more.
    fn with_fallback(&self, unit: usize, write: bool, mut io: impl FnMut(&mut File) -> std::io::Result<()>) -> Result<()> {
        let what = || format!("cannot {} {}", if write { "write" } else { "read" }, self.path(unit).display());
        if let Err(e) = io(&mut self.open(unit, write)?) {
            if !(self.direct() && e.raw_os_error() == Some(libc::EINVAL)) {
                return Err(e).with_context(what);
            }
            self.fall_back(&e);
            io(&mut self.open(unit, write)?).with_context(what)?;
        }
        Ok(())
    }
}
