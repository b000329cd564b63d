//! `meta.json`: the description of a prepared token folder.
//!
//! The loader trusts this file for the shard list (so stray files in the
//! folder are ignored) and cross-checks every shard against it.

use super::tokenizer::TokenizerKind;
use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

pub const META_FILE: &str = "meta.json";
pub const FORMAT: &str = "ferrotron-tokens";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Always `ferrotron-tokens`; guards against reading some other meta.json.
    pub format: String,
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
    /// For an `hf` tokenizer: the `tokenizer.json` it was read from. The
    /// folder holds a copy (`tokenizer.json`, and `tokenizer_config.json`
    /// when there was one), which is what the data is read with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_source: Option<String>,
    /// Token placed before every document (GPT-2's `<|endoftext|>`), if any.
    pub eot: Option<u32>,
    pub train: SplitMeta,
    pub val: SplitMeta,
    pub sources: Vec<SourceMeta>,
    pub val_fraction: f64,
    pub seed: u64,
    pub shard_tokens: u64,
    /// UTC, RFC 3339.
    pub created: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SplitMeta {
    pub documents: u64,
    pub tokens: u64,
    pub shards: Vec<ShardMeta>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardMeta {
    /// File name inside the folder.
    pub file: String,
    pub tokens: u64,
}

/// One command-line input (a file or a folder) and what came out of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceMeta {
    pub input: String,
    pub files: u64,
    pub documents: u64,
    /// Files skipped because they were binary or not UTF-8.
    pub skipped_files: u64,
}

impl Meta {
    pub fn read(dir: &Path) -> Result<Meta> {
        let path = dir.join(META_FILE);
        let text = fs::read_to_string(&path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        let meta: Meta = serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{} is not a valid token-folder description: {e}",
                path.display()
            )
        })?;
        if meta.format != FORMAT {
            anyhow::bail!(
                "{}: format is `{}`, expected `{FORMAT}`",
                path.display(),
                meta.format
            );
        }
        Ok(meta)
    }

    /// Writes atomically (temp file + fsync + rename): `meta.json` appears
    /// only once every shard it lists is complete.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(META_FILE);
        let text = serde_json::to_string_pretty(self)? + "\n";
        crate::util::atomic::write_file(&path, text.as_bytes())
    }
}

