//! `index.html`: one self-contained page (inline CSS and SVG, no script, no network). Every
//! string from users, suites, images and logs is escaped; a Content-Security-Policy that allows
//! no script at all is the second line of defence.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{ReportData, Reporter};
use crate::compare::format::{cells, header};
use crate::render::num::fmt_num;
use crate::results::Status;

pub struct HtmlReport;

/// Escapes text for HTML content and quoted attributes (the XML rules serve HTML too).
pub use crate::render::escape::xml_escape as esc;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}\
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.regression td,tr.failed td{background:#fde2e2}tr.improvement td{background:#e2f5e2}tr.noisy td,tr.missing td{color:#777}\
.plot{margin:1.5em 0}.plot svg{max-width:100%;height:auto}code{background:#f3f3f3;padding:0 3px}";

/// The page.
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
    runs_section(&mut o, data);
    if let Some(c) = &data.comparison {
        let _ = write!(
            o,
            "<h2 id=\"comparison\">Comparison</h2>\n<p>Baseline <code>{}</code> ({}). {}</p>\n<p>{}</p>\n<table id=\"comparison-table\"><thead><tr>",
            esc(&c.baseline),
            esc(&c.mode),
            esc(&c.summary_line()),
            esc(crate::compare::format::VALUES_NOTE)
        );
        let along = c.mode != "runs";
        for h in header(along) {
            let _ = write!(o, "<th>{}</th>", esc(h));
        }
        o.push_str("<th>why</th></tr></thead><tbody>\n");
        for cmp in &c.comparisons {
            let _ = write!(o, "<tr class=\"{}\">", cmp.verdict.as_str());
            let cs = cells(cmp, along);
            let first_num = if along { 5 } else { 4 };
            for (i, cell) in cs.iter().enumerate() {
                let class = if i >= first_num && i + 1 < cs.len() {
                    " class=\"num\""
                } else {
                    ""
                };
                let _ = write!(o, "<td{class}>{}</td>", esc(cell));
            }
            let _ = writeln!(o, "<td>{}</td></tr>", esc(&cmp.reason));
        }
        o.push_str("</tbody></table>\n");
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
    o.push_str("</body></html>\n");
    o
}

fn runs_section(o: &mut String, data: &ReportData) {
    o.push_str("<h2 id=\"runs\">Runs</h2>\n<table><thead><tr><th>run</th><th>suite</th><th>started</th><th>state</th><th>host</th><th>targets</th></tr></thead><tbody>\n");
    for run in &data.runs {
        let (suite, started, state, host, targets) = match &run.meta {
            Some(m) => (
                m.suite.clone(),
                m.started_at.clone(),
                m.state.clone(),
                m.host
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                m.targets
                    .iter()
                    .map(|t| {
                        let mut s = format!("{} ({}, {}, {})", t.name, t.executor, t.engine, t.device);
                        if !t.image_id.is_empty() {
                            s.push_str(&format!(" image {}", t.image_id));
                        }
                        let versions: Vec<String> = t.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        if !versions.is_empty() {
                            s.push_str(&format!(" [{}]", versions.join(", ")));
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            None => Default::default(),
        };
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&run.name()),
            esc(&suite),
            esc(&started),
            esc(&state),
            esc(&host),
            esc(&targets)
        );
    }
    o.push_str("</tbody></table>\n");
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
    o.push_str("<h2 id=\"problems\">Skipped and failed</h2>\n<table><thead><tr><th>run</th><th>target</th><th>workload</th><th>case</th><th>status</th><th>reason</th></tr></thead><tbody>\n");
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
    o.push_str("</tbody></table>\n");
}

fn results_section(o: &mut String, data: &ReportData) {
    o.push_str("<h2 id=\"results\">All results</h2>\n<table id=\"results-table\"><thead><tr><th>run</th><th>target</th><th>image</th><th>gpu</th><th>workload</th><th>case</th><th>metric</th><th>n</th><th>median</th><th>95% CI of the median</th><th>unit</th><th>better</th></tr></thead><tbody>\n");
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
    o.push_str("</tbody></table>\n");
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
