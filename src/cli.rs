//! The command line (clap definitions only; `options` turns them into what the code uses).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::case::{Device, EngineKind};
use crate::suite::PullPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "tagbench",
    version,
    about = "Benchmark and regression harness for GPU deep-learning container images",
    long_about = "tagbench runs benchmark suites (GEMM, attention, token generation, mixed-precision training steps, \
NCCL all-reduce, an environment probe) inside container images or on this host, records every sample to CSV, \
and compares image tags or GPUs with statistics that decide which differences are real.\n\n\
Exit codes: 0 = fine, 1 = regression found, 2 = error (bad input, no data, failed cases)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a suite and write results/<run-id>/{results.csv, samples.csv, run.json, logs/}.
    Run(RunArgs),
    /// List the cases a suite expands into, without running anything.
    List(ListArgs),
    /// Remove containers that interrupted runs left behind (those labelled `tagbench.run`).
    Clean(CleanArgs),
    /// Internal: run a job inside a container or child process and print the JSON-lines protocol.
    #[command(hide = true)]
    Worker(WorkerArgs),
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
    #[arg(long = "image", value_name = "IMAGE")]
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
    /// Directory that holds run directories.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub results_dir: PathBuf,
    /// Name of the run directory (default: date, time and suite name).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Finish an interrupted run (its id or directory): cases with rows are not measured again.
    /// The suite and options are the ones the run was started with.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["suite", "run_id"])]
    pub resume: Option<PathBuf>,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Do not write a report at the end of the run.
    #[arg(long)]
    pub no_report: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub suite: SuiteArgs,
}

#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    /// The job file (JSON) the host wrote.
    #[arg(long, value_name = "FILE")]
    pub job: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct CleanArgs {
    /// Remove only the containers of this run (its id); without it, those of every run.
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
}
