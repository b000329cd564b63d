//! `ferrotron compare`: several runs side by side — one plot of validation
//! loss against tokens seen, and a markdown table with each run's final
//! validation loss, optimizer-state memory and median step time. This is the
//! artifact of an optimizer comparison at equal tokens.

use super::metrics::{read_metrics, MetricLine, METRICS_FILE};
use super::plot::{plot_series, Axes, Series};
use crate::config::{self, Config};
use crate::model::layout::ParamLayout;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What one run contributes to the comparison.
pub struct RunSummary {
    pub name: String,
    pub cfg: Config,
    /// (tokens seen, validation loss) at each evaluation.
    pub val: Vec<(f64, f64)>,
    pub median_step_ms: Option<f64>,
    pub state_bytes: u64,
}

pub fn load_run(dir: &Path) -> Result<RunSummary> {
    let cfg_path = dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{} is not a run folder: cannot read config.toml", dir.display()))?;
    let cfg = config::from_run_toml(&text, &cfg_path.display().to_string())?;
    let lines = read_metrics(&dir.join(METRICS_FILE))?;
    let tokens_per_step = (cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum) as f64;
    let val = lines
        .iter()
        .filter_map(|l| match l {
            MetricLine::Eval(e) if e.val_loss.is_finite() => Some((e.step as f64 * tokens_per_step, e.val_loss)),
            _ => None,
        })
        .collect();
    let mut steps: Vec<f64> = lines.iter().filter_map(|l| if let MetricLine::Train(t) = l { Some(t.step_ms) } else { None }).collect();
    steps.sort_by(|a, b| a.total_cmp(b));
    let layout = ParamLayout::new(&cfg.model);
    let state_bytes = crate::optim::plan(&cfg.optimizer, &layout)?.iter().map(|g| g.state_bytes).sum();
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
    Ok(RunSummary { name, cfg, val, median_step_ms: steps.get(steps.len() / 2).copied(), state_bytes })
}

/// Writes the plot (every run, or each optimizer's best run) and returns
/// the markdown table of every run.
pub fn compare(runs: &[PathBuf], out_png: &Path, best_per_optimizer: bool) -> Result<String> {
    if runs.is_empty() {
        bail!("compare needs at least one run folder (--runs runs/a runs/b ...)");
    }
    let summaries: Vec<RunSummary> = runs.iter().map(|r| load_run(r)).collect::<Result<_>>()?;
    let plotted: Vec<&RunSummary> = if best_per_optimizer { best_runs(&summaries) } else { summaries.iter().collect() };
    let series: Vec<Series> = plotted.iter().map(|s| Series { label: s.name.clone(), points: s.val.clone(), thin: false }).collect();
    plot_series(&series, out_png, &Axes { title: "validation loss at equal tokens", x: "tokens", y: "validation loss" })?;
    Ok(table(&summaries))
}

/// Each optimizer's run with the lowest final validation loss, in the
/// order the optimizers first appear.
pub fn best_runs(runs: &[RunSummary]) -> Vec<&RunSummary> {
    let final_loss = |r: &RunSummary| r.val.last().map_or(f64::INFINITY, |v| v.1);
    let mut best: Vec<&RunSummary> = vec![];
    for r in runs {
        match best.iter_mut().find(|b| b.cfg.optimizer.name == r.cfg.optimizer.name) {
            Some(b) if final_loss(r) < final_loss(b) => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    best
}

fn table(runs: &[RunSummary]) -> String {
    let mut out = String::from("| run | optimizer | lr | tokens | final val loss | optimizer state | B/param | median step (ms) |\n|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let (tokens, loss) = r.val.last().copied().unwrap_or((0.0, f64::NAN));
        let params = ParamLayout::new(&r.cfg.model).total as f64;
        out += &format!(
            "| {} | {} | {:e} | {:.1}M | {:.4} | {:.1} MiB | {:.2} | {} |\n",
            r.name,
            r.cfg.optimizer.name,
            r.cfg.optimizer.lr,
            tokens / 1e6,
            loss,
            r.state_bytes as f64 / (1u64 << 20) as f64,
            r.state_bytes as f64 / params,
            r.median_step_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into())
        );
    }
    out
}
