//! Blockwise 8-bit AdamW (bitsandbytes semantics): F32 params (and their
//! bf16 shadow), U8 state codes with one F32 absmax per block. The kernel
//! uses round-to-nearest fp32 intrinsics in the CPU's operation order (no
//! FMA contraction), so results match the CPU reference bit for bit.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::Elem;
use super::adamw::{adam_args, AdamArgs};
use crate::backend::{AdamWArgs, View, QUANT_BLOCK};
use crate::optim::quant_map;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "adamw8bit", source: include_str!("adamw8bit.cu") };

kernel! {
    /// One warp per state block, 8 warps per thread block (grid-strided);
    /// `aligned`: the views allow the 4-element vector path.
    struct Adamw8bit(FILE, adamw8bit_k) {
        p: u64, g: u64, dtg: i32, mc: u64, vc: u64, mabs: u64, vabs: u64, shadow: u64, maps: u64, n: i64, a: AdamArgs, decay: f32, aligned: i32,
    }
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn adamw8bit(&mut self, params: View, grads: View, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, a: AdamWArgs) -> Result<()> {
        self.begin()?;
        let n = params.len;
        ensure!(grads.len == n && m_codes.len == n && v_codes.len == n, "adamw8bit: params/grads/m_codes/v_codes lengths differ");
        let blocks = n.div_ceil(QUANT_BLOCK);
        ensure!(m_absmax.len == blocks && v_absmax.len == blocks, "adamw8bit: absmax views need {blocks} values (one per {QUANT_BLOCK}-element block)");
        ensure!(a.step >= 1, "adamw8bit: step is 1-based, got 0");
        let overlap = m_codes.buf == v_codes.buf && m_codes.off < v_codes.off + n && v_codes.off < m_codes.off + n;
        ensure!(n == 0 || !overlap, "adamw8bit: m_codes {m_codes:?} overlaps v_codes {v_codes:?}");
        let (g, mc, vc) = (self.dev(grads)?, self.dev(m_codes)?, self.dev(v_codes)?);
        ensure!(mc.elem == Elem::U8 && vc.elem == Elem::U8, "adamw8bit: m_codes and v_codes must be U8 buffers");
        let ma = self.f32_out(m_absmax, "adamw8bit: m_absmax")?;
        let va = self.f32_out(v_absmax, "adamw8bit: v_absmax")?;
        let (p, shadow) = self.params_and_shadow(params, "adamw8bit")?;
        if n == 0 {
            return Ok(());
        }
        let maps = self.quant_maps_ptr()?;
        let decay = 1.0 - a.lr * a.weight_decay; // f32, as the CPU computes it
        // One warp per quant block, 8 per thread block (adamw8bit.cu's WARPS);
        // enough thread blocks to fill the GPU, the kernel strides over the rest.
        const WARPS: usize = 8;
        let grid = blocks.div_ceil(WARPS).min(self.sms as usize * 16) as u32;
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (32 * WARPS as u32, 1, 1), shared_mem_bytes: 0 };
        // The vector path reads 4 elements at once: 16-byte params and fp32
        // grads, 8-byte bf16 grads and shadow, 4-byte code words.
        let g_aligned = match g.elem {
            Elem::F32 => g.ptr % 16 == 0,
            Elem::Bf16 => g.ptr % 8 == 0,
            _ => false, // other gradient types: the scalar path's general load
        };
        let aligned = p.ptr % 16 == 0 && g_aligned && mc.ptr % 4 == 0 && vc.ptr % 4 == 0 && shadow % 8 == 0;
        let k = Adamw8bit { p: p.ptr, g: g.ptr, dtg: g.dt(), mc: mc.ptr, vc: vc.ptr, mabs: ma.ptr, vabs: va.ptr, shadow, maps, n: n as i64, a: adam_args(&a), decay, aligned: aligned as i32 };
        self.launch(cfg, k)
    }

    /// Device copy of the two dynamic maps and their decision thresholds
    /// (layout documented in adamw8bit.cu), uploaded once. The thresholds
    /// are the CPU's own f32 values, so code choices match it exactly.
    fn quant_maps_ptr(&mut self) -> Result<u64> {
        if let Some(m) = &self.quant_maps {
            return Ok(m.ptr);
        }
        // Padding slots (255, 511 of the threshold halves) are never read.
        let mut host = vec![f32::INFINITY; 1024];
        host[..256].copy_from_slice(quant_map::signed());
        host[256..512].copy_from_slice(quant_map::unsigned());
        host[512..767].copy_from_slice(quant_map::signed_thresholds());
        host[768..1023].copy_from_slice(quant_map::unsigned_thresholds());
        let mem = self.alloc.alloc(4 * host.len())?;
        let ptr = mem.ptr;
        self.quant_maps = Some(mem);
        self.htod(ptr, &host)?;
        Ok(ptr)
    }
}
