//! The command line (clap definitions only; `options` turns them into what the code uses).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::case::{Device, EngineKind};
use crate::outcome::EXIT_CODES_HELP;
use crate::suite::{ContainerPlatform, ExecutorKind, PullPolicy};

#[derive(Debug, Parser)]
#[command(
    name = "tagbench",
    version = crate::VERSION,
    about = "Benchmark and regression harness for GPU deep-learning container images",
    long_about = "tagbench runs benchmark suites (GEMM, attention, token generation, mixed-precision training steps, \
NCCL all-reduce, an environment probe) inside container images or on this host, records every sample to CSV, \
and compares image tags or GPUs with statistics that decide which differences are real.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a suite and write results/<run-id>/{results.csv, samples.csv, run.json, logs/}; with
    /// two or more targets, end with the comparison of the first (or `--baseline`) against the
    /// others and exit with its code, as `compare` would.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),
    /// List the cases a suite expands into, without running anything.
    List(ListArgs),
    /// Print the memory per rank of every generation case of a suite (weights, KV cache,
    /// activations, workspace) and whether it fits the GPUs, before anything runs.
    Plan(PlanArgs),
    /// Compare two runs (BASELINE CANDIDATE), or the values of one column within runs
    /// (`--along image --baseline repo/name:tagA`). The gate fails closed: exit 1 on a
    /// regression, a failed case or a metric the candidate lacks; 2 on a partial run.
    #[command(after_help = EXIT_CODES_HELP)]
    Compare(CompareArgs),
    /// Write an HTML report, summary.md and SVG/PNG plots of one or more runs; the exit code is
    /// the one the report's verdict prints.
    #[command(after_help = EXIT_CODES_HELP)]
    Report(ReportArgs),
    /// Find change points in a series of runs of one suite (nightly results) and say whether
    /// the newest segment is a regression (exit 1).
    #[command(after_help = EXIT_CODES_HELP)]
    History(HistoryArgs),
    /// Find which component of image CANDIDATE explains its regression against BASELINE in RUN:
    /// the image's environment variables, Python distributions and shared libraries that differ
    /// (run.json) are swapped from BASELINE into CANDIDATE, groups first, then halves, each swap
    /// measured beside both images in interleaved rounds. Prints the swaps with their ratio vs
    /// BASELINE and verdict (or `cannot run: <error>` for a swap that does not import), and a
    /// one-line answer. Ctrl-C stops the running step and removes its containers.
    #[command(after_help = EXIT_CODES_HELP)]
    Bisect(BisectArgs),
    /// Remove containers that interrupted runs left behind (those labelled `tagbench.run`),
    /// except those of a run that a live `tagbench run` still writes (its run directory under
    /// --results-dir is locked).
    Clean(CleanArgs),
    /// Internal: run a job inside a container or child process and print the JSON-lines protocol.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, Args, Clone)]
pub struct BisectArgs {
    /// A run (docker executor) in which CANDIDATE regressed against BASELINE.
    #[arg(value_name = "RUN")]
    pub run: PathBuf,
    /// The target (image) that is fast: the one whose components are swapped in.
    #[arg(long, value_name = "TARGET")]
    pub baseline: String,
    /// The target (image) that regressed.
    #[arg(long, value_name = "TARGET")]
    pub candidate: String,
    /// Rounds (worker processes per target) of each measurement step; at least 3.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Where the steps' runs go (default: RUN/bisect-<id>).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Output format (table, markdown, json).
    #[arg(long, value_enum, default_value_t = crate::render::Format::Table)]
    pub format: crate::render::Format,
}

#[derive(Debug, Args, Clone)]
pub struct SuiteArgs {
    /// Suite file (TOML). Without one, the embedded smoke suite (suites/smoke.toml) is used.
    pub suite: Option<PathBuf>,
    /// Override a suite value: `WORKLOAD.KEY=VALUE` (`gemm.size=[512,1024]`), `defaults.KEY=VALUE`,
    /// or a bare measurement key (`max_time_s=0.5`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run only cases whose `workload/case` label contains this text (`*` matches anything).
    /// Repeatable: a case runs if any filter matches.
    #[arg(long, value_name = "PATTERN")]
    pub filter: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub suite: SuiteArgs,
    /// Run inside this container image (repeatable: one target per image). Replaces the suite's
    /// targets; their container options (env, shm_size, ulimits, ...) are kept.
    #[arg(long = "image", value_name = "IMAGE", value_parser = image_name)]
    pub images: Vec<String>,
    /// Engine for every target: `native` (Rust: candle on CPU, cuBLAS/NCCL on CUDA) or `torch`
    /// (the image's own PyTorch).
    #[arg(long, value_enum)]
    pub engine: Option<EngineKind>,
    /// Device for every target.
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// GPUs for every target: `all`, `none`, `each` (one run per GPU) or a list such as `0,1`.
    #[arg(long, value_name = "SEL")]
    pub gpus: Option<String>,
    /// When to pull images: `never` (default: no registry is assumed), `missing`, `always`.
    #[arg(long, value_enum)]
    pub pull: Option<PullPolicy>,
    /// Where every target's worker runs: `local`, `docker` or `slurm` (job steps of one
    /// allocation, a multi-rank torch case one step of a task per rank; see the suite's
    /// `[slurm]` table and docs/slurm.md).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// Slurm partition of the allocation (`[slurm] partition`).
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// Slurm nodes to allocate (`[slurm] nodes`).
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,
    /// GPUs per Slurm node (`[slurm] gpus_per_node`); `--gpus each` makes one step per GPU.
    #[arg(long, value_name = "G")]
    pub gpus_per_node: Option<usize>,
    /// How images start inside a Slurm step: `none`, `pyxis`, `apptainer`, `oci`, `docker`.
    #[arg(long, value_enum)]
    pub container: Option<ContainerPlatform>,
    /// Directory that holds run directories.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub results_dir: PathBuf,
    /// Name of the run directory under --results-dir (default: date, time and suite name, with
    /// `-2`, `-3`, … when taken). A name, not a path: no `/`, `..` or leading `.`.
    #[arg(long, value_name = "ID", value_parser = run_id)]
    pub run_id: Option<String>,
    /// Finish an interrupted run (its id or directory): cases with rows are not measured again,
    /// samples of a case cut short before its row are dropped. The suite and options are the
    /// ones the run was started with. Refused while another tagbench writes the run (its lock
    /// file names the pid), and when a target's image ID changed since the run began.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["suite", "run_id"])]
    pub resume: Option<PathBuf>,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Where the end-of-run report goes: DIR/<run-id>/{index.html, summary.md, plots}.
    #[arg(long, default_value = "reports", value_name = "DIR")]
    pub report_dir: PathBuf,
    /// Do not write a report at the end of the run.
    #[arg(long)]
    pub no_report: bool,
    /// With two or more targets: the target (its name in the `target` column) that the others
    /// are compared against when the run ends; default the first. The run then prints the
    /// comparison and its verdict, and exits with `compare`'s code.
    #[arg(long, value_name = "TARGET")]
    pub baseline: Option<String>,
    /// With two or more targets: do not fail (exit 1) when a target lacks a case or metric that
    /// the baseline target measured (skipped there, say for a dtype its GPU lacks); the
    /// missing ones are still listed first.
    #[arg(long)]
    pub allow_missing: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub suite: SuiteArgs,
}

#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    #[command(flatten)]
    pub suite: SuiteArgs,
    /// Memory of one GPU (`80GiB`, `80g`, `40960m`); without it, the smallest GPU nvidia-smi
    /// lists on this host. The plan says `fits` / `does not fit` and the smallest
    /// tensor_parallel that fits.
    #[arg(long, value_name = "SIZE")]
    pub gpu_memory: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    /// The job file (JSON) the host wrote.
    #[arg(long, value_name = "FILE", required_unless_present = "first_cuda_op")]
    pub job: Option<PathBuf>,
    /// Times this process's CUDA start, context and first device operation on GPU N and prints
    /// the milliseconds (a `startup` case's fresh process).
    #[arg(long, value_name = "N", hide = true)]
    pub first_cuda_op: Option<usize>,
}

#[derive(Debug, Args, Clone)]
pub struct CleanArgs {
    /// Remove only the containers of this run (its id); without it, those of every run.
    #[arg(long, value_name = "ID", value_parser = run_id)]
    pub run: Option<String>,
    /// Where the runs are (as `run --results-dir`): the containers of a run whose directory
    /// there is locked by a live `tagbench run` are kept, and said so.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub results_dir: PathBuf,
}

/// `--run-id` and `clean --run`: a run id is a directory name, never a path.
fn run_id(s: &str) -> Result<String, String> {
    crate::results::check_run_id(s).map(|()| s.to_string())
}

/// The statistics settings shared by `compare`, `report` and `history`.
#[derive(Debug, Args, Clone)]
pub struct StatsArgs {
    /// Family-wise significance level, Holm-corrected across every compared metric. The test is
    /// Welch's t on the logs of the per-round medians when both sides have 3 or more rounds
    /// (worker processes), else Mann-Whitney on the samples.
    #[arg(long, default_value_t = 0.01, value_name = "P")]
    pub alpha: f64,
    /// Relative change that counts as noise (0.03 = 3%): a regression needs the whole 95% CI of
    /// the ratio (of geometric means of per-round medians with 3+ rounds a side, else of
    /// medians) beyond it, in the metric's bad direction.
    #[arg(long, default_value_t = 0.03, value_name = "FRACTION")]
    pub noise: f64,
    /// Noise threshold for one metric, e.g. `ttft=0.05`. Repeatable.
    #[arg(long = "noise-for", value_name = "METRIC=FRACTION")]
    pub noise_for: Vec<String>,
    /// Bootstrap resamples for the CI of the ratio of medians (sample-level comparisons, with
    /// fewer than 3 rounds a side).
    #[arg(long = "bootstrap", default_value_t = 2000, value_name = "N")]
    pub bootstrap: usize,
    /// Seed of the bootstrap (results are deterministic for a given seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The gate's rules that a flag relaxes (`compare`, `report`, and `run` with two or more
/// targets). By default the gate fails closed.
#[derive(Debug, Args, Clone, Default)]
pub struct GateArgs {
    /// Do not fail (exit 1) when the candidate lacks a (workload, case, metric, gpu) that the
    /// baseline measured (skipped, failed to start, or lost when its run was cut short); the
    /// missing ones are still listed first.
    #[arg(long)]
    pub allow_missing: bool,
    /// Compare an interrupted or partial run (run.json `state` not `complete`) for what it has,
    /// instead of exiting 2 with how to `tagbench run --resume` it.
    #[arg(long)]
    pub allow_partial: bool,
}

#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// BASELINE CANDIDATE (run directories or results.csv files); with `--baseline RUN...`,
    /// the CANDIDATE only; with `--along`, any number of runs to compare within.
    #[arg(value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Compare along this column within the runs: image, gpu_name, engine, target, device,
    /// image_id or run_id.
    #[arg(long, value_name = "COLUMN")]
    pub along: Option<String>,
    /// With `--along`: the column value every other value is compared against. Without it:
    /// earlier runs of the baseline pooled into one baseline (`--baseline RUN... CANDIDATE`,
    /// or a glob such as 'results/*-nightly'); between-run drift is not controlled, and the
    /// spread between those runs widens the CI.
    #[arg(long, value_name = "RUN|VALUE", num_args = 1..)]
    pub baseline: Vec<String>,
    #[command(flatten)]
    pub stats: StatsArgs,
    #[command(flatten)]
    pub gate: GateArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::render::Format::Table)]
    pub format: crate::render::Format,
    /// Write the output to this file instead of stdout (the verdict summary still goes to stderr).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ReportArgs {
    /// Run directories (or results.csv files) to report on.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Output directory (created): index.html, summary.md, *.svg, *.png.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Include a comparison: without `--along`, the baseline RUN every RUN is compared with;
    /// with `--along COLUMN`, the column value to compare against.
    #[arg(long, value_name = "RUN|VALUE")]
    pub baseline: Option<String>,
    /// Compare along this column within the runs (see `compare --along`).
    #[arg(long, value_name = "COLUMN", requires = "baseline")]
    pub along: Option<String>,
    #[command(flatten)]
    pub stats: StatsArgs,
    #[command(flatten)]
    pub gate: GateArgs,
}

#[derive(Debug, Args, Clone)]
pub struct HistoryArgs {
    /// Directory holding run directories of one suite (ordered by run.json `started_at`).
    #[arg(value_name = "RESULTS_DIR")]
    pub results_dir: PathBuf,
    /// Only runs of this suite (default: the suite of the newest run).
    #[arg(long)]
    pub suite: Option<String>,
    /// At most this many runs on each side of a change point enter its t-test.
    #[arg(long, default_value_t = 50)]
    pub window: usize,
    /// A change point needs a t-test p-value below this.
    #[arg(long, default_value_t = 0.001, value_name = "P")]
    pub max_p: f64,
    /// Every segment between change points has at least this many runs.
    #[arg(long, default_value_t = 3)]
    pub min_segment: usize,
    /// Relative change that counts as noise (the smallest change point magnitude).
    #[arg(long, default_value_t = 0.03, value_name = "FRACTION")]
    pub noise: f64,
    /// Noise threshold for one metric, e.g. `ttft=0.05`. Repeatable.
    #[arg(long = "noise-for", value_name = "METRIC=FRACTION")]
    pub noise_for: Vec<String>,
    /// Output format (junit is not offered here).
    #[arg(long, value_enum, default_value_t = crate::render::Format::Table)]
    pub format: crate::render::Format,
    /// Write the output to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// An `--image` value: a name, never empty (an unset shell variable gives `--image ''`).
fn image_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("--image needs an image name, got an empty string".into());
    }
    Ok(s.to_string())
}
