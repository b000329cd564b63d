//! Named views of every tensor inside a flat buffer with the model's layout.
//! Built once for the parameter buffer and once for the gradient buffer, so
//! the passes never look names up on the hot path.

use super::layout::ParamLayout;
use super::store::Unit;
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

impl LayerViews {
    /// Layer `l`'s views, `at(name)` giving each tensor's view.
    fn build(l: usize, at: &impl Fn(&str) -> Option<View>) -> Self {
        let must = |n: &str| at(n).unwrap_or_else(|| panic!("layout has no tensor `{n}`"));
        let norm = |p: &str| NormViews { w: must(&format!("{p}.w")), b: at(&format!("{p}.b")) };
        let linear = |p: &str| LinearViews { w: must(&format!("{p}.w")), b: at(&format!("{p}.b")) };
        LayerViews {
            ln1: norm(&format!("h.{l}.ln1")),
            qkv: linear(&format!("h.{l}.attn.qkv")),
            attn_proj: linear(&format!("h.{l}.attn.proj")),
            ln2: norm(&format!("h.{l}.ln2")),
            fc: linear(&format!("h.{l}.mlp.fc")),
            mlp_proj: linear(&format!("h.{l}.mlp.proj")),
        }
    }
}

impl ModelViews {
    pub fn new(layout: &ParamLayout, buf: BufId, n_layers: usize) -> Self {
        let at = |n: &str| layout.opt_view(buf, n);
        let wte = layout.view(buf, "wte");
        ModelViews {
            wte,
            wpe: at("wpe"),
            layers: (0..n_layers).map(|l| LayerViews::build(l, &at)).collect(),
            ln_f: NormViews { w: layout.view(buf, "ln_f.w"), b: at("ln_f.b") },
            head: at("lm_head").unwrap_or(wte),
        }
    }

    /// Points `unit`'s views at a buffer holding only that unit's range of
    /// the layout (`unit_start` = the range's start). For tied embeddings the
    /// head follows `wte` when the embeddings are re-pointed.
    pub fn point_unit(&mut self, layout: &ParamLayout, unit: Unit, unit_start: usize, buf: BufId) {
        let at = |n: &str| layout.get(n).map(|p| View { buf, off: p.offset - unit_start, len: p.numel() });
        match unit {
            Unit::Embed => {
                self.wte = at("wte").expect("layout has wte");
                self.wpe = at("wpe");
                if layout.get("lm_head").is_none() {
                    self.head = self.wte;
                }
            }
            Unit::Layer(l) => self.layers[l] = LayerViews::build(l, &at),
            Unit::Head => {
                self.ln_f = NormViews { w: at("ln_f.w").expect("layout has ln_f.w"), b: at("ln_f.b") };
                if let Some(h) = at("lm_head") {
                    self.head = h;
                }
            }
        }
    }
}
