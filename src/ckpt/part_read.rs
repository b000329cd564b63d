//! A checkpoint read piece by piece: the counterpart of `part_write` for a
//! resume that must not hold the whole model in memory (offloaded runs).
//!
//! [`verify`] gives a checkpoint directory the integrity checks of
//! `checkpoint::load` — the manifest's format, every file's CRC-32, every
//! fp32 value finite — in one sequential pass over each tensor file with a
//! fixed-size buffer. [`TensorFile`] then reads any range of any tensor
//! with positioned reads (a unit's tensors, its part of each optimizer
//! state tensor).

use super::checkpoint::{read_manifest, Manifest, MODEL_FILE, OPTIM_FILE};
use super::checksum;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per read: long sequential reads, a fixed amount of memory.
const READ_BYTES: usize = 8 << 20;

/// Element types a checkpoint's tensors come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    F32,
    U8,
    /// Anything else (not written by ferrotron's checkpoints).
    Other,
}

impl Kind {
    fn of(dtype: &str) -> Kind {
        match dtype {
            "F32" => Kind::F32,
            "U8" => Kind::U8,
            _ => Kind::Other,
        }
    }
}

/// One tensor's entry in a file's header.
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: Kind,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range of its data in the file.
    at: u64,
    bytes: u64,
}

impl Entry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A safetensors file opened for reads of tensor ranges.
pub struct TensorFile {
    path: PathBuf,
    file: File,
    /// Bytes before the first tensor's data (length field and header).
    base: u64,
    tensors: HashMap<String, Entry>,
}

impl TensorFile {
    /// Opens `path` and reads its header, checking that it describes
    /// exactly the file's bytes (a truncated file is an error here).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file_len = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
        let mut len_bytes = [0u8; 8];
        if file_len < 8 {
            bail!("{}: file is only {file_len} bytes, too short to be a safetensors file (truncated or empty)", path.display());
        }
        file.read_exact_at(&mut len_bytes, 0).with_context(|| format!("cannot read {}", path.display()))?;
        let n = u64::from_le_bytes(len_bytes);
        if n > 100 << 20 || 8 + n > file_len {
            bail!("{}: not a safetensors file, or truncated inside its header (the header length runs past the end of the {file_len}-byte file)", path.display());
        }
        let mut head = vec![0u8; n as usize];
        file.read_exact_at(&mut head, 8).with_context(|| format!("cannot read {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_slice(&head).map_err(|_| anyhow!("{}: not a safetensors file (its header is not valid JSON tensor metadata)", path.display()))?;
        let base = 8 + n;
        let tensors = entries(path, &json, base)?;
        let end = tensors.values().map(|e| e.at + e.bytes).max().unwrap_or(base);
        if end != file_len {
            bail!("{}: truncated or corrupt: the tensor data does not end where the file ends (expected {end} bytes, file has {file_len})", path.display());
        }
        Ok(TensorFile { path: path.to_path_buf(), file, base, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.tensors.get(name)
    }

    /// Every tensor's name and entry.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.tensors.iter()
    }

    /// Values `start..start + out.len()` of the F32 tensor `name`.
    pub fn read_f32(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()> {
        let at = self.place(name, start, out.len(), Kind::F32)?;
        let mut buf = vec![0u8; READ_BYTES.min(4 * out.len())];
        for (i, chunk) in out.chunks_mut(READ_BYTES / 4).enumerate() {
            let bytes = &mut buf[..4 * chunk.len()];
            self.read_at(at + (i * READ_BYTES) as u64, bytes)?;
            for (v, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Ok(())
    }

    /// Values `start..start + out.len()` of the U8 tensor `name`.
    pub fn read_u8(&self, name: &str, start: usize, out: &mut [u8]) -> Result<()> {
        let at = self.place(name, start, out.len(), Kind::U8)?;
        self.read_at(at, out)
    }

    fn place(&self, name: &str, start: usize, n: usize, kind: Kind) -> Result<u64> {
        let e = self.tensors.get(name).ok_or_else(|| anyhow!("{}: tensor {name} is missing", self.path.display()))?;
        if e.kind != kind {
            bail!("{}: tensor {name} has dtype {}; a checkpoint holds it as {kind:?}", self.path.display(), e.dtype);
        }
        if start + n > e.numel() {
            bail!("{}: values {start}..{} of tensor {name}, which has {}", self.path.display(), start + n, e.numel());
        }
        let width = if kind == Kind::F32 { 4 } else { 1 };
        Ok(e.at + (start * width) as u64)
    }

    fn read_at(&self, at: u64, out: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(out, at).with_context(|| format!("cannot read {}", self.path.display()))
    }

    /// One sequential pass over the whole file: its CRC-32 and the name of
    /// the first F32 tensor holding a non-finite value, if any.
    fn scan(&self) -> Result<(u32, Option<String>)> {
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; READ_BYTES];
        let mut regions: Vec<(&str, &Entry)> = self.tensors.iter().map(|(n, e)| (n.as_str(), e)).collect();
        regions.sort_by_key(|(_, e)| e.at);
        let mut head = vec![0u8; self.base as usize];
        self.read_at(0, &mut head)?;
        crc.update(&head);
        let mut bad = None;
        for (name, e) in regions {
            let mut done = 0u64;
            while done < e.bytes {
                let n = (e.bytes - done).min(READ_BYTES as u64) as usize;
                self.read_at(e.at + done, &mut buf[..n])?;
                crc.update(&buf[..n]);
                if e.kind == Kind::F32 && bad.is_none() && buf[..n].chunks_exact(4).any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()) {
                    bad = Some(name.to_string());
                }
                done += n as u64;
            }
        }
        Ok((crc.finalize(), bad))
    }
}

/// The header's tensors (`__metadata__` skipped), checked to lie inside
/// the data area with sizes that match their dtype and shape.
fn entries(path: &Path, json: &serde_json::Value, base: u64) -> Result<HashMap<String, Entry>> {
    let corrupt = |what: &str| anyhow!("{}: corrupt header: {what}", path.display());
    let map = json.as_object().ok_or_else(|| corrupt("not a JSON object"))?;
    let mut out = HashMap::new();
    for (name, info) in map.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype = info.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| corrupt(&format!("tensor {name} has no dtype")))?.to_string();
        let shape: Vec<usize> = info.get("shape").and_then(|s| s.as_array()).ok_or_else(|| corrupt(&format!("tensor {name} has no shape")))?.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<_>>().ok_or_else(|| corrupt(&format!("tensor {name} has a bad shape")))?;
        let offsets = info.get("data_offsets").and_then(|o| o.as_array()).filter(|o| o.len() == 2).ok_or_else(|| corrupt(&format!("tensor {name} has no data offsets")))?;
        let (start, end) = (offsets[0].as_u64().unwrap_or(u64::MAX), offsets[1].as_u64().unwrap_or(0));
        if start > end {
            return Err(corrupt(&format!("tensor {name} has inconsistent data offsets")));
        }
        let kind = Kind::of(&dtype);
        let width = match kind {
            Kind::F32 => Some(4),
            Kind::U8 => Some(1),
            Kind::Other => None,
        };
        let numel: usize = shape.iter().product();
        if width.is_some_and(|w| (w * numel) as u64 != end - start) {
            return Err(corrupt(&format!("tensor {name}'s byte range does not match its dtype and shape")));
        }
        out.insert(name.clone(), Entry { kind, dtype, shape, at: base + start, bytes: end - start });
    }
    Ok(out)
}

/// The integrity checks of `checkpoint::load` without loading: the
/// manifest (format checked), each tensor file against the manifest's
/// checksum and every fp32 value finite, in one pass over each tensor
/// file; other listed files (shard slices) against theirs. Returns the
/// manifest. Errors are `load`'s words.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let manifest = read_manifest(dir)?;
    if manifest.checksums.is_empty() {
        eprintln!("warning: checkpoint {} has no checksums (saved by an older ferrotron): loaded without verifying its data", dir.display());
    }
    let others: BTreeMap<String, String> = manifest.checksums.iter().filter(|(f, _)| *f != MODEL_FILE && *f != OPTIM_FILE).map(|(f, s)| (f.clone(), s.clone())).collect();
    // Both tensor files' headers parse before anything is scanned.
    let files = [TensorFile::open(&dir.join(MODEL_FILE))?, TensorFile::open(&dir.join(OPTIM_FILE))?];
    let mut bad = None;
    for (name, f) in [MODEL_FILE, OPTIM_FILE].into_iter().zip(&files) {
        let (got, non_finite) = f.scan()?;
        if let Some(want) = manifest.checksums.get(name) {
            check_crc(f.path(), dir, name, want, got)?;
        }
        bad = bad.or(non_finite.map(|t| (name, t)));
    }
    checksum::verify(dir, &others)?;
    if let Some((file, tensor)) = bad {
        return Err(anyhow!("tensor {tensor} in {file} holds non-finite values (NaN or infinity)"))
            .with_context(|| format!("checkpoint {} is unusable: it was saved after training diverged (older ferrotron versions did that)", dir.display()));
    }
    Ok(manifest)
}

/// `checksum::verify`'s check of one file whose CRC is `got`.
fn check_crc(path: &Path, dir: &Path, file: &str, want: &str, got: u32) -> Result<()> {
    let Some(hex) = want.strip_prefix(&format!("{}:", checksum::ALGO)) else {
        bail!("{}: the manifest's checksum of {file} is `{want}`, which this ferrotron cannot check (it knows {})", dir.display(), checksum::ALGO);
    };
    let got = format!("{got:08x}");
    if got != hex {
        bail!("{} is damaged: its CRC-32 is {got} but the manifest recorded {hex} when it was saved (flipped bytes on disk or in a copy)", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ckpt::checkpoint::{self, NamedBytes, NamedTensor};

    fn saved(run: &Path, w: &[f32], m: &[f32]) -> PathBuf {
        let codes: Vec<u8> = (0..40u8).collect();
        let model = vec![NamedTensor { name: "w".into(), shape: vec![w.len()], data: w }];
        let optim = vec![NamedTensor { name: "m".into(), shape: vec![m.len()], data: m }];
        let bytes = vec![NamedBytes { name: "c".into(), shape: vec![40], data: &codes }];
        checkpoint::save_with_bytes(run, &checkpoint::Manifest::new(3, "x = 1"), &model, &optim, &bytes, 3).unwrap()
    }

    /// Ranges read back are the values saved; `verify` passes a good
    /// checkpoint and names a flipped byte as `load` does.
    #[test]
    fn ranges_read_back_and_damage_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let w: Vec<f32> = (0..(READ_BYTES / 4 + 77)).map(|i| i as f32 * 0.5).collect();
        let dir = saved(tmp.path(), &w, &[1.0, 2.0, 3.0]);
        assert_eq!(verify(&dir).unwrap().step, 3);
        let f = TensorFile::open(&dir.join(MODEL_FILE)).unwrap();
        let mut out = vec![0.0; READ_BYTES / 4 + 7];
        f.read_f32("w", 70, &mut out).unwrap();
        assert!(out.iter().zip(&w[70..]).all(|(a, b)| a.to_bits() == b.to_bits()));
        let o = TensorFile::open(&dir.join(OPTIM_FILE)).unwrap();
        let mut codes = vec![0u8; 5];
        o.read_u8("c", 10, &mut codes).unwrap();
        assert_eq!(codes, vec![10, 11, 12, 13, 14]);
        assert!(o.read_f32("c", 0, &mut [0.0]).is_err(), "U8 read as F32");
        let mut bytes = std::fs::read(dir.join(MODEL_FILE)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(dir.join(MODEL_FILE), bytes).unwrap();
        let (ours, theirs) = (format!("{:#}", verify(&dir).unwrap_err()), format!("{:#}", checkpoint::load(&dir).unwrap_err()));
        assert_eq!(ours, theirs);
    }

    /// A non-finite value (saved by an older ferrotron) makes the
    /// checkpoint unusable, in `load`'s words.
    #[test]
    fn non_finite_values_are_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = saved(tmp.path(), &[1.0, 2.0], &[1.0, 2.0]);
        // Rewrite the value and the manifest's checksum as an old save would.
        let path = dir.join(OPTIM_FILE);
        let bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(4).rposition(|w| w == 2.0f32.to_le_bytes()).unwrap();
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let mut manifest = read_manifest(&dir).unwrap();
        manifest.checksums.insert(OPTIM_FILE.into(), format!("crc32:{:08x}", checksum::file_crc32(&path).unwrap()));
        std::fs::write(dir.join(checkpoint::MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let (ours, theirs) = (format!("{:#}", verify(&dir).unwrap_err()), format!("{:#}", checkpoint::load(&dir).unwrap_err()));
        assert_eq!(ours, theirs);
    }
}
