//! Finding the CUDA libraries at run time. cudarc loads them lazily and
//! PANICS when one is missing, so we probe first and turn absence into an
//! error that names the library and the variable to set.

use anyhow::{anyhow, bail, Result};
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;
use std::sync::Mutex;

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
}
const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

/// Toolkit roots to search, in order: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda.
pub fn cuda_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    roots
}

/// The folder holding cuda_bf16.h, which NVRTC needs for the kernels.
pub fn cuda_include_dir() -> Result<PathBuf> {
    let roots = cuda_roots();
    for r in &roots {
        for sub in ["include", "targets/x86_64-linux/include", "targets/sbsa-linux/include"] {
            let dir = r.join(sub);
            if dir.join("cuda_bf16.h").is_file() {
                return Ok(dir);
            }
        }
    }
    bail!(
        "CUDA headers not found: NVRTC needs cuda_bf16.h to compile the kernels; looked in {:?}/include. \
         Set CUDA_HOME to the CUDA 13 toolkit root (default /usr/local/cuda).",
        roots
    )
}

/// dlopen `lib<name>.so.13` / `lib<name>.so` from the toolkit's lib folders
/// with RTLD_GLOBAL, so cudarc's later dlopen by soname finds it loaded.
fn preload_from_toolkit(name: &str) -> bool {
    for r in cuda_roots() {
        for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            for file in [format!("lib{name}.so.13"), format!("lib{name}.so")] {
                let path = r.join(sub).join(&file);
                if !path.is_file() {
                    continue;
                }
                if dlopen_path(&path) {
                    // NVRTC dlopens its builtins library by bare name at
                    // compile time: load it from the same folder now.
                    preload_companions(&r.join(sub), &format!("lib{name}-builtins.so"));
                    return true;
                }
            }
        }
    }
    false
}

fn dlopen_path(path: &std::path::Path) -> bool {
    let Ok(c) = CString::new(path.to_string_lossy().as_bytes()) else { return false };
    // SAFETY: plain dlopen of a shared library path.
    !unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) }.is_null()
}

fn preload_companions(dir: &std::path::Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            dlopen_path(&e.path());
        }
    }
}

fn toolkit_lib(name: &str, what: &str, present: fn() -> bool) -> Result<()> {
    if present() || (preload_from_toolkit(name) && present()) {
        return Ok(());
    }
    bail!(
        "CUDA library lib{name}.so ({what}) not found. Set CUDA_HOME to the CUDA 13 toolkit root \
         (searched {:?} under lib64/ and lib/) or add its lib64 folder to LD_LIBRARY_PATH.",
        cuda_roots()
    )
}

/// Check the driver library (libcuda) is loadable; never touch toolkit stubs.
pub fn probe_driver() -> Result<()> {
    // SAFETY: only tries to dlopen the library.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        return Ok(());
    }
    bail!(
        "no NVIDIA driver: libcuda.so could not be loaded. Install the NVIDIA driver, or add the folder \
         holding libcuda.so.1 to LD_LIBRARY_PATH; without a GPU use the cpu backend."
    )
}

/// Check NVRTC (kernel compiler); needed even without a GPU to compile.
pub fn probe_nvrtc() -> Result<()> {
    toolkit_lib("nvrtc", "NVRTC, the run-time CUDA compiler", || unsafe { cudarc::nvrtc::sys::is_culib_present() })
}

/// Check cuBLASLt (matmuls).
pub fn probe_cublaslt() -> Result<()> {
    toolkit_lib("cublasLt", "cuBLASLt, used for matmuls", || unsafe { cudarc::cublaslt::sys::is_culib_present() })
}

static HOOK_LOCK: Mutex<()> = Mutex::new(());

/// Run `f`, turning any panic inside cudarc into an error (with the panic
/// hook silenced meanwhile, so the user sees one clear message, no trace).
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _guard = HOOK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(anyhow!("{what} failed: {msg}"))
    })
}
