//! The host side of a run: targets × cases through an executor, protocol lines into CSV rows
//! (written and flushed per case), progress on stderr, a table at the end, `--resume`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::case::Case;
use crate::cli::{ListArgs, RunArgs, SuiteArgs};
use crate::error::{EXIT_ERROR, EXIT_OK};
use crate::executor::{self, Executor, LineEvent};
use crate::protocol::{Job, Message};
use crate::results::{ResultRow, RunDir, RunMeta, RunWriter, SampleRow, Status, TargetMeta, SCHEMA_VERSION};
use crate::suite::{GpuSelection, Suite, TargetSpec, EMBEDDED_SMOKE};

/// Reads the suite named on the command line (or the embedded smoke suite).
pub fn load_suite(args: &SuiteArgs) -> Result<(Suite, String)> {
    let (text, path) = match &args.suite {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("failed to read suite {}", p.display()))?,
            p.clone(),
        ),
        None => (
            EMBEDDED_SMOKE.to_string(),
            PathBuf::from("suites/smoke.toml (embedded)"),
        ),
    };
    let suite = Suite::parse(&text, &path, &args.set)?;
    Ok((suite, text))
}

/// Whether a case's `workload/case` label matches any filter (all match when there are none).
pub fn matches_filter(filters: &[String], label: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| glob_contains(f, label))
}

/// Substring match where `*` matches any run of characters.
fn glob_contains(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut pos = 0;
    for p in parts {
        match text[pos..].find(p) {
            Some(i) => pos += i + p.len(),
            None => return false,
        }
    }
    true
}

pub fn cmd_list(args: ListArgs) -> Result<i32> {
    let (suite, _) = load_suite(&args.suite)?;
    let mut n = 0;
    for case in suite
        .cases()
        .filter(|c| matches_filter(&args.suite.filter, &c.label()))
    {
        println!("{}", case.label());
        n += 1;
    }
    eprintln!("{n} cases in suite `{}`", suite.name);
    Ok(if n == 0 { EXIT_ERROR } else { EXIT_OK })
}

/// The targets of a run after command-line overrides.
pub fn resolve_targets(suite: &Suite, args: &RunArgs) -> Result<Vec<TargetSpec>> {
    let base = suite.targets.first().cloned().unwrap_or_else(TargetSpec::local);
    let mut targets = if args.images.is_empty() {
        if suite.targets.is_empty() {
            vec![TargetSpec::local()]
        } else {
            suite.targets.clone()
        }
    } else {
        args.images
            .iter()
            .map(|img| TargetSpec {
                name: None,
                image: Some(img.clone()),
                local: false,
                ..base.clone()
            })
            .collect()
    };
    let gpus = args
        .gpus
        .as_deref()
        .map(GpuSelection::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    for t in &mut targets {
        if let Some(e) = args.engine {
            t.engine = Some(e);
        }
        if let Some(d) = args.device {
            t.device = Some(d);
        }
        if let Some(g) = &gpus {
            t.gpus = g.clone();
        }
        if let Some(p) = args.pull {
            t.pull = Some(p);
        }
    }
    let targets = executor::gpus::expand_gpu_each(targets, executor::gpus::host_gpu_count)?;
    let mut seen = HashSet::new();
    for t in &targets {
        if !seen.insert(t.display_name()) {
            bail!(
                "target `{}` appears twice; give the targets distinct names",
                t.display_name()
            );
        }
    }
    Ok(targets)
}

fn new_run_id(suite: &str) -> String {
    let safe: String = suite
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}-{}", chrono::Local::now().format("%Y%m%d-%H%M%S"), safe)
}

fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn cmd_run(mut args: RunArgs) -> Result<i32> {
    // --resume: the suite and options are those the run was started with.
    let mut resume_dir = None;
    if let Some(r) = args.resume.clone() {
        let dir = if r.is_dir() {
            r.clone()
        } else {
            args.results_dir.join(&r)
        };
        let run = RunDir::new(&dir);
        let meta = run
            .read_meta()
            .with_context(|| format!("failed to resume {}", dir.display()))?;
        let mut argv = vec!["tagbench".to_string(), "run".to_string()];
        argv.extend(meta.args.iter().cloned());
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(&argv).with_context(|| {
            format!(
                "failed to read the options stored in {}",
                run.run_json().display()
            )
        })?;
        let crate::cli::Command::Run(mut stored) = cli.command else {
            bail!("run.json holds no run options")
        };
        stored.suite.suite = Some(dir.join("suite.toml"));
        stored.run_id = Some(meta.run_id.clone());
        stored.results_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        stored.no_progress |= args.no_progress;
        stored.report_dir = args.report_dir.clone();
        stored.no_report |= args.no_report;
        args = stored;
        resume_dir = Some(dir);
    }

    let (suite, suite_text) = load_suite(&args.suite)?;
    let targets = resolve_targets(&suite, &args)?;
    let cases: Vec<Case> = suite
        .cases()
        .filter(|c| matches_filter(&args.suite.filter, &c.label()))
        .cloned()
        .collect();
    if cases.is_empty() {
        bail!(
            "no case of suite `{}` matches the filters {:?}",
            suite.name,
            args.suite.filter
        );
    }

    let run_id = args.run_id.clone().unwrap_or_else(|| new_run_id(&suite.name));
    let dir = match &resume_dir {
        Some(d) => d.clone(),
        None => {
            let d = args.results_dir.join(&run_id);
            if d.exists() {
                bail!(
                    "run directory {} exists already (use --resume to finish it)",
                    d.display()
                );
            }
            d
        }
    };
    let run = RunDir::new(&dir);
    std::fs::create_dir_all(run.logs()).with_context(|| format!("failed to create {}", dir.display()))?;

    let mut not_ok = HashSet::new();
    let (mut meta, done) = if resume_dir.is_some() {
        let meta = run.read_meta()?;
        let rows = crate::results::read_results(&run)?;
        let done: HashSet<(String, String, String, usize)> = rows
            .iter()
            .map(|r| {
                (
                    r.target.clone(),
                    r.workload.clone(),
                    r.case.clone(),
                    r.round.unwrap_or(0),
                )
            })
            .collect();
        not_ok.extend(
            rows.into_iter()
                .filter(|r| r.status != Status::Ok)
                .map(|r| (r.target, r.workload, r.case)),
        );
        (meta, done)
    } else {
        std::fs::write(dir.join("suite.toml"), &suite_text)?;
        let meta = RunMeta {
            schema: SCHEMA_VERSION,
            run_id: run_id.clone(),
            suite: suite.name.clone(),
            suite_path: suite.path.display().to_string(),
            tagbench_version: env!("CARGO_PKG_VERSION").to_string(),
            host: crate::engine::cpu::probe::host_info(),
            started_at: now(),
            finished_at: None,
            state: "running".into(),
            args: stored_args(&args),
            targets: Vec::new(),
        };
        (meta, HashSet::new())
    };
    meta.state = "running".into();
    run.write_meta(&meta)?;
    let mut writer = RunWriter::open(&run)?;

    let total = targets.len() * cases.iter().map(rounds_of).sum::<usize>();
    let bar = if args.no_progress || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}")
            .expect("valid template"),
    );
    eprintln!(
        "run {run_id}: suite `{}`, {} cases × {} targets, up to {} rounds → {}",
        suite.name,
        cases.len(),
        targets.len(),
        cases.iter().map(rounds_of).max().unwrap_or(1),
        dir.display()
    );

    let mut ctx = RunContext {
        run_id: run_id.clone(),
        suite: suite.name.clone(),
        run: run.clone(),
        bar: bar.clone(),
        counts: BTreeMap::new(),
        round: 0,
        not_ok,
    };
    // Round by round, each target in a fresh worker; the order of targets alternates (A B, B A,
    // ...) so that drift over time affects every side alike.
    let max_rounds = cases.iter().map(rounds_of).max().unwrap_or(1);
    let mut prepared: Vec<Option<Option<Prepared>>> = targets.iter().map(|_| None).collect();
    for round in 0..max_rounds {
        ctx.round = round;
        let order: Vec<usize> = if round % 2 == 0 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        for ti in order {
            let target = &targets[ti];
            let tname = target.display_name();
            let due: Vec<&Case> = cases.iter().filter(|c| round < rounds_of(c)).collect();
            let pending: Vec<Case> = due
                .iter()
                .filter(|c| !done.contains(&(tname.clone(), c.workload.clone(), c.id.clone(), round)))
                // A case that was skipped or failed is not measured again in later rounds.
                .filter(|c| {
                    round == 0
                        || !ctx
                            .not_ok
                            .contains(&(tname.clone(), c.workload.clone(), c.id.clone()))
                })
                .map(|c| (*c).clone())
                .collect();
            bar.inc((due.len() - pending.len()) as u64);
            if pending.is_empty() {
                continue;
            }
            let slot = &mut prepared[ti];
            if slot.is_none() {
                *slot = Some(prepare_target(&mut ctx, &mut writer, target, &pending)?);
            }
            let Some(Some(p)) = slot.as_mut() else {
                continue;
            };
            run_target(&mut ctx, &mut writer, target, p, pending)?;
            meta.targets.retain(|t| t.name != p.meta.name);
            meta.targets.push(p.meta.clone());
            run.write_meta(&meta)?;
        }
    }
    bar.finish_and_clear();
    meta.finished_at = Some(now());
    meta.state = "complete".into();
    run.write_meta(&meta)?;

    print_table(&crate::compare::LoadedRun::load(&dir)?.measurements);
    let failed = ctx.counts.get(&Status::Failed).copied().unwrap_or(0);
    eprintln!(
        "{} ok, {} skipped, {} failed rows; results in {}",
        ctx.counts.get(&Status::Ok).copied().unwrap_or(0),
        ctx.counts.get(&Status::Skipped).copied().unwrap_or(0),
        failed,
        run.results_csv().display()
    );
    if !args.no_report {
        // A report that cannot be written must not hide the results, which are on disk.
        match crate::report::write_run_report(&dir, &args.report_dir) {
            Ok(index) => eprintln!("report in {}", index.display()),
            Err(e) => eprintln!("warning: failed to write the report: {e:#}"),
        }
    }
    Ok(if failed > 0 { EXIT_ERROR } else { EXIT_OK })
}

/// The options to store in run.json so that `--resume` can rebuild the same run.
fn stored_args(args: &RunArgs) -> Vec<String> {
    let mut v = Vec::new();
    for s in &args.suite.set {
        v.extend(["--set".to_string(), s.clone()]);
    }
    for f in &args.suite.filter {
        v.extend(["--filter".to_string(), f.clone()]);
    }
    for i in &args.images {
        v.extend(["--image".to_string(), i.clone()]);
    }
    if let Some(e) = args.engine {
        v.extend(["--engine".to_string(), e.as_str().to_string()]);
    }
    if let Some(d) = args.device {
        v.extend(["--device".to_string(), d.as_str().to_string()]);
    }
    if let Some(g) = &args.gpus {
        v.extend(["--gpus".to_string(), g.clone()]);
    }
    if let Some(p) = args.pull {
        let p = clap::ValueEnum::to_possible_value(&p)
            .expect("value")
            .get_name()
            .to_string();
        v.extend(["--pull".to_string(), p]);
    }
    v
}

struct RunContext {
    run_id: String,
    suite: String,
    run: RunDir,
    bar: ProgressBar,
    counts: BTreeMap<Status, usize>,
    /// The round being measured (0-based).
    round: usize,
    /// (target, workload, case) that were skipped or failed: not run again in later rounds.
    not_ok: HashSet<(String, String, String)>,
}

/// How many rounds a case is measured in (the probe reports facts: once is enough).
fn rounds_of(c: &Case) -> usize {
    if c.kind == crate::case::WorkloadKind::Probe {
        1
    } else {
        c.measure.rounds.max(1)
    }
}

/// A target whose executor is ready.
struct Prepared {
    exec: Box<dyn Executor>,
    meta: TargetMeta,
}

/// Rows of the case being received, written when the case ends.
#[derive(Default)]
struct CaseBuffer {
    case: Option<(String, String)>,
    started_at: String,
    rows: Vec<ResultRow>,
    samples: Vec<SampleRow>,
    sample_index: BTreeMap<String, usize>,
}

/// Prepares a target once for all rounds; `None` (after writing failed rows for `pending`) when it
/// cannot run.
fn prepare_target(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    target: &TargetSpec,
    pending: &[Case],
) -> Result<Option<Prepared>> {
    let tname = target.display_name();
    let mut exec: Box<dyn Executor> = executor::for_target(target, &ctx.run_id)?;
    match exec.prepare(target) {
        Ok(mut meta) => {
            if meta.name.is_empty() {
                meta.name = tname;
            }
            Ok(Some(Prepared { exec, meta }))
        }
        Err(e) => {
            let reason = format!("{e:#}");
            ctx.bar.suspend(|| eprintln!("error: target {tname}: {reason}"));
            let meta = TargetMeta {
                name: tname.clone(),
                executor: exec.name().into(),
                image: target.image.clone().unwrap_or_default(),
                ..Default::default()
            };
            for c in pending {
                let row = status_row(ctx, &meta, target, c, Status::Failed, &reason, &now());
                write_case(ctx, writer, vec![row], vec![])?;
            }
            Ok(None)
        }
    }
}

fn run_target(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    target: &TargetSpec,
    prepared: &mut Prepared,
    mut pending: Vec<Case>,
) -> Result<()> {
    let tname = target.display_name();
    let Prepared { exec, meta: tmeta } = prepared;
    let safe_name: String = tname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut attempt = 0;
    while !pending.is_empty() {
        attempt += 1;
        let log = ctx
            .run
            .logs()
            .join(format!("{safe_name}-r{}-{attempt}.log", ctx.round));
        let job = Job {
            run_id: ctx.run_id.clone(),
            engine: target.engine.unwrap_or_default(),
            device: target.device.unwrap_or_default(),
            gpus: match &target.gpus {
                GpuSelection::List(l) => l.clone(),
                _ => Vec::new(),
            },
            cases: pending.clone(),
        };
        let mut worker = match exec.start(target, &job, &log) {
            Ok(w) => w,
            Err(e) => {
                let reason = format!("could not start the worker: {e:#}");
                ctx.bar.suspend(|| eprintln!("error: target {tname}: {reason}"));
                for c in &pending {
                    let row = status_row(ctx, tmeta, target, c, Status::Failed, &reason, &now());
                    write_case(ctx, writer, vec![row], vec![])?;
                }
                break;
            }
        };
        // Starting a container (or an engine) takes time; the first case's limit starts now.
        let mut deadline = Instant::now() + secs(pending[0].measure.timeout_s) + Duration::from_secs(60);
        let mut buf = CaseBuffer::default();
        let mut line_no = 0usize;
        let mut finished = false;
        let mut abort_reason = None;
        loop {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            match worker.next_line(wait) {
                LineEvent::Line(line) => {
                    line_no += 1;
                    let msg = match Message::parse(&line) {
                        Ok(m) => m,
                        Err(e) => {
                            let shown: String = line.chars().take(200).collect();
                            ctx.bar.suspend(|| eprintln!("warning: target {tname}: protocol error on worker stdout line {line_no}: {e}: `{shown}`"));
                            continue;
                        }
                    };
                    match msg {
                        Message::Env { info } => tmeta.env.extend(info),
                        Message::Start { case, workload } => {
                            flush_case(ctx, writer, &mut buf, &mut pending, target, tmeta)?;
                            let c = pending.iter().find(|c| c.id == case && c.workload == workload);
                            deadline = Instant::now() + secs(c.map_or(300.0, |c| c.measure.timeout_s));
                            ctx.bar.set_message(format!("{tname}: {workload}/{case}"));
                            buf.case = Some((workload, case));
                            buf.started_at = now();
                        }
                        Message::Sample {
                            case,
                            workload,
                            metric,
                            value,
                        } => {
                            let idx = buf.sample_index.entry(metric.clone()).or_insert(0);
                            buf.samples.push(SampleRow {
                                run_id: ctx.run_id.clone(),
                                image: tmeta.image.clone(),
                                image_id: tmeta.image_id.clone(),
                                gpu_index: tmeta.gpu_index,
                                workload,
                                case,
                                metric,
                                sample: *idx,
                                value,
                                target: tname.clone(),
                                engine: tmeta.engine.clone(),
                                round: Some(ctx.round),
                            });
                            *idx += 1;
                        }
                        Message::Summary {
                            case,
                            workload,
                            metric,
                            unit,
                            better,
                            summary,
                            device,
                            gpu_name,
                            gpu_index,
                        } => {
                            let s = summary;
                            buf.rows.push(ResultRow {
                                schema: SCHEMA_VERSION,
                                run_id: ctx.run_id.clone(),
                                suite: ctx.suite.clone(),
                                workload,
                                case,
                                engine: tmeta.engine.clone(),
                                executor: tmeta.executor.clone(),
                                image: tmeta.image.clone(),
                                image_id: tmeta.image_id.clone(),
                                // A container numbers its GPUs from 0; the target knows the host's index.
                                gpu_index: tmeta.gpu_index.or(gpu_index),
                                gpu_name,
                                device,
                                metric,
                                unit,
                                better: better.as_str().into(),
                                n: Some(s.n),
                                median: Some(s.median),
                                mean: Some(s.mean),
                                stddev: Some(s.stddev),
                                min: Some(s.min),
                                max: Some(s.max),
                                p05: Some(s.p05),
                                p95: Some(s.p95),
                                ci_low: Some(s.ci_low),
                                ci_high: Some(s.ci_high),
                                status: Status::Ok,
                                reason: String::new(),
                                started_at: buf.started_at.clone(),
                                outliers: Some(s.outliers),
                                target: tname.clone(),
                                round: Some(ctx.round),
                            });
                        }
                        Message::Status {
                            case,
                            workload,
                            reason,
                        } => {
                            let c = case_of(&pending, &workload, &case);
                            buf.rows.push(status_row(
                                ctx,
                                tmeta,
                                target,
                                &c,
                                Status::Ok,
                                &reason,
                                &buf.started_at,
                            ));
                        }
                        Message::Skip {
                            case,
                            workload,
                            reason,
                        } => {
                            let c = case_of(&pending, &workload, &case);
                            buf.rows.push(status_row(
                                ctx,
                                tmeta,
                                target,
                                &c,
                                Status::Skipped,
                                &reason,
                                &buf.started_at,
                            ));
                        }
                        Message::Error {
                            case,
                            workload,
                            reason,
                        } => {
                            let c = case_of(&pending, &workload, &case);
                            ctx.bar
                                .suspend(|| eprintln!("error: {tname}: {workload}/{case}: {reason}"));
                            buf.rows.push(status_row(
                                ctx,
                                tmeta,
                                target,
                                &c,
                                Status::Failed,
                                &reason,
                                &buf.started_at,
                            ));
                        }
                        Message::Warning {
                            case,
                            workload,
                            message,
                        } => {
                            ctx.bar
                                .suspend(|| eprintln!("warning: {tname}: {workload}/{case}: {message}"));
                        }
                        Message::Done => {
                            flush_case(ctx, writer, &mut buf, &mut pending, target, tmeta)?;
                            finished = true;
                            break;
                        }
                    }
                }
                LineEvent::Eof => break,
                LineEvent::Timeout => {
                    if Instant::now() >= deadline {
                        let limit = buf
                            .case
                            .as_ref()
                            .and_then(|(w, c)| pending.iter().find(|p| &p.workload == w && &p.id == c))
                            .map_or(pending[0].measure.timeout_s, |c| c.measure.timeout_s);
                        abort_reason = Some(format!(
                            "timed out after {limit} s (timeout_s); the worker was killed"
                        ));
                        let _ = worker.kill();
                        break;
                    }
                }
            }
        }
        let exit = worker.finish();
        if finished {
            break;
        }
        // The worker died or hung inside a case: that case fails, the rest run in a new worker.
        let reason = match abort_reason {
            Some(r) => r,
            None => match exit {
                Ok(info) => format!("worker ended during the case: {info}"),
                Err(e) => format!("worker ended during the case: {e:#}"),
            },
        };
        let (w, c) = buf
            .case
            .clone()
            .unwrap_or_else(|| (pending[0].workload.clone(), pending[0].id.clone()));
        let case = case_of(&pending, &w, &c);
        ctx.bar.suspend(|| eprintln!("error: {tname}: {w}/{c}: {reason}"));
        let started = if buf.started_at.is_empty() {
            now()
        } else {
            buf.started_at.clone()
        };
        let row = status_row(ctx, tmeta, target, &case, Status::Failed, &reason, &started);
        buf = CaseBuffer {
            case: Some((w, c)),
            rows: vec![row],
            ..Default::default()
        };
        flush_case(ctx, writer, &mut buf, &mut pending, target, tmeta)?;
    }
    Ok(())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e7))
}

fn case_of(pending: &[Case], workload: &str, id: &str) -> Case {
    pending
        .iter()
        .find(|c| c.workload == workload && c.id == id)
        .cloned()
        .unwrap_or_else(|| Case {
            workload: workload.into(),
            kind: crate::case::WorkloadKind::Probe,
            id: id.into(),
            params: Default::default(),
            measure: Default::default(),
        })
}

fn status_row(
    ctx: &RunContext,
    meta: &TargetMeta,
    target: &TargetSpec,
    case: &Case,
    status: Status,
    reason: &str,
    started_at: &str,
) -> ResultRow {
    ResultRow {
        schema: SCHEMA_VERSION,
        run_id: ctx.run_id.clone(),
        suite: ctx.suite.clone(),
        workload: case.workload.clone(),
        case: case.id.clone(),
        engine: target.engine.unwrap_or_default().as_str().into(),
        executor: if meta.executor.is_empty() {
            if target.is_local() {
                "local".into()
            } else {
                "docker".into()
            }
        } else {
            meta.executor.clone()
        },
        image: meta.image.clone(),
        image_id: meta.image_id.clone(),
        gpu_index: meta.gpu_index,
        device: target.device.unwrap_or_default().as_str().into(),
        status,
        reason: reason.to_string(),
        started_at: started_at.to_string(),
        target: target.display_name(),
        round: Some(ctx.round),
        ..Default::default()
    }
}

fn flush_case(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    buf: &mut CaseBuffer,
    pending: &mut Vec<Case>,
    target: &TargetSpec,
    tmeta: &TargetMeta,
) -> Result<()> {
    let Some((w, c)) = buf.case.take() else {
        return Ok(());
    };
    let mut rows = std::mem::take(&mut buf.rows);
    let samples = std::mem::take(&mut buf.samples);
    buf.sample_index.clear();
    if rows.is_empty() {
        // A case that ended without any result is a worker bug; record it rather than lose it.
        let case = case_of(pending, &w, &c);
        let reason = "the worker reported nothing for this case";
        rows.push(status_row(
            ctx,
            tmeta,
            target,
            &case,
            Status::Failed,
            reason,
            &buf.started_at,
        ));
    }
    pending.retain(|p| !(p.workload == w && p.id == c));
    write_case(ctx, writer, rows, samples)
}

fn write_case(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    rows: Vec<ResultRow>,
    samples: Vec<SampleRow>,
) -> Result<()> {
    writer.write_case(&rows, &samples)?;
    for r in &rows {
        *ctx.counts.entry(r.status).or_default() += 1;
        if r.status != Status::Ok {
            ctx.not_ok
                .insert((r.target.clone(), r.workload.clone(), r.case.clone()));
        }
    }
    ctx.bar.inc(1);
    Ok(())
}

/// The short table printed at the end of a run: one line per (target, case, metric), rounds
/// pooled; `rounds` is how many worker processes measured it and how far their medians spread
/// (half the range, relative to the pooled median): the process-to-process noise that
/// comparisons judge against.
pub fn print_table(measurements: &[crate::compare::Measurement]) {
    const RIGHT: [usize; 3] = [4, 6, 7];
    let mut lines = vec![[
        "target",
        "workload",
        "case",
        "metric",
        "median",
        "unit",
        "±ci",
        "rounds ±",
        "status",
    ]
    .map(String::from)
    .to_vec()];
    for m in measurements {
        let r = &m.row;
        let (median, ci) = match (r.median, r.ci_low, r.ci_high, r.n) {
            // Fewer than 6 samples have no 95% CI of the median: say how many there were.
            (Some(m), _, _, Some(n)) if n < 6 => (fmt_num(m), format!("n={n}")),
            (Some(m), Some(lo), Some(hi), _) if m != 0.0 => {
                (fmt_num(m), format!("{:.1}%", (hi - lo) / 2.0 / m.abs() * 100.0))
            }
            (Some(m), ..) => (fmt_num(m), String::new()),
            _ => (String::new(), String::new()),
        };
        let medians: Vec<f64> = m
            .rounds
            .iter()
            .filter(|v| !v.is_empty())
            .filter_map(|v| crate::stats::summarize(v).map(|s| s.median))
            .collect();
        let spread = match (r.median, medians.len()) {
            (Some(med), n) if n > 1 && med != 0.0 => {
                let (lo, hi) = medians
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                        (a.min(x), b.max(x))
                    });
                format!("{n}× {:.1}%", (hi - lo) / 2.0 / med.abs() * 100.0)
            }
            (_, 1) => "1×".to_string(),
            _ => String::new(),
        };
        let status = if r.reason.is_empty() {
            r.status.as_str().to_string()
        } else {
            format!("{}: {}", r.status.as_str(), r.reason)
        };
        lines.push(vec![
            r.target.clone(),
            r.workload.clone(),
            r.case.clone(),
            r.metric.clone(),
            median,
            r.unit.clone(),
            ci,
            spread,
            status,
        ]);
    }
    let cols = lines[0].len() - 1;
    let widths: Vec<usize> = (0..cols)
        .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    for l in &lines {
        let mut s = String::new();
        for (i, cell) in l.iter().take(cols).enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if RIGHT.contains(&i) {
                s.push_str(&pad);
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&pad);
            }
            s.push_str("  ");
        }
        s.push_str(&l[cols]);
        println!("{}", s.trim_end());
    }
}

/// Four significant digits, no exponent for everyday magnitudes.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e7).contains(&a) {
        format!("{v:.3e}")
    } else {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(matches_filter(&[], "gemm/size=256"));
        assert!(matches_filter(&["gemm".into()], "gemm/size=256"));
        assert!(matches_filter(&["gemm/*fp32".into()], "gemm/size=256,dtype=fp32"));
        assert!(!matches_filter(&["attention".into()], "gemm/size=256"));
    }

    #[test]
    fn number_format() {
        assert_eq!(fmt_num(12.345678), "12.35");
        assert_eq!(fmt_num(0.012345), "0.01235");
        assert_eq!(fmt_num(1234.5), "1234");
    }
}
