//! End-to-end tests of the `command` workload through the real binary on the local executor:
//! metrics from the program's JSON lines and from regexes reach results.csv and `compare`; a
//! failing, hung or silent program gives a `failed` row that says why; ranks; suite errors.
//! (tests/images.rs runs the example training script in containers.)

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use tagbench::results::{read_results, ResultRow, RunDir, Status};

/// A suite in a fresh directory (with `bench/` beside it) and where its results go.
struct Suite {
    dir: tempfile::TempDir,
}

impl Suite {
    fn new(text: &str) -> Suite {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bench")).unwrap();
        std::fs::write(dir.path().join("suite.toml"), text).unwrap();
        Suite { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("suite.toml")
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.dir.path().join(rel), text).unwrap();
    }

    /// `tagbench run` from another directory (the suite's paths must not depend on the cwd).
    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(cargo_bin("tagbench"))
            .current_dir(std::env::temp_dir())
            .args(["run", "--no-progress", "--no-report"])
            .arg(self.path())
            .arg("--results-dir")
            .arg(self.dir.path().join("results"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn runs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("results"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        dirs
    }

    fn rows(&self) -> Vec<ResultRow> {
        let runs = self.runs();
        assert_eq!(runs.len(), 1, "{runs:?}");
        read_results(&RunDir::new(&runs[0])).unwrap()
    }
}

fn row<'a>(rows: &'a [ResultRow], workload: &str, metric: &str) -> &'a ResultRow {
    rows.iter()
        .find(|r| r.workload == workload && r.metric == metric)
        .unwrap_or_else(|| panic!("no {workload}/{metric} row in {rows:#?}"))
}

fn failed<'a>(rows: &'a [ResultRow], workload: &str) -> &'a ResultRow {
    let r = rows
        .iter()
        .find(|r| r.workload == workload)
        .unwrap_or_else(|| panic!("no {workload} row in {rows:#?}"));
    assert_eq!(r.status, Status::Failed, "{r:?}");
    r
}

const DEFAULTS: &str = r#"
[defaults]
warmup_s = 0
min_samples = 3
max_samples = 3
rounds = 1
"#;

#[test]
fn json_lines_and_regex_metrics_become_rows() {
    let s = Suite::new(&format!(
        r#"{DEFAULTS}
[[workload]]
kind = "command"
name = "steps"
argv = ["/bin/sh", "bench/steps.sh", "{{level}}"]
files = ["bench/"]
level = [10, 20]

[[workload.metric]]
name = "busbw"
regex = 'busbw: ([0-9.]+) GB/s'
unit = "GB/s"
better = "higher"
"#
    ));
    // Two step_time samples per run, and a human line the regex reads.
    s.write(
        "bench/steps.sh",
        r#"for v in "$1" "$(($1 + 1))"; do
  echo "{\"metric\": \"step_time\", \"value\": $v, \"unit\": \"ms\", \"better\": \"lower\"}" >> "$TAGBENCH_METRICS"
done
echo "busbw: 7.5 GB/s"
"#,
    );
    let (code, stderr) = s.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    let rows = s.rows();
    for (level, case) in [(10.0, "level=10"), (20.0, "level=20")] {
        let of = |m: &str| {
            rows.iter()
                .find(|r| r.case == case && r.metric == m)
                .unwrap_or_else(|| panic!("no {case}/{m} in {rows:#?}"))
        };
        let step = of("step_time");
        assert_eq!((step.status, step.n), (Status::Ok, Some(6)), "{step:?}");
        assert_eq!((step.min, step.max), (Some(level), Some(level + 1.0)));
        assert_eq!((step.unit.as_str(), step.better.as_str()), ("ms", "lower"));
        let bw = of("busbw");
        assert_eq!(
            (bw.median, bw.unit.as_str(), bw.better.as_str()),
            (Some(7.5), "GB/s", "higher")
        );
        let wall = of("wall_time");
        assert_eq!((wall.n, wall.unit.as_str()), (Some(3), "ms"));
        assert!(wall.median.is_some_and(|m| m > 0.0 && m < 10_000.0), "{wall:?}");
    }
}

#[test]
fn failing_hung_and_silent_programs_give_failed_rows() {
    let s = Suite::new(&format!(
        r#"{DEFAULTS}
[[workload]]
kind = "command"
name = "exits3"
argv = ["/bin/sh", "-c", "echo starting; echo 'warming up' >&2; echo 'CUDA error: out of memory' >&2; exit 3"]

[[workload]]
kind = "command"
name = "hangs"
argv = ["/bin/sh", "-c", "sleep 300"]
timeout_s = 2

[[workload]]
kind = "command"
name = "silent"
argv = ["echo", "no numbers here"]
[[workload.metric]]
name = "busbw"
regex = 'busbw: ([0-9.]+)'

[[workload]]
kind = "command"
name = "fine"
argv = ["true"]
"#
    ));
    let t0 = Instant::now();
    let (code, stderr) = s.run(&[]);
    assert_ne!(code, 0, "{stderr}");
    // The hung program was killed at its 2 s limit, not after 300 s.
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    let rows = s.rows();
    let r = failed(&rows, "exits3");
    assert!(r.reason.contains("exited with status 3"), "{}", r.reason);
    assert!(r.reason.ends_with("CUDA error: out of memory"), "{}", r.reason);
    let r = failed(&rows, "hangs");
    assert!(
        r.reason
            .contains("did not finish within 2 s (timeout_s) and was killed"),
        "{}",
        r.reason
    );
    let r = failed(&rows, "silent");
    assert!(
        r.reason
            .contains("metric `busbw`: regex `busbw: ([0-9.]+)` matched nothing"),
        "{}",
        r.reason
    );
    assert_eq!(row(&rows, "fine", "wall_time").status, Status::Ok);
    // The program's stdout went to the case log, not into the protocol.
    assert!(!stderr.contains("protocol error"), "{stderr}");
    let logs = std::fs::read_dir(s.runs()[0].join("logs")).unwrap();
    let text: String = logs
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(text.contains("starting"), "{text}");
}

#[test]
fn two_ranks_report_rank_0_and_a_failing_rank_names_itself() {
    let s = Suite::new(&format!(
        r#"{DEFAULTS}
[[workload]]
kind = "command"
name = "pair"
argv = ["/bin/sh", "bench/rank.sh"]
files = ["bench/rank.sh"]
ranks = 2

[[workload]]
kind = "command"
name = "broken"
argv = ["/bin/sh", "-c", 'if [ "$RANK" = 1 ]; then echo "rank 1 lost its GPU" >&2; exit 5; fi; sleep 120']
ranks = 2
"#
    ));
    s.write(
        "bench/rank.sh",
        r#"test "$WORLD_SIZE" = 2 && test "$LOCAL_RANK" = "$RANK" && test -n "$MASTER_ADDR" && test -n "$MASTER_PORT" || exit 9
echo "{\"metric\": \"who\", \"value\": $RANK}" >> "$TAGBENCH_METRICS"
"#,
    );
    let (code, stderr) = s.run(&[]);
    assert_ne!(code, 0, "{stderr}");
    let rows = s.rows();
    let who = row(&rows, "pair", "who");
    assert_eq!(
        (who.status, who.n, who.max),
        (Status::Ok, Some(3), Some(0.0)),
        "{who:?}"
    );
    let r = failed(&rows, "broken");
    assert!(
        r.reason.contains("rank 1 of 2: /bin/sh exited with status 5"),
        "{}",
        r.reason
    );
    assert!(r.reason.ends_with("rank 1 lost its GPU"), "{}", r.reason);
}

/// Paired batches (two local targets) with a worker that dies in a case: the case fails on
/// that target with the cause, the other target measures it alone, and the next case gets a new
/// worker and is paired again.
#[test]
fn a_worker_that_dies_in_a_paired_case_fails_only_its_side() {
    let s = Suite::new(
        r#"
[defaults]
warmup_s = 0
min_samples = 3
max_samples = 6
rounds = 3

[[target]]
name = "a"
local = true

[[target]]
name = "b"
local = true
env = { DIE = "1" }

[[workload]]
kind = "command"
name = "die"
argv = ["/bin/sh", "-c", 'if [ -n "$DIE" ]; then kill -9 $PPID; sleep 5; fi; echo "{\"metric\":\"t\",\"value\":1,\"unit\":\"ms\"}" >> "$TAGBENCH_METRICS"']

[[workload]]
kind = "command"
name = "after"
argv = ["/bin/sh", "-c", 'echo "{\"metric\":\"t\",\"value\":2,\"unit\":\"ms\"}" >> "$TAGBENCH_METRICS"']
"#,
    );
    let (code, stderr) = s.run(&[]);
    assert_eq!(code, 1, "a failed case closes the gate\n{stderr}");
    let rows = s.rows();
    let of = |t: &str, w: &str| -> Vec<&ResultRow> {
        rows.iter().filter(|r| r.target == t && r.workload == w).collect()
    };
    let died = of("b", "die");
    assert_eq!(died.len(), 1, "not run again after it failed: {died:#?}");
    assert_eq!(died[0].status, Status::Failed);
    assert!(
        died[0]
            .reason
            .contains("worker ended during the case: killed by signal 9"),
        "{}",
        died[0].reason
    );
    assert!(
        of("a", "die")
            .iter()
            .filter(|r| r.status == Status::Ok && r.metric == "t")
            .count()
            == 3,
        "the other side measured it in every round: {:#?}",
        of("a", "die")
    );
    for t in ["a", "b"] {
        let after: Vec<_> = of(t, "after").into_iter().filter(|r| r.metric == "t").collect();
        assert_eq!(after.len(), 3, "{t}: a row per round: {after:#?}");
        assert!(after.iter().all(|r| r.status == Status::Ok));
    }
    let run = RunDir::new(&s.runs()[0]);
    let samples = tagbench::results::read_samples(&run).unwrap();
    assert!(
        samples
            .iter()
            .filter(|x| x.workload == "after")
            .all(|x| x.batch.is_some()),
        "the case after the death was paired again"
    );
    assert_eq!(
        run.read_meta()
            .unwrap()
            .pairing
            .get("after/default")
            .map(String::as_str),
        Some("batches")
    );
}

#[test]
fn command_rows_compare_like_built_in_metrics() {
    let s = Suite::new(
        r#"
[defaults]
warmup_s = 0
min_samples = 5
max_samples = 5
rounds = 3

[[workload]]
kind = "command"
name = "train"
argv = ["/bin/sh", "-c", 'for i in 1 2 3 4 5; do echo "{\"metric\":\"step_time\",\"value\":$STEP,\"unit\":\"ms\"}" >> "$TAGBENCH_METRICS"; done']
env = { STEP = "10" }
"#,
    );
    assert_eq!(s.run(&["--run-id", "a"]).0, 0);
    let (code, stderr) = s.run(&["--run-id", "b", "--set", "train.env={ STEP = \"13\" }"]);
    assert_eq!(code, 0, "{stderr}");
    let runs = s.runs();
    assert_eq!(runs.len(), 2);
    let out = Command::new(cargo_bin("tagbench"))
        .arg("compare")
        .args(&runs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("step_time") && text.contains("regression"),
        "{text}"
    );
}

#[test]
fn suite_errors_name_file_line_and_key() {
    let cases = [
        ("argv = []", "`argv` must name a program"),
        ("argv = [\"x\"]\nbatchh = 3", "unknown key `batchh`"),
        (
            "argv = [\"x\"]\nfiles = [\"missing/\"]",
            "key `files`: `missing/` does not exist",
        ),
        (
            "argv = [\"x\"]\n[[workload.metric]]\nname = \"b\"\nregex = \"(\"",
            "metric `b`: bad regex",
        ),
    ];
    for (body, want) in cases {
        let s = Suite::new(&format!("[[workload]]\nkind = \"command\"\n{body}\n"));
        let (code, stderr) = s.run(&[]);
        assert_eq!(code, 2, "{stderr}");
        let file = s.path().display().to_string();
        assert!(
            stderr.contains(&format!("failed to read suite {file}: line ")),
            "{stderr}"
        );
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
}

/// `args` as a list of lists is a sweep axis; a flat list is one value.
#[test]
fn args_sweep_and_case_ids() {
    let s = Suite::new(
        r#"
[[workload]]
kind = "command"
argv = ["echo"]
args = [["--batch", "8"], ["--batch", "32"]]

[[workload]]
kind = "command"
name = "flat"
argv = ["echo", "{n}"]
args = ["--batch", "8"]
n = [1, 2]
"#,
    );
    let out = Command::new(cargo_bin("tagbench"))
        .arg("list")
        .arg(s.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for id in [
        "args=[--batch;8]",
        "args=[--batch;32]",
        "args=[--batch;8],n=1",
        "args=[--batch;8],n=2",
    ] {
        assert!(text.contains(id), "{id}: {text}");
    }
    assert!(!text.contains("argv="), "argv stays out of the ids: {text}");
}
