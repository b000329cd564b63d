//! Turning `prepare` inputs into an ordered list of files and reading
//! documents out of them.
//!
//! Rules (also in `prepare`'s docs):
//! - a `.jsonl` file: one JSON object per line, the document is its text
//!   field (`text` unless configured); blank lines are skipped; any other bad
//!   line is an error naming `file:line`;
//! - a `.parquet` file: one document per row of the text column;
//! - any other file: the whole file is one document if it is UTF-8 text;
//! - a folder: everything inside, recursively, in sorted name order, skipping
//!   hidden entries (`.git`, ...) and symlinked folders. Files there that are
//!   not UTF-8 or contain NUL bytes (images, archives, compiled objects) are
//!   skipped and counted. We select by content, not by extension, so text with
//!   any extension (.txt .md .rs .py .tex, or none) is used.
//!   A file named explicitly on the command line that is not text is an error.

use super::parquet_text;
use anyhow::{anyhow, bail, Result};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Jsonl,
    Parquet,
}

#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub format: Format,
    /// Index of the command-line input it came from.
    pub input: usize,
    /// Named directly on the command line (not found inside a folder).
    pub explicit: bool,
    pub bytes: u64,
}

/// A document and roughly how many input bytes it accounts for (progress).
pub type Emit<'a> = dyn FnMut(String, u64) -> Result<()> + 'a;

/// Lists every file to read, in a fixed order. Fails before anything is
/// written if an input is missing.
pub fn expand(inputs: &[PathBuf], skip: &Path) -> Result<Vec<SourceFile>> {
    let skip = fs::canonicalize(skip).ok();
    let mut out = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let meta = fs::metadata(input)
            .map_err(|e| anyhow!("input {} cannot be read: {e}", input.display()))?;
        if meta.is_dir() {
            walk(input, i, skip.as_deref(), &mut out)?;
        } else {
            out.push(source(input.clone(), i, true, meta.len()));
        }
    }
    Ok(out)
}

fn source(path: PathBuf, input: usize, explicit: bool, bytes: u64) -> SourceFile {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let format = match ext.as_deref() {
        Some("jsonl") => Format::Jsonl,
        Some("parquet") => Format::Parquet,
        _ => Format::Text,
    };
    SourceFile {
        path,
        format,
        input,
        explicit,
        bytes,
    }
}

fn walk(dir: &Path, input: usize, skip: Option<&Path>, out: &mut Vec<SourceFile>) -> Result<()> {
    if skip.is_some() && fs::canonicalize(dir).ok().as_deref() == skip {
        return Ok(()); // never read our own output folder
    }
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| anyhow!("cannot list folder {}: {e}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| anyhow!("cannot list folder {}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&path, input, skip, out)?;
        } else if let Ok(meta) = fs::metadata(&path) {
            // Symlinks to files are followed; symlinks to folders are not
            // (they could form cycles).
            if meta.is_file() {
                out.push(source(path, input, false, meta.len()));
            }
        }
    }
    Ok(())
}

/// What happened to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Read,
    /// Not text (found inside a folder): skipped and counted.
    Skipped,
}

/// Calls `emit` for every document of the file, in order.
pub fn read_documents(src: &SourceFile, text_key: &str, emit: &mut Emit) -> Result<Outcome> {
    match src.format {
        Format::Text => read_text(src, emit),
        Format::Jsonl => read_jsonl(&src.path, text_key, emit).map(|_| Outcome::Read),
        Format::Parquet => parquet_text::read(&src.path, text_key, emit).map(|_| Outcome::Read),
    }
}

fn read_text(src: &SourceFile, emit: &mut Emit) -> Result<Outcome> {
    let bytes =
        fs::read(&src.path).map_err(|e| anyhow!("cannot read {}: {e}", src.path.display()))?;
    let problem = match std::str::from_utf8(&bytes) {
        Err(e) => Some(format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        )),
        Ok(s) if s.contains('\0') => Some("looks binary (it contains NUL bytes)".to_string()),
        Ok(_) => None,
    };
    if let Some(p) = problem {
        if !src.explicit {
            return Ok(Outcome::Skipped);
        }
        bail!(
            "{} {p}: prepare reads UTF-8 text files, .jsonl and .parquet; remove it from the inputs",
            src.path.display()
        );
    }
    let text = String::from_utf8(bytes).expect("checked above");
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text); // byte-order mark
    if !text.trim().is_empty() {
        emit(text.to_string(), src.bytes)?;
    }
    Ok(Outcome::Read)
}

fn read_jsonl(path: &Path, key: &str, emit: &mut Emit) -> Result<()> {
    let file = fs::File::open(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    for number in 1.. {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| anyhow!("{}:{number}: cannot read line: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let text =
            jsonl_text(&line, key).map_err(|e| anyhow!("{}:{number}: {e}", path.display()))?;
        if !text.is_empty() {
            emit(text, n as u64)?;
        }
    }
    Ok(())
}

/// The text field of one JSON line, or what is wrong with the line.
fn jsonl_text(line: &str, key: &str) -> Result<String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| anyhow!("not valid JSON ({e})"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| anyhow!("expected a JSON object with a \"{key}\" field"))?;
    match obj.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!(
            "field \"{key}\" is not a string (found {})",
            json_kind(other)
        ),
        None => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).take(10).collect();
            bail!(
                "no \"{key}\" field (fields: {}); choose the text field option",
                keys.join(", ")
            )
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
