//! The answer a report opens with: the outcome of a comparison (or of runs without one), the
//! exit code it implies (the one `report` and `run` exit with: [`crate::outcome`]), why the
//! gate is closed, and the findings worth a reader's first look, worst first.

use super::ReportData;
use crate::compare::gate::runs_outcome;
use crate::compare::{CompareReport, Comparison, LoadedRun, Verdict};
use crate::outcome::Outcome;
use crate::render::num::fmt_num;
use crate::render::num::pct;
use crate::results::Status;

/// What the report says in one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headline {
    /// A compared run is interrupted or partial.
    Partial,
    Regressions,
    Failures,
    /// The candidate lacks metrics the baseline measured.
    Missing,
    Improvements,
    AllSame,
    TooNoisy,
    /// A single run without comparison: every case ran.
    RunOk,
    /// A single run in which some cases failed.
    RunFailures,
    /// Runs without comparison, one of them partial or without any row.
    RunIncomplete,
    /// Runs without comparison in which every case failed.
    NothingMeasured,
    /// Nothing was matched with measurements on both sides.
    NothingMatched,
}

impl Headline {
    pub fn text(self) -> &'static str {
        match self {
            Headline::Partial => "Incomplete: a compared run is partial",
            Headline::Regressions => "Regressions found",
            Headline::Failures => "Cases failed in the candidate",
            Headline::Missing => "The candidate lacks metrics the baseline measured",
            Headline::Improvements => "Improvements, no regression",
            Headline::AllSame => "All the same",
            Headline::TooNoisy => "Too noisy to tell",
            Headline::RunOk => "Run complete",
            Headline::RunFailures => "Run complete, with failed cases",
            Headline::RunIncomplete => "Run incomplete",
            Headline::NothingMeasured => "Nothing measured: every case failed",
            Headline::NothingMatched => "Nothing to compare",
        }
    }
    /// A CSS class: red for bad news, green for good, grey otherwise.
    pub fn class(self) -> &'static str {
        match self {
            Headline::Regressions
            | Headline::Failures
            | Headline::RunFailures
            | Headline::Missing
            | Headline::NothingMeasured => "bad",
            Headline::Improvements | Headline::AllSame | Headline::RunOk => "good",
            Headline::TooNoisy | Headline::NothingMatched | Headline::Partial | Headline::RunIncomplete => {
                "unsure"
            }
        }
    }
}

/// The verdict block's content.
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    pub headline: Headline,
    /// What the command concludes: `outcome.code()` is the exit code the block prints and the
    /// process exits with.
    pub outcome: Outcome,
    /// One sentence of counts.
    pub detail: String,
    /// Why the gate is closed, first: partial runs, what the candidate lacks (each named),
    /// failed rows. Empty when it is open.
    pub gate: Vec<String>,
    /// Regressions and failures, worst change first.
    pub findings: Vec<&'a Comparison>,
    /// Improvements, largest first (shown after the findings).
    pub improvements: Vec<&'a Comparison>,
}

impl Summary<'_> {
    /// The exit code the verdict implies.
    pub fn exit_code(&self) -> i32 {
        self.outcome.code()
    }
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

/// The verdict of a report: of its comparison, or of its runs when it has none. `report`
/// exits with this summary's outcome, and its pages print it.
pub fn of(data: &ReportData) -> Summary<'_> {
    match &data.comparison {
        Some(c) => of_comparison(c),
        None => of_runs(&data.runs, data.allow_partial),
    }
}

/// The verdict of a comparison.
pub fn of_comparison(c: &CompareReport) -> Summary<'_> {
    let n = |v| c.count(v);
    let outcome = c.outcome();
    let headline = match outcome {
        Outcome::Incomplete | Outcome::Interrupted => Headline::Partial,
        Outcome::Regression => Headline::Regressions,
        Outcome::Failed => Headline::Failures,
        Outcome::Missing => Headline::Missing,
        Outcome::Error => Headline::NothingMatched,
        Outcome::Complete if n(Verdict::Improvement) > 0 => Headline::Improvements,
        Outcome::Complete if n(Verdict::Noisy) > 0 => Headline::TooNoisy,
        Outcome::Complete => Headline::AllSame,
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
    let gate = if outcome == Outcome::Complete {
        Vec::new()
    } else {
        c.gate_lines()
    };
    Summary {
        headline,
        outcome,
        detail,
        gate,
        findings,
        improvements,
    }
}

/// The verdict of runs shown without a comparison: did every case run, and did the runs end?
pub fn of_runs(runs: &[LoadedRun], allow_partial: bool) -> Summary<'static> {
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
    let (outcome, gate) = runs_outcome(runs, allow_partial);
    Summary {
        headline: match outcome {
            Outcome::Complete => Headline::RunOk,
            Outcome::Failed => Headline::RunFailures,
            Outcome::Error => Headline::NothingMeasured,
            _ => Headline::RunIncomplete,
        },
        outcome,
        detail: format!(
            "{ok} metrics measured, {skipped} skipped, {failed} failed; no comparison (give `report --along COLUMN --baseline VALUE` to compare)."
        ),
        gate,
        findings: Vec::new(),
        improvements: Vec::new(),
    }
}

/// The verdict block as plain text (the end of `run` with two or more targets): the headline
/// and exit code, why the gate is closed, the counts, then what got worse and better.
pub fn text(s: &Summary) -> String {
    let mut o = format!(
        "verdict: {}: exit {} ({})\n",
        s.headline.text(),
        s.exit_code(),
        s.outcome.meaning()
    );
    for line in &s.gate {
        o.push_str(&format!("  {line}\n"));
    }
    o.push_str(&format!("  {}\n", s.detail));
    for (title, list) in [("worse", &s.findings), ("better", &s.improvements)] {
        for c in list.iter() {
            o.push_str(&format!(
                "  {title}: {} ({}): {}\n",
                c.what(),
                c.candidate.label,
                finding_text(c)
            ));
        }
    }
    o
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
            partial_runs: Vec::new(),
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
        assert_eq!(s.headline, Headline::Regressions);
        assert_eq!(s.outcome, Outcome::Regression);
        assert_eq!(s.exit_code(), 1);
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
            of_comparison(&report(vec![cmp(Verdict::Same, 1.0)])).headline,
            Headline::AllSame
        );
        assert_eq!(
            of_comparison(&report(vec![cmp(Verdict::Same, 1.0), cmp(Verdict::Noisy, 1.0)])).headline,
            Headline::TooNoisy
        );
        assert_eq!(
            of_comparison(&report(vec![
                cmp(Verdict::Improvement, 0.5),
                cmp(Verdict::Noisy, 1.0)
            ]))
            .headline,
            Headline::Improvements
        );
        assert_eq!(
            of_comparison(&report(vec![cmp(Verdict::Failed, 1.0)])).headline,
            Headline::Failures
        );
    }
}
