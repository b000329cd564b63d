//! A tokenized dataset held in memory: the train and validation token streams
//! plus the tokenizer that made them.

use super::builtin;
use super::meta::{Meta, SplitMeta};
use super::shard::open_shard;
use super::store::TokenStore;
use super::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// Which token stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

/// Token streams are behind `Arc` so cloning a dataset or creating loaders
/// over it never copies tokens. Prepared folders stay on disk
/// ([`TokenStore::Shards`]): a corpus larger than memory trains fine.
#[derive(Clone)]
pub struct Dataset {
    pub tokenizer: Tokenizer,
    /// Where it came from: `builtin` or the folder path.
    pub source: String,
    train: Arc<TokenStore>,
    val: Arc<TokenStore>,
}

impl Dataset {
    /// `"builtin"` → the generated demo corpus; anything else → a folder
    /// written by `ferrotron prepare`.
    pub fn open(path: &str) -> Result<Dataset> {
        if path == "builtin" {
            return Ok(builtin::dataset());
        }
        open_folder(Path::new(path))
    }

    pub fn from_tokens(
        tokenizer: Tokenizer,
        train: Vec<u32>,
        val: Vec<u32>,
        source: &str,
    ) -> Dataset {
        Dataset::from_stores(tokenizer, TokenStore::Memory(train), TokenStore::Memory(val), source)
    }

    fn from_stores(tokenizer: Tokenizer, train: TokenStore, val: TokenStore, source: &str) -> Dataset {
        Dataset {
            tokenizer,
            source: source.to_string(),
            train: Arc::new(train),
            val: Arc::new(val),
        }
    }

    /// A split's tokens, in memory (meant for small splits and tests).
    pub fn tokens(&self, split: Split) -> Result<Vec<u32>> {
        self.shared(split).to_vec()
    }

    /// The shared token storage of a split (what loaders hold on to).
    pub fn shared(&self, split: Split) -> &Arc<TokenStore> {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    pub fn len(&self, split: Split) -> usize {
        self.shared(split).len()
    }

    pub fn is_empty(&self) -> bool {
        self.train.is_empty() && self.val.is_empty()
    }
}

/// Sizes only: printing millions of token ids helps nobody.
impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("tokenizer", &self.tokenizer)
            .field("source", &self.source)
            .field("train_tokens", &self.train.len())
            .field("val_tokens", &self.val.len())
            .finish()
    }
}

fn prepare_hint(dir: &Path) -> String {
    format!(
        "create them with `ferrotron prepare --input <your text files> --out {}` \
         (or use data.path = \"builtin\" for the built-in demo corpus)",
        dir.display()
    )
}

fn open_folder(dir: &Path) -> Result<Dataset> {
    if !dir.is_dir() {
        let why = if dir.exists() {
            "it is not a folder"
        } else {
            "the folder does not exist"
        };
        bail!(
            "no token shards in {} ({why}): {}",
            dir.display(),
            prepare_hint(dir)
        );
    }
    if !dir.join(super::meta::META_FILE).exists() {
        bail!("{}", missing_meta_message(dir));
    }
    let meta = Meta::read(dir)?;
    let tokenizer = Tokenizer::open_in(dir, meta.tokenizer)?;
    if tokenizer.vocab_size() != meta.vocab_size {
        bail!(
            "{}: meta.json says {} token ids but the folder's {} tokenizer has {}; re-run `ferrotron prepare`",
            dir.display(),
            meta.vocab_size,
            tokenizer.name(),
            tokenizer.vocab_size()
        );
    }
    let train = read_split(dir, &meta, &meta.train)?;
    let val = read_split(dir, &meta, &meta.val)?;
    Ok(Dataset::from_stores(
        tokenizer,
        train,
        val,
        &dir.display().to_string(),
    ))
}

/// No meta.json: either nothing was prepared here, or a prepare run died
/// before finishing (shards exist but were never listed).
fn missing_meta_message(dir: &Path) -> String {
    let has_shards = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".bin"))
        })
        .unwrap_or(false);
    if has_shards {
        format!(
            "{} has .bin files but no meta.json (an interrupted `ferrotron prepare`?): re-run \
             `ferrotron prepare --input <your text files> --out {} --overwrite`",
            dir.display(),
            dir.display()
        )
    } else {
        format!(
            "no token shards in {}: {}",
            dir.display(),
            prepare_hint(dir)
        )
    }
}

/// Opens and validates a split's shards (in parallel), in listed order.
fn read_split(dir: &Path, meta: &Meta, split: &SplitMeta) -> Result<TokenStore> {
    let files = split
        .shards
        .par_iter()
        .map(|s| {
            let path = dir.join(&s.file);
            let shard = open_shard(&path)?;
            if shard.tokenizer != meta.tokenizer {
                bail!(
                    "{}: tokenizer is {} but meta.json says {}",
                    path.display(),
                    shard.tokenizer.name(),
                    meta.tokenizer.name()
                );
            }
            if shard.vocab_size != meta.vocab_size {
                bail!(
                    "{}: has a vocabulary of {} ids but meta.json says {}",
                    path.display(),
                    shard.vocab_size,
                    meta.vocab_size
                );
            }
            if shard.count != s.tokens {
                bail!(
                    "{}: has {} tokens but meta.json says {}",
                    path.display(),
                    shard.count,
                    s.tokens
                );
            }
            Ok(shard)
        })
        .collect::<Result<_>>()?;
    Ok(TokenStore::shards(files))
}
