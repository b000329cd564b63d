//! The loss forecast of AutoLRS: L(t) = a·e^(bt) + c with b < 0, fitted by
//! least squares to a short loss curve, then read off at a later step.
//!
//! For a fixed b the model is linear in (a, c), so the fit is a 1-D search
//! over b (a log-spaced grid, then golden-section refinement) with a and c
//! in closed form at each b. The decay rate is bounded: |b| ≥ 1/T for a
//! longest time constant T (the caller passes a multiple of the horizon),
//! which keeps a nearly straight noisy curve from being extrapolated as a
//! straight line over the whole horizon, and |b| ≤ 10 (a curve that settles
//! within a step). Everything in f64.

/// A fitted curve.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpFit {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    /// Root mean squared residual of the fit.
    pub rmse: f64,
}

impl ExpFit {
    /// The curve at step `t` (the first point of the fitted data is t = 1).
    pub fn at(&self, t: f64) -> f64 {
        self.a * (self.b * t).exp() + self.c
    }
}

const MAX_RATE: f64 = 10.0;
const GRID: usize = 160;

/// Fits `ys[i]` observed at t = i + 1. `max_time_constant` bounds 1/|b|.
/// Fewer than 3 points: a flat line at their mean.
pub fn fit(ys: &[f64], max_time_constant: f64) -> ExpFit {
    let n = ys.len();
    if n < 3 {
        let c = if n == 0 { f64::NAN } else { ys.iter().sum::<f64>() / n as f64 };
        return ExpFit { a: 0.0, b: -1.0, c, rmse: 0.0 };
    }
    let min_rate = (1.0 / max_time_constant.max(1.0)).min(MAX_RATE);
    // Search u = ln|b| on [ln min_rate, ln MAX_RATE].
    let (lo, hi) = (min_rate.ln(), MAX_RATE.ln());
    let sse = |u: f64| solve(ys, -u.exp()).1;
    let du = (hi - lo) / (GRID - 1) as f64;
    let best = (0..GRID).map(|i| lo + du * i as f64).min_by(|x, y| sse(*x).total_cmp(&sse(*y))).unwrap();
    let u = golden(sse, (best - du).max(lo), (best + du).min(hi));
    let b = -u.exp();
    let ((a, c), s) = solve(ys, b);
    ExpFit { a, b, c, rmse: (s / n as f64).sqrt() }
}

/// Least squares of ys on [e^(bt), 1]: ((a, c), sum of squared residuals).
fn solve(ys: &[f64], b: f64) -> ((f64, f64), f64) {
    let n = ys.len() as f64;
    let (mut se, mut see, mut sy, mut sey) = (0.0, 0.0, 0.0, 0.0);
    for (i, &y) in ys.iter().enumerate() {
        let e = (b * (i + 1) as f64).exp();
        se += e;
        see += e * e;
        sy += y;
        sey += e * y;
    }
    let det = n * see - se * se;
    let (a, c) = if det.abs() <= 1e-12 * n * see.max(1e-300) {
        (0.0, sy / n) // e^(bt) is (numerically) constant: a flat line
    } else {
        ((n * sey - se * sy) / det, (see * sy - se * sey) / det)
    };
    let sse = ys.iter().enumerate().map(|(i, &y)| (a * (b * (i + 1) as f64).exp() + c - y).powi(2)).sum();
    ((a, c), sse)
}

/// Minimum of a unimodal `f` on [lo, hi] by golden-section search.
fn golden(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let (mut x1, mut x2) = (hi - r * (hi - lo), lo + r * (hi - lo));
    let (mut f1, mut f2) = (f(x1), f(x2));
    for _ in 0..60 {
        if f1 <= f2 {
            hi = x2;
            (x2, f2) = (x1, f1);
            x1 = hi - r * (hi - lo);
            f1 = f(x1);
        } else {
            lo = x1;
            (x1, f1) = (x2, f2);
            x2 = lo + r * (hi - lo);
            f2 = f(x2);
        }
    }
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(a: f64, b: f64, c: f64, n: usize) -> Vec<f64> {
        (1..=n).map(|t| a * (b * t as f64).exp() + c).collect()
    }

    #[test]
    fn recovers_a_known_decay_and_forecasts_it() {
        let ys = curve(2.0, -0.15, 3.0, 20);
        let f = fit(&ys, 1000.0);
        assert!((f.a - 2.0).abs() < 1e-6 && (f.b + 0.15).abs() < 1e-7 && (f.c - 3.0).abs() < 1e-6, "{f:?}");
        assert!((f.at(200.0) - (2.0 * (-30f64).exp() + 3.0)).abs() < 1e-6);
        assert!(f.rmse < 1e-8);
    }

    #[test]
    fn rising_curve_is_forecast_to_rise() {
        // A diverging lr: the loss climbs towards a higher plateau (a < 0).
        let ys = curve(-1.0, -0.3, 5.0, 12);
        let f = fit(&ys, 1000.0);
        assert!(f.a < 0.0 && (f.c - 5.0).abs() < 1e-6, "{f:?}");
        assert!(f.at(100.0) > ys[11]);
    }

    #[test]
    fn noisy_curve_forecast_is_close() {
        // Deterministic ±1% "noise".
        let ys: Vec<f64> = curve(1.5, -0.08, 2.0, 40).iter().enumerate().map(|(i, y)| y * (1.0 + 0.01 * ((i * 7919 % 13) as f64 / 6.0 - 1.0))).collect();
        let f = fit(&ys, 1000.0);
        let want = 1.5 * (-0.08f64 * 400.0).exp() + 2.0;
        assert!((f.at(400.0) - want).abs() < 0.1, "forecast {} vs {want}: {f:?}", f.at(400.0));
    }

    #[test]
    fn time_constant_bound_limits_extrapolation_of_a_straight_line() {
        // A straight descent: unbounded, the fit is a line and the forecast
        // at step 1000 would be far below zero.
        let ys: Vec<f64> = (1..=10).map(|t| 4.0 - 0.01 * t as f64).collect();
        let f = fit(&ys, 20.0);
        assert!(f.b <= -1.0 / 20.0 + 1e-12, "{f:?}");
        let at = f.at(1000.0);
        assert!(at > 3.5 && at < ys[9], "forecast {at}");
    }

    #[test]
    fn flat_and_short_inputs() {
        let f = fit(&[2.0; 8], 100.0);
        assert!((f.at(50.0) - 2.0).abs() < 1e-9, "{f:?}");
        let f = fit(&[3.0, 1.0], 100.0);
        assert_eq!(f.at(10.0), 2.0);
    }
}
