//! End-to-end tests of the gate through the real binary: one exit rule for every command, and a
//! gate that fails closed on partial runs, on metrics the candidate lacks, on what was not
//! replicated, and that a closed pipe cannot turn into a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use common::{samples, tagbench, write_run, Case};
use tagbench::results::{read_results, RunDir, Status};

const CV: f64 = 0.02;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A gemm case whose worker was killed.
fn crashed(case: &str) -> Case {
    Case::status("local", "gemm", case, Status::Failed, "worker ended: signal 9")
}

/// `tagbench run --no-progress --no-report` of `suite` into `results`.
fn run_cmd(suite: &Path, results: &Path) -> Command {
    let mut c = Command::new(cargo_bin("tagbench"));
    c.args(["run", "--no-progress", "--no-report"])
        .arg(suite)
        .arg("--results-dir")
        .arg(results);
    c
}

/// Four gemm cases of about a fifth of a second each, two rounds: long enough to be killed
/// between its first rows and its end.
const SLOW_SUITE: &str = r#"
name = "gate"
[defaults]
rounds = 2
warmup_s = 0.0
min_samples = 600
max_samples = 600
max_time_s = 60
timeout_s = 60

[[workload]]
kind = "gemm"
size = 256
layout = ["nn", "nt", "tn", "tt"]
"#;

/// A candidate killed (SIGKILL) mid-run is refused (exit 2, naming the run and how to resume
/// it); `--allow-partial` compares what it has (its missing metrics still close the gate); once
/// `--resume` has finished it, the A/A comparison opens the gate (two rounds a side: every
/// timing is `noisy`, which does not close it).
#[test]
fn killed_candidate_exits_2_naming_it_and_passes_once_resumed() {
    let t = tempfile::tempdir().unwrap();
    let suite = t.path().join("gate.toml");
    std::fs::write(&suite, SLOW_SUITE).unwrap();
    let results = t.path().join("results");
    let out = run_cmd(&suite, &results)
        .args(["--run-id", "base"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let mut child = run_cmd(&suite, &results)
        .args(["--run-id", "cand"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cand = RunDir::new(results.join("cand"));
    let start = Instant::now();
    while read_results(&cand).map(|r| r.len()).unwrap_or(0) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let rows = read_results(&cand).unwrap().len();
    assert!(rows < 16, "the run finished before it was killed ({rows} rows)");

    let compare = |extra: &[&str]| {
        tagbench()
            .arg("compare")
            .args(extra)
            .arg(results.join("base"))
            .arg(cand.root.clone())
            .output()
            .unwrap()
    };
    let out = compare(&[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let resume = format!("tagbench run --resume {}", cand.root.display());
    for shown in [&stdout, &stderr] {
        assert!(
            shown.contains(
                "run cand is partial (run.json state `running`: it was killed or is still running)"
            ),
            "{shown}"
        );
        assert!(shown.contains(&resume), "{shown}");
    }
    assert!(stdout.starts_with("gate: exit 2 (incomplete"), "{stdout}");
    assert!(stderr.contains("exit 2: incomplete"), "{stderr}");
    // The same in JSON, for machines.
    let out = compare(&["--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["partial_runs"][0]["name"], "cand");
    assert_eq!(v["partial_runs"][0]["state"], "running");
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["outcome"], "incomplete");
    // What it has, on request: the metrics it lost are missing, and close the gate.
    let out = compare(&["--allow-partial"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("the candidate lacks"), "{stdout}");
    // A report of the partial run alone says so too, and exits as its page says.
    let report = t.path().join("report");
    let out = tagbench()
        .arg("report")
        .arg(&cand.root)
        .arg("--out")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("<h2>Run incomplete</h2>"), "{html}");
    assert!(html.contains("Exit code <b>2</b>"), "{html}");

    let out = Command::new(cargo_bin("tagbench"))
        .args(["run", "--no-progress", "--no-report", "--results-dir"])
        .arg(&results)
        .arg("--resume")
        .arg("cand")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = compare(&[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.starts_with("gate: exit 0 (complete, no regression)"),
        "{stdout}"
    );
    assert!(!stdout.contains("regression\n"), "{stdout}");
}

/// Base: four gemm sizes; candidate: the first two only (half the metrics).
fn half_missing(dir: &Path) -> (PathBuf, PathBuf) {
    let sizes = [64, 128, 256, 512];
    let cases = |seed: u64, n: usize| -> Vec<Case> {
        sizes[..n]
            .iter()
            .enumerate()
            .map(|(i, &s)| Case::gemm("local", "", s, samples(seed + i as u64, s as f64 / 10.0, CV, 50)))
            .collect()
    };
    let base = write_run(dir, "base", "2026-01-01T00:00:00Z", &cases(10, 4));
    let cand = write_run(dir, "cand", "2026-01-02T00:00:00Z", &cases(20, 2));
    (base, cand)
}

/// A candidate missing half the baseline's metrics closes the gate (exit 1), and the missing
/// ones come first: in the gate block above the table, first among the rows, and on stderr.
#[test]
fn candidate_missing_half_the_metrics_exits_1_listing_them_first() {
    let t = tempfile::tempdir().unwrap();
    let (base, cand) = half_missing(t.path());
    let compare = |args: &[&str]| {
        tagbench()
            .arg("compare")
            .args(args)
            .arg(&base)
            .arg(&cand)
            .output()
            .unwrap()
    };
    let out = compare(&[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0], "gate: exit 1 (the candidate lacks metrics the baseline measured)",
        "{stdout}"
    );
    assert_eq!(
        lines[1].trim(),
        "the candidate lacks 4 of the 8 metrics the baseline measured (pass --allow-missing to accept):"
    );
    let missing: Vec<&str> = lines[2..6].iter().map(|l| l.trim()).collect();
    for size in [256, 512] {
        for metric in ["latency", "throughput"] {
            let want = format!(
                "missing: gemm/size={size},dtype=fp32 {metric} on cpu (candidate cand): not measured in the candidate"
            );
            assert!(missing.contains(&want.as_str()), "{want} not in {missing:?}");
            assert!(stderr.contains(&want), "{stderr}");
        }
    }
    // In the table, the missing rows come first too.
    let header = stdout.find("workload  case").unwrap();
    let rows: Vec<&str> = stdout[header..].lines().skip(1).take(8).collect();
    assert!(
        rows[..4].iter().all(|r| r.ends_with("missing")) && !rows[4].ends_with("missing"),
        "{rows:#?}"
    );
    // JSON: the outcome, and the missing comparisons first.
    let out = compare(&["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "missing");
    assert_eq!(v["candidate_lacks"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["candidate_lacks"][0]["reason"], "not measured in the candidate");
    assert_eq!(v["comparisons"][0]["verdict"], "missing");
    // JUnit: each missing metric is a failure; Markdown: the gate first.
    let out = compare(&["--format", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    let x = text(&out.stdout);
    assert_eq!(x.matches("<failure type=\"missing\"").count(), 4, "{x}");
    assert!(x.contains("tests=\"8\" failures=\"4\""), "{x}");
    let out = compare(&["--format", "markdown"]);
    let md = text(&out.stdout);
    assert!(
        md.starts_with("**Gate:** exit 1 (the candidate lacks metrics the baseline measured)\n\n- the candidate lacks 4 of the 8"),
        "{md}"
    );
    // `--allow-missing` opens the gate for them (still listed).
    let out = compare(&["--allow-missing"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // `report --baseline` agrees, and its page prints the same code and names what is missing.
    let report = t.path().join("report");
    let out = tagbench()
        .args(["report", "--baseline"])
        .arg(&base)
        .arg("--out")
        .arg(&report)
        .arg(&cand)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("<h2>The candidate lacks metrics the baseline measured</h2>"));
    assert!(html.contains("Exit code <b>1</b>"), "{html}");
    assert!(
        html.contains("<li>missing: gemm/size=512,dtype=fp32 latency on cpu (candidate cand): not measured in the candidate</li>"),
        "{html}"
    );
    let md = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(md.contains("Exit code **1**"), "{md}");
}

/// Two identical local targets, one round each: no verdict on any time (the reason names the
/// rounds and how many a verdict needs), so no regression and exit 0; the run prints the
/// comparison and its verdict; each worker warning once per target, case and message.
#[test]
fn two_identical_local_targets_with_one_round_are_not_judged() {
    let t = tempfile::tempdir().unwrap();
    let suite = t.path().join("aa.toml");
    std::fs::write(
        &suite,
        "[defaults]\nwarmup_s = 0.02\nmin_samples = 20\nmax_time_s = 0.2\nrounds = 1\n\
         [[target]]\nname = \"a\"\nlocal = true\n[[target]]\nname = \"b\"\nlocal = true\n\
         [[workload]]\nkind = \"gemm\"\nsize = [64, 256]\n",
    )
    .unwrap();
    let results = t.path().join("r");
    let out = run_cmd(&suite, &results)
        .args(["--run-id", "aa"])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("baseline: a (along target)"), "{stdout}");
    assert!(
        stdout.contains("verdict: Too noisy to tell: exit 0 (complete, no regression)"),
        "{stdout}"
    );
    let mut warned = std::collections::BTreeSet::new();
    for l in stderr.lines().filter(|l| l.starts_with("warning: ")) {
        // One line per target, case and message kind.
        let key: String = l.split(": ").take(4).collect::<Vec<_>>().join(": ");
        assert!(warned.insert(key), "warned twice: {l}\n{stderr}");
    }
    let (code, v) = common::compare_along_target(&results.join("aa"), "a");
    assert_eq!(code, Some(0), "{v}");
    let cmps = v["comparisons"].as_array().unwrap();
    assert_eq!(cmps.len(), 4, "{v}");
    for c in cmps {
        assert_eq!(c["verdict"], "noisy", "{c}");
        let reason = c["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("1 round in the baseline and 1 in the candidate: a timing verdict needs at least 3 rounds (worker processes) a side"),
            "{reason}"
        );
    }
}

/// `report` on a run whose every case failed exits with the code its pages print (2: nothing
/// was measured), one with a failed case beside measured ones 1, and a run without any row is
/// never "complete".
#[test]
fn report_exit_code_is_the_one_its_page_prints() {
    let t = tempfile::tempdir().unwrap();
    let failed = write_run(
        t.path(),
        "failed",
        "2026-01-01T00:00:00Z",
        &[crashed("size=256"), crashed("size=512")],
    );
    let some = write_run(
        t.path(),
        "some",
        "2026-01-01T00:00:00Z",
        &[
            Case::gemm("local", "", 256, samples(1, 1.0, CV, 20)),
            crashed("size=512"),
        ],
    );
    let empty = write_run(t.path(), "empty", "2026-01-01T00:00:00Z", &[]);
    for (run, code, headline, why) in [
        (
            &failed,
            2,
            "Nothing measured: every case failed",
            "run failed: every case failed (2 failed row(s)): nothing was measured",
        ),
        (
            &some,
            1,
            "Run complete, with failed cases",
            "run some: 1 failed row(s)",
        ),
        (
            &empty,
            2,
            "Run incomplete",
            "run empty: results.csv has no rows: nothing was measured",
        ),
    ] {
        let report = run.with_extension("report");
        let out = tagbench()
            .arg("report")
            .arg(run)
            .arg("--out")
            .arg(&report)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        let html = std::fs::read_to_string(report.join("index.html")).unwrap();
        assert!(html.contains(&format!("Exit code <b>{code}</b>")), "{html}");
        assert!(html.contains(&format!("<h2>{headline}</h2>")), "{html}");
        assert!(html.contains(&format!("<li>{why}</li>")), "{html}");
        assert!(!html.contains("Exit code <b>0</b>"), "{html}");
        let md = std::fs::read_to_string(report.join("summary.md")).unwrap();
        assert!(md.contains(&format!("Exit code **{code}**")), "{md}");
    }
}

/// A regression pair of runs: the candidate 20% slower at gemm 256.
fn regression_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let base = write_run(
        dir,
        "base",
        "2026-01-01T00:00:00Z",
        &[Case::gemm("local", "", 256, samples(1, 10.0, 0.01, 100))],
    );
    let cand = write_run(
        dir,
        "cand",
        "2026-01-02T00:00:00Z",
        &[Case::gemm("local", "", 256, samples(2, 12.0, 0.01, 100))],
    );
    (base, cand)
}

/// `compare … | head -1`: the reader goes away, and compare still exits with its own code
/// (1 here), never 101 from a panic on the closed pipe; stdout and stderr alike.
#[test]
fn compare_into_a_closed_pipe_exits_with_its_own_code() {
    let t = tempfile::tempdir().unwrap();
    let (base, cand) = regression_pair(t.path());
    tagbench().arg("compare").arg(&base).arg(&cand).assert().code(1);
    // A pipe whose reading end is closed before compare writes: every write is EPIPE.
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: closes the reading end this test just opened and owns.
    unsafe { libc::close(fds[0]) };
    // SAFETY: `fds[1]` is an open descriptor this test owns; each File takes one handle.
    let (w1, w2) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[1]),
            std::fs::File::from_raw_fd(libc::dup(fds[1])),
        )
    };
    for format in ["table", "json", "markdown"] {
        let status = Command::new(cargo_bin("tagbench"))
            .args(["compare", "--format", format])
            .arg(&base)
            .arg(&cand)
            .stdout(w1.try_clone().unwrap())
            .stderr(w2.try_clone().unwrap())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1), "--format {format}: {status:?}");
    }
    // Through a shell, as a user types it; pipefail reports compare's own status.
    let script = format!(
        "set -o pipefail; '{}' compare '{}' '{}' 2>&1 | head -1",
        cargo_bin("tagbench").display(),
        base.display(),
        cand.display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("gate: exit 1"),
        "{}",
        text(&out.stdout)
    );
    // The other table printers too: history, list.
    for args in [vec!["list"], vec!["history", t.path().to_str().unwrap()]] {
        let status = Command::new(cargo_bin("tagbench"))
            .args(&args)
            .stdout(w1.try_clone().unwrap())
            .stderr(w2.try_clone().unwrap())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {status:?}");
    }
}

/// A run.json that is empty or corrupt is an error naming it, never silently nothing; so is a
/// median no measurement can have, naming results.csv and its line.
#[test]
fn broken_run_files_are_errors_naming_the_file_and_line() {
    let t = tempfile::tempdir().unwrap();
    let (base, cand) = regression_pair(t.path());
    let run_json = cand.join("run.json");
    let good = std::fs::read_to_string(&run_json).unwrap();
    for (content, want) in [("", "the file is empty"), ("{\"run_id\": ", "failed to parse")] {
        std::fs::write(&run_json, content).unwrap();
        let out = tagbench().arg("compare").arg(&base).arg(&cand).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{}", run_json.display())) && stderr.contains(want),
            "{stderr}"
        );
    }
    std::fs::write(&run_json, &good).unwrap();
    let csv = cand.join("results.csv");
    let original = std::fs::read_to_string(&csv).unwrap();
    // The third line is round 1 of the latency (ms): a time cannot be NaN, infinite or negative.
    let mut rdr = csv::Reader::from_reader(original.as_bytes());
    let header = rdr.headers().unwrap().clone();
    let records: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let median_col = header.iter().position(|h| h == "median").unwrap();
    assert_eq!(&records[1][12], "latency");
    for (value, want) in [
        ("NaN", "median is NaN, not a finite number"),
        ("inf", "median is inf, not a finite number"),
        ("-3.5", "median -3.5 is negative, which a time (ms) cannot be"),
    ] {
        let mut w = csv::Writer::from_path(&csv).unwrap();
        w.write_record(&header).unwrap();
        for (i, r) in records.iter().enumerate() {
            let mut cells: Vec<&str> = r.iter().collect();
            if i == 1 {
                cells[median_col] = value;
            }
            w.write_record(&cells).unwrap();
        }
        w.flush().unwrap();
        let out = tagbench().arg("compare").arg(&base).arg(&cand).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let want = format!(
            "failed to read {}: line 3: gemm/size=256,dtype=fp32 latency: {want}",
            csv.display()
        );
        assert!(stderr.contains(&want), "{want}\n{stderr}");
    }
}

/// `run --baseline` must name a target of a run with two or more; a two-target run with no
/// metric to compare (a probe) is judged as a run.
#[test]
fn run_baseline_names_a_target() {
    let t = tempfile::tempdir().unwrap();
    let suite = t.path().join("probe.toml");
    std::fs::write(
        &suite,
        "[[target]]\nname = \"a\"\nlocal = true\n[[target]]\nname = \"b\"\nlocal = true\n[[workload]]\nkind = \"probe\"\n",
    )
    .unwrap();
    let out = run_cmd(&suite, &t.path().join("r"))
        .args(["--baseline", "c"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--baseline c: no such target; the run's targets are a, b"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !t.path().join("r").exists(),
        "a run started with a bad --baseline"
    );
    let out = run_cmd(&suite, &t.path().join("r"))
        .args(["--baseline", "b"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("no metric to compare between the targets: the run is judged on its rows alone"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("verdict: Run complete: exit 0"),
        "{}",
        text(&out.stdout)
    );

    let one = t.path().join("one.toml");
    std::fs::write(&one, "[[workload]]\nkind = \"probe\"\n").unwrap();
    let out = run_cmd(&one, &t.path().join("r1"))
        .args(["--baseline", "local"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("--baseline local: the run has one target (local), nothing to compare it with"),
        "{}",
        text(&out.stderr)
    );
}

/// Every command's help names the exit codes, 130 included, and the gate's flags.
#[test]
fn help_documents_exit_codes_and_gate_flags() {
    for cmd in ["run", "compare", "report", "history"] {
        let out = Command::new(cargo_bin("tagbench"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = text(&out.stdout);
        assert!(
            help.contains("Exit codes: 0 = complete, no regression;")
                && help.contains("130 = interrupted by the user"),
            "{cmd}: {help}"
        );
    }
    for (cmd, flags) in [
        ("compare", &["--allow-missing", "--allow-partial"][..]),
        ("report", &["--allow-missing", "--allow-partial"][..]),
        ("run", &["--baseline", "--allow-missing"][..]),
    ] {
        let out = Command::new(cargo_bin("tagbench"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        for f in flags {
            assert!(text(&out.stdout).contains(f), "{cmd} --help lacks {f}");
        }
    }
}

/// A case that failed in the candidate is never invisible, even where the baseline has no
/// metric of it either (it failed there too, or never ran): a `failed` comparison, exit 1.
#[test]
fn a_case_failed_in_the_candidate_closes_the_gate_whatever_the_baseline_did() {
    let t = tempfile::tempdir().unwrap();
    let ok = |seed| Case::gemm("local", "", 256, samples(seed, 10.0, CV, 50));
    let base = write_run(
        t.path(),
        "base",
        "2026-01-01T00:00:00Z",
        &[ok(1), crashed("size=512")],
    );
    let cand = write_run(
        t.path(),
        "cand",
        "2026-01-02T00:00:00Z",
        &[ok(2), crashed("size=512"), crashed("size=1024")],
    );
    let out = tagbench().arg("compare").arg(&base).arg(&cand).output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("gate: exit 1 (a case failed)"), "{stdout}");
    for (case, before) in [
        ("size=512", "failed in the baseline too"),
        ("size=1024", "not run in the baseline"),
    ] {
        let note =
            format!("failed: gemm/{case} (cand): failed in the candidate: worker ended: signal 9 ({before})");
        assert!(stdout.contains(&note), "{note}\n{stdout}");
    }
    assert!(
        stdout.contains("0 regression(s) and 2 failed case metric(s) in the candidate"),
        "{stdout}"
    );
}
