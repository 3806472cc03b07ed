//! Small statistics: nearest-rank percentiles, means, the coefficient of variation.

use serde::Serialize;

/// The `p`-th percentile (0..=100) of `values` by nearest rank; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1).min(v.len() - 1))
        .copied()
        .unwrap_or(0.0)
}

/// The arithmetic mean; 0 when empty.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Standard deviation / mean (population); 0 when the mean is 0.
pub fn coefficient_of_variation(values: &[f64]) -> f64 {
    let m = mean(values);
    if m == 0.0 {
        return 0.0;
    }
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64;
    var.sqrt() / m
}

/// Two-sided 95 % quantile of Student's t with `df` degrees of freedom (0 for df = 0).
pub fn t95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => 0.0,
        d => TABLE.get(d - 1).copied().unwrap_or(1.96),
    }
}

/// Half-width of the 95 % confidence interval of the mean of `values` (Student t,
/// sample standard deviation); 0 with fewer than two values.
pub fn t95_half_width(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let m = mean(values);
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
    t95(n - 1) * var.sqrt() / (n as f64).sqrt()
}

/// Half-width of the 95 % prediction interval for one more draw from the distribution
/// `values` were drawn from (Student t, sample standard deviation, `s·√(1 + 1/n)`): the
/// band a single new run falls in, wider than the mean's interval. 0 with fewer than two.
pub fn t95_prediction_half_width(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    t95_half_width(values) * (n as f64 + 1.0).sqrt()
}

/// p50, p90, p99 and mean of a sample.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Sample size.
    pub n: usize,
}

impl Summary {
    /// Summarises `values`.
    pub fn of(values: &[f64]) -> Self {
        Summary {
            p50: percentile(values, 50.0),
            p90: percentile(values, 90.0),
            p99: percentile(values, 99.0),
            mean: mean(values),
            n: values.len(),
        }
    }
}

/// Rounds to `digits` decimals (for readable JSON).
pub fn round(v: f64, digits: i32) -> f64 {
    if !v.is_finite() {
        return 0.0;
    }
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[3.0, f64::NAN, 1.0], 100.0), 3.0);
        assert_eq!(mean(&[1.0, 3.0]), 2.0);
        assert_eq!(coefficient_of_variation(&[2.0, 2.0]), 0.0);
        assert!((coefficient_of_variation(&[1.0, 3.0]) - 0.5).abs() < 1e-12);
        assert_eq!(Summary::of(&v).n, 100);
        assert_eq!(round(1.23456, 2), 1.23);
        assert_eq!(t95(2), 4.303);
        assert_eq!(t95_half_width(&[5.0]), 0.0);
        // mean 2, s = 1, n = 3: 4.303 · 1 / √3
        assert!((t95_half_width(&[1.0, 2.0, 3.0]) - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        // One more draw: 4.303 · 1 · √(1 + 1/3).
        let pi = t95_prediction_half_width(&[1.0, 2.0, 3.0]);
        assert!((pi - 4.303 * (4.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert_eq!(t95_prediction_half_width(&[5.0]), 0.0);
    }
}
