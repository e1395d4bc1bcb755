//! Executors start the worker somewhere (a local child process, a container) and hand its
//! stdout back line by line. The runner is the same for all of them.

pub mod clean;
pub mod container_spec;
pub mod docker;
pub mod gpus;
pub mod local;
pub mod slurm;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::case::Case;
use crate::error::CaseError;
use crate::protocol::Job;
use crate::results::{Placement, TargetMeta};
use crate::suite::{ExecutorKind, TargetSpec};

/// A target its engine cannot run as asked (GPUs through Podman's Docker-compatible API): its
/// cases are `skipped` with this reason rather than `failed`, as an engine skips what the
/// target lacks.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// What the worker's stdout gave, or why it gave nothing.
#[derive(Debug)]
pub enum LineEvent {
    Line(String),
    /// stdout closed: the worker exited (or crashed).
    Eof,
    /// Nothing arrived within the time asked for.
    Timeout,
}

/// How a worker ended.
#[derive(Debug, Clone, Default)]
pub struct ExitInfo {
    pub code: Option<i64>,
    /// A description of an abnormal end (`killed by signal 9`, `OOM-killed`).
    pub detail: Option<String>,
    /// The last lines of the worker's stderr, for messages.
    pub stderr_tail: String,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.detail) {
            (_, Some(d)) => write!(f, "{d}")?,
            (Some(c), None) => write!(f, "exit status {c}")?,
            (None, None) => write!(f, "unknown exit status")?,
        }
        let tail = crate::sys::tail_lines(&self.stderr_tail, 3);
        if !tail.is_empty() {
            write!(f, "; stderr: {tail}")?;
        }
        Ok(())
    }
}

/// A running worker.
pub trait WorkerHandle {
    /// The next stdout line, waiting at most `timeout`.
    fn next_line(&mut self, timeout: Duration) -> LineEvent;
    /// Stops the worker now.
    fn kill(&mut self) -> Result<()>;
    /// Waits for the worker to end and releases everything it held (a container is removed).
    fn finish(&mut self) -> Result<ExitInfo>;
    /// Where the worker runs, when the executor places it (a Slurm step on a node).
    fn placement(&self) -> Option<Placement> {
        None
    }
    /// Writes one command line to the worker's stdin (a job with `control`).
    fn send(&mut self, _line: &str) -> Result<()> {
        anyhow::bail!("this worker takes no commands")
    }
    /// Closes the worker's stdin: a controlled worker then ends its job.
    fn close_input(&mut self) {}
}

/// Somewhere a worker can run.
pub trait Executor {
    /// `local`, `docker`, `slurm`.
    fn name(&self) -> &'static str;
    /// Checks the target can run (the image exists, the engine answers) and describes it.
    fn prepare(&mut self, target: &TargetSpec) -> Result<TargetMeta>;
    /// Starts a worker on `job`; its stderr goes to `log`.
    fn start(&mut self, target: &TargetSpec, job: &Job, log: &Path) -> Result<Box<dyn WorkerHandle>>;
    /// How many of the `pending` cases (at least one) the next worker takes. All of them, unless
    /// the executor launches some cases differently (a multi-rank case is a Slurm step of its
    /// own, with one task per rank).
    fn job_len(&self, _target: &TargetSpec, pending: &[Case]) -> usize {
        pending.len()
    }
    /// Whether one worker can take all of `pending` under the host's commands on its stdin
    /// (`Job::control`: paired batches), with the other targets' workers running at the same
    /// time. Not under Slurm: its steps wait for each other's resources.
    fn controls(&self, target: &TargetSpec, pending: &[Case]) -> bool {
        let _ = (target, pending);
        false
    }
    /// The target's image size in bytes as its engine reports it (a `startup` case's
    /// `image_size`); `Err(Skipped)` where the target has none.
    fn image_size(&mut self, _target: &TargetSpec) -> Result<u64, CaseError> {
        Err(CaseError::skipped(format!(
            "no image size: the {} executor does not report one",
            self.name()
        )))
    }
}

/// The executor for a target: the one it names, else `local` when it has no image and the
/// container engine (whose containers are labelled with `run_id`) when it has one.
pub fn for_target(target: &TargetSpec, run_id: &str) -> Result<Box<dyn Executor>> {
    Ok(match target.executor_kind() {
        ExecutorKind::Local => Box::new(local::LocalExecutor::new()?),
        ExecutorKind::Docker => Box::new(docker::DockerExecutor::new(run_id)?),
        ExecutorKind::Slurm => Box::new(slurm::SlurmExecutor::new(run_id)?),
    })
}
