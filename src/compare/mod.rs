//! A/B comparison of runs: rows and samples matched across two runs (or along a column such as
//! `image`, `gpu_name` or `engine` within runs), a rank test, a bootstrap CI of the ratio of
//! medians, Holm's correction across the family, a verdict per metric, and the gate ([`gate`])
//! that turns them and the runs' states into the command's outcome.

pub mod changes;
pub mod format;
pub mod gate;
pub mod judge;
pub mod matching;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::error::NothingMatched;
pub use crate::options::CompareOptions;
use crate::outcome::Outcome;
pub use crate::results::{LoadedRun, Measurement};
use crate::{errln, out};

pub use crate::render::Format;
pub use format::render;
pub use gate::PartialRun;
pub use judge::{Judgement, Verdict};
pub use matching::{compare_along, compare_pooled, compare_runs};

/// One side of a comparison.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    /// The run or the column value this side stands for.
    pub label: String,
    /// The value shown for this side and the one the change and CI are computed from: with
    /// rounds, exp(20%-trimmed mean of the log round medians: a wild round stays out);
    /// otherwise the pooled sample median. `ratio` = candidate.estimate / baseline.estimate.
    pub estimate: Option<f64>,
    /// The pooled median of every sample of every round (a summary only; not what is judged).
    pub median: Option<f64>,
    pub n: usize,
    /// Rounds (worker processes) measured.
    pub rounds: usize,
    /// Outlier rounds flagged by the modified z-score rule (counted and marked; the trimming keeps
    /// them out of the estimate).
    pub outlier_rounds: usize,
    pub status: String,
    pub reason: String,
}

/// One matched (workload, case, metric, gpu) and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub workload: String,
    pub case: String,
    pub metric: String,
    pub unit: String,
    pub better: String,
    /// GPU name and index, or the device when there is no GPU.
    pub gpu: String,
    /// Other columns that tell matched rows apart (target, engine, image), `key=value` joined.
    pub context: String,
    pub baseline: Side,
    pub candidate: Side,
    #[serde(flatten)]
    pub judgement: Judgement,
    /// Holm-adjusted p-value.
    pub p_adj: Option<f64>,
    /// The noise threshold used for this metric.
    pub noise: f64,
    pub verdict: Verdict,
    /// Why this verdict, in words.
    pub reason: String,
}

impl Comparison {
    /// `workload/case metric`, or `workload/case` for a case without a metric (one that failed
    /// everywhere).
    pub fn what(&self) -> String {
        if self.metric.is_empty() {
            format!("{}/{}", self.workload, self.case)
        } else {
            format!("{}/{} {}", self.workload, self.case, self.metric)
        }
    }
}

/// Everything a comparison found.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// `runs` (baseline run against candidate run) or the column compared along.
    pub mode: String,
    pub baseline: String,
    pub options: CompareOptions,
    /// Compared runs whose run.json does not say `complete` (see [`gate`]).
    pub partial_runs: Vec<PartialRun>,
    /// Every matched key; those whose candidate lacks what the baseline measured come first.
    pub comparisons: Vec<Comparison>,
}

impl CompareReport {
    /// A comparison of `runs`: the comparisons (Holm-corrected and with verdicts), those whose
    /// candidate lacks what the baseline measured put first, and the runs that are partial.
    pub fn new<'a>(
        mode: String,
        baseline: String,
        options: &CompareOptions,
        mut comparisons: Vec<Comparison>,
        runs: impl IntoIterator<Item = &'a LoadedRun>,
    ) -> Self {
        gate::lacking_first(&mut comparisons);
        CompareReport {
            mode,
            baseline,
            options: options.clone(),
            partial_runs: PartialRun::of(runs),
            comparisons,
        }
    }

    /// The distinct candidate labels of the comparison, sorted.
    pub fn candidate_labels(&self) -> Vec<&str> {
        let mut c: Vec<&str> = self
            .comparisons
            .iter()
            .map(|c| c.candidate.label.as_str())
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    pub fn count(&self, v: Verdict) -> usize {
        self.comparisons.iter().filter(|c| c.verdict == v).count()
    }

    /// Pairs with both sides measured.
    pub fn matched(&self) -> usize {
        self.comparisons
            .iter()
            .filter(|c| c.baseline.median.is_some() && c.candidate.median.is_some())
            .count()
    }

    /// An error when no key appears on both sides at all (`compare` and `report` alike).
    pub fn ensure_matched(&self) -> Result<()> {
        if self.comparisons.is_empty() {
            return Err(NothingMatched.into());
        }
        Ok(())
    }

    /// One line: counts per verdict and the settings.
    pub fn summary_line(&self) -> String {
        let counts: Vec<String> = Verdict::ALL
            .iter()
            .map(|v| format!("{} {}", self.count(*v), v.as_str()))
            .collect();
        let tested = self
            .comparisons
            .iter()
            .filter(|c| c.judgement.p.is_some())
            .count();
        format!(
            "{} (α = {} Holm-corrected over {} tests, noise threshold ±{:.1}%, baseline {})",
            counts.join(", "),
            self.options.alpha,
            tested,
            self.options.noise * 100.0,
            self.baseline
        )
    }
}

/// Run paths from `--baseline` values: each a path, or a glob with `*` and `?` in its last
/// component (sorted); a pattern that matches nothing is an error.
pub fn expand_runs(values: &[String]) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for v in values {
        if !v.contains(['*', '?']) {
            out.push(std::path::PathBuf::from(v));
            continue;
        }
        let path = std::path::Path::new(v);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let pattern = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut hits: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("failed to read {} for --baseline {v}", dir.display()))?
            .flatten()
            .filter(|e| wildcard_match(&pattern, &e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        if hits.is_empty() {
            bail!("--baseline {v} matches no run");
        }
        hits.sort();
        out.extend(hits);
    }
    Ok(out)
}

/// Whole-name match with `*` (any run of characters) and `?` (one character).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// `tagbench compare`.
pub fn cmd_compare(args: crate::cli::CompareArgs) -> Result<Outcome> {
    let opts = CompareOptions::from_args(&args.stats, &args.gate)?;
    let (report, runs) = match &args.along {
        Some(column) => {
            // `--baseline` takes several values; with `--along` the first is the column value and
            // any further ones (before no other RUN) are the runs.
            let Some((base, rest)) = args.baseline.split_first() else {
                bail!("--along {column} needs --baseline VALUE (the {column} to compare against)");
            };
            let paths: Vec<std::path::PathBuf> = match (rest, args.runs.is_empty()) {
                (r, true) => r.iter().map(std::path::PathBuf::from).collect(),
                ([], false) => args.runs.clone(),
                _ => bail!(
                    "--along {column} takes one --baseline VALUE, got {}",
                    args.baseline.len()
                ),
            };
            let runs = paths
                .iter()
                .map(|p| LoadedRun::load(p))
                .collect::<Result<Vec<_>>>()?;
            if runs.is_empty() {
                bail!("--along {column} needs one or more runs to compare within");
            }
            let report = compare_along(&runs, column, base, &opts)?;
            (report, runs)
        }
        None if !args.baseline.is_empty() => {
            // `--baseline R1 R2 CAND` reads the candidate as the last value when no run follows.
            let mut bases = args.baseline.clone();
            let cand = match args.runs.as_slice() {
                [c] => c.clone(),
                [] if bases.len() >= 2 => std::path::PathBuf::from(bases.pop().expect("two or more")),
                _ => bail!(
                    "with --baseline RUN... give exactly one CANDIDATE run, got {}",
                    args.runs.len()
                ),
            };
            let paths = expand_runs(&bases)?;
            let bases = paths
                .iter()
                .map(|p| LoadedRun::load(p))
                .collect::<Result<Vec<_>>>()?;
            let cand = LoadedRun::load(&cand)?;
            let report = compare_pooled(&bases, &cand, &opts)?;
            errln!(
                "baseline pooled from {} runs: between-run drift is not controlled; the CI is widened by the spread between those runs",
                bases.len()
            );
            let mut runs = bases;
            runs.push(cand);
            (report, runs)
        }
        None => {
            if args.runs.len() != 2 {
                bail!(
                    "compare needs BASELINE and CANDIDATE (two runs), got {}; to pool earlier runs use --baseline RUN... CANDIDATE; to compare within runs use --along COLUMN --baseline VALUE",
                    args.runs.len()
                );
            }
            let base = LoadedRun::load(&args.runs[0])?;
            let cand = LoadedRun::load(&args.runs[1])?;
            let report = compare_runs(&base, &cand, &opts)?;
            (report, vec![base, cand])
        }
    };
    report.ensure_matched()?;
    let mut text = render(&report, args.format)?;
    if args.format == Format::Table {
        // The gate first (why it is closed, what the candidate lacks), then what differs
        // between the compared targets, then the table.
        let changes = changes::text(&changes::changes_of(&runs, &report));
        if !changes.is_empty() {
            text = format!("{changes}\n{text}");
        }
        text = format!("{}\n{text}", report.gate_block());
    } else if args.format == Format::Markdown {
        text = format!("{}\n{text}", format::gate_markdown(&report));
    }
    match &args.output {
        Some(p) => std::fs::write(p, &text).with_context(|| format!("failed to write {}", p.display()))?,
        None => out!("{text}")?,
    }
    print_gate(&report);
    Ok(report.outcome())
}

/// The verdict counts and, when the gate is closed, why, on stderr (what a CI log shows
/// whatever the output format).
pub fn print_gate(report: &CompareReport) {
    errln!("{}", report.summary_line());
    let o = report.outcome();
    if o != Outcome::Complete {
        for line in report.gate_lines() {
            errln!("{line}");
        }
    }
    errln!("exit {}: {}", o.code(), o.meaning());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*-nightly", "20261124-nightly"));
        assert!(wildcard_match("n?ght*", "night-1"));
        assert!(!wildcard_match("*-nightly", "20261124-nightly.bak"));
        assert!(wildcard_match("*", ""));
    }
}
