//! Backend state and the plumbing every op uses: context/stream setup,
//! buffers, bf16 shadows of F32 matmul operands, per-op scratch memory,
//! kernel launch.

use super::compiler::Compiler;
use super::kernels::{self, Kernel, Kernels};
use super::ops::attention::{AttnBackward, AttnForward};
use super::ops::elementwise::{Convert, F32ToBf16Vec4};
use super::loader;
use super::matmul::Lt;
use super::memory::{Allocator, Buffer, Buffers, Dev, DevMem, Elem, Shadow};
use crate::backend::{BufId, DType, Mark, View};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{CudaContext, CudaStream, LaunchConfig};
use std::sync::Arc;

pub struct CudaBackend {
    // Field order is drop order: everything holding device memory or
    // handles goes before the stream and context it lives on.
    /// The offload's copy stream and pinned host memory (host_memory.rs).
    pub(super) copies: Option<super::host_memory::Copies>,
    pub(super) bufs: Buffers,
    /// Per-op scratch (partial sums, conversions); reset at each op start.
    scratch: Option<DevMem>,
    scratch_used: usize,
    retired: Vec<DevMem>,
    /// The 8-bit optimizer's code maps and thresholds, uploaded on first use.
    pub(super) quant_maps: Option<DevMem>,
    /// AdamW segment tables (host copy, device copy), uploaded on first use.
    pub(super) adam_tables: Vec<(Vec<i64>, DevMem)>,
    /// Rotary inverse-frequency tables (host copy, device copy), uploaded on first use.
    pub(super) rope_tables: Vec<(Vec<f32>, DevMem)>,
    pub(super) lt: Lt,
    pub(super) kernels: Kernels,
    pub(super) alloc: Allocator,
    pub(super) sms: u32,
    pub(super) max_smem: u32,
    pub(super) device_name: String,
    /// Use the CUDA-core attention kernels (forward and backward) instead of
    /// the tensor-core ones (FERROTRON_ATTN=simple, or `use_simple_attention`).
    pub(super) simple_attention: bool,
    /// The attention forward for the FlashAttention-2 cases (FERROTRON_ATTN,
    /// `set_attention_forward`; default `attention::DEFAULT_FORWARD`).
    pub(super) attn_forward: AttnForward,
    /// The attention backward for the same cases (FERROTRON_ATTN_BWD,
    /// `set_attention_backward`; default `attention::DEFAULT_BACKWARD`).
    pub(super) attn_backward: AttnBackward,
    /// Compute capability (major, minor).
    pub(super) cc: (i32, i32),
    /// Timing events recorded on the stream by `mark`, until `clear_marks`.
    pub(super) marks: Vec<cudarc::driver::CudaEvent>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) ctx: Arc<CudaContext>,
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Let queued work finish before its memory is returned.
        let _ = self.stream.synchronize();
    }
}

// SAFETY: all CUDA handles are owned by this value and used by one thread
// at a time (&mut self); the context is bound to the calling thread before
// work is queued.
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Open GPU `device_ordinal`. Errors (never panics) when the driver, a
    /// GPU, NVRTC, cuBLASLt or the CUDA headers are missing.
    pub fn new(device_ordinal: usize) -> Result<CudaBackend> {
        loader::no_panic("CUDA initialisation", || Self::init(device_ordinal))
    }

    fn init(ordinal: usize) -> Result<CudaBackend> {
        loader::probe_driver()?;
        let count = CudaContext::device_count().map_err(|e| {
            anyhow!("no usable CUDA GPU: the driver loaded but cuInit failed ({e:?}); check nvidia-smi and CUDA_VISIBLE_DEVICES")
        })?;
        if count <= 0 {
            bail!("no CUDA GPU found (driver loaded, 0 devices visible); check nvidia-smi and CUDA_VISIBLE_DEVICES");
        }
        if ordinal >= count as usize {
            bail!("CUDA device {ordinal} requested but only {count} visible");
        }
        loader::probe_nvrtc()?;
        loader::probe_cublaslt()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("creating a CUDA context on GPU {ordinal}: {e:?}"))?;
        // We pass raw pointers and use one stream: cudarc's per-slice event
        // tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| anyhow!("cuStreamCreate: {e:?}"))?;
        let attr = |a| ctx.attribute(a).map_err(|e| anyhow!("device attribute {a:?}: {e:?}"));
        let cc = ctx.compute_capability().map_err(|e| anyhow!("compute capability: {e:?}"))?;
        let sms = attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let max_smem = attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        let pooled = attr(Attr::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)? > 0;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let mut alloc = Allocator { stream: stream.cu_stream(), pooled, bytes_now: 0, bytes_peak: 0 };
        let lt = Lt::new(&mut alloc)?;
        let kernels = Kernels::new(ctx.clone(), Compiler::new(cc)?);
        Ok(CudaBackend {
            ctx,
            stream,
            alloc,
            bufs: Buffers { slots: Vec::new() },
            kernels,
            lt,
            scratch: None,
            scratch_used: 0,
            retired: Vec::new(),
            quant_maps: None,
            adam_tables: Vec::new(),
            rope_tables: Vec::new(),
            sms,
            max_smem,
            device_name,
            simple_attention: std::env::var("FERROTRON_ATTN").is_ok_and(|v| v == "simple"),
            attn_forward: super::ops::attention::forward_from_env(),
            attn_backward: super::ops::attention::backward_from_env(),
            cc,
            marks: Vec::new(),
            copies: None,
        })
    }

    /// A timing event recorded on the stream (no host wait).
    pub(super) fn record_mark(&mut self) -> Result<Mark> {
        let ev = self.stream.record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| anyhow!("cuEventRecord: {e:?}"))?;
        self.marks.push(ev);
        Ok(Mark(self.marks.len() - 1))
    }

    /// Milliseconds between two recorded events; waits for the later one.
    pub(super) fn mark_elapsed_ms(&mut self, from: Mark, to: Mark) -> Result<f64> {
        let (a, b) = match (self.marks.get(from.0), self.marks.get(to.0)) {
            (Some(a), Some(b)) => (a, b),
            _ => bail!("timing mark {} or {} was cleared or never made", from.0, to.0),
        };
        b.synchronize().map_err(|e| anyhow!("waiting for a timing event: {e:?}"))?;
        Ok(a.elapsed_ms(b).map_err(|e| anyhow!("cuEventElapsedTime: {e:?}"))? as f64)
    }

    /// Choose the CUDA-core attention kernels (true) or the tensor-core ones.
    pub fn use_simple_attention(&mut self, yes: bool) {
        self.simple_attention = yes;
    }

    /// Choose the attention forward for the shapes the FlashAttention-2
    /// kernels take; the wgmma ones apply only on a cc 9.0 GPU
    /// ([`Self::wgmma_attention_available`]), `Fa2` runs elsewhere.
    pub fn set_attention_forward(&mut self, k: AttnForward) {
        self.attn_forward = k;
    }

    /// Choose the attention backward for the shapes the FlashAttention-2
    /// kernels take; `Wgmma` applies only on a cc 9.0 GPU, `Fa2` runs elsewhere.
    pub fn set_attention_backward(&mut self, k: AttnBackward) {
        self.attn_backward = k;
    }

    /// Whether this GPU runs the wgmma attention kernel (compute capability 9.0).
    pub fn wgmma_attention_available(&self) -> bool {
        self.cc == (9, 0)
    }

    pub(super) fn alloc_buf(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        let mem = self.alloc.alloc(len * Elem::of(dtype).size())?;
        Ok(self.new_buf(mem, len, dtype))
    }

    /// [`Self::alloc_buf`] without the zeroing (`Backend::alloc_for_overwrite`).
    pub(super) fn alloc_buf_unzeroed(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        let mem = self.alloc.alloc_unzeroed(len * Elem::of(dtype).size())?;
        Ok(self.new_buf(mem, len, dtype))
    }

    fn new_buf(&mut self, mem: DevMem, len: usize, dtype: DType) -> BufId {
        self.bufs.slots.push(Some(Buffer { mem, len, dtype, shadow: None }));
        BufId(self.bufs.slots.len() - 1)
    }

    pub(super) fn free_buf(&mut self, id: BufId) {
        if let Some(b) = self.bufs.slots.get_mut(id.0).and_then(|s| s.take()) {
            if let Some(s) = b.shadow {
                self.alloc.release(s.mem);
            }
            self.alloc.release(b.mem);
        }
    }

    pub(super) fn sync(&mut self) -> Result<()> {
        self.stream.synchronize().map_err(|e| anyhow!("CUDA error while waiting for the GPU: {e:?}"))
    }

    /// Start of every op: scratch from the previous op can be reused (the
    /// stream orders its kernels before ours).
    pub(super) fn begin(&mut self) -> Result<()> {
        self.scratch_used = 0;
        for m in self.retired.drain(..) {
            self.alloc.release(m);
        }
        self.ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))
    }

    /// `bytes` of scratch device memory, valid until the next op starts.
    pub(super) fn scratch(&mut self, bytes: usize) -> Result<u64> {
        let bytes = bytes.div_ceil(256) * 256;
        let cap = self.scratch.as_ref().map_or(0, |m| m.bytes);
        if self.scratch_used + bytes > cap {
            let new = self.alloc.alloc((2 * cap).max(bytes).max(1 << 20))?;
            if let Some(old) = self.scratch.replace(new) {
                self.retired.push(old); // may still be used by this op's kernels
            }
            self.scratch_used = 0;
        }
        let ptr = self.scratch.as_ref().map(|m| m.ptr).unwrap_or(0) + self.scratch_used as u64;
        self.scratch_used += bytes;
        Ok(ptr)
    }

    pub(super) fn dev(&self, v: View) -> Result<Dev> {
        self.bufs.dev(v)
    }

    /// Resolve an output view and mark its shadow stale.
    pub(super) fn out(&mut self, v: View) -> Result<Dev> {
        let d = self.bufs.dev(v)?;
        if matches!(d.elem, Elem::U32 | Elem::U8) {
            bail!("cuda: a {:?} buffer cannot be the output of a float op", d.elem);
        }
        self.bufs.written(v);
        Ok(d)
    }

    /// Queue kernel `k` (a struct of its arguments, see `kernels::kernel!`).
    pub(super) fn launch<K: Kernel>(&mut self, cfg: LaunchConfig, k: K) -> Result<()> {
        let name = k.name();
        let f = self.kernels.get(K::FILE, name)?;
        if cfg.shared_mem_bytes > 48 * 1024 {
            if cfg.shared_mem_bytes > self.max_smem {
                bail!("{name} needs {} bytes of shared memory, the GPU allows {}", cfg.shared_mem_bytes, self.max_smem);
            }
            use cudarc::driver::sys::CUfunction_attribute as FA;
            f.set_attribute(FA::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cfg.shared_mem_bytes as i32)
                .map_err(|e| anyhow!("{name}: raising shared memory: {e:?}"))?;
        }
        kernels::launch(&self.stream, &f, cfg, &k)
    }

    /// Thread blocks of `block` threads (no dynamic shared memory) that
    /// the whole GPU holds at once for kernel `k`: a persistent grid.
    pub(super) fn resident_blocks<K: Kernel>(&mut self, k: &K, block: u32) -> Result<u32> {
        let f = self.kernels.get(K::FILE, k.name())?;
        let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(block, 0, None).map_err(|e| anyhow!("{}: occupancy query: {e:?}", k.name()))?;
        Ok(per_sm.max(1) * self.sms)
    }

    pub(super) fn grid(&self, n: usize) -> LaunchConfig {
        kernels::grid1d(n, self.sms)
    }

    /// fp32 -> bf16 conversion of `n` elements between raw pointers.
    pub(super) fn convert_to_bf16(&mut self, dst: u64, src: u64, n: usize) -> Result<()> {
        let n4 = if src.is_multiple_of(16) && dst.is_multiple_of(8) { n / 4 } else { 0 };
        if n4 > 0 {
            let cfg = self.grid(n4);
            self.launch(cfg, F32ToBf16Vec4 { out: dst, inp: src, n4: n4 as i64 })?;
        }
        let rest = n - 4 * n4;
        if rest > 0 {
            let (d, s) = (dst + 8 * n4 as u64, src + 16 * n4 as u64);
            let cfg = self.grid(rest);
            self.launch(cfg, Convert { out: d, dto: Elem::Bf16 as i32, inp: s, dti: Elem::F32 as i32, n: rest as i64 })?;
        }
        Ok(())
    }

    /// Device pointer of `v` as bf16, the matmul operand type: bf16 buffers
    /// directly, F32 buffers through their bf16 shadow (made fresh here).
    pub(super) fn bf16_operand(&mut self, v: View) -> Result<u64> {
        let d = self.bufs.dev(v)?;
        match d.elem {
            Elem::Bf16 => return Ok(d.ptr),
            Elem::U32 | Elem::U8 => bail!("cuda: a {:?} buffer cannot be a matmul operand", d.elem),
            Elem::F32 => {}
        }
        let len = self.bufs.get(v.buf)?.len;
        if self.bufs.get(v.buf)?.shadow.is_none() {
            let mem = self.alloc.alloc(len * 2)?;
            self.bufs.get_mut(v.buf)?.shadow = Some(Shadow { mem, fresh: Vec::new() });
        }
        self.sync_shadow(v, d.ptr)
    }

    /// `params_changed`: bring the shadow (if any) of this range up to date.
    /// Ranges the fused optimizer kernels already wrote are fresh and cost
    /// nothing here.
    pub(super) fn refresh_shadow(&mut self, v: View) -> Result<()> {
        self.begin()?;
        let d = self.bufs.dev(v)?;
        if self.bufs.get(v.buf)?.shadow.is_none() {
            return Ok(()); // made on first use as a matmul operand
        }
        self.sync_shadow(v, d.ptr).map(|_| ())
    }

    /// Converts the range into the buffer's shadow unless it is fresh;
    /// returns the shadow pointer of the range.
    fn sync_shadow(&mut self, v: View, f32_ptr: u64) -> Result<u64> {
        let sh = self.bufs.get(v.buf)?.shadow.as_ref().expect("caller checked the shadow exists");
        let sptr = sh.mem.ptr + 2 * v.off as u64;
        if !sh.is_fresh(v.off, v.len) {
            self.convert_to_bf16(sptr, f32_ptr, v.len)?;
            if let Some(s) = self.bufs.get_mut(v.buf)?.shadow.as_mut() {
                s.mark_fresh(v.off, v.len);
            }
        }
        Ok(sptr)
    }

    /// Shadow pointer of a range about to be written by the AdamW kernel
    /// (null if the buffer has none); the range counts as fresh afterwards.
    pub(super) fn shadow_for_write(&mut self, v: View) -> Result<u64> {
        match self.bufs.get_mut(v.buf)?.shadow.as_mut() {
            Some(s) => {
                s.mark_fresh(v.off, v.len);
                Ok(s.mem.ptr + 2 * v.off as u64)
            }
            None => Ok(0),
        }
    }
}

/// A view resolved for the communicator (dist::nccl): device address of its
/// first element, bytes per stored element, and the buffer's storage class
/// (`Compute` is bf16 here).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawView {
    pub ptr: u64,
    pub elem_bytes: usize,
    pub dtype: DType,
}

/// Accessors for dist::nccl, which passes raw pointers to NCCL on our stream.
impl CudaBackend {
    /// Make this backend's context current on the calling thread (NCCL
    /// picks its device from it).
    pub(crate) fn comm_bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))
    }

    /// The compute stream; collectives queued on it are ordered with every op.
    pub(crate) fn comm_stream(&self) -> Arc<CudaStream> {
        self.stream.clone()
    }

    /// A view NCCL reads (checked to lie inside its buffer).
    pub(crate) fn comm_read(&self, v: View) -> Result<RawView> {
        let d = self.bufs.dev(v)?;
        Ok(RawView { ptr: d.ptr, elem_bytes: d.elem.size(), dtype: self.bufs.get(v.buf)?.dtype })
    }

    /// A view NCCL writes: the range's bf16 shadow (if any) goes stale.
    pub(crate) fn comm_write(&mut self, v: View) -> Result<RawView> {
        let r = self.comm_read(v)?;
        self.bufs.written(v);
        Ok(r)
    }
}
