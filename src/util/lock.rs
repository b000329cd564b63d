//! One process per run folder: an exclusive advisory lock on
//! `<run_dir>/run.lock`, held for as long as a training runs there.
//!
//! The lock is `flock(2)` through std's `File::try_lock` (stable since Rust
//! 1.89): the kernel drops it when the process ends, however it ends
//! (kill -9 included), so a stale lock file never blocks anything. The file
//! also holds the holder's pid, which a refused process names. Advisory:
//! it stops ferrotron processes, not other programs; on file systems
//! without flock support (some network mounts) the lock may not exclude.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "run.lock";

/// Held while alive; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

impl RunLock {
    /// Lock `run_dir` (which must exist) or fail naming the process that
    /// holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let who = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!("process {pid}"),
                    Err(_) => "another process".to_string(),
                };
                bail!(
                    "run folder {} is in use by {who} (a training or resume running there; see {}); \
                     wait for it to finish or stop it, or use another run.name",
                    run_dir.display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { _file: file, path })
    }
}
