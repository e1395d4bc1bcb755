//! End-to-end tests on real PyTorch images, as a release engineer would have them: Debian
//! bookworm (debootstrap minbase + python3, from Debian's archive) plus PyTorch from PyPI, built
//! by `scripts/build-torch-images.sh` and cached by a content hash, so that a later run on the
//! same machine reuses them. A second image bakes `OMP_NUM_THREADS=1` in: a real setting an
//! image can ship. The torch engine and the native engine run inside them through the real
//! Docker engine.
//!
//! These tests fail (they do not skip) when the images cannot be built, unless
//! `TAGBENCH_SKIP_DOCKER_TESTS=1` or `TAGBENCH_SKIP_TORCH_TESTS=1` says to skip them.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use assert_cmd::cargo::CommandCargoExt;
use tagbench::results::{read_results, ResultRow, RunDir, Status};

/// The tests count containers of their runs and measure: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static IMAGES: OnceLock<(String, String)> = OnceLock::new();

/// (BASE, SLOW): the two image names the build script prints on its last two lines.
fn build_images() -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-torch-images.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash runs scripts/build-torch-images.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/build-torch-images.sh failed ({}); it needs root, Docker and Debian's archive \
         (set TAGBENCH_SKIP_TORCH_TESTS=1 to skip these tests on purpose):\n{stderr}",
        out.status
    );
    eprint!("{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = stdout.lines().rev().take(2).collect();
    assert_eq!(names.len(), 2, "the script printed two image names: {stdout}");
    (names[1].to_string(), names[0].to_string())
}

fn setup() -> Option<(MutexGuard<'static, ()>, &'static (String, String))> {
    for var in ["TAGBENCH_SKIP_DOCKER_TESTS", "TAGBENCH_SKIP_TORCH_TESTS"] {
        if std::env::var(var).as_deref() == Ok("1") {
            eprintln!("skipped: {var}=1");
            return None;
        }
    }
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Some((guard, IMAGES.get_or_init(build_images)))
}

const SUITE: &str = r#"
name = "images"
[defaults]
warmup_s = 0.1
min_samples = 5
max_samples = 50
max_time_s = 0.3
timeout_s = 120
rounds = 2

[[workload]]
kind = "probe"

[[workload]]
kind = "gemm"
size = 256
dtype = "fp32"
"#;

struct Run {
    dir: tempfile::TempDir,
    run_id: String,
}

impl Run {
    fn new(name: &str) -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("suite.toml"), SUITE).unwrap();
        let nonce: u32 = rand::random();
        Run {
            dir,
            run_id: format!("test-{name}-{nonce:08x}"),
        }
    }

    /// Runs the suite with `args`; returns the exit code and stderr.
    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::cargo_bin("tagbench")
            .unwrap()
            .arg("run")
            .arg(self.dir.path().join("suite.toml"))
            .arg("--results-dir")
            .arg(self.dir.path().join("results"))
            .args(["--run-id", &self.run_id, "--no-progress", "--no-report"])
            .args(args)
            .output()
            .expect("tagbench runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run_dir(&self) -> RunDir {
        RunDir::new(self.dir.path().join("results").join(&self.run_id))
    }

    fn rows(&self) -> Vec<ResultRow> {
        read_results(&self.run_dir()).expect("results.csv reads")
    }

    fn leftovers(&self) -> String {
        let filter = format!("label=tagbench.run={}", self.run_id);
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .expect("docker ps runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn ok_metric<'a>(rows: &'a [ResultRow], target: &str, metric: &str) -> &'a ResultRow {
    rows.iter()
        .find(|r| r.target == target && r.workload == "gemm" && r.metric == metric && r.status == Status::Ok)
        .unwrap_or_else(|| panic!("no ok gemm {metric} row for {target}: {rows:#?}"))
}

#[test]
fn torch_and_native_engines_measure_inside_a_real_pytorch_image() {
    let Some((_guard, (base, _))) = setup() else {
        return;
    };
    for engine in ["torch", "native"] {
        let run = Run::new(engine);
        let (code, stderr) = run.run(&["--engine", engine, "--image", base]);
        assert_eq!(code, 0, "{engine} in {base}: {stderr}");
        let rows = run.rows();
        for metric in ["latency", "throughput"] {
            let r = ok_metric(&rows, base, metric);
            assert!(r.median.is_some_and(|m| m > 0.0), "{r:?}");
            assert_eq!(r.executor, "docker");
            assert_eq!(r.engine, engine);
            assert!(r.image_id.starts_with("sha256:"), "{r:?}");
        }
        let probe = rows.iter().find(|r| r.workload == "probe").expect("a probe row");
        assert_eq!(probe.status, Status::Ok, "{probe:?}");
        let meta = run.run_dir().read_meta().expect("run.json reads");
        let env = &meta.targets[0].env;
        assert_eq!(
            env.get("os").map(String::as_str),
            Some("Debian GNU/Linux 12 (bookworm)"),
            "{env:?}"
        );
        if engine == "torch" {
            // The version the image carries, as the image's own python reports it.
            assert!(probe.reason.starts_with("torch 2."), "{probe:?}");
            assert!(
                env.get("torch_version").is_some_and(|v| v.starts_with("2.")),
                "{env:?}"
            );
            assert_eq!(
                env.get("python_version").map(|v| &v[..4]),
                Some("3.11"),
                "{env:?}"
            );
        }
        assert_eq!(run.leftovers(), "", "containers left behind");
    }
}

#[test]
fn two_real_images_run_interleaved_and_compare_along_image() {
    let Some((_guard, (base, slow))) = setup() else {
        return;
    };
    let run = Run::new("ab");
    // Two images: the run ends with their comparison and exits with its code (checked against
    // `compare` below; 0 or 1, as the verdict depends on the machine's load).
    let (run_code, stderr) = run.run(&["--engine", "torch", "--image", base, "--image", slow]);
    assert!(matches!(run_code, 0 | 1), "{stderr}");
    let rows = run.rows();
    for image in [base, slow] {
        let r = ok_metric(&rows, image, "latency");
        assert_eq!(r.image, *image);
    }
    // Round 0 runs BASE then SLOW, round 1 SLOW then BASE: both sides have both rounds.
    for image in [base, slow] {
        let mut rounds: Vec<usize> = rows
            .iter()
            .filter(|r| r.target == *image && r.metric == "latency")
            .filter_map(|r| r.round)
            .collect();
        rounds.sort();
        assert_eq!(rounds, [0, 1], "{image}");
    }
    // What the image bakes in reaches the measurement: the probe sees one thread in SLOW.
    let meta = run.run_dir().read_meta().unwrap();
    let threads = |image: &str| {
        let t = meta
            .targets
            .iter()
            .find(|t| t.name == image)
            .expect("target in run.json");
        t.env.get("torch_threads").cloned().unwrap_or_default()
    };
    assert_eq!(threads(slow), "1");
    let cores: usize = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        assert_ne!(threads(base), "1", "BASE leaves torch its default thread count");
    }

    let out = Command::cargo_bin("tagbench")
        .unwrap()
        .arg("compare")
        .arg(run.run_dir().root)
        .args(["--along", "image", "--baseline", base, "--format", "json"])
        .output()
        .expect("tagbench compare runs");
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "compare exits 0 or 1 on a complete A/B, not {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run_code, code, "run and compare judge the same A/B alike");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("compare --format json");
    let text = json.to_string();
    assert!(text.contains("latency") && text.contains(slow.as_str()), "{text}");
    assert!(
        !text.contains("\"missing\"") && !text.contains("\"failed\""),
        "{text}"
    );
    // The report of the real A/B: structure only (the verdict depends on the machine's load).
    let rep = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("tagbench")
        .unwrap()
        .arg("report")
        .arg(run.run_dir().root)
        .args(["--along", "image", "--baseline", base, "--out"])
        .arg(rep.path())
        .output()
        .expect("tagbench report runs");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(rep.path().join("index.html")).unwrap();
    let verdict = html.find("<section id=\"verdict\"").expect("verdict section");
    assert!(verdict < html.find("<table").unwrap(), "verdict before any table");
    let changes = &html[html.find("<section id=\"changes\"").expect("changes section")..];
    let changes = &changes[..changes.find("</section>").unwrap()];
    assert!(
        changes.contains("<td>torch_threads</td>") && changes.contains("<td>image_id</td>"),
        "{changes}"
    );
    assert!(!changes.contains("hostname"), "{changes}");
    assert_eq!(run.leftovers(), "", "containers left behind");
}
