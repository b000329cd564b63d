//! The decoder: parameter layout, initialization, forward and backward.
//!
//! One decoder family with switches (layernorm|rmsnorm, gelu|swiglu,
//! learned|rotary positions, grouped-query attention, tied or untied
//! embeddings), written as explicit passes over the backend op set.

pub mod activations;
pub mod attend;
mod backward;
mod forward;
pub mod init;
pub mod layout;
pub mod padding;
pub mod store;
pub mod views;

use crate::backend::{Backend, BufId, DType, Mark, View, IGNORE};
use crate::config::ModelConfig;
pub use activations::Recompute;
pub use attend::{Attention, LocalAttention};
use activations::Activations;
use anyhow::{bail, Result};
use layout::ParamLayout;
use store::{FlatStore, ParamStore, Unit};

pub struct Model {
    pub cfg: ModelConfig,
    pub layout: ParamLayout,
    /// fp32 master weights, one flat buffer.
    pub params: BufId,
    /// fp32 gradients, same layout as `params`.
    pub grads: BufId,
    /// What the backward pass recomputes instead of keeping.
    pub recompute: Recompute,
    /// Token rows of the output head at once (`train.logits_chunk`; 0 = all).
    pub logits_chunk: usize,
    /// Timing marks of the last `forward_backward`: (start, end) spans of
    /// the forward and of the backward (read with [`Model::phase_ms`]).
    fwd_spans: Vec<(Mark, Mark)>,
    bwd_spans: Vec<(Mark, Mark)>,
    /// The model's own store over `params`/`grads` (one process).
    flat: Option<FlatStore>,
    acts: Option<Activations>,
    /// `acts` hold a training forward whose backward has not run yet.
    backward_due: bool,
}

impl Model {
    /// Allocates zeroed parameters and gradients on the backend.
    pub fn new<B: Backend>(b: &mut B, cfg: &ModelConfig, recompute: Recompute) -> Result<Self> {
        let layout = ParamLayout::new(cfg);
        let params = b.alloc(layout.total, DType::F32)?;
        let grads = b.alloc(layout.total, DType::F32)?;
        let flat = Some(FlatStore::new(&layout, params, grads, cfg.n_layers));
        Ok(Model { cfg: cfg.clone(), layout, params, grads, recompute, logits_chunk: 0, fwd_spans: vec![], bwd_spans: vec![], flat, acts: None, backward_due: false })
    }

    /// Runs `f` with the model's own flat store.
    fn with_flat<T>(&mut self, f: impl FnOnce(&mut Self, &mut FlatStore) -> Result<T>) -> Result<T> {
        let Some(mut flat) = self.flat.take() else {
            anyhow::bail!("this model's weights live in a store (ZeRO): use the *_in methods");
        };
        let out = f(self, &mut flat);
        self.flat = Some(flat);
        out
    }

    /// Starts a new timing window (the trainer: once per optimizer step,
    /// after `Backend::clear_marks`).
    pub fn clear_phase_spans(&mut self) {
        self.fwd_spans.clear();
        self.bwd_spans.clear();
    }

    /// Milliseconds of forward and backward of every `forward_backward`
    /// since `clear_phase_spans`, from the backend's timing marks (waits for
    /// the device here, never inside the passes). The output head's
    /// backward, which runs chunk by chunk inside the loss loop, counts as
    /// backward.
    pub fn phase_ms<B: Backend>(&self, b: &mut B) -> Result<(f64, f64)> {
        let mut total = |spans: &[(Mark, Mark)]| -> Result<f64> { spans.iter().map(|&(s, e)| b.elapsed_ms(s, e)).sum() };
        Ok((total(&self.fwd_spans)?, total(&self.bwd_spans)?))
    }

    /// A model whose weights and gradients live in a store given to each
    /// pass (`*_in` methods: ZeRO); it allocates only activations.
    pub fn new_bare(cfg: &ModelConfig, recompute: Recompute) -> Self {
        let unheld = BufId(usize::MAX);
        Model { cfg: cfg.clone(), layout: ParamLayout::new(cfg), params: unheld, grads: unheld, recompute, logits_chunk: 0, fwd_spans: vec![], bwd_spans: vec![], flat: None, acts: None, backward_due: false }
    }

    /// Computes the output head and loss `rows` token rows at a time
    /// (`train.logits_chunk`; 0, the default here, = all rows at once). A
    /// multiple of 8 keeps the GPU's matmul operands 16-byte aligned.
    pub fn with_logits_chunk(mut self, rows: usize) -> Self {
        self.logits_chunk = rows;
        self
    }

    /// Parameters as other frameworks count them (padding left out; the
    /// buffers hold `layout.total`).
    pub fn num_params(&self) -> usize {
        ParamLayout::new(&self.cfg.unpadded()).total
    }

    pub fn params_view(&self) -> View {
        View::whole(self.params, self.layout.total)
    }

    pub fn grads_view(&self) -> View {
        View::whole(self.grads, self.layout.total)
    }

    /// Uploads host weights (flat, in layout order).
    pub fn set_params<B: Backend>(&self, b: &mut B, host: &[f32]) -> Result<()> {
        if host.len() != self.layout.total {
            bail!("weights have {} values but the model needs {}", host.len(), self.layout.total);
        }
        b.upload(self.params_view(), host)?;
        b.params_changed(self.params_view())
    }

    pub fn get_params<B: Backend>(&self, b: &mut B) -> Result<Vec<f32>> {
        let mut host = vec![0.0; self.layout.total];
        b.download(self.params_view(), &mut host)?;
        Ok(host)
    }

    pub fn zero_grads<B: Backend>(&self, b: &mut B) -> Result<()> {
        b.fill(self.grads_view(), 0.0)
    }

    /// Activation buffers for this (batch, seq), reallocated on change.
    fn prepare_acts<B: Backend>(&mut self, b: &mut B, batch: usize, seq: usize) -> Result<Activations> {
        if seq > self.cfg.max_seq_len {
            bail!("sequence of {seq} tokens exceeds model.max_seq_len = {}", self.cfg.max_seq_len);
        }
        // Whatever pass asks overwrites them.
        self.backward_due = false;
        match self.acts.take() {
            Some(a) if a.batch == batch && a.seq == seq => Ok(a),
            old => {
                if let Some(a) = old {
                    a.free(b);
                }
                Activations::new(b, &self.cfg, batch, seq, self.recompute, self.logits_chunk)
            }
        }
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            bail!("token id {bad} is outside the model's vocabulary of {} (model.vocab_size)", self.cfg.vocab_size);
        }
        Ok(())
    }

    /// Forward and backward on one micro-batch: returns the mean loss over
    /// the non-ignored targets and accumulates `grad_scale`-weighted
    /// gradients of the summed loss into the gradient buffer.
    /// Pass `grad_scale = 1 / (valid targets · micro-batches)` for the mean.
    pub fn forward_backward<B: Backend>(&mut self, b: &mut B, inputs: &[u32], targets: &[u32], batch: usize, seq: usize, grad_scale: f32) -> Result<f32> {
        self.with_flat(|m, flat| m.forward_backward_in(b, flat, inputs, targets, batch, seq, grad_scale))
    }

    /// [`forward_backward`](Self::forward_backward) with the weights and
    /// gradients held by `store` (a sharded store reduces each unit's
    /// gradients as the backward leaves it).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_in<B: Backend>(&mut self, b: &mut B, store: &mut dyn ParamStore<B>, inputs: &[u32], targets: &[u32], batch: usize, seq: usize, grad_scale: f32) -> Result<f32> {
        self.forward_backward_with(b, store, &mut LocalAttention, inputs, targets, batch, seq, grad_scale)
    }

    /// [`forward_backward`](Self::forward_backward) with the attention step
    /// run by `attn` (the model's own weights).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_attn<B: Backend>(&mut self, b: &mut B, attn: &mut dyn Attention<B>, inputs: &[u32], targets: &[u32], batch: usize, seq: usize, grad_scale: f32) -> Result<f32> {
        self.with_flat(|m, flat| m.forward_backward_with(b, flat, attn, inputs, targets, batch, seq, grad_scale))
    }

    /// [`forward_backward_in`](Self::forward_backward_in) with the attention
    /// step run by `attn` (sequence parallelism: `seq` is this rank's share
    /// of each sequence, and the returned loss the mean over its tokens).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_with<B: Backend>(&mut self, b: &mut B, store: &mut dyn ParamStore<B>, attn: &mut dyn Attention<B>, inputs: &[u32], targets: &[u32], batch: usize, seq: usize, grad_scale: f32) -> Result<f32> {
        let loss = self.forward_with(b, store, attn, inputs, targets, batch, seq, grad_scale)?;
        self.backward_with(b, store, attn)?;
        Ok(loss)
    }

    /// The first half of [`forward_backward_with`](Self::forward_backward_with):
    /// the forward, the loss and the output head's gradient (computed in
    /// the loss loop; no unit's gradients are complete yet, so no store
    /// has seen `grads_done`). Returns the loss, so a caller can judge it
    /// before the rest of backward (an offloaded step, whose units are
    /// updated during backward); [`backward_with`](Self::backward_with)
    /// must follow before any other pass.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with<B: Backend>(&mut self, b: &mut B, store: &mut dyn ParamStore<B>, attn: &mut dyn Attention<B>, inputs: &[u32], targets: &[u32], batch: usize, seq: usize, grad_scale: f32) -> Result<f32> {
        let acts = self.prepare_acts(b, batch, seq)?;
        let out = self.run_loss(b, store, attn, &acts, inputs, targets, Some(grad_scale));
        self.backward_due = out.is_ok();
        self.acts = Some(acts);
        out
    }

    /// The rest of backward after [`forward_with`](Self::forward_with),
    /// from the activations it left.
    pub fn backward_with<B: Backend>(&mut self, b: &mut B, store: &mut dyn ParamStore<B>, attn: &mut dyn Attention<B>) -> Result<()> {
        let acts = match self.acts.take() {
            Some(a) if std::mem::take(&mut self.backward_due) => a,
            other => {
                self.acts = other;
                bail!("backward without the training forward it continues (forward_with)");
            }
        };
        let out = (|| {
            let start = b.mark()?;
            self.backward_from_lnf(b, store, attn, &acts)?;
            self.bwd_spans.push((start, b.mark()?));
            Ok(())
        })();
        self.acts = Some(acts);
        out
    }

    /// Forward only: mean loss over the non-ignored targets.
    pub fn eval_loss<B: Backend>(&mut self, b: &mut B, inputs: &[u32], targets: &[u32], batch: usize, seq: usize) -> Result<f32> {
        self.with_flat(|m, flat| m.eval_loss_in(b, flat, inputs, targets, batch, seq))
    }

    /// [`eval_loss`](Self::eval_loss) with the weights held by `store`.
    pub fn eval_loss_in<B: Backend>(&mut self, b: &mut B, store: &mut dyn ParamStore<B>, inputs: &[u32], targets: &[u32], batch: usize, seq: usize) -> Result<f32> {
        self.eval_loss_with(b, store, &mut LocalAttention, inputs, targets, batch, seq)
    }

    /// [`eval_loss_in`](Self::eval_loss_in) with the attention step run by `attn`.
    #[allow(clippy::too_many_arguments)]
    pub fn eval_loss_with<B: Backend>(&mut self, b: &mut B, store: &mut dyn ParamStore<B>, attn: &mut dyn Attention<B>, inputs: &[u32], targets: &[u32], batch: usize, seq: usize) -> Result<f32> {
        let acts = self.prepare_acts(b, batch, seq)?;
        let out = self.run_loss(b, store, attn, &acts, inputs, targets, None);
        self.acts = Some(acts);
        out
    }

    /// All logits `[batch·seq, V]` of a batch of sequences (the vocabulary
    /// padding columns left out).
    pub fn logits<B: Backend>(&mut self, b: &mut B, tokens: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        if tokens.len() != batch * seq {
            bail!("{} tokens given for a batch of {batch}×{seq}", tokens.len());
        }
        self.check_tokens(tokens)?;
        let acts = self.prepare_acts(b, batch, seq)?;
        let Some(mut flat) = self.flat.take() else {
            self.acts = Some(acts);
            bail!("this model's weights live in a store (ZeRO): logits need the model's own buffers");
        };
        let out = (|| {
            b.upload_u32(acts.tokens, tokens)?;
            self.forward_hidden(b, &mut flat, &mut LocalAttention, &acts)?;
            let (width, v) = (self.cfg.padded_vocab(), self.cfg.vocab_size);
            let mut out = Vec::with_capacity(batch * seq * v);
            let mut chunk = vec![0.0; acts.logits.len];
            for rows in acts.row_chunks() {
                let logits = self.head_fwd(b, &flat, &acts, rows)?;
                b.download(logits, &mut chunk[..logits.len])?;
                out.extend(chunk[..logits.len].chunks(width).flat_map(|row| row[..v].iter().copied()));
            }
            Ok(out)
        })();
        self.flat = Some(flat);
        self.acts = Some(acts);
        out
    }

    /// Logits of the last position of a single sequence (for sampling).
    pub fn last_logits<B: Backend>(&mut self, b: &mut B, tokens: &[u32]) -> Result<Vec<f32>> {
        self.with_flat(|m, flat| m.last_logits_in(b, flat, tokens))
    }

    /// [`last_logits`](Self::last_logits) with the weights held by `store`.
    pub fn last_logits_in<B: Backend>(&mut self, b: &mut B, store: &mut dyn ParamStore<B>, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let seq = tokens.len();
        let acts = self.prepare_acts(b, 1, seq)?;
        let (width, v) = (self.cfg.padded_vocab(), self.cfg.vocab_size);
        let out = (|| {
            b.upload_u32(acts.tokens, tokens)?;
            self.forward_hidden(b, store, &mut LocalAttention, &acts)?;
            // The head on the last row only, started at a multiple of 8 rows
            // (the GPU's matmul operands stay 16-byte aligned) when the
            // logits buffer holds that many rows.
            let aligned = (seq - 1) / 8 * 8;
            let first = if seq - aligned <= acts.logit_rows { aligned } else { seq - 1 };
            let logits = self.head_fwd(b, store, &acts, first..seq)?;
            let mut row = vec![0.0; v];
            b.download(logits.sub((seq - 1 - first) * width, v), &mut row)?;
            store.release(b, Unit::Head)?;
            Ok(row)
        })();
        self.acts = Some(acts);
        out
    }

    /// Forward, then the head and loss chunk by chunk; with `grad_scale`
    /// also each chunk's logit gradient and the head's backward (timing
    /// spans recorded). Returns the mean loss. Without `grad_scale` the
    /// head's weights are released here; with it, `backward_from_lnf`
    /// releases them after the final norm's backward.
    #[allow(clippy::too_many_arguments)]
    fn run_loss<B: Backend>(&mut self, b: &mut B, store: &mut dyn ParamStore<B>, attn: &mut dyn Attention<B>, acts: &Activations, inputs: &[u32], targets: &[u32], grad_scale: Option<f32>) -> Result<f32> {
        let n = acts.batch * acts.seq;
        if inputs.len() != n || targets.len() != n {
            bail!("batch has {} inputs and {} targets; expected {n}", inputs.len(), targets.len());
        }
        self.check_tokens(inputs)?;
        let valid = targets.iter().filter(|&&t| t != IGNORE).count();
        if targets.iter().any(|&t| t != IGNORE && t as usize >= self.cfg.vocab_size) {
            bail!("a target id is outside the model's vocabulary of {}", self.cfg.vocab_size);
        }
        b.upload_u32(acts.tokens, inputs)?;
        b.upload_u32(acts.targets, targets)?;
        let mut fwd_start = b.mark()?;
        self.forward_hidden(b, store, attn, acts)?;
        if grad_scale.is_some() {
            store.fetch_grads(b, Unit::Head)?;
        }
        let (width, classes) = (self.cfg.padded_vocab(), self.cfg.vocab_size);
        for rows in acts.row_chunks() {
            let logits = self.head_fwd(b, store, acts, rows.clone())?;
            let dlogits = grad_scale.map(|_| logits);
            let (losses, targets) = (acts.losses.sub(rows.start, rows.len()), acts.targets.sub(rows.start, rows.len()));
            b.softmax_xent(losses, dlogits, logits, targets, rows.len(), width, classes, grad_scale.unwrap_or(0.0))?;
            if let Some(dlogits) = dlogits {
                // The head's backward runs inside the loss loop (each chunk's
                // logit gradient is consumed before the next chunk
                // overwrites it); its time counts as backward.
                let bwd_start = b.mark()?;
                self.fwd_spans.push((fwd_start, bwd_start));
                self.head_bwd(b, store, acts, rows, dlogits)?;
                fwd_start = b.mark()?;
                self.bwd_spans.push((bwd_start, fwd_start));
            }
        }
        if grad_scale.is_none() {
            store.release(b, Unit::Head)?;
        }
        let mut losses = vec![0.0f32; n];
        b.download(acts.losses, &mut losses)?;
        let sum: f64 = losses.iter().map(|&x| x as f64).sum();
        Ok((sum / valid.max(1) as f64) as f32)
    }
}
