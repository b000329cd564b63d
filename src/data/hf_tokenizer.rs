//! A checkpoint's own tokenizer: a Hugging Face `tokenizer.json` (Llama 3,
//! Mistral, GPT-2 and most others), run by Hugging Face's `tokenizers` crate.
//!
//! Identity: the exact bytes of `tokenizer.json` (and of
//! `tokenizer_config.json` when one lies beside it). `prepare` copies both
//! into the data folder and a run copies them into its run folder, so the
//! data, the run and its samples always decode with the tokenizer that made
//! the tokens, even after the original files move.
//!
//! Special tokens:
//! - BOS / EOS come from `tokenizer_config.json` (`bos_token`, `eos_token`:
//!   a string or `{"content": ...}`); without one, from the usual names
//!   (`<|begin_of_text|>`, `<s>`, `<bos>` / `<|end_of_text|>`, `</s>`,
//!   `<|endoftext|>`, `<eos>`) when the vocabulary has them.
//! - Encoding runs the tokenizer's own post-processor, so a Llama or Mistral
//!   tokenizer puts its BOS first, as `tokenizer(text)` does in transformers.
//! - Text that spells a special token (`<|end_of_text|>`) is encoded as plain
//!   text, never as the special id: documents cannot forge boundaries.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const TOKENIZER_JSON: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// Highest id + 1 (ids need not be contiguous; the model needs this many rows).
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Whether the post-processor adds tokens of its own (a BOS) to a text.
    adds_specials: bool,
    json: Vec<u8>,
    config: Option<Vec<u8>>,
    /// Where it was read from (for messages and provenance).
    pub source: PathBuf,
}

impl HfTokenizer {
    /// Reads `path`: a `tokenizer.json` file, or a folder holding one (a
    /// Hugging Face model folder, a prepared data folder, a run folder).
    pub fn load(path: &Path) -> Result<HfTokenizer> {
        let file = if path.is_dir() { path.join(TOKENIZER_JSON) } else { path.to_path_buf() };
        let json = std::fs::read(&file).with_context(|| {
            if path.is_dir() {
                format!("{} has no {TOKENIZER_JSON} (give a tokenizer.json file or a folder holding one)", path.display())
            } else {
                format!("cannot read tokenizer {}", file.display())
            }
        })?;
        let config_path = file.with_file_name(TOKENIZER_CONFIG);
        let config = match std::fs::read(&config_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow!("cannot read {}: {e}", config_path.display())),
        };
        HfTokenizer::from_bytes(json, config, &file)
    }

    /// Builds the tokenizer from the two files' contents (`origin` names
    /// `tokenizer.json` in messages).
    pub fn from_bytes(json: Vec<u8>, config: Option<Vec<u8>>, origin: &Path) -> Result<HfTokenizer> {
        let mut inner = tokenizers::Tokenizer::from_bytes(&json)
            .map_err(|e| anyhow!("{} is not a tokenizer.json the `tokenizers` library can load: {e}", origin.display()))?;
        // Special-token text in documents and prompts stays plain text.
        inner.set_encode_special_tokens(true);
        let vocab_size = inner.get_vocab(true).values().copied().max().map_or(0, |m| m as usize + 1);
        if vocab_size == 0 {
            bail!("{}: the tokenizer has an empty vocabulary", origin.display());
        }
        if vocab_size > u32::MAX as usize {
            bail!("{}: {vocab_size} token ids do not fit 32-bit token shards", origin.display());
        }
        let cfg: Option<Value> = match &config {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice(bytes)
                    .map_err(|e| anyhow!("{} is not valid JSON: {e}", origin.with_file_name(TOKENIZER_CONFIG).display()))?,
            ),
        };
        let special = |key: &str, names: &[&str]| -> Result<Option<u32>> {
            let named = cfg.as_ref().and_then(|c| c.get(key)).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
                _ => None,
            });
            match named {
                Some(name) => match inner.token_to_id(&name) {
                    Some(id) => Ok(Some(id)),
                    None => bail!("{}: {key} `{name}` of {TOKENIZER_CONFIG} is not in the vocabulary", origin.display()),
                },
                None => Ok(names.iter().find_map(|n| inner.token_to_id(n))),
            }
        };
        let bos = special("bos_token", &["<|begin_of_text|>", "<s>", "<bos>"])?;
        let eos = special("eos_token", &["<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>"])?;
        let probe = inner.encode_fast("a", true).map_err(|e| anyhow!("{}: cannot encode text: {e}", origin.display()))?;
        let adds_specials = probe.get_special_tokens_mask().contains(&1);
        Ok(HfTokenizer { inner, vocab_size, bos, eos, adds_specials, json, config, source: origin.to_path_buf() })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether encoding a text adds the tokenizer's own special tokens (a BOS).
    pub fn adds_specials(&self) -> bool {
        self.adds_specials
    }

    /// Tokens of `text` with the tokenizer's post-processor (BOS for Llama
    /// and Mistral tokenizers); special-token text stays text. A text the
    /// tokenizer cannot encode (it has no fallback for some character and
    /// no unknown token) is an error naming the tokenizer.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| anyhow!("tokenizer {}: cannot encode the text: {e}", self.source.display()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokens of `text` alone, without BOS or other added specials.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenizer {}: cannot encode the text: {e}", self.source.display()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included. Never fails: ids outside the
    /// vocabulary and cut multi-byte characters become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut run: Vec<u32> = Vec::new();
        let flush = |run: &mut Vec<u32>, out: &mut String| {
            if !run.is_empty() {
                out.push_str(&self.inner.decode(run, false).unwrap_or_else(|_| "\u{FFFD}".into()));
                run.clear();
            }
        };
        for &id in ids {
            if self.inner.id_to_token(id).is_some() {
                run.push(id);
            } else {
                flush(&mut run, &mut out);
                out.push('\u{FFFD}');
            }
        }
        flush(&mut run, &mut out);
        out
    }

    /// Writes `tokenizer.json` (and `tokenizer_config.json` if it had one)
    /// into `dir`, atomically, byte for byte as read.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::util::atomic::write_file(&dir.join(TOKENIZER_JSON), &self.json)?;
        let config = dir.join(TOKENIZER_CONFIG);
        match &self.config {
            Some(bytes) => crate::util::atomic::write_file(&config, bytes),
            // A config left there by an earlier tokenizer would change this one's specials.
            None => match std::fs::remove_file(&config) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow!("cannot remove {}: {e}", config.display())),
                _ => Ok(()),
            },
        }
    }

    /// The exact bytes of `tokenizer.json`.
    pub fn json_bytes(&self) -> &[u8] {
        &self.json
    }
}
