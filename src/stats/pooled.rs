//! A baseline pooled from several earlier runs (a nightly job where the baseline tag ran on
//! other days) against one candidate run.
//!
//! Between-run drift is not controlled here: the candidate ran at another time than every
//! baseline run, so a difference can come from the day as well as from the tag. The rounds of
//! one run share that day's conditions, so the run, not the round, is the unit the drift acts
//! on (a one-way random-effects model: a run's log level is the tag's level plus a run effect of
//! variance τ² plus round noise). The baseline's estimate is the mean over runs of each run's trimmed mean of
//! log round medians, whose spread between runs carries both components; the candidate is one
//! draw of the run effect, so its variance is its rounds' (Yuen's d) plus τ², estimated from the
//! baseline runs by the method of moments, `τ² = max(0, s²_runs − mean d_run)` (Searle, Casella
//! & McCulloch, "Variance Components", 1992, ch. 3). The test is Welch's on these two variances
//! with Satterthwaite's degrees of freedom; the CI is wider than a single-run comparison's by
//! the drift between the baseline runs, and never narrower than the candidate's own rounds say.

use super::welch::log_t_interval;

use super::robust::trimmed_stats;

/// The pooled-baseline estimate of candidate / baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PooledLogRatio {
    /// exp(mean over baseline runs of each run's trimmed mean of log round medians).
    pub baseline: f64,
    /// exp(trimmed mean of the candidate's log round medians).
    pub candidate: f64,
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    pub p: f64,
    pub df: f64,
    /// Baseline runs pooled.
    pub runs: usize,
    /// Estimated run-to-run drift τ (standard deviation of the log run effect).
    pub between_runs: f64,
}

/// Trimmed mean of logs and Yuen's variance of it, `(n − 1) s²_w / (h (h − 1))`, and h.
fn side(v: &[f64], trim: f64) -> Option<(f64, f64, f64)> {
    let n = v.len();
    let g = (trim * n as f64).floor() as usize;
    let h = n.checked_sub(2 * g)?;
    if h < 2 {
        return None;
    }
    let logs: Vec<f64> = v.iter().map(|x| x.ln()).collect();
    let (tm, wv) = trimmed_stats(&logs, g);
    Some((
        tm,
        (n as f64 - 1.0) * wv / (h as f64 * (h as f64 - 1.0)),
        h as f64,
    ))
}

/// `baseline_runs`: the round medians of each baseline run (two or more runs, two or more
/// rounds each); `candidate`: the candidate run's round medians. `None` when a value is not
/// positive and finite or a side is too small.
pub fn pooled_runs_log_ratio(
    baseline_runs: &[Vec<f64>],
    candidate: &[f64],
    trim: f64,
    level: f64,
) -> Option<PooledLogRatio> {
    if baseline_runs.len() < 2
        || baseline_runs
            .iter()
            .flatten()
            .chain(candidate)
            .any(|v| !(v.is_finite() && *v > 0.0))
    {
        return None;
    }
    let runs: Vec<(f64, f64, f64)> = baseline_runs
        .iter()
        .map(|r| side(r, trim))
        .collect::<Option<_>>()?;
    let r = runs.len() as f64;
    let mean = runs.iter().map(|x| x.0).sum::<f64>() / r;
    let s2 = runs.iter().map(|x| (x.0 - mean).powi(2)).sum::<f64>() / (r - 1.0);
    let within = runs.iter().map(|x| x.1).sum::<f64>() / r;
    let tau2 = (s2 - within).max(0.0);
    let (tc, dc, hc) = side(candidate, trim)?;
    let var_b = s2 / r;
    let var_c = dc + tau2;
    let se2 = var_b + var_c;
    // var_b and τ² come from the same spread between runs: one term with R − 1 degrees of
    // freedom (treating them as independent overstated the df: 7.9% false alarms at α = 5%).
    let from_runs = var_b + tau2;
    let df = || se2 * se2 / (from_runs * from_runs / (r - 1.0) + dc * dc / (hc - 1.0));
    let t = log_t_interval(tc - mean, se2, df, level)?;
    Some(PooledLogRatio {
        baseline: mean.exp(),
        candidate: tc.exp(),
        ratio: t.ratio,
        low: t.low,
        high: t.high,
        p: t.p,
        df: t.df,
        runs: baseline_runs.len(),
        between_runs: tau2.sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::robust::TRIM;
    use crate::stats::synthetic::lognormal;
    use crate::stats::yuen_log_ratio;
    use rand::{rngs::StdRng, SeedableRng};

    /// Runs whose levels drift 5% from day to day, 1% between rounds: pooling the rounds of
    /// four baseline runs as if they were one run flags a new day's A/A often; the pooled-run
    /// test stays within α.
    #[test]
    fn drift_between_runs_widens_instead_of_flagging() {
        let mut rng = StdRng::seed_from_u64(5);
        let run = |rng: &mut StdRng| {
            let day = lognormal(rng, 1.0, 0.05, 1)[0];
            lognormal(rng, day, 0.01, 5)
        };
        let (trials, alpha) = (2000, 0.05);
        let (mut pooled, mut naive) = (0, 0);
        for _ in 0..trials {
            let base: Vec<Vec<f64>> = (0..4).map(|_| run(&mut rng)).collect();
            let cand = run(&mut rng);
            let p = pooled_runs_log_ratio(&base, &cand, TRIM, 0.95).unwrap();
            pooled += (p.p < alpha) as usize;
            let flat: Vec<f64> = base.iter().flatten().copied().collect();
            naive += (yuen_log_ratio(&flat, &cand, TRIM, 0.95).unwrap().p < alpha) as usize;
        }
        assert!(
            pooled <= trials * 6 / 100,
            "pooled runs flagged {pooled} of {trials}"
        );
        assert!(
            naive > trials / 2,
            "rounds pooled as one run flagged only {naive} of {trials}"
        );
    }

    #[test]
    fn a_real_change_is_still_found_and_the_drift_is_reported() {
        let mut rng = StdRng::seed_from_u64(6);
        let base: Vec<Vec<f64>> = [1.0, 1.02, 0.99, 1.01]
            .iter()
            .map(|day| lognormal(&mut rng, *day, 0.01, 5))
            .collect();
        let cand = lognormal(&mut rng, 1.3, 0.01, 5);
        let p = pooled_runs_log_ratio(&base, &cand, TRIM, 0.95).unwrap();
        assert!(p.low > 1.15 && p.p < 0.01, "{p:?}");
        assert!(p.between_runs > 0.005 && p.between_runs < 0.05, "{p:?}");
        assert!((p.candidate / p.baseline - p.ratio).abs() < 1e-12);
        assert!(pooled_runs_log_ratio(&base[..1], &cand, TRIM, 0.95).is_none());
    }
}
