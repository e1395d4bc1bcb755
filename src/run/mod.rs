//! `tagbench run` and `tagbench list`: the plan ([`plan`]: suite, filters, targets, rounds), the
//! round loop ([`scheduler`]) writing into a [`context`], one supervised worker per target and
//! round ([`supervise`]), and the end: the [`warnings`] gathered, then with two or more targets
//! the comparison of the baseline target against the others and its verdict (the run's exit
//! code, as `compare`'s), else the table ([`table`]). Rows are built only by `results::record`.

pub mod context;
pub mod fit;
pub mod paired;
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
use crate::results::lock::Liveness;
use crate::results::{
    check_run_id, LoadedRun, RunBusy, RunDir, RunLock, RunMeta, RunWriter, Status, SCHEMA_VERSION,
    STATE_COMPLETE, STATE_RUNNING,
};
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
        state: STATE_RUNNING.into(),
        args: Vec::new(),
        options: Some(serde_json::to_value(opts)?),
        targets: Vec::new(),
        rounds_design: Default::default(),
        pairing: Default::default(),
        duty_cycle: None,
    })
}

/// An open run: its directory (locked by this process), run.json, what is done, its id.
struct OpenRun {
    run: RunDir,
    meta: RunMeta,
    done: Done,
    run_id: String,
    lock: RunLock,
}

/// Creates (or, resuming, reopens) the run directory and takes its lock (a run another process
/// writes is refused, naming it): run.json, the suite copy, what is done. A new run's directory
/// is created atomically, so two runs started in the same second cannot share one: a generated
/// id that is taken gets a suffix (`-2`, `-3`, …); an id given with `--run-id` is refused.
fn open_run(dir: &Path, resuming: bool, plan: &Plan, opts: &RunOptions, run_id: &str) -> Result<OpenRun> {
    if resuming {
        let run = RunDir::new(dir);
        let lock = run.lock()?;
        std::fs::create_dir_all(run.logs()).with_context(|| format!("failed to create {}", dir.display()))?;
        let mut meta = run.read_meta()?;
        let dropped = crate::results::drop_orphan_samples(&run)?;
        if dropped > 0 {
            errln!(
                "resume: dropped {dropped} sample(s) of cases cut short before their row was written (samples.csv); those cases are measured again"
            );
        }
        let done = Done::read(&run)?;
        meta.state = STATE_RUNNING.into();
        meta.finished_at = None;
        run.write_meta(&meta)?;
        return Ok(OpenRun {
            run,
            meta,
            done,
            run_id: run_id.to_string(),
            lock,
        });
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("failed to create {}", parent.display()))?;
    let (dir, run_id) = create_run_dir(dir, run_id, opts.run_id.is_none())?;
    let run = RunDir::new(&dir);
    let lock = run.lock()?;
    std::fs::create_dir_all(run.logs()).with_context(|| format!("failed to create {}", dir.display()))?;
    let suite_copy = dir.join("suite.toml");
    std::fs::write(&suite_copy, &plan.suite_text)
        .with_context(|| format!("failed to write {}", suite_copy.display()))?;
    let meta = new_meta(plan, opts, &run_id)?;
    run.write_meta(&meta)?;
    Ok(OpenRun {
        run,
        meta,
        done: Done::default(),
        run_id,
        lock,
    })
}

/// Creates a new run's directory (`create_dir`: one process wins it); with a generated id, the
/// next free suffix. A taken directory is refused: naming the process that writes it, or
/// suggesting `--resume` when none does.
fn create_run_dir(dir: &Path, run_id: &str, generated: bool) -> Result<(PathBuf, String)> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    for n in 1..=100 {
        let id = if n == 1 {
            run_id.to_string()
        } else {
            format!("{run_id}-{n}")
        };
        let candidate = parent.join(&id);
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok((candidate, id)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && generated => continue,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Liveness::Live(holder) = RunDir::new(&candidate).liveness()? {
                    return Err(RunBusy { run: id, holder }.into());
                }
                bail!(
                    "run directory {} exists already (use --resume to finish it)",
                    candidate.display()
                );
            }
            Err(e) => return Err(e).with_context(|| format!("failed to create {}", candidate.display())),
        }
    }
    bail!(
        "failed to create a run directory: {} and its suffixes -2 … -100 are all taken",
        dir.display()
    )
}

/// On SIGINT/SIGTERM, once the workers are gone: run.json says `interrupted`, and where the
/// partial run is and how to finish it.
fn say_where_on_interrupt(run: &RunDir) {
    let run = run.clone();
    crate::sys::interrupt::on_interrupt_last(&format!("run {}", run.root.display()), move || {
        match run.mark_interrupted() {
            Ok(true) => {
                let dir = run.root.display();
                eprintln!("interrupted: partial run in {dir}; finish it with `tagbench run --resume {dir}`");
            }
            Ok(false) => {}
            Err(e) => eprintln!("error: failed to record the interrupt in run.json: {e:#}"),
        }
    });
}

/// `tagbench run`.
pub fn cmd_run(opts: RunOptions) -> Result<Outcome> {
    if let Some(id) = &opts.run_id {
        check_run_id(id).map_err(|e| anyhow::anyhow!("bad --run-id: {e}"))?;
    }
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
    let OpenRun {
        run,
        mut meta,
        done,
        run_id,
        lock: _lock,
    } = open_run(&dir, resume_dir.is_some(), &plan, &opts, &run_id)?;
    let dir = run.root.clone();
    say_where_on_interrupt(&run);
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
    if let Err(e) = run_rounds(&mut ctx, &mut writer, &plan, &done, &mut meta) {
        // Stopped before its end: run.json must not keep saying `running` once nothing writes
        // the run.
        bar.finish_and_clear();
        if let Err(m) = run.mark_interrupted() {
            errln!("warning: failed to record the stop in run.json: {m:#}");
        }
        return Err(e);
    }
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
    let duty = ctx.duty_cycle();
    errln!("{}", duty_line(&duty));
    meta.duty_cycle = Some(duty);
    meta.finished_at = Some(now());
    meta.state = STATE_COMPLETE.into();
    run.write_meta(&meta)?;
    finish(&ctx, &dir, &plan, &opts)
}

/// What the end of a run says of its duty cycle.
fn duty_line(d: &crate::results::DutyCycle) -> String {
    let mut line = format!(
        "duty cycle: {:.1} s of {:.1} s in timed samples ({:.0}%)",
        d.timed_s,
        d.wall_s,
        d.share * 100.0
    );
    if d.batches > 0 {
        line.push_str(&format!(
            "; {} paired batches, {:.1} ms mean settling after each",
            d.batches, d.settle_ms_mean
        ));
        if d.unsettled > 0 {
            line.push_str(&format!(
                " ({} did not go idle within {} ms)",
                d.unsettled,
                crate::measure::settle::MAX_SETTLE.as_millis()
            ));
        }
    }
    line
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
