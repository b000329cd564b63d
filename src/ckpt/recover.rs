//! Choosing the checkpoint to continue from: the newest one that loads and
//! passes its integrity checks. A newer checkpoint that is incomplete,
//! damaged (checksum), unreadable or non-finite is passed over, and the
//! fallback is announced on stderr, never silent.

use super::checkpoint::{self, is_complete, step_dirs, Loaded, MANIFEST_FILE, MODEL_FILE, OPTIM_FILE};
use anyhow::{bail, Result};
use std::path::Path;

/// The newest checkpoint of `run_dir` that loads and verifies, or `None`
/// when the run has no checkpoint folder at all. Every newer checkpoint
/// that was passed over is named on stderr with the reason. An error when
/// checkpoints exist but none is usable (each one's reason listed).
pub fn load_newest_good(run_dir: &Path) -> Result<Option<Loaded>> {
    newest_good_by(run_dir, checkpoint::load)
}

/// [`load_newest_good`] with another way of loading and checking one
/// checkpoint directory (`check`): an offloaded run's resume verifies the
/// files in one streamed pass and loads them unit by unit afterwards
/// (`ckpt::part_read`), so the whole model is never in memory at once.
pub fn newest_good_by<T>(run_dir: &Path, check: impl Fn(&Path) -> Result<T>) -> Result<Option<T>> {
    let mut passed = Vec::new();
    for (_, dir) in step_dirs(run_dir)?.into_iter().rev() {
        let result = if is_complete(&dir) {
            check(&dir)
        } else {
            let missing: Vec<&str> = [MANIFEST_FILE, MODEL_FILE, OPTIM_FILE].into_iter().filter(|f| !dir.join(f).is_file()).collect();
            Err(anyhow::anyhow!("{} is incomplete (no {}): a save or a deletion was interrupted", dir.display(), missing.join(", ")))
        };
        match result {
            Ok(loaded) => {
                for reason in &passed {
                    eprintln!("warning: passing over a newer checkpoint: {reason}");
                }
                if !passed.is_empty() {
                    eprintln!("warning: falling back to {}, the newest usable checkpoint", dir.display());
                }
                return Ok(Some(loaded));
            }
            Err(e) => passed.push(format!("{e:#}")),
        }
    }
    if passed.is_empty() {
        return Ok(None);
    }
    bail!("{} has no usable checkpoint:\n  {}", run_dir.display(), passed.join("\n  "))
}
