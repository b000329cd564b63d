//! `ferrotron report RUN`: where a run's step time went, from its
//! `metrics.jsonl` alone.
//!
//! - `report_time.png`: step time and its phases (forward, backward,
//!   optimizer: the `fwd_ms`, `bwd_ms`, `opt_ms` fields) against step;
//! - `report_mfu.png`: model FLOPs utilization against step, where the run
//!   recorded it (devices with a known peak; not the CPU);
//! - `report_ranks.png`: for a run of several ranks, the per-rank heat map
//!   (steps × ranks, colour = step time and each phase; `heatmap.rs`);
//! - a short text: steps (and skipped ones), the median step split by phase,
//!   throughput, MFU, loss, peak memory.
//!
//! Long runs are drawn with at most [`MAX_POINTS`] points per curve (the
//! median of each bucket of consecutive steps), so a plot stays readable
//! and quick at a million steps.

use super::metrics::{read_metrics, MetricLine, TrainMetrics, METRICS_FILE};
use super::plot::{plot_series, Axes, Series};
use super::report::human_bytes;
use anyhow::{bail, Result};
use std::fmt::Write;
use std::path::{Path, PathBuf};

pub const TIME_PNG: &str = "report_time.png";
pub const MFU_PNG: &str = "report_mfu.png";
pub const RANKS_PNG: &str = "report_ranks.png";
pub const MAX_POINTS: usize = 1000;

/// What `report` wrote and printed.
pub struct RunReport {
    pub text: String,
    pub time_png: PathBuf,
    /// `None` when no step recorded an MFU.
    pub mfu_png: Option<PathBuf>,
    /// The per-rank heat map; `None` for a run of one rank.
    pub ranks_png: Option<PathBuf>,
}

/// Read `run/metrics.jsonl`, write the plots into `out_dir` (default: the
/// run folder) and return them with the summary text.
pub fn report(run: &Path, out_dir: Option<&Path>) -> Result<RunReport> {
    let lines = read_metrics(&run.join(METRICS_FILE))?;
    let train: Vec<&TrainMetrics> = lines.iter().filter_map(|l| if let MetricLine::Train(t) = l { Some(t) } else { None }).collect();
    if train.is_empty() {
        bail!("{} has no training steps to report yet", run.join(METRICS_FILE).display());
    }
    let out_dir = out_dir.unwrap_or(run);
    let title = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| run.display().to_string());

    let curve = |f: &dyn Fn(&TrainMetrics) -> Option<f64>| bucket_medians(train.iter().filter_map(|t| Some((t.step as f64, f(t)?))).collect());
    let phases: [(&str, &dyn Fn(&TrainMetrics) -> Option<f64>); 4] = [
        ("step", &|t| Some(t.step_ms)),
        ("forward", &|t| t.fwd_ms),
        ("backward", &|t| t.bwd_ms),
        ("optimizer", &|t| t.opt_ms),
    ];
    let series: Vec<Series> = phases.iter().map(|(label, f)| Series { label: format!("{label} ms"), points: curve(*f), thin: true }).collect();
    let time_png = out_dir.join(TIME_PNG);
    plot_series(&series, &time_png, &Axes { title: &format!("{title}: step time by phase"), x: "step", y: "ms" })?;

    let mfu_points = curve(&|t| t.mfu.map(|m| m * 100.0));
    let mfu_png = if mfu_points.is_empty() {
        None
    } else {
        let path = out_dir.join(MFU_PNG);
        plot_series(&[Series { label: "MFU %".into(), points: mfu_points, thin: true }], &path, &Axes { title: &format!("{title}: model FLOPs utilization"), x: "step", y: "MFU (%)" })?;
        Some(path)
    };
    let grids = super::heatmap::rank_grids(&train);
    let ranks_png = if grids.is_empty() {
        None
    } else {
        let path = out_dir.join(RANKS_PNG);
        super::heatmap::plot_heatmap(&grids, &path, &format!("{title}: time per rank and step"))?;
        Some(path)
    };
    let mut text = summary(run, &lines, &train, &time_png, mfu_png.as_deref());
    if let Some(p) = &ranks_png {
        text += &ranks_summary(&train, p);
    }
    Ok(RunReport { text, time_png, mfu_png, ranks_png })
}

fn summary(run: &Path, lines: &[MetricLine], train: &[&TrainMetrics], time_png: &Path, mfu_png: Option<&Path>) -> String {
    let mut s = String::new();
    let skipped = train.iter().filter(|t| t.skipped.is_some()).count();
    let last = train.last().expect("non-empty");
    let _ = write!(s, "run {}: {} steps logged (last step {})", run.display(), train.len(), last.step);
    let _ = writeln!(s, "{}", if skipped > 0 { format!(", {skipped} skipped (not applied)") } else { String::new() });
    let med = |f: &dyn Fn(&TrainMetrics) -> Option<f64>| median(train.iter().filter_map(|t| f(t).filter(|v| v.is_finite())).collect());
    if let Some(step) = med(&|t| Some(t.step_ms)) {
        let _ = write!(s, "median step {step:.2} ms");
        let parts = [("forward", med(&|t| t.fwd_ms)), ("backward", med(&|t| t.bwd_ms)), ("optimizer", med(&|t| t.opt_ms))];
        if parts.iter().all(|(_, v)| v.is_some()) {
            let mut rest = step;
            for (name, v) in parts {
                let v = v.unwrap();
                rest -= v;
                let _ = write!(s, "{} {name} {v:.2} ({:.0}%)", if name == "forward" { ":" } else { "," }, 100.0 * v / step.max(1e-12));
            }
            let _ = write!(s, ", other {:.2} ({:.0}%; medians do not add up exactly)", rest, 100.0 * rest / step.max(1e-12));
        }
        let _ = writeln!(s);
    }
    if let Some(tps) = med(&|t| Some(t.tokens_per_s)) {
        let _ = writeln!(s, "median throughput {tps:.0} tokens/s");
    }
    match med(&|t| t.mfu) {
        Some(m) => {
            let _ = writeln!(s, "MFU median {:.1}%", m * 100.0);
        }
        None => {
            let _ = writeln!(s, "MFU not recorded (the device's peak FLOP/s is unknown, e.g. the CPU)");
        }
    }
    let losses: Vec<f64> = train.iter().map(|t| t.loss).filter(|l| l.is_finite()).collect();
    if let (Some(first), Some(end)) = (losses.first(), losses.last()) {
        let _ = write!(s, "train loss {first:.4} -> {end:.4}");
        let val = lines.iter().rev().find_map(|l| if let MetricLine::Eval(e) = l { Some(e) } else { None });
        match val {
            Some(e) => {
                let _ = writeln!(s, "; validation loss {:.4} at step {}", e.val_loss, e.step);
            }
            None => {
                let _ = writeln!(s);
            }
        }
    }
    let peak = train.iter().map(|t| t.peak_mem_bytes).max().unwrap_or(0);
    if peak > 0 {
        let _ = writeln!(s, "peak device memory {}", human_bytes(peak));
    }
    let _ = write!(s, "plots: {}", time_png.display());
    if let Some(p) = mfu_png {
        let _ = write!(s, ", {}", p.display());
    }
    s.push('\n');
    s
}

/// Which rank was slowest how often, and the heat map's file.
fn ranks_summary(train: &[&TrainMetrics], png: &Path) -> String {
    let slowest: Vec<usize> = train.iter().filter_map(|t| Some(t.ranks.as_ref()?.slowest)).collect();
    let flagged = train.iter().filter(|t| t.ranks.as_ref().is_some_and(|r| r.straggler.is_some())).count();
    let mut counts = std::collections::BTreeMap::new();
    for r in &slowest {
        *counts.entry(*r).or_insert(0usize) += 1;
    }
    let mut s = String::new();
    if let Some((rank, n)) = counts.iter().max_by_key(|(_, n)| **n) {
        let _ = write!(s, "slowest rank most often: {rank} ({:.0}% of {} steps)", 100.0 * *n as f64 / slowest.len() as f64, slowest.len());
        let _ = writeln!(s, "{}", if flagged > 0 { format!("; straggler flagged on {flagged} steps") } else { String::new() });
    }
    let _ = writeln!(s, "per-rank heat map: {}", png.display());
    s
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) })
}

/// At most `MAX_POINTS` points: consecutive points in equal buckets, each
/// drawn at its middle x with the median y (non-finite values left out).
pub fn bucket_medians(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let points: Vec<(f64, f64)> = points.into_iter().filter(|p| p.1.is_finite()).collect();
    if points.len() <= MAX_POINTS {
        return points;
    }
    let size = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(size)
        .map(|c| (c[c.len() / 2].0, median(c.iter().map(|p| p.1).collect()).expect("chunks are non-empty")))
        .collect()
}
