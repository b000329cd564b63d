//! NVRTC compilation of the `.cu` kernel files: once per process (the
//! backend keeps the loaded modules), and cached on disk by content hash
//! (~/.cache/ferrotron/ptx) so later processes skip NVRTC entirely.

use super::kernels::KernelFile;
use super::loader;
use anyhow::{anyhow, bail, Result};
use std::path::PathBuf;

/// Prepended to every kernel file (dtype helpers, reductions).
const COMMON: &str = include_str!("ops/common.cuh");

/// Kernel files written for Hopper's arch-specific instructions (wgmma,
/// setmaxnreg): compiled for `compute_90a`, and only for a cc 9.0 device.
/// PTX for `sm_90a` runs on cc 9.0 alone, so every other file keeps the
/// device's plain arch.
const SM90A_FILES: &[&str] = &["attention_wgmma", "attention_wgmma_bwd"];

/// Whether kernel file `name` can be built for (and run on) compute capability `cc`.
pub fn file_supported(name: &str, cc: (i32, i32)) -> bool {
    !SM90A_FILES.contains(&name) || cc == (9, 0)
}

pub struct Compiler {
    include: PathBuf,
    /// The device's compute capability: PTX for its own arch ("compute_90"),
    /// JIT-ed by the driver; "compute_90a" for [`SM90A_FILES`].
    cc: (i32, i32),
}

impl Compiler {
    pub fn new(cc: (i32, i32)) -> Result<Self> {
        loader::probe_nvrtc()?;
        Ok(Compiler { include: loader::cuda_include_dir()?, cc })
    }

    /// NVRTC's virtual architecture for kernel file `name`.
    fn arch(&self, name: &str) -> String {
        let suffix = if SM90A_FILES.contains(&name) { "a" } else { "" };
        format!("compute_{}{}{suffix}", self.cc.0, self.cc.1)
    }

    fn options(&self, name: &str) -> Vec<String> {
        vec![
            format!("--gpu-architecture={}", self.arch(name)),
            "--std=c++17".into(),
            format!("--include-path={}", self.include.display()),
        ]
    }

    /// PTX text of a kernel file, from the disk cache when it is there.
    pub fn ptx(&self, file: &KernelFile) -> Result<String> {
        if !file_supported(file.name, self.cc) {
            bail!("{}.cu needs a compute capability 9.0 GPU (sm_90a instructions); this one is {}.{}", file.name, self.cc.0, self.cc.1);
        }
        let src = source_text(file);
        let key = fnv64(&[src.as_bytes(), self.options(file.name).join(" ").as_bytes(), env!("CARGO_PKG_VERSION").as_bytes()]);
        let cached = cache_dir().map(|d| d.join(format!("{}-{key:016x}.ptx", file.name)));
        if let Some(text) = cached.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            return Ok(text);
        }
        let ptx = self.compile(file.name, &src)?;
        if let Some(p) = cached {
            store(&p, &ptx);
        }
        Ok(ptx)
    }

    /// NVRTC's PTX for `src`, compiled as `name.cu`.
    fn compile(&self, name: &str, src: &str) -> Result<String> {
        let opts = self.options(name);
        Ok(loader::no_panic("NVRTC", || {
            let o = cudarc::nvrtc::CompileOptions { options: opts, name: Some(format!("{name}.cu")), ..Default::default() };
            cudarc::nvrtc::compile_ptx_with_opts(src, o).map_err(|e| compile_error(name, e))
        })?
        .to_src())
    }
}

/// What NVRTC compiles for a kernel file: the shared header, then the file
/// (its line numbers in errors counted from its own first line).
fn source_text(file: &KernelFile) -> String {
    format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", file.name, file.source)
}

fn compile_error(name: &str, e: cudarc::nvrtc::CompileError) -> anyhow::Error {
    match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            anyhow!("NVRTC failed to compile {name}.cu:\n{}", log.to_string_lossy())
        }
        other => anyhow!("NVRTC failed on {name}.cu: {other:?}"),
    }
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FERROTRON_CACHE") {
        return Some(PathBuf::from(d).join("ptx"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ferrotron").join("ptx"))
}

/// Best effort, atomic (write + rename); a cache failure is not an error.
fn store(path: &std::path::Path, text: &str) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.iter() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Compile every kernel file with NVRTC (no GPU needed), for tests and
/// `info`: returns the names compiled. `cc` defaults to 9.0 (H100/H200);
/// files for another device's arch only (sm_90a) are left out.
pub fn compile_all(cc: Option<(i32, i32)>) -> Result<Vec<&'static str>> {
    let cc = cc.unwrap_or((9, 0));
    let c = Compiler::new(cc)?;
    let mut done = Vec::new();
    for file in super::ops::FILES.iter().filter(|f| file_supported(f.name, cc)) {
        c.ptx(file)?;
        done.push(file.name);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With FERROTRON_PTX_DUMP=DIR: writes `DIR/<file>.ptx` for every kernel
    /// file, freshly compiled by this code (no cache), for
    /// `tools/kernel_ptx.py compare`. Does nothing otherwise.
    #[test]
    fn dump_ptx() {
        let Some(dir) = std::env::var_os("FERROTRON_PTX_DUMP").map(PathBuf::from) else { return };
        let c = Compiler::new((9, 0)).expect("NVRTC and the CUDA headers (set CUDA_HOME)");
        std::fs::create_dir_all(&dir).unwrap();
        for f in super::super::ops::FILES {
            let ptx = c.compile(f.name, &source_text(f)).unwrap();
            std::fs::write(dir.join(format!("{}.ptx", f.name)), ptx).unwrap();
        }
    }
}
