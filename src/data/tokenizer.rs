//! Tokenizers: raw bytes (vocab 256), GPT-2 BPE (vocab 50257), and a
//! checkpoint's own Hugging Face `tokenizer.json` (see `hf_tokenizer`).
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

use super::hf_tokenizer::HfTokenizer;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tiktoken_rs::CoreBPE;

/// Which tokenizer, without the (possibly large) tables behind it. Cheap to
/// copy; used in shard headers and `meta.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    Bytes,
    Gpt2,
    /// A Hugging Face `tokenizer.json`; its vocabulary size travels beside
    /// the kind (shard headers, `meta.json`).
    Hf,
}

impl TokenizerKind {
    pub const ALL: [TokenizerKind; 3] = [TokenizerKind::Bytes, TokenizerKind::Gpt2, TokenizerKind::Hf];

    /// The built-in tokenizers by name (`Hf` needs a file: [`Tokenizer::load`]).
    pub fn from_name(name: &str) -> Result<TokenizerKind> {
        match name.trim().to_ascii_lowercase().as_str() {
            "bytes" | "byte" => Ok(TokenizerKind::Bytes),
            "gpt2" | "gpt-2" | "r50k_base" => Ok(TokenizerKind::Gpt2),
            other => bail!("unknown tokenizer `{other}`: use `bytes` or `gpt2`, or the path of a Hugging Face tokenizer.json (prepare --tokenizer PATH)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Bytes => "bytes",
            TokenizerKind::Gpt2 => "gpt2",
            TokenizerKind::Hf => "hf",
        }
    }

    /// The vocabulary size of a built-in tokenizer; `None` for `Hf`, whose
    /// size depends on its file.
    pub fn fixed_vocab(self) -> Option<usize> {
        match self {
            TokenizerKind::Bytes => Some(256),
            TokenizerKind::Gpt2 => Some(50257),
            TokenizerKind::Hf => None,
        }
    }

    /// Stable numeric id stored in shard headers. Never renumber.
    pub fn code(self) -> u32 {
        match self {
            TokenizerKind::Bytes => 1,
            TokenizerKind::Gpt2 => 2,
            TokenizerKind::Hf => 3,
        }
    }

    pub fn from_code(code: u32) -> Option<TokenizerKind> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// GPT-2's `<|endoftext|>` token id.
pub const GPT2_EOT: u32 = 50256;

/// A ready-to-use tokenizer. Cloning is cheap (tables are shared).
#[derive(Clone)]
pub enum Tokenizer {
    Bytes,
    Gpt2(&'static Gpt2Bpe),
    Hf(Arc<HfTokenizer>),
}

/// What a run folder records about its tokenizer: `tokenizer.txt` holds the
/// name; an `hf` tokenizer's files lie beside it.
pub const RUN_TOKENIZER_FILE: &str = "tokenizer.txt";

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.name())
    }
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Tokenizer::Hf(a), Tokenizer::Hf(b)) => a.json_bytes() == b.json_bytes(),
            _ => self.kind() == other.kind(),
        }
    }
}

impl Tokenizer {
    /// `"bytes"` or `"gpt2"`.
    pub fn from_name(name: &str) -> Result<Tokenizer> {
        Tokenizer::new(TokenizerKind::from_name(name)?)
    }

    /// A built-in tokenizer (`Hf` needs its file: use [`Tokenizer::load`]).
    pub fn new(kind: TokenizerKind) -> Result<Tokenizer> {
        Ok(match kind {
            TokenizerKind::Bytes => Tokenizer::Bytes,
            TokenizerKind::Gpt2 => Tokenizer::Gpt2(Gpt2Bpe::shared()?),
            TokenizerKind::Hf => bail!("a Hugging Face tokenizer needs its tokenizer.json"),
        })
    }

    /// `bytes`, `gpt2`, or the path of a Hugging Face `tokenizer.json` (or
    /// of a folder holding one, such as a model folder).
    pub fn load(name_or_path: &str) -> Result<Tokenizer> {
        if TokenizerKind::from_name(name_or_path).is_ok() {
            return Tokenizer::from_name(name_or_path);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            bail!("tokenizer `{name_or_path}` is neither `bytes`, `gpt2` nor an existing tokenizer.json file or folder");
        }
        Ok(Tokenizer::Hf(Arc::new(HfTokenizer::load(path)?)))
    }

    /// The tokenizer a run folder or prepared data folder recorded: its
    /// `tokenizer.json` when `kind` is `Hf`, else the built-in one.
    pub fn open_in(dir: &Path, kind: TokenizerKind) -> Result<Tokenizer> {
        match kind {
            TokenizerKind::Hf => Ok(Tokenizer::Hf(Arc::new(HfTokenizer::load(&dir.join(super::hf_tokenizer::TOKENIZER_JSON))?))),
            other => Tokenizer::new(other),
        }
    }

    /// The tokenizer of a run folder (`tokenizer.txt`; runs older than it used GPT-2).
    pub fn of_run(run: &Path) -> Result<Tokenizer> {
        let name = std::fs::read_to_string(run.join(RUN_TOKENIZER_FILE)).unwrap_or_else(|_| "gpt2".into());
        let kind = match name.trim() {
            "hf" => TokenizerKind::Hf,
            other => TokenizerKind::from_name(other)?,
        };
        Tokenizer::open_in(run, kind)
    }

    /// Records this tokenizer in a run folder (see [`Tokenizer::of_run`]).
    pub fn save_to_run(&self, run: &Path) -> Result<()> {
        if let Tokenizer::Hf(hf) = self {
            hf.save(run)?;
        }
        crate::util::atomic::write_file(&run.join(RUN_TOKENIZER_FILE), self.name().as_bytes())
    }

    pub fn kind(&self) -> TokenizerKind {
        match self {
            Tokenizer::Bytes => TokenizerKind::Bytes,
            Tokenizer::Gpt2(_) => TokenizerKind::Gpt2,
            Tokenizer::Hf(_) => TokenizerKind::Hf,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Hf(hf) => hf.vocab_size(),
            other => other.kind().fixed_vocab().unwrap_or(0),
        }
    }

    /// The end-of-text token that ends a document (GPT-2's `<|endoftext|>`,
    /// a Hugging Face tokenizer's EOS), if the tokenizer has one; sampling
    /// stops there.
    pub fn eot(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => None,
            Tokenizer::Gpt2(_) => Some(GPT2_EOT),
            Tokenizer::Hf(hf) => hf.eos(),
        }
    }

    /// Encodes text; special-token text is encoded as plain text (see module
    /// docs). A Hugging Face tokenizer adds what its post-processor adds (a
    /// BOS first for Llama and Mistral), as transformers' `tokenizer(text)`
    /// does; the others add nothing. The rare text a Hugging Face tokenizer
    /// cannot encode yields no tokens here: use [`Tokenizer::try_encode`].
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.try_encode(text).unwrap_or_default()
    }

    /// [`Tokenizer::encode`], with the Hugging Face tokenizer's errors.
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(match self {
            Tokenizer::Bytes => text.bytes().map(u32::from).collect(),
            Tokenizer::Gpt2(bpe) => bpe.core.encode_ordinary(text),
            Tokenizer::Hf(hf) => hf.encode(text)?,
        })
    }

    /// The tokens that start a new document for sampling: the BOS a Hugging
    /// Face tokenizer adds, else the end-of-text token, else a newline.
    pub fn doc_start(&self) -> Vec<u32> {
        if let Tokenizer::Hf(hf) = self {
            if let (true, Some(bos)) = (hf.adds_specials(), hf.bos()) {
                return vec![bos];
            }
        }
        match self.eot() {
            Some(e) => vec![e],
            None => match self {
                Tokenizer::Hf(hf) => hf.encode_plain("\n").unwrap_or_default(),
                other => other.encode("\n"),
            },
        }
    }

    /// Decodes tokens to text. Byte sequences that are not valid UTF-8 (e.g. a
    /// multi-byte character cut in half by sampling) and ids outside the
    /// vocabulary become U+FFFD instead of failing, so sampling never crashes.
    pub fn decode(&self, tokens: &[u32]) -> String {
        if let Tokenizer::Hf(hf) = self {
            return hf.decode(tokens);
        }
        let mut bytes = Vec::with_capacity(tokens.len() * 2);
        for &t in tokens {
            match self.token_bytes(t) {
                Some(b) => bytes.extend_from_slice(b),
                None => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw bytes behind one token, or `None` if the id is out of range
    /// (or, for a Hugging Face tokenizer, not a plain byte sequence: use
    /// `decode` there).
    pub fn token_bytes(&self, token: u32) -> Option<&[u8]> {
        match self {
            Tokenizer::Bytes => BYTE_TABLE.get(token as usize).map(std::slice::from_ref),
            Tokenizer::Gpt2(bpe) => bpe.pieces.get(token as usize).map(Vec::as_slice),
            Tokenizer::Hf(_) => None,
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
        let ids: Vec<u32> = (0..50257).collect();
        let pieces: Vec<Vec<u8>> = core._decode_native_and_split(ids).collect();
        Ok(Gpt2Bpe { core, pieces })
    }
}
