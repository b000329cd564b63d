//! Optimizer steps beyond AdamW: Lion, sign descent, the RMS preconditioner
//! of APOLLO/COSMOS and blockwise 8-bit AdamW. Params and state are F32.
//! The kernels use round-to-nearest fp32 intrinsics in the CPU's operation
//! order (no FMA contraction), so results match the CPU reference bit for
//! bit. Kernels that update params also write their bf16 shadow (when the
//! buffer has one), like the fused AdamW.

use super::super::device::CudaBackend;
use super::super::kernels::KArg::{Adam, F, I, L, P};
use super::super::memory::{Dev, Elem};
use super::axpby::{at, shadow_at, vec4_groups};
use super::adamw::adam_args;
use crate::backend::{AdamWArgs, LionArgs, PrecondArgs, SignArgs, View, QUANT_BLOCK};
use crate::optim::quant_map;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

impl CudaBackend {
    /// Resolve an F32 view an optimizer kernel writes (shadow goes stale).
    fn f32_out(&mut self, v: View, what: &str) -> Result<Dev> {
        let d = self.out(v)?;
        ensure!(d.elem == Elem::F32, "{what} must be an F32 buffer (fp32 master weights / optimizer state), got {:?}", d.elem);
        Ok(d)
    }

    /// Resolve F32 params and their shadow pointer (0 = none); the kernel
    /// rewrites the shadow, so the range counts as fresh afterwards.
    fn params_and_shadow(&mut self, params: View, op: &str) -> Result<(Dev, u64)> {
        let p = self.dev(params)?;
        ensure!(p.elem == Elem::F32, "{op}: params must be an F32 buffer (fp32 master weights), got {:?}", p.elem);
        Ok((p, self.shadow_for_write(params)?))
    }

    pub(in crate::backend::cuda) fn lion_op(&mut self, params: View, grads: View, m: View, a: LionArgs) -> Result<()> {
        self.begin()?;
        let n = params.len;
        ensure!(grads.len == n && m.len == n, "lion: params/grads/m lengths differ");
        let g = self.dev(grads)?;
        let md = self.f32_out(m, "lion: m")?;
        let (p, shadow) = self.params_and_shadow(params, "lion")?;
        // f32, exactly as the CPU computes it.
        let decay = 1.0 - a.lr * a.weight_decay;
        let hp = [F(a.lr), F(a.beta1), F(a.beta2), F(decay), F(a.grad_scale)];
        let n4 = vec4_groups(n, &[p, g, md], shadow);
        if n4 > 0 {
            let cfg = self.grid(n4);
            let args = [&[P(p.ptr), P(g.ptr), P(md.ptr), P(shadow), L(n4 as i64)][..], &hp].concat();
            self.launch("lion", "lion_vec4_k", cfg, &args)?;
        }
        let done = 4 * n4;
        if done < n {
            let cfg = self.grid(n - done);
            let head = [P(at(p, done)), P(at(g, done)), I(g.dt()), P(at(md, done)), P(shadow_at(shadow, done)), L((n - done) as i64)];
            self.launch("lion", "lion_k", cfg, &[&head[..], &hp].concat())?;
        }
        Ok(())
    }

    pub(in crate::backend::cuda) fn sign_descent_op(&mut self, params: View, grads: View, a: SignArgs) -> Result<()> {
        self.begin()?;
        let n = params.len;
        ensure!(grads.len == n, "sign_descent: params/grads lengths differ");
        let g = self.dev(grads)?;
        let (p, shadow) = self.params_and_shadow(params, "sign_descent")?;
        let decay = 1.0 - a.lr * a.weight_decay;
        let hp = [F(a.lr), F(decay), F(a.grad_scale)];
        let n4 = vec4_groups(n, &[p, g], shadow);
        if n4 > 0 {
            let cfg = self.grid(n4);
            let args = [&[P(p.ptr), P(g.ptr), P(shadow), L(n4 as i64)][..], &hp].concat();
            self.launch("sign_descent", "sign_descent_vec4_k", cfg, &args)?;
        }
        let done = 4 * n4;
        if done < n {
            let cfg = self.grid(n - done);
            let head = [P(at(p, done)), P(at(g, done)), I(g.dt()), P(shadow_at(shadow, done)), L((n - done) as i64)];
            self.launch("sign_descent", "sign_descent_k", cfg, &[&head[..], &hp].concat())?;
        }
        Ok(())
    }

    pub(in crate::backend::cuda) fn rms_precondition_op(&mut self, out: View, num: View, v: View, grads: View, a: PrecondArgs) -> Result<()> {
        self.begin()?;
        let n = out.len;
        ensure!(num.len == n && v.len == n && grads.len == n, "rms_precondition: out/num/v/grads lengths differ");
        ensure!(!a.bias_correction || a.step >= 1, "rms_precondition: step is 1-based, got 0");
        let (nd, g) = (self.dev(num)?, self.dev(grads)?);
        let vd = self.f32_out(v, "rms_precondition: v")?;
        let o = self.f32_out(out, "rms_precondition: out")?;
        let hp = [F(a.beta2), F(a.eps), F(a.bc2_sqrt()), F(a.grad_scale)];
        let n4 = vec4_groups(n, &[o, nd, vd, g], 0);
        if n4 > 0 {
            let cfg = self.grid(n4);
            let args = [&[P(o.ptr), P(nd.ptr), P(vd.ptr), P(g.ptr), L(n4 as i64)][..], &hp].concat();
            self.launch("precondition", "rms_precondition_vec4_k", cfg, &args)?;
        }
        let done = 4 * n4;
        if done < n {
            let cfg = self.grid(n - done);
            let head = [P(at(o, done)), P(at(nd, done)), I(nd.dt()), P(at(vd, done)), P(at(g, done)), I(g.dt()), L((n - done) as i64)];
            self.launch("precondition", "rms_precondition_k", cfg, &[&head[..], &hp].concat())?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn adamw8bit_op(&mut self, params: View, grads: View, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, a: AdamWArgs) -> Result<()> {
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
        let grid = blocks.min(self.sms as usize * 8) as u32;
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (QUANT_BLOCK as u32, 1, 1), shared_mem_bytes: 0 };
        let args = [P(p.ptr), P(g.ptr), I(g.dt()), P(mc.ptr), P(vc.ptr), P(ma.ptr), P(va.ptr), P(shadow), P(maps), L(n as i64), Adam(adam_args(&a)), F(decay)];
        self.launch("adamw8bit", "adamw8bit_k", cfg, &args)
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
