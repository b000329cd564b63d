//! Telemetry: what a run reports about itself and what `info` estimates.
//!
//! - [`metrics`]: `metrics.jsonl` writer (resume-safe) and reader
//! - [`progress`]: progress bar on a terminal, plain log lines elsewhere
//! - [`plot`]: `loss.png` from the metrics, with an embedded font
//! - [`flops`]: FLOPs per token, MFU, peak FLOP/s per GPU
//! - [`memory`]: parameter counts and the memory estimate
//! - [`report`]: the text of `ferrotron info`
//! - [`compare`]: several runs side by side (plot + table)
//! - [`run_report`]: `ferrotron report`: step time by phase and MFU over a run
//! - [`ranks`] and [`heatmap`]: per-rank step times, stragglers, the heat map

pub mod compare;
pub mod flops;
pub mod heatmap;
pub mod memory;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod ranks;
pub mod report;
pub mod run_report;

pub use flops::{flops_per_token, mfu, peak_flops_for};
pub use memory::{estimate, param_counts, MemoryEstimate};
pub use metrics::{read_metrics, EvalMetrics, MetricLine, MetricsWriter, TrainMetrics};
pub use plot::plot_loss;
pub use progress::Progress;
pub use report::format_info;
