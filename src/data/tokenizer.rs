//! Tokenizers: raw bytes (vocab 256) and GPT-2 BPE (vocab 50257).
//!
//! GPT-2 BPE comes from `tiktoken-rs`' `r50k_base`, whose merge ranks are
//! embedded in the crate, so nothing is downloaded. Building it parses ~50k
//! ranks and compiles regexes (hundreds of milliseconds), so it is built once
//! per process and shared through a `OnceLock`.
//!
//! Special tokens: `encode` treats *all* text as ordinary text. A document
//! that literally contains the characters `<|endoftext|>` is encoded as those
//! characters, never as token 50256. Only the data pipeline inserts the real
//! end-of-text token between documents, so untrusted text cannot forge
//! document boundaries.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// Which tokenizer, without the (possibly large) tables behind it. Cheap to
/// copy; used in shard headers and `meta.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    Bytes,
    Gpt2,
}

impl TokenizerKind {
    pub const ALL: [TokenizerKind; 2] = [TokenizerKind::Bytes, TokenizerKind::Gpt2];

    pub fn from_name(name: &str) -> Result<TokenizerKind> {
        match name.trim().to_ascii_lowercase().as_str() {
            "bytes" | "byte" => Ok(TokenizerKind::Bytes),
            "gpt2" | "gpt-2" | "r50k_base" => Ok(TokenizerKind::Gpt2),
            other => bail!("unknown tokenizer `{other}`: use `bytes` or `gpt2`"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Bytes => "bytes",
            TokenizerKind::Gpt2 => "gpt2",
        }
    }

    pub fn vocab_size(self) -> usize {
        match self {
            TokenizerKind::Bytes => 256,
            TokenizerKind::Gpt2 => 50257,
        }
    }

    pub fn eot(self) -> Option<u32> {
        match self {
            TokenizerKind::Bytes => None,
            TokenizerKind::Gpt2 => Some(GPT2_EOT),
        }
    }

    /// Stable numeric id stored in shard headers. Never renumber.
    pub fn code(self) -> u32 {
        match self {
            TokenizerKind::Bytes => 1,
            TokenizerKind::Gpt2 => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<TokenizerKind> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// GPT-2's `<|endoftext|>` token id.
pub const GPT2_EOT: u32 = 50256;

/// A ready-to-use tokenizer. Cloning is cheap (GPT-2 tables are shared).
#[derive(Clone, Copy)]
pub enum Tokenizer {
    Bytes,
    Gpt2(&'static Gpt2Bpe),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.name())
    }
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind()
    }
}

impl Tokenizer {
    /// `"bytes"` or `"gpt2"`.
    pub fn from_name(name: &str) -> Result<Tokenizer> {
        Tokenizer::new(TokenizerKind::from_name(name)?)
    }

    pub fn new(kind: TokenizerKind) -> Result<Tokenizer> {
        Ok(match kind {
            TokenizerKind::Bytes => Tokenizer::Bytes,
            TokenizerKind::Gpt2 => Tokenizer::Gpt2(Gpt2Bpe::shared()?),
        })
    }

    pub fn kind(&self) -> TokenizerKind {
        match self {
            Tokenizer::Bytes => TokenizerKind::Bytes,
            Tokenizer::Gpt2(_) => TokenizerKind::Gpt2,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    pub fn vocab_size(&self) -> usize {
        self.kind().vocab_size()
    }

    /// The end-of-text token placed between documents, if the tokenizer has one.
    pub fn eot(&self) -> Option<u32> {
        self.kind().eot()
    }

    /// Encodes text; special-token text is encoded as plain text (see module docs).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Bytes => text.bytes().map(u32::from).collect(),
            Tokenizer::Gpt2(bpe) => bpe.core.encode_ordinary(text),
        }
    }

    /// Decodes tokens to text. Byte sequences that are not valid UTF-8 (e.g. a
    /// multi-byte character cut in half by sampling) and ids outside the
    /// vocabulary become U+FFFD instead of failing, so sampling never crashes.
    pub fn decode(&self, tokens: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(tokens.len() * 2);
        for &t in tokens {
            match self.token_bytes(t) {
                Some(b) => bytes.extend_from_slice(b),
                None => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw bytes behind one token, or `None` if the id is out of range.
    pub fn token_bytes(&self, token: u32) -> Option<&[u8]> {
        match self {
            Tokenizer::Bytes => BYTE_TABLE.get(token as usize).map(std::slice::from_ref),
            Tokenizer::Gpt2(bpe) => bpe.pieces.get(token as usize).map(Vec::as_slice),
        }
    }
}

/// Every byte value once, so `token_bytes` can hand out a slice for byte tokens.
static BYTE_TABLE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// The GPT-2 encoder plus a flat id → bytes table for fast, panic-free decoding.
pub struct Gpt2Bpe {
    core: CoreBPE,
    pieces: Vec<Vec<u8>>,
}

impl Gpt2Bpe {
    /// The process-wide instance, built on first use.
    pub fn shared() -> Result<&'static Gpt2Bpe> {
        static CELL: OnceLock<std::result::Result<Gpt2Bpe, String>> = OnceLock::new();
        CELL.get_or_init(|| Gpt2Bpe::build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("could not build the GPT-2 tokenizer: {e}"))
    }

    fn build() -> Result<Gpt2Bpe> {
        let core = tiktoken_rs::r50k_base()?;
        // `_decode_native_and_split` yields one byte string per id; we ask for
        // every id once and keep the table, so decode never touches the
        // crate's panicking lookup path.
        let ids: Vec<u32> = (0..TokenizerKind::Gpt2.vocab_size() as u32).collect();
        let pieces: Vec<Vec<u8>> = core._decode_native_and_split(ids).collect();
        Ok(Gpt2Bpe { core, pieces })
    }
}
