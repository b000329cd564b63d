//! `loss.png`: train and validation loss against step.
//!
//! Drawn with plotters' bitmap backend and its `ab_glyph` text path, which
//! reads no system fonts: the font is compiled into the binary, so plots
//! work on a headless machine with nothing installed.

use crate::util::atomic;
use super::metrics::MetricLine;
use anyhow::{anyhow, bail, Context, Result};
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters_backend::DrawingErrorKind;
use plotters_bitmap::BitMapBackendError;
use plotters::style::{register_font, FontStyle};
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (Bitstream Vera license; see assets/fonts/).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// plotters asks for this family for axis labels unless told otherwise.
pub(crate) const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 600);

/// The font registry is global; registering once is enough for every plot.
pub(crate) fn register_embedded_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| anyhow!("embedded font is not a valid TTF")));
    result
}

/// One line of a plot.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Thin line without markers (e.g. noisy per-step train loss).
    pub thin: bool,
}

/// Axis captions and title of a plot.
pub struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

/// Plot train loss (thin line) and validation loss (line with markers)
/// against step into `out_png`, replacing it atomically so a viewer never
/// sees a half-written image.
pub fn plot_loss(metrics: &[MetricLine], out_png: &Path, title: &str) -> Result<()> {
    let (train, val) = split_series(metrics);
    let series = [
        Series { label: "train loss".into(), points: train, thin: true },
        Series { label: "val loss".into(), points: val, thin: false },
    ];
    plot_series(&series, out_png, &Axes { title, x: "step", y: "loss" })
}

/// Any number of named series on one chart (e.g. validation loss of several
/// runs against tokens), written atomically.
pub fn plot_series(series: &[Series], out_png: &Path, axes: &Axes) -> Result<()> {
    register_embedded_font()?;
    if series.iter().all(|s| s.points.is_empty()) {
        bail!("no finite values to plot into {}", out_png.display());
    }
    atomic::write_file_with(out_png, |tmp| draw(series, tmp, axes))
        .map_err(|e| e.context(format!("cannot draw {}", out_png.display())))
}

/// Distinct colours (matplotlib's tab10), reused cyclically.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(255, 127, 14), RGBColor(148, 103, 189),
    RGBColor(140, 86, 75), RGBColor(227, 119, 194), RGBColor(127, 127, 127), RGBColor(188, 189, 34), RGBColor(23, 190, 207),
];

type Points = Vec<(f64, f64)>;

/// (train, val) points; NaN/inf losses (a diverged step) are left out so
/// they do not wreck the axis range.
fn split_series(metrics: &[MetricLine]) -> (Points, Points) {
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
pub(crate) fn padded(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 * lo.abs().max(1.0) };
    (lo - pad)..(hi + pad)
}

fn draw(series: &[Series], path: &Path, axes: &Axes) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting failed: {e}");
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let all = || series.iter().flat_map(|s| s.points.iter());
    let xs = padded(all().map(|p| p.0));
    let ys = padded(all().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(axes.title, (FAMILY, 26))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(xs.start.max(0.0)..xs.end, ys)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .x_label_formatter(&|x| whole_number_label(*x))
        .axis_desc_style((FAMILY, 18))
        .label_style((FAMILY, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate().filter(|(_, s)| !s.points.is_empty()) {
        let color = PALETTE[i % PALETTE.len()];
        let width = if s.thin { 1 } else { 2 };
        let drawn = chart.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(width))).map_err(|e| err(&e))?;
        drawn.label(s.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
        if !s.thin {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| anyhow!("{}", plain_words(e))).context("cannot encode the PNG")
}

/// A bitmap backend error in words: an I/O failure (a full disk) as the
/// operating system says it, not as Rust debug output (plotters' own
/// Display of these is their Debug form).
pub(crate) fn plain_words(e: DrawingAreaErrorKind<BitMapBackendError>) -> String {
    match e {
        DrawingAreaErrorKind::BackendError(DrawingErrorKind::DrawingError(BitMapBackendError::IOError(io))) => io.to_string(),
        DrawingAreaErrorKind::BackendError(DrawingErrorKind::DrawingError(BitMapBackendError::ImageError(img))) => img.to_string(),
        other => format!("plotting failed: {other}"),
    }
}

/// Axis label for a whole number (steps, tokens): 950, 12k, 1.5M, 2B.
pub fn whole_number_label(x: f64) -> String {
    let a = x.abs();
    let (v, unit) = if a >= 1e9 { (x / 1e9, "B") } else if a >= 1e6 { (x / 1e6, "M") } else if a >= 1e4 { (x / 1e3, "k") } else { (x, "") };
    let text = format!("{v:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text).to_string();
    if unit.is_empty() { format!("{x:.0}") } else { text + unit }
}

#[cfg(test)]
mod label_tests {
    use super::whole_number_label as l;

    #[test]
    fn labels_are_short() {
        assert_eq!([l(0.0), l(950.0), l(9999.0), l(12_000.0), l(1_500_000.0), l(50_000_000.0), l(2e9)], ["0", "950", "9999", "12k", "1.5M", "50M", "2B"]);
    }
}
