//! Where every parameter lives inside the one flat parameter buffer.
//!
//! Gradients and optimizer state use the same layout, so "the gradient of
//! tensor X" is the same (offset, len) in the gradient buffer. Names are
//! ferrotron's own; `ckpt::hf` maps them to Hugging Face names.
//!
//! Internal layouts (all row-major, linear weights `[out, in]`):
//! - `wte` `[V, C]`, `wpe` `[max_seq, C]` (learned positions only)
//! - `h.{l}.ln1.w`/`.b` `[C]` (`.b` only for layernorm)
//! - `h.{l}.attn.qkv.w` `[(H + 2·KV)·D, C]`: rows are q heads, then k heads,
//!   then v heads; `.b` `[(H + 2·KV)·D]` when `bias`
//! - `h.{l}.attn.proj.w` `[C, H·D]`, `.b` `[C]`
//! - `h.{l}.ln2.w`/`.b`
//! - `h.{l}.mlp.fc.w` `[F, C]` (gelu) or `[2F, C]` (swiglu: gate rows then
//!   up rows), `.b` when `bias`
//! - `h.{l}.mlp.proj.w` `[C, F]`, `.b` `[C]`
//! - `ln_f.w`/`.b`, `lm_head` `[V, C]` when embeddings are untied.

use crate::backend::{BufId, View};
use crate::config::{Mlp, ModelConfig, Norm, Positions};
use std::ops::Range;

/// What a tensor is, for optimizer parameter groups and `info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Embedding,
    Position,
    /// Attention or MLP weight matrix (what matrix optimizers act on).
    Matrix,
    Bias,
    Norm,
    Head,
}

/// One tensor as every part of the engine sees it: the model's layout, the
/// optimizers' groups, ZeRO's partition and checkpoints. Usually the whole
/// tensor; a ZeRO shard may hold only `piece`, a range of its elements in
/// row-major order, found at `offset` in the shard's flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    /// Position in the model's full layout (seeds per-tensor randomness,
    /// so it must not depend on how tensors are sharded).
    pub index: usize,
    /// The whole tensor's shape.
    pub shape: Vec<usize>,
    /// Where the first held element sits in the flat buffer.
    pub offset: usize,
    pub kind: ParamKind,
    /// Elements of the whole tensor held here (`0..full_numel()` when whole).
    pub piece: Range<usize>,
    /// Weight decay, set when the tensor is placed in an optimizer group.
    pub weight_decay: f32,
}

impl ParamInfo {
    /// Elements held (the piece's length; the whole tensor unless sharded).
    pub fn numel(&self) -> usize {
        self.piece.len()
    }
    /// Elements of the whole tensor.
    pub fn full_numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_whole(&self) -> bool {
        self.piece.start == 0 && self.piece.end == self.full_numel()
    }
    /// Rows of a matrix (`[out, in]`); a vector counts as one row.
    pub fn rows(&self) -> usize {
        if self.shape.len() >= 2 { self.shape[0] } else { 1 }
    }
    pub fn cols(&self) -> usize {
        if self.shape.len() >= 2 { self.full_numel() / self.shape[0] } else { self.full_numel() }
    }
    /// The held elements inside a flat buffer with this layout.
    pub fn view(&self, buf: BufId) -> View {
        View { buf, off: self.offset, len: self.numel() }
    }
    /// The held elements' range of the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub params: Vec<ParamInfo>,
    pub total: usize,
}

impl ParamLayout {
    pub fn new(m: &ModelConfig) -> Self {
        let mut b = Builder::default();
        // Embedding and head rows include the vocabulary padding, the MLP its
        // hidden-width padding.
        let (c, v, f) = (m.d_model, m.padded_vocab(), m.padded_ff());
        let d = m.head_dim();
        let qkv = (m.n_heads + 2 * m.n_kv_heads) * d;
        let fc_rows = if m.mlp == Mlp::Swiglu { 2 * f } else { f };
        b.add("wte", &[v, c], ParamKind::Embedding);
        if m.positions == Positions::Learned {
            b.add("wpe", &[m.max_seq_len, c], ParamKind::Position);
        }
        for l in 0..m.n_layers {
            let p = format!("h.{l}");
            b.norm(&format!("{p}.ln1"), m, c);
            b.linear(&format!("{p}.attn.qkv"), qkv, c, m.bias);
            b.linear(&format!("{p}.attn.proj"), c, m.n_heads * d, m.bias);
            b.norm(&format!("{p}.ln2"), m, c);
            b.linear(&format!("{p}.mlp.fc"), fc_rows, c, m.bias);
            b.linear(&format!("{p}.mlp.proj"), c, f, m.bias);
        }
        b.norm("ln_f", m, c);
        if !m.tied_embeddings {
            b.add("lm_head", &[v, c], ParamKind::Head);
        }
        ParamLayout { params: b.params, total: b.offset }
    }

    pub fn get(&self, name: &str) -> Option<&ParamInfo> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Like [`get`](Self::get) for names the layout is known to contain.
    pub fn must(&self, name: &str) -> &ParamInfo {
        self.get(name).unwrap_or_else(|| panic!("layout has no tensor `{name}`"))
    }

    pub fn view(&self, buf: BufId, name: &str) -> View {
        self.must(name).view(buf)
    }

    pub fn opt_view(&self, buf: BufId, name: &str) -> Option<View> {
        self.get(name).map(|p| p.view(buf))
    }
}

#[derive(Default)]
struct Builder {
    params: Vec<ParamInfo>,
    offset: usize,
}

impl Builder {
    fn add(&mut self, name: &str, shape: &[usize], kind: ParamKind) {
        let numel = shape.iter().product();
        let index = self.params.len();
        let info = ParamInfo { name: name.to_string(), index, shape: shape.to_vec(), offset: self.offset, kind, piece: 0..numel, weight_decay: 0.0 };
        self.offset += info.numel();
        self.params.push(info);
    }
    fn norm(&mut self, prefix: &str, m: &ModelConfig, c: usize) {
        self.add(&format!("{prefix}.w"), &[c], ParamKind::Norm);
        if m.norm == Norm::Layernorm {
            self.add(&format!("{prefix}.b"), &[c], ParamKind::Norm);
        }
    }
    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) {
        self.add(&format!("{prefix}.w"), &[out, inp], ParamKind::Matrix);
        if bias {
            self.add(&format!("{prefix}.b"), &[out], ParamKind::Bias);
        }
    }
}
