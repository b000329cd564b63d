//! Blockwise 8-bit AdamW (Dettmers et al. 2022, bitsandbytes `Adam8bit`).
//!
//! Tensors with at least [`MIN_8BIT`] elements keep m and v as 8-bit codes
//! (signed / unsigned dynamic map, `quant_map`) with one fp32 absmax per
//! 256-element block and per moment: 2 + 8/256 ≈ 2.03 B/param. Blocks never
//! span two tensors. Smaller tensors (norms, biases) stay fp32 AdamW, as in
//! bitsandbytes (`min_8bit_size = 4096`): quantizing them saves nothing and
//! costs accuracy. The update itself is the `adamw8bit` backend op.

use super::adamw::{plan_groups, AdamHyper, AdamWPart};
use super::groups::filter_group;
use super::plan::{row, GroupPlan};
use super::{default_groups, meta_steps, Optimizer, ParamGroup, SlicePer, StateSlice, StateTensor};
use crate::backend::{Adam8Segment, AdamWArgs, Backend, BufId, DType, View, QUANT_BLOCK};
use crate::config::OptimizerConfig;
use crate::model::layout::ParamLayout;
use anyhow::Result;

/// Tensors below this many elements stay fp32.
pub const MIN_8BIT: usize = 4096;

/// Exact state bytes of one 8-bit tensor: two codes per element plus two
/// fp32 absmax per block.
pub fn bytes_8bit(numel: usize) -> u64 {
    2 * numel as u64 + 8 * numel.div_ceil(QUANT_BLOCK) as u64
}

/// The default groups split into 8-bit (`<group>`) and fp32 (`<group>.small`).
fn split(cfg: &OptimizerConfig, layout: &ParamLayout) -> (Vec<ParamGroup>, Vec<ParamGroup>) {
    let groups = default_groups(layout, cfg);
    let big = groups.iter().filter_map(|g| filter_group(g, &g.name, |t| t.full_numel() >= MIN_8BIT)).collect();
    let small = groups.iter().filter_map(|g| filter_group(g, &format!("{}.small", g.name), |t| t.full_numel() < MIN_8BIT)).collect();
    (big, small)
}

pub fn plan(cfg: &OptimizerConfig, layout: &ParamLayout) -> Vec<GroupPlan> {
    let (big, small) = split(cfg, layout);
    let mut rows: Vec<GroupPlan> = big.iter().map(|g| row(g, "adamw8bit", g.tensors.iter().map(|t| bytes_8bit(t.numel())).sum())).collect();
    rows.extend(plan_groups(&small));
    rows
}

/// Where one quantized tensor's state lives.
struct Slot {
    /// The tensor's layout index and the piece held (resharding).
    tensor: usize,
    piece: std::ops::Range<usize>,
    params: std::ops::Range<usize>,
    codes: usize,
    blocks: usize,
    weight_decay: f32,
}

pub struct AdamW8bit {
    cfg: OptimizerConfig,
    slots: Vec<Slot>,
    m_codes: View,
    v_codes: View,
    m_absmax: View,
    v_absmax: View,
    small: AdamWPart,
    steps: u64,
}

impl AdamW8bit {
    pub fn new<B: Backend>(b: &mut B, cfg: &OptimizerConfig, layout: &ParamLayout) -> Result<Self> {
        let (big, small) = split(cfg, layout);
        let mut tensors: Vec<(&super::TensorRef, f32)> = big.iter().flat_map(|g| g.tensors.iter().map(move |t| (t, g.weight_decay))).collect();
        tensors.sort_by_key(|(t, _)| t.offset);
        let (mut codes, mut blocks) = (0, 0);
        let mut slots = vec![];
        for (t, wd) in tensors {
            slots.push(Slot { tensor: t.index, piece: t.piece.clone(), params: t.range(), codes, blocks, weight_decay: wd });
            codes += t.numel();
            blocks += t.numel().div_ceil(QUANT_BLOCK);
        }
        let mut alloc = |len, dt| -> Result<View> { Ok(View::whole(b.alloc(len, dt)?, len)) };
        let (m_codes, v_codes) = (alloc(codes, DType::U8)?, alloc(codes, DType::U8)?);
        let (m_absmax, v_absmax) = (alloc(blocks, DType::F32)?, alloc(blocks, DType::F32)?);
        let small = AdamWPart::new(b, &small)?;
        Ok(AdamW8bit { cfg: cfg.clone(), slots, m_codes, v_codes, m_absmax, v_absmax, small, steps: 0 })
    }
}

impl<B: Backend> Optimizer<B> for AdamW8bit {
    fn name(&self) -> &'static str {
        "adamw8bit"
    }

    fn step(&mut self, b: &mut B, params: BufId, grads: BufId, lr: f32, grad_scale: f32) -> Result<()> {
        self.steps += 1;
        let c = &self.cfg;
        // Every quantized tensor in one call (its own weight decay each).
        let segs: Vec<Adam8Segment> = self.slots.iter().map(|s| Adam8Segment { param_off: s.params.start, code_off: s.codes, block_off: s.blocks, len: s.params.len(), weight_decay: s.weight_decay }).collect();
        let args = AdamWArgs { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: 0.0, step: self.steps, grad_scale };
        b.adamw8bit_segments(params, grads, self.m_codes, self.v_codes, self.m_absmax, self.v_absmax, &segs, args)?;
        for s in &self.slots {
            b.params_changed(View { buf: params, off: s.params.start, len: s.params.len() })?;
        }
        self.small.step(b, params, grads, &AdamHyper::from_cfg(c, lr, self.steps, grad_scale))
    }

    fn state_tensors(&self) -> Vec<StateTensor> {
        let mut out = vec![
            StateTensor::u8("adamw8bit.m_codes", self.m_codes),
            StateTensor::u8("adamw8bit.v_codes", self.v_codes),
            StateTensor::f32("adamw8bit.m_absmax", self.m_absmax),
            StateTensor::f32("adamw8bit.v_absmax", self.v_absmax),
        ];
        out.extend(self.small.state_tensors());
        out
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({ "name": "adamw8bit", "steps": self.steps })
    }

    fn load_meta(&mut self, meta: &serde_json::Value) -> Result<()> {
        self.steps = meta_steps(meta, "adamw8bit")?;
        Ok(())
    }

    fn state_slices(&self) -> Option<Vec<StateSlice>> {
        let codes: Vec<_> = self.slots.iter().map(|s| (s.tensor, s.piece.clone(), s.codes)).collect();
        let mut out = StateSlice::per_element(&["adamw8bit.m_codes", "adamw8bit.v_codes"], &codes);
        for name in ["adamw8bit.m_absmax", "adamw8bit.v_absmax"] {
            out.extend(self.slots.iter().map(|s| StateSlice { state: name.into(), tensor: s.tensor, piece: s.piece.clone(), off: s.blocks, len: s.piece.len().div_ceil(QUANT_BLOCK), per: SlicePer::Block }));
        }
        out.extend(self.small.state_slices());
        Some(out)
    }

    fn state_bytes(&self) -> u64 {
        (self.m_codes.len + self.v_codes.len) as u64 + 4 * (self.m_absmax.len + self.v_absmax.len) as u64 + self.small.bytes()
    }
}
