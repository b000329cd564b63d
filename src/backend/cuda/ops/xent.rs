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
    /// bf16 logits (and gradient), 8 values per load; reads the row twice.
    struct XentBf16x8(FILE, xent_bf16x8_k) { losses: u64, dtl: i32, dlogits: u64, logits: u64, targets: u64, v: i64, classes: i64, grad_scale: f32 }
    /// bf16 rows held in registers (read once): up to 4 or 8 16-byte
    /// chunks per thread, a row per CTA or per cluster of 2 or 4 CTAs.
    struct XentRows(FILE, XentRowsKernel { Nch4: xent_rows4_k1, Nch8: xent_rows8_k1, Nch8Pair: xent_rows8_k2, Nch8Quad: xent_rows8_k4 }) {
        losses: u64, dtl: i32, dlogits: u64, logits: u64, targets: u64, v: i64, classes: i64, grad_scale: f32,
    }
}

/// How `xent_rows*` covers a row of `v` bf16: the kernel, the CTAs per row
/// (its cluster size) and the threads per CTA.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RowsPlan {
    kernel: XentRowsKernel,
    ctas: usize,
    threads: usize,
}

/// The register-resident variant for rows of `v` bf16 (v % 8 == 0), or
/// None (wider than 4 CTAs hold, or than one CTA without clusters, which
/// need cc 9.0): the first of 4 chunks per thread, 8 per thread, 8 per
/// thread over a cluster of 2 CTAs, then of 4, whose CTAs of at most 1024
/// threads hold the row's v / 8 chunks; threads per CTA are as few as hold
/// them (a multiple of 32). 8 chunks (32 registers) is the most a thread
/// keeps within the 64 registers that 1024 threads can have. GPT-2's 50304
/// -> 8 chunks x 800 threads; Llama 3's 128256 -> 8 x 1024 x 2 CTAs.
fn rows_plan(v: usize, clusters: bool) -> Option<RowsPlan> {
    use XentRowsKernel::*;
    let chunks = v / 8;
    [(Nch4, 4, 1), (Nch8, 8, 1), (Nch8Pair, 8, 2), (Nch8Quad, 8, 4)].into_iter().filter(|&(_, _, ctas)| ctas == 1 || clusters).find_map(|(kernel, nch, ctas)| {
        let threads = chunks.div_ceil(nch * ctas).next_multiple_of(32);
        (threads <= 1024).then_some(RowsPlan { kernel, ctas, threads })
    })
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
        let (gp, gd) = g.map_or((0, 0), |g| (g.ptr, g.dt()));
        let (v64, classes64) = (v as i64, classes as i64);
        let wide = x.is_bf16x8() && v.is_multiple_of(8) && g.is_none_or(|g| g.is_bf16x8());
        if let Some(p) = rows_plan(v, self.cc.0 >= 9).filter(|_| wide) {
            let cfg = LaunchConfig { grid_dim: ((n * p.ctas) as u32, 1, 1), block_dim: (p.threads as u32, 1, 1), shared_mem_bytes: 0 };
            let k = XentRows { kernel: p.kernel, losses: lo.ptr, dtl: lo.dt(), dlogits: gp, logits: x.ptr, targets: t.ptr, v: v64, classes: classes64, grad_scale };
            return self.launch(cfg, k);
        }
        // Enough threads per row to stream V once; 1024 for GPT-2's 50257.
        let threads = v.div_ceil(32).clamp(1, 32) as u32 * 32;
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        if wide {
            let k = XentBf16x8 { losses: lo.ptr, dtl: lo.dt(), dlogits: gp, logits: x.ptr, targets: t.ptr, v: v64, classes: classes64, grad_scale };
            return self.launch(cfg, k);
        }
        let k = Xent { losses: lo.ptr, dtl: lo.dt(), dlogits: gp, dtd: gd, logits: x.ptr, dtx: x.dt(), targets: t.ptr, v: v64, classes: classes64, grad_scale };
        self.launch(cfg, k)
    }
}

#[cfg(test)]
mod tests {
    use super::XentRowsKernel::*;
    use super::{rows_plan, RowsPlan};

    #[test]
    fn rows_plan_picks_the_smallest_variant_that_holds_the_row() {
        let plan = |v, clusters| rows_plan(v, clusters).map(|p: RowsPlan| (p.kernel, p.ctas, p.threads));
        assert_eq!(plan(1000, true), Some((Nch4, 1, 32)));
        assert_eq!(plan(32768, true), Some((Nch4, 1, 1024)));
        assert_eq!(plan(50304, true), Some((Nch8, 1, 800)));
        assert_eq!(plan(65536, false), Some((Nch8, 1, 1024)));
        assert_eq!(plan(65544, false), None);
        assert_eq!(plan(65544, true), Some((Nch8Pair, 2, 544)));
        assert_eq!(plan(128256, true), Some((Nch8Pair, 2, 1024)));
        assert_eq!(plan(8 * 8 * 1024 * 4, true), Some((Nch8Quad, 4, 1024)));
        assert_eq!(plan(8 * 8 * 1024 * 4 + 8, true), None);
    }
}
