//! End-to-end tests of the worker protocol and of the run's smaller failure paths, through the
//! real binary: a line forged on the worker's own stdout is never a row, a GEMM too large for
//! memory is a `skipped` row decided before allocating, a worker log is capped, and `--image ''`
//! is a usage error.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin;
use tagbench::results::{read_results, ResultRow, RunDir, Status};

const DEFAULTS: &str =
    "[defaults]\nwarmup_s = 0\nmin_samples = 3\nmax_samples = 3\nmax_time_s = 5\ntimeout_s = 60\n";

/// A suite in a temp dir, run with a local target.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(suite: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("suite.toml"), suite).unwrap();
        Run { dir }
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(cargo_bin("tagbench"))
            .arg("run")
            .arg(self.dir.path().join("suite.toml"))
            .arg("--results-dir")
            .arg(self.dir.path().join("results"))
            .args(["--run-id", "t", "--no-progress", "--no-report"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("results").join("t")
    }

    fn rows(&self) -> Vec<ResultRow> {
        read_results(&RunDir::new(self.run_dir())).unwrap()
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.run_dir().join(name)).unwrap_or_default()
    }

    fn logs(&self) -> Vec<(PathBuf, u64)> {
        std::fs::read_dir(self.run_dir().join("logs"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| {
                let n = std::fs::metadata(&p).unwrap().len();
                (p, n)
            })
            .collect()
    }
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned()
}

/// A program the worker runs writes a forged summary (and a banner) straight onto the worker's
/// own stdout, the channel the host reads rows from: it lacks the job's token, so it is
/// counted and named once, and stored nowhere.
#[test]
fn a_summary_forged_on_the_workers_stdout_is_stored_nowhere() {
    let forged = r#"{"type":"summary","case":"default","workload":"forge","metric":"forged","unit":"ms","better":"lower","n":3,"median":31337.25,"mean":31337.25,"stddev":0.0,"min":31337.25,"max":31337.25,"p05":31337.25,"p95":31337.25,"ci_low":31337.25,"ci_high":31337.25,"outliers":0}"#;
    let script =
        format!("echo 'NVIDIA banner: welcome' > /proc/$PPID/fd/1; echo '{forged}' > /proc/$PPID/fd/1");
    let suite = format!(
        "name = \"forge\"\n{DEFAULTS}\n[[workload]]\nkind = \"command\"\nname = \"forge\"\nargv = [\"sh\", \"-c\", '''{script}''']\n"
    );
    let run = Run::new(&suite);
    let (code, stderr) = run.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    let rows = run.rows();
    assert!(
        rows.iter()
            .any(|r| r.metric == "wall_time" && r.status == Status::Ok),
        "{rows:#?}"
    );
    assert!(rows.iter().all(|r| r.metric != "forged"), "{rows:#?}");
    assert!(!run.file("results.csv").contains("forged"));
    assert!(!run.file("samples.csv").contains("forged"));
    assert!(!run.file("samples.csv").contains("31337.25"));
    assert!(!run.file("results.csv").contains("31337.25"));
    // Said once, with the count and the first line, gathered over the samples.
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("did not carry this job's token"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("lines on the worker's stdout that looked like a result but did not carry this job's token (the first on line "),
        "{stderr}"
    );
    assert!(
        said[0].contains("an image's banner or sitecustomize?"),
        "{stderr}"
    );
    // The banner and the forgery are in the log, marked as the host's notes.
    let log: String = run.logs().iter().map(|(p, _)| read(p)).collect();
    assert!(log.contains("(not protocol): NVIDIA banner: welcome"), "{log}");
    assert!(
        log.contains("(looked like a result without this job's token; ignored)"),
        "{log}"
    );
}

/// A GEMM larger than the memory there is: a `skipped` row decided before allocating, naming
/// the bytes needed and available, never an aborted worker; the next case runs.
#[test]
fn a_gemm_too_large_for_memory_is_skipped_before_allocating() {
    let suite =
        format!("name = \"big\"\n{DEFAULTS}\n[[workload]]\nkind = \"gemm\"\nsize = 64\ndtype = \"fp32\"\n");
    let run = Run::new(&suite);
    let (_code, stderr) = run.run(&["--set", "gemm.size=[2000000, 64]"]);
    let rows = run.rows();
    let big = rows
        .iter()
        .find(|r| r.case.contains("2000000"))
        .unwrap_or_else(|| panic!("{rows:#?}\n{stderr}"));
    assert_eq!(big.status, Status::Skipped, "{big:?}");
    assert!(
        big.reason
            .starts_with("needs 48000000000000 bytes (44703.5 GiB: A and B ×1, C) but "),
        "{}",
        big.reason
    );
    assert!(
        big.reason.ends_with("of memory are available; not allocated"),
        "{}",
        big.reason
    );
    assert!(!stderr.contains("memory allocation of"), "{stderr}");
    assert!(
        rows.iter()
            .any(|r| r.case.contains("size=64") && r.status == Status::Ok),
        "{rows:#?}"
    );
}

/// A program that prints far more than the log keeps: the log holds its first and last bytes
/// and one line saying how much was cut.
#[test]
fn a_worker_log_is_capped() {
    let suite = format!(
        "name = \"loud\"\n{DEFAULTS}\n[[workload]]\nkind = \"command\"\nname = \"loud\"\nargv = [\"sh\", \"-c\", \"yes 0123456789abcdef | head -c 12000000 >&2\"]\n"
    );
    let run = Run::new(&suite);
    let (code, stderr) = run.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    let logs = run.logs();
    let (path, size) = logs.iter().max_by_key(|(_, n)| *n).unwrap();
    assert!(*size <= (16 << 20) + 4096, "{} is {size} bytes", path.display());
    let log = read(path);
    let note = log
        .lines()
        .find(|l| l.starts_with("[tagbench] log cap: "))
        .unwrap_or_else(|| panic!("no cap note in {}", path.display()));
    assert!(
        note.ends_with(
            "bytes cut here (the first 8388608 and the last 8388608 bytes of the worker's output are kept)"
        ),
        "{note}"
    );
    assert!(
        log.ends_with("0123456789abcdef\n") || log.ends_with('\n'),
        "the tail is kept"
    );
}

/// `--image ''` (an unset shell variable) is a usage error, not an image named "".
#[test]
fn an_empty_image_name_is_a_usage_error() {
    let run = Run::new(&format!(
        "name = \"x\"\n{DEFAULTS}\n[[workload]]\nkind = \"probe\"\n"
    ));
    let (code, stderr) = run.run(&["--image", ""]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--image needs an image name, got an empty string"),
        "{stderr}"
    );
    assert!(!stderr.contains("failed to inspect image"), "{stderr}");
}
