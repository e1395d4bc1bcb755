//! Plots with plotters: chart specifications built from results, drawn to SVG (inlined in the
//! HTML) and PNG. Text uses the bundled DejaVu Sans, registered once, so that no system font
//! library is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::case::WorkloadKind;
use crate::compare::{CompareReport, LoadedRun, Measurement, Verdict};
use crate::workload::{metric, Params};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Registers the bundled font with plotters (once per process).
pub fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("failed to load the bundled font assets/DejaVuSans.ttf"))
    }
}

/// A line of a line chart.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A bar of the ratio chart: candidate/baseline with its CI.
#[derive(Debug, Clone)]
pub struct RatioBar {
    pub label: String,
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
pub enum ChartKind {
    /// Lines over a numeric x axis; log axes are base 2 (x) and base 10 (y).
    Lines {
        lines: Vec<Line>,
        log_x: bool,
        log_y: bool,
    },
    /// Horizontal grouped bars: one group per category, one bar per series.
    Bars {
        categories: Vec<String>,
        series: Vec<(String, Vec<Option<f64>>)>,
    },
    /// Ratios with CIs, one row each, coloured by verdict.
    Ratios { bars: Vec<RatioBar> },
}

/// One plot: its file stem, texts and data.
#[derive(Debug, Clone)]
pub struct ChartSpec {
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub kind: ChartKind,
}

impl ChartSpec {
    pub fn size(&self) -> (u32, u32) {
        let rows = match &self.kind {
            ChartKind::Lines { .. } => return (900, 480),
            ChartKind::Bars { categories, series } => categories.len() * series.len().max(1),
            ChartKind::Ratios { bars } => bars.len(),
        };
        (900, (140 + 22 * rows as u32).clamp(240, 4000))
    }
}

pub const RED: RGBColor = RGBColor(214, 39, 40);
pub const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(140, 140, 140);

fn colour(i: usize) -> RGBColor {
    // Tableau 10 without red and green, which the ratio chart reserves for verdicts.
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("failed to draw a plot: {e:?}")
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &ChartSpec) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    match &spec.kind {
        ChartKind::Lines { lines, log_x, log_y } => draw_lines(root, spec, lines, *log_x, *log_y),
        ChartKind::Bars { categories, series } => draw_bars(root, spec, categories, series),
        ChartKind::Ratios { bars } => draw_ratios(root, spec, bars),
    }?;
    root.present().map_err(err)
}

fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return None;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        lo.abs().max(1.0) * 0.1
    };
    Some((lo - pad, hi + pad))
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    spec: &ChartSpec,
    lines: &[Line],
    log_x: bool,
    log_y: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // Log axes by transforming the data; the labels print the original values.
    let tx = |x: f64| if log_x { x.log2() } else { x };
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<(String, Vec<(f64, f64)>)> = lines
        .iter()
        .map(|l| {
            let p = l
                .points
                .iter()
                .filter(|(x, y)| (!log_x || *x > 0.0) && (!log_y || *y > 0.0))
                .map(|&(x, y)| (tx(x), ty(y)))
                .collect();
            (l.label.clone(), p)
        })
        .collect();
    let (x0, x1) = span(pts.iter().flat_map(|(_, p)| p.iter().map(|q| q.0))).unwrap_or((0.0, 1.0));
    let (y0, y1) = span(pts.iter().flat_map(|(_, p)| p.iter().map(|q| q.1))).unwrap_or((0.0, 1.0));
    let y0 = if log_y { y0 } else { y0.min(0.0) };
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    // On log axes only the powers (of 2 for x, 10 for y) are labelled.
    let fx = |v: &f64| {
        if log_x {
            if (v - v.round()).abs() > 1e-3 {
                return String::new();
            }
            let x = 2f64.powf(v.round());
            if x >= 1.0 {
                format!("{x:.0}")
            } else {
                crate::render::num::fmt_num(x)
            }
        } else {
            crate::render::num::fmt_num(*v)
        }
    };
    let fy = |v: &f64| {
        if log_y {
            if (v - v.round()).abs() > 1e-3 {
                return String::new();
            }
            let y = 10f64.powf(v.round());
            if y >= 1.0 {
                format!("{y:.0}")
            } else {
                crate::render::num::fmt_num(y)
            }
        } else {
            crate::render::num::fmt_num(*v)
        }
    };
    chart
        .configure_mesh()
        .x_desc(spec.x_label.as_str())
        .y_desc(spec.y_label.as_str())
        .x_labels(if log_x {
            ((x1 - x0).ceil() as usize + 1) * 4
        } else {
            10
        })
        .y_labels(if log_y {
            ((y1 - y0).ceil() as usize + 1) * 4
        } else {
            10
        })
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    for (i, (label, p)) in pts.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(p.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(p.iter().map(|&q| Circle::new(q, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FAMILY, 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    spec: &ChartSpec,
    categories: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = categories.len().max(1);
    let k = series.len().max(1);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let xmax = if max > 0.0 { max * 1.15 } else { 1.0 };
    let label_w = categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 60) as u32
        * 7
        + 10;
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(label_w)
        .build_cartesian_2d(0.0..xmax, -0.5..(n as f64 - 0.5))
        .map_err(err)?;
    let cats = categories.to_vec();
    let fy = move |y: &f64| {
        let i = y.round();
        if (y - i).abs() < 1e-6 && i >= 0.0 {
            cats.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(spec.x_label.as_str())
        .y_desc(spec.y_label.as_str())
        .y_labels(n)
        .y_label_formatter(&fy)
        .x_label_formatter(&|v| crate::render::num::fmt_num(*v))
        .label_style((FAMILY, 12))
        .draw()
        .map_err(err)?;
    let h = 0.8 / k as f64;
    for (si, (label, values)) in series.iter().enumerate() {
        let c = colour(si);
        let bars: Vec<Rectangle<(f64, f64)>> = values
            .iter()
            .enumerate()
            .filter_map(|(ci, v)| {
                let v = (*v)?;
                let top = ci as f64 - 0.4 + si as f64 * h;
                Some(Rectangle::new([(0.0, top), (v, top + h * 0.9)], c.filled()))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FAMILY, 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn draw_ratios<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    spec: &ChartSpec,
    bars: &[RatioBar],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = bars.len().max(1);
    let (lo, hi) = span(bars.iter().flat_map(|b| [b.low, b.high, b.ratio, 1.0])).unwrap_or((0.9, 1.1));
    let label_w = bars
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 70) as u32
        * 7
        + 10;
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(label_w)
        .build_cartesian_2d(lo..hi, -0.5..(n as f64 - 0.5))
        .map_err(err)?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let fy = move |y: &f64| {
        let i = y.round();
        if (y - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(spec.x_label.as_str())
        .y_labels(n)
        .y_label_formatter(&fy)
        .x_label_formatter(&|v| crate::render::num::pct(*v))
        .label_style((FAMILY, 12))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, -0.5), (1.0, n as f64 - 0.5)],
            BLACK.stroke_width(1),
        )))
        .map_err(err)?;
    for (i, b) in bars.iter().enumerate() {
        let c = match b.verdict {
            Verdict::Regression | Verdict::Failed => RED,
            Verdict::Improvement => GREEN,
            _ => GREY,
        };
        let y = i as f64;
        chart
            .draw_series([
                Rectangle::new([(b.low, y - 0.3), (b.high, y + 0.3)], c.mix(0.35).filled()),
                Rectangle::new([(b.low, y - 0.3), (b.high, y + 0.3)], c.stroke_width(1)),
            ])
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Circle::new((b.ratio, y), 4, c.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// Draws a chart as an SVG document.
pub fn render_svg(spec: &ChartSpec) -> Result<String> {
    register_font()?;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, spec.size()).into_drawing_area();
        draw(&root, spec)?;
    }
    Ok(s)
}

/// Draws a chart into a PNG file.
pub fn render_png(spec: &ChartSpec, path: &Path) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, spec.size()).into_drawing_area();
    draw(&root, spec)
}

/// `key=value` pairs of a case id.
pub fn case_params(case: &str) -> BTreeMap<String, String> {
    case.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Case ids without the `key=value` pairs every case shares (shorter axis labels).
pub fn short_labels(cases: &[String]) -> Vec<String> {
    let params: Vec<Vec<(String, String)>> = cases
        .iter()
        .map(|c| case_params(c).into_iter().collect())
        .collect();
    cases
        .iter()
        .zip(&params)
        .map(|(case, ps)| {
            let keep: Vec<String> = ps
                .iter()
                .filter(|kv| !params.iter().all(|other| other.contains(kv)))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if keep.is_empty() {
                case.clone()
            } else {
                keep.join(",")
            }
        })
        .collect()
}

/// The label of a run's target in plots: the image when there is one, else the target, with the
/// GPU name when runs differ by GPU.
fn series_name(m: &Measurement, many_runs: bool, run: &str) -> String {
    let mut s = if m.row.image.is_empty() {
        m.row.target.clone()
    } else {
        m.row.image.clone()
    };
    if !m.row.gpu_name.is_empty() {
        s = format!("{s} {}", m.row.gpu_name);
    }
    if many_runs {
        s = format!("{s} ({run})");
    }
    s
}

fn metric_rows<'a>(
    runs: &'a [LoadedRun],
    workload: &'a str,
    metric: &'a str,
) -> impl Iterator<Item = (String, &'a Measurement)> + 'a {
    let many = runs.len() > 1;
    runs.iter().flat_map(move |r| {
        let name = r.name();
        r.measurements
            .iter()
            .filter(move |m| m.is_metric() && m.row.workload == workload && m.row.metric == metric)
            .map(move |m| (series_name(m, many, &name), m))
    })
}

/// Bar chart data: category labels, (series name, value per category), unit.
type BarData = (Vec<String>, Vec<(String, Vec<Option<f64>>)>, String);

fn bars_of(runs: &[LoadedRun], workload: &str, metric: &str) -> Option<BarData> {
    let rows: Vec<(String, &Measurement)> = metric_rows(runs, workload, metric).collect();
    if rows.is_empty() {
        return None;
    }
    let cases: Vec<String> = rows
        .iter()
        .map(|(_, m)| m.row.case.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let names: Vec<String> = rows
        .iter()
        .map(|(s, _)| s.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let series = names
        .iter()
        .map(|n| {
            let v = cases
                .iter()
                .map(|c| {
                    rows.iter()
                        .find(|(s, m)| s == n && &m.row.case == c)
                        .and_then(|(_, m)| m.row.median)
                })
                .collect();
            (n.clone(), v)
        })
        .collect();
    let unit = rows[0].1.row.unit.clone();
    Some((short_labels(&cases), series, unit))
}

/// Every plot the runs (and the comparison) have data for.
pub fn charts(runs: &[LoadedRun], comparison: Option<&CompareReport>) -> Vec<ChartSpec> {
    let mut out = Vec::new();
    // GEMM throughput vs size, one line per dtype and image.
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut unit = String::new();
    for (name, m) in metric_rows(runs, "gemm", metric::THROUGHPUT) {
        let Some(Params::Gemm(p)) = Params::from_case_id(WorkloadKind::Gemm, &m.row.case) else {
            continue;
        };
        // A cube's side; other shapes plot at the side of the cube with the same work.
        let size = if p.m == p.n && p.n == p.k {
            p.m as f64
        } else {
            ((p.m * p.n * p.k) as f64).cbrt()
        };
        if let Some(y) = m.row.median {
            let (x, dtype) = (size, p.dtype.as_str());
            lines.entry(format!("{dtype} {name}")).or_default().push((x, y));
            unit = m.row.unit.clone();
        }
    }
    if !lines.is_empty() {
        out.push(ChartSpec {
            name: "gemm_throughput".into(),
            title: "GEMM throughput vs size".into(),
            x_label: "matrix size (m = n = k)".into(),
            y_label: format!("throughput ({unit})"),
            kind: line_chart(lines, true, false),
        });
    }
    let bar_plots: [(&str, &str, &str, &str); 5] = [
        (
            "attention",
            metric::THROUGHPUT,
            "attention_throughput",
            "Attention throughput",
        ),
        (
            "generate",
            metric::TTFT,
            "generate_ttft",
            "Generation: time to first token",
        ),
        (
            "generate",
            metric::TPOT,
            "generate_tpot",
            "Generation: time per output token",
        ),
        (
            "generate",
            metric::DECODE_TPS,
            "generate_tokens_per_s",
            "Generation: decode tokens per second",
        ),
        (
            "precision",
            metric::SPEEDUP,
            "precision_speedup",
            "TF32 / AMP speedup vs fp32",
        ),
    ];
    for (workload, m, name, title) in bar_plots {
        if let Some((categories, series, unit)) = bars_of(runs, workload, m) {
            out.push(ChartSpec {
                name: name.into(),
                title: title.into(),
                x_label: if unit.is_empty() {
                    m.to_string()
                } else {
                    format!("{m} ({unit})")
                },
                y_label: String::new(),
                kind: ChartKind::Bars { categories, series },
            });
        }
    }
    // All-reduce bus bandwidth vs message size: the size is the metric's `@BYTES` suffix or the
    // case's `bytes`/`size` parameter.
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut unit = String::new();
    for r in runs {
        for m in r
            .measurements
            .iter()
            .filter(|m| m.is_metric() && m.row.workload == "allreduce")
        {
            let (base, suffix) = crate::workload::allreduce::split_sized(&m.row.metric);
            if base != metric::BUSBW {
                continue;
            }
            let p = case_params(&m.row.case);
            let bytes = suffix
                .map(|b| b as f64)
                .or_else(|| p.get("bytes").or(p.get("size")).and_then(|v| v.parse().ok()));
            if let (Some(x), Some(y)) = (bytes, m.row.median) {
                let name = series_name(m, runs.len() > 1, &r.name());
                lines.entry(name).or_default().push((x, y));
                unit = m.row.unit.clone();
            }
        }
    }
    if !lines.is_empty() {
        out.push(ChartSpec {
            name: "allreduce_busbw".into(),
            title: "All-reduce bus bandwidth vs message size".into(),
            x_label: "message size (bytes)".into(),
            y_label: format!("busbw ({unit})"),
            kind: line_chart(lines, true, true),
        });
    }
    if let Some(cmp) = comparison {
        let bars: Vec<RatioBar> = cmp
            .comparisons
            .iter()
            .filter_map(|c| {
                let ratio = c.judgement.ratio?;
                Some(RatioBar {
                    label: format!(
                        "{} {} {} ({})",
                        c.workload,
                        short_case(&c.case),
                        c.metric,
                        c.candidate.label
                    ),
                    ratio,
                    low: c.judgement.ci_low.unwrap_or(ratio),
                    high: c.judgement.ci_high.unwrap_or(ratio),
                    verdict: c.verdict,
                })
            })
            .collect();
        if !bars.is_empty() {
            out.push(ChartSpec {
                name: "ratios".into(),
                title: format!(
                    "Candidate / baseline ({}), 95% CI; red = regression",
                    cmp.baseline
                ),
                x_label: "change of the median".into(),
                y_label: String::new(),
                kind: ChartKind::Ratios { bars },
            });
        }
    }
    out
}

fn short_case(case: &str) -> String {
    if case.chars().count() > 40 {
        let s: String = case.chars().take(38).collect();
        format!("{s}…")
    } else {
        case.to_string()
    }
}

/// Lines from series of (x, y) points, each sorted by x.
fn line_chart(lines: BTreeMap<String, Vec<(f64, f64)>>, log_x: bool, log_y: bool) -> ChartKind {
    ChartKind::Lines {
        lines: lines
            .into_iter()
            .map(|(label, mut points)| {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Line { label, points }
            })
            .collect(),
        log_x,
        log_y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_drop_shared_params() {
        let cases = vec![
            "b=1,h=8,kv=8,causal=false".to_string(),
            "b=1,h=8,kv=2,causal=true".to_string(),
        ];
        assert_eq!(short_labels(&cases), ["causal=false,kv=8", "causal=true,kv=2"]);
    }

    #[test]
    fn svg_escapes_and_draws() {
        let spec = ChartSpec {
            name: "t".into(),
            title: "<script>alert(1)</script>".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            kind: ChartKind::Lines {
                lines: vec![Line {
                    label: "a&b".into(),
                    points: vec![(256.0, 1.0), (1024.0, 2.0)],
                }],
                log_x: true,
                log_y: false,
            },
        };
        let svg = render_svg(&spec).unwrap();
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }
}
