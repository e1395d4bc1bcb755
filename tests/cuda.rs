//! The native CUDA engine on a machine without a CUDA driver (CI, the build host): every case of
//! the GPU validation suite must be a `skipped` row saying so, the run must exit 0, and nothing
//! may panic. On a machine with a driver the test says so and checks nothing.

use assert_cmd::Command;

fn driver_present() -> bool {
    // SAFETY: loading the driver runs its initialisers; only to see whether it exists.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

#[test]
fn no_driver_every_cuda_case_is_skipped() {
    if driver_present() {
        eprintln!("skipped: libcuda.so.1 is present; this test covers the no-driver path");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let assert = Command::cargo_bin("tagbench")
        .unwrap()
        .args([
            "run",
            "suites/gpu-validate.toml",
            "--device",
            "cuda",
            "--no-progress",
            "--no-report",
            "--run-id",
            "nodriver",
            "--results-dir",
        ])
        .arg(dir.path())
        .assert();
    let output = assert.get_output().clone();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panic"), "stderr: {stderr}");

    let run = dir.path().join("nodriver");
    let mut rdr = csv::Reader::from_path(run.join("results.csv")).unwrap();
    let headers = rdr.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (status, reason, device, workload) = (col("status"), col("reason"), col("device"), col("workload"));
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let listed = Command::cargo_bin("tagbench")
        .unwrap()
        .args(["list", "suites/gpu-validate.toml"])
        .output()
        .unwrap();
    let cases = String::from_utf8_lossy(&listed.stdout).lines().count();
    assert!(cases >= 30, "suite lists {cases} cases");
    assert_eq!(rows.len(), cases, "one row per case");
    let mut kinds = std::collections::BTreeSet::new();
    for r in &rows {
        assert_eq!(&r[status], "skipped", "{r:?}");
        assert_eq!(&r[reason], "no CUDA driver (libcuda.so.1 not found)", "{r:?}");
        assert_eq!(&r[device], "cuda", "{r:?}");
        kinds.insert(r[workload].to_string());
    }
    for w in ["probe", "gemm", "attention", "generate", "precision", "allreduce"] {
        assert!(kinds.contains(w), "no {w} row: {kinds:?}");
    }
    // The worker log holds no panic either.
    for entry in std::fs::read_dir(run.join("logs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&p).unwrap();
            assert!(!log.contains("panicked"), "{}: {log}", p.display());
        }
    }
}

#[test]
fn validation_script_is_ready() {
    let script = std::fs::read_to_string("scripts/gpu-validate.sh").unwrap();
    assert!(script.starts_with("#!/usr/bin/env bash"));
    assert!(script.contains("suites/gpu-validate.toml"));
    assert!(script.contains("--device cuda"));
    assert!(script.contains("torch"));
    let status = std::process::Command::new("bash")
        .args(["-n", "scripts/gpu-validate.sh"])
        .status()
        .unwrap();
    assert!(status.success(), "bash -n scripts/gpu-validate.sh failed");
}

#[test]
fn validation_script_runs_without_a_gpu() {
    if driver_present() {
        eprintln!("skipped: libcuda.so.1 is present; the script would measure for minutes");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("tagbench");
    let out = std::process::Command::new("bash")
        .arg("scripts/gpu-validate.sh")
        .arg(&bin)
        .env("TAGBENCH_RESULTS", dir.path())
        .env("TAGBENCH_REPORTS", dir.path().join("reports"))
        .env("TAGBENCH_TORCH_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("no CUDA driver"), "{text}");
    assert!(text.contains("torch reference: skipped"), "{text}");
    // The report goes where it was asked to, not into the checkout.
    assert!(
        dir.path().join("reports").read_dir().unwrap().next().is_some(),
        "{text}"
    );
}
