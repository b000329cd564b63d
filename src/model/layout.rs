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

#[derive(Clone, Debug)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub kind: ParamKind,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The view of this tensor inside a flat buffer with this layout.
    pub fn view(&self, buf: BufId) -> View {
        View { buf, off: self.offset, len: self.numel() }
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
        let info = ParamInfo { name: name.to_string(), shape: shape.to_vec(), offset: self.offset, kind };
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
