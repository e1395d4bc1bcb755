//! `summary.md`: what a CI job summary or a PR comment shows, in the report's order (verdict,
//! what differs, findings, the folded rest), within GitHub's size limit.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{html, verdict, ReportData, Reporter};
use crate::compare::format::{cells, header, verdict_mark};
use crate::compare::{changes, Comparison, Verdict};
use crate::render::escape::md_escape;
use crate::render::num::{ci_pct, fmt_num};
use crate::results::Status;

pub struct MarkdownSummary;

/// GitHub's limit on a job summary and on a PR comment is 65,536 characters; stay below it.
pub const MAX_CHARS: usize = 65_000;

/// The summary in the report's order: verdict, what differs, findings by workload, the folded
/// rest (same/noisy rows, or every result of a single run), problems, plots. Fits `MAX_CHARS`.
pub fn summary(data: &ReportData) -> String {
    summary_within(data, MAX_CHARS)
}

fn verdict_block(data: &ReportData) -> String {
    let s = verdict::of(data);
    let mark = match s.headline.class() {
        "bad" => "🔴",
        "good" => "🟢",
        _ => "⚪",
    };
    let mut o = format!(
        "## {mark} {}\n\nExit code **{}** ({}). {}\n",
        s.headline.text(),
        s.exit_code(),
        s.outcome.meaning(),
        md_escape(&s.detail)
    );
    if !s.gate.is_empty() {
        o.push('\n');
        for line in &s.gate {
            o.push_str(&format!("- {}\n", md_escape(line.trim_start())));
        }
    }
    for (title, list) in [("Worse", &s.findings), ("Better", &s.improvements)] {
        if list.is_empty() {
            continue;
        }
        o.push_str(&format!("\n**{title}:**\n\n"));
        for c in list.iter().take(20) {
            let what = verdict::finding_text(c);
            o.push_str(&format!(
                "- {} {} {} ({}): {} ([plot](ratios.png))\n",
                md_escape(&c.workload),
                md_escape(&c.case),
                md_escape(&c.metric),
                md_escape(&c.candidate.label),
                md_escape(&what)
            ));
        }
        if list.len() > 20 {
            o.push_str(&format!("- and {} more\n", list.len() - 20));
        }
    }
    for run in &data.runs {
        let count = |st: Status| run.measurements.iter().filter(|m| m.row.status == st).count();
        o.push_str(&format!(
            "\nRun **{}**: {} metrics, {} skipped, {} failed.",
            md_escape(&run.name()),
            run.measurements.iter().filter(|m| m.is_metric()).count(),
            count(Status::Skipped),
            count(Status::Failed)
        ));
    }
    o.push('\n');
    o
}

fn changes_block(all: &[changes::TargetChanges]) -> String {
    let mut o = String::from("\n## What differs\n");
    if all.is_empty() {
        o.push_str("\nNo run.json metadata for the compared targets.\n");
    }
    for tc in all {
        o.push_str(&format!(
            "\n**{}** → **{}**\n\n",
            md_escape(&tc.baseline),
            md_escape(&tc.candidate)
        ));
        if tc.changes.is_empty() {
            o.push_str("Same image and versions in run.json.\n");
            continue;
        }
        o.push_str("| component | setting | baseline | candidate |\n|---|---|---|---|\n");
        for c in &tc.changes {
            o.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                md_escape(c.group.title()),
                md_escape(&c.key),
                md_escape(changes::or_dash(&c.old)),
                md_escape(changes::or_dash(&c.new))
            ));
        }
    }
    o
}

fn table_head(along: bool) -> String {
    let h = header(along);
    format!("| {} |\n|{}\n", h.join(" | "), "---|".repeat(h.len()))
}

fn table_row(c: &Comparison, along: bool) -> String {
    let mut cs = cells(c, along);
    if let Some(last) = cs.last_mut() {
        *last = verdict_mark(c.verdict).to_string();
    }
    let cs: Vec<String> = cs.iter().map(|s| md_escape(s)).collect();
    format!("| {} |\n", cs.join(" | "))
}

/// The summary with at most `limit` characters.
pub fn summary_within(data: &ReportData, limit: usize) -> String {
    let mut head = format!("# {}\n\n", md_escape(&data.title));
    head.push_str(&verdict_block(data));
    let mut folded_open = String::new();
    let mut folded: Vec<String> = Vec::new();
    if let Some(c) = &data.comparison {
        head.push_str(&changes_block(&changes::changes_of(&data.runs, c)));
        let along = c.mode != "runs";
        head.push_str(&format!(
            "\n## Comparison by workload\n\n{}\n",
            md_escape(&c.summary_line())
        ));
        let mut quiet = 0;
        for (workload, rows) in html::by_workload(c) {
            let shown: Vec<_> = rows
                .iter()
                .filter(|(_, x)| !matches!(x.verdict, Verdict::Same | Verdict::Noisy))
                .collect();
            quiet += rows.len() - shown.len();
            if shown.is_empty() {
                head.push_str(&format!(
                    "\n**{}**: nothing changed beyond the noise.\n",
                    md_escape(&workload)
                ));
                continue;
            }
            head.push_str(&format!(
                "\n**{}**\n\n{}",
                md_escape(&workload),
                table_head(along)
            ));
            for (_, x) in shown {
                head.push_str(&table_row(x, along));
            }
        }
        if quiet > 0 {
            folded_open = format!(
                "\n<details><summary>{quiet} same or too noisy to tell</summary>\n\n{}",
                table_head(along)
            );
            folded = c
                .comparisons
                .iter()
                .filter(|x| matches!(x.verdict, Verdict::Same | Verdict::Noisy))
                .map(|x| table_row(x, along))
                .collect();
        }
    } else {
        folded_open = "\n<details open><summary>Results</summary>\n\n| target | workload | case | metric | median | unit | ±CI |\n|---|---|---|---|---|---|---|\n".into();
        for run in &data.runs {
            for m in run.measurements.iter().filter(|m| m.is_metric()) {
                let r = &m.row;
                let ci = match (r.median, r.ci_low, r.ci_high) {
                    (Some(x), Some(l), Some(h)) => ci_pct(x, l, h).unwrap_or_default(),
                    _ => String::new(),
                };
                folded.push(format!(
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
    let folded_close = if folded_open.is_empty() {
        ""
    } else {
        "\n</details>\n"
    };
    let mut tail = String::new();
    let problems: Vec<_> = data
        .runs
        .iter()
        .flat_map(|r| r.measurements.iter())
        .filter(|m| m.row.status != Status::Ok)
        .collect();
    if !problems.is_empty() {
        tail.push_str("\n## Skipped and failed\n\n| target | workload | case | status | reason |\n|---|---|---|---|---|\n");
        for m in problems {
            let r = &m.row;
            tail.push_str(&format!(
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
        tail.push_str("\n## Plots\n\n");
        for c in &data.charts {
            tail.push_str(&format!(
                "- [{}]({}.png) ([svg]({}.svg))\n",
                md_escape(&c.title),
                c.name,
                c.name
            ));
        }
    }
    fit(&head, &folded_open, &folded, folded_close, &tail, limit)
}

/// Joins the parts, leaving out folded rows from the end (then, if still too long, cutting the
/// rest at a line) until the text has at most `limit` characters, and says what was left out.
pub fn fit(
    head: &str,
    folded_open: &str,
    folded: &[String],
    folded_close: &str,
    tail: &str,
    limit: usize,
) -> String {
    let len = |s: &str| s.chars().count();
    let fixed = len(head) + len(folded_open) + len(folded_close) + len(tail);
    let total = fixed + folded.iter().map(|r| len(r)).sum::<usize>();
    if total <= limit {
        return [head, folded_open, &folded.concat(), folded_close, tail].concat();
    }
    let note = |n: usize| {
        format!("\n_{n} rows left out here to stay within {limit} characters (a GitHub job summary or PR comment); index.html has every row._\n")
    };
    // Keep as many folded rows as fit beside the fixed parts and the note.
    let mut budget = limit.saturating_sub(fixed + len(&note(folded.len())));
    let mut kept = 0;
    for r in folded {
        let l = len(r);
        if l > budget {
            break;
        }
        budget -= l;
        kept += 1;
    }
    if fixed + len(&note(folded.len())) <= limit {
        return [
            head,
            folded_open,
            &folded[..kept].concat(),
            folded_close,
            &note(folded.len() - kept),
            tail,
        ]
        .concat();
    }
    // Even without the folded part it is too long: cut at a line boundary.
    let all = [head, tail].concat();
    let cut_note = format!("\n_… cut to stay within {limit} characters; index.html has everything._\n");
    let room = limit.saturating_sub(len(&cut_note));
    let mut out = String::new();
    let mut used = 0;
    for line in all.split_inclusive('\n') {
        let l = len(line);
        if used + l > room {
            break;
        }
        out.push_str(line);
        used += l;
    }
    out.push_str(&cut_note);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("| row {i:04} | same |\n")).collect()
    }

    #[test]
    fn fits_untouched_when_short() {
        let out = fit(
            "# head\n",
            "<details>\n",
            &rows(3),
            "</details>\n",
            "tail\n",
            1000,
        );
        assert_eq!(out, "# head\n<details>\n| row 0000 | same |\n| row 0001 | same |\n| row 0002 | same |\n</details>\ntail\n");
    }

    #[test]
    fn truncates_the_folded_part_first_and_says_so() {
        let head = "# verdict: regression in gemm\n".repeat(10);
        let tail = "## plots\n".repeat(5);
        let folded = rows(5000);
        let limit = 20_000;
        let out = fit(&head, "<details>\n", &folded, "</details>\n", &tail, limit);
        assert!(out.chars().count() <= limit, "{} chars", out.chars().count());
        assert!(out.starts_with(&head), "head kept whole");
        assert!(out.ends_with(&tail), "tail kept whole");
        assert!(out.contains("| row 0000 |"), "first folded rows kept");
        assert!(!out.contains("| row 4999 |"), "last folded rows dropped");
        let kept = out.matches("| row ").count();
        assert!(kept > 100, "only {kept} rows kept");
        assert!(
            out.contains(&format!("_{} rows left out here", 5000 - kept)),
            "{}",
            &out[out.len() - 400..]
        );
        assert!(out.contains("</details>"), "the fold is closed");
    }

    #[test]
    fn cuts_the_head_when_nothing_else_helps() {
        let head = "a line of the verdict\n".repeat(2000);
        let out = fit(&head, "", &[], "", "", 1000);
        assert!(out.chars().count() <= 1000);
        assert!(out.contains("cut to stay within 1000 characters"));
        assert!(out.starts_with("a line of the verdict\n"));
    }
}
