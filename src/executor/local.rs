//! The `local` executor: the worker as a child process of this host (same binary), so that a
//! crash in an engine cannot take the host process down.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Executor, ExitInfo, LineEvent, WorkerHandle};
use crate::case::Case;
use crate::error::CaseError;
use crate::protocol::Job;
use crate::results::TargetMeta;
use crate::suite::TargetSpec;

pub struct LocalExecutor {
    /// The binary that runs `worker` (this one, unless a test says otherwise).
    pub worker_exe: PathBuf,
}

impl LocalExecutor {
    pub fn new() -> Result<Self> {
        Ok(LocalExecutor {
            worker_exe: std::env::current_exe().context("failed to locate the tagbench binary")?,
        })
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn controls(&self, _target: &TargetSpec, _pending: &[Case]) -> bool {
        true
    }

    fn image_size(&mut self, _target: &TargetSpec) -> Result<u64, CaseError> {
        Err(CaseError::skipped("no image: a local target runs no container"))
    }

    fn prepare(&mut self, target: &TargetSpec) -> Result<TargetMeta> {
        Ok(TargetMeta {
            name: target.display_name(),
            executor: "local".into(),
            engine: target.engine.unwrap_or_default().as_str().into(),
            device: target.device.unwrap_or_default().as_str().into(),
            ..Default::default()
        })
    }

    fn start(&mut self, target: &TargetSpec, job: &Job, log: &Path) -> Result<Box<dyn WorkerHandle>> {
        if !target.mounts.is_empty() {
            anyhow::bail!(
                "target {}: `mounts` bind paths into a container; a local target has none",
                target.display_name()
            );
        }
        let job_path = log.with_extension("job.json");
        std::fs::write(&job_path, serde_json::to_vec(job)?)
            .with_context(|| format!("failed to write {}", job_path.display()))?;
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("failed to open {}", log.display()))?;
        let mut cmd = Command::new(&self.worker_exe);
        // A worker must not outlive its host: a host killed with SIGKILL (no clean-up runs)
        // takes its local worker with it, as a container's worker goes with its container.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl(2) with constant arguments, between fork and exec; it allocates
            // nothing and touches no lock.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .arg("worker")
            .arg("--job")
            .arg(&job_path)
            .envs(&target.env)
            .env(
                crate::executor::container_spec::UNSET_ENV_VAR,
                target.unset_env.join(","),
            )
            .stdin(if job.control {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start worker {}", self.worker_exe.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        Ok(Box::new(LocalWorker {
            stdin: child.stdin.take(),
            child,
            lines: spawn_line_reader(stdout),
            log: log.to_owned(),
            log_done: spawn_log_copier(err, stderr),
        }))
    }
}

/// Reads lines on a thread so that the runner can wait with a time limit.
pub fn spawn_line_reader(r: impl std::io::Read + Send + 'static) -> Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let stop = line.is_err();
            if tx.send(line).is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// Copies the worker's stderr into its log under the size cap; the receiver hears when the
/// copy is complete (the stderr closed and the held tail written).
fn spawn_log_copier(mut from: impl std::io::Read + Send + 'static, to: std::fs::File) -> Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = crate::sys::log_cap::CappedLog::new(to);
        let _ = std::io::copy(&mut from, &mut log);
        drop(log);
        let _ = tx.send(());
    });
    rx
}

/// Turns a channel of lines into [`LineEvent`]s.
pub fn recv_line(rx: &Receiver<std::io::Result<String>>, timeout: Duration) -> LineEvent {
    match rx.recv_timeout(timeout) {
        Ok(Ok(line)) => LineEvent::Line(line),
        Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => LineEvent::Eof,
        Err(RecvTimeoutError::Timeout) => LineEvent::Timeout,
    }
}

/// The last `max` bytes of a log file, on a line boundary.
pub fn log_tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&data[start..]).into_owned();
    match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    }
}

struct LocalWorker {
    child: Child,
    /// The worker's stdin under `Job::control`.
    stdin: Option<std::process::ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
    log: PathBuf,
    /// Hears when the stderr copy into the log is complete.
    log_done: Receiver<()>,
}

impl WorkerHandle for LocalWorker {
    fn next_line(&mut self, timeout: Duration) -> LineEvent {
        recv_line(&self.lines, timeout)
    }

    fn send(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("the worker's stdin is closed")?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .context("failed to write to the worker's stdin")
    }

    fn close_input(&mut self) {
        self.stdin = None;
    }

    fn kill(&mut self) -> Result<()> {
        match self.child.kill() {
            Ok(()) => Ok(()),
            // Already exited.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            Err(e) => Err(e).context("failed to kill the worker"),
        }
    }

    fn finish(&mut self) -> Result<ExitInfo> {
        let status = self.child.wait().context("failed to wait for the worker")?;
        let mut info = ExitInfo {
            code: status.code().map(i64::from),
            ..Default::default()
        };
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = status.signal() {
                info.detail = Some(format!(
                    "killed by signal {sig} ({})",
                    crate::sys::signal_name(sig)
                ));
            }
        }
        // A process the worker started may still hold its stderr open: wait a little, no more.
        let _ = self.log_done.recv_timeout(Duration::from_secs(2));
        info.stderr_tail = log_tail(&self.log, 2000);
        Ok(info)
    }
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Environment facts for a local target's run.json entry.
pub fn host_facts() -> BTreeMap<String, String> {
    crate::engine::cpu::probe::host_info()
}
