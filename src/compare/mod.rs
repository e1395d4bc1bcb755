//! A/B comparison of runs: rows and samples matched across two runs (or along a column such as
//! `image`, `gpu_name` or `engine` within runs), a rank test, a bootstrap CI of the ratio of
//! medians, Holm's correction across the family, and a verdict per metric.

pub mod format;
pub mod judge;
pub mod matching;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::error::{EXIT_ERROR, EXIT_OK, EXIT_REGRESSION};
use crate::results::{read_results, read_samples, ResultRow, RunDir, RunMeta, Status};

pub use format::{render, Format};
pub use judge::{Judgement, Verdict};
pub use matching::{compare_along, compare_runs};

/// The statistical settings of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareOptions {
    /// Family-wise significance level (Holm-corrected).
    pub alpha: f64,
    /// Relative change below which a difference is noise (0.03 = 3%).
    pub noise: f64,
    /// Per-metric overrides of `noise`, by metric name.
    pub noise_for: BTreeMap<String, f64>,
    /// Bootstrap resamples for the CI of the ratio.
    pub bootstrap: usize,
    /// Seed of the bootstrap (each comparison derives its own stream from it).
    pub seed: u64,
    /// Fewer samples than this on either side gives `noisy`.
    pub min_samples: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            alpha: 0.01,
            noise: 0.03,
            noise_for: BTreeMap::new(),
            bootstrap: 2000,
            seed: 0,
            min_samples: 5,
        }
    }
}

impl CompareOptions {
    pub fn noise_of(&self, metric: &str) -> f64 {
        self.noise_for.get(metric).copied().unwrap_or(self.noise)
    }
}

/// One (target, case, metric) of a run with its samples, pooled over the run's rounds.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The row, its summary recomputed from the pooled samples when there were several rounds.
    pub row: ResultRow,
    /// Every sample, round after round.
    pub samples: Vec<f64>,
    /// The samples of each round (worker process), in round order.
    pub rounds: Vec<Vec<f64>>,
}

impl Measurement {
    /// A row with a metric and a summary (not a status row).
    pub fn is_metric(&self) -> bool {
        self.row.status == Status::Ok && !self.row.metric.is_empty()
    }
}

/// (target, workload, case, metric, gpu index): what one measurement is, across rounds.
type SampleKey = (String, String, String, String, Option<usize>);

/// A run directory read into memory.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub dir: PathBuf,
    pub meta: Option<RunMeta>,
    pub measurements: Vec<Measurement>,
}

impl LoadedRun {
    /// Reads results.csv, samples.csv and (if present) run.json of a run directory or of the
    /// directory holding a results.csv.
    pub fn load(path: &Path) -> Result<Self> {
        let run = RunDir::from_arg(path);
        if !run.results_csv().exists() {
            bail!("no results.csv in {}", run.root.display());
        }
        let rows = read_results(&run)?;
        let samples = read_samples(&run)?;
        let meta = run.read_meta().ok();
        let key_of = |r: &ResultRow| -> SampleKey {
            (
                r.target.clone(),
                r.workload.clone(),
                r.case.clone(),
                r.metric.clone(),
                r.gpu_index,
            )
        };
        let mut by_key: BTreeMap<(SampleKey, usize), Vec<(usize, f64)>> = BTreeMap::new();
        for s in samples {
            let round = s.round.unwrap_or(0);
            by_key
                .entry(((s.target, s.workload, s.case, s.metric, s.gpu_index), round))
                .or_default()
                .push((s.sample, s.value));
        }
        // One measurement per key: the rows of its rounds pooled, in the order keys first appear.
        let mut order: Vec<SampleKey> = Vec::new();
        let mut grouped: BTreeMap<SampleKey, Vec<ResultRow>> = BTreeMap::new();
        for row in rows {
            let k = key_of(&row);
            if !grouped.contains_key(&k) {
                order.push(k.clone());
            }
            grouped.entry(k).or_default().push(row);
        }
        let measurements = order
            .into_iter()
            .map(|k| {
                let mut rows = grouped.remove(&k).unwrap_or_default();
                rows.sort_by_key(|r| r.round.unwrap_or(0));
                let rounds: Vec<Vec<f64>> = rows
                    .iter()
                    .filter_map(|r| {
                        let mut v = by_key.remove(&(k.clone(), r.round.unwrap_or(0)))?;
                        v.sort_by_key(|&(i, _)| i);
                        Some(v.into_iter().map(|(_, x)| x).collect())
                    })
                    .collect();
                let samples: Vec<f64> = rounds.iter().flatten().copied().collect();
                let mut row = rows.swap_remove(0);
                if rounds.len() > 1 {
                    pool_summary(&mut row, &samples);
                }
                Measurement { row, samples, rounds }
            })
            .collect();
        Ok(LoadedRun {
            dir: run.root,
            meta,
            measurements,
        })
    }

    /// The run's name for tables: its id from run.json, else the directory name.
    pub fn name(&self) -> String {
        self.meta
            .as_ref()
            .map(|m| m.run_id.clone())
            .filter(|s| !s.is_empty())
            .or_else(|| self.dir.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| self.dir.display().to_string())
    }
}

/// Replaces a row's summary by that of the pooled samples of all its rounds.
fn pool_summary(row: &mut ResultRow, samples: &[f64]) {
    if let Some(s) = crate::stats::summarize(samples) {
        row.n = Some(s.n);
        row.median = Some(s.median);
        row.mean = Some(s.mean);
        row.stddev = Some(s.stddev);
        row.min = Some(s.min);
        row.max = Some(s.max);
        row.p05 = Some(s.p05);
        row.p95 = Some(s.p95);
        row.ci_low = Some(s.ci_low);
        row.ci_high = Some(s.ci_high);
        row.outliers = Some(s.outliers);
        row.round = None;
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    /// The run or the column value this side stands for.
    pub label: String,
    pub median: Option<f64>,
    pub n: usize,
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

/// Everything a comparison found.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// `runs` (baseline run against candidate run) or the column compared along.
    pub mode: String,
    pub baseline: String,
    pub options: CompareOptions,
    pub comparisons: Vec<Comparison>,
}

impl CompareReport {
    pub fn count(&self, v: Verdict) -> usize {
        self.comparisons.iter().filter(|c| c.verdict == v).count()
    }

    /// Whether something got worse: a regression, or a case that was measured in the baseline
    /// and failed in the candidate (a crash is the worst slowdown). Missing or skipped cases
    /// are shown but do not count: they also appear when two GPUs support different dtypes.
    pub fn has_regression(&self) -> bool {
        self.count(Verdict::Regression) + self.count(Verdict::Failed) > 0
    }

    /// Pairs with both sides measured.
    pub fn matched(&self) -> usize {
        self.comparisons
            .iter()
            .filter(|c| c.baseline.median.is_some() && c.candidate.median.is_some())
            .count()
    }

    pub fn exit_code(&self) -> i32 {
        if self.matched() == 0 && !self.has_regression() {
            EXIT_ERROR
        } else if self.has_regression() {
            EXIT_REGRESSION
        } else {
            EXIT_OK
        }
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

/// Parses `METRIC=FRACTION`.
pub fn parse_noise_for(s: &str) -> Result<(String, f64)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("bad --noise-for `{s}`: expected METRIC=FRACTION"))?;
    let f: f64 = v
        .trim()
        .parse()
        .with_context(|| format!("bad --noise-for `{s}`: `{v}` is not a number"))?;
    if !(0.0..1.0).contains(&f) {
        bail!("bad --noise-for `{s}`: the fraction must be in [0, 1)");
    }
    Ok((k.trim().to_string(), f))
}

/// `tagbench compare`.
pub fn cmd_compare(args: crate::cli::CompareArgs) -> Result<i32> {
    let opts = args.stats.options()?;
    let (report, runs) = match &args.along {
        Some(column) => {
            let Some(base) = &args.baseline else {
                bail!("--along {column} needs --baseline VALUE (the {column} to compare against)");
            };
            let runs = args
                .runs
                .iter()
                .map(|p| LoadedRun::load(p))
                .collect::<Result<Vec<_>>>()?;
            let report = compare_along(&runs, column, base, &opts)?;
            (report, runs)
        }
        None => {
            if args.runs.len() != 2 {
                bail!(
                    "compare needs BASELINE and CANDIDATE (two runs), got {}; to compare within runs use --along COLUMN --baseline VALUE",
                    args.runs.len()
                );
            }
            if args.baseline.is_some() {
                bail!("--baseline VALUE goes with --along COLUMN; without it the first run is the baseline");
            }
            let base = LoadedRun::load(&args.runs[0])?;
            let cand = LoadedRun::load(&args.runs[1])?;
            let report = compare_runs(&base, &cand, &opts)?;
            (report, vec![base, cand])
        }
    };
    if report.comparisons.is_empty() {
        bail!("nothing matched: no (workload, case, metric, gpu) appears on both sides");
    }
    let mut text = render(&report, args.format)?;
    if args.format == Format::Table {
        // What differs between the compared targets, a few lines before the table.
        let changes = crate::report::changes::text(&crate::report::changes::changes_of(&runs, &report));
        if !changes.is_empty() {
            text = format!("{changes}\n{text}");
        }
    }
    match &args.output {
        Some(p) => std::fs::write(p, &text).with_context(|| format!("failed to write {}", p.display()))?,
        None => print!("{text}"),
    }
    eprintln!("{}", report.summary_line());
    if report.matched() == 0 {
        eprintln!("error: nothing matched with measurements on both sides");
    }
    Ok(report.exit_code())
}

impl crate::cli::StatsArgs {
    /// The validated options.
    pub fn options(&self) -> Result<CompareOptions> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            bail!("bad --alpha {}: must be in (0, 1)", self.alpha);
        }
        if !(0.0..1.0).contains(&self.noise) {
            bail!("bad --noise {}: must be in [0, 1)", self.noise);
        }
        if self.bootstrap < 100 {
            bail!("bad --bootstrap {}: use at least 100 resamples", self.bootstrap);
        }
        Ok(CompareOptions {
            alpha: self.alpha,
            noise: self.noise,
            noise_for: self
                .noise_for
                .iter()
                .map(|s| parse_noise_for(s))
                .collect::<Result<_>>()?,
            bootstrap: self.bootstrap,
            seed: self.seed,
            ..Default::default()
        })
    }
}
