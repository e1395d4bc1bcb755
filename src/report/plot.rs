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
    /// Error bars: (x, low, high) of the 95% CI at each point that has one.
    pub ci: Vec<(f64, f64, f64)>,
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
        self.body_size()
    }

    /// The title's font size: 19 px, smaller for a long title so that it fits the width.
    pub fn title_px(&self) -> u32 {
        let (w, _) = self.size();
        let chars = self.title.chars().count().max(1) as f64;
        ((w as f64 - 30.0) / (chars * 0.62)).floor().clamp(10.0, 19.0) as u32
    }

    fn body_size(&self) -> (u32, u32) {
        let (rows, labels) = match &self.kind {
            // The plot keeps ~700 px whatever the legend beside it takes.
            ChartKind::Lines { .. } => return (760 + legend_width(self), 500),
            ChartKind::Bars { categories, series } => (categories.len() * series.len().max(1), categories),
            ChartKind::Ratios { bars } => {
                let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
                let w = label_width(&labels, 12) + 640;
                return (w.max(900), (140 + 22 * bars.len() as u32).clamp(240, 4000));
            }
        };
        let w = label_width(labels, 12) + 560 + legend_width(self);
        (w.max(900), (140 + 22 * rows as u32).clamp(240, 4000))
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
    // The title spans the whole width; the legend gets its own column right of the plot, so that
    // it never covers data.
    let body = root.titled(&spec.title, (FAMILY, spec.title_px())).map_err(err)?;
    let legend_w = legend_width(spec);
    let (w, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(w.saturating_sub(legend_w));
    match &spec.kind {
        ChartKind::Lines { lines, log_x, log_y } => {
            draw_lines(&plot_area, spec, lines, *log_x, *log_y)?;
            let items: Vec<(String, RGBColor)> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| (l.label.clone(), colour(i)))
                .collect();
            draw_legend(&legend_area, &items)
        }
        ChartKind::Bars { categories, series } => {
            draw_bars(&plot_area, spec, categories, series)?;
            let items: Vec<(String, RGBColor)> = series
                .iter()
                .enumerate()
                .map(|(i, s)| (s.0.clone(), colour(i)))
                .collect();
            draw_legend(&legend_area, &items)
        }
        ChartKind::Ratios { bars } => draw_ratios(&body, spec, bars),
    }?;
    root.present().map_err(err)
}

/// Pixels a label of this many characters takes in DejaVu Sans at `size` px (its widest common
/// glyphs are ~0.62 em; a little more than the average, so labels are never cut).
fn text_width(chars: usize, size: u32) -> u32 {
    (chars as f64 * size as f64 * 0.62).ceil() as u32
}

/// The width of the label area left of a horizontal chart: the longest label, and a margin.
fn label_width(labels: &[String], size: u32) -> u32 {
    text_width(
        labels.iter().map(|l| l.chars().count()).max().unwrap_or(4).max(4),
        size,
    ) + 16
}

/// The width of the legend column (0 for charts without a legend).
fn legend_width(spec: &ChartSpec) -> u32 {
    let labels: Vec<String> = match &spec.kind {
        ChartKind::Lines { lines, .. } => lines.iter().map(|l| l.label.clone()).collect(),
        ChartKind::Bars { series, .. } => series.iter().map(|s| s.0.clone()).collect(),
        ChartKind::Ratios { .. } => return 0,
    };
    if labels.is_empty() {
        return 0;
    }
    label_width(&labels, 13) + 40
}

/// A legend in its own area: a colour swatch and the label, one per line.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, items: &[(String, RGBColor)]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let font = (FAMILY, 13).into_font().color(&BLACK);
    for (i, (label, c)) in items.iter().enumerate() {
        let y = 40 + 20 * i as i32;
        area.draw(&Rectangle::new([(8, y - 5), (26, y + 5)], c.filled()))
            .map_err(err)?;
        area.draw(&Text::new(label.clone(), (32, y - 7), font.clone()))
            .map_err(err)?;
    }
    Ok(())
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
    // Room for the error bars, but at most a third of the data's span more: a wild CI is cut at
    // the frame instead of squashing the lines.
    let room = (y1 - y0) / 3.0;
    let cis = lines
        .iter()
        .flat_map(|l| l.ci.iter())
        .filter(|c| !log_y || (c.1 > 0.0 && c.2 > 0.0));
    let (y0, y1) = cis.fold((y0, y1), |(a, b), &(_, l, h)| {
        (a.min(ty(l).max(y0 - room)), b.max(ty(h).min(y1 + room)))
    });
    let mut chart = ChartBuilder::on(root)
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
    for (i, ((_, p), line)) in pts.iter().zip(lines).enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(p.iter().copied(), c.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(p.iter().map(|&q| Circle::new(q, 3, c.filled())))
            .map_err(err)?;
        // 95% CIs of the medians as error bars: a vertical line with caps (plotters' ErrorBar
        // would also mark the midpoint of the CI, which is not the median).
        let cap = (x1 - x0) * 0.006;
        let bars = line
            .ci
            .iter()
            .filter(|(x, l, h)| (!log_x || *x > 0.0) && (!log_y || (*l > 0.0 && *h > 0.0)))
            .flat_map(|&(x, l, h)| {
                let (x, l, h) = (tx(x), ty(l), ty(h));
                [
                    PathElement::new(vec![(x, l), (x, h)], c.stroke_width(1)),
                    PathElement::new(vec![(x - cap, l), (x + cap, l)], c.stroke_width(1)),
                    PathElement::new(vec![(x - cap, h), (x + cap, h)], c.stroke_width(1)),
                ]
            });
        chart.draw_series(bars).map_err(err)?;
    }
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
    let label_w = label_width(categories, 12);
    let mut chart = ChartBuilder::on(root)
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
    for (si, (_, values)) in series.iter().enumerate() {
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
        chart.draw_series(bars).map_err(err)?;
    }
    Ok(())
}

/// The x range of the ratio chart in log2 units: every point estimate and 1.0, and of the CIs
/// only as much as keeps the points readable. A CI of +2400% must not squash every other bar
/// into a dot: its end is clipped at the axis and marked.
pub fn ratio_axis(bars: &[RatioBar]) -> (f64, f64) {
    let l2 = |v: f64| v.max(1e-9).log2();
    let pts = bars.iter().map(|b| l2(b.ratio)).filter(|v| v.is_finite());
    let (lo_core, hi_core) = pts.fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    // Room for CIs: half the points' span, at least ±25%.
    let extend = ((hi_core - lo_core) * 0.5).max(1.25f64.log2());
    let ci_lo = bars.iter().map(|b| l2(b.low)).fold(lo_core, f64::min);
    let ci_hi = bars.iter().map(|b| l2(b.high)).fold(hi_core, f64::max);
    let lo = ci_lo.max(lo_core - extend);
    let hi = ci_hi.min(hi_core + extend);
    let pad = (hi - lo).max(0.05) * 0.04;
    (lo - pad, hi + pad)
}

/// The order of the ratio chart's rows, top first: regressions and failures, improvements, then
/// the rest; within each, the largest change first.
pub fn ratio_order(bars: &[RatioBar]) -> Vec<usize> {
    let rank = |v: Verdict| match v {
        Verdict::Regression | Verdict::Failed => 0,
        Verdict::Improvement => 1,
        _ => 2,
    };
    let mut idx: Vec<usize> = (0..bars.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (&bars[a], &bars[b]);
        rank(x.verdict).cmp(&rank(y.verdict)).then(
            y.ratio
                .max(1e-9)
                .log2()
                .abs()
                .total_cmp(&x.ratio.max(1e-9).log2().abs()),
        )
    });
    idx
}

/// A linear f64 axis whose ticks are given (plotters' `with_key_points` drops the default
/// formatting that `configure_mesh` needs).
struct TickedAxis {
    inner: plotters::coord::types::RangedCoordf64,
    ticks: Vec<f64>,
}

impl plotters::coord::ranged1d::Ranged for TickedAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;
    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }
    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.ticks.clone()
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// Tick positions (log2 units) of the ratio chart: round changes (-50%, -10%, +0%, +10%,
/// +100%, ...) inside the axis, at least a twelfth of the axis apart.
pub fn ratio_ticks(lo: f64, hi: f64) -> Vec<f64> {
    const NICE: [f64; 25] = [
        0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.67, 0.8, 0.9, 0.95, 0.98, 1.0, 1.02, 1.05, 1.1, 1.25, 1.5,
        2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0,
    ];
    let inside: Vec<f64> = NICE
        .iter()
        .map(|r| r.log2())
        .filter(|v| *v >= lo && *v <= hi)
        .collect();
    // Outward from +0%, keep a tick only at a readable distance from the last one kept.
    let gap = (hi - lo) / 12.0;
    let mut up = Vec::new();
    let mut down = Vec::new();
    for &v in inside.iter().filter(|v| **v >= 0.0) {
        if up.last().is_none_or(|l: &f64| v - l >= gap) {
            up.push(v);
        }
    }
    for &v in inside.iter().rev().filter(|v| **v < 0.0) {
        if v - down.last().copied().unwrap_or(0.0) <= -gap {
            down.push(v);
        }
    }
    down.reverse();
    down.extend(up);
    down
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
    let order = ratio_order(bars);
    let (lo, hi) = ratio_axis(bars);
    // Row i of `order` is drawn at y = n-1-i, so the first is at the top.
    let labels: Vec<String> = order.iter().rev().map(|&i| bars[i].label.clone()).collect();
    let label_w = label_width(&labels, 12);
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .margin_right(30)
        .x_label_area_size(46)
        .y_label_area_size(label_w)
        .build_cartesian_2d(
            TickedAxis {
                inner: (lo..hi).into(),
                ticks: ratio_ticks(lo, hi),
            },
            -0.5..(n as f64 - 0.5),
        )
        .map_err(err)?;
    let fy = move |y: &f64| {
        let i = y.round();
        if (y - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let fx = |v: &f64| {
        let r = 2f64.powf(*v);
        let p = (r - 1.0) * 100.0;
        if p.abs() >= 10.0 {
            format!("{p:+.0}%")
        } else {
            format!("{p:+.1}%")
        }
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(spec.x_label.as_str())
        .y_labels(n)
        .y_label_formatter(&fy)
        .x_label_formatter(&fx)
        .label_style((FAMILY, 12))
        .draw()
        .map_err(err)?;
    if lo < 0.0 && hi > 0.0 {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, -0.5), (0.0, n as f64 - 0.5)],
                BLACK.stroke_width(1),
            )))
            .map_err(err)?;
    }
    let l2 = |v: f64| v.max(1e-9).log2();
    for (row, &i) in order.iter().enumerate() {
        let b = &bars[i];
        let c = match b.verdict {
            Verdict::Regression | Verdict::Failed => RED,
            Verdict::Improvement => GREEN,
            _ => GREY,
        };
        let y = (n - 1 - row) as f64;
        let (bl, bh, br) = (l2(b.low), l2(b.high), l2(b.ratio));
        let (cl, ch) = (bl.max(lo), bh.min(hi));
        if ch > cl {
            chart
                .draw_series([
                    Rectangle::new([(cl, y - 0.3), (ch, y + 0.3)], c.mix(0.35).filled()),
                    Rectangle::new([(cl, y - 0.3), (ch, y + 0.3)], c.stroke_width(1)),
                ])
                .map_err(err)?;
        }
        // A clipped CI end: a triangle pointing off the axis.
        let tri = |x: f64, right: bool| {
            let d = (hi - lo) * 0.012;
            let back = if right { x - d } else { x + d };
            Polygon::new(vec![(x, y), (back, y - 0.35), (back, y + 0.35)], BLACK.filled())
        };
        if bh > hi {
            chart.draw_series(std::iter::once(tri(hi, true))).map_err(err)?;
        }
        if bl < lo {
            chart.draw_series(std::iter::once(tri(lo, false))).map_err(err)?;
        }
        if br.is_finite() && br >= lo && br <= hi {
            chart
                .draw_series(std::iter::once(Circle::new((br, y), 4, c.filled())))
                .map_err(err)?;
        }
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
    let compared = compared(runs, comparison);
    // GEMM throughput vs size, one line per dtype and image.
    let mut lines: BTreeMap<String, Vec<Pt>> = BTreeMap::new();
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
            lines
                .entry(format!("{dtype} {name}"))
                .or_default()
                .push((x, y, ci_of(m)));
            unit = m.row.unit.clone();
        }
    }
    if !lines.is_empty() {
        out.push(ChartSpec {
            name: "gemm_throughput".into(),
            title: format!("GEMM throughput vs size: {compared}"),
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
                title: format!("{title}: {compared}"),
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
    let mut lines: BTreeMap<String, Vec<Pt>> = BTreeMap::new();
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
                lines.entry(name).or_default().push((x, y, ci_of(m)));
                unit = m.row.unit.clone();
            }
        }
    }
    if !lines.is_empty() {
        out.push(ChartSpec {
            name: "allreduce_busbw".into(),
            title: format!("All-reduce bus bandwidth vs message size: {compared}"),
            x_label: "message size (bytes)".into(),
            y_label: format!("busbw ({unit})"),
            kind: line_chart(lines, true, true),
        });
    }
    if let Some(cmp) = comparison {
        // With one candidate its name is in the title; the rows need not repeat it.
        let one = cmp.candidate_labels().len() == 1;
        let bars: Vec<RatioBar> = cmp
            .comparisons
            .iter()
            .filter_map(|c| {
                let ratio = c.judgement.ratio?;
                let mut label = format!("{} {} {}", c.workload, short_case(&c.case), c.metric);
                if !one {
                    label.push_str(&format!(" ({})", c.candidate.label));
                }
                Some(RatioBar {
                    label,
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
                    "{} / baseline {}: change, 95% CI; red = regression",
                    candidates(cmp),
                    cmp.baseline
                ),
                x_label: "change (log scale); ▶ ◀ = CI beyond the axis".into(),
                y_label: String::new(),
                kind: ChartKind::Ratios { bars },
            });
        }
    }
    out
}

/// Up to three names joined, or how many there are.
fn names_or_count(names: &[&str], sep: &str, noun: &str) -> String {
    match names.len() {
        0 => "none".into(),
        1..=3 => names.join(sep),
        n => format!("{n} {noun}"),
    }
}

/// The candidates of a comparison, joined.
fn candidates(cmp: &CompareReport) -> String {
    names_or_count(&cmp.candidate_labels(), ", ", "candidates")
}

/// What a plot compares, for its title: the baseline against the candidates, or the series
/// (images or targets) of the runs.
pub fn compared(runs: &[LoadedRun], comparison: Option<&CompareReport>) -> String {
    if let Some(cmp) = comparison {
        return format!("{} vs {}", cmp.baseline, candidates(cmp));
    }
    let mut names: Vec<String> = runs
        .iter()
        .flat_map(|r| r.measurements.iter().filter(|m| m.is_metric()))
        .map(|m| {
            if m.row.image.is_empty() {
                m.row.target.clone()
            } else {
                m.row.image.clone()
            }
        })
        .collect();
    names.sort();
    names.dedup();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    names_or_count(&names, " vs ", "targets")
}

fn short_case(case: &str) -> String {
    if case.chars().count() > 40 {
        let s: String = case.chars().take(38).collect();
        format!("{s}…")
    } else {
        case.to_string()
    }
}

/// A point of a line: x, y and the CI of y where known.
type Pt = (f64, f64, Option<(f64, f64)>);

/// The CI of a row's median, when it has one.
fn ci_of(m: &Measurement) -> Option<(f64, f64)> {
    m.row.ci_low.zip(m.row.ci_high)
}

/// Lines from series of points, each sorted by x.
fn line_chart(lines: BTreeMap<String, Vec<Pt>>, log_x: bool, log_y: bool) -> ChartKind {
    ChartKind::Lines {
        lines: lines
            .into_iter()
            .map(|(label, mut pts)| {
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                Line {
                    label,
                    points: pts.iter().map(|&(x, y, _)| (x, y)).collect(),
                    ci: pts
                        .iter()
                        .filter_map(|&(x, _, c)| c.map(|(l, h)| (x, l, h)))
                        .collect(),
                }
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
                    ci: vec![(256.0, 0.9, 1.1)],
                }],
                log_x: true,
                log_y: false,
            },
        };
        let svg = render_svg(&spec).unwrap();
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }

    fn bar(label: &str, ratio: f64, low: f64, high: f64, verdict: Verdict) -> RatioBar {
        RatioBar {
            label: label.into(),
            ratio,
            low,
            high,
            verdict,
        }
    }

    #[test]
    fn ratio_axis_clips_a_wild_ci() {
        let bars = vec![
            bar("a", 1.01, 0.99, 1.03, Verdict::Same),
            bar("b", 1.10, 0.05, 25.0, Verdict::Noisy),
            bar("c", 2.0, 1.9, 2.1, Verdict::Regression),
        ];
        let (lo, hi) = ratio_axis(&bars);
        // The points (1.0 .. 2.0) are on the axis; the +2400% / -95% CI ends are not.
        assert!(lo <= 0.0 && hi >= 1.0, "{lo} {hi}");
        assert!(hi < 25f64.log2() && lo > 0.05f64.log2(), "{lo} {hi}");
        assert!(2f64.powf(hi) < 3.5, "axis stretched to {}", 2f64.powf(hi));
        // Narrow CIs are not clipped.
        assert!(2.1f64.log2() < hi);
        let svg = render_svg(&ChartSpec {
            name: "ratios".into(),
            title: "b / baseline a".into(),
            x_label: "change".into(),
            y_label: String::new(),
            kind: ChartKind::Ratios { bars },
        })
        .unwrap();
        assert!(svg.contains("<polygon"), "no clip marker");
    }

    #[test]
    fn regressions_come_first() {
        let bars = vec![
            bar("same", 1.0, 0.99, 1.01, Verdict::Same),
            bar("small", 1.1, 1.08, 1.12, Verdict::Regression),
            bar("better", 0.5, 0.45, 0.55, Verdict::Improvement),
            bar("big", 2.0, 1.9, 2.1, Verdict::Regression),
        ];
        let names: Vec<&str> = ratio_order(&bars)
            .iter()
            .map(|&i| bars[i].label.as_str())
            .collect();
        assert_eq!(names, ["big", "small", "better", "same"]);
    }

    #[test]
    fn ticks_are_round_changes() {
        let t: Vec<String> = ratio_ticks(0.9f64.log2() - 0.01, 1.25f64.log2() + 0.01)
            .iter()
            .map(|v| crate::render::num::pct(2f64.powf(*v)))
            .collect();
        assert_eq!(t, ["-10.0%", "-5.0%", "+0.0%", "+5.0%", "+10.0%", "+25.0%"]);
        let wide = ratio_ticks(-7.0, 7.0);
        assert!(wide.len() <= 13 && wide.contains(&0.0), "{wide:?}");
        assert!(
            wide.windows(2).all(|w| w[1] - w[0] >= 14.0 / 12.0 - 1e-9),
            "{wide:?}"
        );
    }

    #[test]
    fn long_labels_widen_the_chart() {
        let long =
            "attention batch=1,heads=8,kv_heads=2,seq_q=256,seq_kv=256,head_dim=64 latency (candidate:tag)";
        let spec = ChartSpec {
            name: "ratios".into(),
            title: "t".into(),
            x_label: "x".into(),
            y_label: String::new(),
            kind: ChartKind::Ratios {
                bars: vec![bar(long, 1.0, 0.9, 1.1, Verdict::Same)],
            },
        };
        let (w, _) = spec.size();
        assert!(w >= text_width(long.chars().count(), 12) + 600, "{w}");
    }
}
