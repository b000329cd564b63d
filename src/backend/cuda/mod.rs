//! CUDA backend: bf16 activations, fp32 master weights/grads/optimizer
//! state, cuBLASLt matmuls, NVRTC-compiled kernels (ops/*.cu).
//!
//! Libraries (libcuda, libnvrtc, libcublasLt) are loaded at run time, so a
//! machine without CUDA still builds this code; `CudaBackend::new` returns
//! an error saying what is missing instead of panicking.
//!
//! Ops are queued on one stream; host-visible results (download,
//! sum_squares) synchronize; `streams` adds the side stream and events
//! the NCCL communicator overlaps on, `host_memory` the copy stream and
//! page-locked memory of the offload, `weights` the fp32 view of bf16
//! weights for the norm kernels. Files: `device` (setup, memory, shadows,
//! scratch), `ops/` (each op's launcher beside its kernels), `matmul`
//! (cuBLASLt), `compiler`/`kernels` (NVRTC, typed launches), `loader`
//! (library probing).

mod compiler;
mod device;
mod kernels;
mod loader;
mod matmul;
mod host_memory;
mod memory;
mod ops;
mod streams;
mod weights;

pub use compiler::compile_all as compile_all_kernels;
pub use device::CudaBackend;
/// For dist::nccl (raw device pointers of views).
pub(crate) use device::RawView;
/// For dist::nccl (the communicator's stream and its events).
pub(crate) use streams::{event_done, record, stream_waits};

pub use ops::attention::{AttnBackward, AttnForward, DEFAULT_BACKWARD as DEFAULT_ATTENTION_BACKWARD, DEFAULT_FORWARD as DEFAULT_ATTENTION_FORWARD, HEAD_DIMS, MAX_HEAD_DIM};

/// Whether the CUDA attention kernels implement this head size (any up to
/// [`MAX_HEAD_DIM`]; the tensor-core paths take [`HEAD_DIMS`]).
pub fn supports_head_dim(d: usize) -> bool {
    (1..=MAX_HEAD_DIM).contains(&d)
}

use crate::backend::{backend_ops, Adam8Segment, AdamSegment, AdamWArgs, AttnShape, Backend, BufId, DType, LionArgs, Mark, PrecondArgs, Rope, SignArgs, View};
use anyhow::Result;

/// Forwards every op of `backend_ops!` to the `CudaBackend` method of the
/// same name (ops/<op>.rs). Inherent methods take precedence over trait
/// methods, so `CudaBackend::$name` is the op's own; should one be missing,
/// the call would name this trait method itself, which the
/// `unconditional_recursion` lint turns into a compile error.
macro_rules! forward_to_ops {
    ($( $(#[$m:meta])* fn $name:ident(&mut $s:ident $(, $a:ident : $t:ty)* $(,)?) -> $r:ty $(= $body:block)? ; )*) => {
        $(
            #[allow(clippy::too_many_arguments)]
            #[deny(unconditional_recursion)]
            fn $name(&mut $s $(, $a: $t)*) -> $r {
                CudaBackend::$name($s $(, $a)*)
            }
        )*
    };
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }
    /// e.g. "NVIDIA H200".
    fn device_name(&self) -> String {
        self.device_name.clone()
    }
    fn alloc(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        self.alloc_buf(len, dtype)
    }
    fn alloc_for_overwrite(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        self.alloc_buf_unzeroed(len, dtype)
    }
    fn free(&mut self, buf: BufId) {
        self.free_buf(buf)
    }
    fn synchronize(&mut self) -> Result<()> {
        self.sync()
    }
    fn peak_memory_bytes(&self) -> u64 {
        self.alloc.bytes_peak
    }
    fn live_memory_bytes(&self) -> u64 {
        self.alloc.bytes_now
    }
    fn mark(&mut self) -> Result<Mark> {
        self.record_mark()
    }
    fn elapsed_ms(&mut self, from: Mark, to: Mark) -> Result<f64> {
        self.mark_elapsed_ms(from, to)
    }
    fn clear_marks(&mut self) {
        self.marks.clear();
    }
    fn compute_is_bf16(&self) -> bool {
        true
    }
    unsafe fn pin_host(&mut self, ptr: *const u8, bytes: usize) -> Result<bool> {
        self.pin_host_op(ptr, bytes)
    }
    unsafe fn unpin_host(&mut self, ptr: *const u8) {
        self.unpin_host_op(ptr)
    }
    unsafe fn download_start(&mut self, src: View, dst: &mut [f32]) -> Result<crate::backend::CopyTicket> {
        self.download_start_op(src, dst)
    }
    unsafe fn upload_start(&mut self, dst: View, src: crate::backend::HostSrc<'_>) -> Result<crate::backend::CopyTicket> {
        self.upload_start_op(dst, src)
    }
    fn copy_wait(&mut self, t: crate::backend::CopyTicket) -> Result<()> {
        self.copy_wait_op(t)
    }

    backend_ops!(forward_to_ops);
}
