//! `autolrs.png`: what AutoLRS decided, from the run's metrics.jsonl.
//!
//! Top: the learning rate of every step (log scale), each stage's tried
//! lrs as circles at the stage's start and the chosen one filled. Bottom:
//! the training loss, each trial's short loss curve placed at its stage's
//! start, and its forecast curve continued (dashed) to the stage's end,
//! where the forecast value is marked (trial 0's fit, plus for the others
//! the fit of their difference to trial 0).

use crate::telemetry::metrics::METRICS_FILE;
use crate::telemetry::plot::{padded, register_embedded_font, FAMILY, PALETTE};
use crate::util::atomic;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

pub const PLOT_FILE: &str = "autolrs.png";

struct TrialLine {
    start: f64,
    trial: usize,
    lr: f64,
    losses: Vec<f64>,
    abc: (f64, f64, f64),
    tau: f64,
    forecast: Option<f64>,
}

/// Draws `<run_dir>/autolrs.png`; a run without trials (all warmup) draws
/// only the lr and loss.
pub fn plot_run(run_dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(run_dir.join(METRICS_FILE)).with_context(|| format!("cannot read {}", run_dir.join(METRICS_FILE).display()))?;
    let (mut lr, mut loss, mut trials, mut chosen) = (vec![], vec![], vec![], vec![]);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let step = f("step").unwrap_or(0.0);
        match v.get("kind").and_then(Value::as_str) {
            Some("train") => {
                if let (Some(l), Some(r)) = (f("loss"), f("lr")) {
                    if l.is_finite() {
                        loss.push((step, l));
                    }
                    if r > 0.0 {
                        lr.push((step, r));
                    }
                }
            }
            Some("autolrs_trial") => trials.push(TrialLine {
                start: step - 1.0,
                trial: f("trial").unwrap_or(0.0) as usize,
                lr: f("lr").unwrap_or(f64::NAN),
                losses: v.get("losses").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default(),
                abc: (f("a").unwrap_or(0.0), f("b").unwrap_or(-1.0), f("c").unwrap_or(f64::NAN)),
                tau: f("tau").unwrap_or(0.0),
                forecast: f("forecast"),
            }),
            Some("autolrs_stage") => {
                if let Some(r) = f("lr") {
                    chosen.push((step - 1.0, r));
                }
            }
            _ => {}
        }
    }
    if loss.is_empty() {
        return Ok(());
    }
    register_embedded_font()?;
    let out = run_dir.join(PLOT_FILE);
    atomic::write_file_with(&out, |tmp| draw(tmp, &lr, &loss, &trials, &chosen)).map_err(|e| e.context(format!("cannot draw {}", out.display())))
}

fn draw(path: &Path, lr: &[(f64, f64)], loss: &[(f64, f64)], trials: &[TrialLine], chosen: &[(f64, f64)]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting failed: {e}");
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(360);
    let x_end = loss.iter().map(|p| p.0).chain(trials.iter().map(|t| t.start + t.tau)).fold(1.0, f64::max);

    // Learning rate, log scale.
    let lrs = || lr.iter().map(|p| p.1).chain(trials.iter().map(|t| t.lr)).filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = lrs().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo / 1.5, hi * 1.5) } else { (1e-4, 1e-2) };
    let mut c = ChartBuilder::on(&top)
        .caption("AutoLRS: learning rate per step, trials (circles), chosen (filled)", (FAMILY, 22))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..x_end * 1.02, (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    c.configure_mesh().x_desc("step").y_desc("lr").y_label_formatter(&|v| format!("{v:.0e}")).y_labels(8).light_line_style(RGBColor(245, 245, 245)).label_style((FAMILY, 14)).axis_desc_style((FAMILY, 16)).draw().map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(lr.iter().copied(), PALETTE[0].stroke_width(2))).map_err(|e| err(&e))?;
    c.draw_series(trials.iter().filter(|t| t.lr > 0.0).map(|t| Circle::new((t.start, t.lr), 4, PALETTE[(t.trial + 1) % PALETTE.len()].stroke_width(2)))).map_err(|e| err(&e))?;
    c.draw_series(chosen.iter().map(|&p| Circle::new(p, 6, PALETTE[0].filled()))).map_err(|e| err(&e))?;

    // Loss: training loss, trial curves and their forecasts.
    let curve = |abc: (f64, f64, f64), s: f64| abc.0 * (abc.1 * s).exp() + abc.2;
    let forecast_pts = |t: &TrialLine| -> Vec<(f64, f64)> {
        let n = t.losses.len() as f64;
        let reference = trials.iter().find(|r| r.start == t.start && r.trial == 0 && t.trial > 0).map(|r| r.abc);
        let steps = 40;
        (0..=steps)
            .map(|i| n + (t.tau - n) * i as f64 / steps as f64)
            .map(|s| (t.start + s, curve(t.abc, s) + reference.map_or(0.0, |r| curve(r, s))))
            .filter(|p| p.1.is_finite())
            .collect()
    };
    let ys = loss.iter().map(|p| p.1).chain(trials.iter().flat_map(|t| t.losses.iter().copied())).chain(trials.iter().filter_map(|t| t.forecast)).filter(|v| v.is_finite());
    let yr = padded(ys);
    let mut c = ChartBuilder::on(&bottom)
        .caption("training loss; trial curves and their exponential forecasts (dashed) to the stage's end", (FAMILY, 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..x_end * 1.02, yr.clone())
        .map_err(|e| err(&e))?;
    c.configure_mesh().x_desc("step").y_desc("loss").label_style((FAMILY, 14)).axis_desc_style((FAMILY, 16)).draw().map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(loss.iter().copied(), RGBColor(150, 150, 150).stroke_width(1))).map_err(|e| err(&e))?;
    for t in trials {
        let color = PALETTE[(t.trial + 1) % PALETTE.len()];
        let pts: Vec<(f64, f64)> = t.losses.iter().enumerate().map(|(i, &l)| (t.start + 1.0 + i as f64, l)).filter(|p| p.1.is_finite()).collect();
        c.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(|e| err(&e))?;
        let clipped: Vec<(f64, f64)> = forecast_pts(t).into_iter().filter(|p| yr.contains(&p.1)).collect();
        c.draw_series(DashedLineSeries::new(clipped, 6, 4, color.stroke_width(1))).map_err(|e| err(&e))?;
        if let Some(f) = t.forecast.filter(|f| yr.contains(f)) {
            c.draw_series(std::iter::once(Cross::new((t.start + t.tau, f), 5, color.stroke_width(2)))).map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e)).context("cannot encode the PNG")
}
