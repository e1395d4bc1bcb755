//! End-to-end tests that a run directory has one writer and tells the truth, through the real
//! binary and real local runs of the smoke suite with tiny settings: the lock on a live run
//! (a second `run` or `--resume` is refused naming its pid), `--run-id` as a name, samples of a
//! case cut short before its row, and SIGINT/SIGTERM (the worker killed, run.json
//! `interrupted`, where the partial run is, exit 130, then `--resume` finishes it). The Docker
//! side (`clean` keeping a live run's containers, `--resume` refusing a changed image) is in
//! tests/docker.rs, beside the images it builds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use tagbench::results::{read_results, read_samples, RunDir, Status};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `tagbench run` of the embedded smoke suite: the probe (a row at once), then one 1024³ fp32
/// GEMM of `samples` samples (seconds), one round, into `results`.
fn smoke_run(results: &Path, samples: usize) -> Command {
    let mut c = Command::new(cargo_bin("tagbench"));
    c.args(["run", "--no-progress", "--no-report", "--set", "rounds=1"])
        .args(["--set", "warmup_s=0", "--set", "max_time_s=600"])
        .args(["--set", &format!("min_samples={samples}")])
        .args(["--set", &format!("max_samples={samples}")])
        .args(["--filter", "probe", "--filter", "gemm/size=1024,dtype=fp32"])
        .arg("--results-dir")
        .arg(results);
    c
}

/// Waits until the run has at least one row (the probe's): its worker is then inside the GEMM.
fn wait_for_first_row(run: &RunDir, child: &mut Child) {
    let start = Instant::now();
    while read_results(run).map(|r| r.len()).unwrap_or(0) < 1 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before its first row");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `tagbench worker` children of `parent`, from /proc.
fn workers_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && is_worker(pid) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` is (still) a `tagbench worker` process; a zombie has no argv.
fn is_worker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.windows(12).any(|w| w == b"worker\0--job"))
        .unwrap_or(false)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn state_of(run: &RunDir) -> String {
    run.read_meta().unwrap().state
}

fn resume(results: &Path, run_id: &str) -> Output {
    Command::new(cargo_bin("tagbench"))
        .args(["run", "--no-progress", "--no-report", "--results-dir"])
        .arg(results)
        .arg("--resume")
        .arg(run_id)
        .output()
        .unwrap()
}

/// SIGTERM or SIGINT to a local run inside a case: the worker is killed with it, run.json says
/// `interrupted`, stderr says where the partial run is and how to finish it, the exit code is
/// 130; `--resume` then measures the interrupted case and completes the run.
fn interrupt_then_resume(sig: i32, name: &str) {
    let t = tempfile::tempdir().unwrap();
    let results = t.path().join("results");
    let mut child = smoke_run(&results, 150)
        .args(["--run-id", name])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = RunDir::new(results.join(name));
    wait_for_first_row(&run, &mut child);
    let workers = workers_of(child.id());
    assert_eq!(workers.len(), 1, "one local worker: {workers:?}");
    signal(&child, sig);
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let dir = run.root.display();
    assert!(
        stderr.contains(&format!(
            "interrupted: partial run in {dir}; finish it with `tagbench run --resume {dir}`"
        )),
        "{stderr}"
    );
    let by = if sig == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
    assert!(stderr.contains(&format!("interrupted by {by}")), "{stderr}");
    let meta = run.read_meta().unwrap();
    assert_eq!(meta.state, "interrupted");
    assert!(meta.finished_at.is_some());
    // The worker died with the run (not when its case would have ended).
    let start = Instant::now();
    while is_worker(workers[0]) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "worker {} survived the interrupt",
            workers[0]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The interrupted case has no row (it is measured by --resume, not failed).
    let rows = read_results(&run).unwrap();
    assert!(rows.iter().all(|r| r.workload == "probe"), "{rows:#?}");

    let out = resume(&results, name);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(state_of(&run), "complete");
    let rows = read_results(&run).unwrap();
    assert!(
        rows.iter()
            .any(|r| r.workload == "gemm" && r.metric == "latency" && r.status == Status::Ok),
        "{rows:#?}"
    );
    assert!(rows.iter().all(|r| r.status != Status::Failed), "{rows:#?}");
}

#[test]
fn sigterm_kills_the_local_worker_records_interrupted_and_resume_completes() {
    interrupt_then_resume(libc::SIGTERM, "term");
}

#[test]
fn sigint_kills_the_local_worker_records_interrupted_and_resume_completes() {
    interrupt_then_resume(libc::SIGINT, "int");
}

/// While a run is written, a second `run` with its id and a `--resume` of it are refused (exit
/// 2) naming the writer's pid; once it is gone (SIGKILL: the kernel drops the lock), the same
/// id is refused as an existing directory that `--resume` finishes.
#[test]
fn a_live_run_has_one_writer() {
    let t = tempfile::tempdir().unwrap();
    let results = t.path().join("results");
    let mut child = smoke_run(&results, 1_000_000)
        .args(["--run-id", "live"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = RunDir::new(results.join("live"));
    wait_for_first_row(&run, &mut child);
    let busy = format!(
        "error: run live is being written by tagbench pid {} (started ",
        child.id()
    );
    let again = smoke_run(&results, 5)
        .args(["--run-id", "live"])
        .output()
        .unwrap();
    let stderr = text(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&busy), "{stderr}");
    assert!(stderr.contains("); wait for it or stop it"), "{stderr}");
    let out = resume(&results, "live");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&busy), "{stderr}");
    // Neither touched the run: still one worker's rows, still running.
    assert_eq!(state_of(&run), "running");
    assert!(matches!(
        run.liveness().unwrap(),
        tagbench::results::Liveness::Live(h) if h.pid == Some(child.id())
    ));

    let workers = workers_of(child.id());
    assert_eq!(workers.len(), 1, "one worker of the live run");
    child.kill().unwrap(); // SIGKILL: no clean-up runs in the host
    child.wait().unwrap();
    assert_eq!(run.liveness().unwrap(), tagbench::results::Liveness::NotLive);
    // The worker goes with its host (PR_SET_PDEATHSIG), never left measuring on its own.
    let t0 = std::time::Instant::now();
    while workers.iter().any(|&w| is_worker(w)) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "worker {workers:?} outlived its killed host"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = smoke_run(&results, 5)
        .args(["--run-id", "live"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "run directory {} exists already (use --resume to finish it)",
            run.root.display()
        )),
        "{stderr}"
    );
}

/// Two runs without `--run-id` started in the same second get two directories.
#[test]
fn generated_run_ids_never_collide() {
    let t = tempfile::tempdir().unwrap();
    let results = t.path().join("results");
    let spawn = || {
        smoke_run(&results, 5)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let dirs: Vec<PathBuf> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    for d in dirs {
        assert_eq!(state_of(&RunDir::new(&d)), "complete", "{}", d.display());
    }
}

/// `--run-id` is a directory name: a path or nothing is refused (exit 2) naming the flag, and
/// nothing is written outside --results-dir.
#[test]
fn run_id_is_a_name_not_a_path() {
    let t = tempfile::tempdir().unwrap();
    let results = t.path().join("nested").join("results");
    let abs = t.path().join("elsewhere");
    let abs = abs.to_str().unwrap();
    let cases = [
        (
            "../x",
            "`../x` is a path: a run id names a directory under --results-dir",
        ),
        (
            "a/b",
            "`a/b` is a path: a run id names a directory under --results-dir",
        ),
        (abs, "is a path: a run id names a directory under --results-dir"),
        (
            "..",
            "`..` is not a run id: a run id names a directory under --results-dir",
        ),
        ("", "a run id cannot be empty"),
    ];
    for (id, why) in cases {
        let out = smoke_run(&results, 5).args(["--run-id", id]).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{id:?}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{id}' for '--run-id <ID>'")),
            "{id:?}: {stderr}"
        );
        assert!(stderr.contains(why), "{id:?}: {stderr}");
    }
    assert!(!t.path().join("nested").exists(), "something was written");
    assert!(!Path::new(abs).exists());
    let out = Command::new(cargo_bin("tagbench"))
        .args(["clean", "--run", "../x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid value '../x' for '--run <ID>'"));
}

/// A case whose samples were written but not its row (a kill or a full disk between the two):
/// `--resume` drops those samples, says how many, and measures the case again, so that its
/// samples are the new measurement's only.
#[test]
fn resume_drops_the_samples_of_a_case_without_its_row() {
    let t = tempfile::tempdir().unwrap();
    let results = t.path().join("results");
    let out = Command::new(cargo_bin("tagbench"))
        .args(["run", "--no-progress", "--no-report", "--set", "rounds=1"])
        .args(["--set", "max_time_s=0.05", "--set", "warmup_s=0"])
        .args([
            "--filter",
            "gemm/size=256,dtype=fp32",
            "--filter",
            "gemm/size=1024,dtype=fp32",
        ])
        .args(["--run-id", "orphans", "--results-dir"])
        .arg(&results)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = RunDir::new(results.join("orphans"));
    let cut = "size=1024,dtype=fp32";
    let orphans = read_samples(&run)
        .unwrap()
        .iter()
        .filter(|s| s.case == cut)
        .count();
    assert!(orphans > 0);
    // Its rows gone, its samples kept: as a kill between the two leaves it.
    let csv = std::fs::read_to_string(run.results_csv()).unwrap();
    let kept: String = csv
        .lines()
        .filter(|l| !l.contains(cut))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(run.results_csv(), kept).unwrap();
    let mut meta = run.read_meta().unwrap();
    meta.state = "running".into();
    run.write_meta(&meta).unwrap();

    let out = resume(&results, "orphans");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "resume: dropped {orphans} sample(s) of cases cut short before their row was written (samples.csv); those cases are measured again"
        )),
        "{stderr}"
    );
    let rows = read_results(&run).unwrap();
    let samples = read_samples(&run).unwrap();
    for r in rows.iter().filter(|r| r.case == cut && !r.metric.is_empty()) {
        let mine: Vec<usize> = samples
            .iter()
            .filter(|s| s.case == cut && s.metric == r.metric)
            .map(|s| s.sample)
            .collect();
        assert_eq!(Some(mine.len()), r.n, "{}: {mine:?}", r.metric);
        let unique: std::collections::BTreeSet<_> = mine.iter().collect();
        assert_eq!(unique.len(), mine.len(), "duplicate sample indices: {mine:?}");
    }
    assert!(rows.iter().any(|r| r.case == cut), "measured again");
}
