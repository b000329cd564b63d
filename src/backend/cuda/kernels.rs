//! Loaded kernel modules and a small launch helper. Each `.cu` file is
//! compiled (or read from the PTX cache) on first use and kept loaded.

use super::compiler::Compiler;
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::Arc;

/// Mirrors `AttnDims` in attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub b: i32,
    pub t: i32,
    pub h: i32,
    pub kv: i32,
}
// SAFETY: plain-old-data with the same layout as the CUDA struct.
unsafe impl DeviceRepr for AttnDims {}

/// Mirrors `AdamArgs` in adamw.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AdamArgs {
    pub lr: f32,
    pub b1: f32,
    pub b2: f32,
    pub eps: f32,
    pub wd: f32,
    pub grad_scale: f32,
    /// lr / (1 - beta1^t), computed in f64 on the host.
    pub step_size: f32,
    pub sqrt_bc2: f32,
}
// SAFETY: plain-old-data with the same layout as the CUDA struct.
unsafe impl DeviceRepr for AdamArgs {}

/// One kernel argument. Pointers travel as u64 (same ABI as `T*`).
#[derive(Clone, Copy)]
pub enum KArg {
    P(u64),
    I(i32),
    U(u32),
    L(i64),
    F(f32),
    Attn(AttnDims),
    Adam(AdamArgs),
}

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

    /// Kernel `name` of file `file`.cu, compiling/loading the file once.
    pub fn get(&mut self, file: &'static str, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.funcs.get(&(file, name)) {
            return Ok(f.clone());
        }
        if !self.modules.contains_key(file) {
            let ptx = self.compiler.ptx(file)?;
            let m = self
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(|e| anyhow!("loading {file}.cu into the GPU failed: {e:?}"))?;
            self.modules.insert(file, m);
        }
        let f = self.modules[file].load_function(name).map_err(|e| anyhow!("kernel {name} in {file}.cu: {e:?}"))?;
        self.funcs.insert((file, name), f.clone());
        Ok(f)
    }
}

/// Queue `f` on `stream` with `args`.
pub fn launch(stream: &CudaStream, f: &CudaFunction, cfg: LaunchConfig, args: &[KArg]) -> Result<()> {
    let mut b = stream.launch_builder(f);
    for a in args {
        match a {
            KArg::P(x) => b.arg(x),
            KArg::I(x) => b.arg(x),
            KArg::U(x) => b.arg(x),
            KArg::L(x) => b.arg(x),
            KArg::F(x) => b.arg(x),
            KArg::Attn(x) => b.arg(x),
            KArg::Adam(x) => b.arg(x),
        };
    }
    // SAFETY: argument lists match the kernel signatures in kernels/*.cu;
    // pointers were bounds-checked against their buffers by the caller.
    unsafe { b.launch(cfg) }.map_err(|e| anyhow!("kernel launch failed: {e:?}"))?;
    Ok(())
}

/// 1-D grid-stride configuration: 256 threads, enough blocks to fill the GPU.
pub fn grid1d(n: usize, sms: u32) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, (sms as usize) * 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}
