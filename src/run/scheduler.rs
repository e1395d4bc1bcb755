//! The round loop: every case in interleaved rounds across targets (A B, B A, …) so that drift
//! over time affects every side alike; a case that was skipped or failed is not measured again;
//! `--resume` skips what already has rows; progress on stderr; rows written per case; one more
//! interleaved round for each outlier round (bounded by [`MAX_EXTRA_ROUNDS`]); with adaptive
//! rounds, more interleaved rounds while a comparison is undecided (`stats::sequential`).

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::context::{CaseKey, RunContext};
use super::plan::{design_of, rounds_of, Plan};
use super::supervise::{prepare_target, run_target, write_status, Prepared};
use crate::case::{Case, Device};
use crate::results::{outlier_rounds_of, read_results, RunDir, RunMeta, RunWriter, Status, TargetMeta};
use crate::suite::TargetSpec;

/// Rounds added to a case at most to replace outlier rounds, so that a machine that disturbs
/// every round cannot keep a run going for ever.
pub const MAX_EXTRA_ROUNDS: usize = 2;

/// What a run has already done (on `--resume`): the rounds with rows, and the cases that were
/// skipped or failed.
#[derive(Debug, Default)]
pub struct Done {
    rounds: HashSet<(CaseKey, usize)>,
    pub not_ok: HashSet<CaseKey>,
    /// Per target, the image ID its rows carry (the first non-empty one).
    image_ids: HashMap<String, String>,
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
            if !r.image_id.is_empty() {
                done.image_ids.entry(key.0.clone()).or_insert(r.image_id);
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
                let p = prepare_target(ctx, writer, target, &todo)?;
                if let Some(p) = &p {
                    same_image(ctx, meta, done, &p.meta)?;
                    if !meta.targets.iter().any(|t| t.name == p.meta.name) {
                        // Recorded at once: a run killed in its first round keeps its image ID.
                        meta.targets.push(p.meta.clone());
                        ctx.run.write_meta(meta)?;
                    }
                }
                *slot = Some(p);
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
            run_and_record(ctx, writer, target, p, todo, meta)?;
        }
    }
    // Rounds are interleaved pairs only with two or more targets; a single target's outlier
    // rounds are still marked and counted by `compare`, and its round count stays as planned.
    if plan.targets.len() < 2 {
        return Ok(());
    }
    replace_outlier_rounds(ctx, writer, plan, done, meta, &mut prepared)?;
    add_rounds_until_decided(ctx, writer, plan, done, meta, &mut prepared)
}

/// A resumed run measures each target in the image it began with: an image whose ID changed
/// since (the tag rebuilt or pushed again) is refused, or one target would hold rows of two
/// images under the newer one's name.
fn same_image(ctx: &RunContext, meta: &RunMeta, done: &Done, now: &TargetMeta) -> Result<()> {
    if now.image_id.is_empty() {
        return Ok(());
    }
    let before = meta
        .targets
        .iter()
        .find(|t| t.name == now.name && !t.image_id.is_empty())
        .map(|t| t.image_id.as_str())
        .or_else(|| done.image_ids.get(&now.name).map(String::as_str));
    match before {
        Some(before) if before != now.image_id => bail!(
            "image {} is now {} but run {} measured {before}: the tag was rebuilt or pushed again since; \
             one target cannot hold rows of two images, so start a new run (or tag the image the run measured as {} again to finish it)",
            now.image,
            now.image_id,
            ctx.run_id,
            now.image
        ),
        _ => Ok(()),
    }
}

/// Rounds measured so far of a case (one past its highest round index).
fn measured_rounds(rows: &[crate::results::ResultRow], c: &Case) -> usize {
    rows.iter()
        .filter(|r| r.workload == c.workload && r.case == c.id)
        .filter_map(|r| r.round)
        .max()
        .map_or(0, |r| r + 1)
}

/// Cases whose comparisons (every target against the first, as `compare --along target`
/// would judge them now) want another round pair: a compared metric is still `noisy`, or the
/// rounds judged are between two looks of the design, where no verdict may stop the case.
/// A case stops at `max_rounds` (plus the rounds that replaced outlier rounds).
fn undecided_cases(ctx: &RunContext, plan: &Plan) -> Result<Vec<Case>> {
    use crate::compare::{compare_along, CompareOptions, LoadedRun, Verdict};
    let run = LoadedRun::load(&ctx.run.root)?;
    let base = plan.targets[0].display_name();
    let Ok(report) = compare_along(
        std::slice::from_ref(&run),
        "target",
        &base,
        &CompareOptions::default(),
    ) else {
        return Ok(Vec::new());
    };
    let rows = read_results(&ctx.run)?;
    Ok(plan
        .cases
        .iter()
        .filter(|c| {
            let design = design_of(c);
            if design.max_rounds <= design.min_rounds
                || measured_rounds(&rows, c) >= design.max_rounds + MAX_EXTRA_ROUNDS
            {
                return false;
            }
            report
                .comparisons
                .iter()
                // Measured on both sides (a metric judged, or one not judged for too few rounds).
                .filter(|x| {
                    x.workload == c.workload
                        && x.case == c.id
                        && x.baseline.median.is_some()
                        && x.candidate.median.is_some()
                })
                .any(|x| {
                    let judged = x.judgement.judged_rounds;
                    judged < design.max_rounds && (x.verdict == Verdict::Noisy || !design.is_look(judged))
                })
        })
        .cloned()
        .collect())
}

/// Adaptive rounds: while a case is undecided (see [`undecided_cases`]) and the suite's
/// `max_run_time` has not passed, one more interleaved round pair of it. The α of the final
/// verdicts is spent across the design's looks (`stats::sequential`), recorded in run.json.
fn add_rounds_until_decided(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    plan: &Plan,
    done: &Done,
    meta: &mut RunMeta,
    prepared: &mut [Option<Option<Prepared>>],
) -> Result<()> {
    for c in plan.cases.iter().filter(|c| {
        let d = design_of(c);
        d.max_rounds > d.min_rounds
    }) {
        meta.rounds_design.insert(c.label(), design_of(c));
    }
    if meta.rounds_design.is_empty() {
        return Ok(());
    }
    ctx.run.write_meta(meta)?;
    loop {
        if let Some(budget) = plan.suite.max_run_time_s {
            if ctx.elapsed_s() > budget {
                ctx.bar.suspend(|| crate::errln!("max_run_time ({budget} s) reached: no more rounds are added; undecided comparisons stay `noisy`"));
                return Ok(());
            }
        }
        let cases = undecided_cases(ctx, plan)?;
        if cases.is_empty() {
            return Ok(());
        }
        run_extra_round(ctx, writer, plan, done, meta, prepared, cases, "undecided")?;
    }
}

/// Cases (by workload and id) with more outlier rounds, on any target and metric, than rounds
/// already added beyond the plan: each outlier round earns one more interleaved round.
fn cases_needing_a_round(ctx: &RunContext, plan: &Plan) -> Result<Vec<Case>> {
    let rows = read_results(&ctx.run)?;
    let mut outliers: std::collections::HashMap<(String, String), usize> = Default::default();
    // A case's count is its worst (target, metric): several metrics of one disturbed round are
    // one outlier round, not several.
    let mut flagged_metrics: std::collections::HashMap<(String, String, String, String), usize> =
        Default::default();
    for ((target, workload, case, metric, _), _) in outlier_rounds_of(&rows) {
        *flagged_metrics
            .entry((target, workload, case, metric))
            .or_default() += 1;
    }
    for ((_, workload, case, _), n) in flagged_metrics {
        let e = outliers.entry((workload, case)).or_default();
        *e = (*e).max(n);
    }
    let measured = |c: &Case| measured_rounds(&rows, c);
    Ok(plan
        .cases
        .iter()
        .filter(|c| {
            let n = outliers
                .get(&(c.workload.clone(), c.id.clone()))
                .copied()
                .unwrap_or(0);
            let extra = measured(c).saturating_sub(rounds_of(c));
            n > extra && extra < MAX_EXTRA_ROUNDS
        })
        .cloned()
        .collect())
}

/// After the planned rounds: while a case has an outlier round not yet replaced, one more round
/// of it on every target, interleaved in the same alternating order.
fn replace_outlier_rounds(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    plan: &Plan,
    done: &Done,
    meta: &mut RunMeta,
    prepared: &mut [Option<Option<Prepared>>],
) -> Result<()> {
    for _ in 0..MAX_EXTRA_ROUNDS {
        let cases = cases_needing_a_round(ctx, plan)?;
        if cases.is_empty() {
            break;
        }
        run_extra_round(
            ctx,
            writer,
            plan,
            done,
            meta,
            prepared,
            cases,
            "in place of an outlier round",
        )?;
    }
    Ok(())
}

/// One more interleaved round of `cases` on every target, each case at its own next round
/// index, in the alternating order.
#[allow(clippy::too_many_arguments)]
fn run_extra_round(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    plan: &Plan,
    done: &Done,
    meta: &mut RunMeta,
    prepared: &mut [Option<Option<Prepared>>],
    cases: Vec<Case>,
    why: &str,
) -> Result<()> {
    let mut by_round: std::collections::BTreeMap<usize, Vec<Case>> = Default::default();
    let rows = read_results(&ctx.run)?;
    for c in cases {
        by_round.entry(measured_rounds(&rows, &c)).or_default().push(c);
    }
    for (round, cases) in by_round {
        ctx.round = round;
        ctx.bar
            .suspend(|| crate::errln!("round {round}: measuring {} case(s) again, {why}", cases.len()));
        for ti in order(round, plan.targets.len()) {
            let target = &plan.targets[ti];
            let tname = target.display_name();
            let todo: Vec<Case> = cases
                .iter()
                .filter(|c| {
                    let key = (tname.clone(), c.workload.clone(), c.id.clone());
                    !ctx.not_ok.contains(&key) && !done.rounds.contains(&(key, round))
                })
                .cloned()
                .collect();
            let Some(Some(p)) = prepared[ti].as_mut() else {
                continue;
            };
            if todo.is_empty() {
                continue;
            }
            run_and_record(ctx, writer, target, p, todo, meta)?;
        }
    }
    Ok(())
}

/// Runs `todo` on a prepared target, then records what the worker learned of the target in
/// run.json (written after each target's round, so a killed run keeps it).
fn run_and_record(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    target: &TargetSpec,
    p: &mut Prepared,
    todo: Vec<Case>,
    meta: &mut RunMeta,
) -> Result<()> {
    run_target(ctx, writer, target, p, todo)?;
    meta.targets.retain(|t| t.name != p.meta.name);
    meta.targets.push(p.meta.clone());
    ctx.run.write_meta(meta)
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
