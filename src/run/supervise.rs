//! One target's worker, supervised: prepare the executor once, start a worker with the pending
//! cases, hold each case to its time limit, turn protocol lines into rows (through
//! `results::Recorder`, the only row constructor) and, when the worker dies inside a case, fail
//! that case and start a new worker for the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::context::RunContext;
use super::now;
use crate::case::{Case, MeasureSettings};
use crate::executor::{self, Executor, LineEvent, WorkerHandle};
use crate::protocol::{classify, Job, Line, Message, PROTOCOL};
use crate::results::{MetricId, Recorder, ResultRow, RunWriter, SampleRow, Status, TargetMeta};
use crate::suite::{GpuSelection, TargetSpec};
use crate::sys::safe_name;

/// Added to the first case's limit of every worker: pulling nothing but still creating a
/// container, loading CUDA and importing torch can take tens of seconds before the case
/// starts, and that is not the case's time.
pub(super) const STARTUP_GRACE: Duration = Duration::from_secs(60);
/// How much longer than a `command` case's `timeout_s` the host waits: the worker kills the
/// program at the limit itself and reports it (`engine/command.rs`).
const COMMAND_GRACE: Duration = Duration::from_secs(10);

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
    /// Metrics whose summary came (a second one is a protocol error).
    summarized: BTreeSet<String>,
    /// The sample batches taken on the host's command (paired batches), in order.
    batches: Vec<BatchMark>,
}

/// One batch of a paired case, to label its samples in samples.csv.
#[derive(Debug, Clone)]
struct BatchMark {
    phase: usize,
    index: usize,
    n: usize,
    start_s: f64,
}

/// What a controlled worker last said about the state of its case (`run::paired` waits for
/// these).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Event {
    /// Warmed up; waits for batches.
    Ready { phase: usize, per_call_s: f64 },
    /// A batch is done: its samples (seconds) and how long the worker settled after it.
    Batch {
        seconds: Vec<f64>,
        settle_ms: f64,
        settled: bool,
    },
    /// The case is over (its rows are written).
    Ended,
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
    let mut s = Session::new(target.display_name(), pending);
    while !s.pending.is_empty() {
        // The executor may give a worker only the first cases (a multi-rank case under Slurm
        // is a step of its own); the rest go to the next worker.
        let take = prepared
            .exec
            .job_len(target, &s.pending)
            .clamp(1, s.pending.len());
        let cases = s.pending[..take].to_vec();
        let Some(mut worker) = start_worker(ctx, writer, target, prepared, &mut s, &cases, false)? else {
            continue;
        };
        let end = s.follow(ctx, writer, &mut prepared.meta, worker.as_mut())?;
        end_worker(ctx, writer, prepared, &mut s, worker, end, &cases)?;
    }
    Ok(())
}

/// Starts a worker on `cases` (a job with `control` when asked: `run::paired`); `None` when it
/// could not start, after failing those cases.
pub(super) fn start_worker(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    target: &TargetSpec,
    prepared: &mut Prepared,
    s: &mut Session,
    cases: &[Case],
    control: bool,
) -> Result<Option<Box<dyn WorkerHandle>>> {
    s.attempt += 1;
    let log = ctx.run.logs().join(format!(
        "{}-r{}-{}.log",
        safe_name(&target.display_name()),
        ctx.round,
        s.attempt
    ));
    let job = Job {
        run_id: ctx.run_id.clone(),
        token: crate::protocol::new_token(),
        engine: target.engine.unwrap_or_default(),
        device: target.device.unwrap_or_default(),
        gpus: match &target.gpus {
            GpuSelection::List(l) => l.clone(),
            _ => Vec::new(),
        },
        cases: cases.to_vec(),
        control,
    };
    let worker = match prepared.exec.start(target, &job, &log) {
        Ok(w) => w,
        Err(e) => {
            let reason = format!("could not start the worker: {e:#}");
            ctx.bar
                .suspend(|| eprintln!("error: target {}: {reason}", s.tname));
            fail_all(ctx, writer, &prepared.meta, cases, &reason)?;
            s.pending
                .retain(|p| !cases.iter().any(|c| p.workload == c.workload && p.id == c.id));
            return Ok(None);
        }
    };
    if let Some(p) = worker.placement() {
        prepared.meta.learn_placement(p);
    }
    s.begin_worker(&job.token, &log);
    s.deadline = Instant::now() + secs(cases[0].measure.timeout_s) + STARTUP_GRACE;
    Ok(Some(worker))
}

/// After a worker's output ended (`end`): waits for it, and records what became of the cases
/// of its job (`cases`) that have no rows yet.
pub(super) fn end_worker(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    prepared: &mut Prepared,
    s: &mut Session,
    mut worker: Box<dyn WorkerHandle>,
    end: End,
    cases: &[Case],
) -> Result<()> {
    let exit = worker.finish();
    s.warn_unframed(ctx, cases);
    // A worker that never said hello but printed protocol-looking lines without the token
    // speaks another version of the protocol: its output can never become rows.
    let end = match end {
        End::Died(None) if !s.hello && s.unframed > 0 => End::Refused(format!(
            "the worker answered without this job's token: a worker from another tagbench version? (this is tagbench {}, protocol {PROTOCOL}); use the worker of this build",
            crate::VERSION
        )),
        end => end,
    };
    let left = |s: &Session| -> Vec<Case> {
        cases
            .iter()
            .filter(|c| s.pending.iter().any(|p| p.workload == c.workload && p.id == c.id))
            .cloned()
            .collect()
    };
    match end {
        End::Refused(reason) => {
            let left = left(s);
            ctx.bar
                .suspend(|| eprintln!("error: target {}: {reason}", s.tname));
            fail_all(ctx, writer, &prepared.meta, &left, &reason)?;
            s.pending
                .retain(|p| !left.iter().any(|c| p.workload == c.workload && p.id == c.id));
        }
        End::Done => {
            // A case of the job that the worker finished without reporting (a worker bug):
            // recorded rather than lost, and not run again. Under control, the host asks for
            // every case it wants before it ends the job, so none is left.
            let silent = left(s);
            fail_all(ctx, writer, &prepared.meta, &silent, NOTHING_REPORTED)?;
            s.pending
                .retain(|p| !silent.iter().any(|c| p.workload == c.workload && p.id == c.id));
        }
        End::Died(why) => {
            // Killed by an interrupt (its clean-up, or the Ctrl-C that reached the whole
            // process group): not a crash of the case, which stays to be measured by
            // `--resume`. The process exits meanwhile.
            if exit.as_ref().is_ok_and(killed_by_interrupt) {
                crate::sys::interrupt::hold_if_interrupted_within(INTERRUPT_GRACE);
            }
            crate::sys::interrupt::hold_if_interrupted();
            let reason = why.unwrap_or_else(|| match exit {
                Ok(info) => format!("worker ended during the case: {info}"),
                Err(e) => format!("worker ended during the case: {e:#}"),
            });
            s.fail_current(ctx, writer, &prepared.meta, &reason)?;
        }
    }
    Ok(())
}

/// How long a worker that died of SIGINT or SIGTERM waits for this process's own interrupt
/// handler before its case is failed (see [`killed_by_interrupt`]).
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// Whether a worker died of SIGINT or SIGTERM (a Ctrl-C at the terminal reaches it too).
fn killed_by_interrupt(exit: &executor::ExitInfo) -> bool {
    exit.detail.as_deref().is_some_and(|d| {
        [libc::SIGINT, libc::SIGTERM]
            .iter()
            .any(|sig| d.starts_with(&format!("killed by signal {sig} ")))
    })
}

/// The reason of a case whose worker ended it, or the whole job, without a result.
const NOTHING_REPORTED: &str = "the worker reported nothing for this case";

/// How a worker's output ended.
pub(super) enum End {
    /// The worker said `done`.
    Done,
    /// It died (stdout closed) or was killed for time (`Some(reason)`) inside a case.
    Died(Option<String>),
    /// It speaks another protocol: every case of its job fails with this reason.
    Refused(String),
}

/// One worker's pending cases and the case being received.
pub(super) struct Session {
    pub(super) tname: String,
    pub(super) pending: Vec<Case>,
    buf: CaseBuffer,
    pub(super) deadline: Instant,
    /// The current worker's job token, log, and stdout line count.
    token: String,
    log: PathBuf,
    line_no: usize,
    /// The current worker said `hello` in this protocol.
    hello: bool,
    /// Workers started for this target in this round (the log's number).
    attempt: usize,
    /// Lines of the current worker that looked like protocol without the token, and the first.
    unframed: usize,
    first_unframed: Option<(usize, Option<(String, String)>)>,
    /// Cases failed for a protocol error: their further lines are dropped.
    dead: BTreeSet<(String, String)>,
    /// The last state change of a controlled worker's case, taken by `run::paired`.
    pub(super) event: Option<Event>,
}

impl Session {
    pub(super) fn new(tname: String, pending: Vec<Case>) -> Session {
        Session {
            tname,
            pending,
            buf: CaseBuffer::default(),
            deadline: Instant::now(),
            token: String::new(),
            log: PathBuf::new(),
            line_no: 0,
            hello: false,
            unframed: 0,
            first_unframed: None,
            dead: BTreeSet::new(),
            event: None,
            attempt: 0,
        }
    }

    /// A new worker with `token` and `log` starts.
    fn begin_worker(&mut self, token: &str, log: &Path) {
        self.token = token.to_string();
        self.log = log.to_owned();
        self.line_no = 0;
        self.hello = false;
        self.unframed = 0;
        self.first_unframed = None;
        self.buf = CaseBuffer::default();
    }

    /// A stdout line that is not a protocol message goes to the case log, marked as the host's
    /// note so that it is never taken for the worker's stderr.
    fn to_log(&self, what: &str, line: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let shown: String = line.chars().take(SHOWN_LINE_CHARS).collect();
            let _ = writeln!(
                f,
                "[tagbench] worker stdout line {} ({what}): {shown}",
                self.line_no
            );
        }
    }

    /// Says once how many lines looked like results without the token (gathered per case, so
    /// that a banner in every round is one warning with a count).
    fn warn_unframed(&mut self, ctx: &mut RunContext, cases: &[Case]) {
        let Some((first, case)) = self.first_unframed.take() else {
            return;
        };
        let (w, c) = case.unwrap_or_else(|| (cases[0].workload.clone(), cases[0].id.clone()));
        ctx.warnings
            .add(&self.tname, &w, &c, &unframed_warning(self.unframed, first));
    }

    /// Reads the worker's lines until `done`, end of output, or the case's deadline.
    pub(super) fn follow(
        &mut self,
        ctx: &mut RunContext,
        writer: &mut RunWriter,
        meta: &mut TargetMeta,
        worker: &mut dyn WorkerHandle,
    ) -> Result<End> {
        match self.read_until(ctx, writer, meta, worker, |_| false)? {
            Ok(_) => unreachable!("no event is wanted"),
            Err(end) => Ok(end),
        }
    }

    /// Reads the worker's lines until an event `want` accepts (`Ok`: a controlled worker's,
    /// `run::paired`), or until `done`, end of output, or the case's deadline (`Err`).
    pub(super) fn read_until(
        &mut self,
        ctx: &mut RunContext,
        writer: &mut RunWriter,
        meta: &mut TargetMeta,
        worker: &mut dyn WorkerHandle,
        want: impl Fn(&Event) -> bool,
    ) -> Result<Result<Event, End>> {
        loop {
            let wait = self.deadline.saturating_duration_since(Instant::now()).min(POLL);
            match worker.next_line(wait) {
                LineEvent::Line(line) => {
                    if let Some(end) = self.take_line(ctx, writer, meta, &line)? {
                        if matches!(end, End::Refused(_)) {
                            let _ = worker.kill();
                        }
                        return Ok(Err(end));
                    }
                    if let Some(ev) = self.event.take().filter(|ev| want(ev)) {
                        return Ok(Ok(ev));
                    }
                }
                LineEvent::Eof => return Ok(Err(End::Died(None))),
                LineEvent::Timeout if Instant::now() >= self.deadline => {
                    // The case's limit; between cases (a controlled worker ending its job), the
                    // next pending case's, or the default.
                    let limit = self
                        .current_case()
                        .or(self.pending.first())
                        .map_or(MeasureSettings::default().timeout_s, |c| c.measure.timeout_s);
                    let _ = worker.kill();
                    return Ok(Err(End::Died(Some(format!(
                        "timed out after {limit} s (timeout_s); the worker was killed"
                    )))));
                }
                LineEvent::Timeout => {}
            }
        }
    }

    /// One stdout line: a message behind the token is handled; a line that only looks like one
    /// is counted and logged, never a row; plain text (a banner) goes to the log.
    pub(super) fn take_line(
        &mut self,
        ctx: &mut RunContext,
        writer: &mut RunWriter,
        meta: &mut TargetMeta,
        line: &str,
    ) -> Result<Option<End>> {
        self.line_no += 1;
        let token = std::mem::take(&mut self.token);
        let kind = classify(line, &token);
        self.token = token;
        match kind {
            Line::Framed { msg, json, before } => {
                if !before.trim().is_empty() {
                    self.to_log("text before a protocol line", before);
                }
                match msg {
                    Ok(Message::Done) => {
                        self.flush(ctx, writer, meta)?;
                        return Ok(Some(End::Done));
                    }
                    Ok(Message::Hello { version, protocol }) => {
                        if protocol != PROTOCOL {
                            return Ok(Some(End::Refused(format!(
                                "the worker is tagbench {version} (protocol {protocol}) and this is tagbench {} (protocol {PROTOCOL}); use the worker of this build",
                                crate::VERSION
                            ))));
                        }
                        self.hello = true;
                    }
                    Ok(msg) => self.handle(ctx, writer, meta, msg)?,
                    Err(e) => {
                        let shown: String = json.chars().take(SHOWN_LINE_CHARS).collect();
                        let n = self.line_no;
                        ctx.bar.suspend(|| eprintln!("warning: target {}: protocol error on worker stdout line {n}: {e}: `{shown}`", self.tname));
                    }
                }
            }
            Line::Unframed => {
                self.unframed += 1;
                if self.first_unframed.is_none() {
                    self.first_unframed = Some((self.line_no, self.buf.case.clone()));
                }
                self.to_log("looked like a result without this job's token; ignored", line);
            }
            Line::Text => self.to_log("not protocol", line),
        }
        Ok(None)
    }

    /// Whether a case of the current worker has started and not ended.
    pub(super) fn has_current(&self) -> bool {
        self.buf.case.is_some()
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
        // The end of a case is a state change for the host whatever became of its rows.
        if let Message::Ended { timed_s, .. } = &msg {
            ctx.timed_s += timed_s.max(0.0);
            self.event = Some(Event::Ended);
        }
        if let Some((w, c)) = case_of(&msg) {
            let key = (w.to_string(), c.to_string());
            if self.dead.contains(&key) {
                // The rest of a case already failed for a protocol error; a start ends the case
                // before it, as any start does.
                if matches!(msg, Message::Start { .. }) {
                    self.flush(ctx, writer, meta)?;
                }
                return Ok(());
            }
            if let Some(what) = self.out_of_order(&msg, &key, ctx.round) {
                return self.protocol_error(ctx, writer, meta, key, &what);
            }
        }
        let (status, case, workload, reason) = match msg {
            Message::Hello { .. } => return Ok(()),
            Message::Env { info } => {
                meta.learn_env(info);
                return Ok(());
            }
            Message::Components { components } => {
                meta.components = Some(components);
                return Ok(());
            }
            Message::Start { case, workload } => return self.start_case(ctx, writer, meta, workload, case),
            Message::Done => return self.flush(ctx, writer, meta),
            Message::Ready {
                phase, per_call_s, ..
            } => {
                self.event = Some(Event::Ready { phase, per_call_s });
                return Ok(());
            }
            Message::Batch {
                phase,
                index,
                start_s,
                seconds,
                settle_ms,
                settled,
                ..
            } => {
                self.buf.batches.push(BatchMark {
                    phase,
                    index,
                    n: seconds.len(),
                    start_s,
                });
                ctx.settle.0 += settle_ms;
                ctx.settle.1 += 1;
                ctx.settle.2 += usize::from(!settled);
                self.event = Some(Event::Batch {
                    seconds,
                    settle_ms,
                    settled,
                });
                return Ok(());
            }
            // The case's rows are complete: written now, not when the next case starts (a
            // controlled worker starts it only when told).
            Message::Ended { .. } => return self.flush(ctx, writer, meta),
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
                self.buf.summarized.insert(metric.clone());
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

    /// What is wrong with `msg` about case `key` coming now: a row of a case that has not
    /// started (or has ended), or a second summary of one metric.
    fn out_of_order(&self, msg: &Message, key: &(String, String), round: usize) -> Option<String> {
        let (kind, metric) = match msg {
            Message::Start { .. } | Message::Warning { .. } => return None,
            Message::Sample { .. } => ("sample", None),
            Message::Summary { metric, .. } => ("summary", Some(metric)),
            Message::Status { .. } => ("status", None),
            Message::Skip { .. } => ("skip", None),
            Message::Error { .. } => ("error", None),
            Message::Ready { .. } => ("ready", None),
            Message::Batch { .. } => ("batch", None),
            Message::Ended { .. } => ("ended", None),
            _ => return None,
        };
        let name = format!("{}/{}", key.0, key.1);
        if self.buf.case.as_ref() != Some(key) {
            let started = self.pending.iter().any(|p| p.workload == key.0 && p.id == key.1);
            return Some(if started {
                format!("a `{kind}` for {name} before its `start`")
            } else {
                format!("a `{kind}` for {name} outside its case")
            });
        }
        match metric {
            Some(m) if self.buf.summarized.contains(m) => Some(format!(
                "a second `summary` of metric `{m}` for {name} in round {round}"
            )),
            _ => None,
        }
    }

    /// A protocol error about case `key`: the case fails with the line named (its rows so far
    /// are dropped), and its further lines are ignored. A case already written keeps its rows.
    fn protocol_error(
        &mut self,
        ctx: &mut RunContext,
        writer: &mut RunWriter,
        meta: &TargetMeta,
        key: (String, String),
        what: &str,
    ) -> Result<()> {
        let reason = format!(
            "protocol error on the worker's stdout line {}: {what}",
            self.line_no
        );
        let pending = self
            .pending
            .iter()
            .find(|p| p.workload == key.0 && p.id == key.1)
            .cloned();
        if self.buf.case.as_ref() == Some(&key) {
            self.fail_current(ctx, writer, meta, &reason)?;
        } else if let Some(case) = pending {
            ctx.bar
                .suspend(|| eprintln!("error: {}: {}/{}: {reason}", self.tname, key.0, key.1));
            write_status(ctx, writer, meta, &case, Status::Failed, &reason)?;
            self.pending.retain(|p| !(p.workload == key.0 && p.id == key.1));
        } else {
            ctx.bar
                .suspend(|| eprintln!("warning: {}: {}/{}: {reason}; ignored", self.tname, key.0, key.1));
            return Ok(());
        }
        self.dead.insert(key);
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
        // A case the job does not list (a worker bug) gets the default limit. A `command` case
        // enforces its own `timeout_s` inside the worker (it kills the program and says so), so
        // the host's deadline is a backstop a little later: a race between the two would
        // otherwise read "the worker was killed" instead of the program's own limit.
        let (limit, grace) = self
            .pending
            .iter()
            .find(|c| c.id == case && c.workload == workload)
            .map_or((MeasureSettings::default().timeout_s, Duration::ZERO), |c| {
                let grace = match c.kind {
                    crate::case::WorkloadKind::Command => COMMAND_GRACE,
                    _ => Duration::ZERO,
                };
                (c.measure.timeout_s, grace)
            });
        self.deadline = Instant::now() + secs(limit) + grace;
        ctx.bar.set_message(format!("{}: {workload}/{case}", self.tname));
        self.buf.case = Some((workload, case));
        self.buf.started_at = now();
        Ok(())
    }

    /// The worker died or hung inside a case: that case fails (the rest run in a new worker).
    pub(super) fn fail_current(
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
        let mut samples = std::mem::take(&mut self.buf.samples);
        label_batches(&mut samples, &std::mem::take(&mut self.buf.batches));
        self.buf.sample_index.clear();
        self.buf.summarized.clear();
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

/// Labels each sample of a paired case with its batch: a metric whose samples number as many
/// as one phase's batches took (the engine derives each such metric sample by sample, in
/// order: latency and its throughput) gets that phase's batches, the last phase first; other
/// metrics (a single speed-up) stay unlabelled.
fn label_batches(samples: &mut [SampleRow], batches: &[BatchMark]) {
    if batches.is_empty() {
        return;
    }
    let phases: BTreeSet<usize> = batches.iter().map(|b| b.phase).collect();
    let mut by_metric: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        by_metric.entry(s.metric.clone()).or_default().push(i);
    }
    for idx in by_metric.values() {
        let Some(phase) = phases.iter().rev().find(|p| {
            batches
                .iter()
                .filter(|b| b.phase == **p)
                .map(|b| b.n)
                .sum::<usize>()
                == idx.len()
        }) else {
            continue;
        };
        let mut at = idx.iter();
        for b in batches.iter().filter(|b| b.phase == *phase) {
            for &i in at.by_ref().take(b.n) {
                samples[i].batch = Some(b.index);
                samples[i].batch_start_s = Some(b.start_s);
            }
        }
    }
}

/// The (workload, case) a message is about.
fn case_of(msg: &Message) -> Option<(&str, &str)> {
    match msg {
        Message::Start { case, workload }
        | Message::Sample { case, workload, .. }
        | Message::Summary { case, workload, .. }
        | Message::Status { case, workload, .. }
        | Message::Warning { case, workload, .. }
        | Message::Skip { case, workload, .. }
        | Message::Error { case, workload, .. }
        | Message::Ready { case, workload, .. }
        | Message::Batch { case, workload, .. }
        | Message::Ended { case, workload, .. } => Some((workload, case)),
        Message::Hello { .. } | Message::Env { .. } | Message::Components { .. } | Message::Done => None,
    }
}

/// The warning about lines that looked like results without the job's token.
fn unframed_warning(n: usize, first: usize) -> String {
    format!(
        "ignored {n} line{} on the worker's stdout that looked like a result but did not carry this job's token ({}line {first}): an image's banner or sitecustomize?",
        if n == 1 { "" } else { "s" },
        if n == 1 { "" } else { "the first on " }
    )
}

pub(super) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e7))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use indicatif::ProgressBar;

    use super::*;
    use crate::results::{read_results, RunDir};

    /// A gemm case with default parameters and measurement settings.
    pub(super) fn case(id: &str) -> Case {
        Case {
            workload: "gemm".into(),
            kind: crate::case::WorkloadKind::Gemm,
            id: id.into(),
            params: Default::default(),
            measure: Default::default(),
        }
    }

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
        let mut s = Session::new("img".into(), vec![case("a"), case("b")]);
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

#[cfg(test)]
mod order_tests {
    use std::collections::HashSet;

    use indicatif::ProgressBar;

    use super::tests::case;
    use super::*;
    use crate::protocol::frame;
    use crate::results::{read_results, read_samples, RunDir};

    struct Fixture {
        _dir: tempfile::TempDir,
        run: RunDir,
        writer: RunWriter,
        ctx: RunContext,
        meta: TargetMeta,
        s: Session,
        cases: Vec<Case>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let writer = RunWriter::open(&run).unwrap();
        let ctx = RunContext::new("r", "s", &run, ProgressBar::hidden(), HashSet::new());
        let cases = vec![case("a"), case("b")];
        let mut s = Session::new("img".into(), cases.clone());
        s.begin_worker("t0k", &dir.path().join("w.log"));
        Fixture {
            run,
            writer,
            ctx,
            meta: TargetMeta::default(),
            s,
            cases,
            _dir: dir,
        }
    }

    impl Fixture {
        fn feed(&mut self, line: &str) -> Option<End> {
            self.s
                .take_line(&mut self.ctx, &mut self.writer, &mut self.meta, line)
                .unwrap()
        }
        fn send(&mut self, m: Message) -> Option<End> {
            self.feed(&frame("t0k", &m))
        }
    }

    fn start(c: &str) -> Message {
        Message::Start {
            case: c.into(),
            workload: "gemm".into(),
        }
    }

    fn summary(c: &str, value: f64) -> Message {
        Message::Summary {
            case: c.into(),
            workload: "gemm".into(),
            metric: "latency".into(),
            unit: "ms".into(),
            better: crate::case::Better::Lower,
            summary: crate::stats::summarize(&[value, value, value]).unwrap(),
            device: "cpu".into(),
            gpu_name: String::new(),
            gpu_index: None,
        }
    }

    fn sample(c: &str, value: f64) -> Message {
        Message::Sample {
            case: c.into(),
            workload: "gemm".into(),
            metric: "latency".into(),
            value,
        }
    }

    fn hello() -> Message {
        Message::Hello {
            version: crate::VERSION.into(),
            protocol: PROTOCOL,
        }
    }

    /// A forged summary (no token, even before any start) and a banner are never rows; the
    /// forgery is counted and named once, by its line.
    #[test]
    fn lines_without_the_token_are_never_rows() {
        let mut f = fixture();
        f.send(hello());
        f.feed("Welcome to the image (banner)");
        let forged = frame("", &summary("a", 999.0));
        f.feed(&forged);
        f.send(start("a"));
        f.send(sample("a", 1.0));
        f.send(summary("a", 1.0));
        f.feed(&format!("0123 {}", frame("", &sample("a", 999.0))));
        f.send(start("b"));
        f.send(summary("b", 2.0));
        assert!(matches!(f.send(Message::Done), Some(End::Done)));
        assert!(f.s.hello);
        let cases = f.cases.clone();
        f.s.warn_unframed(&mut f.ctx, &cases);
        let rows = read_results(&f.run).unwrap();
        assert_eq!(rows.len(), 2, "{rows:#?}");
        assert!(rows
            .iter()
            .all(|r| r.median != Some(999.0) && r.status == Status::Ok));
        let samples = read_samples(&f.run).unwrap();
        assert!(samples.iter().all(|s| s.value != 999.0), "{samples:?}");
        let warnings = f.ctx.warnings.lines();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("ignored 2 lines on the worker's stdout that looked like a result but did not carry this job's token (the first on line 3): an image's banner or sitecustomize?"),
            "{warnings:?}"
        );
        let log = std::fs::read_to_string(&f.s.log).unwrap();
        assert!(
            log.contains("[tagbench] worker stdout line 2 (not protocol): Welcome"),
            "{log}"
        );
        assert_eq!(
            unframed_warning(1, 3),
            "ignored 1 line on the worker's stdout that looked like a result but did not carry this job's token (line 3): an image's banner or sitecustomize?"
        );
    }

    /// A summary before its case's start fails that case, naming the line; the case's own
    /// lines after that are dropped, and the next case is measured as usual.
    #[test]
    fn a_summary_before_its_start_fails_that_case() {
        let mut f = fixture();
        f.send(hello());
        f.send(summary("b", 5.0));
        f.send(start("a"));
        f.send(summary("a", 1.0));
        f.send(start("b"));
        f.send(summary("b", 2.0));
        f.send(Message::Done);
        let rows = read_results(&f.run).unwrap();
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let b = rows.iter().find(|r| r.case == "b").unwrap();
        assert_eq!(b.status, Status::Failed);
        assert_eq!(
            b.reason,
            "protocol error on the worker's stdout line 2: a `summary` for gemm/b before its `start`"
        );
        assert!(rows.iter().any(|r| r.case == "a" && r.status == Status::Ok));
    }

    /// A second summary of one metric fails the case (none of its rows are kept).
    #[test]
    fn a_second_summary_of_a_metric_fails_the_case() {
        let mut f = fixture();
        f.send(hello());
        f.send(start("a"));
        f.send(summary("a", 1.0));
        f.send(summary("a", 7.0));
        f.send(start("b"));
        f.send(summary("b", 2.0));
        f.send(Message::Done);
        let rows = read_results(&f.run).unwrap();
        let a: Vec<_> = rows.iter().filter(|r| r.case == "a").collect();
        assert_eq!(a.len(), 1, "{rows:#?}");
        assert_eq!(a[0].status, Status::Failed);
        assert_eq!(
            a[0].reason,
            "protocol error on the worker's stdout line 4: a second `summary` of metric `latency` for gemm/a in round 0"
        );
        assert!(rows.iter().any(|r| r.case == "b" && r.status == Status::Ok));
    }

    /// A worker of another protocol is refused with both versions named.
    #[test]
    fn a_worker_of_another_protocol_is_refused() {
        let mut f = fixture();
        let end = f.send(Message::Hello {
            version: "0.1.0 (build old)".into(),
            protocol: 1,
        });
        let Some(End::Refused(reason)) = end else {
            panic!("not refused")
        };
        assert_eq!(
            reason,
            format!(
                "the worker is tagbench 0.1.0 (build old) (protocol 1) and this is tagbench {} (protocol {PROTOCOL}); use the worker of this build",
                crate::VERSION
            )
        );
    }
}
