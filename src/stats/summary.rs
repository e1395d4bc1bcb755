//! The summary of one metric's samples: location, spread, a distribution-free CI of the median
//! and outlier counts.

use serde::{Deserialize, Serialize};

/// What the CSV stores per (case, metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub mean: f64,
    /// Sample standard deviation (n−1); 0 for a single sample.
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
    pub p05: f64,
    pub p95: f64,
    /// 95% confidence interval of the median.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Samples outside Tukey's fences (1.5·IQR beyond the quartiles). Counted, never dropped.
    pub outliers: usize,
}

impl Summary {
    /// Half-width of the median's CI relative to the median (the stopping rule's quantity).
    pub fn rel_ci_half_width(&self) -> f64 {
        if self.median == 0.0 {
            return f64::INFINITY;
        }
        (self.ci_high - self.ci_low) / 2.0 / self.median.abs()
    }
}

/// Linear-interpolation percentile (type 7, as numpy's default) of sorted data; `q` in [0, 1].
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of an empty sample");
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Ranks (0-based, inclusive) of the order statistics that bound a 95% CI of the median.
///
/// Distribution-free: the number of samples below the true median is Binomial(n, ½); we take
/// the widest symmetric pair whose coverage is at least 95% using the normal approximation
/// j = ⌊n/2 − 1.96·√n/2⌋, k = n − j + 1 (Conover, Practical Nonparametric Statistics,
/// §3.2). With fewer than 6 samples no pair reaches 95%, so the CI is the full range.
pub fn median_ci_ranks(n: usize) -> (usize, usize) {
    if n < 6 {
        return (0, n.saturating_sub(1));
    }
    let nf = n as f64;
    let half = 1.96 * nf.sqrt() / 2.0;
    let j = (nf / 2.0 - half).floor().max(1.0) as usize; // 1-based rank
    let k = n - j + 1; // 1-based rank, symmetric to j
    (j - 1, k - 1)
}

/// Summarises samples. Non-finite samples are a bug in the caller; they are rejected.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() || samples.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let mean = s.iter().sum::<f64>() / n as f64;
    let stddev = if n > 1 {
        (s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    let (j, k) = median_ci_ranks(n);
    let q1 = percentile_sorted(&s, 0.25);
    let q3 = percentile_sorted(&s, 0.75);
    let iqr = q3 - q1;
    let (lo_fence, hi_fence) = (q1 - 1.5 * iqr, q3 + 1.5 * iqr);
    let outliers = s.iter().filter(|&&v| v < lo_fence || v > hi_fence).count();
    Some(Summary {
        n,
        median: percentile_sorted(&s, 0.5),
        mean,
        stddev,
        min: s[0],
        max: s[n - 1],
        p05: percentile_sorted(&s, 0.05),
        p95: percentile_sorted(&s, 0.95),
        ci_low: s[j],
        ci_high: s[k],
        outliers,
    })
}

/// Samples whose modified z-score exceeds 3.5 (Iglewicz & Hoaglin, 1993): robust to the
/// outliers themselves, unlike a mean/stddev z-score.
pub fn mad_outliers(samples: &[f64]) -> usize {
    if samples.len() < 3 {
        return 0;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let med = percentile_sorted(&s, 0.5);
    let mut dev: Vec<f64> = s.iter().map(|v| (v - med).abs()).collect();
    dev.sort_by(|a, b| a.total_cmp(b));
    let mad = percentile_sorted(&dev, 0.5);
    if mad == 0.0 {
        return 0;
    }
    s.iter()
        .filter(|&&v| (0.6745 * (v - med) / mad).abs() > 3.5)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn simple_summary() {
        let s = summarize(&[3.0, 1.0, 2.0, 5.0, 4.0]).unwrap();
        assert_eq!(s.n, 5);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.mean, 3.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 5.0);
        assert!((s.stddev - 2.5f64.sqrt()).abs() < 1e-12);
        assert_eq!((s.ci_low, s.ci_high), (1.0, 5.0));
    }

    #[test]
    fn empty_and_nan_rejected() {
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn outlier_counted_not_dropped() {
        let mut v: Vec<f64> = (0..20).map(|i| 10.0 + (i % 3) as f64 * 0.1).collect();
        v.push(100.0);
        let s = summarize(&v).unwrap();
        assert_eq!(s.outliers, 1);
        assert_eq!(s.n, 21);
        assert_eq!(s.max, 100.0);
        assert_eq!(mad_outliers(&v), 1);
    }

    #[test]
    fn ci_ranks_for_100() {
        // n=100: 1.96·10/2 = 9.8 → ranks 40 and 61 (1-based), the textbook answer.
        assert_eq!(median_ci_ranks(100), (39, 60));
    }

    /// The CI of the median covers the true median of a known distribution about 95% of the
    /// time (checked by simulation with a fixed seed).
    #[test]
    fn median_ci_coverage() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        let trials = 2000;
        let mut covered = 0;
        for _ in 0..trials {
            // Exponential(1): median ln 2.
            let v: Vec<f64> = (0..40).map(|_| -(1.0 - rng.random::<f64>()).ln()).collect();
            let s = summarize(&v).unwrap();
            if s.ci_low <= std::f64::consts::LN_2 && std::f64::consts::LN_2 <= s.ci_high {
                covered += 1;
            }
        }
        let rate = covered as f64 / trials as f64;
        assert!((0.93..0.99).contains(&rate), "coverage {rate}");
    }

    proptest! {
        #[test]
        fn order_invariants(v in proptest::collection::vec(-1e6f64..1e6, 1..200)) {
            let s = summarize(&v).unwrap();
            prop_assert!(s.min <= s.p05 && s.p05 <= s.median && s.median <= s.p95 && s.p95 <= s.max);
            prop_assert!(s.ci_low <= s.median && s.median <= s.ci_high);
            prop_assert!(s.min <= s.mean && s.mean <= s.max);
            prop_assert!(s.stddev >= 0.0);
        }
    }
}
