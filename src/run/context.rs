//! The state a run writes into: ids, the run directory, the progress bar, the round being
//! measured, row counts, which cases were skipped or failed, and the warnings gathered for the
//! end of the run.

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use indicatif::ProgressBar;

use crate::results::{ResultRow, RunDir, RunWriter, SampleRow, Status};

/// (target, workload, case): a case of a target across rounds.
pub type CaseKey = (String, String, String);

/// The state of a run the supervisor writes into.
pub struct RunContext {
    pub run_id: String,
    pub suite: String,
    pub run: RunDir,
    pub bar: ProgressBar,
    pub counts: BTreeMap<Status, usize>,
    /// The round being measured (0-based).
    pub round: usize,
    /// (target, workload, case) that were skipped or failed: not run again in later rounds.
    pub not_ok: HashSet<CaseKey>,
    /// When this process started the run (the `max_run_time` budget counts from here).
    pub started: std::time::Instant,
    /// The workers' warnings, said once at the end of the run.
    pub warnings: super::warnings::Warnings,
    /// Seconds the workers spent inside timed samples (the duty cycle's numerator).
    pub timed_s: f64,
    /// Paired batches: the workers' settling after them (total ms, batches, batches whose
    /// worker did not go idle within the limit).
    pub settle: (f64, usize, usize),
}

impl RunContext {
    pub fn new(run_id: &str, suite: &str, run: &RunDir, bar: ProgressBar, not_ok: HashSet<CaseKey>) -> Self {
        RunContext {
            run_id: run_id.to_string(),
            suite: suite.to_string(),
            run: run.clone(),
            bar,
            counts: BTreeMap::new(),
            round: 0,
            not_ok,
            started: std::time::Instant::now(),
            warnings: Default::default(),
            timed_s: 0.0,
            settle: (0.0, 0, 0),
        }
    }

    /// Seconds since this process started the run.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Writes (and flushes) the rows of one finished case and counts them.
    pub fn write_case(
        &mut self,
        writer: &mut RunWriter,
        rows: Vec<ResultRow>,
        samples: Vec<SampleRow>,
    ) -> Result<()> {
        writer.write_case(&rows, &samples)?;
        for r in &rows {
            *self.counts.entry(r.status).or_default() += 1;
            if r.status != Status::Ok {
                self.not_ok
                    .insert((r.target.clone(), r.workload.clone(), r.case.clone()));
            }
        }
        self.bar.inc(1);
        Ok(())
    }

    /// The run's duty cycle so far (`results::DutyCycle`).
    pub fn duty_cycle(&self) -> crate::results::DutyCycle {
        let wall_s = self.elapsed_s();
        let (ms, batches, unsettled) = self.settle;
        crate::results::DutyCycle {
            timed_s: self.timed_s,
            wall_s,
            share: if wall_s > 0.0 { self.timed_s / wall_s } else { 0.0 },
            batches,
            settle_ms_mean: if batches > 0 { ms / batches as f64 } else { 0.0 },
            unsettled,
        }
    }

    pub fn count(&self, s: Status) -> usize {
        self.counts.get(&s).copied().unwrap_or(0)
    }
}
