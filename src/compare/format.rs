//! Renders a comparison as an aligned text table, Markdown, JSON or JUnit XML.

use anyhow::Result;

use super::{CompareReport, Comparison, Verdict};
use crate::render::escape::{md_escape, xml_escape};
use crate::render::num::{fmt_num, pct};
use crate::render::table::aligned;
use crate::render::Format;

pub fn render(report: &CompareReport, format: Format) -> Result<String> {
    Ok(match format {
        Format::Table => table(report),
        Format::Markdown => markdown(report),
        Format::Json => serde_json::to_string_pretty(&JsonReport::of(report))? + "\n",
        Format::Junit => junit(report),
    })
}

/// The JSON document: the gate's answer first (outcome, exit code, why, what the candidate
/// lacks), then the whole comparison.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    outcome: crate::outcome::Outcome,
    exit_code: i32,
    /// Why the gate is closed (empty when it is open).
    gate: Vec<String>,
    /// The (workload, case, metric, gpu) the baseline measured and the candidate lacks.
    candidate_lacks: Vec<MissingKey<'a>>,
    #[serde(flatten)]
    report: &'a CompareReport,
}

#[derive(serde::Serialize)]
struct MissingKey<'a> {
    workload: &'a str,
    case: &'a str,
    metric: &'a str,
    gpu: &'a str,
    context: &'a str,
    candidate: &'a str,
    reason: &'a str,
}

impl<'a> JsonReport<'a> {
    fn of(report: &'a CompareReport) -> Self {
        let outcome = report.outcome();
        JsonReport {
            outcome,
            exit_code: outcome.code(),
            gate: if outcome == crate::outcome::Outcome::Complete {
                Vec::new()
            } else {
                report.gate_lines()
            },
            candidate_lacks: report
                .lacking()
                .into_iter()
                .map(|c| MissingKey {
                    workload: &c.workload,
                    case: &c.case,
                    metric: &c.metric,
                    gpu: &c.gpu,
                    context: &c.context,
                    candidate: &c.candidate.label,
                    reason: &c.reason,
                })
                .collect(),
            report,
        }
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map(fmt_num).unwrap_or_else(|| "-".into())
}

fn p_text(c: &Comparison) -> String {
    match c.p_adj.or(c.judgement.p) {
        Some(p) if p < 1e-300 => "<1e-300".into(),
        Some(p) if p < 1e-4 => format!("{p:.0e}"),
        Some(p) => format!("{p:.4}"),
        None => "-".into(),
    }
}

/// The cells of one comparison, in header order.
pub fn cells(c: &Comparison, along: bool) -> Vec<String> {
    let mut v = vec![
        c.workload.clone(),
        c.case.clone(),
        c.metric.clone(),
        c.gpu.clone(),
    ];
    if along {
        v.push(c.candidate.label.clone());
    } else if !c.context.is_empty() {
        v[3] = format!("{} {}", c.gpu, c.context);
    }
    v.extend([
        opt_num(c.baseline.estimate),
        opt_num(c.candidate.estimate),
        c.unit.clone(),
        c.judgement.ratio.map(pct).unwrap_or_else(|| "-".into()),
        match (c.judgement.ci_low, c.judgement.ci_high) {
            (Some(l), Some(h)) => format!("[{}, {}]", pct(l), pct(h)),
            _ => "-".into(),
        },
        p_text(c),
        c.verdict.as_str().to_string(),
    ]);
    v
}

/// What the baseline and candidate columns hold, said once above every comparison table.
pub const VALUES_NOTE: &str = "values: per side, the trimmed mean of round medians (20% trimmed, so a wild round stays out) that the change and CI are computed from; the pooled sample median is `median` in --format json; CI: 95%, or wider where an adaptive look spent part of α (its reason gives the level)";

pub fn header(along: bool) -> Vec<&'static str> {
    let mut h = vec!["workload", "case", "metric", "gpu"];
    if along {
        h.push("candidate");
    }
    h.extend([
        "baseline",
        "candidate",
        "unit",
        "change",
        "CI",
        "p (Holm)",
        "verdict",
    ]);
    h
}

fn is_along(r: &CompareReport) -> bool {
    r.mode != "runs"
}

fn table(r: &CompareReport) -> String {
    let along = is_along(r);
    let mut rows: Vec<Vec<String>> = vec![header(along).into_iter().map(String::from).collect()];
    rows.extend(r.comparisons.iter().map(|c| cells(c, along)));
    let cols = rows[0].len();
    let numeric_from = if along { 5 } else { 4 };
    let mut out = format!("baseline: {} ({})\n{VALUES_NOTE}\n", r.baseline, r.mode);
    // Numbers right-aligned; the unit and the verdict read as words.
    out.push_str(&aligned(&rows, |i| {
        i >= numeric_from && i != cols - 1 && i != numeric_from + 2
    }));
    let notes: Vec<&Comparison> = r
        .comparisons
        .iter()
        .filter(|c| !matches!(c.verdict, Verdict::Same))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for c in notes {
            out.push_str(&format!(
                "{}: {} ({}): {}\n",
                c.verdict.as_str(),
                c.what(),
                c.candidate.label,
                c.reason
            ));
        }
    }
    out
}

pub fn verdict_mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Regression => "🔴 regression",
        Verdict::Failed => "🔴 failed",
        Verdict::Improvement => "🟢 improvement",
        Verdict::Same => "same",
        Verdict::Noisy => "⚪ noisy",
        Verdict::Missing => "⚪ missing",
    }
}

/// The comparison as Markdown (also used inside `summary.md`).
pub fn markdown(r: &CompareReport) -> String {
    let along = is_along(r);
    let mut out = format!(
        "**Baseline:** {} ({})  \n**Verdicts:** {}  \n*{}*\n\n",
        md_escape(&r.baseline),
        md_escape(&r.mode),
        md_escape(&r.summary_line()),
        md_escape(VALUES_NOTE)
    );
    let h = header(along);
    out.push_str(&format!("| {} |\n", h.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(h.len())));
    for c in &r.comparisons {
        let mut cells = cells(c, along);
        if let Some(last) = cells.last_mut() {
            *last = verdict_mark(c.verdict).to_string();
        }
        let cells: Vec<String> = cells.iter().map(|s| md_escape(s)).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    let notes: Vec<&Comparison> = r
        .comparisons
        .iter()
        .filter(|c| {
            matches!(
                c.verdict,
                Verdict::Regression | Verdict::Failed | Verdict::Missing | Verdict::Noisy
            )
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("\n<details><summary>Why</summary>\n\n");
        for c in notes {
            out.push_str(&format!(
                "- **{}** {} ({}): {}\n",
                c.verdict.as_str(),
                md_escape(&c.what()),
                md_escape(&c.candidate.label),
                md_escape(&c.reason)
            ));
        }
        out.push_str("\n</details>\n");
    }
    out
}

/// The gate as Markdown, for the top of `compare --format markdown`.
pub fn gate_markdown(r: &CompareReport) -> String {
    let o = r.outcome();
    let mut out = format!("**Gate:** exit {} ({})\n", o.code(), md_escape(o.meaning()));
    if o != crate::outcome::Outcome::Complete {
        out.push('\n');
        for line in r.gate_lines() {
            out.push_str(&format!("- {}\n", md_escape(line.trim_start())));
        }
    }
    out
}

/// Whether the gate counts this comparison against the candidate (a JUnit failure).
fn closes_gate(r: &CompareReport, c: &Comparison) -> bool {
    matches!(c.verdict, Verdict::Regression | Verdict::Failed)
        || (c.lacks_candidate() && !r.options.allow_missing)
}

fn junit(r: &CompareReport) -> String {
    // A partial run is one more failed test case: the comparison cannot be trusted.
    let partial = if r.options.allow_partial {
        &[][..]
    } else {
        &r.partial_runs[..]
    };
    let failures = r.comparisons.iter().filter(|c| closes_gate(r, c)).count() + partial.len();
    let skipped = r.count(Verdict::Noisy) + r.count(Verdict::Missing)
        - r.comparisons
            .iter()
            .filter(|c| c.verdict == Verdict::Missing && closes_gate(r, c))
            .count();
    let tests = r.comparisons.len() + partial.len();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"tagbench compare\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\">\n"
    ));
    out.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\">\n",
        xml_escape(&format!("baseline {} ({})", r.baseline, r.mode)),
    ));
    for p in partial {
        let m = xml_escape(&p.message());
        out.push_str(&format!(
            "    <testcase classname=\"partial\" name=\"{}\">\n      <failure type=\"partial\" message=\"{m}\">{m}</failure>\n    </testcase>\n",
            xml_escape(&p.name)
        ));
    }
    for c in &r.comparisons {
        let cells = cells(c, is_along(r));
        out.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\">\n",
            xml_escape(&format!("{}.{}", c.workload, c.candidate.label)),
            xml_escape(&format!("{} {} {}", c.case, c.metric, c.gpu))
        ));
        let detail = xml_escape(&format!(
            "baseline {} {}, candidate {} {}, change {}, CI {}, p {}: {}",
            cells[cells.len() - 7],
            c.unit,
            cells[cells.len() - 6],
            c.unit,
            cells[cells.len() - 4],
            cells[cells.len() - 3],
            cells[cells.len() - 2],
            c.reason
        ));
        let v = c.verdict.as_str();
        if closes_gate(r, c) {
            out.push_str(&format!(
                "      <failure type=\"{v}\" message=\"{detail}\">{detail}</failure>\n"
            ));
        } else if matches!(c.verdict, Verdict::Noisy | Verdict::Missing) {
            out.push_str(&format!("      <skipped message=\"{v}: {detail}\"/>\n"));
        } else {
            out.push_str(&format!("      <system-out>{v}: {detail}</system-out>\n"));
        }
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
