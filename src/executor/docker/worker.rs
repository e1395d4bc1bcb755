//! A running worker container: its output pump (stdout lines to the runner, stderr to the log),
//! kill, wait + inspect + remove, and how it ended (signal, OOM, an image the worker cannot run in).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::KillContainerOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::runtime::Runtime;

use super::api::{call, engine_message, remove_container, OutputStream, API_TIMEOUT};
use crate::executor::container_spec::WORKER_PATH;
use crate::executor::local::{log_tail, recv_line};
use crate::executor::{ExitInfo, LineEvent, WorkerHandle};
use crate::suite::ByteSize;
use crate::sys::interrupt::hold_if_interrupted;

/// The prefix of the lines the host adds to a worker's log.
const HOST_NOTE: &str = "[tagbench]";
/// How long a finished or killed container may take to stop before it is killed (again).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a worker's stderr says that the image's libc cannot run it: no loader at all
/// (`exec ...: no such file or directory`) or too old a glibc (`GLIBC_2.34' not found`).
pub(super) fn libc_problem(stderr: &str) -> bool {
    let exec_failed = stderr.contains(&format!("exec {WORKER_PATH}: no such file or directory"));
    let old_glibc = stderr.contains("GLIBC_") && stderr.contains("not found");
    exec_failed || old_glibc
}

/// Why a worker that printed nothing ended, where the cause is the image itself (the preflight
/// check says which glibc was found and which is needed).
fn diagnose_image(stderr: &str, image: &str) -> Option<String> {
    libc_problem(stderr).then(|| {
        format!(
            "image {image} has no glibc the worker can run with (its stderr: {})",
            stderr.trim()
        )
    })
}

/// How a container ended, from its state.
pub(super) fn exit_info(
    state: &ContainerInspectResponse,
    memory: Option<&ByteSize>,
    stderr_tail: String,
    image: &str,
) -> ExitInfo {
    let st = state.state.clone().unwrap_or_default();
    let code = st.exit_code;
    let detail = if st.oom_killed == Some(true) {
        Some(match memory {
            Some(m) => format!("OOM-killed: the container exceeded its memory limit ({m})"),
            None => "OOM-killed: the container ran out of memory".to_string(),
        })
    } else if let Some(d) = diagnose_image(&stderr_tail, image) {
        Some(d)
    } else {
        match code {
            // The engine reports a process killed by signal N as 128 + N.
            Some(c) if (129..160).contains(&c) => {
                let sig = (c - 128) as i32;
                Some(format!(
                    "killed by signal {sig} ({})",
                    crate::sys::signal_name(sig)
                ))
            }
            _ => st.error.filter(|e| !e.is_empty()),
        }
    };
    ExitInfo {
        code,
        detail,
        stderr_tail,
    }
}

/// Forwards the container's stdout line by line into `tx` and appends its stderr to `log`.
pub(super) async fn pump_output(mut output: OutputStream, tx: Sender<std::io::Result<String>>, log: PathBuf) {
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .ok()
        .map(crate::sys::log_cap::CappedLog::new);
    let mut partial: Vec<u8> = Vec::new();
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) => {
                partial.extend_from_slice(&message);
                while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1])
                        .trim_end_matches('\r')
                        .to_string();
                    if tx.send(Ok(text)).is_err() {
                        return;
                    }
                }
            }
            Ok(LogOutput::StdErr { message }) | Ok(LogOutput::Console { message }) => {
                if let Some(f) = log_file.as_mut() {
                    let _ = f.write_all(&message);
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        }
    }
    if !partial.is_empty() {
        let _ = tx.send(Ok(String::from_utf8_lossy(&partial).into_owned()));
    }
}

pub(super) struct DockerWorker {
    pub(super) rt: Arc<Runtime>,
    pub(super) docker: Docker,
    pub(super) id: String,
    pub(super) name: String,
    pub(super) image: String,
    pub(super) memory: Option<ByteSize>,
    pub(super) lines: Receiver<std::io::Result<String>>,
    /// The container's stdin under `Job::control`.
    pub(super) input: Option<super::api::Input>,
    pub(super) pump: Option<tokio::task::JoinHandle<()>>,
    pub(super) log: PathBuf,
    pub(super) created_at: Instant,
    pub(super) create_ms: f64,
    pub(super) start_ms: f64,
    pub(super) first_line_seen: bool,
    pub(super) removed: bool,
}

impl DockerWorker {
    /// Notes in the log how long the container took to say its first protocol line: the
    /// per-container overhead of this executor.
    fn note_first_line(&mut self) {
        self.first_line_seen = true;
        let first_ms = self.created_at.elapsed().as_secs_f64() * 1e3;
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(
                f,
                "{HOST_NOTE} container {} ({}): create {:.0} ms, attach+start {:.0} ms, first protocol line {:.0} ms after create",
                self.name, self.image, self.create_ms, self.start_ms, first_ms
            );
        }
    }

    fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        let docker = self.docker.clone();
        let id = self.id.clone();
        self.rt
            .block_on(remove_container(&docker, &id))
            .with_context(|| format!("failed to remove container {}", self.name))?;
        self.removed = true;
        Ok(())
    }
}

impl WorkerHandle for DockerWorker {
    fn next_line(&mut self, timeout: Duration) -> LineEvent {
        let ev = recv_line(&self.lines, timeout);
        if matches!(ev, LineEvent::Eof) {
            hold_if_interrupted();
        }
        if matches!(ev, LineEvent::Line(_)) && !self.first_line_seen {
            self.note_first_line();
        }
        ev
    }

    fn send(&mut self, line: &str) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let input = self.input.as_mut().context("the container's stdin is closed")?;
        self.rt
            .block_on(async {
                tokio::time::timeout(API_TIMEOUT, async {
                    input.write_all(line.as_bytes()).await?;
                    input.flush().await
                })
                .await
            })
            .map_err(|_| {
                anyhow!(
                    "the engine did not take the command within {} s",
                    API_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("failed to write to container {}'s stdin", self.name))
    }

    fn close_input(&mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(mut input) = self.input.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), input.shutdown()).await });
        }
    }

    fn kill(&mut self) -> Result<()> {
        let docker = self.docker.clone();
        let id = self.id.clone();
        let opts = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
        match self.rt.block_on(async {
            tokio::time::timeout(API_TIMEOUT, docker.kill_container(&id, Some(opts))).await
        }) {
            Ok(Ok(())) => Ok(()),
            // 409: not running (it ended on its own); 404: gone.
            Ok(Err(DockerError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            })) => Ok(()),
            Ok(Err(e)) => Err(anyhow!(
                "failed to kill container {}: {}",
                self.name,
                engine_message(&e)
            )),
            Err(_) => Err(anyhow!(
                "failed to kill container {}: the engine did not answer",
                self.name
            )),
        }
    }

    fn finish(&mut self) -> Result<ExitInfo> {
        hold_if_interrupted();
        let docker = self.docker.clone();
        let id = self.id.clone();
        let pump = self.pump.take();
        let state = self.rt.block_on(async {
            let waited =
                tokio::time::timeout(STOP_TIMEOUT, docker.wait_container(&id, None).collect::<Vec<_>>())
                    .await;
            if waited.is_err() {
                let opts = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                let _ = tokio::time::timeout(API_TIMEOUT, docker.kill_container(&id, Some(opts))).await;
            }
            // The last stderr bytes reach the log before its tail is read.
            if let Some(p) = pump {
                let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
            }
            call(
                &format!("inspect container {}", self.name),
                docker.inspect_container(&id, None),
            )
            .await
        });
        let removed = self.remove();
        let state = state?;
        removed?;
        // The host's own notes in the log are not the worker's last words.
        let log = log_tail(&self.log, 4000);
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with(HOST_NOTE))
            .collect::<Vec<_>>();
        let tail = tail[tail.len().saturating_sub(20)..].join("\n");
        Ok(exit_info(&state, self.memory.as_ref(), tail, &self.image))
    }
}

impl Drop for DockerWorker {
    fn drop(&mut self) {
        // Every path out (an error in the runner included) leaves no container behind.
        if !self.removed {
            if let Err(e) = self.remove() {
                eprintln!("warning: {e:#}; `tagbench clean` removes it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_diagnosis() {
        let d = diagnose_image("exec /opt/tagbench/tagbench: no such file or directory\n", "x:1").unwrap();
        assert!(d.contains("has no glibc the worker can run with"), "{d}");
        assert!(diagnose_image(
            "/opt/tagbench/tagbench: /lib/libc.so.6: version `GLIBC_2.34' not found",
            "x"
        )
        .is_some());
        assert!(diagnose_image("panicked at foo", "x").is_none());
    }
}
