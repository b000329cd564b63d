//! Learning-rate schedules: linear warmup then cosine decay, warmup-stable-
//! decay (WSD: flat after warmup, linear decay over the last fraction), or
//! constant after warmup.

use crate::config::TrainConfig;

/// Learning rate for optimizer step `step` (0-based) of `cfg.steps`.
pub fn lr_at(cfg: &TrainConfig, base_lr: f32, step: u64) -> f32 {
    let min_lr = base_lr * cfg.min_lr_ratio;
    if step < cfg.warmup_steps {
        return base_lr * (step + 1) as f32 / cfg.warmup_steps as f32;
    }
    let total = cfg.steps.max(1);
    match cfg.schedule.as_str() {
        "cosine" => {
            let span = total.saturating_sub(cfg.warmup_steps).max(1) as f32;
            let progress = ((step - cfg.warmup_steps) as f32 / span).min(1.0);
            min_lr + 0.5 * (base_lr - min_lr) * (1.0 + (std::f32::consts::PI * progress).cos())
        }
        "wsd" => {
            let decay_steps = ((total as f32) * cfg.decay_fraction).round() as u64;
            let decay_start = total.saturating_sub(decay_steps).max(cfg.warmup_steps);
            if step < decay_start || decay_steps == 0 {
                base_lr
            } else {
                let progress = ((step - decay_start + 1) as f32 / decay_steps as f32).min(1.0);
                base_lr + (min_lr - base_lr) * progress
            }
        }
        _ => base_lr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: &str) -> TrainConfig {
        TrainConfig { steps: 100, warmup_steps: 10, min_lr_ratio: 0.1, decay_fraction: 0.2, schedule: schedule.into(), ..Default::default() }
    }

    #[test]
    fn warmup_is_linear() {
        let c = cfg("cosine");
        assert!((lr_at(&c, 1.0, 0) - 0.1).abs() < 1e-6);
        assert!((lr_at(&c, 1.0, 9) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn cosine_ends_at_min_and_is_half_way_in_the_middle() {
        let c = cfg("cosine");
        assert!((lr_at(&c, 1.0, 10) - 1.0).abs() < 1e-6);
        assert!((lr_at(&c, 1.0, 55) - 0.55).abs() < 1e-5);
        assert!((lr_at(&c, 1.0, 100) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn wsd_is_flat_then_decays_linearly() {
        let c = cfg("wsd");
        assert_eq!(lr_at(&c, 1.0, 50), 1.0);
        assert_eq!(lr_at(&c, 1.0, 79), 1.0);
        assert!((lr_at(&c, 1.0, 89) - 0.55).abs() < 1e-6);
        assert!((lr_at(&c, 1.0, 99) - 0.1).abs() < 1e-6);
    }
}
