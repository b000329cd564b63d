//! AlgoPerf's scoring (Dahl et al. 2023, "Benchmarking Neural Network
//! Training Algorithms"): per workload, each submission's time to target
//! (∞ if never reached) over the fastest submission's is its performance
//! ratio r ≥ 1; the performance profile ρ(τ) is the fraction of workloads
//! with r ≤ τ; the benchmark score is the area under ρ from τ = 1 to
//! τ_max = 4, divided by 3, so 1 = fastest everywhere, 0 = never within 4×.
//!
//! ρ is a step function, so the area has a closed form:
//! ∫₁⁴ 1[r ≤ τ] dτ = max(0, 4 − r), and score = Σ_w max(0, 4 − r_w) / (3W).

pub const TAU_MAX: f64 = 4.0;

/// Performance ratios `r[w][s]` from times `t[w][s]` (∞ = not reached). A
/// workload that no submission reached gives ∞ to everyone.
pub fn ratios(times: &[Vec<f64>]) -> Vec<Vec<f64>> {
    times
        .iter()
        .map(|row| {
            let best = row.iter().copied().filter(|t| t.is_finite()).fold(f64::INFINITY, f64::min);
            row.iter().map(|&t| if t.is_finite() && best.is_finite() && best > 0.0 { t / best } else if t.is_finite() && best == 0.0 { 1.0 } else { f64::INFINITY }).collect()
        })
        .collect()
}

/// ρ(τ): the fraction of a submission's ratios (one per workload) ≤ τ.
pub fn profile(ratios: &[f64], tau: f64) -> f64 {
    if ratios.is_empty() {
        return 0.0;
    }
    ratios.iter().filter(|&&r| r <= tau).count() as f64 / ratios.len() as f64
}

/// ∫₁^τmax ρ(τ) dτ / (τmax − 1).
pub fn score(ratios: &[f64]) -> f64 {
    if ratios.is_empty() {
        return 0.0;
    }
    ratios.iter().map(|&r| (TAU_MAX - r.max(1.0)).max(0.0)).sum::<f64>() / ((TAU_MAX - 1.0) * ratios.len() as f64)
}

/// The profile as plot points on [1, τmax]: a step at every ratio.
pub fn profile_points(ratios: &[f64]) -> Vec<(f64, f64)> {
    let mut xs: Vec<f64> = ratios.iter().copied().filter(|r| r.is_finite() && *r <= TAU_MAX).collect();
    xs.sort_by(f64::total_cmp);
    let mut pts = vec![(1.0, profile(ratios, 1.0))];
    for x in xs {
        if x > 1.0 {
            pts.push((x, profile(ratios, x - 1e-12)));
            pts.push((x, profile(ratios, x)));
        }
    }
    pts.push((TAU_MAX, profile(ratios, TAU_MAX)));
    pts
}

#[cfg(test)]
mod tests {
    use super::*;
    const INF: f64 = f64::INFINITY;

    #[test]
    fn hand_computed_example() {
        // Two workloads, three submissions (times in seconds).
        // w0: A 10, B 20, C never  -> ratios 1, 2, ∞
        // w1: A 30, B 15, C 75     -> ratios 2, 1, 5
        let r = ratios(&[vec![10.0, 20.0, INF], vec![30.0, 15.0, 75.0]]);
        assert_eq!(r, [vec![1.0, 2.0, INF], vec![2.0, 1.0, 5.0]]);
        let col = |s: usize| vec![r[0][s], r[1][s]];
        // A: ρ = ½ on [1, 2), 1 on [2, 4]: area ½·1 + 1·2 = 2.5 -> 2.5/3.
        // B: the same ratios {2, 1}: 2.5/3. C: ratios {∞, 5}: 0.
        assert!((score(&col(0)) - 2.5 / 3.0).abs() < 1e-12);
        assert!((score(&col(1)) - 2.5 / 3.0).abs() < 1e-12);
        assert_eq!(score(&col(2)), 0.0);
        assert_eq!((profile(&col(0), 1.0), profile(&col(0), 1.99), profile(&col(0), 2.0)), (0.5, 0.5, 1.0));
        assert_eq!(profile(&col(2), 4.0), 0.0);
    }

    #[test]
    fn closed_form_equals_numerical_integral() {
        let rs = [1.0, 1.3, 2.7, 3.99, 4.5, INF];
        let n = 300_000;
        let h = (TAU_MAX - 1.0) / n as f64;
        let numeric: f64 = (0..n).map(|i| profile(&rs, 1.0 + (i as f64 + 0.5) * h)).sum::<f64>() * h / (TAU_MAX - 1.0);
        assert!((score(&rs) - numeric).abs() < 1e-5, "{} vs {numeric}", score(&rs));
    }

    #[test]
    fn nobody_reached_means_infinite_ratios_and_fastest_everywhere_scores_one() {
        assert_eq!(ratios(&[vec![INF, INF]]), [vec![INF, INF]]);
        assert_eq!(score(&[1.0, 1.0, 1.0]), 1.0);
        let pts = profile_points(&[1.0, 2.0]);
        assert_eq!(pts, [(1.0, 0.5), (2.0, 0.5), (2.0, 1.0), (4.0, 1.0)]);
    }
}
