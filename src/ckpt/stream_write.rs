//! Checkpoint tensor files written at disk speed: the same bytes as
//! `tensors::write` (the `safetensors` crate's layout), but the values go
//! out in large sequential writes straight from the host buffers (no
//! per-tensor byte copy), their CRC-32 is computed as they go out (no
//! second pass that reads the file back) and each chunk is checked for
//! non-finite values just before it is written.
//!
//! The header is the crate's own: `safetensors::serialize` of views that
//! report their dtype, shape and byte length but no data yields exactly
//! the 8-byte length and the JSON header of the real file; the data then
//! follows in the header's offset order.

use super::checkpoint::{NamedBytes, NamedTensor};
use super::checksum;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype as StDtype, View};
use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Bytes per write: large enough that the disk sees long sequential
/// writes, small enough that the finite check and CRC stay in cache-sized
/// passes.
pub const CHUNK_BYTES: usize = 32 << 20;

/// A tensor's header entry without its data.
struct HeaderOnly {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: usize,
}

impl View for &HeaderOnly {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&[])
    }
    fn data_len(&self) -> usize {
        self.bytes
    }
}

/// One tensor's data as it goes to disk.
enum Data<'a> {
    F32 { name: &'a str, values: &'a [f32] },
    U8(&'a [u8]),
}

/// The 8-byte length and JSON header of the file holding these tensors,
/// and each tensor's data start offset (by name).
fn header(floats: &[NamedTensor], bytes: &[NamedBytes]) -> Result<(Vec<u8>, std::collections::HashMap<String, usize>)> {
    let entries = floats
        .iter()
        .map(|t| (t.name.clone(), false, t.shape.clone(), 4 * t.data.len()))
        .chain(bytes.iter().map(|t| (t.name.clone(), true, t.shape.clone(), t.data.len())));
    header_of(entries)
}

/// [`header`] of tensors known by (name, is U8 (else F32), shape, data
/// bytes) only: the file `ckpt::part_write` fills piece by piece.
pub(crate) fn header_of(entries: impl Iterator<Item = (String, bool, Vec<usize>, usize)>) -> Result<(Vec<u8>, std::collections::HashMap<String, usize>)> {
    let entries: Vec<(String, HeaderOnly)> = entries
        .map(|(name, u8s, shape, bytes)| (name, HeaderOnly { dtype: if u8s { StDtype::U8 } else { StDtype::F32 }, shape, bytes }))
        .collect();
    let head = safetensors::serialize(entries.iter().map(|(n, h)| (n.clone(), h)), &None).map_err(|e| anyhow!("{e}"))?;
    let json: serde_json::Value = serde_json::from_slice(&head[8..]).context("internal: the safetensors header is not JSON")?;
    let mut starts = std::collections::HashMap::new();
    for (name, info) in json.as_object().context("internal: the safetensors header is not a JSON object")? {
        let start = info.get("data_offsets").and_then(|o| o.get(0)).and_then(|s| s.as_u64()).context("internal: a header entry without offsets")?;
        starts.insert(name.clone(), start as usize);
    }
    Ok((head, starts))
}

/// Writes `floats` (F32) and `bytes` (U8) to `path` as a safetensors file
/// and returns its CRC-32. Not atomic: callers write into a staging folder.
/// `refuse` words the error for a non-finite value (named tensor, file).
pub fn write_tensors(path: &Path, floats: &[NamedTensor], bytes: &[NamedBytes], refuse: &dyn Fn(&str) -> String) -> Result<u32> {
    let (head, starts) = header(floats, bytes)?;
    let mut order: Vec<(usize, Data)> = floats
        .iter()
        .map(|t| (starts[&t.name], Data::F32 { name: &t.name, values: t.data }))
        .chain(bytes.iter().map(|t| (starts[&t.name], Data::U8(t.data))))
        .collect();
    order.sort_by_key(|(start, _)| *start);
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = Out { file: File::create(path).with_context(|| format!("cannot write {}", path.display()))?, crc: crc32fast::Hasher::new(), path };
    out.put(&head)?;
    for (_, data) in &order {
        match data {
            Data::F32 { name, values } => {
                for chunk in values.chunks(CHUNK_BYTES / 4) {
                    if chunk.iter().any(|x| !x.is_finite()) {
                        return Err(anyhow!("tensor {name} in {file_name} holds non-finite values (NaN or infinity)").context(refuse(name)));
                    }
                    out.put(&le_bytes(chunk))?;
                }
            }
            Data::U8(values) => {
                for chunk in values.chunks(CHUNK_BYTES) {
                    out.put(chunk)?;
                }
            }
        }
    }
    Ok(out.crc.finalize())
}

/// The file being written and the CRC of what went into it.
struct Out<'a> {
    file: File,
    crc: crc32fast::Hasher,
    path: &'a Path,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        // The I/O error in words ("No space left on device").
        self.file.write_all(bytes).map_err(|e| anyhow!("cannot write {}: {e}", self.path.display()))
    }
}

/// The little-endian bytes of `values`: on a little-endian host the values'
/// own memory (safetensors is little-endian), elsewhere a converted copy.
pub(crate) fn le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck_cast(values))
    } else {
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

fn bytemuck_cast(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the
    // length is the values' size in bytes and u8 needs no alignment.
    unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values)) }
}

/// `"crc32:xxxxxxxx"`, the manifest's form of a checksum.
pub fn crc_entry(crc: u32) -> String {
    format!("{}:{crc:08x}", checksum::ALGO)
}

/// Checks that each tensor's data length matches its shape.
pub fn check_shapes(path: &Path, floats: &[NamedTensor], bytes: &[NamedBytes]) -> Result<()> {
    let lens = floats.iter().map(|t| (&t.name, &t.shape, t.data.len())).chain(bytes.iter().map(|t| (&t.name, &t.shape, t.data.len())));
    for (name, shape, len) in lens {
        let numel: usize = shape.iter().product();
        if numel != len {
            bail!("cannot save {}: tensor {} has shape {} ({numel} values) but {len} values were given", path.display(), name, super::tensors::shape_str(shape));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ckpt::tensors::{self, OutTensor, OutValues};

    /// The streamed file equals the `safetensors` crate's file byte for
    /// byte (mixed dtypes, names out of order, a tensor spanning several
    /// chunks), and the CRC returned equals the CRC of the file read back.
    #[test]
    fn streamed_file_is_the_crates_file_and_its_crc() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<f32> = (0..(CHUNK_BYTES / 4 + 1000)).map(|i| (i as f32).sin()).collect();
        let small = vec![1.5f32, -2.0, 3.25];
        let codes: Vec<u8> = (0..77u32).map(|i| (i * 7) as u8).collect();
        let floats = vec![
            NamedTensor { name: "z.big".into(), shape: vec![big.len()], data: &big },
            NamedTensor { name: "a.small".into(), shape: vec![3, 1], data: &small },
        ];
        let bytes = vec![NamedBytes { name: "m.codes".into(), shape: vec![77], data: &codes }];
        let ours = dir.path().join("ours.safetensors");
        let crc = write_tensors(&ours, &floats, &bytes, &|n| format!("refused {n}")).unwrap();
        let theirs = dir.path().join("theirs.safetensors");
        let mut out: Vec<OutTensor> = floats
            .iter()
            .map(|t| OutTensor { name: t.name.clone(), shape: t.shape.clone(), dtype: tensors::Dtype::F32, values: OutValues::F32(Box::new(move || Cow::Borrowed(t.data))) })
            .collect();
        out.push(OutTensor { name: "m.codes".into(), shape: vec![77], dtype: tensors::Dtype::U8, values: OutValues::U8(&codes) });
        tensors::write(&theirs, &out, None).unwrap();
        assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(), "streamed file differs from the crate's");
        assert_eq!(crc, checksum::file_crc32(&ours).unwrap());
    }

    /// A NaN is refused with the caller's words and the tensor's name.
    #[test]
    fn non_finite_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = vec![1.0f32, f32::NAN];
        let floats = vec![NamedTensor { name: "w".into(), shape: vec![2], data: &bad }];
        let err = write_tensors(&dir.path().join("x.safetensors"), &floats, &[], &|n| format!("refused {n}")).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("refused w") && text.contains("non-finite"), "{text}");
    }

    /// Throughput against the old path (the crate's writer, then a CRC pass
    /// that reads the file back), both synced to disk. By hand:
    /// `cargo test --release --lib stream_write -- --ignored --nocapture`
    /// (`FERROTRON_BENCH_DIR` picks the disk; default a temporary folder).
    #[test]
    #[ignore]
    fn write_speed_against_the_old_path() {
        let dir = match std::env::var_os("FERROTRON_BENCH_DIR") {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let values: Vec<f32> = (0..(128usize << 20)).map(|i| i as f32 * 1e-3).collect();
        let floats = vec![NamedTensor { name: "w".into(), shape: vec![values.len()], data: &values }];
        let gb = 4.0 * values.len() as f64 / 1e9;
        // FERROTRON_BENCH_NOSYNC=1: into the page cache only (the CPU side).
        let no_sync = std::env::var_os("FERROTRON_BENCH_NOSYNC").is_some();
        let sync = |p: &Path| if !no_sync { File::open(p).unwrap().sync_all().unwrap() };
        let t = std::time::Instant::now();
        let ours = dir.path().join("ours.safetensors");
        write_tensors(&ours, &floats, &[], &|n| n.to_string()).unwrap();
        sync(&ours);
        let new_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let theirs = dir.path().join("theirs.safetensors");
        let out = vec![OutTensor { name: "w".into(), shape: vec![values.len()], dtype: tensors::Dtype::F32, values: OutValues::F32(Box::new(|| Cow::Borrowed(&values[..]))) }];
        tensors::write(&theirs, &out, None).unwrap();
        sync(&theirs);
        checksum::file_crc32(&theirs).unwrap();
        let old_s = t.elapsed().as_secs_f64();
        println!("{gb:.2} GB: streamed {:.2} GB/s, old path {:.2} GB/s", gb / new_s, gb / old_s);
    }
}
