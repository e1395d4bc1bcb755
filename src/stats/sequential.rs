//! Error control when rounds are added until every verdict is decided (sequential stopping).
//!
//! A run with two or more targets judges its comparisons after `min_rounds` and, while one is
//! still undecided, adds interleaved round pairs and judges again. Testing the same hypothesis at
//! every look at the full α would raise the false-alarm rate with the number of looks (Armitage,
//! McPherson & Rowe, "Repeated significance tests on accumulating data", JRSS A 1969). So the
//! looks are few and planned, and α is spent across them: look `k` (at `n_k` judged rounds) gets
//! the share `w_k = t_k − t_{k−1}` of α with `t_k = n_k / max_rounds`, the linear member of Kim
//! and DeMets' power family of spending functions (Lan & DeMets, "Discrete sequential boundaries
//! for clinical trials", Biometrika 70, 1983; Kim & DeMets, Biometrics 43, 1987). The shares sum
//! to 1 over the looks.
//!
//! The bound used is the union bound over looks, not the exact group-sequential boundary: the
//! test at the look where a comparison stopped uses level `α · w_k` (equivalently its p-value is
//! divided by `w_k` before Holm's correction), and its CI is the `1 − (1 − level) · w_k` interval,
//! a repeated confidence interval in the sense of Jennison & Turnbull (JRSS B 51, 1989). Since a
//! run stops at one look, P(false alarm) ≤ Σ_k α · w_k = α whatever the stopping rule; it is
//! conservative (the looks' tests are positively correlated), which costs some power and never
//! error control. A fixed design (`min_rounds = max_rounds`) has one look with the whole α.
//!
//! Looks are at `min_rounds`, then each time the rounds double, and at `max_rounds`: few looks
//! keep each one's share large (5, 10, 20 of 20 rounds: shares 25%, 25%, 50%).

use serde::{Deserialize, Serialize};

/// The rounds design of one case: judged first after `min_rounds`, at most `max_rounds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Design {
    pub min_rounds: usize,
    pub max_rounds: usize,
}

impl Design {
    /// A design of exactly `n` rounds: one look with the whole α.
    pub fn fixed(n: usize) -> Design {
        Design {
            min_rounds: n,
            max_rounds: n,
        }
    }

    /// Judged rounds at each look: `min_rounds`, doubling, then `max_rounds`.
    pub fn looks(&self) -> Vec<usize> {
        let (lo, hi) = (
            self.min_rounds.max(1),
            self.max_rounds.max(self.min_rounds.max(1)),
        );
        let mut v = vec![lo];
        let mut n = lo;
        while n < hi {
            n = (n * 2).min(hi);
            v.push(n);
        }
        v
    }

    /// The look whose test applies to `judged` rounds: the look at exactly that many, else the
    /// next one above it (a run stopped between looks by its time budget uses the slot of the
    /// look it did not reach, so that each run uses one slot), else the last.
    pub fn look_of(&self, judged: usize) -> usize {
        let looks = self.looks();
        looks.iter().position(|&n| n >= judged).unwrap_or(looks.len() - 1)
    }

    /// Whether `judged` rounds is one of the looks (a verdict may stop the case there).
    pub fn is_look(&self, judged: usize) -> bool {
        self.looks().contains(&judged)
    }

    /// The share of α (and of the CI's error) spent at look `k`: `t_k − t_{k−1}`, t = n / max.
    pub fn share(&self, k: usize) -> f64 {
        let looks = self.looks();
        let last = *looks.last().expect("at least one look") as f64;
        let t = |i: usize| looks[i] as f64 / last;
        match k {
            0 => t(0),
            k if k < looks.len() => t(k) - t(k - 1),
            _ => 0.0,
        }
    }

    /// The share for `judged` rounds.
    pub fn share_at(&self, judged: usize) -> f64 {
        self.share(self.look_of(judged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::paired::paired_log_ratio;
    use crate::stats::paired::PAIR_TRIM;
    use crate::stats::synthetic::lognormal;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn looks_double_and_shares_sum_to_one() {
        let d = Design {
            min_rounds: 5,
            max_rounds: 20,
        };
        assert_eq!(d.looks(), vec![5, 10, 20]);
        assert_eq!((d.share(0), d.share(1), d.share(2)), (0.25, 0.25, 0.5));
        assert_eq!(
            Design {
                min_rounds: 5,
                max_rounds: 12
            }
            .looks(),
            vec![5, 10, 12]
        );
        assert_eq!(Design::fixed(5).looks(), vec![5]);
        assert_eq!(Design::fixed(5).share_at(7), 1.0);
        for (judged, look) in [(3, 0), (5, 0), (6, 1), (10, 1), (11, 2), (20, 2), (22, 2)] {
            assert_eq!(d.look_of(judged), look, "{judged}");
        }
        assert!(d.is_look(10) && !d.is_look(9));
        let sum: f64 = (0..3).map(|k| d.share(k)).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    /// One simulated A/A comparison run the way `run` does it: judged at each look on paired
    /// rounds whose level drifts for both targets alike, stopped as soon as the CI is decided;
    /// `spend` false tests every look at the full α (the naive way).
    fn a_a_false_alarm(rng: &mut StdRng, d: Design, alpha: f64, noise: f64, spend: bool) -> bool {
        let mut b = Vec::new();
        let mut c = Vec::new();
        let mut drift = 1.0;
        for (k, &n) in d.looks().iter().enumerate() {
            while b.len() < n {
                // The machine's speed wanders (shared by the pair), each process adds its own.
                drift *= lognormal(rng, 1.0, 0.05, 1)[0];
                let slow = if rng.random::<f64>() < 0.05 { 1.3 } else { 1.0 };
                b.push(drift * lognormal(rng, 1.0, 0.03, 1)[0] * slow);
                c.push(drift * lognormal(rng, 1.0, 0.03, 1)[0]);
            }
            let w = if spend { d.share(k) } else { 1.0 };
            let Some(r) = paired_log_ratio(&b, &c, PAIR_TRIM, 1.0 - 0.05 * w) else {
                continue;
            };
            let (up, down) = (1.0 + noise, 1.0 / (1.0 + noise));
            let significant = r.p < alpha * w;
            if significant && (r.low > up || r.high < down) {
                return true;
            }
            if (r.low >= down && r.high <= up) || significant {
                return false;
            }
        }
        false
    }

    /// The false-alarm rate of A/A comparisons stopped at the first decided look stays within α
    /// when α is spent across the looks; testing every look at the full α does not. Judged with
    /// a zero noise threshold, where every significant difference is a false alarm.
    #[test]
    fn sequential_a_a_false_alarms_stay_within_alpha() {
        let d = Design {
            min_rounds: 5,
            max_rounds: 40,
        };
        let (alpha, trials) = (0.05, 4000);
        let mut rng = StdRng::seed_from_u64(7);
        let spent = (0..trials)
            .filter(|_| a_a_false_alarm(&mut rng, d, alpha, 0.0, true))
            .count();
        let naive = (0..trials)
            .filter(|_| a_a_false_alarm(&mut rng, d, alpha, 0.0, false))
            .count();
        let rate = spent as f64 / trials as f64;
        // α plus three binomial standard errors of the simulation.
        let se = (alpha * (1.0 - alpha) / trials as f64).sqrt();
        assert!(rate <= alpha + 3.0 * se, "spent: {spent} of {trials} A/A flagged");
        assert!(naive > spent, "naive {naive} vs spent {spent}");
        eprintln!(
            "A/A false alarms over the looks {:?}: spent {spent}, naive {naive} of {trials}",
            d.looks()
        );
    }
}
