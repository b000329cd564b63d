//! Fused softmax cross-entropy: per-row loss and, optionally, the logits'
//! gradient in one pass (probabilities are never stored).

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::Elem;
use crate::backend::View;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "xent", source: include_str!("xent.cu") };

kernel! {
    /// One block per row; `dlogits` 0 = loss only.
    struct Xent(FILE, xent_k) {
        losses: u64, dtl: i32, dlogits: u64, dtd: i32, logits: u64, dtx: i32, targets: u64, v: i64, classes: i64, grad_scale: f32,
    }
    /// bf16 logits (and gradient), 8 values per load.
    struct XentBf16x8(FILE, xent_bf16x8_k) { losses: u64, dtl: i32, dlogits: u64, logits: u64, targets: u64, v: i64, classes: i64, grad_scale: f32 }
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn softmax_xent(&mut self, losses: View, dlogits: Option<View>, logits: View, targets: View, n: usize, v: usize, classes: usize, grad_scale: f32) -> Result<()> {
        self.begin()?;
        ensure!((1..=v).contains(&classes), "softmax_xent: classes = {classes} must be in 1..=v (v = {v})");
        ensure!(logits.len == n * v && losses.len == n && targets.len == n, "softmax_xent: views do not match n={n} v={v}");
        let (x, t) = (self.dev(logits)?, self.dev(targets)?);
        ensure!(t.elem == Elem::U32, "softmax_xent: targets must be a U32 buffer");
        let g = match dlogits {
            Some(dv) => {
                ensure!(dv.len == n * v, "softmax_xent: dlogits has {} values, needs n*v", dv.len);
                let overlaps = dv.buf == logits.buf && dv.off < logits.off + logits.len && logits.off < dv.off + dv.len;
                ensure!(!overlaps || dv.off == logits.off, "softmax_xent: dlogits must be logits itself or disjoint from it");
                Some(self.out(dv)?)
            }
            None => None,
        };
        let lo = self.out(losses)?;
        if n == 0 {
            return Ok(());
        }
        // Enough threads per row to stream V once; 1024 for GPT-2's 50257.
        let threads = v.div_ceil(32).clamp(1, 32) as u32 * 32;
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let (gp, gd) = g.map_or((0, 0), |g| (g.ptr, g.dt()));
        let (v64, classes64) = (v as i64, classes as i64);
        let wide = x.is_bf16x8() && v.is_multiple_of(8) && g.is_none_or(|g| g.is_bf16x8());
        if wide {
            let k = XentBf16x8 { losses: lo.ptr, dtl: lo.dt(), dlogits: gp, logits: x.ptr, targets: t.ptr, v: v64, classes: classes64, grad_scale };
            return self.launch(cfg, k);
        }
        let k = Xent { losses: lo.ptr, dtl: lo.dt(), dlogits: gp, dtd: gd, logits: x.ptr, dtx: x.dt(), targets: t.ptr, v: v64, classes: classes64, grad_scale };
        self.launch(cfg, k)
    }
}
