//! Reports of runs: `index.html` (self-contained), `summary.md`, and SVG + PNG plots, written by
//! small reporters behind one trait and fanned out by a manager (as hyperfine's ExportManager).

pub mod html;
pub mod markdown;
pub mod plot;
pub mod verdict;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cli::ReportArgs;
use crate::compare::{compare_along, compare_runs, CompareOptions, CompareReport, LoadedRun};
use crate::outcome::Outcome;
use crate::{errln, outln};

/// What every reporter sees: the runs, an optional comparison and the drawn plots.
pub struct ReportData {
    pub title: String,
    pub runs: Vec<LoadedRun>,
    pub comparison: Option<CompareReport>,
    /// Without a comparison: whether partial runs are reported for what they have
    /// (`--allow-partial`) rather than as incomplete (a comparison carries its own options).
    pub allow_partial: bool,
    pub charts: Vec<plot::ChartSpec>,
    /// The charts drawn as SVG documents, in `charts` order.
    pub svgs: Vec<String>,
}

/// Writes one kind of output into the report directory; returns the files written.
pub trait Reporter {
    fn name(&self) -> &'static str;
    fn write(&self, data: &ReportData, out: &Path) -> Result<Vec<PathBuf>>;
}

/// Writes each plot as `<name>.svg` and `<name>.png`.
pub struct PlotFiles;

impl Reporter for PlotFiles {
    fn name(&self) -> &'static str {
        "plots"
    }
    fn write(&self, data: &ReportData, out: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for (spec, svg) in data.charts.iter().zip(&data.svgs) {
            let svg_path = out.join(format!("{}.svg", spec.name));
            std::fs::write(&svg_path, svg)
                .with_context(|| format!("failed to write {}", svg_path.display()))?;
            let png_path = out.join(format!("{}.png", spec.name));
            plot::render_png(spec, &png_path)
                .with_context(|| format!("failed to write {}", png_path.display()))?;
            files.extend([svg_path, png_path]);
        }
        Ok(files)
    }
}

/// Runs every reporter.
pub struct ReportManager {
    reporters: Vec<Box<dyn Reporter>>,
}

impl Default for ReportManager {
    fn default() -> Self {
        ReportManager {
            reporters: vec![
                Box::new(PlotFiles),
                Box::new(html::HtmlReport),
                Box::new(markdown::MarkdownSummary),
            ],
        }
    }
}

impl ReportManager {
    pub fn write(&self, data: &ReportData, out: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out).with_context(|| format!("failed to create {}", out.display()))?;
        let mut files = Vec::new();
        for r in &self.reporters {
            files.extend(
                r.write(data, out)
                    .with_context(|| format!("failed to write the {} report", r.name()))?,
            );
        }
        Ok(files)
    }
}

/// Draws the plots and assembles the data of a report.
pub fn build(
    title: String,
    runs: Vec<LoadedRun>,
    comparison: Option<CompareReport>,
    allow_partial: bool,
) -> Result<ReportData> {
    let charts = plot::charts(&runs, comparison.as_ref());
    let svgs = charts.iter().map(plot::render_svg).collect::<Result<Vec<_>>>()?;
    Ok(ReportData {
        title,
        runs,
        comparison,
        allow_partial,
        charts,
        svgs,
    })
}

/// Writes the report of one finished run, with its comparison of targets when it has one, to
/// `report_dir/<run-id>/` (called at the end of `tagbench run`); returns the index.html path.
pub fn write_run_report(
    run: LoadedRun,
    comparison: Option<CompareReport>,
    report_dir: &Path,
) -> Result<PathBuf> {
    let out = report_dir.join(run.name());
    let title = format!("tagbench run {}", run.name());
    let data = build(title, vec![run], comparison, false)?;
    ReportManager::default().write(&data, &out)?;
    Ok(out.join("index.html"))
}

/// `tagbench report`: exits with the outcome its verdict prints.
pub fn cmd_report(args: ReportArgs) -> Result<Outcome> {
    let opts = CompareOptions::from_args(&args.stats, &args.gate)?;
    let mut runs = args
        .runs
        .iter()
        .map(|p| LoadedRun::load(p))
        .collect::<Result<Vec<_>>>()?;
    let comparison = match (&args.along, &args.baseline) {
        (Some(col), Some(value)) => {
            let c = compare_along(&runs, col, value, &opts)?;
            c.ensure_matched()?;
            Some(c)
        }
        (None, Some(base)) => {
            let base_run = LoadedRun::load(Path::new(base))?;
            if runs.len() != 1 {
                bail!("--baseline RUN compares one candidate run; give one RUN (or use --along)");
            }
            let c = compare_runs(&base_run, &runs[0], &opts)?;
            c.ensure_matched()?;
            runs.insert(0, base_run);
            Some(c)
        }
        _ => None,
    };
    let names: Vec<String> = runs.iter().map(LoadedRun::name).collect();
    let title = format!("tagbench report: {}", names.join(", "));
    let data = build(title, runs, comparison, opts.allow_partial)?;
    let files = ReportManager::default().write(&data, &args.out)?;
    errln!("wrote {} files to {}", files.len(), args.out.display());
    outln!("{}", args.out.join("index.html").display())?;
    let summary = verdict::of(&data);
    if let Some(c) = &data.comparison {
        errln!("{}", c.summary_line());
    }
    for line in &summary.gate {
        errln!("{line}");
    }
    errln!("exit {}: {}", summary.exit_code(), summary.outcome.meaning());
    Ok(summary.outcome)
}
