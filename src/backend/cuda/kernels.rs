//! Loaded kernel modules and typed launches. Each `.cu` file is compiled
//! (or read from the PTX cache) on first use and kept loaded. Each kernel
//! is launched through a struct of its arguments, declared with [`kernel!`]
//! beside its `.cu` file (ops/), so a launch with a missing, extra or
//! mistyped argument does not compile.

use super::compiler::Compiler;
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchArgs, LaunchConfig};
use std::collections::HashMap;
use std::sync::Arc;

/// One `.cu` file: the name NVRTC compiles it under (`name.cu` in errors
/// and in the PTX cache) and its text. Every file is listed in `ops::FILES`.
#[derive(Clone, Copy, Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
}

/// A kernel and its arguments; [`kernel!`] implements it for the struct of
/// a kernel's parameters.
pub trait Kernel {
    /// The file holding the kernel.
    const FILE: KernelFile;
    /// The kernel's `extern "C"` name.
    fn name(&self) -> &'static str;
    /// Pushes the arguments in the order of the CUDA signature.
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>);
}

/// A kernel struct's parameter types, for the test that compares them with
/// the `.cu` signatures.
#[cfg(test)]
pub struct Signature {
    pub file: KernelFile,
    pub names: &'static [&'static str],
    pub params: &'static [&'static str],
}

/// Declares the typed launcher of one or more kernels of a `.cu` file: a
/// struct whose fields are the kernel's parameters, in the order and with
/// the Rust types of its CUDA signature (pointers `u64`, `int` `i32`, `i64`
/// `i64`, `unsigned` `u32`, `float` `f32`, structs their `#[repr(C)]`
/// mirror). The kernel's name is written here only. One `kernel!` per file
/// (it also declares the file's `KERNELS`, the signatures the test
/// `kernel_structs_match_cu` compares with the `.cu` text).
///
/// ```ignore
/// kernel! {
///     /// `fill_k`: `x[i] = v`.
///     struct Fill(FILE, fill_k) { x: u64, dt: i32, n: i64, v: f32 }
///     /// Kernels of one signature (one per head size): an enum names
///     /// them and the struct's `kernel` field picks one.
///     struct AttnFwd(FILE, AttnFwdKernel { D32: attn_fwd_d32, D64: attn_fwd_d64 }) { ... }
/// }
/// ```
macro_rules! kernel {
    ($( $(#[$m:meta])* struct $s:ident ($file:ident, $($sel:tt)+) { $($f:ident : $t:ty),* $(,)? } )*) => {
        $( $crate::backend::cuda::kernels::kernel!(@one [$(#[$m])*] $s $file [$($sel)+] { $($f : $t),* }); )*
        /// The signatures declared in this file (checked against the `.cu` files).
        #[cfg(test)]
        pub(in crate::backend::cuda) const KERNELS: &[$crate::backend::cuda::kernels::Signature] = &[$(
            $crate::backend::cuda::kernels::Signature {
                file: $file,
                names: $crate::backend::cuda::kernels::kernel!(@names [$($sel)+]),
                params: &[$(stringify!($t)),*],
            }
        ),*];
    };
    (@names [$k:ident]) => { &[stringify!($k)] };
    (@names [$e:ident { $($v:ident : $k:ident),+ $(,)? }]) => { &[$(stringify!($k)),+] };
    (@one [$($m:tt)*] $s:ident $file:ident [$k:ident] { $($f:ident : $t:ty),* }) => {
        $($m)*
        #[derive(Clone, Copy, Debug)]
        pub(in crate::backend::cuda) struct $s { $(pub $f: $t),* }
        impl $crate::backend::cuda::kernels::Kernel for $s {
            const FILE: $crate::backend::cuda::kernels::KernelFile = $file;
            fn name(&self) -> &'static str {
                stringify!($k)
            }
            $crate::backend::cuda::kernels::kernel!(@push $($f)*);
        }
    };
    (@one [$($m:tt)*] $s:ident $file:ident [$e:ident { $($v:ident : $k:ident),+ $(,)? }] { $($f:ident : $t:ty),* }) => {
        /// The kernels sharing one signature; a launch picks one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(in crate::backend::cuda) enum $e { $($v),+ }
        $($m)*
        #[derive(Clone, Copy, Debug)]
        pub(in crate::backend::cuda) struct $s { pub kernel: $e, $(pub $f: $t),* }
        impl $crate::backend::cuda::kernels::Kernel for $s {
            const FILE: $crate::backend::cuda::kernels::KernelFile = $file;
            fn name(&self) -> &'static str {
                match self.kernel { $($e::$v => stringify!($k)),+ }
            }
            $crate::backend::cuda::kernels::kernel!(@push $($f)*);
        }
    };
    (@push $($f:ident)*) => {
        fn push<'a>(&'a self, args: &mut cudarc::driver::LaunchArgs<'a>) {
            $( cudarc::driver::PushKernelArg::arg(args, &self.$f); )*
        }
    };
}
pub(crate) use kernel;

pub struct Kernels {
    ctx: Arc<CudaContext>,
    compiler: Compiler,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    funcs: HashMap<(&'static str, &'static str), CudaFunction>,
}

impl Kernels {
    pub fn new(ctx: Arc<CudaContext>, compiler: Compiler) -> Self {
        Kernels { ctx, compiler, modules: HashMap::new(), funcs: HashMap::new() }
    }

    /// Kernel `name` of `file`, compiling/loading the file once.
    pub fn get(&mut self, file: KernelFile, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.funcs.get(&(file.name, name)) {
            return Ok(f.clone());
        }
        if !self.modules.contains_key(file.name) {
            let ptx = self.compiler.ptx(&file)?;
            let m = self
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(|e| anyhow!("loading {}.cu into the GPU failed: {e:?}", file.name))?;
            self.modules.insert(file.name, m);
        }
        let f = self.modules[file.name].load_function(name).map_err(|e| anyhow!("kernel {name} in {}.cu: {e:?}", file.name))?;
        self.funcs.insert((file.name, name), f.clone());
        Ok(f)
    }
}

/// Queue `f` (the function of kernel `k`) on `stream` with `k`'s arguments.
pub fn launch<K: Kernel>(stream: &CudaStream, f: &CudaFunction, cfg: LaunchConfig, k: &K) -> Result<()> {
    let mut b = stream.launch_builder(f);
    k.push(&mut b);
    // SAFETY: `kernel!` declares each argument struct with the parameter
    // list of its CUDA signature (the test `kernel_structs_match_cu`
    // compares them); pointers were bounds-checked against their buffers
    // by the caller.
    unsafe { b.launch(cfg) }.map_err(|e| anyhow!("kernel {} launch failed: {e:?}", k.name()))?;
    Ok(())
}

/// 1-D grid-stride configuration: 256 threads, enough blocks to fill the GPU.
pub fn grid1d(n: usize, sms: u32) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, (sms as usize) * 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}
