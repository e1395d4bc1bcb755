//! One round of two or more targets measured side by side (docs/design.md, "Paired batches").
//!
//! Each target keeps one warm worker for the round, a job with `control`: it runs the case the
//! host names, and in a paired case it warms up, says `ready` and takes sample batches only on
//! command. The host alternates short batches of the same case between the targets (A B, B A,
//! A B, …; forwards in even batch rounds, backwards in odd ones), each batch sized to about
//! [`batch_seconds`] (10 ms) from the side's time per call (the warm-up's for the first batch,
//! its own batches' after that), so that batch i of every target ran next to the others'
//! batch i in time: what the machine did at that moment is shared by the pair and cancels in
//! their ratio (`compare` pairs them; samples.csv records each sample's batch).
//! A case the suite or the memory plan keeps from two warm workers runs case by case: A's case,
//! then B's, then the next case, never a whole target's case list in a row.
//!
//! The round (a fresh worker process per target) stays the unit of replication for what a
//! process changes: memory layout, thread placement. A worker that dies fails its case on its
//! target; the next case gets a new worker, and the other targets go on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::context::RunContext;
use super::supervise::{end_worker, secs, start_worker, End, Event, Prepared, Session, STARTUP_GRACE};
use crate::case::{Case, MeasureSettings};
use crate::executor::WorkerHandle;
use crate::protocol::Command;
use crate::results::RunWriter;
use crate::stats::summarize;
use crate::suite::{Pairing, TargetSpec};

/// How long a worker may take to report its components and say `done` once its job is over.
const WRAP_UP: Duration = Duration::from_secs(120);

/// Batches a side takes at least before a paired case may stop (unless `max_samples` stops it).
const MIN_BATCHES: usize = 3;

/// The wall time one batch aims at (outside CPU quotas): 10 ms, or a third of the case's
/// `max_time_s` where that is less (a side takes at least [`MIN_BATCHES`] batches). A call
/// longer than that is a batch of one.
///
/// Short, because what disturbs a measurement is not white noise. Measured on the 2-core VM
/// (one worker sampling without pause, samples.csv of a round-paired run), the log ratio of
/// consecutive blocks of samples spreads about as much whatever the block length (gemm 1024
/// fp32: 13%, 11%, 11%, 12% for blocks of 15, 30, 45, 90 ms; attention: 10%, 10%, 12%, 14%,
/// 20% for 7, 13, 23, 46, 92 ms): the machine's speed moves in steps at every time scale, so a
/// pair of batches cancels more of it the closer in time its halves are, and for the same
/// timed seconds there are more pairs to average. Side by side (12-06, issue 19's A/A suite,
/// 10 rounds, runs alternating, the worker keeping its freed memory), 10 ms against 20 ms
/// batches gave a round's ratio an SD of 2.9% against 3.1% (attention, 3 runs each; 2.35%
/// against 3.2% in 4 attention-only runs each), 1.3% against 2.3% (gemm), 1.8% against 2.2%
/// (tpot), 2.0% against 2.6% (ttft), at a duty cycle of 68–70% against 72%. What a batch
/// costs besides its samples: the settle wait after it (~2.8 ms), and the first call after the
/// other target ran (gemm +4%, attention +12–16% over the batch's others: caches the other
/// process evicted), which both sides pay alike.
pub fn batch_seconds(m: &MeasureSettings) -> f64 {
    BATCH_S.min(m.max_time_s / MIN_BATCHES as f64)
}

/// See [`batch_seconds`].
pub const BATCH_S: f64 = 0.01;

/// The batch length when a target of the case has a CPU quota (`cpus`): three CFS periods
/// (Docker's period is 100 ms). A quota is a rate enforced per period, and a container that
/// idles while the other target measures starts every period with its full quota: in a batch
/// shorter than a period it is not throttled at all, and a `cpus = 0.25` image measured
/// unthrottled in 37 ms batches read `noisy` where it is 2× slower under sustained work. Over
/// three periods a batch runs as sustained work does, throttled in each period.
pub const QUOTA_BATCH_S: f64 = 0.3;

/// Calls per batch for a call that took `per_call_s` in the warm-up, for batches of
/// `batch_s` seconds.
pub fn batch_len(m: &MeasureSettings, per_call_s: f64, batch_s: f64) -> usize {
    if !(per_call_s.is_finite() && per_call_s > 0.0) {
        return 1;
    }
    ((batch_s / per_call_s).ceil() as usize).clamp(1, m.max_samples.max(1))
}

/// One target of the round.
pub struct Side<'a> {
    pub target: &'a TargetSpec,
    pub prepared: &'a mut Prepared,
    session: Session,
    /// The live worker and the cases of its job.
    worker: Option<(Box<dyn WorkerHandle>, Vec<Case>)>,
    /// The worker has not run a case yet (its start-up counts against the first case's limit).
    fresh: bool,
}

impl<'a> Side<'a> {
    pub fn new(target: &'a TargetSpec, prepared: &'a mut Prepared, todo: Vec<Case>) -> Side<'a> {
        Side {
            session: Session::new(target.display_name(), todo),
            target,
            prepared,
            worker: None,
            fresh: true,
        }
    }

    fn has(&self, c: &Case) -> bool {
        self.session
            .pending
            .iter()
            .any(|p| p.workload == c.workload && p.id == c.id)
    }
}

/// What waiting on a side's worker gave.
enum Pumped {
    Event(Event),
    /// The worker is gone (its case failed, or it was refused); the side has no worker now.
    Gone,
}

/// Measures `cases` (in this order; each on the sides whose todo lists it) for one round.
/// `pairing` says how a case's targets take turns; what each case used is recorded in
/// `chosen` (`workload/case` → `batches`, `case`, with the reason of a fallback).
pub fn run_round(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    sides: &mut [Side<'_>],
    cases: &[Case],
    pairing: impl Fn(&Case) -> (Pairing, Option<String>),
    chosen: &mut BTreeMap<String, String>,
) -> Result<()> {
    let result = (|| {
        for case in cases {
            let who: Vec<usize> = super::scheduler::order(ctx.round, sides.len())
                .into_iter()
                .filter(|&i| sides[i].has(case))
                .collect();
            if who.is_empty() {
                continue;
            }
            let (mode, why) = pairing(case);
            if who.len() >= 2 {
                let said = match why {
                    Some(why) => format!("{}: {why}", mode.as_str()),
                    None => mode.as_str().to_string(),
                };
                chosen.insert(case.label(), said);
            }
            if mode == Pairing::Batches && who.len() >= 2 {
                paired_case(ctx, writer, sides, &who, case)?;
            } else {
                for &i in &who {
                    solo_case(ctx, writer, &mut sides[i], case)?;
                }
            }
        }
        Ok(())
    })();
    // Every worker is told the job is over and waited for, also after an error.
    for side in sides.iter_mut() {
        let ended = end_job(ctx, writer, side);
        if result.is_ok() {
            ended?;
        }
    }
    result
}

/// Sends `cmd` to the side's worker, starting one (a job of the side's pending cases) when it
/// has none. `Ok(false)`: the case cannot be asked for (the worker could not start, or died:
/// the case has its row).
fn command(ctx: &mut RunContext, writer: &mut RunWriter, side: &mut Side<'_>, cmd: &Command) -> Result<bool> {
    if side.worker.is_none() {
        let job = side.session.pending.clone();
        if job.is_empty() {
            return Ok(false);
        }
        match start_worker(
            ctx,
            writer,
            side.target,
            side.prepared,
            &mut side.session,
            &job,
            true,
        )? {
            Some(w) => {
                side.worker = Some((w, job));
                side.fresh = true;
            }
            None => return Ok(false),
        }
    }
    let (worker, _) = side.worker.as_mut().expect("a worker");
    if worker.send(&cmd.line()).is_err() {
        // The worker is gone: its output says how (reading it to the end fails the case).
        let _ = pump(ctx, writer, side, |_| false)?;
        return Ok(false);
    }
    Ok(true)
}

/// Asks for `case` on one side, as `paired` or not, with the case's time limit from now (plus
/// the start-up grace for a fresh worker).
fn ask_case(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    side: &mut Side<'_>,
    case: &Case,
    paired: bool,
) -> Result<bool> {
    let cmd = Command::Case {
        workload: case.workload.clone(),
        case: case.id.clone(),
        paired,
    };
    if !command(ctx, writer, side, &cmd)? {
        return Ok(false);
    }
    let grace = if side.fresh { STARTUP_GRACE } else { Duration::ZERO };
    side.fresh = false;
    side.session.deadline = Instant::now() + secs(case.measure.timeout_s) + grace;
    Ok(true)
}

/// Reads the side's worker until an event `want` accepts, or the worker is gone.
fn pump(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    side: &mut Side<'_>,
    want: impl Fn(&Event) -> bool,
) -> Result<Pumped> {
    let Some((worker, _)) = side.worker.as_mut() else {
        return Ok(Pumped::Gone);
    };
    let end = match side
        .session
        .read_until(ctx, writer, &mut side.prepared.meta, worker.as_mut(), want)?
    {
        Ok(ev) => return Ok(Pumped::Event(ev)),
        Err(end) => end,
    };
    let (worker, job) = side.worker.take().expect("a worker");
    if matches!(end, End::Died(_)) && !side.session.has_current() {
        // Died between cases (before its first `start`): nothing of it to fail; the worker's
        // exit is in its log, and the next case gets a new one.
        let mut worker = worker;
        let _ = worker.finish();
        return Ok(Pumped::Gone);
    }
    end_worker(ctx, writer, side.prepared, &mut side.session, worker, end, &job)?;
    Ok(Pumped::Gone)
}

/// One side runs `case` by its own sampling settings, alone.
fn solo_case(ctx: &mut RunContext, writer: &mut RunWriter, side: &mut Side<'_>, case: &Case) -> Result<()> {
    if !ask_case(ctx, writer, side, case, false)? {
        return Ok(());
    }
    // A sampler of an unpaired case never says `ready`; its end is `ended`.
    let _ = pump(ctx, writer, side, |e| matches!(e, Event::Ended))?;
    Ok(())
}

/// A side's batches of the current sampling: calls per batch, samples so far, batches.
struct Taking {
    side: usize,
    n: usize,
    values: Vec<f64>,
    batches: usize,
}

impl Taking {
    /// The side's time per call over its batches so far: what sizes its next batch.
    fn measured(&self) -> f64 {
        self.values.iter().sum::<f64>() / self.values.len().max(1) as f64
    }

    /// Whether this side has enough of the case, by its measurement settings (as the worker's
    /// own sampler decides, on the sum of the sample times).
    fn enough(&self, m: &MeasureSettings) -> bool {
        let n = self.values.len();
        if n >= m.max_samples.max(1) {
            return true;
        }
        if n < m.min_samples.max(1) || self.batches < MIN_BATCHES {
            return false;
        }
        let timed: f64 = self.values.iter().sum();
        if timed >= m.max_time_s {
            return true;
        }
        timed >= m.min_time_s
            && summarize(&self.values).is_some_and(|s| s.rel_ci_half_width() <= m.target_rel_ci)
    }
}

/// `case` on the sides `who` in alternating batches, sampling by sampling (a case may sample
/// more than once: a precision case's fp32 reference, then its mode).
fn paired_case(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    sides: &mut [Side<'_>],
    who: &[usize],
    case: &Case,
) -> Result<()> {
    let m = &case.measure;
    // One batch length for every side, so that the batches of a pair last alike.
    let batch_s = if who.iter().any(|&i| sides[i].target.cpus.is_some()) {
        QUOTA_BATCH_S
    } else {
        batch_seconds(m)
    };
    // A side to its next sampling (`ready`), or `None` at the end of its case. The sides set
    // up and warm up at the same time (each was asked before any is waited for): a warm-up is
    // `warmup_s` of wall time, and one side after the other, the two warm-ups and set-ups of
    // every case and round took a fifth of a paired run's wall time (issue 19's A/A: 0.34 s
    // between two cases, 60 times a run). The warm-up's time per call, measured beside the
    // other's warm-up, only sizes the first batch: later batches are sized from the side's own
    // batches (see `Taking::measured`). Each side settles before it says `ready`.
    let to_ready = |ctx: &mut RunContext,
                    writer: &mut RunWriter,
                    side: &mut Side<'_>,
                    i: usize|
     -> Result<Option<Taking>> {
        let ready = |e: &Event| matches!(e, Event::Ready { .. } | Event::Ended);
        Ok(match pump(ctx, writer, side, ready)? {
            Pumped::Event(Event::Ready { per_call_s, .. }) => Some(Taking {
                side: i,
                n: batch_len(m, per_call_s, batch_s),
                values: Vec::new(),
                batches: 0,
            }),
            _ => None,
        })
    };
    let mut asked = Vec::new();
    for &i in who {
        if ask_case(ctx, writer, &mut sides[i], case, true)? {
            asked.push(i);
        }
    }
    let mut taking = Vec::new();
    for i in asked {
        taking.extend(to_ready(ctx, writer, &mut sides[i], i)?);
    }
    while !taking.is_empty() {
        let mut pair = 0;
        while !taking.is_empty() && !taking.iter().all(|t| t.enough(m)) {
            for k in super::scheduler::order(pair, taking.len()) {
                let t = &mut taking[k];
                let side = &mut sides[t.side];
                if !command(ctx, writer, side, &Command::Batch { n: t.n })? {
                    t.batches = usize::MAX;
                    continue;
                }
                match pump(ctx, writer, side, |e| {
                    matches!(e, Event::Batch { .. } | Event::Ended)
                })? {
                    Pumped::Event(Event::Batch { seconds, .. }) => {
                        t.values.extend(seconds);
                        t.batches += 1;
                        t.n = batch_len(m, t.measured(), batch_s);
                    }
                    // The case failed on this side (an error in a batch), or the worker died.
                    _ => t.batches = usize::MAX,
                }
            }
            // A side whose case ended goes no further; the others go on (alone, if one is left).
            taking.retain(|t| t.batches != usize::MAX);
            pair += 1;
        }
        // Released together: each side finishes this sampling and reaches its next one (a
        // precision mode after its fp32 reference) or the end of its case.
        let mut released = Vec::new();
        for t in taking {
            if command(ctx, writer, &mut sides[t.side], &Command::Release)? {
                released.push(t.side);
            }
        }
        let mut next = Vec::new();
        for i in released {
            next.extend(to_ready(ctx, writer, &mut sides[i], i)?);
        }
        taking = next;
    }
    Ok(())
}

/// Ends a side's worker: the job is over (`end`), its components and `done` are read, and it
/// is waited for.
fn end_job(ctx: &mut RunContext, writer: &mut RunWriter, side: &mut Side<'_>) -> Result<()> {
    let Some((mut worker, job)) = side.worker.take() else {
        return Ok(());
    };
    let _ = worker.send(&Command::End.line());
    worker.close_input();
    side.session.deadline = Instant::now() + WRAP_UP;
    let end = side
        .session
        .follow(ctx, writer, &mut side.prepared.meta, worker.as_mut())?;
    end_worker(ctx, writer, side.prepared, &mut side.session, worker, end, &job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_aim_at_ten_ms_and_three_a_side_at_least() {
        let m = MeasureSettings {
            max_time_s: 0.3,
            max_samples: 1000,
            ..Default::default()
        };
        let b = batch_seconds(&m);
        assert_eq!(b, 0.01);
        // A 2 ms call: 5 calls; a 50 ms call: one; never more than max_samples.
        assert_eq!(batch_len(&m, 0.002, b), 5);
        assert_eq!(batch_len(&m, 0.05, b), 1);
        assert_eq!(batch_len(&m, 1e-9, b), 1000);
        assert_eq!(batch_len(&m, 0.0, b), 1);
        assert_eq!(batch_len(&m, 0.002, QUOTA_BATCH_S), 150);
        let long = MeasureSettings {
            max_time_s: 10.0,
            ..m.clone()
        };
        assert_eq!(batch_seconds(&long), 0.01);
        let short = MeasureSettings {
            max_time_s: 0.015,
            ..m.clone()
        };
        assert!((batch_seconds(&short) - 0.005).abs() < 1e-12);
    }

    #[test]
    fn a_side_has_enough_by_its_settings() {
        let m = MeasureSettings {
            min_samples: 4,
            max_samples: 100,
            min_time_s: 0.0,
            max_time_s: 1.0,
            target_rel_ci: 0.0,
            ..Default::default()
        };
        let t = |values: Vec<f64>, batches| Taking {
            side: 0,
            n: 1,
            values,
            batches,
        };
        let spread = |sum: f64| vec![0.2 * sum, 0.3 * sum, 0.25 * sum, 0.25 * sum];
        assert!(!t(spread(0.3)[..3].to_vec(), 3).enough(&m), "min_samples");
        assert!(!t(spread(0.5), 3).enough(&m), "max_time not reached");
        assert!(t(spread(1.0), 3).enough(&m), "max_time reached");
        assert!(!t(spread(1.0), 2).enough(&m), "fewer than MIN_BATCHES batches");
        let converged = MeasureSettings {
            target_rel_ci: 0.01,
            ..m.clone()
        };
        assert!(t(vec![0.1; 4], 3).enough(&converged), "the CI converged");
        assert!(t(vec![0.001; 100], 1).enough(&m), "max_samples");
    }
}
