//! Loading a finished (or running) run folder for sampling and export.

use super::sample::{self, SampleOptions};
use crate::backend::select::{on_device, OnBackend};
use crate::backend::Backend;
use crate::ckpt;
use crate::config::{self, Config};
use crate::data::Tokenizer;
use crate::model::{Model, Recompute};
use crate::util::rng::Rng;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The run's config and the fp32 weights of its newest usable checkpoint
/// (never non-finite ones: `ckpt::load` refuses those).
pub fn load_run_weights(run: &Path) -> Result<(Config, Vec<f32>)> {
    let cfg_path = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{} is not a run folder: cannot read {}", run.display(), cfg_path.display()))?;
    let cfg = config::from_run_toml(&text, &cfg_path.display().to_string())?;
    // The newest checkpoint that verifies (checksums, finite values); a
    // damaged newer one is passed over with a warning (ckpt/recover.rs).
    let Some(loaded) = ckpt::load_newest_good(run)? else {
        bail!("run {} has no complete checkpoint yet (checkpoints/step_*)", run.display());
    };
    let layout = crate::model::layout::ParamLayout::new(&cfg.model);
    let mut params = vec![0.0f32; layout.total];
    ckpt::load_into_layout(&loaded, &layout, &mut params)?;
    Ok((cfg, params))
}

/// Samples `count` continuations of `prompt` on `device` (`cpu` or `cuda`).
pub fn generate_from_run(run: &Path, prompt: &str, opts: SampleOptions, count: usize, seed: u64, device: &str) -> Result<Vec<String>> {
    on_device(device, 0, GenerateJob { run, prompt, opts, count, seed })
}

struct GenerateJob<'a> {
    run: &'a Path,
    prompt: &'a str,
    opts: SampleOptions,
    count: usize,
    seed: u64,
}

impl OnBackend for GenerateJob<'_> {
    type Output = Vec<String>;
    fn run<B: Backend + 'static>(self, b: B) -> Result<Vec<String>> {
        generate_on(b, self.run, self.prompt, self.opts, self.count, self.seed)
    }
}

fn generate_on<B: Backend>(mut b: B, run: &Path, prompt: &str, opts: SampleOptions, count: usize, seed: u64) -> Result<Vec<String>> {
    let (cfg, params) = load_run_weights(run)?;
    let tok_name = std::fs::read_to_string(run.join("tokenizer.txt")).unwrap_or_else(|_| "gpt2".into());
    let tok = Tokenizer::from_name(tok_name.trim())?;
    let mut model = Model::new(&mut b, &cfg.model, Recompute::Off)?.with_logits_chunk(cfg.train.logits_chunk);
    model.set_params(&mut b, &params)?;
    let mut ids = tok.encode(prompt);
    if ids.is_empty() {
        ids = match tok.eot() {
            Some(e) => vec![e],
            None => tok.encode("\n"),
        };
    }
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| Ok(tok.decode(&sample::generate(&mut b, &mut model, &ids, opts, tok.eot(), &mut rng)?)))
        .collect()
}
