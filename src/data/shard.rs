//! Token shard files: a small fixed header followed by little-endian tokens.
//!
//! Layout (all integers little-endian), 32-byte header:
//! ```text
//! offset size  field
//!      0    8  magic  b"FTRNTOK\0"
//!      8    4  format version (1 or 2)
//!     12    4  dtype code: 2 = u16 tokens, 4 = u32 tokens (the byte width)
//!     16    4  tokenizer code (1 = bytes, 2 = gpt2, 3 = hf; see TokenizerKind::code)
//!     20    4  version 1: reserved, zero; version 2: the vocabulary size
//!     24    8  token count
//!     32    …  tokens
//! ```
//! Version 1 (bytes and GPT-2, whose vocabularies are fixed) is still what
//! those tokenizers write, so older builds keep reading their shards.
//! Version 2 carries the vocabulary size for a Hugging Face tokenizer, whose
//! size comes from its file; every id is checked against it. Vocabularies
//! above 65536 ids (Llama 3: 128256) are stored as u32.
//! Writers stream into a temporary file in the destination folder, fsync it
//! and rename it into place, so a crash never leaves a half-written shard
//! under the final name.

use super::tokenizer::TokenizerKind;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"FTRNTOK\0";
/// The newest format version this build writes and reads (see module docs).
pub const VERSION: u32 = 2;
pub const HEADER_BYTES: usize = 32;

/// How tokens are stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// The narrowest type that holds every id of a vocabulary: GPT-2's 50257
    /// ids fit u16, halving disk and read time.
    pub fn for_vocab(vocab_size: usize) -> Dtype {
        if vocab_size <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    pub fn width(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    pub fn code(self) -> u32 {
        self.width() as u32
    }

    pub fn from_code(code: u32) -> Option<Dtype> {
        match code {
            2 => Some(Dtype::U16),
            4 => Some(Dtype::U32),
            _ => None,
        }
    }
}

/// A shard read into memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
    pub dtype: Dtype,
    pub tokens: Vec<u32>,
}

/// Writes a whole shard of a built-in tokenizer in one call (atomically).
pub fn write_shard(path: &Path, tokenizer: TokenizerKind, tokens: &[u32]) -> Result<()> {
    let Some(vocab) = tokenizer.fixed_vocab() else {
        bail!("write_shard: a {} tokenizer's shard needs its vocabulary size (write_shard_vocab)", tokenizer.name());
    };
    write_shard_vocab(path, tokenizer, vocab, tokens)
}

/// Writes a whole shard of ids below `vocab_size` in one call (atomically).
pub fn write_shard_vocab(path: &Path, tokenizer: TokenizerKind, vocab_size: usize, tokens: &[u32]) -> Result<()> {
    let mut w = ShardWriter::create(path, tokenizer, vocab_size)?;
    w.push(tokens)?;
    w.finish()?;
    Ok(())
}

/// Streams tokens into a shard without holding them all in memory.
/// Dropping it without `finish` deletes the temporary file.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    tokenizer: TokenizerKind,
    vocab: u32,
    dtype: Dtype,
    count: u64,
}

impl ShardWriter {
    /// A shard of `tokenizer` ids below `vocab_size` (which must be the
    /// built-in size for bytes and GPT-2).
    pub fn create(path: &Path, tokenizer: TokenizerKind, vocab_size: usize) -> Result<ShardWriter> {
        if let Some(fixed) = tokenizer.fixed_vocab().filter(|&f| f != vocab_size) {
            bail!("a {} shard has {fixed} token ids, not {vocab_size}", tokenizer.name());
        }
        let vocab = u32::try_from(vocab_size)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| anyhow!("a shard's vocabulary needs 1 to 2^32-1 ids, got {vocab_size}"))?;
        let tmp = temp_path(path);
        let file = File::create(&tmp)
            .with_context(|| format!("cannot create temporary shard {}", tmp.display()))?;
        let mut w = ShardWriter {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tokenizer,
            vocab,
            dtype: Dtype::for_vocab(vocab_size),
            count: 0,
        };
        // The count is patched in `finish`; a crash leaves only the temp file.
        w.write_header()?;
        Ok(w)
    }

    fn write_header(&mut self) -> Result<()> {
        let header = encode_header(self.dtype, self.tokenizer, self.vocab, self.count);
        let f = self.file.as_mut().expect("writer is open until finish");
        f.write_all(&header)
            .with_context(|| format!("cannot write {}", self.tmp.display()))
    }

    /// Appends tokens; ids must be inside the tokenizer's vocabulary.
    pub fn push(&mut self, tokens: &[u32]) -> Result<()> {
        let vocab = self.vocab;
        if let Some(bad) = tokens.iter().find(|&&t| t >= vocab) {
            bail!(
                "token id {bad} is outside the {} vocabulary (size {vocab}) while writing {}",
                self.tokenizer.name(),
                self.path.display()
            );
        }
        let bytes = encode_tokens(self.dtype, tokens);
        let f = self.file.as_mut().expect("writer is open until finish");
        f.write_all(&bytes)
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        self.count += tokens.len() as u64;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Patches the header, fsyncs and renames into place. Returns the count.
    pub fn finish(mut self) -> Result<u64> {
        let buffered = self.file.take().expect("finish runs once");
        let ctx = || format!("cannot finish shard {}", self.tmp.display());
        let mut file = buffered
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(ctx)?;
        file.seek(SeekFrom::Start(0)).with_context(ctx)?;
        file.write_all(&encode_header(self.dtype, self.tokenizer, self.vocab, self.count))
            .with_context(ctx)?;
        file.sync_all().with_context(ctx)?;
        drop(file);
        fs::rename(&self.tmp, &self.path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.path.display()
            )
        })?;
        sync_parent_dir(&self.path);
        Ok(self.count)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // Still open means `finish` never ran (error or early return): remove
        // the partial temp file so it cannot be mistaken for data.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `dir/.name.tmp<pid>`: same folder (so rename is atomic), hidden, and unique
/// per process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Makes the rename durable. Best effort: not every filesystem allows
/// opening a directory, and the data itself is already synced.
fn sync_parent_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

fn encode_header(dtype: Dtype, tokenizer: TokenizerKind, vocab: u32, count: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    // Built-in tokenizers keep writing version 1 (readable by older builds).
    let version: u32 = if tokenizer.fixed_vocab().is_some() { 1 } else { 2 };
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(&dtype.code().to_le_bytes());
    h[16..20].copy_from_slice(&tokenizer.code().to_le_bytes());
    if version == 2 {
        h[20..24].copy_from_slice(&vocab.to_le_bytes());
    }
    h[24..32].copy_from_slice(&count.to_le_bytes());
    h
}

fn encode_tokens(dtype: Dtype, tokens: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tokens.len() * dtype.width());
    for &t in tokens {
        match dtype {
            Dtype::U16 => out.extend_from_slice(&(t as u16).to_le_bytes()),
            Dtype::U32 => out.extend_from_slice(&t.to_le_bytes()),
        }
    }
    out
}

/// Reads and fully validates a shard.
pub fn read_shard(path: &Path) -> Result<Shard> {
    // Errors are flattened into one message that starts with the path, so
    // callers printing only the top-level message still see what and where.
    let bytes =
        fs::read(path).map_err(|e| anyhow!("cannot read token shard {}: {e}", path.display()))?;
    parse_shard(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

fn parse_shard(bytes: &[u8]) -> Result<Shard> {
    let Header { dtype, tokenizer, vocab, count } = parse_header(bytes)?;
    let expected = (count as u128) * dtype.width() as u128 + HEADER_BYTES as u128;
    if expected != bytes.len() as u128 {
        bail!(
            "truncated or corrupt: the header says {count} tokens, so the file should be \
             {expected} bytes, but it is {} bytes; re-run `ferrotron prepare` to rebuild it",
            bytes.len()
        );
    }
    let tokens = decode_tokens(dtype, &bytes[HEADER_BYTES..]);
    check_vocab(&tokens, tokenizer, vocab)?;
    Ok(Shard {
        tokenizer,
        vocab_size: vocab as usize,
        dtype,
        tokens,
    })
}

struct Header {
    dtype: Dtype,
    tokenizer: TokenizerKind,
    vocab: u32,
    count: u64,
}

fn parse_header(bytes: &[u8]) -> Result<Header> {
    if bytes.is_empty() {
        bail!("the file is empty (0 bytes), not a ferrotron token shard");
    }
    if bytes.len() < MAGIC.len() || bytes[..8] != MAGIC {
        bail!("not a ferrotron token shard (the file does not start with {MAGIC:?})");
    }
    if bytes.len() < HEADER_BYTES {
        bail!(
            "truncated: the header needs {HEADER_BYTES} bytes but the file is {} bytes",
            bytes.len()
        );
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let version = u32_at(8);
    if version == 0 || version > VERSION {
        bail!("unsupported shard format version {version} (this build reads versions 1 to {VERSION})");
    }
    let dtype = Dtype::from_code(u32_at(12))
        .with_context(|| format!("unknown token dtype code {} (expected 2 or 4)", u32_at(12)))?;
    let tokenizer = TokenizerKind::from_code(u32_at(16))
        .with_context(|| format!("unknown tokenizer code {}", u32_at(16)))?;
    let vocab = match (version, tokenizer.fixed_vocab()) {
        (1, Some(fixed)) => fixed as u32,
        (1, None) => bail!("a version 1 header cannot describe a {} tokenizer (no vocabulary size)", tokenizer.name()),
        (_, fixed) => {
            let v = u32_at(20);
            if v == 0 || fixed.is_some_and(|f| f as u32 != v) {
                bail!("the header's vocabulary size {v} is not valid for a {} tokenizer", tokenizer.name());
            }
            v
        }
    };
    if dtype == Dtype::U16 && vocab > 1 << 16 {
        bail!("u16 tokens cannot hold a vocabulary of {vocab} ids");
    }
    let count = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    Ok(Header { dtype, tokenizer, vocab, count })
}

fn decode_tokens(dtype: Dtype, body: &[u8]) -> Vec<u32> {
    match dtype {
        Dtype::U16 => body
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect(),
        Dtype::U32 => body
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

fn check_vocab(tokens: &[u32], tokenizer: TokenizerKind, vocab: u32) -> Result<()> {
    if let Some(i) = tokens.iter().position(|&t| t >= vocab) {
        bail!(
            "token {i} has id {} but the {} vocabulary has only {vocab} ids",
            tokens[i],
            tokenizer.name()
        );
    }
    Ok(())
}

/// A validated shard left on disk: tokens are read on demand with positioned
/// reads, so a corpus larger than memory trains fine (the page cache does the
/// caching).
#[derive(Debug)]
pub struct ShardFile {
    path: std::path::PathBuf,
    file: fs::File,
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
    pub dtype: Dtype,
    pub count: u64,
}

/// Tokens per validation chunk when opening a shard (bounded memory).
const SCAN_TOKENS: usize = 1 << 22;

/// Opens and fully validates a shard (header, size, every token id against
/// the vocabulary) while streaming it, without keeping its tokens.
pub fn open_shard(path: &Path) -> Result<ShardFile> {
    open_checked(path).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

fn open_checked(path: &Path) -> Result<ShardFile> {
    let file = fs::File::open(path).map_err(|e| anyhow!("cannot read token shard: {e}"))?;
    let size = file.metadata()?.len();
    let mut head = vec![0u8; HEADER_BYTES.min(size as usize)];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)?;
    let Header { dtype, tokenizer, vocab, count } = parse_header(&head)?;
    let expected = (count as u128) * dtype.width() as u128 + HEADER_BYTES as u128;
    if expected != size as u128 {
        bail!(
            "truncated or corrupt: the header says {count} tokens, so the file should be \
             {expected} bytes, but it is {size} bytes; re-run `ferrotron prepare` to rebuild it"
        );
    }
    let shard = ShardFile { path: path.to_path_buf(), file, tokenizer, vocab_size: vocab as usize, dtype, count };
    let mut buf = Vec::new();
    let mut start = 0u64;
    while start < count {
        let n = (count - start).min(SCAN_TOKENS as u64) as usize;
        buf.clear();
        shard.read_into(start, n, &mut buf)?;
        check_vocab(&buf, tokenizer, vocab).map_err(|e| anyhow!("{e:#} (in tokens {start}..{})", start + n as u64))?;
        start += n as u64;
    }
    Ok(shard)
}

impl ShardFile {
    /// Appends tokens `[start, start + n)` of this shard to `out`.
    pub fn read_into(&self, start: u64, n: usize, out: &mut Vec<u32>) -> Result<()> {
        let width = self.dtype.width();
        let mut bytes = vec![0u8; n * width];
        let at = HEADER_BYTES as u64 + start * width as u64;
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut bytes, at)
            .map_err(|e| anyhow!("{}: reading tokens {start}..{}: {e}", self.path.display(), start + n as u64))?;
        out.extend(decode_tokens(self.dtype, &bytes));
        Ok(())
    }
}
