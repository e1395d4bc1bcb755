//! Which rows are the same measurement: across two runs, or across the values of one column
//! (image, gpu_name, engine, target, ...) within runs. Then every matched pair is judged and
//! the family is Holm-corrected.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};

use super::judge::{judge_pooled, judge_rounds, verdict, Judgement, RoundsPlan, Verdict};
use super::{CompareOptions, CompareReport, Comparison, LoadedRun, Measurement, Side};
use crate::results::{Quantity, ResultRow, Status};
use crate::stats::bootstrap::fnv1a;
use crate::stats::{holm_adjust, Design};

/// The rounds designs the runs recorded (run.json `rounds_design`), by (workload, case).
pub type Designs = BTreeMap<(String, String), Design>;

/// Every rounds design recorded by `runs`.
pub fn designs_of<'a>(runs: impl IntoIterator<Item = &'a LoadedRun>) -> Designs {
    let mut out = Designs::new();
    for r in runs {
        for (label, d) in r.meta.iter().flat_map(|m| m.rounds_design.iter()) {
            if let Some((w, c)) = label.split_once('/') {
                out.insert((w.to_string(), c.to_string()), *d);
            }
        }
    }
    out
}

/// The samples of each round of one side.
type Rounds = Vec<Vec<f64>>;

/// The two sides' rounds as aligned pairs when they come from one run (round r of each was
/// measured back to back), else `None`; with each pair's ratio from its paired batches where
/// the host alternated batches of the two (`stats::batch_pair_ratio`).
fn paired_rounds(b: &Measurement, c: &Measurement) -> Option<(Rounds, Rounds, Vec<Option<f64>>)> {
    if b.row.run_id.is_empty() || b.row.run_id != c.row.run_id {
        return None;
    }
    let (mut pb, mut pc, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for (i, id) in b.round_ids.iter().enumerate() {
        if let Some(j) = c.round_ids.iter().position(|x| x == id) {
            pb.push(b.rounds[i].clone());
            pc.push(c.rounds[j].clone());
            let higher = b.row.better == "higher";
            ratios.push(
                b.batched_round(i)
                    .zip(c.batched_round(j))
                    .and_then(|(x, y)| crate::stats::paired::batch_pair_ratio(&x, &y, higher)),
            );
        }
    }
    Some((pb, pc, ratios))
}

/// Columns a comparison can run along.
pub const ALONG_COLUMNS: [&str; 7] = [
    "image", "gpu_name", "engine", "target", "device", "image_id", "run_id",
];

/// A row's value in a named column.
pub fn column_value(row: &ResultRow, column: &str) -> Option<String> {
    Some(match column {
        "image" => row.image.clone(),
        "image_id" => row.image_id.clone(),
        "gpu_name" => row.gpu_name.clone(),
        "engine" => row.engine.clone(),
        "target" => row.target.clone(),
        "device" => row.device.clone(),
        "run_id" => row.run_id.clone(),
        "executor" => row.executor.clone(),
        _ => return None,
    })
}

/// What identifies the same measurement on both sides: workload, case, metric and the
/// context columns that must agree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MatchKey {
    workload: String,
    case: String,
    metric: String,
    context: Vec<(&'static str, String)>,
}

impl MatchKey {
    fn status_key(&self) -> MatchKey {
        MatchKey {
            metric: String::new(),
            ..self.clone()
        }
    }
}

/// Context columns that say where a case ran; a worker that crashed before it learned its GPU
/// leaves them empty or coarse (`cuda` for `cuda:0`).
const DEVICE_COLUMNS: [&str; 3] = ["gpu", "device", "gpu_name"];

fn without_device(context: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    context
        .iter()
        .filter(|(k, _)| !DEVICE_COLUMNS.contains(k))
        .cloned()
        .collect()
}

/// A `failed` status row of the same workload and case whatever its device columns: a failure
/// in the candidate counts as `failed`, never `missing`, even when the crash came before the
/// worker reported its GPU.
fn failure_on_any_device<'a>(
    map: &BTreeMap<MatchKey, &'a Measurement>,
    key: &MatchKey,
) -> Option<&'a Measurement> {
    let context = without_device(&key.context);
    map.iter()
        .find(|(k, m)| {
            m.row.status == Status::Failed
                && k.metric.is_empty()
                && k.workload == key.workload
                && k.case == key.case
                && without_device(&k.context) == context
        })
        .map(|(_, m)| *m)
}

fn gpu_label(row: &ResultRow) -> String {
    match (row.gpu_index, row.gpu_name.is_empty()) {
        (Some(i), false) => format!("{i}:{}", row.gpu_name),
        (Some(i), true) => format!("gpu {i}"),
        (None, false) => row.gpu_name.clone(),
        (None, true) => row.device.clone(),
    }
}

/// Context columns kept in the key for a comparison along `column` (`None`: two runs).
/// `pinned`: along `target`, each side's target ran on one GPU (a `gpus = "each"` placement or
/// a target pinned to a device), so the GPU follows from the target and is not part of the key.
fn context_of(
    row: &ResultRow,
    along: Option<&str>,
    with_target: bool,
    pinned: bool,
) -> Vec<(&'static str, String)> {
    let gpu = row.gpu_index.map(|i| i.to_string()).unwrap_or_default();
    match along {
        None => {
            let mut v = vec![("gpu", gpu)];
            if with_target {
                v.insert(0, ("target", row.target.clone()));
            }
            v
        }
        Some(col) => {
            let mut v: Vec<(&'static str, String)> = vec![
                ("image", row.image.clone()),
                ("engine", row.engine.clone()),
                ("device", row.device.clone()),
                ("gpu_name", row.gpu_name.clone()),
                ("gpu", gpu),
            ];
            // The compared column, and the columns that follow from it, differ by design.
            let drop: &[&str] = match col {
                "image" | "image_id" | "target" | "run_id" => &["image"],
                "gpu_name" => &["gpu_name", "gpu"],
                "engine" => &["engine"],
                "device" => &["device", "gpu_name", "gpu"],
                _ => &[],
            };
            v.retain(|(k, _)| !(drop.contains(k) || (pinned && *k == "gpu")));
            v
        }
    }
}

fn key_of(m: &Measurement, along: Option<&str>, with_target: bool, pinned: bool) -> MatchKey {
    MatchKey {
        workload: m.row.workload.clone(),
        case: m.row.case.clone(),
        metric: m.row.metric.clone(),
        context: context_of(&m.row, along, with_target, pinned),
    }
}

/// Indexes a side by key; a duplicate key keeps the later row (with a warning).
fn index<'a>(
    ms: impl Iterator<Item = &'a Measurement>,
    along: Option<&str>,
    with_target: bool,
    pinned: bool,
    side: &str,
) -> BTreeMap<MatchKey, &'a Measurement> {
    let mut map = BTreeMap::new();
    for m in ms {
        if m.row.metric.is_empty() && m.row.status == Status::Ok {
            continue; // a probe-like status row: nothing to compare
        }
        let k = key_of(m, along, with_target, pinned);
        if let Some(old) = map.insert(k, m) {
            if old.is_metric() && m.is_metric() {
                crate::errln!(
                    "warning: {side}: two rows for {}/{} {} (targets `{}` and `{}`); using the later one",
                    m.row.workload,
                    m.row.case,
                    m.row.metric,
                    old.row.target,
                    m.row.target
                );
            }
        }
    }
    map
}

fn side(label: &str, m: Option<&Measurement>) -> Side {
    match m {
        Some(m) => Side {
            label: label.to_string(),
            estimate: None,
            median: m.row.median.filter(|_| m.is_metric()),
            n: m.row.n.unwrap_or(m.samples.len()),
            rounds: m.rounds.iter().filter(|r| !r.is_empty()).count(),
            outlier_rounds: 0,
            status: m.row.status.as_str().to_string(),
            reason: m.row.reason.clone(),
        },
        None => Side {
            label: label.to_string(),
            status: "absent".into(),
            ..Default::default()
        },
    }
}

/// The verdict of a key measured on one side only: `failed` when the candidate failed it
/// (whatever device columns its row carries), else `missing` with the other side's status.
fn absent_in(cmp: &mut Comparison, map: &BTreeMap<MatchKey, &Measurement>, key: &MatchKey, which: &str) {
    let found = map
        .get(&key.status_key())
        .copied()
        .or_else(|| failure_on_any_device(map, key))
        .map(|m| (m.row.status, m.row.reason.clone()));
    let side = if which == "candidate" {
        &mut cmp.candidate
    } else {
        &mut cmp.baseline
    };
    match found {
        Some((st, why)) => {
            side.status = st.as_str().into();
            cmp.reason = format!("{} in the {which}: {why}", st.as_str());
            if st == Status::Failed && which == "candidate" {
                cmp.verdict = Verdict::Failed;
            }
        }
        None => cmp.reason = format!("not measured in the {which}"),
    }
}

/// Compares every key of `base` with `cand`; verdicts still need the family correction.
fn pair_up(
    base: &BTreeMap<MatchKey, &Measurement>,
    cand: &BTreeMap<MatchKey, &Measurement>,
    base_label: &str,
    cand_label: &str,
    opts: &CompareOptions,
    designs: &Designs,
    out: &mut Vec<Comparison>,
) {
    let keys: BTreeSet<&MatchKey> = base
        .keys()
        .chain(cand.keys())
        .filter(|k| !k.metric.is_empty())
        .collect();
    for key in keys {
        let b = base.get(key).copied();
        let c = cand.get(key).copied();
        let any = b.or(c).map(|m| &m.row);
        let Some(any) = any else { continue };
        let noise = opts.noise_of(&key.metric);
        let mut cmp = Comparison {
            workload: key.workload.clone(),
            case: key.case.clone(),
            metric: key.metric.clone(),
            unit: any.unit.clone(),
            better: any.better.clone(),
            gpu: match (b, c) {
                // Per-GPU targets compared GPU against GPU: both GPUs are named.
                (Some(b), Some(c)) if gpu_label(&b.row) != gpu_label(&c.row) => {
                    format!("{} vs {}", gpu_label(&b.row), gpu_label(&c.row))
                }
                _ => gpu_label(any),
            },
            context: context_text(&key.context),
            baseline: side(base_label, b),
            candidate: side(cand_label, c),
            judgement: Judgement::default(),
            p_adj: None,
            noise,
            verdict: Verdict::Missing,
            reason: String::new(),
        };
        match (b, c) {
            (Some(b), Some(c)) => {
                cmp.judgement = Judgement {
                    ratio: match (b.row.median, c.row.median) {
                        (Some(x), Some(y)) if x != 0.0 => Some(y / x),
                        _ => None,
                    },
                    baseline: b.row.median,
                    candidate: c.row.median,
                    ..Default::default()
                };
                if b.samples.is_empty() || c.samples.is_empty() {
                    cmp.verdict = Verdict::Noisy;
                    cmp.reason = "no samples in samples.csv: medians only, no test".into();
                } else {
                    let seed = opts.seed ^ fnv1a(&[&key.workload, &key.case, &key.metric, cand_label]);
                    let design = designs
                        .get(&(key.workload.clone(), key.case.clone()))
                        .copied()
                        .unwrap_or(Design::fixed(1));
                    let paired = paired_rounds(b, c);
                    let plan = RoundsPlan {
                        paired: paired.is_some(),
                        design,
                        needs_rounds: Quantity::of_unit(&any.unit).needs_rounds(),
                    };
                    let (br, cr, ratios) =
                        paired.unwrap_or_else(|| (b.rounds.clone(), c.rounds.clone(), Vec::new()));
                    let judged = if b.run_of_round.is_empty() {
                        judge_rounds(&br, &cr, &ratios, plan, opts.min_samples, opts.bootstrap, seed)
                    } else {
                        judge_pooled(
                            &rounds_by_run(b),
                            &c.rounds,
                            plan.needs_rounds,
                            opts.min_samples,
                            opts.bootstrap,
                            seed,
                        )
                    };
                    match judged {
                        Ok(j) => {
                            cmp.judgement = j;
                            cmp.verdict = Verdict::Noisy; // decided after the Holm correction
                        }
                        Err(why) => {
                            cmp.verdict = Verdict::Noisy;
                            cmp.reason = why;
                        }
                    }
                }
            }
            (Some(_), None) => absent_in(&mut cmp, cand, key, "candidate"),
            (None, Some(_)) => absent_in(&mut cmp, base, key, "baseline"),
            (None, None) => continue,
        }
        // The values shown are the ones the ratio is computed from.
        cmp.baseline.estimate = cmp.judgement.baseline.or(cmp.baseline.median);
        cmp.candidate.estimate = cmp.judgement.candidate.or(cmp.candidate.median);
        (cmp.baseline.outlier_rounds, cmp.candidate.outlier_rounds) = cmp.judgement.outlier_rounds;
        out.push(cmp);
    }
    failed_without_metrics(base, cand, base_label, cand_label, opts, out);
}

/// A case that failed in the candidate and has no metric on either side (it failed, was skipped
/// or did not run in the baseline too) is still a failed case of the candidate: one `failed`
/// comparison without a metric stands for it, so that the gate closes on it and it is listed,
/// never invisible.
fn failed_without_metrics(
    base: &BTreeMap<MatchKey, &Measurement>,
    cand: &BTreeMap<MatchKey, &Measurement>,
    base_label: &str,
    cand_label: &str,
    opts: &CompareOptions,
    out: &mut Vec<Comparison>,
) {
    let case_of = |k: &MatchKey| (k.workload.clone(), k.case.clone(), without_device(&k.context));
    let measured: BTreeSet<_> = base
        .keys()
        .chain(cand.keys())
        .filter(|k| !k.metric.is_empty())
        .map(case_of)
        .collect();
    for (key, m) in cand {
        if !key.metric.is_empty() || m.row.status != Status::Failed || measured.contains(&case_of(key)) {
            continue;
        }
        let b = base.get(key).copied();
        let before = match b {
            Some(b) => format!("{} in the baseline too", b.row.status.as_str()),
            None => "not run in the baseline".to_string(),
        };
        out.push(Comparison {
            workload: key.workload.clone(),
            case: key.case.clone(),
            metric: String::new(),
            unit: String::new(),
            better: String::new(),
            gpu: gpu_label(&m.row),
            context: context_text(&key.context),
            baseline: side(base_label, b),
            candidate: side(cand_label, Some(m)),
            judgement: Judgement::default(),
            p_adj: None,
            noise: opts.noise,
            verdict: Verdict::Failed,
            reason: format!("failed in the candidate: {} ({before})", m.row.reason),
        });
    }
}

/// The context columns shown beside a comparison (`key=value`, the gpu index left out).
fn context_text(context: &[(&'static str, String)]) -> String {
    context
        .iter()
        .filter(|(k, v)| *k != "gpu" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A pooled baseline's rounds, grouped by the run they came from.
fn rounds_by_run(m: &Measurement) -> Vec<Vec<Vec<f64>>> {
    let runs = m.run_of_round.iter().max().map_or(0, |r| r + 1);
    let mut out = vec![Vec::new(); runs];
    for (r, rounds) in m.run_of_round.iter().zip(&m.rounds) {
        out[*r].push(rounds.clone());
    }
    out.retain(|r| !r.is_empty());
    out
}

/// One measurement of a key from the rounds of several baseline runs (`run_of_round` says
/// which run each round came from; never paired with a candidate's rounds).
fn pool_measurements(ms: &[&Measurement]) -> Measurement {
    let mut row = ms[0].row.clone();
    row.run_id = String::new();
    let mut out = Measurement {
        row,
        samples: Vec::new(),
        rounds: Vec::new(),
        round_ids: Vec::new(),
        batches: Vec::new(),
        run_of_round: Vec::new(),
    };
    for (i, m) in ms.iter().enumerate() {
        out.samples.extend(&m.samples);
        out.rounds.extend(m.rounds.iter().cloned());
        out.round_ids.extend(&m.round_ids);
        out.batches.extend(m.batches.iter().cloned());
        out.run_of_round.extend(std::iter::repeat_n(i, m.rounds.len()));
    }
    if let Some(s) = crate::stats::summarize(&out.samples) {
        crate::results::set_summary(&mut out.row, &s);
    }
    out.row.n = Some(out.samples.len());
    out
}

/// "; 1 outlier round in the baseline (trimmed)", the pairs judged, the look's α share, or
/// nothing.
fn outlier_note(c: &Comparison) -> String {
    let mut parts = Vec::new();
    if let Some((runs, tau)) = c.judgement.pooled_runs {
        parts.push(format!(
            "baseline pooled from {runs} runs: between-run drift is not controlled, the CI is widened by the drift between them (τ = {:.1}%)",
            tau * 100.0
        ));
    }
    if let Some(pairs) = c.judgement.pairs {
        parts.push(match c.judgement.batch_rounds {
            Some(b) if b == pairs => format!("paired over {pairs} rounds, each from its alternating sample batches"),
            Some(b) => format!(
                "paired over {pairs} rounds, {b} from their alternating sample batches and {} from their round medians",
                pairs - b
            ),
            None => format!("paired over {pairs} rounds (round medians: its targets took turns case by case or round by round)"),
        });
    }
    if c.judgement.alpha_share < 1.0 {
        parts.push(format!(
            "look at {} rounds spends {:.0}% of α ({}% CI)",
            c.judgement.judged_rounds,
            c.judgement.alpha_share * 100.0,
            (super::judge::ci_level(c.judgement.alpha_share) * 1e4).round() / 100.0
        ));
    }
    if c.judgement.pairs.is_some() {
        return if parts.is_empty() {
            String::new()
        } else {
            format!("; {}", parts.join(", "))
        };
    }
    for (n, side) in [
        (c.baseline.outlier_rounds, "baseline"),
        (c.candidate.outlier_rounds, "candidate"),
    ] {
        if n > 0 {
            let s = if n == 1 { "" } else { "s" };
            parts.push(format!("{n} outlier round{s} in the {side} (trimmed)"));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("; {}", parts.join(", "))
    }
}

/// Applies Holm's correction across every tested comparison and sets the verdicts.
fn finish(mut comparisons: Vec<Comparison>, opts: &CompareOptions) -> Vec<Comparison> {
    let tested: Vec<usize> = comparisons
        .iter()
        .enumerate()
        .filter(|(_, c)| c.judgement.p.is_some() && c.reason.is_empty())
        .map(|(i, _)| i)
        .collect();
    let ps: Vec<f64> = tested
        .iter()
        .map(|&i| comparisons[i].judgement.p.unwrap_or(1.0))
        .collect();
    for (&i, p_adj) in tested.iter().zip(holm_adjust(&ps)) {
        let c = &mut comparisons[i];
        c.p_adj = Some(p_adj);
        let (v, why) = verdict(&c.judgement, p_adj, opts.alpha, c.noise, &c.better);
        c.verdict = v;
        c.reason = why + &outlier_note(c);
    }
    comparisons
}

/// Compares a candidate run with a baseline run.
///
/// Rows match on (workload, case, metric, gpu index). The target name joins the key only when
/// both runs have the same several targets; with one target a side (the usual case: one image
/// tag per run, or `local`), targets are paired whatever their names.
pub fn compare_runs(base: &LoadedRun, cand: &LoadedRun, opts: &CompareOptions) -> Result<CompareReport> {
    let targets =
        |r: &LoadedRun| -> BTreeSet<String> { r.measurements.iter().map(|m| m.row.target.clone()).collect() };
    let (tb, tc) = (targets(base), targets(cand));
    let with_target = if tb.len() <= 1 && tc.len() <= 1 {
        false
    } else if tb == tc {
        true
    } else {
        bail!(
            "runs {} and {} have different targets ({:?} vs {:?}); compare within runs with --along target (or image) --baseline VALUE",
            base.dir.display(),
            cand.dir.display(),
            tb,
            tc
        );
    };
    let (bl, cl) = (base.name(), cand.name());
    let bi = index(base.measurements.iter(), None, with_target, false, &bl);
    let ci = index(cand.measurements.iter(), None, with_target, false, &cl);
    let mut out = Vec::new();
    pair_up(&bi, &ci, &bl, &cl, opts, &designs_of([base, cand]), &mut out);
    Ok(CompareReport::new(
        "runs".into(),
        bl,
        opts,
        finish(out, opts),
        [base, cand],
    ))
}

/// Compares a candidate run with a baseline pooled from several earlier runs of the baseline
/// (a nightly job). Every baseline run's rounds of a key stay grouped by run: the run-to-run
/// spread widens the CI (`stats::pooled`), as the candidate's own day is not controlled.
pub fn compare_pooled(bases: &[LoadedRun], cand: &LoadedRun, opts: &CompareOptions) -> Result<CompareReport> {
    if bases.is_empty() {
        bail!("no baseline run");
    }
    let targets =
        |r: &LoadedRun| -> BTreeSet<String> { r.measurements.iter().map(|m| m.row.target.clone()).collect() };
    let tc = targets(cand);
    let single = bases.iter().all(|b| targets(b).len() <= 1) && tc.len() <= 1;
    if !single && bases.iter().any(|b| targets(b) != tc) {
        bail!(
            "the baseline runs and {} have different targets; a pooled baseline needs one target a run or the same targets in every run",
            cand.dir.display()
        );
    }
    let with_target = !single;
    let maps: Vec<BTreeMap<MatchKey, &Measurement>> = bases
        .iter()
        .map(|b| index(b.measurements.iter(), None, with_target, false, &b.name()))
        .collect();
    let keys: BTreeSet<&MatchKey> = maps.iter().flat_map(|m| m.keys()).collect();
    let pooled: Vec<(MatchKey, Measurement)> = keys
        .into_iter()
        .map(|k| {
            let ms: Vec<&Measurement> = maps.iter().filter_map(|m| m.get(k).copied()).collect();
            // Metric rows pool; a status row (failed, skipped) stands for the key as it is.
            let metric: Vec<&Measurement> = ms.iter().copied().filter(|m| m.is_metric()).collect();
            let m = if metric.is_empty() {
                ms[ms.len() - 1].clone()
            } else {
                pool_measurements(&metric)
            };
            (k.clone(), m)
        })
        .collect();
    let bi: BTreeMap<MatchKey, &Measurement> = pooled.iter().map(|(k, m)| (k.clone(), m)).collect();
    let label = format!(
        "{} runs ({} … {})",
        bases.len(),
        bases[0].name(),
        bases[bases.len() - 1].name()
    );
    let cl = cand.name();
    let ci = index(cand.measurements.iter(), None, with_target, false, &cl);
    let mut out = Vec::new();
    pair_up(&bi, &ci, &label, &cl, opts, &Designs::new(), &mut out);
    Ok(CompareReport::new(
        "pooled runs".into(),
        label,
        opts,
        finish(out, opts),
        bases.iter().chain([cand]),
    ))
}

/// Whether every measured row of a side ran on one and the same GPU index.
fn one_gpu(rows: &[&Measurement]) -> bool {
    let gpus: BTreeSet<Option<usize>> = rows
        .iter()
        .filter(|m| m.is_metric())
        .map(|m| m.row.gpu_index)
        .collect();
    gpus.len() == 1 && gpus.iter().all(|g| g.is_some())
}

/// Compares, within `runs`, every value of `column` with the rows whose value is `baseline`.
pub fn compare_along(
    runs: &[LoadedRun],
    column: &str,
    baseline: &str,
    opts: &CompareOptions,
) -> Result<CompareReport> {
    if !ALONG_COLUMNS.contains(&column) {
        bail!(
            "cannot compare along `{column}`: expected one of {}",
            ALONG_COLUMNS.join(", ")
        );
    }
    let all: Vec<&Measurement> = runs.iter().flat_map(|r| r.measurements.iter()).collect();
    let mut groups: BTreeMap<String, Vec<&Measurement>> = BTreeMap::new();
    for m in &all {
        let v = column_value(&m.row, column).unwrap_or_default();
        groups.entry(v).or_default().push(m);
    }
    let Some(base_rows) = groups.get(baseline) else {
        let seen: Vec<&String> = groups.keys().collect();
        bail!("no rows with {column} = `{baseline}`; the runs have {column} values {seen:?}");
    };
    if groups.len() < 2 {
        bail!("nothing to compare: every row has {column} = `{baseline}`");
    }
    let designs = designs_of(runs);
    let mut out = Vec::new();
    for (value, rows) in &groups {
        if value == baseline {
            continue;
        }
        // Targets that each ran on one GPU (`gpus = "each"`: local@gpu0 vs local@gpu1) are
        // compared GPU against GPU; targets spanning several GPUs match GPU by GPU.
        let pinned = column == "target" && one_gpu(base_rows) && one_gpu(rows);
        let bi = index(base_rows.iter().copied(), Some(column), false, pinned, baseline);
        let ci = index(rows.iter().copied(), Some(column), false, pinned, value);
        pair_up(&bi, &ci, baseline, value, opts, &designs, &mut out);
    }
    Ok(CompareReport::new(
        format!("along {column}"),
        baseline.to_string(),
        opts,
        finish(out, opts),
        runs,
    ))
}
