//! `meta.json`: the description of a prepared token folder.
//!
//! The loader trusts this file for the shard list (so stray files in the
//! folder are ignored) and cross-checks every shard against it.

use super::tokenizer::TokenizerKind;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::Path;

pub const META_FILE: &str = "meta.json";
pub const FORMAT: &str = "ferrotron-tokens";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Always `ferrotron-tokens`; guards against reading some other meta.json.
    pub format: String,
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
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
        let tmp = dir.join(format!(".{META_FILE}.tmp{}", std::process::id()));
        let text = serde_json::to_string_pretty(self)?;
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot create {}", path.display()))
    }
}

/// Current time as RFC 3339 UTC (`2025-01-31T12:00:00Z`), without a date crate.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

pub fn rfc3339(unix_secs: u64) -> String {
    let (days, rem) = ((unix_secs / 86_400) as i64, unix_secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
