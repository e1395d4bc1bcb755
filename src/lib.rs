//! tagbench: a benchmark and regression harness for GPU deep-learning container images.
//!
//! The data flow: the command line ([`cli`]) becomes validated [`options`]; suites expand into
//! cases ([`suite`]); a run plans targets and rounds and supervises one worker per target and
//! round ([`run`]); executors start that worker ([`executor`]), which measures with an engine
//! ([`engine`]) and streams the protocol ([`protocol`]); every row is built by
//! [`results::record`] and read back by [`results::load`]; [`compare`], [`history`] and
//! [`report`] judge and show runs through [`render`] and the pure statistics of [`stats`].
//! Every command ends in an [`outcome::Outcome`], the one home of exit codes. A module imports
//! only modules below it.

/// The version `--version` prints: the package version and the build's identity (a hash of the
/// sources, from build.rs), which tells a worker linked from other sources apart.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (build ",
    env!("TAGBENCH_BUILD_ID"),
    ")"
);

pub mod bisect;
pub mod case;
pub mod cli;
pub mod compare;
pub mod components;
pub mod engine;
pub mod error;
pub mod executor;
pub mod history;
pub mod measure;
pub mod options;
pub mod outcome;
pub mod protocol;
pub mod render;
pub mod report;
pub mod results;
pub mod run;
pub mod stats;
pub mod suite;
pub mod sys;
pub mod worker;
pub mod workload;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::outcome::Outcome;

/// Runs the command line and returns the process exit code.
pub fn main_impl() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => options::RunOptions::from_args(&args).and_then(run::cmd_run),
        Command::List(args) => run::cmd_list(&options::SuiteOptions::from(&args.suite)),
        Command::Plan(args) => options::gpu_memory(args.gpu_memory.as_deref())
            .and_then(|mem| run::fit::cmd_plan(&options::SuiteOptions::from(&args.suite), mem)),
        Command::Compare(args) => compare::cmd_compare(args),
        Command::Report(args) => report::cmd_report(args),
        Command::History(args) => history::cmd_history(args),
        Command::Bisect(args) => bisect::cmd_bisect(bisect::BisectOptions {
            run: args.run,
            baseline: args.baseline,
            candidate: args.candidate,
            rounds: args.rounds,
            work_dir: args.work_dir,
            format: args.format,
        }),
        Command::Clean(args) => executor::clean::cmd_clean(args.run.as_deref(), &args.results_dir),
        Command::Worker(args) => match (&args.job, args.first_cuda_op) {
            (_, Some(gpu)) => engine::cuda::first_cuda_op_ms(gpu).and_then(|ms| {
                outln!("{ms}")?;
                Ok(Outcome::Complete)
            }),
            (Some(job), None) => {
                sys::unset_requested_env();
                let stdout = std::io::stdout().lock();
                worker::run_job_file(job, stdout).map(|_| Outcome::Complete)
            }
            (None, None) => unreachable!("clap requires --job without --first-cuda-op"),
        },
    };
    match result {
        Ok(outcome) => outcome.code(),
        Err(e) => {
            errln!("error: {e:#}");
            outcome::exit_code_of(&e)
        }
    }
}
