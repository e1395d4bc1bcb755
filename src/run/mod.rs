//! `tagbench run` and `tagbench list`: the plan ([`plan`]: suite, filters, targets, rounds), the
//! round loop ([`scheduler`]) writing into a [`context`], one supervised worker per target and
//! round ([`supervise`]), and the end: the [`warnings`] gathered, then with two or more targets
//! the comparison of the baseline target against the others and its verdict (the run's exit
//! code, as `compare`'s), else the table ([`table`]). Rows are built only by `results::record`.

pub mod context;
pub mod fit;
pub mod plan;
pub mod scheduler;
pub mod startup;
pub mod supervise;
pub mod table;
pub mod warnings;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::compare::{compare_along, CompareOptions, CompareReport};
use crate::options::{RunOptions, SuiteOptions};
use crate::outcome::Outcome;
use crate::report::verdict;
use crate::results::{LoadedRun, RunDir, RunMeta, RunWriter, Status, SCHEMA_VERSION, STATE_COMPLETE};
use crate::{errln, out, outln};
use context::RunContext;
use plan::{filtered_cases, new_run_id, Plan};
pub use plan::{load_suite, matches_filter, resolve_targets};
use scheduler::{progress_bar, run_rounds, Done};

/// The time now, as rows and run.json write it.
pub(crate) fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `tagbench list`.
pub fn cmd_list(opts: &SuiteOptions) -> Result<Outcome> {
    let (suite, _) = load_suite(opts)?;
    let cases = filtered_cases(&suite, &opts.filter);
    for case in &cases {
        outln!("{}", case.label())?;
    }
    errln!("{} cases in suite `{}`", cases.len(), suite.name);
    Ok(if cases.is_empty() {
        Outcome::Error
    } else {
        Outcome::Complete
    })
}

/// `--resume`: the run directory, and the options the run was started with (the suite is the
/// copy in the run directory).
fn resume(opts: &RunOptions) -> Result<Option<(PathBuf, RunOptions)>> {
    let Some(r) = &opts.resume else {
        return Ok(None);
    };
    let dir = if r.is_dir() {
        r.clone()
    } else {
        opts.results_dir.join(r)
    };
    let run = RunDir::new(&dir);
    let meta = run
        .read_meta()
        .with_context(|| format!("failed to resume {}", dir.display()))?;
    let stored: Option<RunOptions> = meta
        .options
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .with_context(|| {
            format!(
                "failed to read the options stored in {}",
                run.run_json().display()
            )
        })?;
    let mut o = opts.resumed(stored.as_ref(), &meta.args, &run.run_json())?;
    o.suite.path = Some(dir.join("suite.toml"));
    o.run_id = Some(meta.run_id.clone());
    o.results_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Some((dir, o)))
}

/// A new run's run.json.
fn new_meta(plan: &Plan, opts: &RunOptions, run_id: &str) -> Result<RunMeta> {
    Ok(RunMeta {
        schema: SCHEMA_VERSION,
        run_id: run_id.to_string(),
        suite: plan.suite.name.clone(),
        suite_path: plan.suite.path.display().to_string(),
        tagbench_version: env!("CARGO_PKG_VERSION").to_string(),
        host: crate::engine::cpu::probe::host_info(),
        started_at: now(),
        finished_at: None,
        state: "running".into(),
        args: Vec::new(),
        options: Some(serde_json::to_value(opts)?),
        targets: Vec::new(),
        rounds_design: Default::default(),
    })
}

/// Creates (or, resuming, reopens) the run directory: run.json, the suite copy, what is done.
fn open_run(
    dir: &Path,
    resuming: bool,
    plan: &Plan,
    opts: &RunOptions,
    run_id: &str,
) -> Result<(RunDir, RunMeta, Done)> {
    if !resuming && dir.exists() {
        bail!(
            "run directory {} exists already (use --resume to finish it)",
            dir.display()
        );
    }
    let run = RunDir::new(dir);
    std::fs::create_dir_all(run.logs()).with_context(|| format!("failed to create {}", dir.display()))?;
    let (mut meta, done) = if resuming {
        (run.read_meta()?, Done::read(&run)?)
    } else {
        let suite_copy = dir.join("suite.toml");
        std::fs::write(&suite_copy, &plan.suite_text)
            .with_context(|| format!("failed to write {}", suite_copy.display()))?;
        (new_meta(plan, opts, run_id)?, Done::default())
    };
    meta.state = "running".into();
    run.write_meta(&meta)?;
    Ok((run, meta, done))
}

/// `tagbench run`.
pub fn cmd_run(opts: RunOptions) -> Result<Outcome> {
    let resumed = resume(&opts)?;
    let (resume_dir, opts) = match resumed {
        Some((dir, o)) => (Some(dir), o),
        None => (None, opts),
    };
    let plan = Plan::build(&opts)?;
    baseline_target(&plan, &opts)?;
    let run_id = opts
        .run_id
        .clone()
        .unwrap_or_else(|| new_run_id(&plan.suite.name));
    let dir = resume_dir
        .clone()
        .unwrap_or_else(|| opts.results_dir.join(&run_id));
    let (run, mut meta, done) = open_run(&dir, resume_dir.is_some(), &plan, &opts, &run_id)?;
    let mut writer = RunWriter::open(&run)?;
    let bar = progress_bar(plan.total_steps(), opts.no_progress);
    errln!(
        "run {run_id}: suite `{}`, {} cases × {} targets, {} rounds{} → {}",
        plan.suite.name,
        plan.cases.len(),
        plan.targets.len(),
        plan.max_rounds(),
        match plan.cases.iter().map(|c| plan::design_of(c).max_rounds).max() {
            Some(m) if m > plan.max_rounds() && plan.targets.len() > 1 =>
                format!(" (up to {m} while undecided)"),
            _ => String::new(),
        },
        dir.display()
    );
    let mut ctx = RunContext::new(&run_id, &plan.suite.name, &run, bar.clone(), done.not_ok.clone());
    run_rounds(&mut ctx, &mut writer, &plan, &done, &mut meta)?;
    // Every round is in: mark outlier rounds in results.csv (rewritten whole, so the appender
    // must be closed first).
    drop(writer);
    let outliers = crate::results::mark_outlier_rounds(&run)?;
    if outliers > 0 {
        errln!(
            "{outliers} metric row(s) of outlier rounds marked in results.csv (`outlier_round`); compare sets them aside"
        );
    }
    bar.finish_and_clear();
    meta.finished_at = Some(now());
    meta.state = STATE_COMPLETE.into();
    run.write_meta(&meta)?;
    finish(&ctx, &dir, &plan, &opts)
}

/// The target the others are compared against at the end of a run with two or more targets:
/// `--baseline`, which must name one of them, or the first. `None` with one target.
fn baseline_target(plan: &Plan, opts: &RunOptions) -> Result<Option<String>> {
    let names: Vec<String> = plan.targets.iter().map(|t| t.display_name()).collect();
    match &opts.baseline {
        Some(b) if names.len() < 2 => {
            bail!(
                "--baseline {b}: the run has one target ({}), nothing to compare it with",
                names.join(", ")
            )
        }
        Some(b) if !names.contains(b) => {
            bail!(
                "--baseline {b}: no such target; the run's targets are {}",
                names.join(", ")
            )
        }
        Some(b) => Ok(Some(b.clone())),
        None if names.len() >= 2 => Ok(Some(names[0].clone())),
        None => Ok(None),
    }
}

/// The end-of-run comparison (two or more targets): the baseline target against the others,
/// as `compare --along target --baseline TARGET RUN` judges it.
fn compare_targets(run: &LoadedRun, plan: &Plan, opts: &RunOptions) -> Result<Option<CompareReport>> {
    let Some(base) = baseline_target(plan, opts)? else {
        return Ok(None);
    };
    let copts = CompareOptions {
        allow_missing: opts.allow_missing,
        ..CompareOptions::default()
    };
    let report = compare_along(std::slice::from_ref(run), "target", &base, &copts)?;
    if report.comparisons.is_empty() {
        // Only status rows (a probe, skipped cases): the targets have no metric to compare,
        // and the run is judged as a run.
        errln!("no metric to compare between the targets: the run is judged on its rows alone");
        return Ok(None);
    }
    Ok(Some(report))
}

/// The end of a run: the warnings gathered, the counts, then with two or more targets the
/// comparison and its verdict (the exit code, as `compare`'s), else the table and the run's
/// verdict; the report (with the comparison).
fn finish(ctx: &RunContext, dir: &Path, plan: &Plan, opts: &RunOptions) -> Result<Outcome> {
    let run = LoadedRun::load(dir)?;
    for line in ctx.warnings.lines() {
        errln!("{line}");
    }
    errln!(
        "{} ok, {} skipped, {} failed rows; results in {}",
        ctx.count(Status::Ok),
        ctx.count(Status::Skipped),
        ctx.count(Status::Failed),
        ctx.run.results_csv().display()
    );
    let comparison = compare_targets(&run, plan, opts)?;
    match &comparison {
        Some(c) => out!("{}", crate::compare::render(c, crate::render::Format::Table)?)?,
        None => out!("{}", table::render(&run.measurements))?,
    }
    let summary = match &comparison {
        Some(c) => verdict::of_comparison(c),
        None => verdict::of_runs(std::slice::from_ref(&run), false),
    };
    outln!("\n{}", verdict::text(&summary).trim_end())?;
    let outcome = summary.outcome;
    if !opts.no_report {
        // A report that cannot be written must not hide the results, which are on disk.
        match crate::report::write_run_report(run.clone(), comparison.clone(), &opts.report_dir) {
            Ok(index) => errln!("report in {}", index.display()),
            Err(e) => errln!("warning: failed to write the report: {e:#}"),
        }
    }
    Ok(outcome)
}
