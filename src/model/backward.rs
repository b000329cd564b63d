//! The backward pass, the forward pass in reverse. Parameter gradients
//! accumulate into the flat gradient buffer; `grads.dres` carries the
//! gradient of the residual stream from the head down to the embeddings.

use super::activations::{Activations, LayerActs};
use super::attend::Attention;
use super::views::{LayerViews, NormViews};
use super::store::{ParamStore, Unit};
use super::{Model, Recompute};
use crate::backend::{Backend, View};
use crate::config::{Mlp, Positions};
use anyhow::Result;
use std::ops::Range;

impl Model {
    /// `dinp += norm_bwd(dout)` and the norm's parameter gradients.
    #[allow(clippy::too_many_arguments)]
    fn norm_bwd<B: Backend>(&self, b: &mut B, p: NormViews, g: NormViews, dinp: View, dout: View, inp: View, mean: View, rstd: View, n: usize) -> Result<()> {
        let c = self.cfg.d_model;
        match (p.b, g.b) {
            (Some(_), Some(db)) => b.layernorm_bwd(dinp, g.w, db, dout, inp, p.w, mean, rstd, n, c),
            _ => b.rmsnorm_bwd(dinp, g.w, dout, inp, p.w, rstd, n, c),
        }
    }

    /// The output head's backward for the token rows `rows` from their
    /// logits' gradient `dlogits`: those rows of `grads.dln` (overwrite)
    /// and the head's weight gradient (accumulate).
    pub(super) fn head_bwd<B: Backend>(&self, b: &mut B, store: &dyn ParamStore<B>, acts: &Activations, rows: Range<usize>, dlogits: View) -> Result<()> {
        let (c, v) = (self.cfg.d_model, self.cfg.padded_vocab());
        let (at, len) = (rows.start * c, rows.len() * c);
        b.linear_bwd(acts.grads.dln.sub(at, len), store.grads().head, None, dlogits, acts.lnf.sub(at, len), store.params().head, rows.len(), c, v)
    }

    /// Backward from the gradient of the final norm's output, which
    /// `head_bwd` left in `grads.dln` for every row. The head is fetched
    /// (weights and gradients) on entry; every unit's gradients are handed
    /// back to the store (`grads_done`) as soon as they are complete.
    pub(super) fn backward_from_lnf<B: Backend>(&self, b: &mut B, store: &mut dyn ParamStore<B>, attn: &mut dyn Attention<B>, acts: &Activations) -> Result<()> {
        let m = &self.cfg;
        let n = acts.batch * acts.seq;
        let s = &acts.grads;
        b.fill(s.dres, 0.0)?;
        let (p_lnf, g_lnf) = (store.params().ln_f, store.grads().ln_f);
        self.norm_bwd(b, p_lnf, g_lnf, s.dres, s.dln, acts.res_out, acts.lnf_mean, acts.lnf_rstd, n)?;
        store.grads_done(b, Unit::Head)?;
        store.release(b, Unit::Head)?;
        for l in (0..m.n_layers).rev() {
            store.fetch(b, Unit::Layer(l))?;
            if l > 0 {
                // Overlap the previous block's gather with this one's backward.
                store.prefetch(b, Unit::Layer(l - 1))?;
            }
            store.fetch_grads(b, Unit::Layer(l))?;
            let (p, g) = (store.params().layers[l], store.grads().layers[l]);
            // Checkpointed blocks share one block's buffers, which hold the
            // last block's forward: every other block runs its forward again
            // (same inputs, same kernels: the same values).
            if let Recompute::Layers { keep_attention } = self.recompute {
                if l + 1 < m.n_layers {
                    self.block_fwd(b, &p, attn, l, &acts.layers[l], acts.layers[l + 1].res_in, acts, !keep_attention)?;
                }
            }
            self.block_bwd(b, &p, &g, attn, l, &acts.layers[l], acts)?;
            store.grads_done(b, Unit::Layer(l))?;
            store.release(b, Unit::Layer(l))?;
        }
        store.fetch_grads(b, Unit::Embed)?;
        let (dwte, dwpe) = (store.grads().wte, store.grads().wpe);
        let first = self.first_position(attn, acts.seq)?;
        let dwpe = if m.positions == Positions::Learned { dwpe.map(|w| w.sub(first * m.d_model, acts.seq * m.d_model)) } else { None };
        b.embed_bwd(dwte, dwpe, s.dres, acts.tokens, acts.seq, m.d_model)?;
        store.grads_done(b, Unit::Embed)
    }

    /// On entry `dres` = dL/d(block output); on exit dL/d(block input).
    #[allow(clippy::too_many_arguments)]
    fn block_bwd<B: Backend>(&self, b: &mut B, p: &LayerViews, g: &LayerViews, attn: &mut dyn Attention<B>, layer: usize, la: &LayerActs, acts: &Activations) -> Result<()> {
        let m = &self.cfg;
        let n = acts.batch * acts.seq;
        let c = m.d_model;
        let s = &acts.grads;
        let shape = self.attn_shape(acts);
        if self.recompute == Recompute::Elementwise {
            // ln2 and the MLP activation were not kept: rebuild them.
            self.norm_fwd(b, p.ln2, la.ln2, la.ln2_mean, la.ln2_rstd, la.res_mid, n)?;
            self.mlp_act_fwd(b, la, n)?;
        }
        // MLP half.
        match m.mlp {
            // On a GPU the GELU derivative rides in the matmul's epilogue.
            Mlp::Gelu => b.linear_gelu_bwd(s.dfch, s.dfch_act, g.mlp_proj.w, g.mlp_proj.b, s.dres, la.fch_act, p.mlp_proj.w, la.fch, n, m.padded_ff(), c)?,
            Mlp::Swiglu => {
                b.linear_bwd(s.dfch_act, g.mlp_proj.w, g.mlp_proj.b, s.dres, la.fch_act, p.mlp_proj.w, n, m.padded_ff(), c)?;
                b.swiglu_bwd(s.dfch, la.fch, s.dfch_act, n, m.padded_ff())?;
            }
        }
        b.linear_bwd(s.dln, g.fc.w, g.fc.b, s.dfch, la.ln2, p.fc.w, n, c, la.fch.len / n)?;
        self.norm_bwd(b, p.ln2, g.ln2, s.dres, s.dln, la.res_mid, la.ln2_mean, la.ln2_rstd, n)?;
        // Attention half.
        if self.recompute == Recompute::Elementwise {
            self.norm_fwd(b, p.ln1, la.ln1, la.ln1_mean, la.ln1_rstd, la.res_in, n)?;
        }
        b.linear_bwd(s.datty, g.attn_proj.w, g.attn_proj.b, s.dres, la.atty, p.attn_proj.w, n, m.n_heads * m.head_dim(), c)?;
        attn.backward(b, layer, s.dqkv, s.datty, la.qkv, la.atty, la.lse, shape, self.rope())?;
        b.linear_bwd(s.dln, g.qkv.w, g.qkv.b, s.dqkv, la.ln1, p.qkv.w, n, c, shape.qkv_width())?;
        self.norm_bwd(b, p.ln1, g.ln1, s.dres, s.dln, la.res_in, la.ln1_mean, la.ln1_rstd, n)
    }
}
