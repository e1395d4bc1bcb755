//! End-to-end tests of the core harness through the real binary: the smoke suite, suite errors,
//! a run killed mid-way and resumed, a case that outlives its time limit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use tagbench::results::{read_results, read_samples, ResultRow, RunDir, Status};

fn tagbench() -> Command {
    let mut c = Command::new(cargo_bin("tagbench"));
    c.arg("run").arg("--no-progress").arg("--no-report");
    c
}

/// The single run directory under `root`.
fn only_run(root: &Path) -> RunDir {
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    RunDir::new(&dirs[0])
}

fn rows_of<'a>(rows: &'a [ResultRow], workload: &str) -> Vec<&'a ResultRow> {
    rows.iter().filter(|r| r.workload == workload).collect()
}

#[test]
fn smoke_suite_runs_every_workload_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tagbench().arg("--results-dir").arg(tmp.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let run = only_run(tmp.path());
    let rows = read_results(&run).unwrap();
    for w in ["gemm", "attention", "generate", "precision"] {
        let ok: Vec<_> = rows_of(&rows, w)
            .into_iter()
            .filter(|r| r.status == Status::Ok)
            .collect();
        assert!(!ok.is_empty(), "no ok rows for {w}");
        for r in ok {
            assert!(
                r.median.unwrap() > 0.0,
                "{w} {} {} median {:?}",
                r.case,
                r.metric,
                r.median
            );
            assert!(r.n.unwrap() >= 1);
        }
    }
    let ar = rows_of(&rows, "allreduce");
    assert_eq!(ar.len(), 1);
    assert_eq!(ar[0].status, Status::Skipped);
    assert!(ar[0].reason.contains("needs CUDA and NCCL"), "{}", ar[0].reason);
    for dtype in ["tf32", "fp8"] {
        let r: Vec<_> = rows_of(&rows, "gemm")
            .into_iter()
            .filter(|r| r.case.contains(dtype))
            .collect();
        assert!(!r.is_empty());
        assert!(
            r.iter()
                .all(|r| r.status == Status::Skipped && !r.reason.is_empty()),
            "{r:?}"
        );
    }
    // Probe: a status row and the host facts in run.json.
    let probe = rows_of(&rows, "probe");
    assert_eq!(probe[0].status, Status::Ok);
    let meta = run.read_meta().unwrap();
    assert_eq!(meta.state, "complete");
    assert!(
        meta.targets[0].env.contains_key("cpu_cores"),
        "{:?}",
        meta.targets[0].env
    );
    // Samples back every summary.
    let samples = read_samples(&run).unwrap();
    let gemm_lat = rows
        .iter()
        .find(|r| r.workload == "gemm" && r.metric == "latency")
        .unwrap();
    let n = samples
        .iter()
        .filter(|s| s.case == gemm_lat.case && s.metric == "latency" && s.round == gemm_lat.round)
        .count();
    assert_eq!(Some(n), gemm_lat.n);
    // Five rounds (worker processes) of every measured case; the probe and skipped cases once.
    let rounds = |w: &str, case: &str, metric: &str| {
        let mut r: Vec<_> = rows
            .iter()
            .filter(|r| r.workload == w && r.case == case && r.metric == metric)
            .map(|r| r.round.unwrap())
            .collect();
        r.sort();
        r
    };
    assert_eq!(rounds("gemm", &gemm_lat.case, "latency"), [0, 1, 2, 3, 4]);
    assert_eq!(rounds("probe", "default", ""), [0]);
    assert_eq!(rounds("allreduce", &ar[0].case, ""), [0]);
    // Each round ran in its own worker, with its own log.
    let logs = std::fs::read_dir(run.logs())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .count();
    assert_eq!(logs, 5);
}

fn write_suite(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("bad.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `tagbench run` of a suite with this text in a fresh directory: the directory (alive while
/// kept), the suite file, where results would go, and the output.
fn run_suite_text(text: &str) -> (tempfile::TempDir, PathBuf, PathBuf, std::process::Output) {
    let tmp = tempfile::tempdir().unwrap();
    let suite = write_suite(tmp.path(), text);
    let results = tmp.path().join("results");
    let out = tagbench()
        .arg(&suite)
        .arg("--results-dir")
        .arg(&results)
        .output()
        .unwrap();
    (tmp, suite, results, out)
}

#[test]
fn malformed_suites_exit_2_naming_the_line_and_write_nothing() {
    let cases = [
        (
            "[[workload]]\nkind = \"gemm\"\nsize = 64\ndtyp = \"fp32\"\n",
            "line 4",
            "dtyp",
        ),
        (
            "[[workload]]\nkind = \"gemm\"\nsize = \"big\"\n",
            "line 3",
            "invalid type",
        ),
        (
            "name = \"x\"\n[[workload]]\nkind = \"gemmm\"\n",
            "line 3",
            "unknown workload kind `gemmm`",
        ),
    ];
    for (text, line, what) in cases {
        let (_tmp, _suite, results, out) = run_suite_text(text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(line) && stderr.contains(what), "{stderr}");
        assert!(stderr.contains("bad.toml"), "{stderr}");
        assert!(!results.exists(), "results written for a bad suite");
    }
}

#[test]
fn bad_byte_sizes_exit_2_at_load_for_run_and_list() {
    // A Docker target that would fail only when its container is created: the suite is refused
    // at load, with its file and line, before any image is looked at.
    let cases = [
        ("shm_size = \"lots\"", "bad size `lots`"),
        ("memory = \"8q\"", "bad size `8q`"),
    ];
    for (line3, what) in cases {
        let text = format!(
            "[[target]]\nimage = \"tagbench-no-such-image:none\"\n{line3}\n\n[[workload]]\nkind = \"probe\"\n"
        );
        let (_tmp, suite, results, run) = run_suite_text(&text);
        let list = Command::new(cargo_bin("tagbench"))
            .arg("list")
            .arg(&suite)
            .output()
            .unwrap();
        for out in [run, list] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("line 3") && stderr.contains(what), "{stderr}");
            assert!(stderr.contains("bad.toml"), "{stderr}");
            assert!(!stderr.contains("image"), "the image was looked at: {stderr}");
        }
        assert!(!results.exists(), "results written for a bad suite");
    }
}

/// Eight gemm cases of about a third of a second each, two rounds.
const SLOW_SUITE: &str = r#"
name = "slow"
[defaults]
rounds = 2
warmup_s = 0.0
min_samples = 1000
max_samples = 1000
max_time_s = 60
timeout_s = 60

[[workload]]
kind = "gemm"
size = 256
layout = ["nn", "nt", "tn", "tt"]

[[workload]]
kind = "gemm"
name = "gemm2"
size = 240
layout = ["nn", "nt", "tn", "tt"]
"#;

#[test]
fn killed_run_is_readable_and_resume_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let text = SLOW_SUITE.to_string();
    let suite = write_suite(tmp.path(), &text);
    let results = tmp.path().join("results");
    let mut child = tagbench()
        .arg(&suite)
        .arg("--results-dir")
        .arg(&results)
        .arg("--run-id")
        .arg("killed")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = RunDir::new(results.join("killed"));
    let start = Instant::now();
    // Wait until at least two cases are on disk, then SIGKILL the host (its worker dies of a
    // broken pipe when it next writes).
    loop {
        let n = std::fs::read_to_string(run.results_csv())
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if n >= 5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_results(&run).unwrap();
    assert!(!before.is_empty());
    assert!(before.len() < 32, "the run finished before it was killed");
    assert!(before
        .iter()
        .all(|r| r.status == Status::Ok && r.median.unwrap() > 0.0));
    assert_eq!(run.read_meta().unwrap().state, "running");

    let out = Command::new(cargo_bin("tagbench"))
        .args(["run", "--no-progress", "--no-report", "--results-dir"])
        .arg(&results)
        .arg("--resume")
        .arg("killed")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = read_results(&run).unwrap();
    // Every case once per round, two metrics each; the rows from before the kill untouched.
    assert_eq!(after.len(), 32, "{after:#?}");
    assert_eq!(&after[..before.len()], &before[..]);
    let mut keys: Vec<_> = after
        .iter()
        .map(|r| (r.workload.clone(), r.case.clone(), r.metric.clone(), r.round))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 32);
    assert_eq!(run.read_meta().unwrap().state, "complete");
}

#[test]
fn case_past_its_time_limit_fails_and_the_run_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let text = r#"
[defaults]
warmup_s = 0.0
min_samples = 3
max_time_s = 0.1
rounds = 3

[[workload]]
kind = "gemm"
name = "slow"
size = 1024
min_samples = 100000
max_samples = 100000
max_time_s = 1000
timeout_s = 1.5

[[workload]]
kind = "gemm"
name = "fast"
size = 64
"#;
    let suite = write_suite(tmp.path(), text);
    let out = tagbench()
        .arg(&suite)
        .arg("--results-dir")
        .arg(tmp.path().join("r"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A failed case makes the run exit 1 (the gate closes on a failed case), after the other
    // cases ran; the verdict says so.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("verdict: Run complete, with failed cases: exit 1 (a case failed)"),
        "{stdout}"
    );
    let rows = read_results(&only_run(&tmp.path().join("r"))).unwrap();
    let slow = rows_of(&rows, "slow");
    // Failed in round 0, not run again in rounds 1 and 2.
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0].status, Status::Failed);
    assert!(
        slow[0].reason.contains("timed out after 1.5 s"),
        "{}",
        slow[0].reason
    );
    let fast = rows_of(&rows, "fast");
    assert!(
        fast.iter().all(|r| r.status == Status::Ok) && fast.len() == 6,
        "{fast:?}"
    );
}

#[test]
fn rounds_alternate_the_order_of_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let text = r#"
[defaults]
warmup_s = 0.0
min_samples = 3
max_time_s = 0.05
rounds = 3
[[target]]
name = "a"
local = true
[[target]]
name = "b"
local = true
[[workload]]
kind = "gemm"
size = 64
"#;
    let suite = write_suite(tmp.path(), text);
    let out = tagbench()
        .arg(&suite)
        .arg("--results-dir")
        .arg(tmp.path().join("r"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = read_results(&only_run(&tmp.path().join("r"))).unwrap();
    let order: Vec<(String, usize)> = rows
        .iter()
        .filter(|r| r.metric == "latency")
        .map(|r| (r.target.clone(), r.round.unwrap()))
        .collect();
    let want = [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)];
    assert_eq!(order, want.map(|(t, r)| (t.to_string(), r)));
}

/// Adaptive rounds: two targets, `min_rounds = 3`, `max_rounds = 6`. The run records the design
/// in run.json; every case ends at a look (3 or 6 rounds judged) or, having re-measured outlier
/// rounds, at most 2 past `max_rounds`; `compare` spends α by the look it judged at. With a time
/// budget already spent after the first rounds, no round is added.
#[test]
fn adaptive_rounds_stop_at_a_look_and_record_the_design() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = |budget: &str| {
        format!(
            "[defaults]\nwarmup_s = 0.0\nmin_samples = 3\nmax_time_s = 0.05\nmin_rounds = 3\nmax_rounds = 6\n{budget}\n[[target]]\nname = \"a\"\nlocal = true\n[[target]]\nname = \"b\"\nlocal = true\n[[workload]]\nkind = \"gemm\"\nsize = [64, 128]\n"
        )
    };
    for (id, budget) in [("open", ""), ("budget", "max_run_time = 0.001")] {
        std::fs::create_dir_all(tmp.path().join(id)).unwrap();
        let path = write_suite(&tmp.path().join(id), &suite(budget));
        let out = tagbench()
            .arg(&path)
            .args(["--run-id", id, "--results-dir"])
            .arg(tmp.path().join("r"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let run = RunDir::new(tmp.path().join("r").join(id));
        let meta = run.read_meta().unwrap();
        assert_eq!(meta.rounds_design.len(), 2, "{:?}", meta.rounds_design);
        let d = meta.rounds_design["gemm/size=64"];
        assert_eq!((d.min_rounds, d.max_rounds), (3, 6));
        let rows = read_results(&run).unwrap();
        for case in ["size=64", "size=128"] {
            let rounds = rows
                .iter()
                .filter(|r| r.case == case && r.metric == "latency" && r.target == "a")
                .count();
            if budget.is_empty() {
                assert!((3..=8).contains(&rounds), "{case}: {rounds} rounds\n{stderr}");
            } else {
                // Only re-measured outlier rounds may follow the first three.
                assert!(rounds <= 5, "{case}: {rounds} rounds\n{stderr}");
            }
        }
        let (_, v) = common::compare_along_target(&run.root, "a");
        for c in v["comparisons"].as_array().unwrap() {
            let share = c["alpha_share"].as_f64().unwrap();
            assert!(
                share == 0.5,
                "looks at 3 and 6 of 6 rounds spend half of α each: {c}"
            );
            assert!(c["pairs"].as_u64().unwrap() >= 3, "{c}");
            // The reason gives the look's CI level: 1 − 0.05 · ½.
            assert!(
                c["reason"]
                    .as_str()
                    .unwrap()
                    .contains("spends 50% of α (97.5% CI)"),
                "{c}"
            );
        }
    }
}

#[test]
fn list_and_filter() {
    let out = Command::new(cargo_bin("tagbench"))
        .args(["list", "--filter", "gemm/size=256"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.lines().all(|l| l.starts_with("gemm/size=256,dtype=")));
}

#[test]
fn help_documents_flags() {
    let out = Command::new(cargo_bin("tagbench"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--set",
        "--filter",
        "--image",
        "--engine",
        "--device",
        "--gpus",
        "--pull",
        "--resume",
        "--results-dir",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

fn exits_zero(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// A run.json written before run options were stored (only the old `args`) still resumes; a
/// bad one fails with an error that names run.json.
#[test]
fn resume_reads_a_run_json_with_only_args() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let run_cmd = || {
        let mut c = Command::new(cargo_bin("tagbench"));
        c.args(["run", "--no-progress", "--no-report", "--results-dir"])
            .arg(&results);
        c
    };
    let out = run_cmd()
        .args(["--filter", "probe", "--run-id", "old"])
        .output()
        .unwrap();
    exits_zero(&out);
    let run = RunDir::new(results.join("old"));
    let rows = read_results(&run).unwrap().len();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.run_json()).unwrap()).unwrap();
    assert_eq!(meta["options"]["filter"][0], "probe");
    let legacy = |args: serde_json::Value| {
        let mut m = meta.clone();
        m.as_object_mut().unwrap().remove("options");
        m["args"] = args;
        m["state"] = "running".into();
        std::fs::write(run.run_json(), serde_json::to_string(&m).unwrap()).unwrap();
    };
    legacy(serde_json::json!(["--filter", "probe"]));
    let out = run_cmd().args(["--resume", "old"]).output().unwrap();
    exits_zero(&out);
    assert_eq!(
        read_results(&run).unwrap().len(),
        rows,
        "nothing is measured twice"
    );
    assert_eq!(run.read_meta().unwrap().state, "complete");

    legacy(serde_json::json!(["--no-such-flag"]));
    let out = run_cmd().args(["--resume", "old"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run.json"), "{err}");
}

#[test]
fn plan_says_llama_3_70b_needs_more_than_one_80_gib_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = write_suite(
        tmp.path(),
        "name = \"plan\"\n[[workload]]\nkind = \"generate\"\nmodel = [\"llama-3-8b\", \"llama-3-70b\"]\n\
         dtype = \"bf16\"\nbatch = 1\nprompt_len = 2048\nnew_tokens = 128\ntensor_parallel = [1, 4]\n",
    );
    let out = Command::new(cargo_bin("tagbench"))
        .arg("plan")
        .arg(&suite)
        .args(["--gpu-memory", "80GiB"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |model: &str, tp: usize| {
        stdout
            .lines()
            .find(|l| l.contains(&format!("model={model},")) && l.contains(&format!("tensor_parallel={tp}")))
            .unwrap_or_else(|| panic!("no {model} tp={tp} line in:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // case, tp, then five sizes of two words each, then the verdict and the smallest degree.
    let big = line("llama-3-70b", 1);
    assert_eq!(&big[2..4], ["131.42", "GiB"], "weights per rank at tp=1: {big:?}");
    assert_eq!(&big[12..], ["does", "not", "fit", "2"], "{big:?}");
    let big4 = line("llama-3-70b", 4);
    assert_eq!(big4[1], "4");
    assert_eq!(&big4[12..], ["fits", "2"], "{big4:?}");
    let small = line("llama-3-8b", 1);
    assert_eq!(&small[12..], ["fits", "1"], "{small:?}");

    // A bad size is an error before anything is planned.
    let bad = Command::new(cargo_bin("tagbench"))
        .arg("plan")
        .arg(&suite)
        .args(["--gpu-memory", "lots"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--gpu-memory: bad size `lots`"));
}

#[test]
fn run_skips_a_case_that_cannot_fit_the_gpus_and_names_what_would() {
    let tmp = tempfile::tempdir().unwrap();
    // An nvidia-smi that reports one 80 GiB GPU: the host's GPU memory as `run` reads it.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let smi = bin.join("nvidia-smi");
    std::fs::write(&smi, "#!/bin/sh\necho 81920\n").unwrap();
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let suite = write_suite(
        tmp.path(),
        "name = \"fit\"\n[[target]]\nlocal = true\ndevice = \"cuda\"\n[[workload]]\nkind = \"generate\"\n\
         model = \"llama-3-70b\"\ndtype = \"bf16\"\nprompt_len = 2048\nnew_tokens = 128\nrounds = 1\n",
    );
    let results = tmp.path().join("results");
    let out = tagbench()
        .arg(&suite)
        .arg("--results-dir")
        .arg(&results)
        .env("PATH", path)
        .output()
        .unwrap();
    exits_zero(&out);
    let rows = read_results(&only_run(&results)).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, Status::Skipped);
    assert!(
        rows[0]
            .reason
            .contains("needs 133.7 GiB per rank at tensor_parallel=1")
            && rows[0].reason.contains("80 GiB GPUs need tensor_parallel ≥ 2"),
        "{}",
        rows[0].reason
    );
}

#[test]
fn native_engine_skips_multi_rank_cases_naming_the_torch_engine() {
    let (tmp, _suite, results, out) = run_suite_text(
        r#"
[defaults]
rounds = 1
warmup_s = 0.0
min_samples = 2
max_time_s = 0.1

[[workload]]
kind = "generate"
prompt_len = 4
new_tokens = 2
tensor_parallel = 2

[[workload]]
kind = "precision"
batch = 4
hidden = 16
mode = "fp32"
parallel = ["ddp", "fsdp"]
ranks = 2
"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows = read_results(&only_run(&results)).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}\n{stderr}");
    for r in &rows {
        assert_eq!(r.status, Status::Skipped, "{r:?}");
        assert!(
            r.reason.contains("needs the torch engine (--engine torch)"),
            "{}",
            r.reason
        );
    }
    drop(tmp);
}
