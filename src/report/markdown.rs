//! `summary.md`: what a CI job summary or a PR comment shows: runs, verdicts, failures, plots.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{ReportData, Reporter};
use crate::render::escape::md_escape;
use crate::render::num::ci_pct;
use crate::render::num::fmt_num;
use crate::results::Status;

pub struct MarkdownSummary;

pub fn summary(data: &ReportData) -> String {
    let mut o = format!("# {}\n\n", md_escape(&data.title));
    for run in &data.runs {
        let ok = run.measurements.iter().filter(|m| m.is_metric()).count();
        let skipped = run
            .measurements
            .iter()
            .filter(|m| m.row.status == Status::Skipped)
            .count();
        let failed = run
            .measurements
            .iter()
            .filter(|m| m.row.status == Status::Failed)
            .count();
        let suite = run.meta.as_ref().map(|m| m.suite.clone()).unwrap_or_default();
        o.push_str(&format!(
            "- **{}** (suite {}): {ok} metrics, {skipped} skipped, {failed} failed\n",
            md_escape(&run.name()),
            md_escape(&suite)
        ));
    }
    if let Some(c) = &data.comparison {
        o.push_str("\n## Comparison\n\n");
        o.push_str(&crate::compare::format::markdown(c));
    } else {
        o.push_str("\n## Results\n\n| target | workload | case | metric | median | unit | ±CI |\n|---|---|---|---|---|---|---|\n");
        for run in &data.runs {
            for m in run.measurements.iter().filter(|m| m.is_metric()) {
                let r = &m.row;
                let ci = match (r.median, r.ci_low, r.ci_high) {
                    (Some(x), Some(l), Some(h)) => ci_pct(x, l, h).unwrap_or_default(),
                    _ => String::new(),
                };
                o.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    md_escape(&r.target),
                    md_escape(&r.workload),
                    md_escape(&r.case),
                    md_escape(&r.metric),
                    r.median.map(fmt_num).unwrap_or_default(),
                    md_escape(&r.unit),
                    ci
                ));
            }
        }
    }
    let problems: Vec<_> = data
        .runs
        .iter()
        .flat_map(|r| r.measurements.iter())
        .filter(|m| m.row.status != Status::Ok)
        .collect();
    if !problems.is_empty() {
        o.push_str("\n## Skipped and failed\n\n| target | workload | case | status | reason |\n|---|---|---|---|---|\n");
        for m in problems {
            let r = &m.row;
            o.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                md_escape(&r.target),
                md_escape(&r.workload),
                md_escape(&r.case),
                r.status.as_str(),
                md_escape(&r.reason)
            ));
        }
    }
    if !data.charts.is_empty() {
        o.push_str("\n## Plots\n\n");
        for c in &data.charts {
            o.push_str(&format!(
                "- [{}]({}.png) ([svg]({}.svg))\n",
                md_escape(&c.title),
                c.name,
                c.name
            ));
        }
    }
    o
}

impl Reporter for MarkdownSummary {
    fn name(&self) -> &'static str {
        "summary.md"
    }
    fn write(&self, data: &ReportData, out: &Path) -> Result<Vec<PathBuf>> {
        let path = out.join("summary.md");
        std::fs::write(&path, summary(data))
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(vec![path])
    }
}
