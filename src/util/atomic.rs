//! Crash-safe file and directory publication.
//!
//! A reader must only ever see either the old content or the complete new
//! content, never a half-written file, even if the process is killed or the
//! machine loses power at any instant. The recipe is the classic one:
//! write everything under a temporary name in the *same* directory (so the
//! final rename cannot cross file systems), fsync the data, rename over the
//! final name (atomic on POSIX), then fsync the directory so the rename
//! itself is durable.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Flush a file's data and metadata to stable storage.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync {}", path.display()))
}

/// Make a directory's entries (creations, renames, deletions) durable.
///
/// Without this a rename can be lost on power failure even though the file
/// data itself was synced. Opening a directory read-only and fsyncing it is
/// the POSIX way; on platforms that refuse, there is nothing better to do.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot fsync directory {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The directory that holds `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temporary sibling name for `path`. The pid keeps two processes that
/// write the same file from clobbering each other's temporary.
/// The extension is kept last so writers that pick a format from it (the
/// PNG encoder) still work.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    parent_of(path).join(format!(".{name}.{}.tmp{ext}", std::process::id()))
}

/// Atomically create or replace `path` with whatever `write` puts at the
/// temporary path it is given. On error the temporary is removed and the
/// old `path` (if any) is untouched.
pub fn write_file_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = write(&tmp)
        .and_then(|()| sync_file(&tmp))
        .and_then(|()| {
            fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
        })
        .and_then(|()| sync_dir(&parent_of(path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Atomically create or replace `path` with `bytes`.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_with(path, |tmp| {
        fs::write(tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// The staging name for a directory that will be published as `final_dir`
/// (`step_00000200` → `step_00000200.tmp`). Readers ignore `*.tmp`.
pub fn staging_dir(final_dir: &Path) -> PathBuf {
    let mut name = final_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    final_dir.with_file_name(name)
}

/// Build a directory under a staging name and publish it as `final_dir` in
/// one rename. `fill` writes files into the staging directory it is given;
/// every regular file there is fsynced before the rename, so a published
/// directory is always complete.
///
/// If `final_dir` already exists (the same step saved twice), the old copy is
/// moved aside under a `*.tmp` name first: a crash between the two renames
/// leaves only `*.tmp` litter, which readers ignore and the next save removes.
pub fn publish_dir(final_dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = parent_of(final_dir);
    let staging = staging_dir(final_dir);
    remove_dir_if_exists(&staging)?;
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let staged = fill(&staging).and_then(|()| sync_tree_files(&staging)).and_then(|()| sync_dir(&staging));
    if let Err(e) = staged {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let replaced = if final_dir.exists() {
        let mut name = final_dir.file_name().unwrap_or_default().to_os_string();
        name.push(".replaced.tmp");
        let aside = final_dir.with_file_name(name);
        remove_dir_if_exists(&aside)?;
        fs::rename(final_dir, &aside)
            .with_context(|| format!("cannot move old {} aside", final_dir.display()))?;
        Some(aside)
    } else {
        None
    };
    fs::rename(&staging, final_dir)
        .with_context(|| format!("cannot rename {} to {}", staging.display(), final_dir.display()))?;
    sync_dir(&parent)?;
    if let Some(aside) = replaced {
        remove_dir_if_exists(&aside)?;
    }
    Ok(())
}

/// fsync every regular file directly inside `dir` (checkpoints are flat).
fn sync_tree_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            sync_file(&entry.path())?;
        }
    }
    Ok(())
}

pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}
