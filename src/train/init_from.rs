//! Starting a run from a published Hugging Face checkpoint
//! (`model.init_from`): its `config.json` decides the model shape, its
//! safetensors the initial weights.

use crate::ckpt;
use crate::config::Config;
use crate::model::padding;
use anyhow::{Context, Result};
use std::path::Path;

/// Imports the checkpoint named by `model.init_from`, replaces the model
/// shape in `cfg` by the checkpoint's (keeping `preset`, `init_from` and
/// `init_std`), and returns the weights in ferrotron's flat layout.
pub fn load(cfg: &mut Config) -> Result<Vec<f32>> {
    let path = cfg.model.init_from.clone();
    let (hf, weights) = ckpt::import(Path::new(&path)).with_context(|| format!("model.init_from = {path}"))?;
    let mut model = hf.clone();
    model.preset = cfg.model.preset.clone();
    model.init_from = path;
    model.init_std = cfg.model.init_std;
    model.vocab_multiple = cfg.model.vocab_multiple;
    model.ffn_multiple = cfg.model.ffn_multiple;
    cfg.model = model;
    cfg.validate().context("the shape read from model.init_from does not fit the rest of the config")?;
    Ok(padding::repad(&hf, &cfg.model, &weights))
}
