//! Bad steps on purpose (`debug.nan_loss_step`, `debug.nan_grads_step`),
//! for tests of the bad-step guard (guard.rs): the plain and the offloaded
//! step call these at the same points, so a test can compare how each
//! handles the same bad step. Both are no-ops unless the key names the
//! step running.

use crate::config::Config;

/// A micro-batch's loss as the step sees it: NaN at `debug.nan_loss_step`
/// (its gradients are left as computed, so only a guard that judges the
/// loss before updating keeps the weights unchanged).
pub(super) fn loss(cfg: &Config, step: u64, loss: f32) -> f32 {
    if cfg.debug.nan_loss_step == step { f32::NAN } else { loss }
}

/// The scale of a micro-batch's loss gradient: NaN at
/// `debug.nan_grads_step`, which makes every gradient of the step NaN
/// while its loss (computed before the scale is used) stays finite.
pub(super) fn grad_scale(cfg: &Config, step: u64, scale: f32) -> f32 {
    if cfg.debug.nan_grads_step == step { f32::NAN } else { scale }
}
