//! NVRTC compilation of the `.cu` kernel files: once per process (the
//! backend keeps the loaded modules), and cached on disk by content hash
//! (~/.cache/ferrotron/ptx) so later processes skip NVRTC entirely.

use super::loader;
use anyhow::{anyhow, Result};
use std::path::PathBuf;

/// Prepended to every kernel file (dtype helpers, reductions).
const COMMON: &str = include_str!("ops/common.cuh");

/// Every kernel file, one concept each: (name, source).
pub const SOURCES: &[(&str, &str)] = &[
    ("elementwise", include_str!("ops/elementwise.cu")),
    ("sum_squares", include_str!("ops/sum_squares.cu")),
    ("embed", include_str!("ops/embed.cu")),
    ("layernorm", include_str!("ops/layernorm.cu")),
    ("rmsnorm", include_str!("ops/rmsnorm.cu")),
    ("gelu", include_str!("ops/gelu.cu")),
    ("swiglu", include_str!("ops/swiglu.cu")),
    ("rope", include_str!("ops/rope.cu")),
    ("attention", include_str!("ops/attention.cu")),
    ("attention_mma", include_str!("ops/attention_mma.cu")),
    ("attention_fa2", include_str!("ops/attention_fa2.cu")),
    ("xent", include_str!("ops/xent.cu")),
    ("adamw", include_str!("ops/adamw.cu")),
    ("axpby", include_str!("ops/axpby.cu")),
    ("copy_strided", include_str!("ops/copy_strided.cu")),
    ("axis", include_str!("ops/axis.cu")),
    ("lion", include_str!("ops/lion.cu")),
    ("sign_descent", include_str!("ops/sign_descent.cu")),
    ("precondition", include_str!("ops/precondition.cu")),
    ("adamw8bit", include_str!("ops/adamw8bit.cu")),
    ("onebit", include_str!("ops/onebit.cu")),
];

pub struct Compiler {
    include: PathBuf,
    /// e.g. "compute_90": PTX for the device's own arch, JIT-ed by the driver.
    arch: String,
}

impl Compiler {
    pub fn new(cc: (i32, i32)) -> Result<Self> {
        loader::probe_nvrtc()?;
        Ok(Compiler { include: loader::cuda_include_dir()?, arch: format!("compute_{}{}", cc.0, cc.1) })
    }

    fn options(&self) -> Vec<String> {
        vec![
            format!("--gpu-architecture={}", self.arch),
            "--std=c++17".into(),
            format!("--include-path={}", self.include.display()),
        ]
    }

    /// PTX text of kernel file `name`.
    pub fn ptx(&self, name: &str) -> Result<String> {
        let body = SOURCES.iter().find(|(n, _)| *n == name).ok_or_else(|| anyhow!("no kernel file {name}.cu"))?.1;
        let src = format!("{COMMON}\n#line 1 \"{name}.cu\"\n{body}");
        let opts = self.options();
        let key = fnv64(&[src.as_bytes(), opts.join(" ").as_bytes(), env!("CARGO_PKG_VERSION").as_bytes()]);
        let cached = cache_dir().map(|d| d.join(format!("{name}-{key:016x}.ptx")));
        if let Some(text) = cached.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            return Ok(text);
        }
        let ptx = loader::no_panic("NVRTC", || {
            let o = cudarc::nvrtc::CompileOptions { options: opts, name: Some(format!("{name}.cu")), ..Default::default() };
            cudarc::nvrtc::compile_ptx_with_opts(&src, o).map_err(|e| compile_error(name, e))
        })?
        .to_src();
        if let Some(p) = cached {
            store(&p, &ptx);
        }
        Ok(ptx)
    }
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
/// `info`: returns the names compiled. `cc` defaults to 9.0 (H100/H200).
pub fn compile_all(cc: Option<(i32, i32)>) -> Result<Vec<&'static str>> {
    let c = Compiler::new(cc.unwrap_or((9, 0)))?;
    let mut done = Vec::new();
    for (name, _) in SOURCES {
        c.ptx(name)?;
        done.push(*name);
    }
    Ok(done)
}
