//! The gate: what a comparison's verdicts and its runs' states mean for the exit code. It fails
//! closed. A regression or a case failed in the candidate closes it (1); so does a
//! (workload, case, metric, gpu) that the baseline measured and the candidate lacks (1, unless
//! `--allow-missing`); a side that is an interrupted or partial run cannot answer at all (2,
//! unless `--allow-partial`), and neither can a comparison with nothing measured on both sides.

use std::path::PathBuf;

use serde::Serialize;

use super::{CompareReport, Comparison, LoadedRun, Verdict};
use crate::outcome::Outcome;

/// How many missing metrics the gate's lines name one by one (the comparisons list them all,
/// first).
pub const LISTED: usize = 20;

/// A compared run whose run.json does not say `complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialRun {
    /// The run's id (or directory name).
    pub name: String,
    pub dir: PathBuf,
    /// run.json's `state`: `running` (killed, or still being written), `interrupted`, `failed`.
    pub state: String,
}

impl PartialRun {
    /// The partial runs among `runs`, each once.
    pub fn of<'a>(runs: impl IntoIterator<Item = &'a LoadedRun>) -> Vec<PartialRun> {
        let mut out: Vec<PartialRun> = Vec::new();
        for r in runs {
            if let Some(state) = r.partial_state() {
                let p = PartialRun {
                    name: r.name(),
                    dir: r.dir.clone(),
                    state: state.to_string(),
                };
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// What the state means and how to finish the run.
    pub fn message(&self) -> String {
        let what = match self.state.as_str() {
            "running" => "was killed or is still running".to_string(),
            s => format!("ended {s}"),
        };
        format!(
            "run {} is partial (run.json state `{}`: it {what}): not every case was measured; finish it with `tagbench run --resume {}`",
            self.name,
            self.state,
            self.dir.display()
        )
    }
}

impl Comparison {
    /// Measured in the baseline, not in the candidate (skipped, not run, or lost when the run
    /// was cut short); a failure in the candidate is `failed` instead.
    pub fn lacks_candidate(&self) -> bool {
        self.verdict == Verdict::Missing && self.baseline.median.is_some() && self.candidate.median.is_none()
    }
}

impl CompareReport {
    /// The comparisons whose candidate lacks what the baseline measured.
    pub fn lacking(&self) -> Vec<&Comparison> {
        self.comparisons.iter().filter(|c| c.lacks_candidate()).collect()
    }

    /// What the comparison concludes for the exit code (see the module doc). The worst rule
    /// that applies decides.
    pub fn outcome(&self) -> Outcome {
        let mut o = Outcome::Complete;
        if !self.lacking().is_empty() && !self.options.allow_missing {
            o = o.worst(Outcome::Missing);
        }
        if self.count(Verdict::Failed) > 0 {
            o = o.worst(Outcome::Failed);
        }
        if self.count(Verdict::Regression) > 0 {
            o = o.worst(Outcome::Regression);
        }
        if self.matched() == 0 && o < Outcome::Failed {
            // Nothing measured on both sides and nothing failed: the runs cannot answer (two
            // runs of different suites, a candidate that measured nothing).
            o = Outcome::Error;
        }
        if !self.partial_runs.is_empty() && !self.options.allow_partial {
            o = o.worst(Outcome::Incomplete);
        }
        o
    }

    /// Why the gate is closed, one line per rule that closes it, most basic first: partial runs,
    /// then what the candidate lacks (each listed), then regressions and failures in counts.
    /// Empty when it is open.
    pub fn gate_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.options.allow_partial {
            for p in &self.partial_runs {
                out.push(format!(
                    "{} (or pass --allow-partial to compare what it has)",
                    p.message()
                ));
            }
        }
        let lacking = self.lacking();
        if !lacking.is_empty() && !self.options.allow_missing {
            out.push(format!(
                "the candidate lacks {} of the {} metrics the baseline measured (pass --allow-missing to accept):",
                lacking.len(),
                self.comparisons
                    .iter()
                    .filter(|c| c.baseline.median.is_some())
                    .count()
            ));
            for c in lacking.iter().take(LISTED) {
                out.push(format!("  missing: {}", missing_text(c)));
            }
            if lacking.len() > LISTED {
                out.push(format!(
                    "  and {} more missing (every one is listed first among the comparisons)",
                    lacking.len() - LISTED
                ));
            }
        }
        let (reg, failed) = (self.count(Verdict::Regression), self.count(Verdict::Failed));
        if reg + failed > 0 {
            out.push(format!(
                "{reg} regression(s) and {failed} failed case metric(s) in the candidate"
            ));
        }
        if self.matched() == 0 {
            out.push("nothing matched with measurements on both sides".into());
        }
        out
    }

    /// The gate in words for the top of a table: `exit N (meaning)` and why.
    pub fn gate_block(&self) -> String {
        let o = self.outcome();
        let mut s = format!("gate: exit {} ({})\n", o.code(), o.meaning());
        if o == Outcome::Complete {
            return s;
        }
        for line in self.gate_lines() {
            s.push_str(&format!("  {line}\n"));
        }
        s
    }
}

/// `gemm/size=256 latency on cpu (candidate b): not measured in the candidate`.
pub fn missing_text(c: &Comparison) -> String {
    let gpu = if c.gpu.is_empty() {
        String::new()
    } else {
        format!(" on {}", c.gpu)
    };
    let ctx = if c.context.is_empty() {
        String::new()
    } else {
        format!(" [{}]", c.context)
    };
    format!(
        "{}/{} {}{gpu}{ctx} (candidate {}): {}",
        c.workload, c.case, c.metric, c.candidate.label, c.reason
    )
}

/// Puts the comparisons whose candidate lacks what the baseline measured first (they are the
/// first thing a reader must see); the others keep their order.
pub fn lacking_first(comparisons: &mut [Comparison]) {
    comparisons.sort_by_key(|c| !c.lacks_candidate());
}

/// What runs shown without a comparison conclude (`run` with one target, `report RUN`): a
/// partial run cannot answer (2, unless `allow_partial`), nor can a run with no row at all or
/// one whose every case failed (nothing was measured); a failed case beside measured ones
/// closes the gate (1). Skipped cases do not. Returns the outcome and why, one line per rule.
pub fn runs_outcome(runs: &[LoadedRun], allow_partial: bool) -> (Outcome, Vec<String>) {
    let mut o = Outcome::Complete;
    let mut why = Vec::new();
    if !allow_partial {
        for p in PartialRun::of(runs) {
            o = o.worst(Outcome::Incomplete);
            why.push(format!("{} (or pass --allow-partial)", p.message()));
        }
    }
    for r in runs {
        if r.measurements.is_empty() {
            o = o.worst(Outcome::Incomplete);
            why.push(format!(
                "run {}: results.csv has no rows: nothing was measured",
                r.name()
            ));
        }
        let count = |st: crate::results::Status| r.measurements.iter().filter(|m| m.row.status == st).count();
        let (ok, failed) = (
            count(crate::results::Status::Ok),
            count(crate::results::Status::Failed),
        );
        if failed > 0 && ok == 0 {
            o = o.worst(Outcome::Error);
            why.push(format!(
                "run {}: every case failed ({failed} failed row(s)): nothing was measured",
                r.name()
            ));
        } else if failed > 0 {
            o = o.worst(Outcome::Failed);
            why.push(format!("run {}: {failed} failed row(s)", r.name()));
        }
    }
    (o, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{CompareOptions, Side};

    /// A comparison with `verdict`; `measured`: whether each side has a median.
    fn cmp(case: usize, verdict: Verdict, measured: (bool, bool)) -> Comparison {
        let side = |label: &str, m: bool| Side {
            label: label.into(),
            median: m.then_some(1.0),
            ..Default::default()
        };
        Comparison {
            workload: "gemm".into(),
            case: format!("size={case}"),
            metric: "latency".into(),
            unit: "ms".into(),
            better: "lower".into(),
            gpu: "cpu".into(),
            context: String::new(),
            baseline: side("a", measured.0),
            candidate: side("b", measured.1),
            judgement: Default::default(),
            p_adj: None,
            noise: 0.03,
            verdict,
            reason: "not measured in the candidate".into(),
        }
    }

    fn report(comparisons: Vec<Comparison>, partial: bool, opts: CompareOptions) -> CompareReport {
        let mut r = CompareReport {
            mode: "runs".into(),
            baseline: "a".into(),
            options: opts,
            partial_runs: Vec::new(),
            comparisons,
        };
        if partial {
            r.partial_runs.push(PartialRun {
                name: "b".into(),
                dir: "results/b".into(),
                state: "interrupted".into(),
            });
        }
        r
    }

    #[test]
    fn the_gate_fails_closed_and_each_flag_relaxes_one_rule() {
        let same = || cmp(1, Verdict::Same, (true, true));
        let lacking = || cmp(2, Verdict::Missing, (true, false));
        let new_in_candidate = || cmp(3, Verdict::Missing, (false, true));
        let o = |v: Vec<Comparison>, partial, opts| report(v, partial, opts).outcome();
        let strict = CompareOptions::default();
        let allow_missing = CompareOptions {
            allow_missing: true,
            ..Default::default()
        };
        let allow_partial = CompareOptions {
            allow_partial: true,
            ..Default::default()
        };
        assert_eq!(
            o(vec![same(), new_in_candidate()], false, strict.clone()),
            Outcome::Complete
        );
        assert_eq!(
            o(vec![same(), lacking()], false, strict.clone()),
            Outcome::Missing
        );
        assert_eq!(
            o(vec![same(), lacking()], false, allow_missing.clone()),
            Outcome::Complete
        );
        assert_eq!(o(vec![same()], true, strict.clone()), Outcome::Incomplete);
        assert_eq!(o(vec![same()], true, allow_partial.clone()), Outcome::Complete);
        assert_eq!(o(vec![same(), lacking()], true, allow_partial), Outcome::Missing);
        assert_eq!(
            o(
                vec![same(), cmp(4, Verdict::Regression, (true, true))],
                false,
                allow_missing
            ),
            Outcome::Regression
        );
        // Nothing on both sides: no answer, unless a failure is one.
        assert_eq!(o(vec![lacking()], false, strict.clone()), Outcome::Error);
        assert_eq!(o(vec![lacking()], true, strict.clone()), Outcome::Incomplete);
        assert_eq!(
            o(vec![cmp(5, Verdict::Failed, (true, false))], false, strict),
            Outcome::Failed
        );
    }

    #[test]
    fn lacking_ones_come_first_and_are_named_up_to_a_limit() {
        let mut v: Vec<Comparison> = (0..30)
            .map(|i| {
                if i % 2 == 0 {
                    cmp(i, Verdict::Same, (true, true))
                } else {
                    cmp(i, Verdict::Missing, (true, false))
                }
            })
            .collect();
        lacking_first(&mut v);
        assert!(v[..15].iter().all(Comparison::lacks_candidate));
        assert_eq!(v[15].case, "size=0", "the others keep their order");
        let r = report(v, true, CompareOptions::default());
        let lines = r.gate_lines();
        assert!(lines[0].starts_with("run b is partial (run.json state `interrupted`: it ended interrupted)"));
        assert!(lines[0]
            .ends_with("`tagbench run --resume results/b` (or pass --allow-partial to compare what it has)"));
        assert_eq!(
            lines[1],
            "the candidate lacks 15 of the 30 metrics the baseline measured (pass --allow-missing to accept):"
        );
        assert_eq!(
            lines[2],
            "  missing: gemm/size=1 latency on cpu (candidate b): not measured in the candidate"
        );
        assert_eq!(lines.len(), 2 + 15);
        let many: Vec<Comparison> = (0..25).map(|i| cmp(i, Verdict::Missing, (true, false))).collect();
        let lines = report(many, false, CompareOptions::default()).gate_lines();
        assert_eq!(
            lines[1 + LISTED],
            "  and 5 more missing (every one is listed first among the comparisons)"
        );
        assert_eq!(
            lines.last().unwrap(),
            "nothing matched with measurements on both sides"
        );
        let failed = vec![
            cmp(1, Verdict::Regression, (true, true)),
            cmp(2, Verdict::Failed, (true, false)),
        ];
        let lines = report(failed, false, CompareOptions::default()).gate_lines();
        assert_eq!(
            lines,
            ["1 regression(s) and 1 failed case metric(s) in the candidate"]
        );
        let block = report(
            vec![cmp(1, Verdict::Same, (true, true))],
            false,
            Default::default(),
        )
        .gate_block();
        assert_eq!(block, "gate: exit 0 (complete, no regression)\n");
    }
}
