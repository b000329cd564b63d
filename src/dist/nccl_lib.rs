//! Loading NCCL at run time: the dozen entry points `NcclComm` calls,
//! with cudarc's NCCL types.
//!
//! Why not cudarc's own loader: it looks only for `libnccl.so` (and
//! `.so.1`, `.so.10`, …) but never `libnccl.so.2`, the name NCCL's runtime
//! packages and pip wheels ship (the unversioned name comes only with the
//! development package); and it resolves every symbol it knows at first
//! use, panicking on an older NCCL that lacks one. Here: `$FERROTRON_NCCL`
//! (a path), then `libnccl.so.2` and `libnccl.so` on the loader's search
//! path, then the `nvidia-nccl` wheel of a system Python; a missing library
//! or symbol is an error that says what to set.

use anyhow::{anyhow, bail, Result};
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

type Res = ncclResult_t;

#[allow(clippy::type_complexity)]
pub struct NcclLib {
    pub get_version: unsafe extern "C" fn(*mut c_int) -> Res,
    pub get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> Res,
    pub comm_init_rank: unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> Res,
    pub comm_abort: unsafe extern "C" fn(ncclComm_t) -> Res,
    pub comm_get_async_error: unsafe extern "C" fn(ncclComm_t, *mut Res) -> Res,
    pub get_error_string: unsafe extern "C" fn(Res) -> *const c_char,
    pub get_last_error: unsafe extern "C" fn(ncclComm_t) -> *const c_char,
    pub all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t) -> Res,
    pub reduce_scatter: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t) -> Res,
    pub all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclComm_t, cudaStream_t) -> Res,
    pub broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, c_int, ncclComm_t, cudaStream_t) -> Res,
    pub reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclRedOp_t, c_int, ncclComm_t, cudaStream_t) -> Res,
    pub send: unsafe extern "C" fn(*const c_void, usize, ncclDataType_t, c_int, ncclComm_t, cudaStream_t) -> Res,
    pub recv: unsafe extern "C" fn(*mut c_void, usize, ncclDataType_t, c_int, ncclComm_t, cudaStream_t) -> Res,
    pub group_start: unsafe extern "C" fn() -> Res,
    pub group_end: unsafe extern "C" fn() -> Res,
    /// Where it was loaded from, for logs.
    pub path: String,
}

/// NCCL, loaded once per process.
pub fn nccl() -> Result<&'static NcclLib> {
    static LIB: OnceLock<std::result::Result<NcclLib, String>> = OnceLock::new();
    LIB.get_or_init(|| load().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
}

impl NcclLib {
    /// "NCCL 2.28.3".
    pub fn version(&self) -> String {
        let mut v = 0;
        // SAFETY: writes one int.
        match unsafe { (self.get_version)(&mut v) } {
            ncclResult_t::ncclSuccess => format!("NCCL {}.{}.{}", v / 10000, (v / 100) % 100, v % 100),
            _ => "NCCL (version unknown)".into(),
        }
    }

    /// `Ok` or an error naming the call, NCCL's reason and its last message.
    pub fn check(&self, what: &str, r: Res, comm: ncclComm_t) -> Result<()> {
        if r == ncclResult_t::ncclSuccess {
            return Ok(());
        }
        // SAFETY: NCCL returns static (or per-comm) NUL-terminated strings.
        let text = |p: *const c_char| if p.is_null() { String::new() } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned() };
        let reason = text(unsafe { (self.get_error_string)(r) });
        let last = if comm.is_null() { String::new() } else { text(unsafe { (self.get_last_error)(comm) }) };
        bail!("NCCL {what} failed: {reason} ({r:?}){}{last}", if last.is_empty() { "" } else { ": " })
    }
}

fn candidates() -> Vec<String> {
    let mut c: Vec<String> = std::env::var("FERROTRON_NCCL").into_iter().collect();
    c.extend(["libnccl.so.2".to_string(), "libnccl.so".to_string()]);
    // pip's nvidia-nccl wheels (what PyTorch uses) under a system Python.
    for base in ["/usr/local/lib", "/usr/lib"] {
        let Ok(dirs) = std::fs::read_dir(base) else { continue };
        for d in dirs.flatten().filter(|d| d.file_name().to_string_lossy().starts_with("python3")) {
            for site in ["dist-packages", "site-packages"] {
                let p: PathBuf = d.path().join(site).join("nvidia/nccl/lib/libnccl.so.2");
                if p.is_file() {
                    c.push(p.to_string_lossy().into_owned());
                }
            }
        }
    }
    c
}

/// A symbol's address as the function pointer type `F`.
/// SAFETY: `F` must be the symbol's C function pointer type.
unsafe fn as_fn<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>(), "a function pointer");
    std::mem::transmute_copy(&p)
}

fn load() -> Result<NcclLib> {
    let tried = candidates();
    let (handle, path) = tried
        .iter()
        .find_map(|name| {
            let c = CString::new(name.as_str()).ok()?;
            // SAFETY: plain dlopen; the handle is never closed (NCCL lives as long as the process).
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            (!h.is_null()).then(|| (h, name.clone()))
        })
        .ok_or_else(|| {
            anyhow!(
                "NCCL not found (tried {tried:?}). Install NCCL 2 (libnccl2), set FERROTRON_NCCL to the path of libnccl.so.2, \
                 or use dist.backend=tcp"
            )
        })?;
    let sym = |name: &str| -> Result<*mut c_void> {
        let c = CString::new(name).expect("symbol names have no NUL");
        // SAFETY: looking a symbol up in a handle we hold.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            bail!("{path} has no {name}: NCCL too old? ferrotron needs NCCL 2.12 or newer");
        }
        Ok(p)
    };
    // SAFETY: each symbol is NCCL's C function with exactly this signature
    // (nccl.h; the same prototypes cudarc's bindings are generated from).
    unsafe {
        Ok(NcclLib {
            get_version: as_fn(sym("ncclGetVersion")?),
            get_unique_id: as_fn(sym("ncclGetUniqueId")?),
            comm_init_rank: as_fn(sym("ncclCommInitRank")?),
            comm_abort: as_fn(sym("ncclCommAbort")?),
            comm_get_async_error: as_fn(sym("ncclCommGetAsyncError")?),
            get_error_string: as_fn(sym("ncclGetErrorString")?),
            get_last_error: as_fn(sym("ncclGetLastError")?),
            all_reduce: as_fn(sym("ncclAllReduce")?),
            reduce_scatter: as_fn(sym("ncclReduceScatter")?),
            all_gather: as_fn(sym("ncclAllGather")?),
            broadcast: as_fn(sym("ncclBroadcast")?),
            reduce: as_fn(sym("ncclReduce")?),
            send: as_fn(sym("ncclSend")?),
            recv: as_fn(sym("ncclRecv")?),
            group_start: as_fn(sym("ncclGroupStart")?),
            group_end: as_fn(sym("ncclGroupEnd")?),
            path,
        })
    }
}
