//! A run directory read into memory: one [`Measurement`] per (target, case, metric, gpu), its
//! rounds (worker processes) pooled. compare, report, history and the end-of-run table read runs
//! through here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::{read_results, read_samples, ResultRow, RunDir, RunMeta, Status};

/// One (target, case, metric) of a run with its samples, pooled over the run's rounds.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The row, its summary recomputed from the pooled samples when there were several rounds.
    pub row: ResultRow,
    /// Every sample, round after round.
    pub samples: Vec<f64>,
    /// The samples of each round (worker process), in round order.
    pub rounds: Vec<Vec<f64>>,
    /// The round index (the CSV's `round`) of each entry of `rounds`.
    pub round_ids: Vec<usize>,
    /// The batch of each sample of `rounds` (samples.csv's `batch`: paired batches), where the
    /// host took them in batches; `None` elsewhere.
    pub batches: Vec<Vec<Option<usize>>>,
    /// For a baseline pooled from several runs: which run (0-based) each entry of `rounds`
    /// came from; empty for one run.
    pub run_of_round: Vec<usize>,
}

impl Measurement {
    /// Round `i`'s samples with their batches, where every sample of the round has one.
    pub fn batched_round(&self, i: usize) -> Option<Vec<(usize, f64)>> {
        let b = self.batches.get(i)?;
        let v = self.rounds.get(i)?;
        (b.len() == v.len() && !b.is_empty())
            .then(|| b.iter().zip(v).map(|(b, x)| b.map(|b| (b, *x))).collect())
            .flatten()
    }

    /// A row with a metric and a summary (not a status row).
    pub fn is_metric(&self) -> bool {
        self.row.status == Status::Ok && !self.row.metric.is_empty()
    }
}

/// (target, workload, case, metric, gpu index): what one measurement is, across rounds.
type SampleKey = (String, String, String, String, Option<usize>);

/// A run directory read into memory.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub dir: PathBuf,
    pub meta: Option<RunMeta>,
    pub measurements: Vec<Measurement>,
}

impl LoadedRun {
    /// Reads results.csv, samples.csv and (if present) run.json of a run directory or of the
    /// directory holding a results.csv; a run.json that is there but empty or corrupt is an error
    /// naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let run = RunDir::from_arg(path);
        if !run.results_csv().exists() {
            bail!("no results.csv in {}", run.root.display());
        }
        let rows = read_results(&run)?;
        let samples = read_samples(&run)?;
        // A missing run.json (a bare results.csv) is allowed; one that cannot be read is an error,
        // never silently nothing: the state of the run and what differs come from it.
        let meta = if run.run_json().exists() {
            Some(run.read_meta()?)
        } else {
            None
        };
        let key_of = |r: &ResultRow| -> SampleKey {
            (
                r.target.clone(),
                r.workload.clone(),
                r.case.clone(),
                r.metric.clone(),
                r.gpu_index,
            )
        };
        type Taken = (usize, f64, Option<usize>);
        let mut by_key: BTreeMap<(SampleKey, usize), Vec<Taken>> = BTreeMap::new();
        for s in samples {
            let round = s.round.unwrap_or(0);
            by_key
                .entry(((s.target, s.workload, s.case, s.metric, s.gpu_index), round))
                .or_default()
                .push((s.sample, s.value, s.batch));
        }
        // One measurement per key: the rows of its rounds pooled, in the order keys first appear.
        let mut order: Vec<SampleKey> = Vec::new();
        let mut grouped: BTreeMap<SampleKey, Vec<ResultRow>> = BTreeMap::new();
        for row in rows {
            let k = key_of(&row);
            if !grouped.contains_key(&k) {
                order.push(k.clone());
            }
            grouped.entry(k).or_default().push(row);
        }
        let measurements = order
            .into_iter()
            .map(|k| {
                let mut rows = grouped.remove(&k).unwrap_or_default();
                rows.sort_by_key(|r| r.round.unwrap_or(0));
                let mut batches = Vec::new();
                let (rounds, round_ids): (Vec<Vec<f64>>, Vec<usize>) = rows
                    .iter()
                    .filter_map(|r| {
                        let round = r.round.unwrap_or(0);
                        let mut v = by_key.remove(&(k.clone(), round))?;
                        v.sort_by_key(|&(i, _, _)| i);
                        batches.push(v.iter().map(|&(_, _, b)| b).collect());
                        Some((v.into_iter().map(|(_, x, _)| x).collect(), round))
                    })
                    .unzip();
                let samples: Vec<f64> = rounds.iter().flatten().copied().collect();
                let mut row = rows.swap_remove(0);
                if rounds.len() > 1 {
                    pool_summary(&mut row, &samples);
                }
                Measurement {
                    row,
                    samples,
                    rounds,
                    round_ids,
                    batches,
                    run_of_round: Vec::new(),
                }
            })
            .collect();
        Ok(LoadedRun {
            dir: run.root,
            meta,
            measurements,
        })
    }

    /// run.json's `state` when it is not `complete` (`running`: killed or still being written;
    /// `interrupted`, `failed`): the run is partial. `None` for a complete run, and for a
    /// results.csv without run.json (nothing says it is partial).
    pub fn partial_state(&self) -> Option<&str> {
        self.meta
            .as_ref()
            .map(|m| m.state.as_str())
            .filter(|s| *s != super::meta::STATE_COMPLETE)
    }

    /// The run's name for tables: its id from run.json, else the directory name.
    pub fn name(&self) -> String {
        self.meta
            .as_ref()
            .map(|m| m.run_id.clone())
            .filter(|s| !s.is_empty())
            .or_else(|| self.dir.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| self.dir.display().to_string())
    }
}

/// Replaces a row's summary by that of the pooled samples of all its rounds.
fn pool_summary(row: &mut ResultRow, samples: &[f64]) {
    if let Some(s) = crate::stats::summarize(samples) {
        super::set_summary(row, &s);
        row.round = None;
    }
}
