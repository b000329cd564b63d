//! Blockwise 8-bit AdamW (bitsandbytes semantics): F32 params (and their
//! bf16 shadow), U8 state codes with one F32 absmax per block, over one
//! tensor or over every tensor of a segment table in one launch. The
//! kernel uses round-to-nearest fp32 intrinsics in the CPU's operation
//! order (no FMA contraction), so results match the CPU reference bit for
//! bit.
//!
//! `FERROTRON_ADAM8` picks the kernel variant, so one GPU session can time
//! them all (adamw8bit.cu says what each does): `prefetch` (default: the
//! next quant block's loads in flight during this one's arithmetic, 2
//! thread blocks per SM), `prefetch3` (the same held to 3 thread blocks
//! per SM: fewer registers, a few spilled), `plain` (no prefetch, 3 per
//! SM), and `pertensor` (`prefetch`, but one launch per tensor as before).

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::{Dev, Elem};
use super::adamw::{adam_args, AdamArgs};
use crate::backend::{Adam8Segment, AdamWArgs, BufId, View, QUANT_BLOCK};
use crate::optim::{quant_bins, quant_map};
use anyhow::{bail, ensure, Result};
use cudarc::driver::{DeviceRepr, LaunchConfig};
use std::sync::OnceLock;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "adamw8bit", source: include_str!("adamw8bit.cu") };

/// Mirrors `Adam8Seg` in adamw8bit.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(in crate::backend::cuda) struct Adam8Seg {
    pub param_off: i64,
    pub code_off: i64,
    pub block_off: i64,
    pub len: i64,
    pub wd: f32,
    pub aligned: i32,
}
// SAFETY: plain-old-data with the same layout as the CUDA struct.
unsafe impl DeviceRepr for Adam8Seg {}

impl Adam8Seg {
    /// The table form: five i64 words (wd and aligned share the last one,
    /// little-endian like the struct).
    fn words(&self) -> [i64; 5] {
        [self.param_off, self.code_off, self.block_off, self.len, (self.wd.to_bits() as i64) | ((self.aligned as i64) << 32)]
    }
}

kernel! {
    /// One warp per state block, 8 warps per thread block, a persistent
    /// grid; `segs` 0: the launch is the single segment `one`.
    struct Adamw8bit(FILE, Adam8Kernel { Prefetch: adamw8bit_prefetch_k, Prefetch3: adamw8bit_prefetch3_k, Plain: adamw8bit_plain_k }) {
        p: u64, g: u64, dtg: i32, mc: u64, vc: u64, mabs: u64, vabs: u64, shadow: u64, maps: u64, segs: u64, one: Adam8Seg, blocks: i64, a: AdamArgs,
    }
}

/// Warps (quant blocks in flight) per thread block: adamw8bit.cu's WARPS.
const WARPS: u32 = 8;

/// The variant `FERROTRON_ADAM8` names: (kernel, one launch per tensor).
fn variant() -> Result<(Adam8Kernel, bool)> {
    static V: OnceLock<Result<(Adam8Kernel, bool), String>> = OnceLock::new();
    let v = V.get_or_init(|| match std::env::var("FERROTRON_ADAM8").as_deref() {
        // plain is the default: on the H200 it ran a llama-1b step in 7.90 ms
        // (0.68 of copy bandwidth) against prefetch's 10.0 ms and
        // prefetch3's 8.79 ms (bench/results/gpu_2026-12-02c.md, call 2).
        Err(_) | Ok("") | Ok("plain") => Ok((Adam8Kernel::Plain, false)),
        Ok("prefetch") => Ok((Adam8Kernel::Prefetch, false)),
        Ok("prefetch3") => Ok((Adam8Kernel::Prefetch3, false)),
        Ok("pertensor") => Ok((Adam8Kernel::Prefetch, true)),
        Ok(other) => Err(format!("FERROTRON_ADAM8={other}: expected prefetch, prefetch3, plain or pertensor")),
    });
    v.clone().map_err(anyhow::Error::msg)
}

/// Whether a segment at these element offsets may take the vector path:
/// 16-byte params and fp32 grads, 8-byte bf16 grads and shadow, 4-byte
/// code words.
fn aligned(p: &Dev, g: &Dev, mc: &Dev, vc: &Dev, shadow: u64, param_off: usize, code_off: usize) -> bool {
    let g_ok = match g.elem {
        Elem::F32 => (g.ptr + 4 * param_off as u64) % 16 == 0,
        Elem::Bf16 => (g.ptr + 2 * param_off as u64) % 8 == 0,
        _ => false, // other gradient types: the scalar path's general load
    };
    (p.ptr + 4 * param_off as u64) % 16 == 0 && g_ok && (mc.ptr + code_off as u64) % 4 == 0 && (vc.ptr + code_off as u64) % 4 == 0 && (shadow + 2 * param_off as u64) % 8 == 0
}

/// Whether no two (start, len) ranges share an element: one launch runs
/// the segments in parallel.
fn disjoint(ranges: impl Iterator<Item = (usize, usize)>) -> bool {
    let mut r: Vec<(usize, usize)> = ranges.filter(|(_, len)| *len > 0).collect();
    r.sort_unstable();
    r.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0)
}

/// Device views an 8-bit AdamW launch writes, checked.
struct State8 {
    mc: Dev,
    vc: Dev,
    ma: Dev,
    va: Dev,
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn adamw8bit(&mut self, params: View, grads: View, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, a: AdamWArgs) -> Result<()> {
        self.begin()?;
        let n = params.len;
        ensure!(grads.len == n && m_codes.len == n && v_codes.len == n, "adamw8bit: params/grads/m_codes/v_codes lengths differ");
        let blocks = n.div_ceil(QUANT_BLOCK);
        ensure!(m_absmax.len == blocks && v_absmax.len == blocks, "adamw8bit: absmax views need {blocks} values (one per {QUANT_BLOCK}-element block)");
        let g = self.dev(grads)?;
        let st = self.state8(m_codes, v_codes, m_absmax, v_absmax, a)?;
        let (p, shadow) = self.params_and_shadow(params, "adamw8bit")?;
        if n == 0 {
            return Ok(());
        }
        let one = Adam8Seg { len: n as i64, wd: a.weight_decay, aligned: aligned(&p, &g, &st.mc, &st.vc, shadow, 0, 0) as i32, ..Default::default() };
        self.launch8(&p, &g, &st, shadow, 0, one, blocks, a)
    }

    /// Every segment in one launch when their absmax blocks follow each
    /// other from block 0 and their params and codes do not overlap (an
    /// optimizer's layout), else one launch each, in order (the trait's
    /// meaning for any table).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cuda) fn adamw8bit_segments(&mut self, params: BufId, grads: BufId, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, segs: &[Adam8Segment], a: AdamWArgs) -> Result<()> {
        self.begin()?;
        let consecutive = segs.iter().scan(0, |next, s| {
            let ok = s.block_off == *next;
            *next += s.len.div_ceil(QUANT_BLOCK);
            Some(ok)
        });
        let consecutive = consecutive.fold(true, |all, ok| all && ok);
        let disjoint = disjoint(segs.iter().map(|s| (s.param_off, s.len))) && disjoint(segs.iter().map(|s| (s.code_off, s.len)));
        if variant()?.1 || !consecutive || !disjoint || segs.is_empty() {
            for s in segs {
                let [p, g, mc, vc, ma, va] = s.views(params, grads, m_codes, v_codes, m_absmax, v_absmax);
                self.adamw8bit(p, g, mc, vc, ma, va, AdamWArgs { weight_decay: s.weight_decay, ..a })?;
            }
            return Ok(());
        }
        let whole = |s: &Self, buf| -> Result<View> { Ok(View { buf, off: 0, len: s.bufs.get(buf)?.len }) };
        let (pv, gv) = (whole(self, params)?, whole(self, grads)?);
        let blocks: usize = segs.iter().map(|s| s.len.div_ceil(QUANT_BLOCK)).sum();
        for s in segs {
            ensure!(s.param_off + s.len <= pv.len.min(gv.len), "adamw8bit_segments: segment {s:?} runs past the params ({}) or grads ({})", pv.len, gv.len);
            ensure!(s.code_off + s.len <= m_codes.len.min(v_codes.len), "adamw8bit_segments: segment {s:?} runs past the code views ({}, {})", m_codes.len, v_codes.len);
        }
        ensure!(blocks <= m_absmax.len.min(v_absmax.len), "adamw8bit_segments: {blocks} blocks, absmax views of {} and {}", m_absmax.len, v_absmax.len);
        let (ma, va) = (m_absmax.sub(0, blocks), v_absmax.sub(0, blocks));
        let g = self.dev(gv)?;
        let st = self.state8(m_codes, v_codes, ma, va, a)?;
        let p = self.dev(pv)?;
        ensure!(p.elem == Elem::F32, "adamw8bit_segments: params must be an F32 buffer (fp32 master weights), got {:?}", p.elem);
        // The kernel writes the shadow of every segment: those ranges are fresh.
        let mut shadow = 0;
        for s in segs {
            let sp = self.shadow_for_write(View { buf: params, off: s.param_off, len: s.len })?;
            shadow = if sp == 0 { 0 } else { sp - 2 * s.param_off as u64 };
        }
        let mut host: Vec<i64> = Vec::with_capacity(5 * (segs.len() + 1));
        for s in segs {
            let al = aligned(&p, &g, &st.mc, &st.vc, shadow, s.param_off, s.code_off) as i32;
            let seg = Adam8Seg { param_off: s.param_off as i64, code_off: s.code_off as i64, block_off: s.block_off as i64, len: s.len as i64, wd: s.weight_decay, aligned: al };
            host.extend(seg.words());
        }
        host.extend(Adam8Seg { block_off: blocks as i64, ..Default::default() }.words()); // the sentinel
        let table = self.device_table(host)?;
        self.launch8(&p, &g, &st, shadow, table, Adam8Seg::default(), blocks, a)
    }

    /// Checks and resolves the state views (codes U8 and disjoint, absmax F32).
    fn state8(&mut self, m_codes: View, v_codes: View, m_absmax: View, v_absmax: View, a: AdamWArgs) -> Result<State8> {
        ensure!(a.step >= 1, "adamw8bit: step is 1-based, got 0");
        let overlap = m_codes.buf == v_codes.buf && m_codes.off < v_codes.off + v_codes.len && v_codes.off < m_codes.off + m_codes.len;
        ensure!(m_codes.len == 0 || v_codes.len == 0 || !overlap, "adamw8bit: m_codes {m_codes:?} overlaps v_codes {v_codes:?}");
        let (mc, vc) = (self.dev(m_codes)?, self.dev(v_codes)?);
        ensure!(mc.elem == Elem::U8 && vc.elem == Elem::U8, "adamw8bit: m_codes and v_codes must be U8 buffers");
        let ma = self.f32_out(m_absmax, "adamw8bit: m_absmax")?;
        let va = self.f32_out(v_absmax, "adamw8bit: v_absmax")?;
        Ok(State8 { mc, vc, ma, va })
    }

    #[allow(clippy::too_many_arguments)]
    fn launch8(&mut self, p: &Dev, g: &Dev, st: &State8, shadow: u64, segs: u64, one: Adam8Seg, blocks: usize, a: AdamWArgs) -> Result<()> {
        if blocks == 0 {
            return Ok(());
        }
        let maps = self.quant_maps_ptr()?;
        let (kernel, _) = variant()?;
        let k = Adamw8bit { kernel, p: p.ptr, g: g.ptr, dtg: g.dt(), mc: st.mc.ptr, vc: st.vc.ptr, mabs: st.ma.ptr, vabs: st.va.ptr, shadow, maps, segs, one, blocks: blocks as i64, a: adam_args(&a) };
        // One warp per quant block; no more thread blocks than the GPU
        // holds at once (each loads the tables once, then strides).
        let grid = (blocks as u32).div_ceil(WARPS).min(self.resident_blocks(&k, 32 * WARPS)?);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: 0 };
        self.launch(cfg, k)
    }

    /// Device copy of the two dynamic maps, their decision thresholds and
    /// their bin starts (layout documented in adamw8bit.cu), uploaded once.
    /// The thresholds are the CPU's own f32 values, so code choices match
    /// it exactly.
    fn quant_maps_ptr(&mut self) -> Result<u64> {
        if let Some(m) = &self.quant_maps {
            return Ok(m.ptr);
        }
        let mut floats = vec![f32::INFINITY; 1024]; // threshold 255 of each map: +inf
        floats[..256].copy_from_slice(quant_map::signed());
        floats[256..512].copy_from_slice(quant_map::unsigned());
        floats[512..767].copy_from_slice(quant_map::signed_thresholds());
        floats[768..1023].copy_from_slice(quant_map::unsigned_thresholds());
        let mut host: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        host.extend(quant_bins::starts(quant_map::signed_thresholds())?);
        host.extend(quant_bins::starts(quant_map::unsigned_thresholds())?);
        if host.len() != 4 * 1024 + 4 * quant_bins::BINS {
            bail!("adamw8bit: quant table of {} bytes, the kernel reads {}", host.len(), 4 * 1024 + 4 * quant_bins::BINS);
        }
        host.resize(host.len().div_ceil(16) * 16, 0); // the kernel copies 16-byte words
        let mem = self.alloc.alloc(host.len())?;
        let ptr = mem.ptr;
        self.quant_maps = Some(mem);
        self.htod(ptr, &host)?;
        Ok(ptr)
    }
}
