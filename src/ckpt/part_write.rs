//! A checkpoint tensor file written piece by piece: the same bytes as
//! `stream_write::write_tensors` (the `safetensors` crate's layout), but a
//! tensor's values may arrive in pieces, in any order, from wherever they
//! live. An offloaded run saves this way, one unit at a time (that unit's
//! tensors and its part of every optimizer state tensor), so the whole
//! model never has to be in host memory at once.
//!
//! The header goes out first: it follows from the tensors' names, dtypes
//! and shapes alone. Each piece then goes to its place with a positioned
//! write, checked for non-finite values and CRC'd as it goes out. At the
//! end the pieces must cover the file exactly once; their CRCs, combined
//! in file order (`crc32fast`'s `combine`), are the file's CRC-32, so the
//! file is never read back.

use super::stream_write::{self, CHUNK_BYTES};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A tensor of the file: its name, shape and element type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// U8 (8-bit optimizer codes), else F32.
    pub u8s: bool,
}

impl TensorSpec {
    fn width(&self) -> usize {
        if self.u8s { 1 } else { 4 }
    }
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Where a tensor's data sits in the file.
struct Placed {
    /// Byte offset of its first value in the file.
    at: u64,
    width: usize,
    numel: usize,
}

/// A written byte range and the CRC of its bytes.
struct Piece {
    at: u64,
    len: u64,
    crc: crc32fast::Hasher,
}

/// A tensor file being filled piece by piece (see the module doc). Not
/// atomic: callers write into a staging folder.
pub struct PartFile {
    path: PathBuf,
    file: File,
    tensors: HashMap<String, Placed>,
    pieces: Vec<Piece>,
    /// Bytes of the complete file.
    len: u64,
}

impl PartFile {
    /// Creates the file and writes its header.
    pub fn create(path: &Path, specs: &[TensorSpec]) -> Result<Self> {
        let entries = specs.iter().map(|s| (s.name.clone(), s.u8s, s.shape.clone(), s.width() * s.numel()));
        let (head, starts) = stream_write::header_of(entries)?;
        let base = head.len() as u64;
        let mut tensors = HashMap::new();
        for s in specs {
            let placed = Placed { at: base + starts[&s.name] as u64, width: s.width(), numel: s.numel() };
            if tensors.insert(s.name.clone(), placed).is_some() {
                bail!("cannot write {}: tensor name {} appears twice", path.display(), s.name);
            }
        }
        let len = base + specs.iter().map(|s| (s.width() * s.numel()) as u64).sum::<u64>();
        let file = File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut out = PartFile { path: path.to_path_buf(), file, tensors, pieces: vec![], len };
        out.write_piece(0, &head)?;
        Ok(out)
    }

    /// Values `start..start + values.len()` of the F32 tensor `name`. A
    /// non-finite value is refused (a checkpoint never holds one), with
    /// the words of the whole-file writer.
    pub fn put_f32(&mut self, name: &str, start: usize, values: &[f32]) -> Result<()> {
        let mut at = self.place(name, start, values.len(), 4)?;
        for chunk in values.chunks(CHUNK_BYTES / 4) {
            if chunk.iter().any(|x| !x.is_finite()) {
                let file = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                return Err(anyhow!("tensor {name} in {file} holds non-finite values (NaN or infinity)").context(super::checkpoint::diverged(&self.path)));
            }
            self.write_piece(at, &stream_write::le_bytes(chunk))?;
            at += 4 * chunk.len() as u64;
        }
        Ok(())
    }

    /// Values `start..start + values.len()` of the U8 tensor `name`.
    pub fn put_u8(&mut self, name: &str, start: usize, values: &[u8]) -> Result<()> {
        let mut at = self.place(name, start, values.len(), 1)?;
        for chunk in values.chunks(CHUNK_BYTES) {
            self.write_piece(at, chunk)?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// The file offset of values `start..start + n` of `name`, checked
    /// against the tensor's type and size.
    fn place(&self, name: &str, start: usize, n: usize, width: usize) -> Result<u64> {
        let t = self.tensors.get(name).ok_or_else(|| anyhow!("cannot write {}: tensor {name} is not in its header", self.path.display()))?;
        if t.width != width {
            bail!("cannot write {}: tensor {name} holds {}-byte values, not {width}-byte ones", self.path.display(), t.width);
        }
        if start + n > t.numel {
            bail!("cannot write {}: values {start}..{} of tensor {name}, which has {}", self.path.display(), start + n, t.numel);
        }
        Ok(t.at + (start * width) as u64)
    }

    fn write_piece(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        // The I/O error in words ("No space left on device").
        self.file.write_all_at(bytes, at).map_err(|e| anyhow!("cannot write {}: {e}", self.path.display()))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(bytes);
        // Consecutive pieces merge: a tensor written in chunks is one piece.
        match self.pieces.last_mut() {
            Some(last) if last.at + last.len == at => {
                last.crc.combine(&crc);
                last.len += bytes.len() as u64;
            }
            _ => self.pieces.push(Piece { at, len: bytes.len() as u64, crc }),
        }
        Ok(())
    }

    /// The file's CRC-32, once every byte of it was written exactly once.
    pub fn finish(mut self) -> Result<u32> {
        self.pieces.sort_by_key(|p| p.at);
        let mut crc = crc32fast::Hasher::new();
        let mut end = 0u64;
        for p in &self.pieces {
            if p.at != end {
                let what = if p.at > end { "were never written" } else { "were written twice" };
                bail!("internal: bytes {}..{} of {} {what}", end.min(p.at), end.max(p.at), self.path.display());
            }
            crc.combine(&p.crc);
            end += p.len;
        }
        if end != self.len {
            bail!("internal: bytes {end}..{} of {} were never written", self.len, self.path.display());
        }
        Ok(crc.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ckpt::checkpoint::{NamedBytes, NamedTensor};
    use crate::ckpt::checksum;

    /// Pieces written out of order (and a tensor in several pieces) give
    /// the whole-file writer's bytes and the file's CRC.
    #[test]
    fn pieces_in_any_order_give_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<f32> = (0..(CHUNK_BYTES / 4 + 300)).map(|i| (i as f32 * 0.37).cos()).collect();
        let small = vec![0.5f32, -1.25, 8.0];
        let codes: Vec<u8> = (0..99u32).map(|i| (i * 13) as u8).collect();
        let floats = vec![NamedTensor { name: "b.big".into(), shape: vec![big.len()], data: &big }, NamedTensor { name: "a.small".into(), shape: vec![3], data: &small }];
        let bytes = vec![NamedBytes { name: "c.codes".into(), shape: vec![99], data: &codes }];
        let whole = dir.path().join("whole.safetensors");
        stream_write::write_tensors(&whole, &floats, &bytes, &|n| n.to_string()).unwrap();
        let specs = vec![
            TensorSpec { name: "b.big".into(), shape: vec![big.len()], u8s: false },
            TensorSpec { name: "c.codes".into(), shape: vec![99], u8s: true },
            TensorSpec { name: "a.small".into(), shape: vec![3], u8s: false },
        ];
        let parts = dir.path().join("parts.safetensors");
        let mut f = PartFile::create(&parts, &specs).unwrap();
        f.put_u8("c.codes", 50, &codes[50..]).unwrap();
        f.put_f32("b.big", 1000, &big[1000..]).unwrap();
        f.put_f32("a.small", 0, &small).unwrap();
        f.put_u8("c.codes", 0, &codes[..50]).unwrap();
        f.put_f32("b.big", 0, &big[..1000]).unwrap();
        let crc = f.finish().unwrap();
        assert!(std::fs::read(&parts).unwrap() == std::fs::read(&whole).unwrap(), "pieced file differs from the whole-file writer's");
        assert_eq!(crc, checksum::file_crc32(&parts).unwrap());
    }

    /// A gap, a piece out of range and a NaN are errors, not a bad file.
    #[test]
    fn gaps_ranges_and_nans_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let specs = vec![TensorSpec { name: "w".into(), shape: vec![4], u8s: false }];
        let mut f = PartFile::create(&dir.path().join("gap.safetensors"), &specs).unwrap();
        f.put_f32("w", 0, &[1.0, 2.0]).unwrap();
        assert!(format!("{:#}", f.finish().unwrap_err()).contains("never written"));
        let mut f = PartFile::create(&dir.path().join("range.safetensors"), &specs).unwrap();
        assert!(format!("{:#}", f.put_f32("w", 3, &[1.0, 2.0]).unwrap_err()).contains("values 3..5"));
        assert!(f.put_u8("w", 0, &[1]).is_err(), "a U8 piece of an F32 tensor");
        let text = format!("{:#}", f.put_f32("w", 0, &[1.0, f32::NAN]).unwrap_err());
        assert!(text.contains("training has diverged") && text.contains("tensor w"), "{text}");
    }
}
