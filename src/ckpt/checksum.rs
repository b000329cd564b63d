//! Integrity of checkpoint data: a CRC-32 per tensor file, recorded in the
//! manifest when saving and verified when loading, and the rule that a
//! checkpoint never holds a non-finite value.
//!
//! CRC-32 (the zlib/PNG polynomial, via `crc32fast`, SIMD where the CPU has
//! it) catches flipped bytes and torn writes; it is not a defence against
//! deliberate tampering. Manifests saved before checksums existed have none:
//! those checkpoints still load, with a warning that they were not verified.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Prefix of a checksum value in the manifest (`"crc32:1a2b3c4d"`), so
/// another algorithm could be added without ambiguity.
pub const ALGO: &str = "crc32";

/// CRC-32 of a whole file, read in 8 MiB pieces.
pub fn file_crc32(path: &Path) -> Result<u32> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// `"crc32:xxxxxxxx"` for each named file inside `dir`.
pub fn checksums(dir: &Path, files: &[&str]) -> Result<BTreeMap<String, String>> {
    files.iter().map(|f| Ok((f.to_string(), format!("{ALGO}:{:08x}", file_crc32(&dir.join(f))?)))).collect()
}

/// Check every file listed in `sums` against its recorded checksum. An
/// empty list (an older checkpoint) is not an error: the caller says so.
pub fn verify(dir: &Path, sums: &BTreeMap<String, String>) -> Result<()> {
    for (file, want) in sums {
        let path = dir.join(file);
        let Some(hex) = want.strip_prefix(&format!("{ALGO}:")) else {
            bail!("{}: the manifest's checksum of {file} is `{want}`, which this ferrotron cannot check (it knows {ALGO})", dir.display());
        };
        let got = format!("{:08x}", file_crc32(&path)?);
        if got != hex {
            bail!(
                "{} is damaged: its CRC-32 is {got} but the manifest recorded {hex} when it was saved (flipped bytes on disk or in a copy)",
                path.display()
            );
        }
    }
    Ok(())
}

/// An error naming `name` (in `file`) if any of `data` is NaN or infinite.
pub fn ensure_finite(file: &str, name: &str, data: &[f32]) -> Result<()> {
    let bad = data.par_chunks(1 << 16).position_any(|c| c.iter().any(|x| !x.is_finite()));
    if bad.is_some() {
        bail!("tensor {name} in {file} holds non-finite values (NaN or infinity)");
    }
    Ok(())
}
