//! A one-dimensional Gaussian process and expected improvement: the
//! Bayesian optimization inside AutoLRS, over x = log lr scaled to [0, 1].
//!
//! Matérn-5/2 kernel with unit signal variance on standardized targets, a
//! small noise term, and the length scale chosen from a grid by the log
//! marginal likelihood. With at most a few dozen points, a hand-written
//! Cholesky factorization is all the linear algebra needed.

use std::f64::consts::PI;

/// Observation noise variance in standardized units (forecasts are noisy).
const NOISE: f64 = 1e-2;
/// Length scales tried, in units of the [0, 1] search interval.
const LENGTH_SCALES: [f64; 7] = [0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0];

#[derive(Clone, Debug)]
pub struct Gp {
    xs: Vec<f64>,
    /// K⁻¹·y (standardized y).
    alpha: Vec<f64>,
    /// Lower Cholesky factor of K + noise·I, row-major n×n.
    chol: Vec<f64>,
    pub length_scale: f64,
    y_mean: f64,
    y_std: f64,
    /// The lowest observation.
    pub best_y: f64,
}

fn matern52(r: f64, l: f64) -> f64 {
    let s = 5f64.sqrt() * r.abs() / l;
    (1.0 + s + s * s / 3.0) * (-s).exp()
}

/// Cholesky factor L (row-major) of a symmetric positive definite `a`.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves L·x = b (forward substitution).
fn solve_lower(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in 0..n {
        x[i] = (b[i] - (0..i).map(|k| l[i * n + k] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    x
}

/// Solves Lᵀ·x = b (back substitution).
fn solve_upper_t(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (b[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    x
}

impl Gp {
    /// Conditions on observations `ys` at `xs` (at least one point).
    pub fn fit(xs: &[f64], ys: &[f64]) -> Gp {
        assert!(!xs.is_empty() && xs.len() == ys.len(), "a GP needs matching, non-empty observations");
        let n = xs.len();
        let y_mean = ys.iter().sum::<f64>() / n as f64;
        let var = ys.iter().map(|y| (y - y_mean).powi(2)).sum::<f64>() / n as f64;
        let y_std = if var > 1e-24 { var.sqrt() } else { 1.0 };
        let y: Vec<f64> = ys.iter().map(|v| (v - y_mean) / y_std).collect();
        let mut best: Option<(f64, Gp)> = None;
        for &l in &LENGTH_SCALES {
            let mut k = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    k[i * n + j] = matern52(xs[i] - xs[j], l) + if i == j { NOISE + 1e-9 } else { 0.0 };
                }
            }
            let Some(chol) = cholesky(&k, n) else { continue };
            let alpha = solve_upper_t(&chol, n, &solve_lower(&chol, n, &y));
            // log p(y) = -½ yᵀα - Σ log L_ii - n/2 log 2π
            let lml = -0.5 * y.iter().zip(&alpha).map(|(a, b)| a * b).sum::<f64>() - (0..n).map(|i| chol[i * n + i].ln()).sum::<f64>() - 0.5 * n as f64 * (2.0 * PI).ln();
            if best.as_ref().is_none_or(|(b, _)| lml > *b) {
                best = Some((lml, Gp { xs: xs.to_vec(), alpha, chol, length_scale: l, y_mean, y_std, best_y: ys.iter().copied().fold(f64::INFINITY, f64::min) }));
            }
        }
        best.expect("the kernel matrix plus noise is positive definite").1
    }

    /// Posterior mean and standard deviation at `x`, in the units of y.
    pub fn predict(&self, x: f64) -> (f64, f64) {
        let n = self.xs.len();
        let ks: Vec<f64> = self.xs.iter().map(|xi| matern52(x - xi, self.length_scale)).collect();
        let mean = ks.iter().zip(&self.alpha).map(|(a, b)| a * b).sum::<f64>();
        let v = solve_lower(&self.chol, n, &ks);
        let var = (1.0 - v.iter().map(|a| a * a).sum::<f64>()).max(0.0);
        (self.y_mean + self.y_std * mean, self.y_std * var.sqrt())
    }

    /// Expected improvement below `best` (minimization) at `x`.
    pub fn expected_improvement(&self, x: f64, best: f64) -> f64 {
        let (mu, sigma) = self.predict(x);
        expected_improvement(mu, sigma, best)
    }

    /// The point of a regular grid of `points` on [0, 1] with the largest
    /// expected improvement below the best observation (ties: the first),
    /// leaving out points within half a grid step of an observation. Where
    /// no point is expected to improve (EI vanishes everywhere), the grid
    /// point farthest from every observation instead.
    pub fn next_point(&self, points: usize) -> f64 {
        let points = points.max(2);
        let h = 1.0 / (points - 1) as f64;
        let gap = |x: f64| self.xs.iter().map(|o| (x - o).abs()).fold(f64::INFINITY, f64::min);
        let grid: Vec<f64> = (0..points).map(|i| i as f64 * h).filter(|&x| gap(x) > 0.5 * h).collect();
        if grid.is_empty() {
            return 0.5;
        }
        let (x, ei) = grid.iter().map(|&x| (x, self.expected_improvement(x, self.best_y))).fold((grid[0], f64::NEG_INFINITY), |acc, p| if p.1 > acc.1 { p } else { acc });
        if ei > 1e-9 * self.y_std {
            return x;
        }
        grid.iter().copied().fold((grid[0], f64::NEG_INFINITY), |acc, x| if gap(x) > acc.1 { (x, gap(x)) } else { acc }).0
    }
}

/// Standard normal CDF.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// EI for minimization: E[max(best - Y, 0)] with Y ~ N(mu, sigma²).
pub fn expected_improvement(mu: f64, sigma: f64, best: f64) -> f64 {
    if sigma <= 1e-12 {
        return (best - mu).max(0.0);
    }
    let z = (best - mu) / sigma;
    let pdf = (-0.5 * z * z).exp() / (2.0 * PI).sqrt();
    (best - mu) * normal_cdf(z) + sigma * pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]]: L = [[2, 0], [1, √2]].
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert!((l[0] - 2.0).abs() < 1e-12 && (l[2] - 1.0).abs() < 1e-12 && (l[3] - 2f64.sqrt()).abs() < 1e-12);
        // A·x = [8, 7] has x = [1.25, 1.5].
        let x = solve_upper_t(&l, 2, &solve_lower(&l, 2, &[8.0, 7.0]));
        assert!((x[0] - 1.25).abs() < 1e-12 && (x[1] - 1.5).abs() < 1e-12, "{x:?}");
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none(), "indefinite");
    }

    #[test]
    fn normal_cdf_and_ei_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-15);
        assert!((normal_cdf(1.959963984540054) - 0.975).abs() < 1e-12);
        // EI at mu = best: sigma·φ(0) = sigma / √(2π).
        assert!((expected_improvement(1.0, 2.0, 1.0) - 2.0 / (2.0 * PI).sqrt()).abs() < 1e-12);
        // No uncertainty: the plain improvement.
        assert_eq!(expected_improvement(0.5, 0.0, 1.0), 0.5);
        assert_eq!(expected_improvement(1.5, 0.0, 1.0), 0.0);
    }

    #[test]
    fn posterior_interpolates_a_smooth_function() {
        let f = |x: f64| (3.0 * x).sin() + 0.5 * x;
        let xs: Vec<f64> = (0..9).map(|i| i as f64 / 8.0).collect();
        let ys: Vec<f64> = xs.iter().map(|&x| f(x)).collect();
        let gp = Gp::fit(&xs, &ys);
        for &x in &xs {
            let (m, s) = gp.predict(x);
            assert!((m - f(x)).abs() < 0.05, "at observed x {x}: {m} vs {}", f(x));
            assert!(s < 0.2, "uncertain at an observation: {s}");
        }
        for x in [0.07, 0.31, 0.55, 0.93] {
            assert!((gp.predict(x).0 - f(x)).abs() < 0.1, "between points at {x}");
        }
        // Far from the data, more uncertain than at it.
        let lone = Gp::fit(&[0.0, 0.1], &[1.0, 2.0]);
        let (far, near) = (lone.predict(0.9).1, lone.predict(0.0).1);
        assert!(far > 3.0 * near, "far {far} near {near} (length scale {})", lone.length_scale);
    }

    /// Bayesian optimization of a known 1-D function finds its minimum in
    /// a handful of evaluations.
    #[test]
    fn ei_search_finds_the_minimum_of_a_parabola() {
        let f = |x: f64| (x - 0.7).powi(2);
        let (mut xs, mut ys) = (vec![0.5], vec![f(0.5)]);
        for _ in 0..7 {
            let x = Gp::fit(&xs, &ys).next_point(257);
            xs.push(x);
            ys.push(f(x));
        }
        let best = xs[ys.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0];
        assert!((best - 0.7).abs() < 0.04, "best x {best}, tried {xs:?}");
    }
}
