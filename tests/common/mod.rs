//! Synthetic run directories for the end-to-end tests: real CSV files written through the
//! library's RunWriter, with samples drawn from a known distribution.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rand::{rngs::StdRng, SeedableRng};
use tagbench::results::{set_summary, ResultRow, RunDir, RunMeta, RunWriter, SampleRow, Status, TargetMeta};
use tagbench::stats::summarize;

/// Log-normal timing samples: median `level`, relative spread `cv`.
pub fn samples(seed: u64, level: f64, cv: f64, n: usize) -> Vec<f64> {
    tagbench::stats::synthetic::lognormal(&mut StdRng::seed_from_u64(seed), level, cv, n)
}

/// One measured (target, case) of a synthetic run.
pub struct Case {
    pub target: String,
    pub image: String,
    pub workload: String,
    pub case: String,
    /// Latency samples (ms); throughput is derived as 1000/latency "ops/s".
    pub latency_ms: Vec<f64>,
    pub status: Status,
    pub reason: String,
    /// Worker processes the samples are split into (equal chunks, in order); 1: no round column.
    /// Five by default: a timing verdict needs at least three rounds a side.
    pub rounds: usize,
    /// The GPU index the case ran on (`None`: a CPU case).
    pub gpu_index: Option<usize>,
}

impl Case {
    pub fn gemm(target: &str, image: &str, size: u32, latency_ms: Vec<f64>) -> Case {
        Case {
            target: target.into(),
            image: image.into(),
            workload: "gemm".into(),
            case: format!("size={size},dtype=fp32"),
            latency_ms,
            status: Status::Ok,
            reason: String::new(),
            rounds: 5,
            gpu_index: None,
        }
    }
    pub fn status(target: &str, workload: &str, case: &str, status: Status, reason: &str) -> Case {
        Case {
            target: target.into(),
            image: String::new(),
            workload: workload.into(),
            case: case.into(),
            latency_ms: Vec::new(),
            status,
            reason: reason.into(),
            rounds: 1,
            gpu_index: None,
        }
    }
}

/// Writes a run directory `root/run_id` and returns its path.
pub fn write_run(root: &Path, run_id: &str, started_at: &str, cases: &[Case]) -> PathBuf {
    write_run_with_targets(root, run_id, started_at, cases, Vec::new())
}

/// Like `write_run`, with run.json listing `targets` (images, probed versions).
pub fn write_run_with_targets(
    root: &Path,
    run_id: &str,
    started_at: &str,
    cases: &[Case],
    targets: Vec<TargetMeta>,
) -> PathBuf {
    let dir = root.join(run_id);
    let run = RunDir::new(&dir);
    let mut w = RunWriter::open(&run).unwrap();
    for c in cases {
        let base = ResultRow {
            schema: 1,
            run_id: run_id.into(),
            suite: "smoke".into(),
            workload: c.workload.clone(),
            case: c.case.clone(),
            engine: "native".into(),
            executor: "local".into(),
            image: c.image.clone(),
            device: "cpu".into(),
            status: c.status,
            reason: c.reason.clone(),
            started_at: started_at.into(),
            target: c.target.clone(),
            gpu_index: c.gpu_index,
            ..Default::default()
        };
        if c.status != Status::Ok {
            w.write_case(&[base], &[]).unwrap();
            continue;
        }
        let mut rows = Vec::new();
        let mut srows = Vec::new();
        let tput: Vec<f64> = c.latency_ms.iter().map(|v| 1000.0 / v).collect();
        let per_round = c.latency_ms.len().div_ceil(c.rounds.max(1));
        for (metric, unit, better, values) in [
            ("latency", "ms", "lower", &c.latency_ms),
            ("throughput", "GFLOP/s", "higher", &tput),
        ] {
            for (r, chunk) in values.chunks(per_round.max(1)).enumerate() {
                let round = (c.rounds > 1).then_some(r);
                let mut row = ResultRow {
                    metric: metric.into(),
                    unit: unit.into(),
                    better: better.into(),
                    round,
                    ..base.clone()
                };
                set_summary(&mut row, &summarize(chunk).unwrap());
                rows.push(row);
                for (i, v) in chunk.iter().enumerate() {
                    srows.push(SampleRow {
                        run_id: run_id.into(),
                        image: c.image.clone(),
                        workload: c.workload.clone(),
                        case: c.case.clone(),
                        metric: metric.into(),
                        sample: i,
                        value: *v,
                        target: c.target.clone(),
                        engine: "native".into(),
                        gpu_index: c.gpu_index,
                        round,
                        ..Default::default()
                    });
                }
            }
        }
        w.write_case(&rows, &srows).unwrap();
    }
    let meta = RunMeta {
        schema: 1,
        run_id: run_id.into(),
        suite: "smoke".into(),
        started_at: started_at.into(),
        state: "complete".into(),
        targets,
        ..Default::default()
    };
    run.write_meta(&meta).unwrap();
    dir
}

/// The tagbench binary.
pub fn tagbench() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("tagbench").unwrap()
}

/// The python with torch, or None when the tests are explicitly skipped.
pub fn torch_python() -> Option<PathBuf> {
    if std::env::var("TAGBENCH_SKIP_TORCH_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: TAGBENCH_SKIP_TORCH_TESTS=1");
        return None;
    }
    let python = std::env::var_os("TAGBENCH_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tagbench/venv-torch/bin/python"))
        })
        .expect("set TAGBENCH_PYTHON to a python with torch");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} cannot import torch: run scripts/install-torch-cpu.sh and set TAGBENCH_PYTHON to the python it prints \
         (or TAGBENCH_SKIP_TORCH_TESTS=1 to skip these tests)",
        python.display()
    );
    Some(python)
}

/// `compare --format json --along target --baseline BASELINE RUN`: its exit code and JSON.
pub fn compare_along_target(run: &Path, baseline: &str) -> (Option<i32>, serde_json::Value) {
    let out = tagbench()
        .args([
            "compare",
            "--format",
            "json",
            "--along",
            "target",
            "--baseline",
            baseline,
        ])
        .arg(run)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

/// `docker build -q -t TAG -f DOCKERFILE CONTEXT` with the classic builder (it works offline
/// from local images), asserting that it succeeds.
pub fn docker_build(tag: &str, dockerfile: &Path, context: &Path) {
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag, "-f"])
        .arg(dockerfile)
        .arg(context)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build runs");
    assert!(
        out.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The 1-minute load average (0 where /proc/loadavg cannot be read).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
