//! The training step of a run whose optimizer is offloaded
//! (`offload.optimizer = cpu | nvme`): gradients go to the host as each
//! unit's backward ends and the optimizer steps there
//! (`parallel::offload` for the order and for clipping). One process,
//! ZeRO stage 0; the trainer's `train_step` hands over to it.

use super::trainer::{step_line, tokens_per_step, Phases, State};
use crate::backend::Backend;
use crate::config::Config;
use crate::telemetry::metrics::TrainMetrics;
use anyhow::{bail, Result};
use std::time::Instant;

/// [`train_step`] of an offloaded run: the gradients go to the host as
/// each unit's backward ends, the optimizer steps there (see
/// `parallel::offload` for the order and for clipping).
pub(super) fn offload_step<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, lr: f32) -> Result<TrainMetrics> {
    let t = &cfg.train;
    let start = Instant::now();
    b.clear_marks();
    st.model.clear_phase_spans();
    let off = st.off.as_mut().expect("an offloaded run");
    off.begin_step(lr, t.grad_clip)?;
    let mut loss_sum = 0.0f64;
    for i in 0..t.grad_accum {
        let batch = st.train.next_batch()?;
        let scale = 1.0 / (batch.targets.len() * t.grad_accum) as f32;
        off.set_last_micro(i + 1 == t.grad_accum);
        loss_sum += st.model.forward_backward_in(b, &mut off.store(&mut st.zero), &batch.inputs, &batch.targets, t.batch_size, t.seq_len, scale)? as f64;
    }
    let opt_start = b.mark()?;
    let grad_norm = off.finish(b, &mut st.zero, t.grad_clip)?;
    let loss = (loss_sum / t.grad_accum as f64) as f32;
    if !loss.is_finite() {
        bail!("loss became {loss} at step {}; lower optimizer.lr or raise train.warmup_steps", st.step + 1);
    }
    let end = b.mark()?;
    let (fwd_ms, bwd_ms) = st.model.phase_ms(b)?;
    st.step += 1;
    let step_ms = start.elapsed().as_secs_f64() * 1e3;
    let phases = Phases { fwd_ms, bwd_ms, opt_ms: b.elapsed_ms(opt_start, end)?, step_ms };
    let rest = TrainMetrics { offload: Some(off.times()), ..TrainMetrics::default() };
    Ok(step_line(st.step, loss, lr, grad_norm, tokens_per_step(cfg), phases, b.peak_memory_bytes(), rest))
}
