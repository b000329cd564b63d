//! `metrics.jsonl`: one JSON object per line, appended as the run goes.
//!
//! JSON Lines because a run killed at any moment leaves a readable file (at
//! worst a torn last line, which the reader skips) and because any tool
//! (`jq`, pandas, a plot) reads it without a schema. Each line carries a
//! `kind`: `train` (one per optimizer step) or `eval`. Readers ignore kinds
//! they do not know, so new kinds (per-rank timing, …) can be added later.

use crate::util::atomic;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name inside a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One optimizer step. Optional fields are omitted from the line when unset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    pub step: u64,
    /// JSON has no NaN: a non-finite loss or norm is written as `null`,
    /// which reads back as NaN.
    #[serde(deserialize_with = "nullable_f64")]
    pub loss: f64,
    pub lr: f64,
    #[serde(deserialize_with = "nullable_f64")]
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub step_ms: f64,
    pub peak_mem_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwd_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwd_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// Why this step was not applied (non-finite loss or gradient norm, a
    /// loss spike); absent for applied steps. See `train::guard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Step times over ranks (several ranks only): min/mean/max, the
    /// slowest rank, and a straggler once one is consistently slowest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<super::ranks::RankTimes>,
    /// Times the launcher restarted the ranks before this step (`launch
    /// --max-restarts`); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// Payload bytes this rank sent during the step (several ranks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_bytes: Option<u64>,
    /// `comm_bytes` / the bytes of one dense f32 all-reduce of every
    /// gradient on the same communicator (1-bit Adam: ~0.03 after its
    /// freeze step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_ratio: Option<f64>,
    /// Offloaded runs: host-side phases of the step (parallel::offload::timing).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub offload: Option<crate::parallel::offload::timing::OffloadTimes>,
}

/// `null` (how serde_json writes NaN and infinity) as NaN.
fn nullable_f64<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One evaluation on held-out data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: u64,
    pub val_loss: f64,
}

/// One checkpoint's cost (`kind: "ckpt"`), logged when it is complete (a
/// two-stage save: when its background write has finished, so the line can
/// follow later steps' lines). Rank 0's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CkptMetrics {
    pub step: u64,
    /// Two-stage save (`train.async_checkpoint`).
    #[serde(rename = "async")]
    pub async_write: bool,
    /// Time the training loop was blocked by the save: waiting for the
    /// previous write plus the host copy (synchronous: the whole save).
    pub ckpt_block_ms: f64,
    /// Part of `ckpt_block_ms` spent waiting for the previous write.
    pub ckpt_wait_ms: f64,
    /// Wall time of the write on the background thread, waiting for the
    /// other ranks' shards included (synchronous: the whole save).
    pub ckpt_write_ms: f64,
    /// Bytes of the host copy (0 for a synchronous save).
    pub ckpt_bytes: u64,
}

/// A line of `metrics.jsonl`, tagged by its `kind` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricLine {
    Train(TrainMetrics),
    Eval(EvalMetrics),
}

impl MetricLine {
    pub fn step(&self) -> u64 {
        match self {
            MetricLine::Train(t) => t.step,
            MetricLine::Eval(e) => e.step,
        }
    }
}

/// Appends lines to `<run_dir>/metrics.jsonl`.
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Start a fresh file for a new run (an existing one is replaced).
    pub fn create(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(MetricsWriter { file, path })
    }

    /// Reopen a run's file to continue after resuming from the checkpoint of
    /// `resume_step`. Lines logged after that checkpoint (by the run that
    /// died) are dropped first, so the continued run does not log those
    /// steps twice. The trimmed file replaces the old one atomically: a
    /// crash here leaves the old file, never a truncated one.
    ///
    /// Lines that are not JSON objects (binary garbage after a crash or a
    /// disk fault) are dropped too, saying so; the file as it was is kept
    /// beside it as `metrics.jsonl.damaged`.
    pub fn resume(run_dir: &Path, resume_step: u64) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        if path.exists() {
            let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let (kept, unreadable) = keep_up_to(&bytes, resume_step);
            if unreadable > 0 {
                let copy = run_dir.join(format!("{METRICS_FILE}.damaged"));
                atomic::write_file(&copy, &bytes)?;
                eprintln!(
                    "warning: dropped {unreadable} unreadable line(s) from {} (not JSON); the file as it was is kept as {}",
                    path.display(),
                    copy.display()
                );
            }
            if kept.len() != bytes.len() {
                atomic::write_file(&path, kept.as_bytes())?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(MetricsWriter { file, path })
    }

    /// [`create`](Self::create) for a new run, [`resume`](Self::resume)
    /// when continuing from the checkpoint of `resume_step`.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        match resume_step {
            Some(step) => Self::resume(run_dir, step),
            None => Self::create(run_dir),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn train(&mut self, m: &TrainMetrics) -> Result<()> {
        self.write(&MetricLine::Train(m.clone()))
    }

    pub fn eval(&mut self, step: u64, val_loss: f64) -> Result<()> {
        self.write(&MetricLine::Eval(EvalMetrics { step, val_loss }))
    }

    pub fn ckpt(&mut self, m: &CkptMetrics) -> Result<()> {
        let mut v = serde_json::to_value(m)?;
        v["kind"] = "ckpt".into();
        self.write_value(&v)
    }

    /// One line, written with a single `write_all` on an unbuffered file so
    /// it reaches the OS at once: a killed process keeps every finished line.
    pub fn write(&mut self, line: &MetricLine) -> Result<()> {
        self.append(serde_json::to_string(line)?)
    }

    /// A line of another kind (an object with its own `kind` and `step`,
    /// e.g. AutoLRS' trials); readers that do not know the kind skip it.
    pub fn write_value(&mut self, line: &serde_json::Value) -> Result<()> {
        self.append(serde_json::to_string(line)?)
    }

    fn append(&mut self, mut text: String) -> Result<()> {
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

/// The lines of `bytes` whose `step` is at most `max_step`, and how many
/// lines were dropped for not being JSON objects. Lines without a step
/// (future kinds) are kept; a torn last line (no newline) is dropped.
fn keep_up_to(bytes: &[u8], max_step: u64) -> (String, usize) {
    let mut out = String::with_capacity(bytes.len());
    let mut unreadable = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        let value = std::str::from_utf8(line).ok().and_then(|l| Some((l, serde_json::from_str::<serde_json::Value>(l).ok()?)));
        match value {
            Some((l, v)) if v.is_object() => {
                if v.get("step").and_then(|s| s.as_u64()).is_none_or(|s| s <= max_step) {
                    out.push_str(l);
                }
            }
            Some((l, _)) if l.trim().is_empty() => {}
            _ => unreadable += 1,
        }
    }
    (out, unreadable)
}

/// Read every train and eval line of a metrics file, in file order.
/// Unknown kinds and a torn last line (a run killed mid-write) are skipped;
/// any other malformed line is an error naming its line number.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricLine>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => {}
            Err(_) if torn_tail && i + 1 == lines.len() => {}
            Err(e) => bail!("{}:{}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// `Ok(None)` for a well-formed line of a kind this reader does not know.
fn parse_line(line: &str) -> Result<Option<MetricLine>> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow!("not JSON: {e}"))?;
    match value.get("kind").and_then(|k| k.as_str()) {
        Some("train") | Some("eval") => Ok(Some(serde_json::from_value(value)?)),
        Some(_) => Ok(None),
        None => bail!("line has no \"kind\" field"),
    }
}
