//! The round loop: every case in interleaved rounds across targets (A B, B A, …) so that drift
//! over time affects every side alike; a case that was skipped or failed is not measured again;
//! `--resume` skips what already has rows; progress on stderr; rows written per case.

use std::collections::HashSet;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::context::{CaseKey, RunContext};
use super::plan::{rounds_of, Plan};
use super::supervise::{prepare_target, run_target, write_status, Prepared};
use crate::case::{Case, Device};
use crate::results::{read_results, RunDir, RunMeta, RunWriter, Status, TargetMeta};

/// What a run has already done (on `--resume`): the rounds with rows, and the cases that were
/// skipped or failed.
#[derive(Debug, Default)]
pub struct Done {
    rounds: HashSet<(CaseKey, usize)>,
    pub not_ok: HashSet<CaseKey>,
}

impl Done {
    /// Reads the rows a run directory has.
    pub fn read(run: &RunDir) -> Result<Done> {
        let mut done = Done::default();
        for r in read_results(run)? {
            let key = (r.target, r.workload, r.case);
            if r.status != Status::Ok {
                done.not_ok.insert(key.clone());
            }
            done.rounds.insert((key, r.round.unwrap_or(0)));
        }
        Ok(done)
    }
}

/// The progress bar (hidden when asked or when stderr is not a terminal).
pub fn progress_bar(total: usize, hidden: bool) -> ProgressBar {
    let bar = if hidden || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}")
            .expect("valid template"),
    );
    bar
}

/// Targets in round order: forwards in even rounds, backwards in odd ones.
fn order(round: usize, n: usize) -> Vec<usize> {
    if round % 2 == 0 {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// The cases of a target still to measure in a round, and how many were due in all.
fn pending(ctx: &RunContext, plan: &Plan, done: &Done, tname: &str, round: usize) -> (Vec<Case>, usize) {
    let due: Vec<&Case> = plan.cases.iter().filter(|c| round < rounds_of(c)).collect();
    let key = |c: &Case| (tname.to_string(), c.workload.clone(), c.id.clone());
    let pending = due
        .iter()
        .filter(|c| !done.rounds.contains(&(key(c), round)))
        // A case that was skipped or failed is not measured again in later rounds.
        .filter(|c| round == 0 || !ctx.not_ok.contains(&key(c)))
        .map(|c| (*c).clone())
        .collect();
    (pending, due.len())
}

/// Runs every round; run.json's targets are updated after each target's round.
pub fn run_rounds(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    plan: &Plan,
    done: &Done,
    meta: &mut RunMeta,
) -> Result<()> {
    // Each target is prepared once (image inspected, pulled) for all rounds; `Some(None)`: it
    // cannot run, and its cases have failed rows.
    let mut prepared: Vec<Option<Option<Prepared>>> = plan.targets.iter().map(|_| None).collect();
    // GPU memory, once, for the cases of CUDA targets that cannot fit (the memory plan).
    let gpu_memory = plan
        .targets
        .iter()
        .any(|t| t.device == Some(Device::Cuda))
        .then(|| crate::executor::gpus::host_gpu_memory().ok())
        .flatten();
    for round in 0..plan.max_rounds() {
        ctx.round = round;
        for ti in order(round, plan.targets.len()) {
            let target = &plan.targets[ti];
            let (todo, due) = pending(ctx, plan, done, &target.display_name(), round);
            ctx.bar.inc((due - todo.len()) as u64);
            if todo.is_empty() {
                continue;
            }
            let slot = &mut prepared[ti];
            if slot.is_none() {
                *slot = Some(prepare_target(ctx, writer, target, &todo)?);
            }
            let Some(Some(p)) = slot.as_mut() else {
                continue;
            };
            let mut todo = todo;
            if let (Some(Device::Cuda), Some(mem)) = (target.device, gpu_memory) {
                todo = skip_unfit(ctx, writer, &p.meta, todo, mem)?;
            }
            if todo.is_empty() {
                continue;
            }
            run_target(ctx, writer, target, p, todo)?;
            meta.targets.retain(|t| t.name != p.meta.name);
            meta.targets.push(p.meta.clone());
            ctx.run.write_meta(meta)?;
        }
    }
    Ok(())
}

/// Writes a `skipped` row, naming what would fit, for each case whose memory plan exceeds the
/// GPUs' memory; returns the others.
fn skip_unfit(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    meta: &TargetMeta,
    cases: Vec<Case>,
    gpu_memory: u64,
) -> Result<Vec<Case>> {
    let mut keep = Vec::with_capacity(cases.len());
    for c in cases {
        match super::fit::unfit_reason(&c, gpu_memory) {
            Some(reason) => write_status(ctx, writer, meta, &c, Status::Skipped, &reason)?,
            None => keep.push(c),
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_direction() {
        assert_eq!(order(0, 3), vec![0, 1, 2]);
        assert_eq!(order(1, 3), vec![2, 1, 0]);
    }
}
