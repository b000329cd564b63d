//! A numbered sequence of shard files for one split (`train_000000.bin`,
//! `train_000001.bin`, ...), each holding up to `shard_tokens` tokens.
//! Documents may span two shards; the loader concatenates them in order.

use super::meta::{ShardMeta, SplitMeta};
use super::shard::ShardWriter;
use super::tokenizer::TokenizerKind;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub struct ShardSeq {
    dir: PathBuf,
    prefix: &'static str,
    kind: TokenizerKind,
    vocab_size: usize,
    shard_tokens: u64,
    current: Option<ShardWriter>,
    done: SplitMeta,
}

impl ShardSeq {
    pub fn new(
        dir: &Path,
        prefix: &'static str,
        kind: TokenizerKind,
        vocab_size: usize,
        shard_tokens: usize,
    ) -> ShardSeq {
        ShardSeq {
            dir: dir.to_path_buf(),
            prefix,
            kind,
            vocab_size,
            shard_tokens: shard_tokens as u64,
            current: None,
            done: SplitMeta::default(),
        }
    }

    fn name(&self, index: usize) -> String {
        format!("{}_{index:06}.bin", self.prefix)
    }

    pub fn documents(&self) -> u64 {
        self.done.documents
    }

    /// Tokens pushed so far, including the open shard.
    pub fn tokens(&self) -> u64 {
        self.done.tokens + self.current.as_ref().map_or(0, |w| w.count())
    }

    pub fn push_document(&mut self, mut tokens: &[u32]) -> Result<()> {
        self.done.documents += 1;
        while !tokens.is_empty() {
            let cap = self.shard_tokens;
            let writer = self.open()?;
            let room = (cap - writer.count()) as usize;
            let (now, rest) = tokens.split_at(room.min(tokens.len()));
            writer.push(now)?;
            tokens = rest;
            if self
                .current
                .as_ref()
                .is_some_and(|w| w.count() == self.shard_tokens)
            {
                self.close()?;
            }
        }
        Ok(())
    }

    fn open(&mut self) -> Result<&mut ShardWriter> {
        if self.current.is_none() {
            let path = self.dir.join(self.name(self.done.shards.len()));
            self.current = Some(ShardWriter::create(&path, self.kind, self.vocab_size)?);
        }
        Ok(self.current.as_mut().expect("just opened"))
    }

    fn close(&mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            let file = self.name(self.done.shards.len());
            let tokens = w.finish()?;
            self.done.tokens += tokens;
            self.done.shards.push(ShardMeta { file, tokens });
        }
        Ok(())
    }

    /// Closes the last shard and returns what was written.
    pub fn finish(&mut self) -> Result<SplitMeta> {
        self.close()?;
        Ok(self.done.clone())
    }

    /// Deletes every finished shard (after a failed run); an open one deletes
    /// its temporary file when dropped.
    pub fn remove_written(&mut self) {
        self.current = None;
        for s in &self.done.shards {
            let _ = std::fs::remove_file(self.dir.join(&s.file));
        }
    }
}
