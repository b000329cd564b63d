//! Where the training loop gets each step's learning rate: a fixed
//! schedule (`schedule::lr_at`), or AutoLRS, which may first search (train
//! trial steps and restore the state) at a stage boundary.

use super::autolrs::AutoLrs;
use super::schedule::lr_at;
use super::trainer::State;
use crate::backend::Backend;
use crate::config::Config;
use crate::telemetry::metrics::MetricsWriter;
use anyhow::Result;
use std::path::Path;

pub(super) enum LrSource {
    Schedule,
    AutoLrs(Box<AutoLrs>),
}

impl LrSource {
    /// `resume_step`: the step a resumed run continues from; `lead`: this
    /// process is rank 0 (the one that writes files).
    pub(super) fn new(cfg: &Config, run_dir: &Path, resume_step: Option<u64>, lead: bool) -> Result<Self> {
        Ok(match cfg.train.schedule.as_str() {
            "autolrs" => LrSource::AutoLrs(Box::new(AutoLrs::new(cfg, run_dir, resume_step, lead)?)),
            _ => LrSource::Schedule,
        })
    }

    /// The learning rate of the step about to run (`st.step` is the number
    /// of steps done). Every rank calls it (AutoLRS' trials are steps, with
    /// their collectives); `metrics` is the lead's, `say` prints on the lead.
    pub(super) fn lr_for_next_step<B: Backend>(&mut self, b: &mut B, st: &mut State<B>, cfg: &Config, metrics: Option<&mut MetricsWriter>, say: &dyn Fn(String)) -> Result<f32> {
        match self {
            LrSource::Schedule => Ok(lr_at(&cfg.train, cfg.optimizer.lr, st.step)),
            LrSource::AutoLrs(a) => a.lr_for_next_step(b, st, cfg, metrics, say),
        }
    }

    /// End of the run (the lead): AutoLRS draws `autolrs.png`.
    pub(super) fn finish(&self, run_dir: &Path) -> Result<()> {
        match self {
            LrSource::Schedule => Ok(()),
            LrSource::AutoLrs(_) => super::autolrs::plot::plot_run(run_dir),
        }
    }
}
