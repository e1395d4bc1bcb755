//! What a run will do, before anything runs: the suite (file or embedded smoke suite), the case
//! filters, the targets after command-line overrides, and how many rounds each case gets.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::case::{Case, WorkloadKind};
use crate::executor;
use crate::options::{RunOptions, SuiteOptions};
use crate::suite::{ExecutorKind, Suite, TargetSpec, EMBEDDED_SMOKE};

/// Reads the suite named on the command line (or the embedded smoke suite).
pub fn load_suite(opts: &SuiteOptions) -> Result<(Suite, String)> {
    let (text, path) = match &opts.path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("failed to read suite {}", p.display()))?,
            p.clone(),
        ),
        None => (
            EMBEDDED_SMOKE.to_string(),
            PathBuf::from("suites/smoke.toml (embedded)"),
        ),
    };
    let suite = Suite::parse(&text, &path, &opts.set)?;
    Ok((suite, text))
}

/// Whether a case's `workload/case` label matches any filter (all match when there are none).
pub fn matches_filter(filters: &[String], label: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| glob_contains(f, label))
}

/// Substring match where `*` matches any run of characters.
fn glob_contains(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut pos = 0;
    for p in parts {
        match text[pos..].find(p) {
            Some(i) => pos += i + p.len(),
            None => return false,
        }
    }
    true
}

/// The cases of a suite that pass the filters, in suite order.
pub fn filtered_cases(suite: &Suite, filters: &[String]) -> Vec<Case> {
    suite
        .cases()
        .filter(|c| matches_filter(filters, &c.label()))
        .cloned()
        .collect()
}

/// The targets of a run after command-line overrides.
pub fn resolve_targets(suite: &Suite, opts: &RunOptions) -> Result<Vec<TargetSpec>> {
    let base = suite.targets.first().cloned().unwrap_or_else(TargetSpec::local);
    let mut targets = if opts.images.is_empty() {
        if suite.targets.is_empty() {
            vec![TargetSpec::local()]
        } else {
            suite.targets.clone()
        }
    } else {
        opts.images
            .iter()
            .map(|img| TargetSpec {
                name: None,
                image: Some(img.clone()),
                local: false,
                ..base.clone()
            })
            .collect()
    };
    let gpus = opts.gpu_selection()?;
    for t in &mut targets {
        if let Some(e) = opts.engine {
            t.engine = Some(e);
        }
        if let Some(d) = opts.device {
            t.device = Some(d);
        }
        if let Some(g) = &gpus {
            t.gpus = g.clone();
        }
        if let Some(p) = opts.pull {
            t.pull = Some(p);
        }
        if let Some(e) = opts.executor {
            t.executor = Some(e);
        }
        if let Some(c) = opts.container {
            t.container = Some(c);
        }
        if t.executor == Some(ExecutorKind::Slurm) {
            t.slurm = Some(suite.slurm.merged(&opts.slurm));
        }
        t.check()
            .map_err(|m| anyhow::anyhow!("target `{}`: {m}", t.display_name()))?;
    }
    // Under Slurm `each` means every GPU of the allocation, not of this (login) host.
    let slurm_gpus = targets
        .iter()
        .find_map(|t| t.slurm.as_ref())
        .map(|s| s.nodes() * s.gpus_per_node.unwrap_or(0));
    let gpu_count = || match slurm_gpus {
        Some(0) => bail!("`--gpus each` under slurm needs `gpus_per_node` (--gpus-per-node)"),
        Some(n) => Ok(n),
        None => executor::gpus::host_gpu_count(),
    };
    let targets = executor::gpus::expand_gpu_each(targets, gpu_count)?;
    let mut seen = HashSet::new();
    for t in &targets {
        if !seen.insert(t.display_name()) {
            bail!(
                "target `{}` appears twice; give the targets distinct names",
                t.display_name()
            );
        }
    }
    Ok(targets)
}

/// How many rounds a case is measured in (the probe reports facts: once is enough).
pub fn rounds_of(c: &Case) -> usize {
    if c.kind == WorkloadKind::Probe {
        1
    } else {
        c.measure.rounds.max(1)
    }
}

/// A case's rounds design: `rounds_of` first, at most `max_rounds` (the probe: one round).
pub fn design_of(c: &Case) -> crate::stats::Design {
    let min = rounds_of(c);
    crate::stats::Design {
        min_rounds: min,
        max_rounds: if c.kind == WorkloadKind::Probe {
            min
        } else {
            c.measure.max_rounds.max(min)
        },
    }
}

/// Everything a run measures: the suite, its targets and the cases that passed the filters.
pub struct Plan {
    pub suite: Suite,
    /// The suite file's text, copied into the run directory for `--resume`.
    pub suite_text: String,
    pub targets: Vec<TargetSpec>,
    pub cases: Vec<Case>,
}

impl Plan {
    pub fn build(opts: &RunOptions) -> Result<Plan> {
        let (suite, suite_text) = load_suite(&opts.suite)?;
        let targets = resolve_targets(&suite, opts)?;
        let cases = filtered_cases(&suite, &opts.suite.filter);
        if cases.is_empty() {
            bail!(
                "no case of suite `{}` matches the filters {:?}",
                suite.name,
                opts.suite.filter
            );
        }
        Ok(Plan {
            suite,
            suite_text,
            targets,
            cases,
        })
    }

    /// The most rounds any case gets.
    pub fn max_rounds(&self) -> usize {
        self.cases.iter().map(rounds_of).max().unwrap_or(1)
    }

    /// (target, case, round) steps in all, for the progress bar.
    pub fn total_steps(&self) -> usize {
        self.targets.len() * self.cases.iter().map(rounds_of).sum::<usize>()
    }
}

/// A fresh run id: local date and time, then the suite's name.
pub fn new_run_id(suite: &str) -> String {
    format!(
        "{}-{}",
        chrono::Local::now().format("%Y%m%d-%H%M%S"),
        crate::sys::safe_name(suite)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(matches_filter(&[], "gemm/size=256"));
        assert!(matches_filter(&["gemm".into()], "gemm/size=256"));
        assert!(matches_filter(&["gemm/*fp32".into()], "gemm/size=256,dtype=fp32"));
        assert!(!matches_filter(&["attention".into()], "gemm/size=256"));
    }

    #[test]
    fn run_ids_are_safe_names() {
        assert!(new_run_id("my suite").ends_with("-my_suite"));
    }
}
