//! Crash-safe file replacement: write a sibling temp file, fsync it, rename
//! it over the target. A reader (or a run killed mid-write) then sees either
//! the old file or the new one, never a half-written mix.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A temp path in the same folder as `target` (rename is only atomic within
/// one file system), keeping the extension so format-sniffing writers (the
/// PNG encoder picks the format from it) still work.
pub fn temp_sibling(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = target.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.tmp{ext}", std::process::id()))
}

/// Move a finished temp file over `target`, syncing so the rename survives
/// a power cut on file systems that need it.
pub fn commit(tmp: &Path, target: &Path) -> Result<()> {
    File::open(tmp).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", tmp.display()))?;
    fs::rename(tmp, target).with_context(|| format!("cannot rename {} to {}", tmp.display(), target.display()))?;
    sync_parent(target);
    Ok(())
}

/// Replace `target` with `bytes` atomically.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(target);
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|_| commit(&tmp, target));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Best effort: some platforms cannot open a directory for syncing, and a
/// missing directory sync only risks durability, not consistency.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}
