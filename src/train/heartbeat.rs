//! Each rank's heartbeat: `RUN/heartbeat/rank<R>.json`, overwritten
//! (atomically: a temporary file renamed over it) at each step and phase
//! change, e.g.
//! `{"rank":1,"pid":4242,"step":17,"phase":"step","time":1764650000.12,"timeout_s":60.0}`.
//!
//! `ferrotron launch` reads them (through a link in a folder it names in
//! [`DIR_ENV`], since it does not know the run folder) and stops the run
//! when a living rank's heartbeat is older than its `timeout_s`
//! (`dist.timeout_s`): a hang outside collectives, which no collective
//! timeout catches (dist/launch.rs). Cost: one ~100-byte file per step.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Set by `ferrotron launch`: a folder where each rank links its heartbeat
/// file as `rank<R>.json`.
pub const DIR_ENV: &str = "FERROTRON_HEARTBEAT_DIR";

pub struct Heartbeat {
    path: PathBuf,
    tmp: PathBuf,
    rank: usize,
    timeout_s: f64,
}

impl Heartbeat {
    /// Rank `rank`'s heartbeat in `run_dir` (made now, phase "start"), and
    /// its link in the launcher's folder when there is one.
    pub fn start(run_dir: &Path, rank: usize, timeout_s: f64) -> Result<Heartbeat> {
        let dir = run_dir.join("heartbeat");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = format!("rank{rank}.json");
        let hb = Heartbeat { path: dir.join(&name), tmp: dir.join(format!(".{name}.tmp")), rank, timeout_s };
        hb.beat(0, "start")?;
        if let Some(launcher) = std::env::var_os(DIR_ENV) {
            let link = Path::new(&launcher).join(&name);
            let target = std::fs::canonicalize(&hb.path)?;
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking the heartbeat into {}", link.display()))?;
        }
        Ok(hb)
    }

    /// This rank is alive at `step`, in `phase` ("step": running step
    /// `step`; "checkpoint": saving after step `step`).
    pub fn beat(&self, step: u64, phase: &str) -> Result<()> {
        let line = serde_json::json!({ "rank": self.rank, "pid": std::process::id(), "step": step, "phase": phase, "time": now(), "timeout_s": self.timeout_s });
        std::fs::write(&self.tmp, line.to_string()).and_then(|_| std::fs::rename(&self.tmp, &self.path)).with_context(|| format!("writing the heartbeat {}", self.path.display()))
    }
}

/// A heartbeat as read back (by the launcher).
#[derive(Clone, Debug, PartialEq)]
pub struct Beat {
    pub step: u64,
    pub phase: String,
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub timeout_s: f64,
}

/// The heartbeat in `path`, if it is there and readable (a half-written
/// one cannot be seen: files are replaced by rename).
pub fn read(path: &Path) -> Option<Beat> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(Beat { step: v["step"].as_u64()?, phase: v["phase"].as_str()?.to_string(), time: v["time"].as_f64()?, timeout_s: v["timeout_s"].as_f64()? })
}

/// Seconds since the Unix epoch now.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_written_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let hb = Heartbeat::start(tmp.path(), 3, 7.5).unwrap();
        let path = tmp.path().join("heartbeat/rank3.json");
        assert_eq!(read(&path).unwrap().phase, "start");
        hb.beat(12, "step").unwrap();
        let b = read(&path).unwrap();
        assert_eq!((b.step, b.phase.as_str(), b.timeout_s), (12, "step", 7.5));
        assert!((now() - b.time).abs() < 60.0);
    }
}
