//! End-to-end tests of the torch engine: the real binary, the real python and PyTorch (CPU).
//!
//! The python comes from `TAGBENCH_PYTHON`, else the environment `scripts/install-torch-cpu.sh`
//! makes (`~/.cache/tagbench/venv-torch`). Without a python that imports torch these tests
//! fail, so that CI cannot pass without running them, unless `TAGBENCH_SKIP_TORCH_TESTS=1`
//! says to skip them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

mod common;
use common::torch_python;

type Row = BTreeMap<String, String>;

fn read_rows(csv_path: &Path) -> Vec<Row> {
    let mut r = csv::Reader::from_path(csv_path).unwrap_or_else(|e| panic!("{}: {e}", csv_path.display()));
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Runs tagbench with `args` into a fresh results directory; returns its rows and the output.
fn run(python: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> (Vec<Row>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::cargo_bin("tagbench").unwrap();
    cmd.args([
        "run",
        "--no-progress",
        "--no-report",
        "--run-id",
        "t",
        "--results-dir",
    ])
    .arg(dir.path())
    .args(args)
    .env("TAGBENCH_PYTHON", python)
    // One intra-op thread: the CI machine has 2 cores, and OpenMP threads waiting on each
    // other under load make CPU timings (and the test) slow; correctness is what is tested.
    .env("OMP_NUM_THREADS", "1");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = dir.path().join("t").join("results.csv");
    assert!(csv.exists(), "no results.csv; output:\n{text}");
    (read_rows(&csv), text, dir)
}

fn ok_metric<'a>(rows: &'a [Row], workload: &str, metric: &str) -> Vec<&'a Row> {
    rows.iter()
        .filter(|r| r["workload"] == workload && r["metric"] == metric && r["status"] == "ok")
        .collect()
}

fn median(r: &Row) -> f64 {
    r["median"].parse().unwrap_or_else(|_| panic!("median of {r:?}"))
}

/// Small sizes and short sampling, so that the whole smoke suite runs in a CI minute.
const QUICK: &[&str] = &[
    "--set",
    "rounds=1",
    "--set",
    "warmup_s=0.02",
    "--set",
    "min_samples=3",
    "--set",
    "max_time_s=0.15",
    "--set",
    "gemm.size=[128]",
    "--set",
    "attention.seq_q=64",
    "--set",
    "generate.prompt_len=16",
    "--set",
    "generate.new_tokens=4",
    "--set",
    "generate.min_samples=2",
    "--set",
    "precision.batch=8",
    "--set",
    "precision.hidden=64",
    "--set",
    "precision.mode=[\"fp32\", \"tf32\", \"amp-fp16\", \"amp-bf16\"]",
    "--set",
    "allreduce.max_bytes=65536",
];

#[test]
fn smoke_suite_on_torch_cpu_writes_ok_rows() {
    let Some(python) = torch_python() else { return };
    let mut args = vec!["suites/smoke.toml", "--engine", "torch"];
    args.extend_from_slice(QUICK);
    let (rows, text, _dir) = run(&python, &args, &[]);
    let failed: Vec<&Row> = rows.iter().filter(|r| r["status"] == "failed").collect();
    assert!(failed.is_empty(), "failed rows: {failed:#?}\n{text}");
    assert!(
        rows.iter().all(|r| r["engine"] == "torch"),
        "engine column: {rows:#?}"
    );

    // The probe reports torch's versions.
    let probe = rows.iter().find(|r| r["workload"] == "probe").expect("probe row");
    assert!(probe["reason"].starts_with("torch 2."), "{probe:?}");

    // GEMM: GFLOP/s on the CPU, positive; CUDA-only dtypes skip and say why.
    let gemm = ok_metric(&rows, "gemm", "throughput");
    assert_eq!(gemm.len(), 3, "fp32, fp16, bf16 at 128: {gemm:#?}");
    assert!(gemm.iter().all(|r| r["unit"] == "GFLOP/s" && median(r) > 0.0));
    let skipped: Vec<&Row> = rows
        .iter()
        .filter(|r| r["workload"] == "gemm" && r["status"] == "skipped")
        .collect();
    assert_eq!(skipped.len(), 2);
    assert!(skipped.iter().any(|r| r["reason"].contains("tf32 is a CUDA")));
    assert!(skipped.iter().any(|r| r["reason"].contains("fp8 needs CUDA")));

    // Attention: throughput plus the SDPA backend that ran.
    assert_eq!(ok_metric(&rows, "attention", "throughput").len(), 4);
    let backends: Vec<&Row> = rows
        .iter()
        .filter(|r| r["workload"] == "attention" && r["reason"].starts_with("sdpa backend: "))
        .collect();
    assert_eq!(backends.len(), 4);
    assert!(
        backends.iter().all(|r| !r["reason"].ends_with("unknown")),
        "{backends:#?}"
    );

    // Generation: every metric, with consistent arithmetic.
    for m in [
        "ttft",
        "tpot",
        "decode_tokens_per_s",
        "prefill_tokens_per_s",
        "peak_memory",
    ] {
        assert_eq!(ok_metric(&rows, "generate", m).len(), 1, "generate {m}\n{text}");
    }
    let tpot = median(ok_metric(&rows, "generate", "tpot")[0]);
    let tps = median(ok_metric(&rows, "generate", "decode_tokens_per_s")[0]);
    assert!(
        (tps * tpot / 1e3 - 1.0).abs() < 0.5,
        "batch 1: tokens/s ≈ 1/tpot ({tps} vs {tpot} ms)"
    );

    // Precision: fp32 and both AMP modes per model; tf32 skips on the CPU; AMP's loss stays close.
    assert_eq!(ok_metric(&rows, "precision", "step_time").len(), 6);
    assert_eq!(ok_metric(&rows, "precision", "speedup_vs_fp32").len(), 4);
    for r in ok_metric(&rows, "precision", "loss_diff_vs_fp32") {
        assert!(median(r) < 0.1, "loss diff too large: {r:?}");
    }
    assert!(rows
        .iter()
        .any(|r| r["workload"] == "precision" && r["status"] == "skipped" && r["reason"].contains("tf32")));

    // All-reduce: gloo between 2 processes, every size correct, bandwidth positive.
    let wrong = ok_metric(&rows, "allreduce", "wrong_elements@1024");
    assert_eq!(wrong.len(), 1);
    let sizes: Vec<&Row> = rows
        .iter()
        .filter(|r| r["workload"] == "allreduce" && r["metric"].starts_with("busbw@"))
        .collect();
    assert_eq!(sizes.len(), 4, "1 KiB to 64 KiB by 4: {sizes:#?}");
    for r in rows.iter().filter(|r| r["metric"].starts_with("wrong_elements@")) {
        assert_eq!(median(r), 0.0, "{r:?}");
    }
    assert!(sizes.iter().all(|r| median(r) > 0.0 && r["unit"] == "GB/s"));
    assert_eq!(ok_metric(&rows, "allreduce", "busbw").len(), 1);
}

#[test]
fn python_without_torch_gives_skipped_rows() {
    // Skipped together with the others: on a machine without torch tests, nothing is set up.
    if torch_python().is_none() {
        return;
    }
    // The system python with -S (no site-packages): torch cannot be imported even if installed.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("python-without-torch");
    std::fs::write(&wrapper, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
    make_executable(&wrapper);
    let (rows, text, _d) = run(
        &wrapper,
        &[
            "--engine",
            "torch",
            "--filter",
            "gemm/size=256,dtype=fp32",
            "--filter",
            "allreduce",
        ],
        &[],
    );
    assert_eq!(rows.len(), 2, "{rows:#?}\n{text}");
    for r in &rows {
        assert_eq!(r["status"], "skipped", "{r:?}");
        assert!(
            r["reason"].starts_with("torch not importable in image: "),
            "{r:?}"
        );
        assert!(r["reason"].contains("torch"), "{r:?}");
    }
}

#[test]
fn missing_python_gives_skipped_rows() {
    let (rows, text, _d) = run(
        Path::new("/nonexistent/tagbench/python3"),
        &[
            "--engine",
            "torch",
            "--filter",
            "gemm/size=256,dtype=fp32",
            "--filter",
            "probe",
        ],
        &[],
    );
    assert_eq!(rows.len(), 2, "{rows:#?}\n{text}");
    for r in &rows {
        assert_eq!(r["status"], "skipped", "{r:?}");
        assert!(r["reason"].starts_with("no python3 in image"), "{r:?}");
        assert_eq!(r["engine"], "torch");
    }
}

#[test]
fn noise_on_python_stdout_does_not_break_the_protocol() {
    let Some(python) = torch_python() else { return };
    // A wrapper that prints before python starts, as an image's entry script might.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("noisy-python");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho 'activating environment'\nexec '{}' \"$@\"\n",
            python.display()
        ),
    )
    .unwrap();
    make_executable(&wrapper);
    let (rows, text, _d) = run(
        &wrapper,
        &[
            "--engine",
            "torch",
            "--filter",
            "gemm/size=256,dtype=fp32",
            "--set",
            "max_time_s=0.1",
            "--set",
            "rounds=1",
        ],
        &[],
    );
    assert_eq!(
        ok_metric(&rows, "gemm", "throughput").len(),
        1,
        "{rows:#?}\n{text}"
    );
}

#[test]
fn native_and_torch_targets_in_one_run() {
    let Some(python) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("engines.toml");
    std::fs::write(
        &suite,
        r#"
name = "engines-test"
[defaults]
rounds = 1
warmup_s = 0.02
min_samples = 3
max_time_s = 0.2
[[target]]
name = "cpu-native"
local = true
engine = "native"
[[target]]
name = "cpu-torch"
local = true
engine = "torch"
[[workload]]
kind = "gemm"
size = 128
dtype = "fp32"
"#,
    )
    .unwrap();
    let (rows, text, _d) = run(&python, &[suite.to_str().unwrap()], &[]);
    let gemm = ok_metric(&rows, "gemm", "throughput");
    assert_eq!(gemm.len(), 2, "{rows:#?}\n{text}");
    let by_target: BTreeMap<&str, &str> = gemm
        .iter()
        .map(|r| (r["target"].as_str(), r["engine"].as_str()))
        .collect();
    assert_eq!(
        by_target,
        BTreeMap::from([("cpu-native", "native"), ("cpu-torch", "torch")])
    );
    assert!(gemm
        .iter()
        .all(|r| r["case"] == "size=128,dtype=fp32" && r["unit"] == "GFLOP/s"));
}

#[cfg(unix)]
fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Writes a suite into a fresh directory (kept alive by the returned guard).
fn suite_file(text: &str) -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suite.toml");
    std::fs::write(&path, text).unwrap();
    (path, dir)
}

/// The greedy tokens' hash of each generate case (`tokens <hash> (greedy, ...)` in its reason).
fn token_hashes(rows: &[Row]) -> BTreeMap<&str, &str> {
    rows.iter()
        .filter(|r| r["workload"] == "generate" && r["reason"].starts_with("tokens "))
        .map(|r| {
            (
                r["case"].as_str(),
                r["reason"].split_whitespace().nth(1).unwrap_or(""),
            )
        })
        .collect()
}

const MULTI_RANK_DEFAULTS: &str = r#"
[defaults]
rounds = 1
warmup_s = 0.02
min_samples = 3
max_samples = 10
max_time_s = 0.3
timeout_s = 120
"#;

#[test]
fn tensor_parallel_generation_gives_the_one_rank_tokens() {
    let Some(python) = torch_python() else { return };
    let (suite, _s) = suite_file(&format!(
        "name = \"tp-test\"\n{MULTI_RANK_DEFAULTS}\n[[workload]]\nkind = \"generate\"\nmodel = \"tiny\"\n\
         prompt_len = 16\nnew_tokens = 6\ntensor_parallel = [1, 2]\n"
    ));
    let (rows, text, _d) = run(&python, &["--engine", "torch", suite.to_str().unwrap()], &[]);
    let tpot = ok_metric(&rows, "generate", "tpot");
    assert_eq!(tpot.len(), 2, "{rows:#?}\n{text}");
    for tp in ["tensor_parallel=1", "tensor_parallel=2"] {
        assert!(tpot.iter().any(|r| r["case"].ends_with(tp)), "{tp}: {rows:#?}");
    }
    // The all-reduce share exists where there is an all-reduce, and is a share.
    let share = ok_metric(&rows, "generate", "allreduce_share");
    assert_eq!(share.len(), 1, "{rows:#?}");
    assert!(share[0]["case"].ends_with("tensor_parallel=2"));
    assert!((0.0..=100.0).contains(&median(share[0])), "{:?}", share[0]);
    assert_eq!(ok_metric(&rows, "generate", "peak_memory").len(), 2);
    // Greedy tokens from one seed: the shards together are the one-rank model.
    let tokens = token_hashes(&rows);
    assert_eq!(tokens.len(), 2, "{rows:#?}");
    let hashes: Vec<&str> = tokens.values().copied().collect();
    assert!(!hashes[0].is_empty());
    assert_eq!(
        hashes[0], hashes[1],
        "tokens at tensor_parallel 1 and 2 differ: {tokens:?}"
    );
}

#[test]
fn ddp_and_fsdp_steps_match_the_one_rank_loss() {
    let Some(python) = torch_python() else { return };
    let (suite, _s) = suite_file(&format!(
        "name = \"ddp-test\"\n{MULTI_RANK_DEFAULTS}\n[[workload]]\nkind = \"precision\"\n\
         model = [\"mlp\", \"transformer-block\"]\nbatch = 8\nhidden = 32\nseq = 8\nheads = 4\nmode = \"fp32\"\n\
         parallel = [\"ddp\", \"fsdp\"]\nranks = 2\n"
    ));
    let (rows, text, _d) = run(&python, &["--engine", "torch", suite.to_str().unwrap()], &[]);
    let failed: Vec<&Row> = rows.iter().filter(|r| r["status"] != "ok").collect();
    assert!(failed.is_empty(), "{failed:#?}\n{text}");
    let diffs = ok_metric(&rows, "precision", "loss_diff_vs_fp32");
    assert_eq!(diffs.len(), 4, "{rows:#?}\n{text}");
    for model in ["mlp", "transformer-block"] {
        for parallel in ["ddp", "fsdp"] {
            let d = diffs
                .iter()
                .find(|r| {
                    r["case"].starts_with(&format!("model={model},"))
                        && r["case"].contains(&format!("parallel={parallel}"))
                })
                .unwrap_or_else(|| panic!("{model} {parallel}: {diffs:#?}"));
            assert!(
                median(d) < 1e-4,
                "{model} {parallel} loss differs from one rank: {d:?}"
            );
        }
    }
    for metric in ["step_time", "samples_per_s", "scaling_efficiency", "peak_memory"] {
        let m = ok_metric(&rows, "precision", metric);
        assert_eq!(m.len(), 4, "{metric}: {rows:#?}");
        assert!(m.iter().all(|r| median(r) > 0.0), "{metric}: {m:#?}");
    }
}

#[test]
fn a_crashing_or_hung_rank_fails_its_case_and_the_run_goes_on() {
    let Some(python) = torch_python() else { return };
    let suite_text = format!(
        "name = \"crash-test\"\n{MULTI_RANK_DEFAULTS}\n[[workload]]\nkind = \"allreduce\"\nmin_bytes = 1024\nmax_bytes = 1024\n\
         [[workload]]\nkind = \"generate\"\nmodel = \"tiny\"\nprompt_len = 8\nnew_tokens = 2\ntensor_parallel = 2\n\
         [[workload]]\nkind = \"gemm\"\nsize = 64\ndtype = \"fp32\"\n"
    );
    let (suite, _s) = suite_file(&suite_text);
    let (rows, text, _d) = run(
        &python,
        &["--engine", "torch", suite.to_str().unwrap()],
        &[("TAGBENCH_TEST_HOOK", "crash-rank=1")],
    );
    for workload in ["allreduce", "generate"] {
        let r = rows
            .iter()
            .find(|r| r["workload"] == workload)
            .unwrap_or_else(|| panic!("{workload}: {rows:#?}\n{text}"));
        assert_eq!(r["status"], "failed", "{r:?}");
        assert!(r["reason"].starts_with("rank 1 exited with status 7"), "{r:?}");
    }
    // The one-rank case after them still runs.
    assert_eq!(ok_metric(&rows, "gemm", "latency").len(), 1, "{rows:#?}\n{text}");

    // A rank that hangs is killed with its case (the case's time limit); the run goes on.
    let (suite, _s2) = suite_file(&suite_text.replace("timeout_s = 120", "timeout_s = 15"));
    let (rows, text, _d2) = run(
        &python,
        &[
            "--engine",
            "torch",
            "--filter",
            "allreduce",
            "--filter",
            "gemm",
            suite.to_str().unwrap(),
        ],
        &[("TAGBENCH_TEST_HOOK", "hang-rank=1")],
    );
    let r = rows
        .iter()
        .find(|r| r["workload"] == "allreduce")
        .unwrap_or_else(|| panic!("{rows:#?}\n{text}"));
    assert_eq!(r["status"], "failed", "{r:?}");
    assert!(r["reason"].contains("timed out after 15 s"), "{r:?}");
    assert_eq!(ok_metric(&rows, "gemm", "latency").len(), 1, "{rows:#?}\n{text}");
}

#[test]
fn hf_generate_gives_the_loop_tokens() {
    let Some(python) = torch_python() else { return };
    // fp32 greedy decoding of one seeded model: the tiny shape, and Llama-2-7b's shape (32 heads,
    // vocabulary 32000) cut to 2 layers of width 512, by both implementations; transformers'
    // static cache too.
    let (suite, _s) = suite_file(&format!(
        "name = \"hf-test\"\n{MULTI_RANK_DEFAULTS}\n\
         [[workload]]\nname = \"tiny\"\nkind = \"generate\"\nmodel = \"tiny\"\nprompt_len = 16\nnew_tokens = 8\nimpl = [\"loop\", \"hf\"]\n\
         [[workload]]\nname = \"tiny-static\"\nkind = \"generate\"\nmodel = \"tiny\"\nprompt_len = 16\nnew_tokens = 8\nimpl = \"hf\"\ncache = \"static\"\n\
         [[workload]]\nname = \"llama2\"\nkind = \"generate\"\nmodel = \"llama-2-7b\"\nlayers = 2\nhidden = 512\nintermediate = 1376\n\
         prompt_len = 16\nnew_tokens = 8\nimpl = [\"loop\", \"hf\"]\n"
    ));
    let (rows, text, _d) = run(&python, &["--engine", "torch", suite.to_str().unwrap()], &[]);
    let failed: Vec<&Row> = rows.iter().filter(|r| r["status"] != "ok").collect();
    assert!(failed.is_empty(), "{failed:#?}\n{text}");
    // The greedy tokens' hash of a workload's case run by `imp`.
    let tokens = |workload: &str, imp: &str| -> String {
        rows.iter()
            .filter(|r| r["workload"] == workload && r["case"].contains(&format!("impl={imp}")))
            .find(|r| r["reason"].starts_with("tokens "))
            .map(|r| r["reason"].split_whitespace().nth(1).unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{workload} {imp}: {rows:#?}"))
    };
    for workload in ["tiny", "llama2"] {
        let (lp, hf) = (tokens(workload, "loop"), tokens(workload, "hf"));
        assert!(!lp.is_empty());
        assert_eq!(
            lp, hf,
            "{workload}: the loop and transformers generate different tokens"
        );
    }
    assert_eq!(
        tokens("tiny-static", "hf"),
        tokens("tiny", "loop"),
        "static cache"
    );
    // transformers' rows say which transformers ran; TTFT (the first streamed token) comes before
    // the end of the generation.
    let hf_cases: std::collections::BTreeSet<(&str, &str)> = rows
        .iter()
        .filter(|r| r["reason"].contains("impl hf (transformers "))
        .map(|r| (r["workload"].as_str(), r["case"].as_str()))
        .collect();
    assert_eq!(hf_cases.len(), 3, "{rows:#?}");
    for workload in ["tiny", "tiny-static", "llama2"] {
        let m = |metric: &str| {
            rows.iter()
                .filter(|r| r["workload"] == workload && r["metric"] == metric)
                .find(|r| !r["case"].contains("impl=loop"))
                .map(median)
                .unwrap_or_else(|| panic!("{workload} {metric}: {rows:#?}"))
        };
        assert!(
            m("ttft") > 0.0 && m("ttft") < m("latency"),
            "{workload}: ttft {} latency {}",
            m("ttft"),
            m("latency")
        );
        assert!(m("tpot") > 0.0, "{workload}");
    }
}

#[test]
fn hf_generate_without_transformers_is_skipped() {
    let Some(python) = torch_python() else { return };
    // A transformers that cannot be imported, first on PYTHONPATH, as an image without it.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("site/transformers");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("__init__.py"),
        "raise ImportError(\"no transformers in this test's image\")\n",
    )
    .unwrap();
    let wrapper = dir.path().join("python-without-transformers");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nPYTHONPATH='{}' exec '{}' \"$@\"\n",
            dir.path().join("site").display(),
            python.display()
        ),
    )
    .unwrap();
    make_executable(&wrapper);
    let (suite, _s) = suite_file(&format!(
        "name = \"no-hf\"\n{MULTI_RANK_DEFAULTS}\n[[workload]]\nkind = \"generate\"\nmodel = \"tiny\"\nlayers = 1\n\
         prompt_len = 8\nnew_tokens = 2\nimpl = [\"hf\", \"loop\"]\n"
    ));
    let (rows, text, _d) = run(&wrapper, &["--engine", "torch", suite.to_str().unwrap()], &[]);
    let hf: Vec<&Row> = rows.iter().filter(|r| r["case"].contains("impl=hf")).collect();
    assert_eq!(hf.len(), 1, "{rows:#?}\n{text}");
    assert_eq!(hf[0]["status"], "skipped", "{:?}", hf[0]);
    assert_eq!(
        hf[0]["reason"],
        "transformers not importable in image (ImportError: no transformers in this test's image)"
    );
    // The loop does not need transformers.
    assert_eq!(ok_metric(&rows, "generate", "tpot").len(), 1, "{rows:#?}");
}

#[test]
fn compiled_cases_report_compile_time_and_match_eager() {
    let Some(python) = torch_python() else { return };
    let (suite, _s) = suite_file(&format!(
        "name = \"compile-test\"\n{MULTI_RANK_DEFAULTS}\n\
         [[workload]]\nkind = \"precision\"\nmodel = \"mlp\"\nbatch = 8\nhidden = 32\nmode = \"fp32\"\ncompile = [\"none\", \"default\"]\n\
         [[workload]]\nkind = \"generate\"\nmodel = \"tiny\"\nlayers = 1\nprompt_len = 8\nnew_tokens = 4\ncompile = [\"none\", \"default\"]\n"
    ));
    let (rows, text, _d) = run(&python, &["--engine", "torch", suite.to_str().unwrap()], &[]);
    let failed: Vec<&Row> = rows.iter().filter(|r| r["status"] != "ok").collect();
    assert!(failed.is_empty(), "{failed:#?}\n{text}");
    for (workload, steady) in [("precision", "step_time"), ("generate", "tpot")] {
        let compiled = |metric: &str| -> Vec<&Row> {
            ok_metric(&rows, workload, metric)
                .into_iter()
                .filter(|r| r["case"].ends_with("compile=default"))
                .collect()
        };
        let time = compiled("compile_time");
        assert_eq!(time.len(), 1, "{workload}: {rows:#?}");
        assert!(median(time[0]) > 0.0 && time[0]["unit"] == "ms", "{:?}", time[0]);
        let breaks = compiled("graph_breaks");
        assert_eq!(breaks.len(), 1, "{workload}: {rows:#?}");
        assert!(median(breaks[0]) >= 0.0);
        assert!(
            compiled(steady).iter().all(|r| median(r) > 0.0),
            "{workload} {steady}: {rows:#?}"
        );
        // Eager cases have no compile metrics.
        assert!(rows
            .iter()
            .filter(|r| r["case"].ends_with("compile=none"))
            .all(|r| r["metric"] != "compile_time"));
    }
    // Compiled against eager: the same greedy tokens; the loss after the seeded steps within
    // fp32's rounding of eager fp32's (the reference is eager).
    let tokens = token_hashes(&rows);
    assert_eq!(tokens.len(), 2, "{rows:#?}");
    let hashes: Vec<&str> = tokens.values().copied().collect();
    assert_eq!(
        hashes[0], hashes[1],
        "compiled and eager tokens differ: {tokens:?}"
    );
    let diff = ok_metric(&rows, "precision", "loss_diff_vs_fp32");
    assert_eq!(diff.len(), 1, "{rows:#?}");
    assert!(
        diff[0]["case"].ends_with("compile=default") && median(diff[0]) < 1e-4,
        "{:?}",
        diff[0]
    );
}

#[test]
fn a_compile_failure_fails_its_case_and_no_compiler_skips() {
    let Some(python) = torch_python() else { return };
    let (suite, _s) = suite_file(&format!(
        "name = \"compile-fail\"\n{MULTI_RANK_DEFAULTS}\n\
         [[workload]]\nkind = \"precision\"\nmodel = \"mlp\"\nbatch = 8\nhidden = 32\nmode = \"fp32\"\ncompile = \"default\"\n\
         [[workload]]\nkind = \"gemm\"\nsize = 64\ndtype = \"fp32\"\n"
    ));
    // A C++ compiler that answers --version (Inductor's check) but fails every compilation.
    let dir = tempfile::tempdir().unwrap();
    let cxx = dir.path().join("failing-c++");
    std::fs::write(
        &cxx,
        "#!/bin/sh\ncase \"$*\" in *--version*) exec g++ --version ;; esac\necho 'failing-c++: no' >&2\nexit 1\n",
    )
    .unwrap();
    make_executable(&cxx);
    let (rows, text, _d) = run(
        &python,
        &["--engine", "torch", suite.to_str().unwrap()],
        &[("CXX", cxx.to_str().unwrap())],
    );
    let r = rows
        .iter()
        .find(|r| r["workload"] == "precision")
        .unwrap_or_else(|| panic!("{rows:#?}\n{text}"));
    assert_eq!(r["status"], "failed", "{r:?}");
    assert!(
        r["reason"].contains("torch.compile (mode default) failed: InductorError: CppCompileError"),
        "{r:?}"
    );
    assert!(!r["reason"].contains('\n'), "one line: {r:?}");
    // The next case still runs.
    assert_eq!(ok_metric(&rows, "gemm", "latency").len(), 1, "{rows:#?}\n{text}");

    // No C++ compiler at all: skipped, saying so.
    let (rows, text, _d2) = run(
        &python,
        &[
            "--engine",
            "torch",
            "--filter",
            "precision",
            suite.to_str().unwrap(),
        ],
        &[("CXX", "/nonexistent/tagbench-test/g++")],
    );
    assert_eq!(rows.len(), 1, "{rows:#?}\n{text}");
    assert_eq!(rows[0]["status"], "skipped", "{:?}", rows[0]);
    assert!(
        rows[0]["reason"].starts_with("torch.compile on the CPU needs a C++ compiler: InvalidCxxCompiler"),
        "{:?}",
        rows[0]
    );
}

#[test]
fn conv_rows_in_both_layouts_checked_and_a_resnet_training_step() {
    let Some(python) = torch_python() else { return };
    // ResNet-50's last stage at 64 channels: small enough for a CPU, every part of the case.
    let (suite, _s) = suite_file(&format!(
        "name = \"conv-test\"\n{MULTI_RANK_DEFAULTS}\n\
         [[workload]]\nkind = \"conv\"\nlayer = \"res5\"\nin_channels = 64\nout_channels = 64\nbatch = 2\n\
         layout = [\"nchw\", \"channels_last\"]\ndtype = [\"fp32\", \"bf16\"]\n\
         [[workload]]\nname = \"benchmark\"\nkind = \"conv\"\nlayer = \"res5\"\nin_channels = 64\nout_channels = 64\nbatch = 2\ncudnn_benchmark = true\n\
         [[workload]]\nkind = \"precision\"\nmodel = \"resnet\"\nbatch = 4\nhidden = 32\nimage_size = 8\nmode = [\"fp32\", \"amp-bf16\"]\n"
    ));
    let (rows, text, _d) = run(&python, &["--engine", "torch", suite.to_str().unwrap()], &[]);
    // Each layout and dtype measured after the float64 check on the CPU passed (a wrong result
    // would fail the case), reporting what computed it.
    let conv = ok_metric(&rows, "conv", "throughput");
    assert_eq!(conv.len(), 4, "{rows:#?}\n{text}");
    for layout in ["layout=nchw", "layout=channels_last"] {
        assert_eq!(
            conv.iter().filter(|r| r["case"].contains(layout)).count(),
            2,
            "{conv:#?}"
        );
    }
    assert!(
        conv.iter().all(|r| r["unit"] == "GFLOP/s" && median(r) > 0.0),
        "{conv:#?}"
    );
    let backends = rows
        .iter()
        .filter(|r| r["workload"] == "conv")
        .filter(|r| r["reason"].starts_with("onednn") || r["reason"].starts_with("aten"))
        .count();
    assert_eq!(backends, 4, "{rows:#?}");
    let bench = rows
        .iter()
        .find(|r| r["workload"] == "benchmark")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(bench["status"], "skipped", "{bench:?}");
    assert!(bench["reason"].contains("the CPU has no cuDNN"), "{bench:?}");
    // The resnet model trains in fp32 and bf16 autocast, the loss staying close.
    assert_eq!(
        ok_metric(&rows, "precision", "step_time").len(),
        2,
        "{rows:#?}\n{text}"
    );
    let diff = ok_metric(&rows, "precision", "loss_diff_vs_fp32");
    assert_eq!(diff.len(), 1, "{rows:#?}");
    assert!(median(diff[0]) < 0.05, "{:?}", diff[0]);
}
