//! Training progress on stderr: a live bar on a terminal, plain log lines
//! elsewhere (CI logs, `nohup`, pipes), where a redrawn bar would turn into
//! thousands of carriage-return fragments.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Plain-log cadence when the caller does not choose one.
pub const DEFAULT_LOG_EVERY: u64 = 10;

pub struct Progress {
    /// `None` in plain-log mode.
    bar: Option<ProgressBar>,
    total: u64,
    /// Step the run (re)started from: ETA uses only the steps of this process.
    first_step: u64,
    started: Instant,
    /// Plain-log mode prints every `log_every` steps (0 = never).
    log_every: u64,
}

impl Progress {
    /// A bar when `enabled` (config `run.progress`) and stderr is a
    /// terminal; plain log lines every [`DEFAULT_LOG_EVERY`] steps otherwise.
    /// `first_step` is the step a resumed run starts from (0 for a new run).
    pub fn new(total: u64, first_step: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| make_bar(total, first_step));
        Progress { bar, total, first_step, started: Instant::now(), log_every: DEFAULT_LOG_EVERY }
    }

    /// Change the plain-log cadence (0 silences plain mode entirely).
    pub fn with_log_every(mut self, every: u64) -> Self {
        self.log_every = every;
        self
    }

    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Report that `step` (1-based count of finished steps) is done.
    pub fn update(&self, step: u64, loss: f64, tokens_per_s: f64) {
        let eta = eta(self.started.elapsed(), step.saturating_sub(self.first_step), self.total.saturating_sub(step));
        let status = status_text(loss, tokens_per_s, eta);
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(status);
            }
            None if self.should_log(step) => eprintln!("step {step:>w$}/{} | {status}", self.total, w = digits(self.total)),
            None => {}
        }
    }

    /// Print a message above the bar (or as a plain line) without garbling
    /// the bar: indicatif clears it, prints, and redraws.
    pub fn println(&self, msg: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(msg.as_ref()),
            None => eprintln!("{}", msg.as_ref()),
        }
    }

    /// Run `f` (e.g. something that prints on its own) with the bar hidden.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Leave the final state of the bar on screen.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    fn should_log(&self, step: u64) -> bool {
        self.log_every > 0 && (step.is_multiple_of(self.log_every) || step == self.total)
    }
}

fn make_bar(total: u64, first_step: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
        .expect("progress template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_position(first_step);
    bar
}

/// Remaining time from this process's own pace; `None` before any step.
pub fn eta(elapsed: Duration, steps_done: u64, steps_left: u64) -> Option<Duration> {
    (steps_done > 0).then(|| elapsed.mul_f64(steps_left as f64 / steps_done as f64))
}

/// "loss 3.2811 | 45.2k tok/s | ETA 1h02m".
pub fn status_text(loss: f64, tokens_per_s: f64, eta: Option<Duration>) -> String {
    let eta = eta.map_or_else(|| "-".to_string(), format_duration);
    format!("loss {loss:.4} | {} tok/s | ETA {eta}", si(tokens_per_s))
}

/// 45200.0 → "45.2k"; keeps the status line short and of stable width.
fn si(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// "1h02m", "4m05s", "12s".
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn digits(n: u64) -> usize {
    n.to_string().len()
}
