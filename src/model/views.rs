//! Named views of every tensor inside a flat buffer with the model's layout.
//! Built once for the parameter buffer and once for the gradient buffer, so
//! the passes never look names up on the hot path.

use super::layout::ParamLayout;
use crate::backend::{BufId, View};

/// A norm's weight and (layernorm only) bias.
#[derive(Clone, Copy)]
pub struct NormViews {
    pub w: View,
    pub b: Option<View>,
}

/// A linear layer's weight `[out, in]` and optional bias.
#[derive(Clone, Copy)]
pub struct LinearViews {
    pub w: View,
    pub b: Option<View>,
}

#[derive(Clone, Copy)]
pub struct LayerViews {
    pub ln1: NormViews,
    pub qkv: LinearViews,
    pub attn_proj: LinearViews,
    pub ln2: NormViews,
    pub fc: LinearViews,
    pub mlp_proj: LinearViews,
}

#[derive(Clone)]
pub struct ModelViews {
    pub wte: View,
    pub wpe: Option<View>,
    pub layers: Vec<LayerViews>,
    pub ln_f: NormViews,
    /// Output head: `lm_head`, or `wte` when embeddings are tied.
    pub head: View,
}

impl ModelViews {
    pub fn new(layout: &ParamLayout, buf: BufId, n_layers: usize) -> Self {
        let norm = |p: &str| NormViews { w: layout.view(buf, &format!("{p}.w")), b: layout.opt_view(buf, &format!("{p}.b")) };
        let linear = |p: &str| LinearViews { w: layout.view(buf, &format!("{p}.w")), b: layout.opt_view(buf, &format!("{p}.b")) };
        let layers = (0..n_layers)
            .map(|l| LayerViews {
                ln1: norm(&format!("h.{l}.ln1")),
                qkv: linear(&format!("h.{l}.attn.qkv")),
                attn_proj: linear(&format!("h.{l}.attn.proj")),
                ln2: norm(&format!("h.{l}.ln2")),
                fc: linear(&format!("h.{l}.mlp.fc")),
                mlp_proj: linear(&format!("h.{l}.mlp.proj")),
            })
            .collect();
        let wte = layout.view(buf, "wte");
        ModelViews {
            wte,
            wpe: layout.opt_view(buf, "wpe"),
            layers,
            ln_f: norm("ln_f"),
            head: layout.opt_view(buf, "lm_head").unwrap_or(wte),
        }
    }
}
