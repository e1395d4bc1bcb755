//! The `startup` metrics only the host can measure, in each round beside the target's worker:
//! `container_start` (a fresh worker per sample, from the executor's start, which creates the
//! container, to the worker's first protocol line, timed here) and `image_size` (the engine's
//! image inspect). The worker of a `container_start` sample is the native CPU engine with no
//! case, whatever the target's engine: its first line comes before any engine starts (the torch
//! engine imports torch before it says anything, and that import is `python_import_torch`'s).
//! The container is the target's own, GPUs and limits included.

use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::context::RunContext;
use super::now;
use super::supervise::Prepared;
use crate::case::{Case, Device, EngineKind};
use crate::error::CaseError;
use crate::executor::{LineEvent, WorkerHandle};
use crate::protocol::{Job, Message};
use crate::results::{MetricId, Recorder, RunWriter, Status};
use crate::suite::{GpuSelection, TargetSpec};
use crate::workload::startup::{StartupMetric, StartupParams};
use crate::workload::Params;

/// Bytes in a MiB: image sizes are reported in MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// A `startup` case's parameters when the host measures it.
fn host_params(case: &Case) -> Option<&StartupParams> {
    match &case.params {
        Params::Startup(p) if p.metric.on_host() => Some(p),
        _ => None,
    }
}

/// Splits the cases of a round into (measured on the host, run by the worker).
pub fn split(cases: Vec<Case>) -> (Vec<Case>, Vec<Case>) {
    cases.into_iter().partition(|c| host_params(c).is_some())
}

/// Measures the host's cases of a target in the current round and writes their rows.
pub fn run_on_host(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    target: &TargetSpec,
    prepared: &mut Prepared,
    cases: Vec<Case>,
) -> anyhow::Result<()> {
    for case in cases {
        let Some(p) = host_params(&case) else { continue };
        let started_at = now();
        ctx.bar
            .set_message(format!("{}: {}", target.display_name(), case.label()));
        let result = match p.metric {
            StartupMetric::ContainerStart => container_starts(ctx, target, prepared, &case, p),
            _ => image_sizes(target, prepared, p),
        };
        let rec = Recorder {
            run_id: &ctx.run_id,
            suite: &ctx.suite,
            round: ctx.round,
            target: &prepared.meta,
        };
        let (w, c) = (case.workload.as_str(), case.id.as_str());
        let (rows, samples) = match result.map(|v| (crate::stats::summarize(&v), v)) {
            Ok((Some(summary), values)) => {
                let id = MetricId {
                    workload: w,
                    case: c,
                    metric: p.metric.as_str(),
                    unit: p.metric.unit(),
                    better: p.metric.better().as_str(),
                };
                let samples = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| rec.sample(w, c, p.metric.as_str(), i, *v))
                    .collect();
                (vec![rec.metric(id, &summary, &started_at)], samples)
            }
            Ok((None, _)) => {
                let why = format!("metric {} has no finite samples", p.metric.as_str());
                (vec![rec.status(w, c, Status::Failed, &why, &started_at)], vec![])
            }
            Err(CaseError::Skipped(why)) => {
                (vec![rec.status(w, c, Status::Skipped, &why, &started_at)], vec![])
            }
            Err(CaseError::Failed(e)) => {
                let why = format!("{e:#}");
                ctx.bar
                    .suspend(|| eprintln!("error: {}: {}: {why}", target.display_name(), case.label()));
                (vec![rec.status(w, c, Status::Failed, &why, &started_at)], vec![])
            }
        };
        ctx.write_case(writer, rows, samples)?;
    }
    Ok(())
}

/// `samples` inspections of the target's image, MiB each (the same every time: a fact, which
/// `compare` judges exactly).
fn image_sizes(
    target: &TargetSpec,
    prepared: &mut Prepared,
    p: &StartupParams,
) -> Result<Vec<f64>, CaseError> {
    (0..p.samples)
        .map(|_| Ok(prepared.exec.image_size(target)? as f64 / MIB))
        .collect()
}

/// `samples` fresh workers of the target, each timed from its start (container create) to its
/// first protocol line, ms; each must then end cleanly.
fn container_starts(
    ctx: &RunContext,
    target: &TargetSpec,
    prepared: &mut Prepared,
    case: &Case,
    p: &StartupParams,
) -> Result<Vec<f64>, CaseError> {
    let deadline = Instant::now() + Duration::from_secs_f64(case.measure.timeout_s.clamp(0.0, 1e7));
    let job = Job {
        run_id: ctx.run_id.clone(),
        engine: EngineKind::Native,
        device: Device::Cpu,
        gpus: match &target.gpus {
            GpuSelection::List(l) => l.clone(),
            _ => Vec::new(),
        },
        cases: Vec::new(),
        control: false,
        token: crate::protocol::new_token(),
    };
    let log = ctx.run.logs().join(format!(
        "{}-r{}-startup.log",
        crate::sys::safe_name(&target.display_name()),
        ctx.round
    ));
    let mut values = Vec::with_capacity(p.samples);
    for i in 0..p.samples {
        let t0 = Instant::now();
        let mut worker = prepared
            .exec
            .start(target, &job, &log)
            .map_err(|e| CaseError::Failed(e.context("could not start the worker")))?;
        let first = first_line(worker.as_mut(), &job.token, deadline);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let ended = match first {
            Ok(()) => drain(worker.as_mut(), &job.token, deadline),
            Err(e) => Err(e),
        };
        let exit = worker.finish();
        match (ended, exit) {
            (Ok(()), Ok(info)) if info.code.unwrap_or(0) == 0 => values.push(ms),
            (Ok(()), Ok(info)) => return Err(fail(i, format!("the worker ended badly: {info}"))),
            (Ok(()), Err(e)) => return Err(fail(i, format!("{e:#}"))),
            (Err(why), Ok(info)) if why.ends_with(':') => return Err(fail(i, format!("{why} {info}"))),
            (Err(why), _) => return Err(fail(i, why)),
        }
    }
    Ok(values)
}

fn fail(sample: usize, why: String) -> CaseError {
    CaseError::Failed(anyhow!("container start {}: {why}", sample + 1))
}

/// Waits for the worker's first protocol line (behind the job's token: text an image prints
/// first does not count); a worker that ends or hangs first is the error (a reason ending in `:`
/// wants the worker's exit appended).
fn first_line(worker: &mut dyn WorkerHandle, token: &str, deadline: Instant) -> Result<(), String> {
    loop {
        match worker.next_line(deadline.saturating_duration_since(Instant::now())) {
            LineEvent::Line(l) if crate::protocol::parse_framed(&l, token).is_some() => return Ok(()),
            LineEvent::Line(_) => continue,
            LineEvent::Eof => return Err("the worker ended before its first line:".into()),
            LineEvent::Timeout if Instant::now() >= deadline => {
                let _ = worker.kill();
                return Err("no first line within the case's timeout_s; the worker was killed".into());
            }
            LineEvent::Timeout => {}
        }
    }
}

/// Reads the rest of the worker's lines to its `done`.
fn drain(worker: &mut dyn WorkerHandle, token: &str, deadline: Instant) -> Result<(), String> {
    loop {
        match worker.next_line(deadline.saturating_duration_since(Instant::now())) {
            LineEvent::Line(l) if matches!(crate::protocol::parse_framed(&l, token), Some(Message::Done)) => {
                return Ok(())
            }
            LineEvent::Line(_) => {}
            LineEvent::Eof => return Err("the worker ended before its `done` line:".into()),
            LineEvent::Timeout if Instant::now() >= deadline => {
                let _ = worker.kill();
                return Err("the worker did not finish within the case's timeout_s; it was killed".into());
            }
            LineEvent::Timeout => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_container_start_and_image_size_are_the_hosts() {
        let case = |metric: &str| Case {
            workload: "startup".into(),
            kind: crate::case::WorkloadKind::Startup,
            id: format!("metric={metric}"),
            params: Params::from_case_id(crate::case::WorkloadKind::Startup, &format!("metric={metric}"))
                .unwrap(),
            measure: Default::default(),
        };
        let all: Vec<Case> = crate::workload::startup::default_metrics()
            .into_iter()
            .map(case)
            .chain([Case {
                workload: "gemm".into(),
                kind: crate::case::WorkloadKind::Gemm,
                id: "size=8".into(),
                params: crate::workload::example(crate::case::WorkloadKind::Gemm),
                measure: Default::default(),
            }])
            .collect();
        let (host, worker) = split(all);
        let ids = |v: &[Case]| v.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&host), ["metric=container_start", "metric=image_size"]);
        assert_eq!(
            ids(&worker),
            ["metric=python_import_torch", "metric=first_cuda_op", "size=8"]
        );
    }
}
