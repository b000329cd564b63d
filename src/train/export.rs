//! `ferrotron export`: a run folder as a Hugging Face model folder: the
//! weights (one file or shards, f32 or bf16), `config.json` with the run's
//! token ids, and the run's own tokenizer files when it has them, so
//! `AutoModelForCausalLM` and `AutoTokenizer` both load the folder.

use super::generate::load_run_weights;
use crate::ckpt::{self, Dtype, ExportOptions};
use crate::data::Tokenizer;
use crate::model::layout::ParamLayout;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// Writes the newest checkpoint of `run` into `out`. Token ids in
/// config.json: those of the checkpoint the run started from (its
/// `config.json`, if `model.init_from` still names one: Llama 3's list of
/// EOS ids comes back as it was), else the run tokenizer's BOS/EOS (a
/// `tokenizer.json`), else GPT-2's `<|endoftext|>` when the vocabulary has it.
pub fn export_run(run: &Path, out: &Path, dtype: Dtype, max_shard_bytes: u64) -> Result<()> {
    let (cfg, params) = load_run_weights(run)?;
    let tok = Tokenizer::of_run(run).ok();
    let token_ids = init_from_token_ids(&cfg.model.init_from).or_else(|| match &tok {
        Some(Tokenizer::Hf(hf)) => Some((Value::from(hf.bos()), Value::from(hf.eos()))),
        _ => None,
    });
    let opts = ExportOptions { dtype, max_shard_bytes, token_ids };
    ckpt::export_with(out, &cfg.model, &ParamLayout::new(&cfg.model), &params, &opts).with_context(|| format!("exporting to {}", out.display()))?;
    if let Some(Tokenizer::Hf(hf)) = &tok {
        hf.save(out)?;
    }
    Ok(())
}

/// `bos_token_id` and `eos_token_id` of the Hugging Face checkpoint a run
/// started from, when its config.json is still readable.
fn init_from_token_ids(init_from: &str) -> Option<(Value, Value)> {
    if init_from.is_empty() {
        return None;
    }
    let path = Path::new(init_from);
    let dir = if path.is_file() { path.parent()? } else { path };
    let json: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let get = |k: &str| json.get(k).cloned().unwrap_or(Value::Null);
    Some((get("bos_token_id"), get("eos_token_id")))
}

/// `5GB`, `500MB`, `100KB`, `0` (no sharding) or a plain byte count, as
/// transformers' `max_shard_size` (decimal units).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_uppercase();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), "B"),
    };
    let scale: u64 = match unit.trim() {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        other => anyhow::bail!("size `{text}`: unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB or GiB)"),
    };
    let n: f64 = num.trim().parse().map_err(|_| anyhow::anyhow!("size `{text}` is not a number with a unit such as 5GB"))?;
    if !(n >= 0.0 && n.is_finite()) {
        anyhow::bail!("size `{text}` must be >= 0");
    }
    Ok((n * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_in_transformers_units() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("100KB").unwrap(), 100_000);
        assert_eq!(parse_size("1.5 MB").unwrap(), 1_500_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("5XB").unwrap_err().to_string().contains("XB"));
        assert!(parse_size("-1GB").is_err() && parse_size("GB").is_err());
    }
}
