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
    // Verified in one streamed pass, then only the weights are read: the
    // optimizer state (twice the weights for AdamW) never enters memory.
    let Some(dir) = ckpt::recover::newest_good_by(run, |d| ckpt::part_read::verify(d).map(|_| d.to_path_buf()))? else {
        bail!("run {} has no complete checkpoint yet (checkpoints/step_*)", run.display());
    };
    let layout = crate::model::layout::ParamLayout::new(&cfg.model);
    let mut params = vec![0.0f32; layout.total];
    ckpt::part_read::read_model(&dir, &layout, &mut params)?;
    Ok((cfg, params))
}

/// One generated continuation: its token ids and their text.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub ids: Vec<u32>,
    pub text: String,
}

/// Samples `count` continuations of `prompt` on `device` (`cpu` or `cuda`)
/// with the run's own tokenizer (a prompt gets the BOS its tokenizer adds;
/// sampling stops at its end-of-text token). A model whose head size the
/// CUDA attention kernels do not implement runs on the CPU instead, with a
/// message on stderr.
pub fn generate_from_run(run: &Path, prompt: &str, opts: SampleOptions, count: usize, seed: u64, device: &str) -> Result<Vec<Generated>> {
    let (cfg, params) = load_run_weights(run)?;
    let tok = Tokenizer::of_run(run).with_context(|| format!("reading the tokenizer of run {}", run.display()))?;
    let d = cfg.model.head_dim();
    let device = if device == "cuda" && !crate::backend::cuda::supports_head_dim(d) {
        eprintln!("note: head size {d} is not supported by the CUDA attention kernels (1 to {}); generating on the CPU", crate::backend::cuda::MAX_HEAD_DIM);
        "cpu"
    } else {
        device
    };
    on_device(device, 0, GenerateJob { cfg: &cfg, params: &params, tok: &tok, prompt, opts, count, seed })
}

struct GenerateJob<'a> {
    cfg: &'a Config,
    params: &'a [f32],
    tok: &'a Tokenizer,
    prompt: &'a str,
    opts: SampleOptions,
    count: usize,
    seed: u64,
}

impl OnBackend for GenerateJob<'_> {
    type Output = Vec<Generated>;
    fn run<B: Backend + 'static>(self, b: B) -> Result<Vec<Generated>> {
        generate_on(b, self.cfg, self.params, self.tok, self.prompt, self.opts, self.count, self.seed)
    }
}

#[allow(clippy::too_many_arguments)]
fn generate_on<B: Backend>(mut b: B, cfg: &Config, params: &[f32], tok: &Tokenizer, prompt: &str, opts: SampleOptions, count: usize, seed: u64) -> Result<Vec<Generated>> {
    let mut model = Model::new(&mut b, &cfg.model, Recompute::Off)?.with_logits_chunk(cfg.train.logits_chunk);
    model.set_params(&mut b, params)?;
    let mut ids = tok.try_encode(prompt)?;
    if ids.is_empty() {
        ids = tok.doc_start();
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.model.vocab_size) {
        bail!("the prompt has token id {bad}, outside the model's vocabulary of {} (is this the tokenizer the model was trained with?)", cfg.model.vocab_size);
    }
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let new = sample::generate(&mut b, &mut model, &ids, opts, tok.eot(), &mut rng)?;
            Ok(Generated { text: tok.decode(&new), ids: new })
        })
        .collect()
}
