//! Activation buffers for one micro-batch shape (batch × seq).
//!
//! The forward pass keeps what the backward pass needs, per layer; with
//! [`Recompute::Elementwise`] the cheap outputs (norm outputs, MLP
//! activation) are not kept per layer but recomputed in backward into one
//! shared scratch buffer; with [`Recompute::Layers`] only each block's input
//! (and, keeping attention, its attention output and log-sum-exp) is kept
//! and every other buffer is one block's worth, shared by all blocks and
//! refilled by re-running the block's forward in backward.

use crate::backend::{Backend, BufId, DType, View};
use crate::config::{Mlp, ModelConfig, Norm};
use anyhow::Result;

/// What the backward pass recomputes instead of keeping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    /// Everything the backward needs is kept.
    #[default]
    Off,
    /// Norm outputs and the MLP activation (`train.recompute`).
    Elementwise,
    /// Whole blocks from their inputs (`train.checkpoint_layers`). With
    /// `keep_attention` (`train.checkpoint_keep_attention`) each block also
    /// keeps its attention output and log-sum-exp, so the re-run skips the
    /// attention forward: at long sequences that is most of a block's
    /// forward, for N·H·D activations + N·H fp32 more per layer.
    Layers { keep_attention: bool },
}

impl Recompute {
    pub fn of(t: &crate::config::TrainConfig) -> Self {
        match (t.checkpoint_layers, t.recompute) {
            (true, _) => Recompute::Layers { keep_attention: t.checkpoint_keep_attention },
            (false, true) => Recompute::Elementwise,
            (false, false) => Recompute::Off,
        }
    }
}

/// Saved tensors of one transformer block.
#[derive(Clone, Copy)]
pub struct LayerActs {
    /// Block input (the residual stream).
    pub res_in: View,
    pub ln1: View,
    pub ln1_mean: View,
    pub ln1_rstd: View,
    /// q, k, v rows after rotary.
    pub qkv: View,
    pub atty: View,
    pub lse: View,
    /// Residual after attention.
    pub res_mid: View,
    pub ln2: View,
    pub ln2_mean: View,
    pub ln2_rstd: View,
    /// MLP pre-activation `[N, F]` or `[N, 2F]` for SwiGLU.
    pub fch: View,
    /// MLP activation output `[N, F]`.
    pub fch_act: View,
}

/// Scratch used by the backward pass, shared by all layers (`dqkv` and
/// `dfch` are one buffer, `datty` and `dfch_act` another).
pub struct GradScratch {
    /// Running gradient of the residual stream.
    pub dres: View,
    pub dln: View,
    pub dqkv: View,
    pub datty: View,
    pub dfch: View,
    pub dfch_act: View,
}

pub struct Activations {
    pub batch: usize,
    pub seq: usize,
    pub tokens: View,
    pub targets: View,
    pub layers: Vec<LayerActs>,
    /// Output of the last block.
    pub res_out: View,
    pub lnf: View,
    pub lnf_mean: View,
    pub lnf_rstd: View,
    /// Logits of one chunk of `logit_rows` token rows; the loss overwrites
    /// them with their gradient in place.
    pub logits: View,
    pub logit_rows: usize,
    pub losses: View,
    /// Output of attention/MLP projections before the residual add.
    pub proj_out: View,
    pub grads: GradScratch,
    bufs: Vec<BufId>,
}

struct Alloc<'a, B: Backend> {
    b: &'a mut B,
    bufs: Vec<BufId>,
}

impl<B: Backend> Alloc<'_, B> {
    fn get(&mut self, len: usize, dtype: DType) -> Result<View> {
        let id = self.b.alloc(len, dtype)?;
        self.bufs.push(id);
        Ok(View::whole(id, len))
    }
    fn act(&mut self, len: usize) -> Result<View> {
        self.get(len, DType::Compute)
    }
    fn f32(&mut self, len: usize) -> Result<View> {
        self.get(len, DType::F32)
    }
}

impl Activations {
    /// `logits_chunk`: token rows of the output head at once (0 = all).
    pub fn new<B: Backend>(b: &mut B, m: &ModelConfig, batch: usize, seq: usize, recompute: Recompute, logits_chunk: usize) -> Result<Self> {
        let n = batch * seq;
        let logit_rows = logit_rows(n, logits_chunk);
        let c = m.d_model;
        let d = m.head_dim();
        let qkv_w = (m.n_heads + 2 * m.n_kv_heads) * d;
        let att_w = m.n_heads * d;
        let f = m.padded_ff();
        let fc_w = if m.mlp == Mlp::Swiglu { 2 * f } else { f };
        let mut a = Alloc { b, bufs: Vec::new() };
        let tokens = a.get(n, DType::U32)?;
        let targets = a.get(n, DType::U32)?;
        // Elementwise recompute: ln1, ln2 and the MLP activation of every
        // block live in one shared scratch, rebuilt in backward just before
        // each is read (with whole-block recompute each block re-runs its
        // full forward, which needs ln1 and ln2 at once: no sharing there).
        let (shared_ln, shared_act) = if recompute == Recompute::Elementwise { (Some(a.act(n * c)?), Some(a.act(n * f)?)) } else { (None, None) };
        // RMSNorm computes no mean: every norm's mean view is this one
        // unused buffer instead of one each.
        let rms_mean = if m.norm == Norm::Rmsnorm { Some(a.f32(n)?) } else { None };
        let mean = |a: &mut Alloc<'_, B>| match rms_mean {
            Some(v) => Ok(v),
            None => a.f32(n),
        };
        let block = |a: &mut Alloc<'_, B>, res_in: View| -> Result<LayerActs> {
            Ok(LayerActs {
                res_in,
                ln1: match shared_ln { Some(v) => v, None => a.act(n * c)? },
                ln1_mean: mean(a)?,
                ln1_rstd: a.f32(n)?,
                qkv: a.act(n * qkv_w)?,
                atty: a.act(n * att_w)?,
                lse: a.f32(batch * m.n_heads * seq)?,
                res_mid: a.act(n * c)?,
                ln2: match shared_ln { Some(v) => v, None => a.act(n * c)? },
                ln2_mean: mean(a)?,
                ln2_rstd: a.f32(n)?,
                fch: a.act(n * fc_w)?,
                fch_act: match shared_act { Some(v) => v, None => a.act(n * f)? },
            })
        };
        let mut layers = Vec::with_capacity(m.n_layers);
        if let Recompute::Layers { keep_attention } = recompute {
            // One block's buffers for all blocks; each keeps its own input
            // (and its attention output and log-sum-exp if they are kept).
            let res_in = a.act(n * c)?;
            let first = block(&mut a, res_in)?;
            layers.push(first);
            for _ in 1..m.n_layers {
                let res_in = a.act(n * c)?;
                let (atty, lse) = if keep_attention { (a.act(n * att_w)?, a.f32(batch * m.n_heads * seq)?) } else { (first.atty, first.lse) };
                layers.push(LayerActs { res_in, atty, lse, ..first });
            }
        } else {
            for _ in 0..m.n_layers {
                let res_in = a.act(n * c)?;
                layers.push(block(&mut a, res_in)?);
            }
        }
        // The attention half's gradients (dqkv, datty) and the MLP half's
        // (dfch, dfch_act) are never live at once: each half overwrites its
        // two before reading them. They share two buffers.
        let (wide, narrow) = (a.act(n * qkv_w.max(fc_w))?, a.act(n * att_w.max(f))?);
        let grads = GradScratch {
            dres: a.act(n * c)?,
            dln: a.act(n * c)?,
            dqkv: wide.sub(0, n * qkv_w),
            datty: narrow.sub(0, n * att_w),
            dfch: wide.sub(0, n * fc_w),
            dfch_act: narrow.sub(0, n * f),
        };
        Ok(Activations {
            batch,
            seq,
            tokens,
            targets,
            layers,
            res_out: a.act(n * c)?,
            lnf: a.act(n * c)?,
            lnf_mean: mean(&mut a)?,
            lnf_rstd: a.f32(n)?,
            // bf16 on CUDA: the loss kernel reads them and computes in fp32;
            // storing them in fp32 would double the biggest activation.
            logits: a.act(logit_rows * m.padded_vocab())?,
            logit_rows,
            losses: a.f32(n)?,
            proj_out: a.act(n * c)?,
            grads,
            bufs: a.bufs,
        })
    }

    /// The token rows `0..N` in chunks of `logit_rows`.
    pub fn row_chunks(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let (n, rows) = (self.batch * self.seq, self.logit_rows);
        (0..n).step_by(rows).map(move |r0| r0..(r0 + rows).min(n))
    }

    pub fn free<B: Backend>(self, b: &mut B) {
        for id in self.bufs {
            b.free(id);
        }
    }
}

/// Rows of the logits buffer for N token rows and `train.logits_chunk`.
pub fn logit_rows(n: usize, logits_chunk: usize) -> usize {
    if logits_chunk == 0 { n } else { n.min(logits_chunk) }
}
