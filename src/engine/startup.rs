//! The `startup` metrics an engine measures inside the target: each sample a fresh process
//! (`python -c "import torch"`, a process that creates a CUDA context and runs its first
//! operation), timed from its spawn to its exit, or by the process itself where its own imports
//! are not the metric. What an engine cannot measure is a `skipped` row that says why.

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::anyhow;

use super::CaseOutput;
use crate::case::{Case, Device};
use crate::error::CaseError;
use crate::workload::startup::{StartupMetric, StartupParams};

/// The skip reason of `first_cuda_op` on a target without a CUDA device.
pub const NO_CUDA_DEVICE: &str = "no CUDA device in target";

/// How many of a failed process's last stderr lines its reason quotes.
const TAIL_LINES: usize = 3;

/// The startup case of an engine without an override: `first_cuda_op` has no CUDA device here,
/// `python_import_torch` needs the torch engine, and the host's metrics never reach a worker.
pub fn not_here(engine: &str, p: &StartupParams) -> Result<CaseOutput, CaseError> {
    Err(match p.metric {
        StartupMetric::FirstCudaOp => CaseError::skipped(NO_CUDA_DEVICE),
        StartupMetric::PythonImportTorch => CaseError::skipped(format!(
            "python_import_torch is measured by the torch engine (engine = \"torch\"), not the {engine} engine"
        )),
        m @ (StartupMetric::ContainerStart | StartupMetric::ImageSize) => CaseError::Failed(anyhow!(
            "{} is measured by the host, not inside the worker",
            m.as_str()
        )),
    })
}

/// One sample per fresh process: `program args`, `p.samples` times, each timed from its spawn
/// to its exit (ms). A process that fails ends the case with its status and stderr's last lines.
pub fn time_processes(program: &OsStr, args: &[&str], p: &StartupParams) -> Result<Vec<f64>, ProcessFailure> {
    let mut values = Vec::with_capacity(p.samples);
    for _ in 0..p.samples {
        let t0 = Instant::now();
        let out = run(program, args)?;
        values.push(t0.elapsed().as_secs_f64() * 1e3);
        out.check()?;
    }
    Ok(values)
}

/// One sample per fresh process that times itself: each prints its milliseconds as its last
/// stdout line (what follows its own imports, e.g. a CUDA context and a first kernel).
pub fn self_timed_processes(
    program: &OsStr,
    args: &[&str],
    p: &StartupParams,
) -> Result<Vec<f64>, ProcessFailure> {
    let mut values = Vec::with_capacity(p.samples);
    for _ in 0..p.samples {
        let out = run(program, args)?;
        out.check()?;
        let last = out
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let ms = last.trim().parse::<f64>().map_err(|_| ProcessFailure {
            status: None,
            stderr: format!("expected milliseconds on the last stdout line, got `{last}`"),
        })?;
        values.push(ms);
    }
    Ok(values)
}

/// A fresh process that did not succeed: its exit status (`None`: it could not start) and the
/// last lines of its stderr.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessFailure {
    pub status: Option<String>,
    pub stderr: String,
}

impl std::fmt::Display for ProcessFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            Some(s) => write!(f, "{s}; stderr: {}", self.stderr),
            None => f.write_str(&self.stderr),
        }
    }
}

struct Finished {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn check(&self) -> Result<(), ProcessFailure> {
        if self.status.success() {
            return Ok(());
        }
        Err(ProcessFailure {
            status: Some(describe(&self.status)),
            stderr: crate::sys::tail_lines(&self.stderr, TAIL_LINES),
        })
    }
}

/// `exit status 3`, or `killed by signal 9 (SIGKILL)`.
fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s} ({})", crate::sys::signal_name(s)),
        (None, None) => "unknown exit status".to_string(),
    }
}

fn run(program: &OsStr, args: &[&str]) -> Result<Finished, ProcessFailure> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // A worker killed at the case's limit takes its process with it.
    crate::sys::die_with_parent(&mut cmd);
    let out = cmd.output().map_err(|e| ProcessFailure {
        status: None,
        stderr: format!("failed to start {}: {e}", program.to_string_lossy()),
    })?;
    Ok(Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The case's rows: its one metric's samples on `device`.
pub fn output(p: &StartupParams, device: &str, values: Vec<f64>) -> CaseOutput {
    let mut out = CaseOutput::new(device);
    out.metric(p.metric.as_str(), p.metric.unit(), p.metric.better(), values);
    out
}

/// The torch engine's startup case: the image's python importing torch, and on a CUDA target a
/// fresh python's context and first kernel (timed after its own `import torch`).
pub fn torch(
    python: &OsStr,
    device: Device,
    cuda_device: &str,
    p: &StartupParams,
    case: &Case,
) -> Result<CaseOutput, CaseError> {
    let label = case.label();
    match p.metric {
        StartupMetric::PythonImportTorch => {
            let values = time_processes(python, &["-c", "import torch"], p).map_err(|e| {
                if e.stderr.contains("No module named 'torch'") || e.status.is_none() {
                    CaseError::skipped(format!("torch not importable in image: {e}"))
                } else {
                    CaseError::Failed(anyhow!("{label}: `python -c \"import torch\"` failed: {e}"))
                }
            })?;
            Ok(output(p, device.as_str(), values))
        }
        StartupMetric::FirstCudaOp if device == Device::Cuda => {
            let values =
                self_timed_processes(python, &["-c", FIRST_CUDA_OP_PY, cuda_device], p).map_err(|e| {
                    if e.stderr.contains(NO_TORCH_CUDA) {
                        CaseError::skipped(format!("{NO_CUDA_DEVICE}: torch sees none"))
                    } else {
                        CaseError::Failed(anyhow!("{label}: the first CUDA operation failed: {e}"))
                    }
                })?;
            Ok(output(p, cuda_device, values))
        }
        _ => not_here("torch", p),
    }
}

/// What the first-CUDA-op script says when torch has no CUDA device.
const NO_TORCH_CUDA: &str = "tagbench: torch.cuda.is_available() is false";

/// Times a CUDA context and the first kernel (a fill, then an add) in a fresh python, after its
/// `import torch`; prints milliseconds.
const FIRST_CUDA_OP_PY: &str = "import sys, time, torch
if not torch.cuda.is_available():
    sys.exit('tagbench: torch.cuda.is_available() is false')
t = time.perf_counter()
x = torch.ones(1, device=sys.argv[1])
x.add_(1)
torch.cuda.synchronize(x.device)
print((time.perf_counter() - t) * 1e3)
";

#[cfg(test)]
mod tests {
    use super::*;

    fn params(metric: StartupMetric, samples: usize) -> StartupParams {
        StartupParams { metric, samples }
    }

    #[test]
    fn each_sample_is_a_fresh_process() {
        let p = params(StartupMetric::PythonImportTorch, 3);
        let v = time_processes(OsStr::new("true"), &[], &p).unwrap();
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|ms| *ms > 0.0));
        let e = time_processes(OsStr::new("sh"), &["-c", "echo no >&2; exit 3"], &p).unwrap_err();
        assert_eq!(e.to_string(), "exit status 3; stderr: no");
        let e = time_processes(OsStr::new("/nonexistent/python"), &[], &p).unwrap_err();
        assert!(e.status.is_none() && e.stderr.starts_with("failed to start /nonexistent/python"));
        let v = self_timed_processes(OsStr::new("sh"), &["-c", "echo hello; echo 12.5"], &p).unwrap();
        assert_eq!(v, [12.5, 12.5, 12.5]);
        let e = self_timed_processes(OsStr::new("echo"), &["x"], &p).unwrap_err();
        assert!(e.stderr.contains("got `x`"), "{e}");
    }

    #[test]
    fn what_an_engine_cannot_measure_says_why() {
        let skip = |m| match not_here("native CPU", &params(m, 1)) {
            Err(CaseError::Skipped(r)) => r,
            other => panic!("{:?}", other.map(|_| ())),
        };
        assert_eq!(skip(StartupMetric::FirstCudaOp), NO_CUDA_DEVICE);
        assert!(skip(StartupMetric::PythonImportTorch).contains("torch engine"));
        assert!(matches!(
            not_here("x", &params(StartupMetric::ImageSize, 1)),
            Err(CaseError::Failed(_))
        ));
    }
}
