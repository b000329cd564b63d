//! `loss.png`: train and validation loss against step.
//!
//! Drawn with plotters' bitmap backend and its `ab_glyph` text path, which
//! reads no system fonts: the font is compiled into the binary, so plots
//! work on a headless machine with nothing installed.

use crate::util::atomic;
use super::metrics::MetricLine;
use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (Bitstream Vera license; see assets/fonts/).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// plotters asks for this family for axis labels unless told otherwise.
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 600);
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(214, 39, 40);

/// The font registry is global; registering once is enough for every plot.
fn register_embedded_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| anyhow!("embedded font is not a valid TTF")));
    result
}

/// Plot train loss (thin line) and validation loss (line with markers)
/// against step into `out_png`, replacing it atomically so a viewer never
/// sees a half-written image.
pub fn plot_loss(metrics: &[MetricLine], out_png: &Path, title: &str) -> Result<()> {
    register_embedded_font()?;
    let (train, val) = split_series(metrics);
    if train.is_empty() && val.is_empty() {
        bail!("no finite loss values to plot into {}", out_png.display());
    }
    atomic::write_file_with(out_png, |tmp| draw(&train, &val, tmp, title))
        .map_err(|e| e.context(format!("cannot draw {}", out_png.display())))
}

type Series = Vec<(f64, f64)>;

/// (train, val) points; NaN/inf losses (a diverged step) are left out so
/// they do not wreck the axis range.
fn split_series(metrics: &[MetricLine]) -> (Series, Series) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for m in metrics {
        match m {
            MetricLine::Train(t) if t.loss.is_finite() => train.push((t.step as f64, t.loss)),
            MetricLine::Eval(e) if e.val_loss.is_finite() => val.push((e.step as f64, e.val_loss)),
            _ => {}
        }
    }
    (train, val)
}

/// `lo..hi` padded by 5% each side, never empty (a single point or a flat
/// curve still gets a visible range).
fn padded(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 * lo.abs().max(1.0) };
    (lo - pad)..(hi + pad)
}

fn draw(train: &[(f64, f64)], val: &[(f64, f64)], path: &Path, title: &str) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting failed: {e}");
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let all = || train.iter().chain(val);
    let xs = padded(all().map(|p| p.0));
    let ys = padded(all().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 26))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(xs.start.max(0.0)..xs.end, ys)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .x_label_formatter(&|x| format!("{x:.0}")) // steps are whole numbers
        .axis_desc_style((FAMILY, 18))
        .label_style((FAMILY, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    if !train.is_empty() {
        chart
            .draw_series(LineSeries::new(train.iter().copied(), TRAIN_COLOR.stroke_width(1)))
            .map_err(|e| err(&e))?
            .label("train loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], TRAIN_COLOR.stroke_width(2)));
    }
    if !val.is_empty() {
        chart.draw_series(LineSeries::new(val.iter().copied(), VAL_COLOR.stroke_width(2))).map_err(|e| err(&e))?;
        chart
            .draw_series(val.iter().map(|&p| Circle::new(p, 4, VAL_COLOR.filled())))
            .map_err(|e| err(&e))?
            .label("val loss")
            .legend(|(x, y)| Circle::new((x + 12, y), 4, VAL_COLOR.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e)).context("cannot encode the PNG")
}
