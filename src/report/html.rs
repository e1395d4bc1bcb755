//! `index.html`: one self-contained page (inline CSS and SVG, no script, no network). Every
//! string from users, suites, images and logs is escaped; a Content-Security-Policy that allows
//! no script at all is the second line of defence.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{verdict, ReportData, Reporter};
use crate::compare::format::{cells, header};
use crate::compare::{changes, CompareReport, Comparison, Verdict};
use crate::render::num::fmt_num;
use crate::results::Status;

pub struct HtmlReport;

/// Escapes text for HTML content and quoted attributes (the XML rules serve HTML too).
pub use crate::render::escape::xml_escape as esc;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em auto;padding:0 1.5em;color:#222;max-width:1200px}\
h1{font-size:1.5em;overflow-wrap:anywhere}h1,h2,h3{margin:.6em 0 .3em}\
.scroll{overflow-x:auto;max-width:100%}\
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px;max-width:100%}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}\
td{overflow-wrap:anywhere;min-width:6.5em}th{background:#f3f3f3;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
tr.regression td,tr.failed td{background:#fde2e2}tr.improvement td{background:#e2f5e2}tr.noisy td,tr.missing td{color:#777}\
#verdict{border-left:6px solid #888;padding:.4em 1em;margin:1em 0;background:#f7f7f7}#verdict.bad{border-color:#d62728;background:#fdf0f0}\
#verdict.good{border-color:#2ca02c;background:#f0f9f0}#verdict h2{margin-top:.2em}#verdict li{margin:.2em 0;overflow-wrap:anywhere}\
.old{color:#a00}.new{color:#060}details{margin:.3em 0 1em}summary{cursor:pointer;color:#444}\
.plot{margin:1.5em 0}.plot svg{max-width:100%;height:auto}code{background:#f3f3f3;padding:0 3px;overflow-wrap:anywhere}\
td.kv{white-space:pre-wrap}";

/// The page: verdict, what differs, the comparison by workload, plots, problems, all results,
/// environment. The verdict comes before any table so that it is the first screen.
pub fn page(data: &ReportData) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&data.title),
        esc(&data.title)
    );
    verdict_section(&mut o, data);
    if let Some(c) = &data.comparison {
        changes_section(&mut o, &changes::changes_of(&data.runs, c));
        comparison_section(&mut o, c);
    }
    if !data.charts.is_empty() {
        o.push_str("<h2 id=\"plots\">Plots</h2>\n");
        for (spec, svg) in data.charts.iter().zip(&data.svgs) {
            // plotters escapes the text it writes; the XML declaration is not allowed inline.
            let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
            let _ = writeln!(
                o,
                "<figure class=\"plot\" id=\"plot-{}\">{body}<figcaption>{} (<a href=\"{}.png\">png</a>, <a href=\"{}.svg\">svg</a>)</figcaption></figure>",
                esc(&spec.name),
                esc(&spec.title),
                esc(&spec.name),
                esc(&spec.name)
            );
        }
    }
    problems_section(&mut o, data);
    results_section(&mut o, data);
    environment_section(&mut o, data);
    o.push_str("</body></html>\n");
    o
}

/// The anchor of a comparison's row.
fn row_id(i: usize) -> String {
    format!("cmp-{i}")
}

/// How many findings the verdict lists before saying "and N more".
const VERDICT_ITEMS: usize = 20;

fn verdict_section(o: &mut String, data: &ReportData) {
    let s = verdict::of(data);
    let _ = write!(
        o,
        "<section id=\"verdict\" class=\"{}\">\n<h2>{}</h2>\n<p>Exit code <b>{}</b> ({}). {}</p>\n",
        s.headline.class(),
        esc(s.headline.text()),
        s.exit_code(),
        esc(s.outcome.meaning()),
        esc(&s.detail)
    );
    if !s.gate.is_empty() {
        o.push_str("<ul class=\"gate\">\n");
        for line in &s.gate {
            let _ = writeln!(o, "<li>{}</li>", esc(line.trim_start()));
        }
        o.push_str("</ul>\n");
    }
    let has_ratio_plot = data.charts.iter().any(|c| c.name == "ratios");
    let index_of = |c: &Comparison| {
        data.comparison
            .as_ref()
            .and_then(|r| r.comparisons.iter().position(|x| std::ptr::eq(x, c)))
            .unwrap_or(0)
    };
    for (title, list) in [("Worse", &s.findings), ("Better", &s.improvements)] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(o, "<p><b>{title}:</b></p><ul>");
        for c in list.iter().take(VERDICT_ITEMS) {
            let plot = if has_ratio_plot {
                " (<a href=\"#plot-ratios\">plot</a>)"
            } else {
                ""
            };
            let what = verdict::finding_text(c);
            let _ = writeln!(
                o,
                "<li><a href=\"#{}\">{} {} {} ({})</a>: {}{plot}</li>",
                row_id(index_of(c)),
                esc(&c.workload),
                esc(&c.case),
                esc(&c.metric),
                esc(&c.candidate.label),
                esc(&what)
            );
        }
        if list.len() > VERDICT_ITEMS {
            let _ = writeln!(
                o,
                "<li>and {} more (<a href=\"#comparison\">all comparisons</a>)</li>",
                list.len() - VERDICT_ITEMS
            );
        }
        o.push_str("</ul>\n");
    }
    o.push_str("</section>\n");
}

fn changes_section(o: &mut String, all: &[changes::TargetChanges]) {
    o.push_str("<section id=\"changes\">\n<h2>What differs</h2>\n");
    if all.is_empty() {
        o.push_str("<p>No run.json metadata for the compared targets: nothing to tell.</p>\n");
    }
    for tc in all {
        let _ = writeln!(
            o,
            "<h3><code>{}</code> → <code>{}</code></h3>",
            esc(&tc.baseline),
            esc(&tc.candidate)
        );
        if tc.changes.is_empty() {
            o.push_str("<p>Same image and versions in run.json.</p>\n");
            continue;
        }
        o.push_str("<div class=\"scroll\"><table class=\"changes\"><thead><tr><th>component</th><th>setting</th><th>baseline</th><th>candidate</th></tr></thead><tbody>\n");
        for c in &tc.changes {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"old\">{}</td><td class=\"new\">{}</td></tr>",
                esc(c.group.title()),
                esc(&c.key),
                esc(changes::or_dash(&c.old)),
                esc(changes::or_dash(&c.new))
            );
        }
        o.push_str("</tbody></table></div>\n");
    }
    o.push_str("</section>\n");
}

fn comparison_table(o: &mut String, rows: &[(usize, &Comparison)], along: bool) {
    o.push_str("<div class=\"scroll\"><table class=\"comparison\"><thead><tr>");
    for h in header(along) {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("<th>why</th></tr></thead><tbody>\n");
    for (i, cmp) in rows {
        let _ = write!(o, "<tr id=\"{}\" class=\"{}\">", row_id(*i), cmp.verdict.as_str());
        let cs = cells(cmp, along);
        let first_num = if along { 5 } else { 4 };
        for (j, cell) in cs.iter().enumerate() {
            let class = if j >= first_num && j + 1 < cs.len() {
                " class=\"num\""
            } else {
                ""
            };
            let _ = write!(o, "<td{class}>{}</td>", esc(cell));
        }
        let _ = writeln!(o, "<td>{}</td></tr>", esc(&cmp.reason));
    }
    o.push_str("</tbody></table></div>\n");
}

/// Every comparison, by workload: what changed in view, same/noisy folded.
fn comparison_section(o: &mut String, c: &CompareReport) {
    let _ = write!(
        o,
        "<section id=\"comparison\">\n<h2>Comparison by workload</h2>\n<p>Baseline <code>{}</code> ({}). {}</p>\n<p>{}</p>\n",
        esc(&c.baseline),
        esc(&c.mode),
        esc(&c.summary_line()),
        esc(crate::compare::format::VALUES_NOTE)
    );
    let along = c.mode != "runs";
    for (workload, rows) in by_workload(c) {
        let (shown, folded): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|(_, x)| !matches!(x.verdict, Verdict::Same | Verdict::Noisy));
        let _ = writeln!(
            o,
            "<h3 id=\"workload-{}\">{}</h3>",
            esc(&workload),
            esc(&workload)
        );
        if !shown.is_empty() {
            comparison_table(o, &shown, along);
        }
        if !folded.is_empty() {
            let same = folded.iter().filter(|(_, x)| x.verdict == Verdict::Same).count();
            let _ = writeln!(
                o,
                "<details><summary>{same} same, {} too noisy to tell</summary>",
                folded.len() - same
            );
            comparison_table(o, &folded, along);
            o.push_str("</details>\n");
        }
    }
    o.push_str("</section>\n");
}

/// The comparisons grouped by workload, in order of first appearance, with their indices.
pub fn by_workload(c: &CompareReport) -> Vec<(String, Vec<(usize, &Comparison)>)> {
    let mut out: Vec<(String, Vec<(usize, &Comparison)>)> = Vec::new();
    for (i, x) in c.comparisons.iter().enumerate() {
        match out.iter_mut().find(|(w, _)| *w == x.workload) {
            Some((_, v)) => v.push((i, x)),
            None => out.push((x.workload.clone(), vec![(i, x)])),
        }
    }
    out
}

/// Per run: one row per setting (host and each target's probe), one column per target.
fn environment_section(o: &mut String, data: &ReportData) {
    let metas: Vec<(String, &crate::results::RunMeta)> = data
        .runs
        .iter()
        .filter_map(|r| r.meta.as_ref().map(|m| (r.name(), m)))
        .collect();
    if metas.is_empty() {
        return;
    }
    o.push_str("<section id=\"environment\">\n<h2>Environment</h2>\n");
    for (name, m) in metas {
        let _ = writeln!(
            o,
            "<h3>Run <code>{}</code></h3>\n<p>suite {}, started {}, {}{}</p>",
            esc(&name),
            esc(&m.suite),
            esc(&m.started_at),
            esc(&m.state),
            m.finished_at
                .as_ref()
                .map(|f| format!(", finished {}", esc(f)))
                .unwrap_or_default()
        );
        let mut keys: Vec<String> = vec![
            "executor".into(),
            "engine".into(),
            "device".into(),
            "image".into(),
            "image_id".into(),
            "image_created".into(),
        ];
        let mut env_keys: Vec<&String> = m.targets.iter().flat_map(|t| t.env.keys()).collect();
        env_keys.sort();
        env_keys.dedup();
        keys.extend(env_keys.into_iter().cloned());
        let value = |t: &crate::results::TargetMeta, k: &str| -> String {
            match k {
                "executor" => t.executor.clone(),
                "engine" => t.engine.clone(),
                "device" => t.device.clone(),
                "image" => t.image.clone(),
                "image_id" => t.image_id.clone(),
                "image_created" => t.image_created.clone(),
                _ => t.env.get(k).cloned().unwrap_or_default(),
            }
        };
        o.push_str("<div class=\"scroll\"><table class=\"env\"><thead><tr><th>setting</th>");
        for t in &m.targets {
            let _ = write!(o, "<th>{}</th>", esc(&t.name));
        }
        o.push_str("</tr></thead><tbody>\n");
        for k in &keys {
            let vals: Vec<String> = m.targets.iter().map(|t| value(t, k)).collect();
            if vals.iter().all(String::is_empty) {
                continue;
            }
            let differs = vals.windows(2).any(|w| w[0] != w[1]) && !changes::is_noise_key(k);
            let _ = write!(
                o,
                "<tr{}><td>{}</td>",
                if differs { " class=\"differs\"" } else { "" },
                esc(k)
            );
            for v in vals {
                let _ = write!(o, "<td>{}</td>", esc(&v));
            }
            o.push_str("</tr>\n");
        }
        for (k, v) in &m.host {
            let _ = writeln!(
                o,
                "<tr><td>host {}</td><td colspan=\"{}\">{}</td></tr>",
                esc(k),
                m.targets.len().max(1),
                esc(v)
            );
        }
        o.push_str("</tbody></table></div>\n");
    }
    o.push_str("</section>\n");
}

fn problems_section(o: &mut String, data: &ReportData) {
    let rows: Vec<_> = data
        .runs
        .iter()
        .flat_map(|r| r.measurements.iter().map(move |m| (r, m)))
        .filter(|(_, m)| m.row.status != Status::Ok)
        .collect();
    if rows.is_empty() {
        return;
    }
    o.push_str("<h2 id=\"problems\">Skipped and failed</h2>\n<div class=\"scroll\"><table><thead><tr><th>run</th><th>target</th><th>workload</th><th>case</th><th>status</th><th>reason</th></tr></thead><tbody>\n");
    for (run, m) in rows {
        let r = &m.row;
        let _ = writeln!(
            o,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if r.status == Status::Failed {
                "failed"
            } else {
                "missing"
            },
            esc(&run.name()),
            esc(&r.target),
            esc(&r.workload),
            esc(&r.case),
            r.status.as_str(),
            esc(&r.reason)
        );
    }
    o.push_str("</tbody></table></div>\n");
}

fn results_section(o: &mut String, data: &ReportData) {
    // With a comparison above, the raw table is reference material: folded.
    let folded = data.comparison.is_some();
    o.push_str("<h2 id=\"results\">All results</h2>\n");
    if folded {
        o.push_str("<details><summary>every measured metric</summary>");
    }
    o.push_str("<div class=\"scroll\"><table id=\"results-table\"><thead><tr><th>run</th><th>target</th><th>image</th><th>gpu</th><th>workload</th><th>case</th><th>metric</th><th>n</th><th>median</th><th>95% CI of the median</th><th>unit</th><th>better</th></tr></thead><tbody>\n");
    for run in &data.runs {
        for m in run.measurements.iter().filter(|m| m.is_metric()) {
            let r = &m.row;
            let ci = match (r.ci_low, r.ci_high) {
                (Some(l), Some(h)) => format!("[{}, {}]", fmt_num(l), fmt_num(h)),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&run.name()),
                esc(&r.target),
                esc(&r.image),
                esc(&r.gpu_name),
                esc(&r.workload),
                esc(&r.case),
                esc(&r.metric),
                r.n.map(|n| n.to_string()).unwrap_or_default(),
                r.median.map(fmt_num).unwrap_or_default(),
                esc(&ci),
                esc(&r.unit),
                esc(&r.better)
            );
        }
    }
    o.push_str("</tbody></table></div>\n");
    if folded {
        o.push_str("</details>\n");
    }
}

impl Reporter for HtmlReport {
    fn name(&self) -> &'static str {
        "index.html"
    }
    fn write(&self, data: &ReportData, out: &Path) -> Result<Vec<PathBuf>> {
        let path = out.join("index.html");
        std::fs::write(&path, page(data)).with_context(|| format!("failed to write {}", path.display()))?;
        Ok(vec![path])
    }
}
