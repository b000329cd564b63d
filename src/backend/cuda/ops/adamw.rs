//! Fused AdamW (PyTorch semantics) over a flat range, or over many
//! segments of one parameter buffer in one launch; the kernels also write
//! the parameters' bf16 shadow.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::Elem;
use crate::backend::{AdamSegment, AdamWArgs, BufId, View};
use anyhow::{bail, ensure, Result};
use cudarc::driver::DeviceRepr;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "adamw", source: include_str!("adamw.cu") };

/// Mirrors `AdamArgs` in adamw.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(in crate::backend::cuda) struct AdamArgs {
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

kernel! {
    /// Any gradient dtype; `shadow` 0 = none.
    struct Adamw(FILE, adamw_k) { p: u64, g: u64, dtg: i32, m: u64, v: u64, shadow: u64, n: i64, a: AdamArgs }
    /// F32 and 16-byte aligned: float4 loads.
    struct AdamwVec4(FILE, adamw_vec4_k) { p: u64, g: u64, m: u64, v: u64, shadow: u64, n4: i64, a: AdamArgs }
    /// Every segment of a table (`AdamSeg` in adamw.cu), float4 units.
    struct AdamwSegmentsVec4(FILE, adamw_segments_vec4_k) { p: u64, g: u64, m: u64, v: u64, shadow: u64, segs: u64, nseg: i32, total4: i64, a: AdamArgs }
    /// [`AdamwVec4`] with bf16 gradients, 8-byte aligned.
    struct AdamwVec4Bf16g(FILE, adamw_vec4_bf16g_k) { p: u64, g: u64, m: u64, v: u64, shadow: u64, n4: i64, a: AdamArgs }
    /// [`AdamwSegmentsVec4`] with bf16 gradients.
    struct AdamwSegmentsVec4Bf16g(FILE, adamw_segments_vec4_bf16g_k) { p: u64, g: u64, m: u64, v: u64, shadow: u64, segs: u64, nseg: i32, total4: i64, a: AdamArgs }
}

/// Whether a gradient buffer at `ptr` of `elem` allows the 4-wide kernels
/// (fp32: 16-byte, bf16: 8-byte aligned).
fn grads_vec4(elem: Elem, ptr: u64) -> bool {
    match elem {
        Elem::F32 => ptr.is_multiple_of(16),
        Elem::Bf16 => ptr.is_multiple_of(8),
        _ => false,
    }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn adamw(&mut self, params: View, grads: View, m: View, v: View, a: AdamWArgs) -> Result<()> {
        self.begin()?;
        let n = params.len;
        ensure!(grads.len == n && m.len == n && v.len == n, "adamw: params, grads, m, v lengths differ");
        let g = self.dev(grads)?;
        let (p, md, vd) = (self.dev(params)?, self.out(m)?, self.out(v)?);
        if p.elem != Elem::F32 || md.elem != Elem::F32 || vd.elem != Elem::F32 {
            bail!("adamw: params, m and v must be F32 buffers (fp32 master weights and state)");
        }
        let shadow = self.shadow_for_write(params)?;
        let args = adam_args(&a);
        let aligned = [p.ptr, md.ptr, vd.ptr].iter().all(|x| x % 16 == 0) && shadow % 8 == 0 && grads_vec4(g.elem, g.ptr);
        let n4 = if aligned { n / 4 } else { 0 };
        if n4 > 0 {
            let cfg = self.grid(n4);
            if g.elem == Elem::Bf16 {
                self.launch(cfg, AdamwVec4Bf16g { p: p.ptr, g: g.ptr, m: md.ptr, v: vd.ptr, shadow, n4: n4 as i64, a: args })?;
            } else {
                self.launch(cfg, AdamwVec4 { p: p.ptr, g: g.ptr, m: md.ptr, v: vd.ptr, shadow, n4: n4 as i64, a: args })?;
            }
        }
        let done = 4 * n4 as u64;
        if (done as usize) < n {
            let rest = n - done as usize;
            let sh = if shadow == 0 { 0 } else { shadow + 2 * done };
            let gs = g.ptr + done * g.elem.size() as u64;
            let cfg = self.grid(rest);
            let k = Adamw { p: p.ptr + 4 * done, g: gs, dtg: g.dt(), m: md.ptr + 4 * done, v: vd.ptr + 4 * done, shadow: sh, n: rest as i64, a: args };
            self.launch(cfg, k)?;
        }
        Ok(())
    }

    /// AdamW over many segments in one launch when every segment is
    /// float4-aligned (always, for our layouts: tensor sizes are multiples
    /// of 4), else one `adamw` per segment.
    pub(in crate::backend::cuda) fn adamw_segments(&mut self, params: BufId, grads: BufId, m: View, v: View, segs: &[AdamSegment], a: AdamWArgs) -> Result<()> {
        self.begin()?;
        let whole = |s: &Self, buf| -> Result<View> { Ok(View { buf, off: 0, len: s.bufs.get(buf)?.len }) };
        let (pv, gv) = (whole(self, params)?, whole(self, grads)?);
        let (p, g) = (self.dev(pv)?, self.dev(gv)?);
        let (md, vd) = (self.out(m)?, self.out(v)?);
        let four = |x: usize| x.is_multiple_of(4);
        // (Offsets are multiples of 4: bf16 gradients stay 8-byte aligned.)
        let aligned = [p.ptr, md.ptr, vd.ptr].iter().all(|x| x % 16 == 0)
            && [p.elem, md.elem, vd.elem].iter().all(|e| *e == Elem::F32)
            && grads_vec4(g.elem, g.ptr)
            && segs.iter().all(|s| four(s.param_off) && four(s.state_off) && four(s.len) && s.param_off + s.len <= pv.len && s.state_off + s.len <= m.len.min(v.len));
        if !aligned || segs.is_empty() {
            for s in segs {
                let [p, g, sm, sv] = s.views(params, grads, m, v);
                self.adamw(p, g, sm, sv, AdamWArgs { weight_decay: s.weight_decay, ..a })?;
            }
            return Ok(());
        }
        // The kernel writes the shadow of every segment: those ranges are fresh.
        let mut shadow = 0;
        for s in segs {
            let sp = self.shadow_for_write(View { buf: params, off: s.param_off, len: s.len })?;
            shadow = if sp == 0 { 0 } else { sp - 2 * s.param_off as u64 };
        }
        let (table, total4) = self.adam_segment_table(segs)?;
        let cfg = self.grid(total4);
        let (nseg, total4, a) = (segs.len() as i32, total4 as i64, adam_args(&a));
        if g.elem == Elem::Bf16 {
            return self.launch(cfg, AdamwSegmentsVec4Bf16g { p: p.ptr, g: g.ptr, m: md.ptr, v: vd.ptr, shadow, segs: table, nseg, total4, a });
        }
        self.launch(cfg, AdamwSegmentsVec4 { p: p.ptr, g: g.ptr, m: md.ptr, v: vd.ptr, shadow, segs: table, nseg, total4, a })
    }

    /// Device copy of a segment table (`AdamSeg` in adamw.cu), uploaded on
    /// first use and kept: an optimizer passes the same table every step.
    fn adam_segment_table(&mut self, segs: &[AdamSegment]) -> Result<(u64, usize)> {
        let mut host: Vec<i64> = Vec::with_capacity(4 * segs.len());
        let mut start4 = 0;
        for s in segs {
            host.extend([(s.param_off / 4) as i64, (s.state_off / 4) as i64, start4 as i64, s.weight_decay.to_bits() as i64]);
            start4 += s.len / 4;
        }
        Ok((self.device_table(host)?, start4))
    }

    /// Device copy of a table of i64 words (an optimizer's segments),
    /// uploaded on first use and kept by content: an optimizer passes the
    /// same table every step.
    pub(in crate::backend::cuda) fn device_table(&mut self, host: Vec<i64>) -> Result<u64> {
        if let Some((_, mem)) = self.adam_tables.iter().find(|(k, _)| *k == host) {
            return Ok(mem.ptr);
        }
        let mem = self.alloc.alloc(8 * host.len())?;
        let ptr = mem.ptr;
        self.htod(ptr, &host)?;
        self.adam_tables.push((host, mem));
        Ok(ptr)
    }
}

/// Kernel arguments of an AdamW step; bias corrections in f64 like the CPU.
pub(in crate::backend::cuda) fn adam_args(a: &AdamWArgs) -> AdamArgs {
    let t = a.step.max(1) as f64;
    AdamArgs {
        lr: a.lr,
        b1: a.beta1,
        b2: a.beta2,
        eps: a.eps,
        wd: a.weight_decay,
        grad_scale: a.grad_scale,
        step_size: (a.lr as f64 / (1.0 - (a.beta1 as f64).powf(t))) as f32,
        sqrt_bc2: (1.0 - (a.beta2 as f64).powf(t)).sqrt() as f32,
    }
}
