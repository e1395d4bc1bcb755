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
        // The torch engine's own paths may say that first: no driver would not make them run.
        let torch_only = ["generate-hf", "compile", "conv"].contains(&&r[workload]);
        if torch_only
            && (r[reason].contains("needs the torch engine") || r[reason].contains("does not implement conv"))
        {
            continue;
        }
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
        .env("TAGBENCH_VALIDATION_DOC", dir.path().join("gpu-validation.md"))
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
    // Without a GPU the validation page is not overwritten with an empty one.
    assert!(!dir.path().join("gpu-validation.md").exists(), "{text}");
    assert!(text.contains("nothing to validate"), "{text}");
}

/// Writes a results.csv with the columns the validation report reads.
fn write_results(dir: &std::path::Path, run: &str, rows: &[(&str, &str, &str, f64, &str)]) {
    let d = dir.join(run);
    std::fs::create_dir_all(&d).unwrap();
    let mut w = csv::Writer::from_path(d.join("results.csv")).unwrap();
    w.write_record([
        "workload", "case", "metric", "median", "status", "reason", "gpu_name",
    ])
    .unwrap();
    for (wl, case, metric, median, status) in rows {
        let median = median.to_string();
        w.write_record([
            *wl,
            *case,
            *metric,
            median.as_str(),
            *status,
            "",
            "NVIDIA H100 80GB HBM3",
        ])
        .unwrap();
    }
    w.flush().unwrap();
}

/// The page `scripts/gpu-validate.sh` writes, from made-up results: figures beside torch's and
/// the peak, and PASS/FAIL by the issue's rules (bf16 8192³ within 3% of torch.matmul; time per
/// call at 2 ms and 8 ms samples within 3%).
#[test]
fn validation_page_judges_each_path() {
    if std::process::Command::new("python3").arg("-V").output().is_err() {
        eprintln!("skipped: python3 not found");
        return;
    }
    let page = |native_bf16: f64, batch_2ms: f64| {
        let dir = tempfile::tempdir().unwrap();
        let ok = "ok";
        let mut native = vec![
            ("probe", "default", "status", 1.0, ok),
            ("gemm", "size=8192,dtype=bf16", "throughput", native_bf16, ok),
            ("gemm", "size=8192,dtype=bf16", "gpu_sm_clock", 1980.0, ok),
            ("generate", "model=llama-3-8b,layers=4", "tpot", 4.2, ok),
            ("allreduce-1gpu", "ranks=1", "busbw", 0.0, ok),
            ("allreduce-1gpu", "ranks=1", "wrong_elements", 0.0, ok),
        ];
        native.push(("gemm", "size=4096,dtype=fp32", "throughput", 50.0, "failed"));
        write_results(dir.path(), "n", &native);
        std::fs::write(
            dir.path().join("n/run.json"),
            r#"{"targets": [{"env": {"driver": "580.159.04", "generate_bf16_check_tokens": "4 of 4 equal the float64 reference", "generate_fp32_check_tokens": "3 of 4 equal the float64 reference"}}]}"#,
        )
        .unwrap();
        write_results(
            dir.path(),
            "t",
            &[
                ("gemm", "size=8192,dtype=bf16", "throughput", 760.0, ok),
                ("conv", "layer=res2,cudnn_benchmark=true", "throughput", 310.0, ok),
                ("generate-hf", "cache=static", "ttft", 0.0, "skipped"),
            ],
        );
        for (ms, lat) in [("0.001", 0.0031), ("2", batch_2ms), ("8", 0.0028)] {
            write_results(
                dir.path(),
                &format!("n-batch-{ms}"),
                &[("gemm", "size=1024,dtype=bf16", "latency", lat, ok)],
            );
        }
        let meta = dir.path().join("meta.env");
        std::fs::write(
            &meta,
            "date=2026-11-24T00:00:00Z\ntorch_status=torch 2.11.0 CUDA 13.0\n",
        )
        .unwrap();
        let md = dir.path().join("docs/gpu-validation.md");
        let out = std::process::Command::new("python3")
            .arg("scripts/gpu-validate-report.py")
            .arg(dir.path())
            .args(["n", "t"])
            .arg(&meta)
            .arg(&md)
            .output()
            .unwrap();
        let text = std::fs::read_to_string(&md).unwrap_or_default();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, md, stdout) = page(750.0, 0.00281);
    assert!(md.contains("| date | 2026-11-24T00:00:00Z |"), "{md}");
    assert!(
        md.contains("| gemm/size=8192,dtype=bf16 | 750.0 | 760.0 | 0.987 | 989.4 | 75.8 |"),
        "{md}"
    );
    assert!(md.contains("| driver | 580.159.04 "), "{md}");
    // The failed fp32 case and the fp32 tokens that differ fail their paths and the exit code.
    for line in [
        "PASS  bf16 8192³ within 3% of torch.matmul",
        "PASS  time per call independent of the batch",
        "PASS  telemetry",
        "PASS  generate bf16 tokens equal the float64 reference",
        "FAIL  generate fp32 tokens equal the float64 reference",
        "FAIL  gemm fp32",
        // The torch engine's own paths: measured, skipped for want of transformers, not reached.
        "PASS  conv bf16 channels_last",
        "n/a   hf generate (transformers, bf16)",
        "n/a   torch.compile default (Inductor + triton): not run",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert_eq!(code, Some(1), "{stdout}");
    // 5% under torch, and a per-call time that moves with the batch, fail.
    let (_, _, stdout) = page(720.0, 0.0030);
    assert!(
        stdout.contains("FAIL  bf16 8192³ within 3% of torch.matmul"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  time per call independent of the batch"),
        "{stdout}"
    );
}
