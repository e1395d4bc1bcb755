//! The verdict on one matched metric: with rounds, the paired trimmed t on the pairs' log ratios
//! (rounds of one run) or Yuen's trimmed-mean t on the log round medians (rounds of different
//! runs; outlier rounds counted, not set aside: `stats::robust`); with fewer rounds, a time is not
//! judged (`noisy`, naming the rounds) and a size or count gets the rank test and the bootstrap
//! CI from the samples; then (after Holm's correction across the family) regression,
//! improvement, same or noisy.

use serde::Serialize;

use crate::render::num::pct;
use crate::stats::bootstrap::median_in_place;
use crate::stats::paired::PAIR_TRIM;
use crate::stats::robust::TRIM;
use crate::stats::{
    mann_whitney, paired_log_ratio, pooled_runs_log_ratio, ratio_of_medians_ci, without_outliers,
    yuen_log_ratio, Design,
};

/// What a comparison concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Significant, and the whole CI is worse than the noise threshold.
    Regression,
    /// Significant, and the whole CI is better than the noise threshold.
    Improvement,
    /// The whole CI lies within the noise threshold.
    Same,
    /// Too few samples, or too much spread to tell.
    Noisy,
    /// Measured in the baseline, failed in the candidate.
    Failed,
    /// Measured on one side only (skipped, not run, or new).
    Missing,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Verdict::Regression,
        Verdict::Improvement,
        Verdict::Same,
        Verdict::Noisy,
        Verdict::Failed,
        Verdict::Missing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regression => "regression",
            Verdict::Improvement => "improvement",
            Verdict::Same => "same",
            Verdict::Noisy => "noisy",
            Verdict::Failed => "failed",
            Verdict::Missing => "missing",
        }
    }
}

/// The statistics of one comparison, before the family correction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Judgement {
    /// candidate / baseline of the two estimates below (the values shown for each side).
    pub ratio: Option<f64>,
    /// 95% CI of the ratio (Yuen's t on rounds, or the bootstrap on samples).
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Two-sided p-value before Holm's correction: the paired trimmed t on rounds of one run,
    /// Yuen's test on rounds of different runs, Mann-Whitney on samples; divided by the α share
    /// of the look it was judged at (`stats::sequential`), which keeps it a valid p-value under
    /// adaptive rounds.
    pub p: Option<f64>,
    /// The share of α (and of the CI's error) spent at this look: 1 with a fixed number of
    /// rounds. The CI is the `1 − 0.05 · alpha_share` interval.
    pub alpha_share: f64,
    /// Round pairs judged when the rounds were paired (one run, round r of each side back to
    /// back); absent when the sides were judged as independent groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs: Option<usize>,
    /// Of those pairs, the rounds whose ratio came from their alternating sample batches
    /// (paired batches, `stats::batch_pair_ratio`); the others' from their round medians.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_rounds: Option<usize>,
    /// Rounds judged (pairs kept, or the smaller side's rounds kept): what the look counts.
    #[serde(skip)]
    pub judged_rounds: usize,
    /// With a baseline pooled from several runs: how many, and the run-to-run drift (τ, the
    /// standard deviation of a run's log level) the CI was widened by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooled_runs: Option<(usize, f64)>,
    /// The baseline's estimate the ratio is computed from: exp(20%-trimmed mean of the log
    /// round medians), or the pooled sample median when a side has too few rounds.
    #[serde(skip)]
    pub baseline: Option<f64>,
    /// The candidate's estimate, as for the baseline.
    #[serde(skip)]
    pub candidate: Option<f64>,
    /// Outlier rounds flagged on each side (baseline, candidate).
    #[serde(skip)]
    pub outlier_rounds: (usize, usize),
}

impl Default for Judgement {
    fn default() -> Self {
        Judgement {
            ratio: None,
            ci_low: None,
            ci_high: None,
            p: None,
            alpha_share: 1.0,
            pairs: None,
            batch_rounds: None,
            judged_rounds: 0,
            pooled_runs: None,
            baseline: None,
            candidate: None,
            outlier_rounds: (0, 0),
        }
    }
}

/// CI level of a fixed design (with adaptive rounds, `1 − 0.05 · alpha_share`).
pub const CI_LEVEL: f64 = 0.95;

/// The CI level for a look that spends `share` of the error.
pub fn ci_level(share: f64) -> f64 {
    1.0 - (1.0 - CI_LEVEL) * share
}

/// Runs the test and the bootstrap; `Err` says why no verdict is possible (→ `noisy`).
pub fn judge(
    baseline: &[f64],
    candidate: &[f64],
    min_samples: usize,
    resamples: usize,
    seed: u64,
) -> Result<Judgement, String> {
    if let Some(j) = constant_sides(baseline, candidate) {
        return Ok(j);
    }
    let (nb, nc) = (baseline.len(), candidate.len());
    if nb < min_samples || nc < min_samples {
        return Err(format!(
            "too few samples ({nb} vs {nc}; at least {min_samples} a side)"
        ));
    }
    let mw = mann_whitney(baseline, candidate).ok_or("samples are not finite numbers")?;
    let ci = ratio_of_medians_ci(baseline, candidate, resamples, CI_LEVEL, seed)
        .ok_or("the baseline's median is zero: no ratio")?;
    Ok(Judgement {
        ratio: Some(ci.ratio),
        ci_low: Some(ci.low),
        ci_high: Some(ci.high),
        p: Some(mw.p),
        baseline: Some(median_in_place(&mut baseline.to_vec())),
        candidate: Some(median_in_place(&mut candidate.to_vec())),
        ..Judgement::default()
    })
}

/// A fact measured again and again (an image's size): every sample of each side the same value,
/// at least twice a side. There is no spread to test, and none is needed: the ratio is exact,
/// its CI that one point, and p is 0 when the values differ and 1 when they are equal, the
/// limits the t-interval takes at zero variance (`stats::welch::log_t_interval`). A rank test
/// on tied samples would call a real difference of three samples `noisy` (p = 0.05) and, at
/// small n, never reach α.
pub fn constant_sides(baseline: &[f64], candidate: &[f64]) -> Option<Judgement> {
    let constant = |v: &[f64]| v.len() >= 2 && v[0].is_finite() && v.iter().all(|x| *x == v[0]);
    if !constant(baseline) || !constant(candidate) || baseline[0] == 0.0 {
        return None;
    }
    let (b, c) = (baseline[0], candidate[0]);
    let ratio = c / b;
    Some(Judgement {
        ratio: Some(ratio),
        ci_low: Some(ratio),
        ci_high: Some(ratio),
        p: Some(if b == c { 1.0 } else { 0.0 }),
        baseline: Some(b),
        candidate: Some(c),
        ..Judgement::default()
    })
}

/// Rounds a side needs before comparisons judge on the spread between rounds.
pub const MIN_ROUNDS: usize = 3;

/// How the rounds of two sides relate, and the design they were measured under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundsPlan {
    /// The sides' rounds are aligned pairs measured back to back in one run (round r of each).
    pub paired: bool,
    /// The rounds design (`Design::fixed` for a fixed number of rounds).
    pub design: Design,
    /// The metric varies between worker processes (a time, or anything derived from one:
    /// `results::Quantity::needs_rounds`): with fewer than [`MIN_ROUNDS`] rounds a side it is
    /// not judged. Sizes and counts are judged from the samples of fewer rounds.
    pub needs_rounds: bool,
}

impl Default for RoundsPlan {
    fn default() -> Self {
        RoundsPlan {
            paired: false,
            design: Design::fixed(1),
            needs_rounds: true,
        }
    }
}

/// Why a metric that varies between processes is not judged on fewer than [`MIN_ROUNDS`] rounds
/// a side: what was not replicated cannot be told from the process it ran in.
pub fn too_few_rounds(baseline: usize, candidate: usize) -> String {
    let s = |n: usize| if n == 1 { "" } else { "s" };
    format!(
        "{baseline} round{} in the baseline and {candidate} in the candidate: a timing verdict needs at least {MIN_ROUNDS} rounds (worker processes) a side, as samples of one process cannot tell a change from that process's luck; measure with rounds = {MIN_ROUNDS} or more",
        s(baseline)
    )
}

/// Judges two measurements given per round (worker process).
///
/// With at least [`MIN_ROUNDS`] rounds a side, the round is the unit of replication. Rounds of
/// one run are paired (`plan.paired`: round r of both sides ran back to back) and judged with
/// the trimmed-mean t on the pairs' log ratios (`stats::paired`), which cancels what the
/// machine did to both at that moment. Rounds of different runs are independent groups, judged
/// with Yuen's 20%-trimmed t-test on their logs (Yuen, 1974; degrees of freedom calibrated as the
/// paired test's); outlier rounds (Iglewicz & Hoaglin's modified z-score on log round medians,
/// `stats::robust`) are counted and marked, and the trimming keeps them out of the estimate. The estimate of each side is exp(trimmed mean of log round
/// medians) (paired: the candidate's is the baseline's times the paired ratio), so the ratio is
/// exactly their quotient. The look's share of α (`stats::sequential`) sets the CI level and
/// divides the p-value.
/// Samples within one process are not independent of that process's memory layout, thread
/// placement and clocks; treating them as independent across processes declares differences
/// that a second run does not reproduce (two identical targets, one round each: `+83%`,
/// p < 1e-300). With fewer rounds a metric that varies between processes is not judged
/// ([`too_few_rounds`] says why, and the verdict is `noisy`); a size or a count is judged with
/// the sample-level test and bootstrap of [`judge`] on the pooled samples.
pub fn judge_rounds(
    baseline: &[Vec<f64>],
    candidate: &[Vec<f64>],
    batch_ratios: &[Option<f64>],
    plan: RoundsPlan,
    min_samples: usize,
    resamples: usize,
    seed: u64,
) -> Result<Judgement, String> {
    let pooled = |r: &[Vec<f64>]| -> Vec<f64> { r.iter().flatten().copied().collect() };
    let (b, c) = (pooled(baseline), pooled(candidate));
    let rounds = |r: &[Vec<f64>]| r.iter().filter(|v| !v.is_empty()).count();
    let (nb, nc) = (rounds(baseline), rounds(candidate));
    if nb < MIN_ROUNDS || nc < MIN_ROUNDS {
        if plan.needs_rounds {
            return Err(too_few_rounds(nb, nc));
        }
        return judge(&b, &c, min_samples, resamples, seed);
    }
    if b.len() < min_samples || c.len() < min_samples {
        return Err(format!(
            "too few samples ({} vs {}; at least {min_samples} a side)",
            b.len(),
            c.len()
        ));
    }
    let median = |v: &Vec<f64>| median_in_place(&mut v.clone());
    let spent = |j: &mut Judgement, judged: usize| -> f64 {
        let share = plan.design.share_at(judged);
        j.alpha_share = share;
        j.judged_rounds = judged;
        share
    };
    if plan.paired {
        // A round measured in paired batches has its ratio from them; the candidate's level
        // is then the baseline's times that ratio.
        let batched = baseline
            .iter()
            .zip(candidate)
            .enumerate()
            .filter(|(i, (x, y))| {
                !x.is_empty() && !y.is_empty() && batch_ratios.get(*i).copied().flatten().is_some()
            })
            .count();
        let (mb, mc): (Vec<f64>, Vec<f64>) = baseline
            .iter()
            .zip(candidate)
            .enumerate()
            .filter(|(_, (x, y))| !x.is_empty() && !y.is_empty())
            .map(|(i, (x, y))| match batch_ratios.get(i).copied().flatten() {
                Some(r) => (median(x), median(x) * r),
                None => (median(x), median(y)),
            })
            .unzip();
        let first = paired_log_ratio(&mb, &mc, PAIR_TRIM, CI_LEVEL);
        if let Some(first) = first {
            let mut j = Judgement::default();
            let share = spent(&mut j, first.pairs);
            let y = paired_log_ratio(&mb, &mc, PAIR_TRIM, ci_level(share)).expect("judged once already");
            return Ok(Judgement {
                ratio: Some(y.ratio),
                ci_low: Some(y.low),
                ci_high: Some(y.high),
                p: Some((y.p / share).min(1.0)),
                pairs: Some(y.pairs),
                batch_rounds: (batched > 0).then_some(batched),
                baseline: Some(y.baseline),
                candidate: Some(y.candidate),
                ..j
            });
        }
    }
    let medians = |r: &[Vec<f64>]| -> Vec<f64> { r.iter().filter(|v| !v.is_empty()).map(median).collect() };
    let (mb, mc) = (medians(baseline), medians(candidate));
    // Outlier rounds are counted for the table and the report, not set aside before the test:
    // testing what is left after a rule flagged values is liberal (robust.rs,
    // `yuen_a_a_false_alarms_stay_within_alpha`); Yuen's trimming already keeps a wild round
    // out of the estimate.
    let (ob, oc) = (
        without_outliers(&mb, MIN_ROUNDS).1,
        without_outliers(&mc, MIN_ROUNDS).1,
    );
    let mut j = Judgement::default();
    let share = spent(&mut j, mb.len().min(mc.len()));
    let y = yuen_log_ratio(&mb, &mc, TRIM, ci_level(share))
        .ok_or("per-round medians are not all positive: no ratio of trimmed means")?;
    Ok(Judgement {
        ratio: Some(y.ratio),
        ci_low: Some(y.low),
        ci_high: Some(y.high),
        p: Some((y.p / share).min(1.0)),
        baseline: Some(y.baseline),
        candidate: Some(y.candidate),
        outlier_rounds: (ob, oc),
        ..j
    })
}

/// Judges a candidate run against a baseline pooled from several runs: `baseline_runs` holds
/// the rounds of each baseline run. Between-run drift is not controlled; the run-to-run spread
/// of the baseline runs widens the CI (`stats::pooled`). With fewer than [`MIN_ROUNDS`] rounds
/// in a run, or one baseline run, the rounds are judged as one group ([`judge_rounds`], which
/// judges no metric that `needs_rounds` on fewer than [`MIN_ROUNDS`] rounds a side).
pub fn judge_pooled(
    baseline_runs: &[Vec<Vec<f64>>],
    candidate: &[Vec<f64>],
    needs_rounds: bool,
    min_samples: usize,
    resamples: usize,
    seed: u64,
) -> Result<Judgement, String> {
    let medians = |r: &[Vec<f64>]| -> Vec<f64> {
        r.iter()
            .filter(|v| !v.is_empty())
            .map(|v| median_in_place(&mut v.clone()))
            .collect()
    };
    let runs: Vec<Vec<f64>> = baseline_runs.iter().map(|r| medians(r)).collect();
    let mc = medians(candidate);
    if runs.len() < 2 || runs.iter().any(|r| r.len() < MIN_ROUNDS) || mc.len() < MIN_ROUNDS {
        let all: Vec<Vec<f64>> = baseline_runs.iter().flatten().cloned().collect();
        return judge_rounds(
            &all,
            candidate,
            &[],
            RoundsPlan {
                needs_rounds,
                ..RoundsPlan::default()
            },
            min_samples,
            resamples,
            seed,
        );
    }
    let y = pooled_runs_log_ratio(&runs, &mc, TRIM, CI_LEVEL)
        .ok_or("round medians are not all positive: no ratio")?;
    Ok(Judgement {
        ratio: Some(y.ratio),
        ci_low: Some(y.low),
        ci_high: Some(y.high),
        p: Some(y.p),
        pooled_runs: Some((y.runs, y.between_runs)),
        judged_rounds: mc.len(),
        baseline: Some(y.baseline),
        candidate: Some(y.candidate),
        ..Judgement::default()
    })
}

/// The verdict from a judgement, its Holm-adjusted p-value, α, the noise threshold and the
/// metric's good direction (`lower` or `higher`), with the reason in words.
///
/// The band of "no real change" is [1/(1+noise), 1+noise] in the direction where larger is
/// worse, symmetric in log space so that a latency and the matching throughput (its inverse)
/// get the same verdict.
pub fn verdict(j: &Judgement, p_adj: f64, alpha: f64, noise: f64, better: &str) -> (Verdict, String) {
    let (Some(lo), Some(hi)) = (j.ci_low, j.ci_high) else {
        return (Verdict::Noisy, "no CI".into());
    };
    // "Worse factor": > 1 means the candidate is worse.
    let (w_lo, w_hi) = if better == "higher" {
        (1.0 / hi, 1.0 / lo)
    } else {
        (lo, hi)
    };
    let up = 1.0 + noise;
    let down = 1.0 / up;
    let ci = format!("worse-by CI [{}, {}]", pct(w_lo), pct(w_hi));
    let significant = p_adj < alpha;
    if significant && w_lo > up {
        (
            Verdict::Regression,
            format!("{ci} entirely beyond +{:.1}%", noise * 100.0),
        )
    } else if significant && w_hi < down {
        (Verdict::Improvement, format!("{ci} entirely below {}", pct(down)))
    } else if w_lo >= down && w_hi <= up {
        (Verdict::Same, format!("{ci} within ±{:.1}%", noise * 100.0))
    } else if !significant && (w_lo > up || w_hi < down) {
        (
            Verdict::Noisy,
            format!("{ci} but the rank test is not significant (p = {p_adj:.3})"),
        )
    } else {
        (
            Verdict::Noisy,
            format!("{ci} crosses the ±{:.1}% threshold", noise * 100.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use crate::stats::synthetic::lognormal as samples;

    fn decide(base: &[f64], cand: &[f64], better: &str) -> Verdict {
        match judge(base, cand, 5, 2000, 1) {
            Ok(j) => verdict(&j, j.p.unwrap_or(1.0), 0.01, 0.03, better).0,
            Err(_) => Verdict::Noisy,
        }
    }

    /// The default noise level of a measurement: the sampler stops at a 1% relative CI
    /// half-width of the median, which for ~2% spread per sample takes about 50 samples.
    const CV: f64 = 0.02;
    const N: usize = 50;

    #[test]
    fn five_percent_slowdown_is_flagged() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut flagged = 0;
        for _ in 0..20 {
            let a = samples(&mut rng, 10.0, CV, N);
            let b = samples(&mut rng, 10.5, CV, N);
            if decide(&a, &b, "lower") == Verdict::Regression {
                flagged += 1;
            }
            // The same slowdown seen as a throughput.
            let ta: Vec<f64> = a.iter().map(|x| 1.0 / x).collect();
            let tb: Vec<f64> = b.iter().map(|x| 1.0 / x).collect();
            assert_eq!(decide(&a, &b, "lower"), decide(&ta, &tb, "higher"));
        }
        assert!(flagged >= 18, "5% slowdown flagged {flagged}/20 times");
    }

    #[test]
    fn five_percent_speedup_is_improvement() {
        let mut rng = StdRng::seed_from_u64(12);
        let a = samples(&mut rng, 10.0, CV, N);
        let b = samples(&mut rng, 9.5, CV, N);
        assert_eq!(decide(&a, &b, "lower"), Verdict::Improvement);
    }

    #[test]
    fn one_percent_shift_is_same() {
        let mut rng = StdRng::seed_from_u64(13);
        for _ in 0..20 {
            let a = samples(&mut rng, 10.0, CV, N);
            let b = samples(&mut rng, 10.1, CV, N);
            assert_eq!(decide(&a, &b, "lower"), Verdict::Same);
        }
    }

    #[test]
    fn a_a_is_never_a_regression() {
        let mut rng = StdRng::seed_from_u64(14);
        for _ in 0..50 {
            let a = samples(&mut rng, 10.0, 0.05, 20);
            let b = samples(&mut rng, 10.0, 0.05, 20);
            let v = decide(&a, &b, "lower");
            assert!(matches!(v, Verdict::Same | Verdict::Noisy), "{v:?}");
        }
    }

    #[test]
    fn bimodal_is_noisy() {
        let mut rng = StdRng::seed_from_u64(15);
        // Half the samples on a fast path, half on a slow one (e.g. two NUMA placements).
        let bimodal = |rng: &mut StdRng| -> Vec<f64> {
            (0..40)
                .map(|i| if i % 2 == 0 { 10.0 } else { 15.0 } * (1.0 + 0.01 * rng.random::<f64>()))
                .collect()
        };
        let a = bimodal(&mut rng);
        let b = bimodal(&mut rng);
        assert_eq!(decide(&a, &b, "lower"), Verdict::Noisy);
    }

    #[test]
    fn tiny_sample_is_noisy() {
        let err = judge(&[1.0, 1.1, 0.9], &[2.0, 2.1, 1.9], 5, 100, 1).unwrap_err();
        assert!(err.contains("too few samples (3 vs 3"), "{err}");
        assert_eq!(
            decide(&[1.0, 1.1, 0.9], &[2.0, 2.1, 1.9], "lower"),
            Verdict::Noisy
        );
    }

    #[test]
    fn a_constant_fact_is_judged_exactly() {
        // An image 200 MiB bigger, inspected three times a side: a regression, not `noisy`.
        let (base, padded) = ([1500.0; 3], [1700.0; 3]);
        assert_eq!(decide(&base, &padded, "lower"), Verdict::Regression);
        assert_eq!(decide(&base, &base, "lower"), Verdict::Same);
        assert_eq!(decide(&padded, &base, "lower"), Verdict::Improvement);
        let j = judge(&base, &padded, 5, 100, 1).unwrap();
        assert_eq!(
            (j.ci_low, j.ci_high, j.p),
            (Some(1700.0 / 1500.0), Some(1700.0 / 1500.0), Some(0.0))
        );
        // One sample a side shows no constancy; any spread is a measurement, tested as one.
        assert!(constant_sides(&[1.0], &[2.0]).is_none());
        assert!(constant_sides(&[1.0, 1.0], &[2.0, 2.1]).is_none());
        // Over rounds (one value a round, paired or not) the zero spread gives the same verdict.
        let rounds = |v: f64| vec![vec![v; 3]; 3];
        for paired in [true, false] {
            let plan = RoundsPlan {
                paired,
                needs_rounds: false,
                ..RoundsPlan::default()
            };
            let j = judge_rounds(&rounds(1500.0), &rounds(1700.0), &[], plan, 5, 100, 1).unwrap();
            assert_eq!(
                verdict(&j, j.p.unwrap(), 0.01, 0.03, "lower").0,
                Verdict::Regression
            );
            let j = judge_rounds(&rounds(1500.0), &rounds(1500.0), &[], plan, 5, 100, 1).unwrap();
            assert_eq!(verdict(&j, j.p.unwrap(), 0.01, 0.03, "lower").0, Verdict::Same);
        }
    }

    #[test]
    fn not_significant_after_correction_is_not_a_regression() {
        let j = Judgement {
            ratio: Some(1.2),
            ci_low: Some(1.1),
            ci_high: Some(1.3),
            p: Some(0.001),
            ..Default::default()
        };
        assert_eq!(verdict(&j, 0.001, 0.01, 0.03, "lower").0, Verdict::Regression);
        assert_eq!(verdict(&j, 0.02, 0.01, 0.03, "lower").0, Verdict::Noisy);
        assert_eq!(verdict(&j, 0.001, 0.01, 0.03, "higher").0, Verdict::Improvement);
    }

    /// Rounds whose level jumps between two values (process-level effects), tight within.
    fn bimodal_rounds(rng: &mut StdRng, rounds: usize, shift: f64) -> Vec<Vec<f64>> {
        (0..rounds)
            .map(|_| {
                let level = if rng.random::<bool>() { 1.0 } else { 1.3 };
                samples(rng, level * shift, 0.01, 40)
            })
            .collect()
    }

    fn decide_rounds(base: &[Vec<f64>], cand: &[Vec<f64>]) -> Verdict {
        match judge_rounds(base, cand, &[], RoundsPlan::default(), 5, 2000, 1) {
            Ok(j) => verdict(&j, j.p.unwrap_or(1.0), 0.01, 0.03, "lower").0,
            Err(_) => Verdict::Noisy,
        }
    }

    #[test]
    fn process_level_jumps_are_not_regressions_with_rounds() {
        let mut rng = StdRng::seed_from_u64(11);
        let (mut with_rounds, mut pooled) = (0, 0);
        for _ in 0..200 {
            let b = bimodal_rounds(&mut rng, 3, 1.0);
            let c = bimodal_rounds(&mut rng, 3, 1.0);
            with_rounds += (decide_rounds(&b, &c) == Verdict::Regression) as usize;
            let flat = |r: &[Vec<f64>]| r.iter().flatten().copied().collect::<Vec<_>>();
            pooled += (decide(&flat(&b), &flat(&c), "lower") == Verdict::Regression) as usize;
        }
        // Judged on rounds: at most the test's α (1%) plus sampling luck.
        assert!(with_rounds <= 4, "{with_rounds} of 200 A/A comparisons flagged");
        // Judged on pooled samples, the same data is flagged often: why rounds exist.
        assert!(pooled > 40, "pooled flagged only {pooled} of 200");
    }

    #[test]
    fn five_percent_slowdown_with_stable_rounds_is_flagged() {
        let mut rng = StdRng::seed_from_u64(12);
        let mut hits = 0;
        for _ in 0..20 {
            let b: Vec<Vec<f64>> = (0..3).map(|_| samples(&mut rng, 1.0, CV, N)).collect();
            let c: Vec<Vec<f64>> = (0..3).map(|_| samples(&mut rng, 1.05, CV, N)).collect();
            hits += (decide_rounds(&b, &c) == Verdict::Regression) as usize;
        }
        assert!(hits >= 18, "flagged {hits} of 20");
    }

    #[test]
    fn one_slow_round_neither_swings_nor_hides_a_change() {
        let mut rng = StdRng::seed_from_u64(21);
        for _ in 0..20 {
            let mut b: Vec<Vec<f64>> = (0..5).map(|_| samples(&mut rng, 1.0, CV, N)).collect();
            let c: Vec<Vec<f64>> = (0..5).map(|_| samples(&mut rng, 1.0, CV, N)).collect();
            // One baseline round 75× slow (issue 10's GEMM A/B): still not a change.
            b[4] = samples(&mut rng, 75.0, CV, N);
            let j = judge_rounds(&b, &c, &[], RoundsPlan::default(), 5, 2000, 1).unwrap();
            assert_eq!(j.outlier_rounds, (1, 0));
            assert!(j.ci_low.unwrap() > 0.95 && j.ci_high.unwrap() < 1.05, "{j:?}");
            let r = j.candidate.unwrap() / j.baseline.unwrap();
            assert!((r - j.ratio.unwrap()).abs() < 1e-12);
            // And a 10% slowdown beside such a round is still found.
            let slow: Vec<Vec<f64>> = (0..5).map(|_| samples(&mut rng, 1.1, CV, N)).collect();
            assert_eq!(decide_rounds(&b, &slow), Verdict::Regression);
        }
    }

    /// Setting outlier rounds aside must not buy power with false alarms: A/A comparisons of 5
    /// rounds whose levels vary 3% between processes (and now and then one round 30% slow) stay
    /// within the test's α.
    #[test]
    fn a_a_with_outlier_rounds_stays_within_alpha() {
        let mut rng = StdRng::seed_from_u64(31);
        let side = |rng: &mut StdRng| -> Vec<Vec<f64>> {
            (0..5)
                .map(|_| {
                    let level = samples(rng, 1.0, 0.03, 1)[0];
                    let hog = if rng.random::<f64>() < 0.1 { 1.3 } else { 1.0 };
                    samples(rng, level * hog, 0.01, 30)
                })
                .collect()
        };
        let (mut flagged, trials) = (0, 500);
        for _ in 0..trials {
            let (b, c) = (side(&mut rng), side(&mut rng));
            flagged += matches!(decide_rounds(&b, &c), Verdict::Regression | Verdict::Improvement) as usize;
        }
        assert!(
            flagged <= trials / 100,
            "{flagged} of {trials} A/A comparisons flagged"
        );
    }

    #[test]
    fn fewer_rounds_judge_no_time_and_fall_back_to_samples_for_amounts() {
        let mut rng = StdRng::seed_from_u64(13);
        let b = vec![samples(&mut rng, 1.0, CV, N), samples(&mut rng, 1.0, CV, N)];
        let c = vec![samples(&mut rng, 1.1, CV, N), samples(&mut rng, 1.1, CV, N)];
        // A time: never judged on two rounds a side, whatever the samples say.
        let why = judge_rounds(&b, &c, &[], RoundsPlan::default(), 5, 2000, 1).unwrap_err();
        assert!(
            why.starts_with("2 rounds in the baseline and 2 in the candidate")
                && why.contains("a timing verdict needs at least 3 rounds"),
            "{why}"
        );
        assert!(too_few_rounds(1, 1).starts_with("1 round in the baseline and 1 in"));
        let pooled = judge_pooled(&[b.clone(), b.clone()], &c, true, 5, 2000, 1).unwrap_err();
        assert!(pooled.contains("needs at least 3 rounds"), "{pooled}");
        // A size or a count: the samples decide.
        let flat = |r: &[Vec<f64>]| r.iter().flatten().copied().collect::<Vec<_>>();
        let amounts = RoundsPlan {
            needs_rounds: false,
            ..RoundsPlan::default()
        };
        assert_eq!(
            judge_rounds(&b, &c, &[], amounts, 5, 2000, 1).unwrap(),
            judge(&flat(&b), &flat(&c), 5, 2000, 1).unwrap()
        );
    }
}
