//! One target's worker, supervised: prepare the executor once, start a worker with the pending
//! cases, hold each case to its time limit, turn protocol lines into rows (through
//! `results::Recorder`, the only row constructor) and, when the worker dies inside a case, fail
//! that case and start a new worker for the rest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::context::RunContext;
use super::now;
use crate::case::{Case, MeasureSettings};
use crate::executor::{self, Executor, LineEvent, WorkerHandle};
use crate::protocol::{Job, Message};
use crate::results::{MetricId, Recorder, ResultRow, RunWriter, SampleRow, Status, TargetMeta};
use crate::suite::{GpuSelection, TargetSpec};
use crate::sys::safe_name;

/// Added to the first case's limit of every worker: pulling nothing but still creating a
/// container, loading CUDA and importing torch can take tens of seconds before the case
/// starts, and that is not the case's time.
const STARTUP_GRACE: Duration = Duration::from_secs(60);

/// How often a quiet worker's deadline is checked (and Ctrl-C noticed) while waiting for lines.
const POLL: Duration = Duration::from_millis(250);

/// Protocol lines longer than this are cut in warnings (a binary dump would flood stderr).
const SHOWN_LINE_CHARS: usize = 200;

/// A target whose executor is ready.
pub struct Prepared {
    pub(super) exec: Box<dyn Executor>,
    pub meta: TargetMeta,
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

/// The one way rows of a target are built in this run and round.
fn recorder<'a>(ctx: &'a RunContext, meta: &'a TargetMeta) -> Recorder<'a> {
    Recorder {
        run_id: &ctx.run_id,
        suite: &ctx.suite,
        round: ctx.round,
        target: meta,
    }
}

/// Writes one `failed` row for each case (the target or its worker could not start).
fn fail_all(
    ctx: &mut RunContext,
    w: &mut RunWriter,
    meta: &TargetMeta,
    cases: &[Case],
    reason: &str,
) -> Result<()> {
    for c in cases {
        write_status(ctx, w, meta, c, Status::Failed, reason)?;
    }
    Ok(())
}

/// Writes the status row of a case decided on the host, without a worker.
pub fn write_status(
    ctx: &mut RunContext,
    w: &mut RunWriter,
    meta: &TargetMeta,
    case: &Case,
    status: Status,
    reason: &str,
) -> Result<()> {
    let row = recorder(ctx, meta).status(&case.workload, &case.id, status, reason, &now());
    ctx.write_case(w, vec![row], vec![])
}

/// Prepares a target once for all rounds; `None` (after writing failed rows for `pending`) when it
/// cannot run.
pub fn prepare_target(
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
                engine: target.engine.unwrap_or_default().as_str().into(),
                device: target.device.unwrap_or_default().as_str().into(),
                image: target.image.clone().unwrap_or_default(),
                ..Default::default()
            };
            if e.downcast_ref::<executor::Unsupported>().is_some() {
                for c in pending {
                    write_status(ctx, writer, &meta, c, Status::Skipped, &reason)?;
                }
                return Ok(None);
            }
            fail_all(ctx, writer, &meta, pending, &reason)?;
            Ok(None)
        }
    }
}

/// Runs `pending` on a prepared target in the current round, restarting the worker after a
/// crash until every case has rows.
pub fn run_target(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    target: &TargetSpec,
    prepared: &mut Prepared,
    pending: Vec<Case>,
) -> Result<()> {
    // Start-up metrics of the host (container start, image size) are measured around workers.
    let (host, pending) = super::startup::split(pending);
    super::startup::run_on_host(ctx, writer, target, prepared, host)?;
    let log_name = safe_name(&target.display_name());
    let mut s = Session {
        tname: target.display_name(),
        pending,
        buf: CaseBuffer::default(),
        deadline: Instant::now(),
    };
    let mut attempt = 0;
    while !s.pending.is_empty() {
        attempt += 1;
        let log = ctx
            .run
            .logs()
            .join(format!("{log_name}-r{}-{attempt}.log", ctx.round));
        // The executor may give a worker only the first cases (a multi-rank case under Slurm
        // is a step of its own); the rest go to the next worker.
        let take = prepared
            .exec
            .job_len(target, &s.pending)
            .clamp(1, s.pending.len());
        let cases = s.pending[..take].to_vec();
        let job = Job {
            run_id: ctx.run_id.clone(),
            engine: target.engine.unwrap_or_default(),
            device: target.device.unwrap_or_default(),
            gpus: match &target.gpus {
                GpuSelection::List(l) => l.clone(),
                _ => Vec::new(),
            },
            cases: cases.clone(),
        };
        let mut worker = match prepared.exec.start(target, &job, &log) {
            Ok(w) => w,
            Err(e) => {
                let reason = format!("could not start the worker: {e:#}");
                ctx.bar
                    .suspend(|| eprintln!("error: target {}: {reason}", s.tname));
                fail_all(ctx, writer, &prepared.meta, &cases, &reason)?;
                s.pending.drain(..take);
                continue;
            }
        };
        if let Some(p) = worker.placement() {
            prepared.meta.learn_placement(p);
        }
        s.deadline = Instant::now() + secs(s.pending[0].measure.timeout_s) + STARTUP_GRACE;
        s.buf = CaseBuffer::default();
        let end = s.follow(ctx, writer, &mut prepared.meta, worker.as_mut())?;
        let exit = worker.finish();
        match end {
            End::Done => {
                // A case of the job that the worker finished without reporting (a worker bug):
                // recorded rather than lost, and not run again.
                let silent: Vec<Case> = cases
                    .iter()
                    .filter(|c| s.pending.iter().any(|p| p.workload == c.workload && p.id == c.id))
                    .cloned()
                    .collect();
                fail_all(ctx, writer, &prepared.meta, &silent, NOTHING_REPORTED)?;
                s.pending
                    .retain(|p| !silent.iter().any(|c| p.workload == c.workload && p.id == c.id));
            }
            End::Died(why) => {
                let reason = why.unwrap_or_else(|| match exit {
                    Ok(info) => format!("worker ended during the case: {info}"),
                    Err(e) => format!("worker ended during the case: {e:#}"),
                });
                s.fail_current(ctx, writer, &prepared.meta, &reason)?;
            }
        }
    }
    Ok(())
}

/// The reason of a case whose worker ended it, or the whole job, without a result.
const NOTHING_REPORTED: &str = "the worker reported nothing for this case";

/// How a worker's output ended.
enum End {
    /// The worker said `done`.
    Done,
    /// It died (stdout closed) or was killed for time (`Some(reason)`) inside a case.
    Died(Option<String>),
}

/// One worker's pending cases and the case being received.
struct Session {
    tname: String,
    pending: Vec<Case>,
    buf: CaseBuffer,
    deadline: Instant,
}

impl Session {
    /// Reads the worker's lines until `done`, end of output, or the case's deadline.
    fn follow(
        &mut self,
        ctx: &mut RunContext,
        writer: &mut RunWriter,
        meta: &mut TargetMeta,
        worker: &mut dyn WorkerHandle,
    ) -> Result<End> {
        let mut line_no = 0usize;
        loop {
            let wait = self.deadline.saturating_duration_since(Instant::now()).min(POLL);
            match worker.next_line(wait) {
                LineEvent::Line(line) => {
                    line_no += 1;
                    match Message::parse(&line) {
                        Ok(Message::Done) => {
                            self.flush(ctx, writer, meta)?;
                            return Ok(End::Done);
                        }
                        Ok(msg) => self.handle(ctx, writer, meta, msg)?,
                        Err(e) => {
                            let shown: String = line.chars().take(SHOWN_LINE_CHARS).collect();
                            ctx.bar.suspend(|| eprintln!("warning: target {}: protocol error on worker stdout line {line_no}: {e}: `{shown}`", self.tname));
                        }
                    }
                }
                LineEvent::Eof => return Ok(End::Died(None)),
                LineEvent::Timeout if Instant::now() >= self.deadline => {
                    let limit = self
                        .current_case()
                        .map_or(self.pending[0].measure.timeout_s, |c| c.measure.timeout_s);
                    let _ = worker.kill();
                    return Ok(End::Died(Some(format!(
                        "timed out after {limit} s (timeout_s); the worker was killed"
                    ))));
                }
                LineEvent::Timeout => {}
            }
        }
    }

    fn current_case(&self) -> Option<&Case> {
        let (w, c) = self.buf.case.as_ref()?;
        self.pending.iter().find(|p| &p.workload == w && &p.id == c)
    }

    /// One protocol message (not `done`) into the case buffer, the target's meta or stderr.
    fn handle(
        &mut self,
        ctx: &mut RunContext,
        writer: &mut RunWriter,
        meta: &mut TargetMeta,
        msg: Message,
    ) -> Result<()> {
        let (status, case, workload, reason) = match msg {
            Message::Env { info } => {
                meta.learn_env(info);
                return Ok(());
            }
            Message::Start { case, workload } => return self.start_case(ctx, writer, meta, workload, case),
            Message::Done => return self.flush(ctx, writer, meta),
            Message::Sample {
                case,
                workload,
                metric,
                value,
            } => {
                let idx = self.buf.sample_index.entry(metric.clone()).or_insert(0);
                let row = recorder(ctx, meta).sample(&workload, &case, &metric, *idx, value);
                *idx += 1;
                self.buf.samples.push(row);
                return Ok(());
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
                meta.learn_device(&device, &gpu_name, gpu_index);
                let id = MetricId {
                    workload: &workload,
                    case: &case,
                    metric: &metric,
                    unit: &unit,
                    better: better.as_str(),
                };
                let row = recorder(ctx, meta).metric(id, &summary, &self.buf.started_at);
                self.buf.rows.push(row);
                return Ok(());
            }
            Message::Warning {
                case,
                workload,
                message,
            } => {
                ctx.warnings.add(&self.tname, &workload, &case, &message);
                return Ok(());
            }
            Message::Status {
                case,
                workload,
                reason,
            } => (Status::Ok, case, workload, reason),
            Message::Skip {
                case,
                workload,
                reason,
            } => (Status::Skipped, case, workload, reason),
            Message::Error {
                case,
                workload,
                reason,
            } => {
                ctx.bar
                    .suspend(|| eprintln!("error: {}: {workload}/{case}: {reason}", self.tname));
                (Status::Failed, case, workload, reason)
            }
        };
        let row = recorder(ctx, meta).status(&workload, &case, status, &reason, &self.buf.started_at);
        self.buf.rows.push(row);
        Ok(())
    }

    /// A case begins: the previous one is written and this one's time limit starts.
    fn start_case(
        &mut self,
        ctx: &mut RunContext,
        writer: &mut RunWriter,
        meta: &TargetMeta,
        workload: String,
        case: String,
    ) -> Result<()> {
        if self.buf.case.as_ref() == Some(&(workload.clone(), case.clone())) && self.buf.rows.is_empty() {
            // The same start line twice (seen with Docker's attach stream under load): the
            // case has not reported anything yet, so it goes on; failing it would be wrong.
            ctx.bar.suspend(|| {
                eprintln!(
                    "warning: {}: {workload}/{case}: repeated start line ignored",
                    self.tname
                )
            });
            return Ok(());
        }
        self.flush(ctx, writer, meta)?;
        // A case the job does not list (a worker bug) gets the default limit.
        let limit = self
            .pending
            .iter()
            .find(|c| c.id == case && c.workload == workload)
            .map_or(MeasureSettings::default().timeout_s, |c| c.measure.timeout_s);
        self.deadline = Instant::now() + secs(limit);
        ctx.bar.set_message(format!("{}: {workload}/{case}", self.tname));
        self.buf.case = Some((workload, case));
        self.buf.started_at = now();
        Ok(())
    }

    /// The worker died or hung inside a case: that case fails (the rest run in a new worker).
    fn fail_current(
        &mut self,
        ctx: &mut RunContext,
        writer: &mut RunWriter,
        meta: &TargetMeta,
        reason: &str,
    ) -> Result<()> {
        let (w, c) = self
            .buf
            .case
            .clone()
            .unwrap_or_else(|| (self.pending[0].workload.clone(), self.pending[0].id.clone()));
        ctx.bar
            .suspend(|| eprintln!("error: {}: {w}/{c}: {reason}", self.tname));
        let started = if self.buf.started_at.is_empty() {
            now()
        } else {
            self.buf.started_at.clone()
        };
        let row = recorder(ctx, meta).status(&w, &c, Status::Failed, reason, &started);
        self.buf = CaseBuffer {
            case: Some((w, c)),
            rows: vec![row],
            ..Default::default()
        };
        self.flush(ctx, writer, meta)
    }

    /// Writes the buffered case (if any) and takes it off the pending list.
    fn flush(&mut self, ctx: &mut RunContext, writer: &mut RunWriter, meta: &TargetMeta) -> Result<()> {
        let Some((w, c)) = self.buf.case.take() else {
            return Ok(());
        };
        let mut rows = std::mem::take(&mut self.buf.rows);
        let samples = std::mem::take(&mut self.buf.samples);
        self.buf.sample_index.clear();
        if rows.is_empty() {
            // A case that ended without any result is a worker bug; record it rather than lose it.
            rows.push(recorder(ctx, meta).status(
                &w,
                &c,
                Status::Failed,
                NOTHING_REPORTED,
                &self.buf.started_at,
            ));
        }
        self.pending.retain(|p| !(p.workload == w && p.id == c));
        ctx.write_case(writer, rows, samples)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e7))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use indicatif::ProgressBar;

    use super::*;
    use crate::results::{read_results, RunDir};

    fn start(w: &str, c: &str) -> Message {
        Message::Start {
            case: c.into(),
            workload: w.into(),
        }
    }

    /// Rows from protocol lines, with a repeated start line and a crash before any GPU is known.
    #[test]
    fn protocol_lines_become_rows() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut writer = RunWriter::open(&run).unwrap();
        let mut ctx = RunContext::new("r", "s", &run, ProgressBar::hidden(), HashSet::new());
        let mut meta = TargetMeta {
            name: "img".into(),
            executor: "docker".into(),
            engine: "native".into(),
            device: "cuda".into(),
            ..Default::default()
        };
        let case = |id: &str| Case {
            workload: "gemm".into(),
            kind: crate::case::WorkloadKind::Gemm,
            id: id.into(),
            params: Default::default(),
            measure: Default::default(),
        };
        let mut s = Session {
            tname: "img".into(),
            pending: vec![case("a"), case("b")],
            buf: CaseBuffer::default(),
            deadline: Instant::now(),
        };
        let summary = crate::stats::summarize(&[1.0, 2.0, 3.0]).unwrap();
        let lines = [
            start("gemm", "a"),
            start("gemm", "a"),
            Message::Summary {
                case: "a".into(),
                workload: "gemm".into(),
                metric: "latency".into(),
                unit: "ms".into(),
                better: crate::case::Better::Lower,
                summary,
                device: "cuda:0".into(),
                gpu_name: "NVIDIA H100 80GB HBM3".into(),
                gpu_index: Some(0),
            },
            start("gemm", "b"),
        ];
        for m in lines {
            s.handle(&mut ctx, &mut writer, &mut meta, m).unwrap();
        }
        s.fail_current(
            &mut ctx,
            &mut writer,
            &meta,
            "worker ended during the case: signal 11",
        )
        .unwrap();
        let rows = read_results(&run).unwrap();
        assert_eq!(rows.len(), 2, "{rows:#?}");
        assert_eq!((rows[0].status, rows[0].metric.as_str()), (Status::Ok, "latency"));
        assert_eq!((rows[1].status, rows[1].case.as_str()), (Status::Failed, "b"));
        // The failed row carries the GPU the worker reported for the case before it.
        for r in &rows {
            assert_eq!((r.device.as_str(), r.gpu_index), ("cuda:0", Some(0)));
            assert_eq!(r.gpu_name, "NVIDIA H100 80GB HBM3");
        }
        assert!(s.pending.is_empty());
    }
}
