//! `tagbench worker`: runs inside the container (or as a local child process), reads a [`Job`],
//! measures each case with the engine and prints the protocol on stdout.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::engine::{self, CaseOutput};
use crate::error::CaseError;
use crate::protocol::{Emitter, Job, Message};
use crate::stats::summary::{mad_outliers, summarize};

/// Reads the job file and runs it, writing protocol lines to `out`.
pub fn run_job_file(path: &Path, out: impl Write) -> Result<()> {
    crate::sys::alloc::keep_freed_memory();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read job file {}", path.display()))?;
    let job: Job = serde_json::from_str(&text)
        .with_context(|| format!("failed to parse job file {}", path.display()))?;
    if job.control {
        // The host's commands come on stdin; the controller's answers share stdout.
        crate::measure::control::install(
            Box::new(std::io::BufReader::new(std::io::stdin())),
            Box::new(std::io::stdout()),
            &job.token,
        );
    }
    let result = run_job(&job, out);
    crate::measure::control::uninstall();
    result
}

pub fn run_job(job: &Job, out: impl Write) -> Result<()> {
    let mut em = Emitter::new(out, &job.token);
    let mut engine = engine::create(job);
    if let Some(rank) = engine.follower() {
        return follow_job(engine.as_mut(), job, &rank, &mut em);
    }
    em.emit(&Message::Hello {
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: crate::protocol::PROTOCOL,
    })?;
    // What the container (or host) gave the worker, beside what the engine found.
    let mut info = crate::sys::limits::facts();
    if let Some(malloc) = crate::sys::alloc::described() {
        info.insert("malloc".into(), malloc.into());
    }
    info.extend(engine.env());
    em.emit(&Message::Env { info })?;
    if crate::measure::control::installed() {
        // The host names each case; the end of its commands ends the job.
        while let Some((w, c, _)) = crate::measure::control::next_case()? {
            match job.cases.iter().find(|k| k.workload == w && k.id == c) {
                Some(case) => run_one(engine.as_mut(), case, &mut em)?,
                None => {
                    em.emit(&Message::Start {
                        case: c.clone(),
                        workload: w.clone(),
                    })?;
                    em.emit(&Message::Error {
                        case: c.clone(),
                        workload: w.clone(),
                        reason: "the host asked for a case this job does not list".into(),
                    })?;
                    em.emit(&Message::Ended {
                        case: c,
                        workload: w,
                        timed_s: 0.0,
                    })?;
                }
            }
        }
    } else {
        for case in &job.cases {
            run_one(engine.as_mut(), case, &mut em)?;
        }
    }
    em.emit(&Message::Components {
        components: components(engine.as_mut(), job),
    })?;
    em.emit(&Message::Done)?;
    Ok(())
}

/// Measures one case and reports it, ending with `ended`.
fn run_one<W: Write>(
    engine: &mut dyn engine::Engine,
    case: &crate::case::Case,
    em: &mut Emitter<W>,
) -> Result<()> {
    let (c, w) = (case.id.clone(), case.workload.clone());
    crate::measure::control::take_timed();
    em.emit(&Message::Start {
        case: c.clone(),
        workload: w.clone(),
    })?;
    // A panic inside an engine (a library that asserts) fails the case, not the worker.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine::run_case(engine, case)))
        .unwrap_or_else(|p| {
            let msg = crate::sys::panic_message(p.as_ref());
            Err(CaseError::Failed(anyhow::anyhow!("engine panicked: {msg}")))
        });
    match result {
        Ok(output) => emit_output(em, &c, &w, output)?,
        Err(e) => em.emit(&not_measured(&c, &w, e))?,
    }
    em.emit(&Message::Ended {
        case: c,
        workload: w,
        timed_s: crate::measure::control::take_timed(),
    })?;
    Ok(())
}

/// The `skip` or `error` line of a case that was not measured.
fn not_measured(case: &str, workload: &str, e: CaseError) -> Message {
    let (case, workload) = (case.to_string(), workload.to_string());
    match e {
        CaseError::Skipped(reason) => Message::Skip {
            case,
            workload,
            reason,
        },
        CaseError::Failed(e) => Message::Error {
            case,
            workload,
            reason: format!("{e:#}"),
        },
    }
}

/// What the measuring process loaded. A `command` case's programs import what the image's
/// python has: where the engine has no python session to say so (the native engine; the torch
/// engine where torch does not import), the distributions python can import are listed too,
/// none marked imported, so that compare and bisect see a changed Python package.
fn components(engine: &mut dyn engine::Engine, job: &Job) -> crate::components::Components {
    let c = engine.components();
    let runs_commands = job
        .cases
        .iter()
        .any(|case| case.kind == crate::case::WorkloadKind::Command);
    if !c.python.is_empty() || !runs_commands {
        return c;
    }
    // A native worker maps a few dozen libraries, far under the cap `new` applies again.
    crate::components::Components::new(c.libraries, engine::torch::importable_distributions())
}

/// A non-zero rank of a multi-rank step: runs its rank of each case and reports only what went
/// wrong (rank 0's worker reports the rows). A failure or skip also ends this worker with an
/// error, so that Slurm's `--kill-on-bad-exit` ends the step rather than leave rank 0 waiting in
/// a collective.
fn follow_job<W: Write>(
    engine: &mut dyn engine::Engine,
    job: &Job,
    rank: &str,
    em: &mut Emitter<W>,
) -> Result<()> {
    let mut bad = Vec::new();
    for case in &job.cases {
        let (c, w) = (case.id.clone(), case.workload.clone());
        match engine.follow(case) {
            Ok(()) => continue,
            Err(e) => em.emit(&not_measured(&c, &w, e))?,
        }
        bad.push(format!("{w}/{c}"));
    }
    if !bad.is_empty() {
        anyhow::bail!("{rank} could not run {}", bad.join(", "));
    }
    Ok(())
}

fn emit_output<W: Write>(em: &mut Emitter<W>, case: &str, workload: &str, out: CaseOutput) -> Result<()> {
    let (c, w) = (case.to_string(), workload.to_string());
    if !out.env.is_empty() {
        em.emit(&Message::Env {
            info: out.env.clone(),
        })?;
    }
    // Derived metrics share their samples' outliers: warn once per case.
    let mut warned = false;
    for m in &out.metrics {
        for &value in &m.values {
            em.emit(&Message::Sample {
                case: c.clone(),
                workload: w.clone(),
                metric: m.name.clone(),
                value,
            })?;
        }
        let Some(summary) = summarize(&m.values) else {
            em.emit(&Message::Error {
                case: c.clone(),
                workload: w.clone(),
                reason: format!("metric {} has no finite samples", m.name),
            })?;
            continue;
        };
        if !warned && summary.outliers > 0 && summary.n >= 10 {
            warned = true;
            let mad = mad_outliers(&m.values);
            em.emit(&Message::Warning {
                case: c.clone(),
                workload: w.clone(),
                message: format!(
                    "{}: {} of {} samples are outliers (Tukey fences; {} by MAD z-score > 3.5); kept, but the machine may be noisy",
                    m.name, summary.outliers, summary.n, mad
                ),
            })?;
        }
        em.emit(&Message::Summary {
            case: c.clone(),
            workload: w.clone(),
            metric: m.name.clone(),
            unit: m.unit.clone(),
            better: m.better,
            summary,
            device: out.device.clone(),
            gpu_name: out.gpu_name.clone(),
            gpu_index: out.gpu_index,
        })?;
    }
    for message in out.warnings {
        em.emit(&Message::Warning {
            case: c.clone(),
            workload: w.clone(),
            message,
        })?;
    }
    if let Some(reason) = out.status {
        em.emit(&Message::Status {
            case: c,
            workload: w,
            reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::case::{Case, Device, EngineKind, WorkloadKind};
    use crate::workload::Params;

    /// Rank 1 of a step whose case `bad` breaks on this rank.
    struct Rank1;

    impl engine::Engine for Rank1 {
        fn name(&self) -> &'static str {
            "test"
        }
        fn env(&mut self) -> BTreeMap<String, String> {
            BTreeMap::new()
        }
        fn follower(&self) -> Option<String> {
            Some("rank 1 on n2".into())
        }
        fn follow(&mut self, case: &Case) -> Result<(), CaseError> {
            match case.id.as_str() {
                "bad" => Err(CaseError::Failed(anyhow::anyhow!(
                    "rank 1 on n2 exited with status 7"
                ))),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn a_following_rank_reports_only_its_failure() {
        let case = |id: &str| Case {
            workload: "allreduce".into(),
            kind: WorkloadKind::Allreduce,
            id: id.into(),
            params: Params::from_case_id(WorkloadKind::Allreduce, "ranks=2").unwrap(),
            measure: Default::default(),
        };
        let job = Job {
            run_id: "r".into(),
            token: String::new(),
            engine: EngineKind::Torch,
            device: Device::Cpu,
            gpus: Vec::new(),
            cases: vec![case("good"), case("bad")],
            control: false,
        };
        let mut out = Vec::new();
        let err = follow_job(&mut Rank1, &job, "rank 1 on n2", &mut Emitter::new(&mut out, "")).unwrap_err();
        assert_eq!(err.to_string(), "rank 1 on n2 could not run allreduce/bad");
        let lines: Vec<Message> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| Message::parse(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [Message::Error {
                case: "bad".into(),
                workload: "allreduce".into(),
                reason: "rank 1 on n2 exited with status 7".into(),
            }]
        );
    }
}
