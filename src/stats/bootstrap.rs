//! Percentile-bootstrap confidence interval of the ratio of two medians (Efron & Tibshirani,
//! An Introduction to the Bootstrap, ch. 13): no crate offers it for two independent samples.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::summary::percentile_sorted;

/// The ratio `median(candidate) / median(baseline)` and its bootstrap CI.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioCi {
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
}

/// Median of unsorted data, reordering it (O(n) with `select_nth_unstable_by`).
pub fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    let (_, hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        hi
    } else {
        // The lower middle is the largest of the left part.
        let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo + hi) / 2.0
    }
}

/// Bootstraps the ratio of medians: both sides are resampled independently with replacement,
/// `resamples` times, and the CI is the (1−level)/2 and (1+level)/2 percentiles of the ratios.
///
/// Deterministic for a given `seed`. `None` when a side is empty, holds a non-finite value, or
/// the baseline's median is zero (no ratio exists).
pub fn ratio_of_medians_ci(
    baseline: &[f64],
    candidate: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<RatioCi> {
    if baseline.is_empty() || candidate.is_empty() || baseline.iter().chain(candidate).any(|v| !v.is_finite())
    {
        return None;
    }
    let base_med = median_in_place(&mut baseline.to_vec());
    let cand_med = median_in_place(&mut candidate.to_vec());
    if base_med == 0.0 {
        return None;
    }
    let ratio = cand_med / base_med;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bs = vec![0.0; baseline.len()];
    let mut cs = vec![0.0; candidate.len()];
    let mut ratios = Vec::with_capacity(resamples.max(1));
    for _ in 0..resamples.max(1) {
        for x in bs.iter_mut() {
            *x = baseline[rng.random_range(0..baseline.len())];
        }
        for x in cs.iter_mut() {
            *x = candidate[rng.random_range(0..candidate.len())];
        }
        let b = median_in_place(&mut bs);
        if b != 0.0 {
            ratios.push(median_in_place(&mut cs) / b);
        }
    }
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let tail = (1.0 - level.clamp(0.0, 1.0)) / 2.0;
    Some(RatioCi {
        ratio,
        low: percentile_sorted(&ratios, tail),
        high: percentile_sorted(&ratios, 1.0 - tail),
    })
}

/// A stable 64-bit FNV-1a hash, to give each comparison its own bootstrap stream from one seed
/// (std's hasher is not guaranteed stable across Rust releases).
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_in_place(&mut [7.0]), 7.0);
    }

    #[test]
    fn deterministic_and_covering() {
        let a: Vec<f64> = (0..50).map(|i| 100.0 + (i % 7) as f64).collect();
        let b: Vec<f64> = a.iter().map(|v| v * 1.10).collect();
        let r1 = ratio_of_medians_ci(&a, &b, 1000, 0.95, 42).unwrap();
        let r2 = ratio_of_medians_ci(&a, &b, 1000, 0.95, 42).unwrap();
        assert_eq!(r1, r2);
        assert!((r1.ratio - 1.10).abs() < 1e-12);
        assert!(r1.low <= 1.10 && 1.10 <= r1.high, "{r1:?}");
        assert!(r1.high - r1.low < 0.1, "{r1:?}");
    }

    #[test]
    fn zero_baseline_has_no_ratio() {
        assert!(ratio_of_medians_ci(&[0.0, 0.0, 0.0], &[1.0], 100, 0.95, 1).is_none());
        assert!(ratio_of_medians_ci(&[], &[1.0], 100, 0.95, 1).is_none());
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
    }

    proptest! {
        #[test]
        fn ci_brackets_ratio(
            a in proptest::collection::vec(1.0f64..100.0, 1..60),
            b in proptest::collection::vec(1.0f64..100.0, 1..60),
            seed in any::<u64>(),
        ) {
            let r = ratio_of_medians_ci(&a, &b, 200, 0.95, seed).unwrap();
            prop_assert!(r.low <= r.high);
            prop_assert!(r.low > 0.0 && r.high.is_finite());
            // Every bootstrap median lies within the sample range, so the CI does too.
            let (amin, amax) = (a.iter().copied().fold(f64::MAX, f64::min), a.iter().copied().fold(0.0, f64::max));
            let (bmin, bmax) = (b.iter().copied().fold(f64::MAX, f64::min), b.iter().copied().fold(0.0, f64::max));
            prop_assert!(r.low >= bmin / amax - 1e-9 && r.high <= bmax / amin + 1e-9);
        }
    }
}
