//! The training step of a run whose optimizer is offloaded
//! (`offload.optimizer = cpu | nvme`): gradients go to the host as each
//! unit's backward ends and the optimizer steps there
//! (`parallel::offload` for the order and for clipping). One process,
//! ZeRO stage 0; the trainer's `train_step` hands over to it.
//!
//! The bad-step guard (guard.rs) decides before any unit is stepped where
//! it can: units step only during the last micro-batch's backward (or,
//! with `train.grad_clip > 0`, after it, once the norm is known), so the
//! step runs the last forward, asks the guard about the loss, and only
//! then the last backward; with clipping it asks again with the norm. A
//! skipped step steps no unit ([`Offload::discard`]) and is recorded as
//! the plain step records it. With `grad_clip = 0` the norm comes after
//! the units were stepped: a unit with non-finite gradients stops the run
//! instead (`parallel::offload::not_finite_unit`).

use super::inject;
use super::trainer::{step_line, tokens_per_step, Phases, State};
use crate::backend::Backend;
use crate::config::Config;
use crate::model::LocalAttention;
use crate::parallel::offload::{Offload, OVERLAP_ADVICE};
use crate::telemetry::metrics::TrainMetrics;
use anyhow::{bail, Context, Result};
use std::time::Instant;

/// [`train_step`] of an offloaded run: the gradients go to the host as
/// each unit's backward ends, the optimizer steps there (see
/// `parallel::offload` for the order and for clipping), unless the guard
/// skips the step first.
pub(super) fn offload_step<B: Backend>(b: &mut B, st: &mut State<B>, cfg: &Config, lr: f32) -> Result<TrainMetrics> {
    let t = &cfg.train;
    let step = st.step + 1;
    let start = Instant::now();
    b.clear_marks();
    st.model.clear_phase_spans();
    let off = st.off.as_mut().expect("an offloaded run");
    off.begin_step(lr, t.grad_clip)?;
    let mean = |sum: f64| (sum / t.grad_accum as f64) as f32;
    let mut loss_sum = 0.0f64;
    for i in 0..t.grad_accum {
        let batch = st.train.next_batch()?;
        let scale = inject::grad_scale(cfg, step, 1.0 / (batch.targets.len() * t.grad_accum) as f32);
        let last = i + 1 == t.grad_accum;
        off.set_last_micro(last);
        let loss = st.model.forward_with(b, &mut off.store(&mut st.zero), &mut LocalAttention, &batch.inputs, &batch.targets, t.batch_size, t.seq_len, scale)?;
        loss_sum += inject::loss(cfg, step, loss) as f64;
        // Units are stepped during the last backward: the loss rules first.
        if last && st.guard.verdict(mean(loss_sum), None).is_some() {
            off.discard()?;
        }
        st.model.backward_with(b, &mut off.store(&mut st.zero), &mut LocalAttention).with_context(|| format!("step {step}"))?;
    }
    let loss = mean(loss_sum);
    // With clipping the norm is known before any unit is stepped.
    let norm = off.norm_before_update(b)?;
    if norm.is_some() && st.guard.verdict(loss, norm).is_some() {
        off.discard()?;
    }
    let opt_start = b.mark()?;
    let grad_norm = off.finish(b, &mut st.zero, t.grad_clip).with_context(|| format!("step {step}"))?;
    let skipped = st.guard.judge(step, loss, grad_norm);
    check_applied_as_judged(off, skipped.as_deref(), step)?;
    let end = b.mark()?;
    let (fwd_ms, bwd_ms) = st.model.phase_ms(b)?;
    st.step += 1;
    let step_ms = start.elapsed().as_secs_f64() * 1e3;
    let phases = Phases { fwd_ms, bwd_ms, opt_ms: b.elapsed_ms(opt_start, end)?, step_ms };
    let rest = TrainMetrics { offload: Some(off.times()), skipped, ..TrainMetrics::default() };
    Ok(step_line(st.step, loss, lr, grad_norm, tokens_per_step(cfg), phases, b.peak_memory_bytes(), rest))
}

/// The guard's record of the step must match what happened to the units.
/// They differ only where an overlapped step (`grad_clip = 0`) stepped
/// every unit, each with finite gradients, and the norm summed from them
/// still overflowed: the update is in, so the run cannot go on as if the
/// step were skipped.
fn check_applied_as_judged(off: &Offload, skipped: Option<&str>, step: u64) -> Result<()> {
    match skipped {
        Some(why) if !off.discarded() => bail!(
            "step {step}: {why}, but with train.grad_clip = 0 its units were already stepped during backward (each with finite gradients), \
             so the step cannot be skipped and the run stops (no checkpoint is saved from these weights). {OVERLAP_ADVICE}"
        ),
        None if off.discarded() => bail!("internal: step {step} was not applied but the bad-step guard recorded it as applied"),
        _ => Ok(()),
    }
}
