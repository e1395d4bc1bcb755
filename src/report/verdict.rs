//! The answer a report opens with: the outcome of a comparison (or of a single run), the exit
//! code it implies, and the findings worth a reader's first look, worst first.

use crate::compare::{CompareReport, Comparison, LoadedRun, Verdict};
use crate::error::{EXIT_ERROR, EXIT_OK, EXIT_REGRESSION};
use crate::render::num::fmt_num;
use crate::render::num::pct;
use crate::results::Status;

/// What the report says in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Regressions,
    Failures,
    Improvements,
    AllSame,
    TooNoisy,
    /// A single run without comparison: every case ran.
    RunOk,
    /// A single run in which some cases failed.
    RunFailures,
    /// Nothing was matched with measurements on both sides.
    NothingMatched,
}

impl Outcome {
    pub fn headline(self) -> &'static str {
        match self {
            Outcome::Regressions => "Regressions found",
            Outcome::Failures => "Cases failed in the candidate",
            Outcome::Improvements => "Improvements, no regression",
            Outcome::AllSame => "All the same",
            Outcome::TooNoisy => "Too noisy to tell",
            Outcome::RunOk => "Run complete",
            Outcome::RunFailures => "Run complete, with failed cases",
            Outcome::NothingMatched => "Nothing to compare",
        }
    }
    /// A CSS class: red for bad news, green for good, grey otherwise.
    pub fn class(self) -> &'static str {
        match self {
            Outcome::Regressions | Outcome::Failures | Outcome::RunFailures => "bad",
            Outcome::Improvements | Outcome::AllSame | Outcome::RunOk => "good",
            Outcome::TooNoisy | Outcome::NothingMatched => "unsure",
        }
    }
}

/// The verdict block's content.
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    pub outcome: Outcome,
    pub exit_code: i32,
    /// One sentence of counts.
    pub detail: String,
    /// Regressions and failures, worst change first.
    pub findings: Vec<&'a Comparison>,
    /// Improvements, largest first (shown after the findings).
    pub improvements: Vec<&'a Comparison>,
}

/// How bad a comparison is for sorting: failures first, then the largest change in the bad
/// direction.
fn badness(c: &Comparison) -> f64 {
    if c.verdict == Verdict::Failed {
        return f64::INFINITY;
    }
    let r = c.judgement.ratio.unwrap_or(1.0).max(1e-12);
    let l = r.ln().abs();
    if l.is_finite() {
        l
    } else {
        0.0
    }
}

/// The verdict of a comparison.
pub fn of_comparison(c: &CompareReport) -> Summary<'_> {
    let n = |v| c.count(v);
    let outcome = if n(Verdict::Regression) > 0 {
        Outcome::Regressions
    } else if n(Verdict::Failed) > 0 {
        Outcome::Failures
    } else if c.matched() == 0 {
        Outcome::NothingMatched
    } else if n(Verdict::Improvement) > 0 {
        Outcome::Improvements
    } else if n(Verdict::Noisy) > 0 {
        Outcome::TooNoisy
    } else {
        Outcome::AllSame
    };
    let mut findings: Vec<&Comparison> = c
        .comparisons
        .iter()
        .filter(|x| matches!(x.verdict, Verdict::Regression | Verdict::Failed))
        .collect();
    findings.sort_by(|a, b| badness(b).total_cmp(&badness(a)));
    let mut improvements: Vec<&Comparison> = c
        .comparisons
        .iter()
        .filter(|x| x.verdict == Verdict::Improvement)
        .collect();
    improvements.sort_by(|a, b| badness(b).total_cmp(&badness(a)));
    let detail = format!(
        "{} regression(s), {} failed, {} improvement(s), {} same, {} too noisy to tell, {} missing, of {} compared metrics (baseline {}, {}).",
        n(Verdict::Regression),
        n(Verdict::Failed),
        n(Verdict::Improvement),
        n(Verdict::Same),
        n(Verdict::Noisy),
        n(Verdict::Missing),
        c.comparisons.len(),
        c.baseline,
        c.mode
    );
    Summary {
        outcome,
        exit_code: c.exit_code(),
        detail,
        findings,
        improvements,
    }
}

/// The verdict of runs shown without a comparison: did every case run?
pub fn of_runs(runs: &[LoadedRun]) -> Summary<'static> {
    let all = runs.iter().flat_map(|r| r.measurements.iter());
    let (mut ok, mut skipped, mut failed) = (0, 0, 0);
    for m in all {
        match m.row.status {
            Status::Ok if m.is_metric() => ok += 1,
            Status::Skipped => skipped += 1,
            Status::Failed => failed += 1,
            _ => {}
        }
    }
    Summary {
        outcome: if failed > 0 {
            Outcome::RunFailures
        } else {
            Outcome::RunOk
        },
        exit_code: if ok == 0 && failed > 0 { EXIT_ERROR } else { EXIT_OK },
        detail: format!(
            "{ok} metrics measured, {skipped} skipped, {failed} failed; no comparison (give `report --along COLUMN --baseline VALUE` to compare)."
        ),
        findings: Vec::new(),
        improvements: Vec::new(),
    }
}

/// `+12.3% [+10.1%, +14.0%]`, or what is known of it.
pub fn change_text(c: &Comparison) -> String {
    let change = c.judgement.ratio.map(pct).unwrap_or_else(|| "-".into());
    match (c.judgement.ci_low, c.judgement.ci_high) {
        (Some(l), Some(h)) => format!("{change} [{}, {}]", pct(l), pct(h)),
        _ => change,
    }
}

/// One finding in words: `regression +100.2% [+99%, +101%]: 10.0 → 20.0 ms`, or why it failed.
pub fn finding_text(c: &Comparison) -> String {
    if c.verdict == Verdict::Failed {
        return format!("failed: {}", c.candidate.reason);
    }
    let num = |v: Option<f64>| v.map(fmt_num).unwrap_or_else(|| "-".into());
    format!(
        "{} {}: {} → {} {}",
        c.verdict.as_str(),
        change_text(c),
        num(c.baseline.estimate),
        num(c.candidate.estimate),
        c.unit
    )
}

/// What an exit code means, for the reader of the verdict.
pub fn exit_meaning(code: i32) -> &'static str {
    match code {
        EXIT_OK => "fine",
        EXIT_REGRESSION => "regression found",
        _ => "error: no data to judge",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{CompareOptions, Judgement, Side};

    fn cmp(verdict: Verdict, ratio: f64) -> Comparison {
        let side = |l: &str| Side {
            label: l.into(),
            median: Some(1.0),
            estimate: Some(1.0),
            n: 10,
            ..Default::default()
        };
        Comparison {
            workload: "gemm".into(),
            case: "size=256".into(),
            metric: "latency".into(),
            unit: "ms".into(),
            better: "lower".into(),
            gpu: String::new(),
            context: String::new(),
            baseline: side("a"),
            candidate: side("b"),
            judgement: Judgement {
                ratio: Some(ratio),
                ci_low: Some(ratio * 0.98),
                ci_high: Some(ratio * 1.02),
                p: Some(0.001),
                baseline: Some(1.0),
                candidate: Some(ratio),
                outlier_rounds: (0, 0),
                ..Default::default()
            },
            p_adj: Some(0.001),
            noise: 0.03,
            verdict,
            reason: String::new(),
        }
    }

    fn report(v: Vec<Comparison>) -> CompareReport {
        CompareReport {
            mode: "along image".into(),
            baseline: "a".into(),
            options: CompareOptions::default(),
            comparisons: v,
        }
    }

    #[test]
    fn outcomes_and_order() {
        let r = report(vec![
            cmp(Verdict::Same, 1.0),
            cmp(Verdict::Regression, 1.2),
            cmp(Verdict::Regression, 2.0),
            cmp(Verdict::Failed, 1.0),
        ]);
        let s = of_comparison(&r);
        assert_eq!(s.outcome, Outcome::Regressions);
        assert_eq!(s.exit_code, EXIT_REGRESSION);
        let order: Vec<(Verdict, f64)> = s
            .findings
            .iter()
            .map(|c| (c.verdict, c.judgement.ratio.unwrap()))
            .collect();
        assert_eq!(
            order,
            [
                (Verdict::Failed, 1.0),
                (Verdict::Regression, 2.0),
                (Verdict::Regression, 1.2)
            ]
        );
        assert_eq!(
            of_comparison(&report(vec![cmp(Verdict::Same, 1.0)])).outcome,
            Outcome::AllSame
        );
        assert_eq!(
            of_comparison(&report(vec![cmp(Verdict::Same, 1.0), cmp(Verdict::Noisy, 1.0)])).outcome,
            Outcome::TooNoisy
        );
        assert_eq!(
            of_comparison(&report(vec![
                cmp(Verdict::Improvement, 0.5),
                cmp(Verdict::Noisy, 1.0)
            ]))
            .outcome,
            Outcome::Improvements
        );
        assert_eq!(
            of_comparison(&report(vec![cmp(Verdict::Failed, 1.0)])).outcome,
            Outcome::Failures
        );
    }
}
