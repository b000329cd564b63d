//! The forward pass: embeddings → blocks → final norm → logits.

use super::activations::{Activations, LayerActs};
use super::attend::Attention;
use super::views::{LayerViews, NormViews};
use super::store::{ParamStore, Unit};
use super::Model;
use crate::backend::{AttnShape, Backend, View};
use crate::config::{Mlp, Positions};
use anyhow::Result;
use std::ops::Range;

impl Model {
    pub(super) fn attn_shape(&self, acts: &Activations) -> AttnShape {
        let m = &self.cfg;
        AttnShape { batch: acts.batch, seq: acts.seq, heads: m.n_heads, kv_heads: m.n_kv_heads, head_dim: m.head_dim() }
    }

    /// RoPE's theta when the model uses rotary positions.
    /// The rotary embedding of a RoPE model (with its Llama 3 scaling).
    pub(super) fn rope(&self) -> Option<crate::backend::Rope> {
        (self.cfg.positions == Positions::Rope).then(|| self.cfg.rope())
    }

    /// Global position of this rank's first token of each sequence of
    /// `seq` local tokens; an error when the whole sequence is longer than
    /// `model.max_seq_len` (the position table).
    pub(super) fn first_position<B: Backend>(&self, attn: &dyn Attention<B>, seq: usize) -> Result<usize> {
        let (first, full) = (attn.pos_offset(seq), attn.full_seq(seq));
        if full > self.cfg.max_seq_len || first + seq > full {
            anyhow::bail!("sequence of {full} tokens exceeds model.max_seq_len = {}", self.cfg.max_seq_len);
        }
        Ok(first)
    }

    /// LayerNorm or RMSNorm of `inp` into `out`, saving mean/rstd.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn norm_fwd<B: Backend>(&self, b: &mut B, p: NormViews, out: View, mean: View, rstd: View, inp: View, n: usize) -> Result<()> {
        let (c, eps) = (self.cfg.d_model, self.cfg.norm_eps);
        match p.b {
            Some(bias) => b.layernorm_fwd(out, mean, rstd, inp, p.w, bias, n, c, eps),
            None => b.rmsnorm_fwd(out, rstd, inp, p.w, n, c, eps),
        }
    }

    /// `sum = a + b`, then its norm into `out` (one pass on a GPU).
    #[allow(clippy::too_many_arguments)]
    fn add_norm_fwd<B: Backend>(&self, b: &mut B, p: NormViews, (out, mean, rstd): (View, View, View), sum: View, a: View, bv: View, n: usize) -> Result<()> {
        let (c, eps) = (self.cfg.d_model, self.cfg.norm_eps);
        match p.b {
            None => b.add_rmsnorm_fwd(sum, out, rstd, a, bv, p.w, n, c, eps),
            Some(bias) => b.add_layernorm_fwd(sum, out, mean, rstd, a, bv, p.w, bias, n, c, eps),
        }
    }

    /// MLP activation: GELU or SwiGLU of `fch` into `fch_act`.
    pub(super) fn mlp_act_fwd<B: Backend>(&self, b: &mut B, la: &LayerActs, n: usize) -> Result<()> {
        match self.cfg.mlp {
            Mlp::Gelu => b.gelu_fwd(la.fch_act, la.fch),
            Mlp::Swiglu => b.swiglu_fwd(la.fch_act, la.fch, n, self.cfg.padded_ff()),
        }
    }

    /// Runs the blocks and the final norm on the tokens already uploaded
    /// into `acts.tokens`, leaving the last hidden state, normalized, in
    /// `acts.lnf` (the output head runs per chunk of rows: `head_fwd`).
    /// Each unit is fetched from the store before use and released after;
    /// the head stays fetched for the caller's loss loop.
    pub(super) fn forward_hidden<B: Backend>(&self, b: &mut B, store: &mut dyn ParamStore<B>, attn: &mut dyn Attention<B>, acts: &Activations) -> Result<()> {
        let m = &self.cfg;
        let n = acts.batch * acts.seq;
        let first = self.first_position(attn, acts.seq)?;
        store.fetch(b, Unit::Embed)?;
        let (wte, wpe) = (store.params().wte, store.params().wpe);
        // The rows of the position table of this rank's `seq` tokens (all
        // of a sequence's first `seq` rows unless the sequence is split).
        let wpe = if m.positions == Positions::Learned { wpe.map(|w| w.sub(first * m.d_model, acts.seq * m.d_model)) } else { None };
        b.embed_fwd(acts.layers[0].res_in, acts.tokens, wte, wpe, acts.seq, m.d_model)?;
        store.release(b, Unit::Embed)?;
        for (l, la) in acts.layers.iter().enumerate() {
            let out = acts.layers.get(l + 1).map(|next| next.res_in).unwrap_or(acts.res_out);
            store.fetch(b, Unit::Layer(l))?;
            // Overlap the next unit's gather with this block's compute.
            store.prefetch(b, if l + 1 < m.n_layers { Unit::Layer(l + 1) } else { Unit::Head })?;
            let p = store.params().layers[l];
            self.block_fwd(b, &p, attn, l, la, out, acts, true)?;
            store.release(b, Unit::Layer(l))?;
        }
        store.fetch(b, Unit::Head)?;
        self.norm_fwd(b, store.params().ln_f, acts.lnf, acts.lnf_mean, acts.lnf_rstd, acts.res_out, n)
    }

    /// Logits of the token rows `rows` into the start of `acts.logits`
    /// (returned: `rows.len()` rows of the padded vocabulary). The head
    /// must be fetched.
    pub(super) fn head_fwd<B: Backend>(&self, b: &mut B, store: &dyn ParamStore<B>, acts: &Activations, rows: Range<usize>) -> Result<View> {
        let (c, v) = (self.cfg.d_model, self.cfg.padded_vocab());
        let logits = acts.logits.sub(0, rows.len() * v);
        b.linear_fwd(logits, acts.lnf.sub(rows.start * c, rows.len() * c), store.params().head, None, rows.len(), c, v)?;
        Ok(logits)
    }

    /// One block's forward into `out`. `attention` false: the block's
    /// attention output and log-sum-exp are already in `la` (a checkpointed
    /// block re-run in backward that kept them) and are not recomputed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn block_fwd<B: Backend>(&self, b: &mut B, p: &LayerViews, attn: &mut dyn Attention<B>, layer: usize, la: &LayerActs, out: View, acts: &Activations, attention: bool) -> Result<()> {
        let m = &self.cfg;
        let n = acts.batch * acts.seq;
        let c = m.d_model;
        let shape = self.attn_shape(acts);
        // Attention half: res_mid = res_in + proj(attn(rope(qkv(ln1(res_in))))).
        self.norm_fwd(b, p.ln1, la.ln1, la.ln1_mean, la.ln1_rstd, la.res_in, n)?;
        b.linear_fwd(la.qkv, la.ln1, p.qkv.w, p.qkv.b, n, c, shape.qkv_width())?;
        attn.forward(b, layer, la.qkv, la.atty, la.lse, shape, self.rope(), attention)?;
        b.linear_fwd(acts.proj_out, la.atty, p.attn_proj.w, p.attn_proj.b, n, m.n_heads * m.head_dim(), c)?;
        // MLP half: out = res_mid + proj(act(fc(ln2(res_mid)))), the
        // residual add fused with ln2.
        self.add_norm_fwd(b, p.ln2, (la.ln2, la.ln2_mean, la.ln2_rstd), la.res_mid, la.res_in, acts.proj_out, n)?;
        if m.mlp == Mlp::Gelu {
            // One matmul with the GELU (and bias) in its epilogue on a GPU.
            b.linear_gelu_fwd(la.fch, la.fch_act, la.ln2, p.fc.w, p.fc.b, n, c, m.padded_ff())?;
        } else {
            b.linear_fwd(la.fch, la.ln2, p.fc.w, p.fc.b, n, c, la.fch.len / n)?;
            self.mlp_act_fwd(b, la, n)?;
        }
        b.linear_residual_fwd(out, la.fch_act, p.mlp_proj.w, p.mlp_proj.b, la.res_mid, n, m.padded_ff(), c)
    }
}
