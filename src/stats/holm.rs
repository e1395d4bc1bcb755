//! Holm's step-down correction of p-values for a family of tests (Holm 1979): controls the
//! family-wise error rate without assuming independence, and is uniformly more powerful than
//! Bonferroni.

/// Holm-adjusted p-values, in the input order. Non-finite p-values are treated as 1.
pub fn holm_adjust(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    let clean = |x: f64| if x.is_finite() { x.clamp(0.0, 1.0) } else { 1.0 };
    order.sort_by(|&i, &j| clean(p[i]).total_cmp(&clean(p[j])));
    let mut out = vec![1.0; m];
    let mut running_max: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let adj = ((m - rank) as f64 * clean(p[i])).min(1.0);
        // Adjusted p-values must not decrease along the sorted order.
        running_max = running_max.max(adj);
        out[i] = running_max;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn textbook_example() {
        // R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") → 0.03 0.06 0.06 0.02
        let adj = holm_adjust(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
    }

    #[test]
    fn empty_and_nan() {
        assert!(holm_adjust(&[]).is_empty());
        assert_eq!(holm_adjust(&[f64::NAN, 0.01]), vec![1.0, 0.02]);
    }

    proptest! {
        #[test]
        fn bounds_and_monotone(p in proptest::collection::vec(0.0f64..=1.0, 0..50)) {
            let adj = holm_adjust(&p);
            for (a, x) in adj.iter().zip(&p) {
                prop_assert!(*a >= *x && *a <= 1.0);
                prop_assert!(*a <= (x * p.len() as f64).min(1.0) + 1e-12);
            }
            for i in 0..p.len() {
                for j in 0..p.len() {
                    if p[i] < p[j] { prop_assert!(adj[i] <= adj[j]); }
                }
            }
        }
    }
}
