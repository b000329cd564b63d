//! safetensors files of named tensors, as used by checkpoints and HF export.
//!
//! Writing is streamed: each tensor's bytes are produced only when the
//! `safetensors` crate asks for them, so saving a model never needs a second
//! full copy of the parameters in memory. Reading turns every problem
//! (truncation, a foreign file, an unsupported dtype) into an error that
//! names the file and says what is wrong in plain words.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype as StDtype, SafeTensorError, SafeTensors, TensorView, View};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// An owned tensor read back from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// An owned byte tensor (8-bit optimizer state codes) read back from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct ByteTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// On-disk element type for tensors we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    /// Raw bytes (8-bit optimizer state), written from [`OutValues::U8`].
    U8,
}

impl Dtype {
    fn st(self) -> StDtype {
        match self {
            Dtype::F32 => StDtype::F32,
            Dtype::Bf16 => StDtype::BF16,
            Dtype::U8 => StDtype::U8,
        }
    }
    /// The `torch_dtype` string HF configs use.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
            Dtype::U8 => "uint8",
        }
    }
}

/// Where a tensor's values come from when it is written.
pub enum OutValues<'a> {
    /// Float values, produced on demand and encoded in the tensor's dtype.
    F32(Box<dyn Fn() -> Cow<'a, [f32]> + 'a>),
    /// Bytes written as they are (dtype `U8`).
    U8(&'a [u8]),
}

/// A tensor to write. Float `values` are produced once, when written.
pub struct OutTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub values: OutValues<'a>,
}

impl OutTensor<'_> {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> StDtype {
        self.dtype.st()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match &self.values {
            OutValues::F32(f) => Cow::Owned(encode(&f(), self.dtype)),
            OutValues::U8(bytes) => Cow::Borrowed(bytes),
        }
    }
    fn data_len(&self) -> usize {
        self.numel() * self.dtype.st().size()
    }
}

/// Little-endian bytes of `values` in `dtype` (bf16 rounds to nearest even).
fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::Bf16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        // Floats holding byte values (rounded, saturated).
        Dtype::U8 => values.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect(),
    }
}

/// Write `tensors` to `path` (not atomically: callers write into a staging
/// location and publish it). `metadata` goes into the `__metadata__` header.
pub fn write(path: &Path, tensors: &[OutTensor], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let mut seen = HashSet::new();
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            bail!("cannot write {}: tensor name {} appears twice", path.display(), t.name);
        }
    }
    safetensors::serialize_to_file(tensors.iter().map(|t| (t.name.clone(), t)), &metadata, path).map_err(|e| match e {
        // The I/O error in words ("No space left on device"), not its Debug form.
        SafeTensorError::IoError(io) => anyhow!("cannot write {}: {io}", path.display()),
        other => anyhow!("cannot write {}: {other}", path.display()),
    })
}

/// The whole file, with an error naming it if it cannot be read.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parse safetensors bytes, explaining failures in terms of the file.
pub fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{}: {}", path.display(), describe(&e, bytes)))
}

/// Plain-words reason for a safetensors parse error.
fn describe(e: &SafeTensorError, bytes: &[u8]) -> String {
    let len = bytes.len();
    let expected = expected_len(bytes).map(|n| format!("expected {n} bytes, ")).unwrap_or_default();
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("file is only {len} bytes, too short to be a safetensors file (truncated or empty)")
        }
        SafeTensorError::HeaderTooLarge => {
            "not a safetensors file (its first 8 bytes are not a plausible header length)".into()
        }
        SafeTensorError::InvalidHeaderLength => format!(
            "not a safetensors file, or truncated inside its header (the header length runs past the end of the {len}-byte file)"
        ),
        SafeTensorError::InvalidHeader
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization => {
            "not a safetensors file (its header is not valid JSON tensor metadata)".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            format!("truncated or corrupt: the tensor data does not end where the file ends ({expected}file has {len})")
        }
        SafeTensorError::InvalidOffset(name) => format!("corrupt header: tensor {name} has inconsistent data offsets"),
        SafeTensorError::TensorInvalidInfo => {
            "corrupt header: a tensor's byte range does not match its dtype and shape".into()
        }
        SafeTensorError::ValidationOverflow => "corrupt header: a tensor shape is impossibly large".into(),
        other => format!("unreadable safetensors file: {other}"),
    }
}

/// File size the header promises (8 + header + last data offset), if the
/// header itself is readable. Used only to make truncation errors concrete.
fn expected_len(bytes: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let end = header
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    (8 + n).checked_add(usize::try_from(end).ok()?)
}

/// Decode a tensor of any float dtype to f32; other dtypes are an error that
/// names the tensor and the file.
pub fn to_f32(path: &Path, name: &str, view: &TensorView) -> Result<Vec<f32>> {
    let b = view.data();
    let out = match view.dtype() {
        StDtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        StDtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        StDtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        StDtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => bail!(
            "{}: tensor {name} has dtype {other:?}; only F32, BF16, F16 and F64 tensors can be loaded",
            path.display()
        ),
    };
    Ok(out)
}

/// Read every tensor of a safetensors file as f32, sorted by name.
pub fn read_all(path: &Path) -> Result<Vec<Tensor>> {
    let bytes = read_bytes(path)?;
    let st = parse(path, &bytes)?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let data = to_f32(path, name, &view)?;
        out.push(Tensor { name: name.to_string(), shape: view.shape().to_vec(), data });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Read every tensor of a safetensors file, float tensors as f32 and U8
/// tensors as bytes (optimizer files with 8-bit state), each sorted by name.
pub fn read_all_mixed(path: &Path) -> Result<(Vec<Tensor>, Vec<ByteTensor>)> {
    let bytes = read_bytes(path)?;
    let st = parse(path, &bytes)?;
    let (mut floats, mut raw) = (vec![], vec![]);
    for (name, view) in st.iter() {
        let shape = view.shape().to_vec();
        if view.dtype() == StDtype::U8 {
            raw.push(ByteTensor { name: name.to_string(), shape, data: view.data().to_vec() });
        } else {
            floats.push(Tensor { name: name.to_string(), shape, data: to_f32(path, name, &view)? });
        }
    }
    floats.sort_by(|a, b| a.name.cmp(&b.name));
    raw.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((floats, raw))
}

/// `[a, b]` style shape for messages.
pub fn shape_str(shape: &[usize]) -> String {
    format!("{shape:?}")
}
