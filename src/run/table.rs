//! The short table printed at the end of a run.

use crate::render::num::{ci_pct, fmt_num};
use crate::render::table::aligned;
use crate::results::Measurement;

/// Columns right-aligned: median, ±ci, rounds.
const RIGHT: [usize; 3] = [4, 6, 7];

/// One line per (target, case, metric), rounds pooled; `rounds` is how many worker processes
/// measured it and how far their medians spread (half the range, relative to the pooled
/// median): the process-to-process noise that comparisons judge against.
pub fn render(measurements: &[Measurement]) -> String {
    let header = [
        "target",
        "workload",
        "case",
        "metric",
        "median",
        "unit",
        "±ci",
        "rounds ±",
        "status",
    ];
    let mut lines = vec![header.map(String::from).to_vec()];
    lines.extend(measurements.iter().map(line));
    aligned(&lines, |i| RIGHT.contains(&i))
}

fn line(m: &Measurement) -> Vec<String> {
    let r = &m.row;
    let (median, ci) = match (r.median, r.ci_low, r.ci_high, r.n) {
        // Fewer than 6 samples have no 95% CI of the median: say how many there were.
        (Some(m), _, _, Some(n)) if n < 6 => (fmt_num(m), format!("n={n}")),
        (Some(m), Some(lo), Some(hi), _) => (fmt_num(m), ci_pct(m, lo, hi).unwrap_or_default()),
        (Some(m), ..) => (fmt_num(m), String::new()),
        _ => (String::new(), String::new()),
    };
    let status = if r.reason.is_empty() {
        r.status.as_str().to_string()
    } else {
        format!("{}: {}", r.status.as_str(), r.reason)
    };
    vec![
        r.target.clone(),
        r.workload.clone(),
        r.case.clone(),
        r.metric.clone(),
        median,
        r.unit.clone(),
        ci,
        spread(m),
        status,
    ]
}

/// `3× 1.2%`: rounds and the half range of their medians relative to the pooled median;
/// `6× 1.2% (1 outlier)` when outlier rounds were set aside (the spread is of the others).
fn spread(m: &Measurement) -> String {
    let medians: Vec<f64> = m
        .rounds
        .iter()
        .filter(|v| !v.is_empty())
        .filter_map(|v| crate::stats::summarize(v).map(|s| s.median))
        .collect();
    match (m.row.median, medians.len()) {
        (Some(med), n) if n > 1 => {
            let (kept, dropped) = crate::stats::without_outliers(&medians, 3);
            let lo = kept.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = kept.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let note = match dropped {
                0 => String::new(),
                1 => " (1 outlier)".to_string(),
                d => format!(" ({d} outliers)"),
            };
            ci_pct(med, lo, hi)
                .map(|p| format!("{n}× {p}{note}"))
                .unwrap_or_default()
        }
        (_, 1) => "1×".to_string(),
        _ => String::new(),
    }
}
