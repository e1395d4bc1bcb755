//! Typed, validated options: built once from the command line (`cli.rs`, clap only) and what the
//! rest of the code sees. The run options are stored in run.json, so `--resume` rebuilds the
//! same run from data rather than by parsing a stored command line again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::case::{Device, EngineKind};
use crate::cli::{GateArgs, RunArgs, StatsArgs, SuiteArgs};
use crate::suite::{ContainerPlatform, ExecutorKind, GpuSelection, PullPolicy, SlurmSettings};

/// The statistical settings of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareOptions {
    /// Family-wise significance level (Holm-corrected).
    pub alpha: f64,
    /// Relative change below which a difference is noise (0.03 = 3%).
    pub noise: f64,
    /// Per-metric overrides of `noise`, by metric name.
    pub noise_for: BTreeMap<String, f64>,
    /// Bootstrap resamples for the CI of the ratio.
    pub bootstrap: usize,
    /// Seed of the bootstrap (each comparison derives its own stream from it).
    pub seed: u64,
    /// Fewer samples than this on either side gives `noisy`.
    pub min_samples: usize,
    /// `--allow-missing`: a metric the baseline measured and the candidate lacks does not close
    /// the gate (it is still listed, first).
    pub allow_missing: bool,
    /// `--allow-partial`: an interrupted or partial run is compared for what it has.
    pub allow_partial: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            alpha: 0.01,
            noise: 0.03,
            noise_for: BTreeMap::new(),
            bootstrap: 2000,
            seed: 0,
            min_samples: 5,
            allow_missing: false,
            allow_partial: false,
        }
    }
}

impl CompareOptions {
    pub fn noise_of(&self, metric: &str) -> f64 {
        self.noise_for.get(metric).copied().unwrap_or(self.noise)
    }
}

impl CompareOptions {
    /// The validated statistics and gate options of `compare` and `report`.
    pub fn from_args(args: &StatsArgs, gate: &GateArgs) -> Result<Self> {
        if !(args.alpha > 0.0 && args.alpha < 1.0) {
            bail!("bad --alpha {}: must be in (0, 1)", args.alpha);
        }
        if args.bootstrap < 100 {
            bail!("bad --bootstrap {}: use at least 100 resamples", args.bootstrap);
        }
        let (noise, noise_for) = noise_thresholds(args.noise, &args.noise_for)?;
        Ok(CompareOptions {
            alpha: args.alpha,
            noise,
            noise_for,
            bootstrap: args.bootstrap,
            seed: args.seed,
            allow_missing: gate.allow_missing,
            allow_partial: gate.allow_partial,
            ..Default::default()
        })
    }
}

/// Validates `--noise` and every `--noise-for METRIC=FRACTION` (compare, report and history).
pub fn noise_thresholds(noise: f64, noise_for: &[String]) -> Result<(f64, BTreeMap<String, f64>)> {
    if !(0.0..1.0).contains(&noise) {
        bail!("bad --noise {noise}: must be in [0, 1)");
    }
    let per_metric = noise_for
        .iter()
        .map(|s| parse_noise_for(s))
        .collect::<Result<_>>()?;
    Ok((noise, per_metric))
}

/// Parses `METRIC=FRACTION`.
fn parse_noise_for(s: &str) -> Result<(String, f64)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("bad --noise-for `{s}`: expected METRIC=FRACTION"))?;
    let f: f64 = v
        .trim()
        .parse()
        .with_context(|| format!("bad --noise-for `{s}`: `{v}` is not a number"))?;
    if !(0.0..1.0).contains(&f) {
        bail!("bad --noise-for `{s}`: the fraction must be in [0, 1)");
    }
    Ok((k.trim().to_string(), f))
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Which suite, with which overrides and filters (`run` and `list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SuiteOptions {
    /// The suite file; `None` is the embedded smoke suite. Not stored: a resumed run reads the
    /// copy in its run directory.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub set: Vec<String>,
    #[serde(default)]
    pub filter: Vec<String>,
}

/// `--gpu-memory SIZE` of `tagbench plan`, checked once (`80GiB`, `80g`, a byte count).
pub fn gpu_memory(arg: Option<&str>) -> Result<Option<u64>> {
    let Some(s) = arg else {
        return Ok(None);
    };
    let size = crate::suite::ByteSize::parse(s).map_err(|e| anyhow::anyhow!("--gpu-memory: {e}"))?;
    if size.bytes() <= 0 {
        bail!("--gpu-memory: `{s}` is not a positive size");
    }
    Ok(Some(size.bytes() as u64))
}

impl From<&SuiteArgs> for SuiteOptions {
    fn from(a: &SuiteArgs) -> Self {
        SuiteOptions {
            path: a.suite.clone(),
            set: a.set.clone(),
            filter: a.filter.clone(),
        }
    }
}

/// The options of `tagbench run`. The serialised part is what makes the run (stored in
/// run.json); the skipped part says where and how to show it, and comes from the command line
/// that resumes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    #[serde(flatten)]
    pub suite: SuiteOptions,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub engine: Option<EngineKind>,
    #[serde(default)]
    pub device: Option<Device>,
    /// `--gpus` as given (validated when built); kept as text so that `each` expands again
    /// against the host that resumes.
    #[serde(default)]
    pub gpus: Option<String>,
    #[serde(default)]
    pub pull: Option<PullPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorKind>,
    /// `--partition`, `--nodes`, `--gpus-per-node`: over the suite's `[slurm]` table.
    #[serde(default, skip_serializing_if = "is_default")]
    pub slurm: SlurmSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerPlatform>,
    #[serde(skip)]
    pub results_dir: PathBuf,
    #[serde(skip)]
    pub run_id: Option<String>,
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    #[serde(skip)]
    pub no_progress: bool,
    #[serde(skip)]
    pub report_dir: PathBuf,
    #[serde(skip)]
    pub no_report: bool,
    /// `--baseline TARGET`: what the end-of-run comparison compares against (default: the
    /// first target).
    #[serde(skip)]
    pub baseline: Option<String>,
    /// `--allow-missing` for the end-of-run comparison.
    #[serde(skip)]
    pub allow_missing: bool,
}

impl RunOptions {
    /// The validated options of a command line.
    pub fn from_args(a: &RunArgs) -> Result<Self> {
        let o = RunOptions {
            suite: SuiteOptions::from(&a.suite),
            images: a.images.clone(),
            engine: a.engine,
            device: a.device,
            gpus: a.gpus.clone(),
            pull: a.pull,
            executor: a.executor,
            slurm: SlurmSettings {
                partition: a.partition.clone(),
                nodes: a.nodes,
                gpus_per_node: a.gpus_per_node,
                ..Default::default()
            },
            container: a.container,
            results_dir: a.results_dir.clone(),
            run_id: a.run_id.clone(),
            resume: a.resume.clone(),
            no_progress: a.no_progress,
            report_dir: a.report_dir.clone(),
            no_report: a.no_report,
            baseline: a.baseline.clone(),
            allow_missing: a.allow_missing,
        };
        o.gpu_selection()?;
        o.slurm.check().map_err(|m| anyhow::anyhow!("bad --nodes: {m}"))?;
        Ok(o)
    }

    /// `--gpus`, parsed.
    pub fn gpu_selection(&self) -> Result<Option<GpuSelection>> {
        self.gpus
            .as_deref()
            .map(GpuSelection::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("bad --gpus: {e}"))
    }

    /// The options a stored run was started with, and this command line's presentation
    /// options (progress, report). Runs written before options were stored keep their command
    /// line in run.json's `args`: that is read through clap once more.
    pub fn resumed(
        &self,
        stored: Option<&RunOptions>,
        legacy_args: &[String],
        run_json: &Path,
    ) -> Result<Self> {
        let mut o = match stored {
            Some(s) => s.clone(),
            None => Self::from_legacy_args(legacy_args, run_json)?,
        };
        o.no_progress |= self.no_progress;
        o.report_dir = self.report_dir.clone();
        o.no_report |= self.no_report;
        o.resume = self.resume.clone();
        o.baseline = self.baseline.clone();
        o.allow_missing = self.allow_missing;
        Ok(o)
    }

    fn from_legacy_args(args: &[String], run_json: &Path) -> Result<Self> {
        let mut argv = vec!["tagbench".to_string(), "run".to_string()];
        argv.extend(args.iter().cloned());
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(&argv)
            .with_context(|| format!("failed to read the options stored in {}", run_json.display()))?;
        let crate::cli::Command::Run(a) = cli.command else {
            bail!("{} holds no run options", run_json.display());
        };
        RunOptions::from_args(&a)
            .with_context(|| format!("failed to read the options stored in {}", run_json.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_checked_in_one_place() {
        assert!(noise_thresholds(1.5, &[]).is_err());
        assert!(noise_thresholds(0.03, &["ttft".into()]).is_err());
        assert!(noise_thresholds(0.03, &["ttft=2".into()]).is_err());
        let (n, m) = noise_thresholds(0.03, &["ttft = 0.05".into()]).unwrap();
        assert_eq!((n, m["ttft"]), (0.03, 0.05));
    }

    #[test]
    fn run_options_round_trip_through_json() {
        let o = RunOptions {
            suite: SuiteOptions {
                path: None,
                set: vec!["max_time_s=0.5".into()],
                filter: vec!["gemm".into()],
            },
            images: vec!["img:a".into()],
            engine: Some(EngineKind::Torch),
            gpus: Some("0,1".into()),
            pull: Some(PullPolicy::Missing),
            ..Default::default()
        };
        let back: RunOptions = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn slurm_options_are_stored_for_resume() {
        let o = RunOptions {
            executor: Some(ExecutorKind::Slurm),
            slurm: SlurmSettings {
                partition: Some("gpu".into()),
                nodes: Some(2),
                gpus_per_node: Some(8),
                ..Default::default()
            },
            container: Some(ContainerPlatform::Apptainer),
            ..Default::default()
        };
        let back: RunOptions = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
        // Runs without them store nothing new.
        let plain = serde_json::to_string(&RunOptions::default()).unwrap();
        assert!(!plain.contains("slurm") && !plain.contains("executor"), "{plain}");
    }

    #[test]
    fn legacy_args_still_resume() {
        let args: Vec<String> = ["--filter", "gemm", "--engine", "native", "--gpus", "all"]
            .map(String::from)
            .to_vec();
        let o = RunOptions::from_legacy_args(&args, Path::new("run.json")).unwrap();
        assert_eq!(o.suite.filter, vec!["gemm".to_string()]);
        assert_eq!(o.engine, Some(EngineKind::Native));
        let e = RunOptions::from_legacy_args(&["--nope".into()], Path::new("x/run.json")).unwrap_err();
        assert!(format!("{e:#}").contains("x/run.json"), "{e:#}");
    }
}
