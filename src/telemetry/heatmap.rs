//! The per-rank heat map of `ferrotron report` (MegaScale's picture): steps
//! across, ranks down, colour = a rank's step time (and, where every rank
//! measured them, its forward, backward and optimizer times, one panel
//! each). A slow rank shows as a bright row, a slow step as a bright column.
//!
//! The data is metrics.jsonl's `ranks.rank_*_ms` arrays, which rank 0 logs
//! every step of a multi-rank run (`telemetry::ranks`). Long runs are cut
//! into at most [`MAX_COLUMNS`] buckets of consecutive steps, each drawn
//! with every rank's median. The colour scale of a panel spans its 1st to
//! 99th percentile, so one checkpoint or evaluation step does not wash the
//! rest into one colour.

use super::metrics::TrainMetrics;
use super::plot::{plain_words, register_embedded_font, FAMILY};
use super::ranks::RankTimes;
use crate::util::atomic;
use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use std::path::Path;

pub const MAX_COLUMNS: usize = 400;
const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 300;
const BAR_WIDTH: u32 = 120;

/// One quantity per step and rank: `values[i][r]` is rank `r`'s value at
/// `steps[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RankGrid {
    pub label: String,
    pub steps: Vec<u64>,
    pub values: Vec<Vec<f64>>,
}

impl RankGrid {
    pub fn ranks(&self) -> usize {
        self.values.first().map_or(0, Vec::len)
    }
}

/// The grid of one `ranks` array over the run's steps; `None` when no step
/// has it (one rank, or a run from before per-rank logging). A resume with
/// another world size keeps the steps of the newest world size.
pub fn rank_grid(train: &[&TrainMetrics], label: &str, pick: fn(&RankTimes) -> &Vec<f64>) -> Option<RankGrid> {
    let rows: Vec<(u64, &Vec<f64>)> = train.iter().filter_map(|t| Some((t.step, pick(t.ranks.as_ref()?)))).filter(|(_, v)| !v.is_empty()).collect();
    let world = rows.last()?.1.len();
    let (steps, values) = rows.into_iter().filter(|(_, v)| v.len() == world).map(|(s, v)| (s, v.clone())).unzip();
    Some(RankGrid { label: label.to_string(), steps, values })
}

/// Every grid the run logged: step time, then the phases.
pub fn rank_grids(train: &[&TrainMetrics]) -> Vec<RankGrid> {
    let picks: [(&str, fn(&RankTimes) -> &Vec<f64>); 4] = [
        ("step ms", |r| &r.rank_step_ms),
        ("forward ms", |r| &r.rank_fwd_ms),
        ("backward ms", |r| &r.rank_bwd_ms),
        ("optimizer ms", |r| &r.rank_opt_ms),
    ];
    picks.iter().filter_map(|(label, pick)| rank_grid(train, label, *pick)).collect()
}

/// One drawn column: steps `[from, to)` and each rank's median there.
struct Column {
    from: f64,
    to: f64,
    medians: Vec<f64>,
}

fn columns(g: &RankGrid) -> Vec<Column> {
    let size = g.steps.len().div_ceil(MAX_COLUMNS).max(1);
    let starts: Vec<usize> = (0..g.steps.len()).step_by(size).collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let end = (i + size).min(g.steps.len());
            let to = starts.get(k + 1).map_or(g.steps[end - 1] as f64 + 1.0, |&j| g.steps[j] as f64);
            let medians = (0..g.ranks()).map(|r| median(g.values[i..end].iter().map(|v| v[r]).collect())).collect();
            Column { from: g.steps[i] as f64, to, medians }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The colour scale's ends: 1st and 99th percentile of the drawn values.
fn scale(cols: &[Column]) -> (f64, f64) {
    let mut all: Vec<f64> = cols.iter().flat_map(|c| c.medians.iter().copied()).filter(|v| v.is_finite()).collect();
    if all.is_empty() {
        return (0.0, 1.0);
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.01), at(0.99));
    if hi > lo { (lo, hi) } else { (lo - 0.5 * lo.abs().max(1e-3), hi + 0.5 * hi.abs().max(1e-3)) }
}

/// Viridis, approximated by 5 stops (matplotlib's values) and linear
/// interpolation: perceptually even and readable in grey.
fn colour(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (STOPS.len() - 1) as f64;
    let (i, f) = ((x.floor() as usize).min(STOPS.len() - 2), x - x.floor().min((STOPS.len() - 2) as f64));
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws one panel per grid into `out_png` (atomically).
pub fn plot_heatmap(grids: &[RankGrid], out_png: &Path, title: &str) -> Result<()> {
    register_embedded_font()?;
    if grids.is_empty() || grids.iter().any(|g| g.steps.is_empty()) {
        bail!("no per-rank times to draw into {}", out_png.display());
    }
    atomic::write_file_with(out_png, |tmp| draw(grids, tmp, title)).map_err(|e| e.context(format!("cannot draw {}", out_png.display())))
}

fn draw(grids: &[RankGrid], path: &Path, title: &str) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting failed: {e}");
    let height = 50 + PANEL_HEIGHT * grids.len() as u32;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let body = root.titled(title, (FAMILY, 24)).map_err(|e| err(&e))?;
    for (area, g) in body.split_evenly((grids.len(), 1)).iter().zip(grids) {
        let (map, bar) = area.split_horizontally(WIDTH - BAR_WIDTH);
        let cols = columns(g);
        let (lo, hi) = scale(&cols);
        draw_panel(&map, g, &cols, (lo, hi)).map_err(|e| err(&e))?;
        draw_bar(&bar, &g.label, (lo, hi)).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| anyhow!("{}", plain_words(e)))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw_panel(area: &Area, g: &RankGrid, cols: &[Column], (lo, hi): (f64, f64)) -> DrawResult {
    let ranks = g.ranks();
    let x = cols.first().map_or(0.0, |c| c.from)..cols.last().map_or(1.0, |c| c.to);
    let mut chart = ChartBuilder::on(area)
        .caption(&g.label, (FAMILY, 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(x, -0.5..ranks as f64 - 0.5)?;
    // Rank r's row is centred on y = r, so integer ticks name the rows.
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("step")
        .y_desc("rank")
        .y_labels(ranks.min(16) + 1)
        .y_label_formatter(&|y| if (y - y.round()).abs() < 1e-6 { format!("{:.0}", y) } else { String::new() })
        .x_label_formatter(&|x| super::plot::whole_number_label(*x))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    let cells = cols.iter().flat_map(|c| {
        c.medians.iter().enumerate().map(move |(r, &v)| {
            let fill = colour((v - lo) / (hi - lo));
            Rectangle::new([(c.from, r as f64 - 0.5), (c.to, r as f64 + 0.5)], fill.filled())
        })
    });
    chart.draw_series(cells)?;
    Ok(())
}

fn draw_bar(area: &Area, label: &str, (lo, hi): (f64, f64)) -> DrawResult {
    let mut chart = ChartBuilder::on(area).margin_top(40).margin_bottom(45).margin_right(10).y_label_area_size(60).build_cartesian_2d(0.0..1.0, lo..hi)?;
    chart.configure_mesh().disable_mesh().disable_x_axis().y_desc(label).label_style((FAMILY, 12)).axis_desc_style((FAMILY, 13)).draw()?;
    let n = 64;
    let h = (hi - lo) / n as f64;
    chart.draw_series((0..n).map(|i| {
        let y = lo + i as f64 * h;
        Rectangle::new([(0.0, y), (1.0, y + h)], colour((i as f64 + 0.5) / n as f64).filled())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_dark_purple_to_yellow() {
        assert_eq!(colour(0.0), RGBColor(68, 1, 84));
        assert_eq!(colour(1.0), RGBColor(253, 231, 37));
        assert_eq!(colour(0.5), RGBColor(33, 145, 140));
        assert_eq!(colour(f64::NAN), colour(0.0));
    }

    #[test]
    fn long_runs_are_bucketed_by_median_per_rank() {
        let steps: Vec<u64> = (1..=1000).collect();
        let values: Vec<Vec<f64>> = steps.iter().map(|&s| vec![s as f64, 2.0 * s as f64]).collect();
        let g = RankGrid { label: "x".into(), steps, values };
        let cols = columns(&g);
        assert_eq!(cols.len(), 334); // buckets of 3 steps
        assert_eq!((cols[0].from, cols[0].to, cols[0].medians.clone()), (1.0, 4.0, vec![2.0, 4.0]));
        assert_eq!(cols.last().unwrap().to, 1001.0);
    }
}
