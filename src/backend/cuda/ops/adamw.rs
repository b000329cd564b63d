//! Loss and optimizer: fused softmax cross-entropy, fused AdamW.

use super::super::device::CudaBackend;
use super::super::kernels::AdamArgs;
use super::super::kernels::KArg::{Adam, F, I, L, P};
use super::super::memory::Elem;
use crate::backend::{AdamSegment, AdamWArgs, BufId, View};
use anyhow::{bail, ensure, Result};
use cudarc::driver::LaunchConfig;

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn softmax_xent_op(&mut self, losses: View, dlogits: Option<View>, logits: View, targets: View, (n, v, classes): (usize, usize, usize), grad_scale: f32) -> Result<()> {
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
        let wide = x.is_bf16x8() && v.is_multiple_of(8) && g.is_none_or(|g| g.is_bf16x8());
        if wide {
            let args = [P(lo.ptr), I(lo.dt()), P(gp), P(x.ptr), P(t.ptr), L(v as i64), L(classes as i64), F(grad_scale)];
            return self.launch("xent", "xent_bf16x8_k", cfg, &args);
        }
        let args = [P(lo.ptr), I(lo.dt()), P(gp), I(gd), P(x.ptr), I(x.dt()), P(t.ptr), L(v as i64), L(classes as i64), F(grad_scale)];
        self.launch("xent", "xent_k", cfg, &args)
    }

    pub(in crate::backend::cuda) fn adamw_op(&mut self, params: View, grads: View, m: View, v: View, a: AdamWArgs) -> Result<()> {
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
        let aligned = [p.ptr, g.ptr, md.ptr, vd.ptr].iter().all(|x| x % 16 == 0) && shadow % 8 == 0;
        let n4 = if aligned && g.elem == Elem::F32 { n / 4 } else { 0 };
        if n4 > 0 {
            let cfg = self.grid(n4);
            self.launch("adamw", "adamw_vec4_k", cfg, &[P(p.ptr), P(g.ptr), P(md.ptr), P(vd.ptr), P(shadow), L(n4 as i64), Adam(args)])?;
        }
        let done = 4 * n4 as u64;
        if (done as usize) < n {
            let rest = n - done as usize;
            let sh = if shadow == 0 { 0 } else { shadow + 2 * done };
            let gs = g.ptr + done * g.elem.size() as u64;
            let cfg = self.grid(rest);
            let kargs = [P(p.ptr + 4 * done), P(gs), I(g.dt()), P(md.ptr + 4 * done), P(vd.ptr + 4 * done), P(sh), L(rest as i64), Adam(args)];
            self.launch("adamw", "adamw_k", cfg, &kargs)?;
        }
        Ok(())
    }
}

impl CudaBackend {
    /// AdamW over many segments in one launch when every segment is
    /// float4-aligned (always, for our layouts: tensor sizes are multiples
    /// of 4), else one `adamw_op` per segment.
    pub(in crate::backend::cuda) fn adamw_segments_op(&mut self, params: BufId, grads: BufId, m: View, v: View, segs: &[AdamSegment], a: AdamWArgs) -> Result<()> {
        self.begin()?;
        let whole = |s: &Self, buf| -> Result<View> { Ok(View { buf, off: 0, len: s.bufs.get(buf)?.len }) };
        let (pv, gv) = (whole(self, params)?, whole(self, grads)?);
        let (p, g) = (self.dev(pv)?, self.dev(gv)?);
        let (md, vd) = (self.out(m)?, self.out(v)?);
        let four = |x: usize| x.is_multiple_of(4);
        let aligned = [p.ptr, g.ptr, md.ptr, vd.ptr].iter().all(|x| x % 16 == 0)
            && [p.elem, g.elem, md.elem, vd.elem].iter().all(|e| *e == Elem::F32)
            && segs.iter().all(|s| four(s.param_off) && four(s.state_off) && four(s.len) && s.param_off + s.len <= pv.len && s.state_off + s.len <= m.len.min(v.len));
        if !aligned || segs.is_empty() {
            for s in segs {
                let [p, g, sm, sv] = s.views(params, grads, m, v);
                self.adamw_op(p, g, sm, sv, AdamWArgs { weight_decay: s.weight_decay, ..a })?;
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
        let args = [P(p.ptr), P(g.ptr), P(md.ptr), P(vd.ptr), P(shadow), P(table), I(segs.len() as i32), L(total4 as i64), Adam(adam_args(&a))];
        self.launch("adamw", "adamw_segments_vec4_k", cfg, &args)
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
        if let Some((_, mem)) = self.adam_tables.iter().find(|(k, _)| *k == host) {
            return Ok((mem.ptr, start4));
        }
        let mem = self.alloc.alloc(8 * host.len())?;
        let ptr = mem.ptr;
        self.htod(ptr, &host)?;
        self.adam_tables.push((host, mem));
        Ok((ptr, start4))
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
