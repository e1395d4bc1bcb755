//! Welch's t-test and t interval on the logarithms of positive values: the ratio of geometric
//! means of two small groups (per-round medians) with its CI and two-sided p-value.
//!
//! Used when the unit of replication is a worker process (a round): with a handful of rounds per
//! side, the t distribution's heavier tails are what keeps the CI honest (Welch, 1947;
//! Satterthwaite's degrees of freedom).

use statrs::distribution::{ContinuousCDF, StudentsT};

/// The candidate/baseline ratio of geometric means and what the test says about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogRatio {
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    /// Two-sided p-value of "no difference".
    pub p: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
}

/// Welch's unequal-variance t statistic of `mean(b) − mean(a)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WelchT {
    /// `mean(b) − mean(a)`.
    pub diff: f64,
    /// Standard error of `diff`.
    pub se: f64,
    /// Welch–Satterthwaite degrees of freedom (infinite when there is no spread).
    pub df: f64,
    /// Two-sided p-value of "no difference". Without any spread the difference is exact: 0 when
    /// the means differ (beyond rounding), 1 when they do not.
    pub p: f64,
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var)
}

/// Welch's t-test (Welch, 1947); `None` unless both sides have two or more values.
pub fn welch_t(a: &[f64], b: &[f64]) -> Option<WelchT> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    let diff = mb - ma;
    if se2 <= 0.0 || !se2.is_finite() {
        let scale = ma.abs().max(mb.abs()).max(f64::MIN_POSITIVE);
        let p = if diff.abs() <= 1e-12 * scale { 1.0 } else { 0.0 };
        return Some(WelchT {
            diff,
            se: 0.0,
            df: f64::INFINITY,
            p,
        });
    }
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    let t = StudentsT::new(0.0, 1.0, df).ok()?;
    let se = se2.sqrt();
    Some(WelchT {
        diff,
        se,
        df,
        p: (2.0 * t.sf((diff / se).abs())).clamp(0.0, 1.0),
    })
}

/// `None` unless both sides have at least two values, all positive and finite.
pub fn welch_log_ratio(baseline: &[f64], candidate: &[f64], level: f64) -> Option<LogRatio> {
    if baseline
        .iter()
        .chain(candidate)
        .any(|v| !(v.is_finite() && *v > 0.0))
    {
        return None;
    }
    let lb: Vec<f64> = baseline.iter().map(|v| v.ln()).collect();
    let lc: Vec<f64> = candidate.iter().map(|v| v.ln()).collect();
    let w = welch_t(&lb, &lc)?;
    let r = w.diff.exp();
    if w.se == 0.0 {
        // No spread at all: the difference is exact.
        return Some(LogRatio {
            ratio: r,
            low: r,
            high: r,
            p: w.p,
            df: w.df,
        });
    }
    let q = StudentsT::new(0.0, 1.0, w.df)
        .ok()?
        .inverse_cdf(0.5 + level / 2.0);
    Some(LogRatio {
        ratio: r,
        low: (w.diff - q * w.se).exp(),
        high: (w.diff + q * w.se).exp(),
        p: w.p,
        df: w.df,
    })
}

/// The CI of exp(`diff`) and the two-sided p-value of "no difference" for a t statistic on the
/// log scale: `diff ± q·√se2`, q the t quantile for `level` with `df()` degrees of freedom. With
/// no spread (`se2` zero or not finite) the difference is exact: the CI is the ratio itself, p is
/// 1 for no difference and 0 otherwise, and the df is infinite (`df` is not called: it divides by
/// the spread). The trimmed, paired and pooled tests share it.
pub fn log_t_interval(diff: f64, se2: f64, df: impl FnOnce() -> f64, level: f64) -> Option<LogRatio> {
    let ratio = diff.exp();
    if se2 <= 0.0 || !se2.is_finite() {
        return Some(LogRatio {
            ratio,
            low: ratio,
            high: ratio,
            p: if diff.abs() <= 1e-12 { 1.0 } else { 0.0 },
            df: f64::INFINITY,
        });
    }
    let df = df();
    let t = StudentsT::new(0.0, 1.0, df).ok()?;
    let se = se2.sqrt();
    let q = t.inverse_cdf(0.5 + level / 2.0);
    Some(LogRatio {
        ratio,
        low: (diff - q * se).exp(),
        high: (diff + q * se).exp(),
        p: (2.0 * t.sf((diff / se).abs())).clamp(0.0, 1.0),
        df,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textbook_values() {
        // Equal spreads, means 1.0 vs 1.1 in log space: t = 0.1 / sqrt(2·0.01/3) ≈ 1.2247, df = 4.
        let b = [0.9f64.exp(), 1.0f64.exp(), 1.1f64.exp()];
        let c = [1.0f64.exp(), 1.1f64.exp(), 1.2f64.exp()];
        let r = welch_log_ratio(&b, &c, 0.95).unwrap();
        assert!((r.df - 4.0).abs() < 1e-9, "{r:?}");
        assert!((r.ratio - 0.1f64.exp()).abs() < 1e-9);
        // Two-sided p for t = 1.2247 with 4 df is 0.2879 (tables).
        assert!((r.p - 0.2879).abs() < 2e-3, "{r:?}");
        // q(0.975, 4) = 2.776: CI = exp(0.1 ± 2.776·0.08165).
        assert!((r.low.ln() - (0.1 - 2.776 * 0.081_65)).abs() < 1e-3, "{r:?}");
    }

    #[test]
    fn clear_shift_is_significant_and_ci_excludes_one() {
        let b = [100.0, 101.0, 99.5, 100.5, 100.2];
        let c: Vec<f64> = b.iter().map(|x| x * 1.05).collect();
        let r = welch_log_ratio(&b, &c, 0.95).unwrap();
        assert!(r.p < 1e-6, "{r:?}");
        assert!(r.low > 1.04 && r.high < 1.06, "{r:?}");
    }

    #[test]
    fn process_level_spread_widens_the_ci() {
        // Rounds that jump between two levels (as memory layout does): no verdict-worthy shift.
        let b = [0.265, 0.35, 0.41];
        let c = [0.35, 0.266, 0.38];
        let r = welch_log_ratio(&b, &c, 0.95).unwrap();
        assert!(r.p > 0.5 && r.low < 0.7 && r.high > 1.4, "{r:?}");
    }

    #[test]
    fn rejects_what_it_cannot_judge() {
        assert!(welch_log_ratio(&[1.0], &[1.0, 2.0], 0.95).is_none());
        assert!(welch_log_ratio(&[1.0, -1.0], &[1.0, 2.0], 0.95).is_none());
        let r = welch_log_ratio(&[2.0, 2.0], &[2.0, 2.0], 0.95).unwrap();
        assert_eq!((r.p, r.ratio), (1.0, 1.0));
    }
}
