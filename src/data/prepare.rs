//! `ferrotron prepare`: text in, token shards out.
//!
//! Reads the inputs (see `sources` for what counts as a document), tokenizes
//! documents in parallel with rayon, and writes `train_000000.bin ...`,
//! `val_000000.bin ...` and `meta.json` into the output folder.
//!
//! Determinism: documents are numbered in input order (folders in sorted
//! order), tokenized in parallel but written in that order, and document `i`
//! goes to validation iff `hash(seed, i) < val_fraction`, so the same inputs
//! and options always give byte-identical shards, whatever the thread count.
//!
//! Document boundaries: with GPT-2 every document is preceded by
//! `<|endoftext|>` (token 50256), as in GPT-2's own training data and llm.c;
//! literal `<|endoftext|>` text inside a document stays plain text. The byte
//! tokenizer has no such token, so documents are just separated by a newline.
//! A Hugging Face `tokenizer.json` (`--tokenizer PATH`) encodes each
//! document with its own post-processor (Llama 3 and Mistral put their BOS
//! first) and the document ends with its EOS; without either, a newline
//! separates documents. Its files are copied into the output folder.
//!
//! Small inputs: if hashing sent no document to validation (e.g. a handful of
//! files), the last training document is moved there instead; with a single
//! document, its last `val_fraction` of tokens (at least one) become the
//! validation split. So `val_fraction > 0` always yields some validation data.
//!
//! Safety: an output folder that already holds shards or `meta.json` is
//! refused unless `overwrite` is set. Shards are written atomically and
//! `meta.json` last, and a failed run removes the shards it wrote.

use super::meta::{Meta, SourceMeta, SplitMeta, FORMAT};
use crate::util::rng::{mix, to_unit};
use super::sink::ShardSeq;
use super::sources::{expand, read_documents, Outcome, SourceFile};
use super::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// `gpt2` (default), `bytes`, or the path of a Hugging Face
    /// `tokenizer.json` (or of a folder holding one).
    pub tokenizer: String,
    /// Fraction of documents for validation (default 0.005); 0 = none.
    pub val_fraction: f64,
    /// Tokens per shard file (default 100M).
    pub shard_tokens: usize,
    /// Seeds the train/validation split.
    pub seed: u64,
    pub progress: bool,
    /// JSONL field and Parquet column holding the text (default `text`).
    pub text_key: String,
    /// Replace shards and meta.json already in the output folder.
    pub overwrite: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            tokenizer: "gpt2".into(),
            val_fraction: 0.005,
            shard_tokens: 100_000_000,
            seed: 1337,
            progress: true,
            text_key: "text".into(),
            overwrite: false,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PrepareSummary {
    pub out: PathBuf,
    pub tokenizer: String,
    pub files: u64,
    /// Files inside folders skipped as binary or not UTF-8 (first few listed).
    pub skipped_files: u64,
    pub skipped_examples: Vec<PathBuf>,
    pub train_documents: u64,
    pub val_documents: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub train_shards: usize,
    pub val_shards: usize,
    pub seconds: f64,
}

impl std::fmt::Display for PrepareSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "prepared {} ({} tokenizer) in {:.1}s from {} files",
            self.out.display(),
            self.tokenizer,
            self.seconds,
            self.files
        )?;
        writeln!(
            f,
            "  train: {} tokens, {} documents, {} shards",
            self.train_tokens, self.train_documents, self.train_shards
        )?;
        write!(
            f,
            "  val:   {} tokens, {} documents, {} shards",
            self.val_tokens, self.val_documents, self.val_shards
        )?;
        if self.skipped_files > 0 {
            let ex: Vec<String> = self
                .skipped_examples
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            write!(
                f,
                "\n  warning: skipped {} binary or non-UTF-8 files (e.g. {})",
                self.skipped_files,
                ex.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Text bytes tokenized per parallel batch: big enough to keep every core
/// busy, small enough to bound memory.
const BATCH_BYTES: usize = 16 << 20;
const SKIPPED_EXAMPLES: usize = 5;

pub fn prepare(inputs: &[PathBuf], out: &Path, opts: &PrepareOptions) -> Result<PrepareSummary> {
    let started = std::time::Instant::now();
    check_options(inputs, opts)?;
    let tokenizer = Tokenizer::load(&opts.tokenizer)?;
    let files = expand(inputs, out)?;
    ready_out_dir(out, opts.overwrite)?;
    if let Tokenizer::Hf(hf) = &tokenizer {
        hf.save(out)?;
    }
    let mut run = Run::new(tokenizer, out, opts, inputs);
    let result = run.read_all(&files).and_then(|_| run.finish());
    if result.is_err() {
        run.remove_written();
    }
    let mut summary = result?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn check_options(inputs: &[PathBuf], opts: &PrepareOptions) -> Result<()> {
    if inputs.is_empty() {
        bail!("no inputs: give text files, folders, .jsonl or .parquet files to prepare");
    }
    if !(0.0..1.0).contains(&opts.val_fraction) {
        bail!("val_fraction must be in [0, 1), got {}", opts.val_fraction);
    }
    if opts.shard_tokens == 0 {
        bail!("shard_tokens must be at least 1");
    }
    Ok(())
}

fn is_ours(name: &str) -> bool {
    name == super::meta::META_FILE
        || (name.ends_with(".bin") && (name.starts_with("train_") || name.starts_with("val_")))
}

/// Creates the folder, or checks an existing one holds no earlier output
/// (deleting that output only when `overwrite` is set).
fn ready_out_dir(out: &Path, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("output {} exists and is not a folder", out.display());
    }
    fs::create_dir_all(out)
        .map_err(|e| anyhow!("cannot create output folder {}: {e}", out.display()))?;
    let ours: Vec<PathBuf> = fs::read_dir(out)?
        .flatten()
        .filter(|e| is_ours(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    if !overwrite {
        bail!(
            "output folder {} already holds prepared data ({} files such as {}); pass --overwrite \
             to replace it, or choose another --out",
            out.display(),
            ours.len(),
            ours[0].display()
        );
    }
    for p in ours {
        fs::remove_file(&p).map_err(|e| anyhow!("cannot remove old {}: {e}", p.display()))?;
    }
    Ok(())
}

/// State of one prepare run.
struct Run<'a> {
    tokenizer: Tokenizer,
    opts: &'a PrepareOptions,
    out: PathBuf,
    train: ShardSeq,
    val: ShardSeq,
    /// The latest train document, held back in case validation ends up empty.
    held: Option<Vec<u32>>,
    pending: Vec<String>,
    pending_bytes: usize,
    documents: u64,
    sources: Vec<SourceMeta>,
    skipped: Vec<PathBuf>,
    skipped_count: u64,
    files: u64,
    bar: ProgressBar,
}

impl<'a> Run<'a> {
    fn new(
        tokenizer: Tokenizer,
        out: &Path,
        opts: &'a PrepareOptions,
        inputs: &[PathBuf],
    ) -> Run<'a> {
        let (kind, vocab) = (tokenizer.kind(), tokenizer.vocab_size());
        let bar = if opts.progress {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {msg}",
        );
        if let Ok(style) = style {
            bar.set_style(style);
        }
        Run {
            tokenizer,
            opts,
            out: out.to_path_buf(),
            train: ShardSeq::new(out, "train", kind, vocab, opts.shard_tokens),
            val: ShardSeq::new(out, "val", kind, vocab, opts.shard_tokens),
            held: None,
            pending: Vec::new(),
            pending_bytes: 0,
            documents: 0,
            sources: inputs
                .iter()
                .map(|p| SourceMeta {
                    input: p.display().to_string(),
                    ..Default::default()
                })
                .collect(),
            skipped: Vec::new(),
            skipped_count: 0,
            files: 0,
            bar,
        }
    }

    fn read_all(&mut self, files: &[SourceFile]) -> Result<()> {
        self.bar.set_length(files.iter().map(|f| f.bytes).sum());
        let mut done_bytes = 0;
        for file in files {
            self.read_file(file)?;
            done_bytes += file.bytes;
            self.bar.set_position(done_bytes);
        }
        self.flush()?;
        if self.documents == 0 {
            bail!("the inputs contain no documents (no non-empty text was found)");
        }
        Ok(())
    }

    fn read_file(&mut self, file: &SourceFile) -> Result<()> {
        let before = self.documents + self.pending.len() as u64;
        let key = self.opts.text_key.clone();
        let outcome = read_documents(file, &key, &mut |doc, bytes| self.add(doc, bytes))?;
        let src = &mut self.sources[file.input];
        if outcome == Outcome::Skipped {
            src.skipped_files += 1;
            self.skipped_count += 1;
            if self.skipped.len() < SKIPPED_EXAMPLES {
                self.skipped.push(file.path.clone());
            }
            return Ok(());
        }
        src.files += 1;
        src.documents += self.documents + self.pending.len() as u64 - before;
        self.files += 1;
        Ok(())
    }

    fn add(&mut self, doc: String, bytes: u64) -> Result<()> {
        self.bar.inc(bytes);
        self.pending_bytes += doc.len();
        self.pending.push(doc);
        if self.pending_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Tokenizes the pending documents in parallel, then routes them in order.
    fn flush(&mut self) -> Result<()> {
        let tok = self.tokenizer.clone();
        let docs = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let tokenized: Vec<Vec<u32>> = docs.par_iter().map(|d| doc_tokens(&tok, d)).collect::<Result<_>>()?;
        for tokens in tokenized {
            self.route(tokens)?;
        }
        self.bar.set_message(format!(
            "{} docs, {} tokens",
            self.documents,
            self.train.tokens()
                + self.val.tokens()
                + self.held.as_ref().map_or(0, |h| h.len() as u64)
        ));
        Ok(())
    }

    fn route(&mut self, tokens: Vec<u32>) -> Result<()> {
        let index = self.documents;
        self.documents += 1;
        if to_unit(mix(self.opts.seed, index)) < self.opts.val_fraction {
            return self.val.push_document(&tokens);
        }
        if let Some(prev) = self.held.replace(tokens) {
            self.train.push_document(&prev)?;
        }
        Ok(())
    }

    /// Places the held-back document (see module docs), closes shards and
    /// writes meta.json.
    fn finish(&mut self) -> Result<PrepareSummary> {
        if let Some(held) = self.held.take() {
            let wants_val = self.opts.val_fraction > 0.0 && self.val.documents() == 0;
            if !wants_val {
                self.train.push_document(&held)?;
            } else if self.documents >= 2 {
                self.val.push_document(&held)?;
            } else {
                let cut = held.len() - tail_len(held.len(), self.opts.val_fraction);
                self.train.push_document(&held[..cut])?;
                if cut < held.len() {
                    self.val.push_document(&held[cut..])?;
                }
            }
        }
        let train = self.train.finish()?;
        let val = self.val.finish()?;
        self.bar.finish_and_clear();
        self.write_meta(&train, &val)?;
        Ok(self.summary(&train, &val))
    }

    fn write_meta(&self, train: &SplitMeta, val: &SplitMeta) -> Result<()> {
        let tok = &self.tokenizer;
        Meta {
            format: FORMAT.into(),
            tokenizer: tok.kind(),
            vocab_size: tok.vocab_size(),
            tokenizer_source: match tok {
                Tokenizer::Hf(hf) => Some(hf.source.display().to_string()),
                _ => None,
            },
            eot: tok.eot(),
            train: train.clone(),
            val: val.clone(),
            sources: self.sources.clone(),
            val_fraction: self.opts.val_fraction,
            seed: self.opts.seed,
            shard_tokens: self.opts.shard_tokens as u64,
            created: crate::util::time::now_rfc3339(),
        }
        .write(&self.out)
    }

    fn summary(&self, train: &SplitMeta, val: &SplitMeta) -> PrepareSummary {
        PrepareSummary {
            out: self.out.clone(),
            tokenizer: match &self.tokenizer {
                Tokenizer::Hf(hf) => format!("{}, {} ids", hf.source.display(), hf.vocab_size()),
                other => other.name().into(),
            },
            files: self.files,
            skipped_files: self.skipped_count,
            skipped_examples: self.skipped.clone(),
            train_documents: train.documents,
            val_documents: val.documents,
            train_tokens: train.tokens,
            val_tokens: val.tokens,
            train_shards: train.shards.len(),
            val_shards: val.shards.len(),
            seconds: 0.0,
        }
    }

    fn remove_written(&mut self) {
        self.bar.finish_and_clear();
        self.train.remove_written();
        self.val.remove_written();
    }
}

/// Tokens of one document including its boundary marker (see module docs).
fn doc_tokens(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    if let Tokenizer::Hf(hf) = tok {
        let mut t = hf.encode(text)?;
        match hf.eos() {
            Some(eos) => t.push(eos),
            None if !hf.adds_specials() && !text.ends_with('\n') => t.extend(hf.encode_plain("\n")?),
            None => {}
        }
        return Ok(t);
    }
    Ok(match tok.eot() {
        Some(eot) => {
            let mut t = vec![eot];
            t.extend(tok.encode(text));
            t
        }
        None => {
            let mut t = tok.encode(text);
            if !text.ends_with('\n') {
                t.extend(tok.encode("\n"));
            }
            t
        }
    })
}

/// Validation tokens cut from a single document: `fraction` of it, at least
/// one token, and never the whole document (0 if it has under two tokens).
fn tail_len(n: usize, fraction: f64) -> usize {
    if n < 2 {
        return 0;
    }
    (((n as f64) * fraction).ceil() as usize).clamp(1, n - 1)
}
