//! The round loop: every case in interleaved rounds across targets (A B, B A, …) so that drift
//! over time affects every side alike; a case that was skipped or failed is not measured again;
//! `--resume` skips what already has rows; progress on stderr; rows written per case; one more
//! interleaved round for each outlier round (bounded by [`MAX_EXTRA_ROUNDS`]); with adaptive
//! rounds, more interleaved rounds while a comparison is undecided (`stats::sequential`).

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::context::{CaseKey, RunContext};
use super::paired::{self, Side};
use super::plan::{design_of, rounds_of, Plan};
use super::supervise::{prepare_target, run_target, write_status, Prepared};
use crate::case::{Case, Device};
use crate::results::{outlier_rounds_of, read_results, RunDir, RunMeta, RunWriter, Status, TargetMeta};
use crate::suite::Pairing;

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
pub(super) fn order(round: usize, n: usize) -> Vec<usize> {
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

/// A target across the rounds of a run.
#[expect(
    clippy::large_enum_variant,
    reason = "one per target, made once and never moved"
)]
enum TargetState {
    /// Not needed yet: prepared (image inspected, pulled) when its first case is due.
    Unprepared,
    /// It cannot run: its cases got `failed` (or `skipped`) rows when it was prepared.
    Unavailable,
    Ready(Prepared),
}

/// The round loop's state: the run being written, its plan and what a resumed run had done,
/// and each target's state.
struct Rounds<'a> {
    ctx: &'a mut RunContext,
    writer: &'a mut RunWriter,
    plan: &'a Plan,
    done: &'a Done,
    meta: &'a mut RunMeta,
    targets: Vec<TargetState>,
    /// GPU memory, once, for the cases of CUDA targets (the memory plan).
    gpu_memory: Option<u64>,
}

/// Runs every round; run.json's targets are updated after each target's round.
pub fn run_rounds(
    ctx: &mut RunContext,
    writer: &mut RunWriter,
    plan: &Plan,
    done: &Done,
    meta: &mut RunMeta,
) -> Result<()> {
    let gpu_memory = plan
        .targets
        .iter()
        .any(|t| t.device == Some(Device::Cuda))
        .then(|| crate::executor::gpus::host_gpu_memory().ok())
        .flatten();
    let mut r = Rounds {
        ctx,
        writer,
        plan,
        done,
        meta,
        targets: plan.targets.iter().map(|_| TargetState::Unprepared).collect(),
        gpu_memory,
    };
    for round in 0..plan.max_rounds() {
        let todo: Vec<Vec<Case>> = (0..plan.targets.len())
            .map(|ti| {
                let (todo, due) = pending(r.ctx, plan, done, &plan.targets[ti].display_name(), round);
                r.ctx.bar.inc((due - todo.len()) as u64);
                todo
            })
            .collect();
        r.measure(round, todo)?;
    }
    // Rounds are interleaved pairs only with two or more targets; a single target's outlier
    // rounds are still marked and counted by `compare`, and its round count stays as planned.
    if plan.targets.len() < 2 {
        return Ok(());
    }
    r.replace_outlier_rounds()?;
    r.add_rounds_until_decided()
}

impl Rounds<'_> {
    /// Prepares target `ti` once for all rounds; `false` when it cannot run (its `todo` has
    /// rows saying why).
    fn prepare(&mut self, ti: usize, todo: &[Case]) -> Result<bool> {
        if let TargetState::Unprepared = self.targets[ti] {
            let target = &self.plan.targets[ti];
            self.targets[ti] = match prepare_target(self.ctx, self.writer, target, todo)? {
                Some(p) => {
                    same_image(self.ctx, self.meta, self.done, &p.meta)?;
                    if !self.meta.targets.iter().any(|t| t.name == p.meta.name) {
                        // Recorded at once: a run killed in its first round keeps its image ID.
                        self.meta.targets.push(p.meta.clone());
                        self.ctx.run.write_meta(self.meta)?;
                    }
                    TargetState::Ready(p)
                }
                None => TargetState::Unavailable,
            };
        }
        Ok(matches!(self.targets[ti], TargetState::Ready(_)))
    }

    /// Measures round `round`: `todo[ti]` on target `ti`. With two or more targets whose
    /// executors take commands, side by side (`run::paired`, as the suite's `pairing` says);
    /// otherwise each target's cases in one worker, target after target.
    fn measure(&mut self, round: usize, todo: Vec<Vec<Case>>) -> Result<()> {
        self.ctx.round = round;
        let mut todo = todo;
        for ti in order(round, self.plan.targets.len()) {
            if todo[ti].is_empty() || !self.prepare(ti, &todo[ti])? {
                todo[ti].clear();
                continue;
            }
            let TargetState::Ready(p) = &self.targets[ti] else {
                unreachable!("prepared above");
            };
            if let (Some(Device::Cuda), Some(mem)) = (self.plan.targets[ti].device, self.gpu_memory) {
                let cases = std::mem::take(&mut todo[ti]);
                todo[ti] = skip_unfit(self.ctx, self.writer, &p.meta, cases, mem)?;
            }
        }
        // Side by side needs two targets with cases and executors that pass the host's commands
        // to one worker for all of them (not Slurm: the steps of one allocation cannot be
        // assumed to run at once, as a step waits for the GPUs and CPUs another holds).
        let with_cases = todo.iter().filter(|t| !t.is_empty()).count();
        let not_controlled =
            self.targets
                .iter()
                .zip(&self.plan.targets)
                .zip(&todo)
                .find_map(|((state, target), cases)| match state {
                    TargetState::Ready(p) => {
                        let (_, workers) = super::startup::split(cases.clone());
                        (!workers.is_empty() && !p.exec.controls(target, &workers))
                            .then(|| format!("the {} executor runs one worker at a time", p.exec.name()))
                    }
                    _ => None,
                });
        let round_why = match (self.plan.suite.pairing, not_controlled) {
            (Pairing::Round, _) => Some(None),
            (_, Some(why)) => Some(Some(why)),
            _ => None,
        };
        if with_cases >= 2 && round_why.is_none() {
            return self.measure_side_by_side(todo);
        }
        if with_cases >= 2 {
            let said = match round_why.flatten() {
                Some(why) => format!("round: {why}"),
                None => "round".to_string(),
            };
            for c in todo.iter().flatten() {
                self.meta.pairing.insert(c.label(), said.clone());
            }
        }
        for ti in order(round, self.plan.targets.len()) {
            let cases = std::mem::take(&mut todo[ti]);
            if cases.is_empty() {
                continue;
            }
            let TargetState::Ready(p) = &mut self.targets[ti] else {
                continue;
            };
            run_target(self.ctx, self.writer, &self.plan.targets[ti], p, cases)?;
            self.record(ti)?;
        }
        Ok(())
    }

    /// One round of every target's `todo` side by side (`run::paired`).
    fn measure_side_by_side(&mut self, todo: Vec<Vec<Case>>) -> Result<()> {
        let plan = self.plan;
        // Start-up metrics measured by the host (container start, image size) go first, target
        // by target, as in any round.
        let mut rest: Vec<Vec<Case>> = Vec::new();
        for (ti, cases) in todo.into_iter().enumerate() {
            let (host, workers) = super::startup::split(cases);
            if let TargetState::Ready(p) = &mut self.targets[ti] {
                super::startup::run_on_host(self.ctx, self.writer, &plan.targets[ti], p, host)?;
            }
            rest.push(workers);
        }
        let cases: Vec<Case> = plan
            .cases
            .iter()
            .filter(|c| {
                rest.iter()
                    .flatten()
                    .any(|k| k.workload == c.workload && k.id == c.id)
            })
            .cloned()
            .collect();
        let gpu_memory = self.gpu_memory;
        let cuda = plan.targets.iter().any(|t| t.device == Some(Device::Cuda));
        let suite_pairing = plan.suite.pairing;
        let pairing = |c: &Case| -> (Pairing, Option<String>) {
            if suite_pairing == Pairing::Batches && cuda {
                if let Some(why) = gpu_memory.and_then(|m| super::fit::twice_unfit_reason(c, m)) {
                    return (Pairing::Case, Some(why));
                }
            }
            (suite_pairing, None)
        };
        let mut sides: Vec<Side<'_>> = Vec::new();
        let mut index = Vec::new();
        for ((ti, state), cases) in self.targets.iter_mut().enumerate().zip(rest) {
            if let TargetState::Ready(p) = state {
                index.push(ti);
                sides.push(Side::new(&plan.targets[ti], p, cases));
            }
        }
        let mut chosen = std::mem::take(&mut self.meta.pairing);
        let result = paired::run_round(self.ctx, self.writer, &mut sides, &cases, pairing, &mut chosen);
        drop(sides);
        self.meta.pairing = chosen;
        result?;
        for ti in index {
            self.record(ti)?;
        }
        Ok(())
    }

    /// Records what the workers learned of target `ti` in run.json (after each of its rounds,
    /// so that a killed run keeps it).
    fn record(&mut self, ti: usize) -> Result<()> {
        let TargetState::Ready(p) = &self.targets[ti] else {
            return Ok(());
        };
        self.meta.targets.retain(|t| t.name != p.meta.name);
        self.meta.targets.push(p.meta.clone());
        self.ctx.run.write_meta(self.meta)
    }

    /// After the planned rounds: while a case has an outlier round not yet replaced, one more
    /// round of it on every target, interleaved in the same alternating order.
    fn replace_outlier_rounds(&mut self) -> Result<()> {
        for _ in 0..MAX_EXTRA_ROUNDS {
            let cases = cases_needing_a_round(self.ctx, self.plan)?;
            if cases.is_empty() {
                break;
            }
            self.extra_round(cases, "in place of an outlier round")?;
        }
        Ok(())
    }

    /// Adaptive rounds: while a case is undecided (see [`undecided_cases`]) and the suite's
    /// `max_run_time` has not passed, one more interleaved round pair of it. The α of the final
    /// verdicts is spent across the design's looks (`stats::sequential`), recorded in run.json.
    fn add_rounds_until_decided(&mut self) -> Result<()> {
        for c in self.plan.cases.iter().filter(|c| {
            let d = design_of(c);
            d.max_rounds > d.min_rounds
        }) {
            self.meta.rounds_design.insert(c.label(), design_of(c));
        }
        if self.meta.rounds_design.is_empty() {
            return Ok(());
        }
        self.ctx.run.write_meta(self.meta)?;
        loop {
            if let Some(budget) = self.plan.suite.max_run_time_s {
                if self.ctx.elapsed_s() > budget {
                    self.ctx.bar.suspend(|| crate::errln!("max_run_time ({budget} s) reached: no more rounds are added; undecided comparisons stay `noisy`"));
                    return Ok(());
                }
            }
            let cases = undecided_cases(self.ctx, self.plan)?;
            if cases.is_empty() {
                return Ok(());
            }
            self.extra_round(cases, "undecided")?;
        }
    }

    /// One more round of `cases` on every target, each case at its own next round index.
    fn extra_round(&mut self, cases: Vec<Case>, why: &str) -> Result<()> {
        let mut by_round: std::collections::BTreeMap<usize, Vec<Case>> = Default::default();
        let rows = read_results(&self.ctx.run)?;
        for c in cases {
            by_round.entry(measured_rounds(&rows, &c)).or_default().push(c);
        }
        for (round, cases) in by_round {
            self.ctx
                .bar
                .suspend(|| crate::errln!("round {round}: measuring {} case(s) again, {why}", cases.len()));
            let todo = self
                .plan
                .targets
                .iter()
                .zip(&self.targets)
                .map(|(target, state)| {
                    if !matches!(state, TargetState::Ready(_)) {
                        return Vec::new();
                    }
                    let tname = target.display_name();
                    cases
                        .iter()
                        .filter(|c| {
                            let key = (tname.clone(), c.workload.clone(), c.id.clone());
                            !self.ctx.not_ok.contains(&key) && !self.done.rounds.contains(&(key, round))
                        })
                        .cloned()
                        .collect()
                })
                .collect();
            self.measure(round, todo)?;
        }
        Ok(())
    }
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
