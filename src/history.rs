//! `tagbench history`: a series of runs of one suite (nightly results), one point per run and
//! metric (its median), change points by E-divisive means with a t-test on the logarithms (the
//! ratio scale: a time and its rate get the same verdict), and whether the newest segment is a
//! regression.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::HistoryArgs;
use crate::options::noise_thresholds;
use crate::outcome::Outcome;
use crate::render::escape::md_escape;
use crate::render::num::{fmt_num, pct};
use crate::render::table::aligned;
use crate::render::Format;
use crate::results::LoadedRun;
use crate::stats::{change_points_log, EDivisiveSettings};
use crate::{errln, out};

/// A change point in a series, named by the run where the new level starts.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesChange {
    pub run_id: String,
    pub index: usize,
    /// Geometric mean of the segment before the change (the test runs on logs).
    pub mean_before: f64,
    /// Geometric mean of the segment from the change on.
    pub mean_after: f64,
    /// after / before − 1.
    pub rel_change: f64,
    pub p: f64,
    /// Whether the change is in the metric's bad direction.
    pub worse: bool,
}

/// One metric's series and what E-divisive found in it.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub target: String,
    pub workload: String,
    pub case: String,
    pub metric: String,
    pub unit: String,
    pub better: String,
    pub gpu_index: Option<usize>,
    /// (run id, median) in run order.
    pub points: Vec<(String, f64)>,
    pub changes: Vec<SeriesChange>,
    /// `regression` when the newest segment is worse than the one before beyond the noise
    /// threshold, `improvement` when better, `stable` without change points, `too short` when
    /// there are fewer than two minimum segments of points.
    pub status: String,
}

/// All series of a results directory.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub suite: String,
    pub runs: Vec<String>,
    pub series: Vec<Series>,
}

impl History {
    pub fn regressions(&self) -> usize {
        self.series.iter().filter(|s| s.status == "regression").count()
    }
}

/// Run directories under `dir` (those with a results.csv), oldest first by run.json's
/// `started_at` (the directory name when run.json is missing).
pub fn load_runs(dir: &Path, suite: Option<&str>) -> Result<(String, Vec<LoadedRun>)> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?;
    let mut runs = Vec::new();
    for e in entries {
        let path: PathBuf = e?.path();
        if path.join("results.csv").is_file() {
            runs.push(LoadedRun::load(&path)?);
        }
    }
    if runs.is_empty() {
        bail!("no run directories (with a results.csv) in {}", dir.display());
    }
    let order_key = |r: &LoadedRun| {
        let started = r.meta.as_ref().map(|m| m.started_at.clone()).unwrap_or_default();
        // RFC 3339 strings with the same offset sort as times; parse to be safe across offsets.
        let t = chrono::DateTime::parse_from_rfc3339(&started)
            .map(|t| t.timestamp_millis())
            .unwrap_or(i64::MIN);
        (t, r.name())
    };
    runs.sort_by_key(order_key);
    let suite_of = |r: &LoadedRun| -> String {
        r.meta
            .as_ref()
            .map(|m| m.suite.clone())
            .or_else(|| r.measurements.first().map(|m| m.row.suite.clone()))
            .unwrap_or_default()
    };
    let suite = match suite {
        Some(s) => s.to_string(),
        None => runs.last().map(suite_of).unwrap_or_default(),
    };
    let total = runs.len();
    runs.retain(|r| suite_of(r) == suite);
    if runs.is_empty() {
        bail!(
            "none of the {total} runs in {} is of suite `{suite}`",
            dir.display()
        );
    }
    if runs.len() < total {
        errln!(
            "note: {} of {total} runs in {} are of other suites than `{suite}` and are left out",
            total - runs.len(),
            dir.display()
        );
    }
    Ok((suite, runs))
}

/// Builds the series and finds their change points.
pub fn analyse(
    suite: &str,
    runs: &[LoadedRun],
    settings: &EDivisiveSettings,
    noise_for: &BTreeMap<String, f64>,
) -> History {
    type Key = (String, String, String, String, Option<usize>);
    let mut series: BTreeMap<Key, Series> = BTreeMap::new();
    for run in runs {
        let id = run.name();
        for m in run.measurements.iter().filter(|m| m.is_metric()) {
            let Some(median) = m.row.median.filter(|v| v.is_finite()) else {
                continue;
            };
            let r = &m.row;
            let s = series
                .entry((
                    r.target.clone(),
                    r.workload.clone(),
                    r.case.clone(),
                    r.metric.clone(),
                    r.gpu_index,
                ))
                .or_insert_with(|| Series {
                    target: r.target.clone(),
                    workload: r.workload.clone(),
                    case: r.case.clone(),
                    metric: r.metric.clone(),
                    unit: r.unit.clone(),
                    better: r.better.clone(),
                    gpu_index: r.gpu_index,
                    points: Vec::new(),
                    changes: Vec::new(),
                    status: String::new(),
                });
            s.points.push((id.clone(), median));
        }
    }
    let mut out: Vec<Series> = series.into_values().collect();
    for s in &mut out {
        let st = EDivisiveSettings {
            min_magnitude: noise_for
                .get(&s.metric)
                .copied()
                .unwrap_or(settings.min_magnitude),
            ..*settings
        };
        let values: Vec<f64> = s.points.iter().map(|(_, v)| *v).collect();
        let worse_if_up = s.better != "higher";
        s.changes = change_points_log(&values, &st)
            .into_iter()
            .map(|c| {
                let rel = c.rel_change();
                SeriesChange {
                    run_id: s.points[c.index].0.clone(),
                    index: c.index,
                    mean_before: c.mean_before,
                    mean_after: c.mean_after,
                    rel_change: rel,
                    p: c.p,
                    worse: (rel > 0.0) == worse_if_up,
                }
            })
            .collect();
        s.status = if values.len() < 2 * st.min_segment.max(1) {
            "too short".into()
        } else {
            match s.changes.last() {
                None => "stable".into(),
                Some(c) if c.worse => "regression".into(),
                Some(_) => "improvement".into(),
            }
        };
    }
    History {
        suite: suite.to_string(),
        runs: runs.iter().map(LoadedRun::name).collect(),
        series: out,
    }
}

fn changes_text(s: &Series) -> String {
    if s.changes.is_empty() {
        return "-".into();
    }
    s.changes
        .iter()
        .map(|c| format!("{} {} (p={:.0e})", c.run_id, pct(1.0 + c.rel_change), c.p))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn render(h: &History, format: Format) -> Result<String> {
    let header = [
        "target",
        "workload",
        "case",
        "metric",
        "runs",
        "newest",
        "unit",
        "change points",
        "status",
    ];
    let rows: Vec<Vec<String>> = h
        .series
        .iter()
        .map(|s| {
            vec![
                s.target.clone(),
                s.workload.clone(),
                s.case.clone(),
                s.metric.clone(),
                s.points.len().to_string(),
                s.points.last().map(|(_, v)| fmt_num(*v)).unwrap_or_default(),
                s.unit.clone(),
                changes_text(s),
                s.status.clone(),
            ]
        })
        .collect();
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(h)? + "\n",
        Format::Junit => bail!("history has no junit output; use table, markdown or json"),
        Format::Markdown => {
            let mut o = format!(
                "**Suite:** {} — {} runs, {} series, {} with a regression in the newest segment\n\n",
                md_escape(&h.suite),
                h.runs.len(),
                h.series.len(),
                h.regressions()
            );
            o.push_str(&format!(
                "| {} |\n|{}\n",
                header.join(" | "),
                "---|".repeat(header.len())
            ));
            for r in &rows {
                let cells: Vec<String> = r.iter().map(|c| md_escape(c)).collect();
                o.push_str(&format!("| {} |\n", cells.join(" | ")));
            }
            o
        }
        Format::Table => {
            let mut all = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
            all.extend(rows);
            let mut o = format!(
                "suite {}: {} runs ({} … {})\n",
                h.suite,
                h.runs.len(),
                h.runs.first().cloned().unwrap_or_default(),
                h.runs.last().cloned().unwrap_or_default()
            );
            o.push_str(&aligned(&all, |_| false));
            o
        }
    })
}

/// `tagbench history`.
pub fn cmd_history(args: HistoryArgs) -> Result<Outcome> {
    let (noise, noise_for) = noise_thresholds(args.noise, &args.noise_for)?;
    let (suite, runs) = load_runs(&args.results_dir, args.suite.as_deref())?;
    let settings = EDivisiveSettings {
        window: args.window.max(1),
        max_p: args.max_p,
        min_segment: args.min_segment.max(1),
        min_magnitude: noise,
    };
    let h = analyse(&suite, &runs, &settings, &noise_for);
    if h.series.is_empty() {
        bail!("no measured metric in the {} runs of suite `{suite}`", runs.len());
    }
    let text = render(&h, args.format)?;
    match &args.output {
        Some(p) => std::fs::write(p, &text).with_context(|| format!("failed to write {}", p.display()))?,
        None => out!("{text}")?,
    }
    let reg = h.regressions();
    errln!(
        "{} runs, {} series: {reg} regression(s) in the newest segment, {} with change points",
        h.runs.len(),
        h.series.len(),
        h.series.iter().filter(|s| !s.changes.is_empty()).count()
    );
    Ok(if reg > 0 {
        Outcome::Regression
    } else {
        Outcome::Complete
    })
}
