//! The decoder: parameter layout, initialization, forward and backward.
//!
//! One decoder family with switches (layernorm|rmsnorm, gelu|swiglu,
//! learned|rotary positions, grouped-query attention, tied or untied
//! embeddings), written as explicit passes over the backend op set.

pub mod activations;
mod backward;
mod forward;
pub mod init;
pub mod layout;
pub mod padding;
pub mod views;

use crate::backend::{Backend, BufId, DType, View, IGNORE};
use crate::config::ModelConfig;
pub use activations::Recompute;
use activations::Activations;
use anyhow::{bail, Result};
use layout::ParamLayout;
use views::ModelViews;

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
    /// Wall time of the last `forward_backward`'s two halves (synchronized).
    pub last_fwd_ms: f64,
    pub last_bwd_ms: f64,
    pv: ModelViews,
    gv: ModelViews,
    acts: Option<Activations>,
}

impl Model {
    /// Allocates zeroed parameters and gradients on the backend.
    pub fn new<B: Backend>(b: &mut B, cfg: &ModelConfig, recompute: Recompute) -> Result<Self> {
        let layout = ParamLayout::new(cfg);
        let params = b.alloc(layout.total, DType::F32)?;
        let grads = b.alloc(layout.total, DType::F32)?;
        let pv = ModelViews::new(&layout, params, cfg.n_layers);
        let gv = ModelViews::new(&layout, grads, cfg.n_layers);
        Ok(Model { cfg: cfg.clone(), layout, params, grads, recompute, logits_chunk: 0, last_fwd_ms: 0.0, last_bwd_ms: 0.0, pv, gv, acts: None })
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
        let acts = self.prepare_acts(b, batch, seq)?;
        let start = std::time::Instant::now();
        // The head's backward runs inside the loss loop (each chunk's logit
        // gradient is consumed before the next chunk overwrites it); its
        // time counts as backward.
        let out = self.run_loss(b, &acts, inputs, targets, Some(grad_scale)).and_then(|(loss, head_bwd_ms)| {
            self.last_fwd_ms = start.elapsed().as_secs_f64() * 1e3 - head_bwd_ms;
            self.backward_from_lnf(b, &acts)?;
            b.synchronize()?;
            self.last_bwd_ms = start.elapsed().as_secs_f64() * 1e3 - self.last_fwd_ms;
            Ok(loss)
        });
        self.acts = Some(acts);
        out
    }

    /// Forward only: mean loss over the non-ignored targets.
    pub fn eval_loss<B: Backend>(&mut self, b: &mut B, inputs: &[u32], targets: &[u32], batch: usize, seq: usize) -> Result<f32> {
        let acts = self.prepare_acts(b, batch, seq)?;
        let out = self.run_loss(b, &acts, inputs, targets, None).map(|(loss, _)| loss);
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
        let out = (|| {
            b.upload_u32(acts.tokens, tokens)?;
            self.forward_hidden(b, &acts)?;
            let (width, v) = (self.cfg.padded_vocab(), self.cfg.vocab_size);
            let mut out = Vec::with_capacity(batch * seq * v);
            let mut chunk = vec![0.0; acts.logits.len];
            for rows in acts.row_chunks() {
                let logits = self.head_fwd(b, &acts, rows)?;
                b.download(logits, &mut chunk[..logits.len])?;
                out.extend(chunk[..logits.len].chunks(width).flat_map(|row| row[..v].iter().copied()));
            }
            Ok(out)
        })();
        self.acts = Some(acts);
        out
    }

    /// Logits of the last position of a single sequence (for sampling).
    pub fn last_logits<B: Backend>(&mut self, b: &mut B, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let seq = tokens.len();
        let acts = self.prepare_acts(b, 1, seq)?;
        let (width, v) = (self.cfg.padded_vocab(), self.cfg.vocab_size);
        let out = (|| {
            b.upload_u32(acts.tokens, tokens)?;
            self.forward_hidden(b, &acts)?;
            // The head on the last row only, started at a multiple of 8 rows
            // (the GPU's matmul operands stay 16-byte aligned) when the
            // logits buffer holds that many rows.
            let aligned = (seq - 1) / 8 * 8;
            let first = if seq - aligned <= acts.logit_rows { aligned } else { seq - 1 };
            let logits = self.head_fwd(b, &acts, first..seq)?;
            let mut row = vec![0.0; v];
            b.download(logits.sub((seq - 1 - first) * width, v), &mut row)?;
            Ok(row)
        })();
        self.acts = Some(acts);
        out
    }

    /// Forward, then the head and loss chunk by chunk; with `grad_scale`
    /// also each chunk's logit gradient and the head's backward. Returns the
    /// mean loss and the time of the head's backward (ms, synchronized).
    fn run_loss<B: Backend>(&self, b: &mut B, acts: &Activations, inputs: &[u32], targets: &[u32], grad_scale: Option<f32>) -> Result<(f32, f64)> {
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
        self.forward_hidden(b, acts)?;
        let (width, classes) = (self.cfg.padded_vocab(), self.cfg.vocab_size);
        let mut head_bwd_ms = 0.0;
        for rows in acts.row_chunks() {
            let logits = self.head_fwd(b, acts, rows.clone())?;
            let dlogits = grad_scale.map(|_| logits);
            let (losses, targets) = (acts.losses.sub(rows.start, rows.len()), acts.targets.sub(rows.start, rows.len()));
            b.softmax_xent(losses, dlogits, logits, targets, rows.len(), width, classes, grad_scale.unwrap_or(0.0))?;
            if let Some(dlogits) = dlogits {
                b.synchronize()?;
                let start = std::time::Instant::now();
                self.head_bwd(b, acts, rows, dlogits)?;
                b.synchronize()?;
                head_bwd_ms += start.elapsed().as_secs_f64() * 1e3;
            }
        }
        let mut losses = vec![0.0f32; n];
        b.download(acts.losses, &mut losses)?;
        let sum: f64 = losses.iter().map(|&x| x as f64).sum();
        Ok(((sum / valid.max(1) as f64) as f32, head_bwd_ms))
    }
}
