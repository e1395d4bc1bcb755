//! tagbench: a benchmark and regression harness for GPU deep-learning container images.
//!
//! Suites expand into cases ([`suite`]), executors start a worker ([`executor`]) that measures
//! with an engine ([`engine`]) and streams the protocol ([`protocol`]); the runner ([`runner`])
//! writes results ([`results`]).

pub mod case;
pub mod cli;
pub mod compare;
pub mod engine;
pub mod error;
pub mod executor;
pub mod history;
pub mod measure;
pub mod protocol;
pub mod report;
pub mod results;
pub mod runner;
pub mod stats;
pub mod suite;
pub mod sys;
pub mod worker;
pub mod workload;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{EXIT_ERROR, EXIT_OK};

/// Runs the command line and returns the process exit code.
pub fn main_impl() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => runner::cmd_run(args),
        Command::List(args) => runner::cmd_list(args),
        Command::Compare(args) => compare::cmd_compare(args),
        Command::Report(args) => report::cmd_report(args),
        Command::History(args) => history::cmd_history(args),
        Command::Clean(args) => executor::clean::cmd_clean(args.run.as_deref()),
        Command::Worker(args) => {
            let stdout = std::io::stdout().lock();
            worker::run_job_file(&args.job, stdout).map(|_| EXIT_OK)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_ERROR
        }
    }
}
