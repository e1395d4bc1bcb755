//! End-to-end tests on real PyTorch images, as a release engineer would have them: Debian
//! bookworm (debootstrap minbase + python3, from Debian's archive) plus PyTorch from PyPI, built
//! by `scripts/build-torch-images.sh` and cached by a content hash, so that a later run on the
//! same machine reuses them. A second image bakes `OMP_NUM_THREADS=1` in: a real setting an
//! image can ship. The torch engine and the native engine run inside them through the real
//! Docker engine.
//!
//! These tests fail (they do not skip) when the images cannot be built, unless
//! `TAGBENCH_SKIP_DOCKER_TESTS=1` or `TAGBENCH_SKIP_TORCH_TESTS=1` says to skip them.

mod common;

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
    built_pair("scripts/build-torch-images.sh", &[])
}

/// The two image names a build script prints on its last two lines, in order.
fn built_pair(script: &str, args: &[&str]) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("bash runs {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}); it needs root, Docker, Debian's archive and PyPI \
         (set TAGBENCH_SKIP_TORCH_TESTS=1 to skip these tests on purpose):\n{stderr}",
        script.display(),
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
        Run::with_suite(name, SUITE)
    }

    fn with_suite(name: &str, suite: &str) -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("suite.toml"), suite).unwrap();
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

    /// `tagbench compare RUN --along image --baseline BASE --format json`.
    fn compare_along_image(&self, base: &str) -> std::process::Output {
        Command::cargo_bin("tagbench")
            .unwrap()
            .arg("compare")
            .arg(self.run_dir().root)
            .args(["--along", "image", "--baseline", base, "--format", "json"])
            .output()
            .expect("tagbench compare runs")
    }

    /// `tagbench bisect RUN --baseline A --candidate B ARGS...`, not yet started.
    fn bisect(&self, baseline: &str, candidate: &str, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("tagbench").unwrap();
        cmd.arg("bisect")
            .arg(self.run_dir().root)
            .args(["--baseline", baseline, "--candidate", candidate])
            .args(args);
        cmd
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

/// The BASE image has the test venv's transformers and no C++ compiler (debootstrap minbase):
/// `impl = "hf"` generates the loop's tokens inside it, the probe records transformers'
/// version, and a compiled case is skipped saying what Inductor lacks.
#[test]
fn hf_generate_runs_and_compile_without_a_compiler_skips_in_the_image() {
    let Some((_guard, (base, _))) = setup() else {
        return;
    };
    let run = Run::with_suite(
        "hf",
        r#"
name = "hf-in-image"
[defaults]
warmup_s = 0.0
min_samples = 3
max_samples = 5
max_time_s = 0.2
timeout_s = 300
rounds = 1

[[workload]]
kind = "probe"

[[workload]]
kind = "generate"
model = "tiny"
layers = 1
prompt_len = 8
new_tokens = 4
impl = ["loop", "hf"]

[[workload]]
kind = "precision"
model = "mlp"
batch = 8
hidden = 32
mode = "fp32"
compile = "default"
"#,
    );
    let (code, stderr) = run.run(&["--engine", "torch", "--image", base]);
    assert_eq!(code, 0, "{stderr}");
    let rows = run.rows();
    let tokens: std::collections::BTreeMap<&str, &str> = rows
        .iter()
        .filter(|r| r.workload == "generate" && r.reason.starts_with("tokens "))
        .map(|r| (r.case.as_str(), r.reason.split_whitespace().nth(1).unwrap_or("")))
        .collect();
    assert_eq!(tokens.len(), 2, "{rows:#?}");
    let hashes: Vec<&str> = tokens.values().copied().collect();
    assert_eq!(hashes[0], hashes[1], "loop and transformers tokens: {tokens:?}");
    assert!(
        rows.iter().any(|r| r.reason.contains("impl hf (transformers ")),
        "{rows:#?}"
    );
    let compiled = rows
        .iter()
        .find(|r| r.workload == "precision")
        .expect("a precision row");
    assert_eq!(compiled.status, Status::Skipped, "{compiled:?}");
    assert!(
        compiled
            .reason
            .starts_with("torch.compile on the CPU needs a C++ compiler: InvalidCxxCompiler"),
        "{compiled:?}"
    );
    let meta = run.run_dir().read_meta().expect("run.json reads");
    let version = meta.targets[0]
        .env
        .get("transformers_version")
        .cloned()
        .unwrap_or_default();
    assert!(
        version.starts_with(char::is_numeric),
        "transformers_version {version:?}"
    );
    assert_eq!(run.leftovers(), "", "containers left behind");
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
        // What the measuring process loaded, read inside the container at its end.
        let comps = meta.targets[0]
            .components
            .as_ref()
            .unwrap_or_else(|| panic!("no components in run.json: {:?}", meta.targets[0]));
        let lib = |soname: &str| {
            comps
                .libraries
                .iter()
                .find(|l| l.soname == soname)
                .unwrap_or_else(|| panic!("{soname} not among {:?}", comps.libraries))
        };
        let libc = lib("libc.so.6");
        assert_eq!(libc.build_id.len(), 40, "{libc:?}");
        if engine == "torch" {
            let torch_lib = lib("libtorch_cpu.so");
            assert!(torch_lib.path.contains("/torch/lib/"), "{torch_lib:?}");
            assert!(torch_lib.size > 10_000_000, "{torch_lib:?}");
            assert_eq!(torch_lib.build_id.len(), 40, "{torch_lib:?}");
            let torch_dist = comps
                .python
                .iter()
                .find(|d| d.name == "torch")
                .unwrap_or_else(|| panic!("torch not among {:?}", comps.python));
            assert!(torch_dist.imported, "{torch_dist:?}");
            let probed = env.get("torch_version").cloned().unwrap_or_default();
            assert_eq!(
                torch_dist.version.split('+').next(),
                probed.split('+').next(),
                "{torch_dist:?} vs the probe's {probed}"
            );
            assert!(
                comps.python.iter().any(|d| !d.imported),
                "some installed distribution is not imported (pip, setuptools): {:?}",
                comps.python
            );
        } else {
            assert!(comps.python.is_empty(), "{:?}", comps.python);
        }
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

    let out = run.compare_along_image(base);
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
    // SLOW differs from BASE by one environment variable of its image config: "what differs"
    // names it under environment, in the report and in compare's text.
    assert!(
        changes.contains("<td>environment</td><td>OMP_NUM_THREADS</td>"),
        "{changes}"
    );
    let out = Command::cargo_bin("tagbench")
        .unwrap()
        .arg("compare")
        .arg(run.run_dir().root)
        .args(["--along", "image", "--baseline", base])
        .output()
        .expect("tagbench compare runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  environment:\n    OMP_NUM_THREADS  (none) -> 1\n"),
        "{text}"
    );
    // Same torch in both: no Python package and no library differs.
    assert!(
        !text.contains("  Python packages:") && !text.contains("  libraries:"),
        "{text}"
    );
    assert_eq!(run.leftovers(), "", "containers left behind");
}

/// An image 200 MB bigger than BASE (`FROM BASE` + 200 MB of random bytes, built from a
/// two-line Dockerfile by the local engine, offline); removed when dropped.
struct Padded(String);

impl Padded {
    fn build(base: &str) -> Padded {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM {base}\nRUN head -c 200M /dev/urandom > /pad\n"),
        )
        .unwrap();
        let name = format!("tagbench-test/pytorch:padded-{}", std::process::id());
        common::docker_build(&name, &ctx.path().join("Dockerfile"), ctx.path());
        Padded(name)
    }
}

impl Drop for Padded {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// The `startup` workload in BASE, SLOW and BASE + 200 MB, the torch engine: rows for
/// container_start, python_import_torch and image_size in each (first_cuda_op skipped, no CUDA
/// device), and `compare --along image` flags the bigger image's size as a regression while
/// SLOW, which only sets an environment variable, is the same size. Each sample is a fresh
/// container (or python); two rounds of three keep it short (the times are not judged on two
/// rounds; the size, a fact, is).
#[test]
fn startup_rows_for_the_images_and_a_bigger_image_is_a_size_regression() {
    let Some((_guard, (base, slow))) = setup() else {
        return;
    };
    let padded = Padded::build(base);
    let suite = "name = \"startup\"\n[defaults]\ntimeout_s = 300\nrounds = 2\n\n[[workload]]\nkind = \"startup\"\nsamples = 3\n";
    let run = Run::with_suite("startup", suite);
    let (code, stderr) = run.run(&[
        "--engine", "torch", "--image", base, "--image", slow, "--image", &padded.0,
    ]);
    // The end-of-run comparison finds the size regression.
    assert_eq!(code, 1, "{stderr}");
    let rows = run.rows();
    for image in [base.as_str(), slow.as_str(), padded.0.as_str()] {
        for metric in ["container_start", "python_import_torch", "image_size"] {
            let r = rows
                .iter()
                .find(|r| r.target == image && r.metric == metric && r.round == Some(0))
                .unwrap_or_else(|| panic!("no {metric} row for {image}: {rows:#?}"));
            assert_eq!(r.status, Status::Ok, "{r:?}");
            assert_eq!((r.n, r.workload.as_str()), (Some(3), "startup"), "{r:?}");
            assert!(r.median.is_some_and(|m| m > 0.0), "{r:?}");
        }
        let cuda = rows
            .iter()
            .find(|r| r.target == image && r.case == "metric=first_cuda_op")
            .expect("a first_cuda_op row");
        assert_eq!(
            (cuda.status, cuda.reason.as_str()),
            (Status::Skipped, "no CUDA device in target")
        );
    }
    let size = |image: &str| {
        rows.iter()
            .find(|r| r.target == image && r.metric == "image_size")
            .and_then(|r| r.median)
            .unwrap()
    };
    let added = size(&padded.0) - size(base);
    assert!(
        (190.0..=210.0).contains(&added),
        "padded image is {added} MiB bigger"
    );
    assert_eq!(size(slow), size(base));

    let out = run.compare_along_image(base);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("compare --format json");
    let verdict = |image: &str| {
        json["comparisons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["metric"] == "image_size" && c["candidate"]["label"] == image)
            .unwrap_or_else(|| panic!("no image_size comparison for {image}: {json}"))["verdict"]
            .clone()
    };
    assert_eq!(verdict(&padded.0), "regression", "{json}");
    assert_eq!(verdict(slow), "same", "{json}");
    assert_eq!(run.leftovers(), "", "containers left behind");
}

/// The shipped example (examples/train-step.toml and its training script) as a `command`
/// workload in BASE and SLOW: SLOW bakes `OMP_NUM_THREADS=1` in, which the script's matmuls feel
/// on a machine with 2+ cores, so `compare --along image` flags `step_time` as a regression. The
/// script's files are mounted read-only.
#[test]
fn the_example_training_step_is_a_regression_in_the_slow_image() {
    let Some((_guard, (base, slow))) = setup() else {
        return;
    };
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: one core, so one thread is not slower");
        return;
    }
    let run = Run::new("example");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let suite = run.dir.path().join("suite.toml");
    std::fs::copy(examples.join("train-step.toml"), &suite).unwrap();
    std::fs::create_dir(run.dir.path().join("bench")).unwrap();
    std::fs::copy(
        examples.join("bench/train_step.py"),
        run.dir.path().join("bench/train_step.py"),
    )
    .unwrap();
    // A second workload: the mounted files cannot be written.
    let mut text = std::fs::read_to_string(&suite).unwrap();
    text.push_str(
        r#"
[[workload]]
kind = "command"
name = "readonly"
argv = ["python3", "-c", "open('bench/new.txt', 'w')"]
files = ["bench/"]
"#,
    );
    std::fs::write(&suite, text).unwrap();
    let load_before = common::load_average();
    eprintln!("load average before the run: {load_before}");
    let (_code, stderr) = run.run(&[
        "--image",
        base,
        "--image",
        slow,
        "--set",
        r#"train_step.args=["--batch", "8"]"#,
        "--set",
        "train_step.hidden=256",
        // Eight rounds a side in one look (the whole α): at four rounds with an adaptive look,
        // a 1.69x slower SLOW read `noisy` at p = 0.014 (25% of α spent at that look); at five
        // (12-06, load 1.1 before the run) 1.59x read `noisy` at p = 0.009, 0.028 after Holm
        // over the case's three metrics: the two OpenMP threads of BASE lose their second core
        // to whatever else the VM runs now and then, and round ratios spread by ~25%.
        // One timed run of the script a round (after its warm-up run) keeps the test's time.
        "--set",
        "min_rounds=8",
        "--set",
        "max_rounds=8",
        "--set",
        "min_samples=1",
        "--set",
        "max_samples=1",
    ]);
    let rows = run.rows();
    for image in [base, slow] {
        let step = rows
            .iter()
            .find(|r| r.target == *image && r.metric == "step_time" && r.status == Status::Ok)
            .unwrap_or_else(|| panic!("no step_time row for {image}: {stderr}\n{rows:#?}"));
        // 20 timed steps per run, one run per round.
        assert_eq!(step.n, Some(20), "{step:?}");
        assert_eq!(step.executor, "docker");
        let ro = rows
            .iter()
            .find(|r| r.target == *image && r.workload == "readonly")
            .expect("a readonly row");
        assert_eq!(ro.status, Status::Failed, "{ro:?}");
        assert!(ro.reason.contains("Read-only file system"), "{ro:?}");
    }
    let out = run.compare_along_image(base);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("compare --format json");
    let step = json["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "step_time" && c["workload"] == "train_step")
        .unwrap_or_else(|| panic!("no step_time comparison: {json:#}"));
    // On an idle machine one thread is slower than two: a regression. On one whose cores are
    // already oversubscribed (other builds), two OpenMP threads spin against each other and the
    // one-thread image is the faster (measured: 900-1500 ms against 130-210 ms a step at a load
    // of 13 on 2 cores).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if load_before <= cores {
        assert_eq!(step["verdict"], "regression", "{step:#}");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        // Measured here: at loads of 3.7 to 13 on 2 cores the verdict was `regression`,
        // `improvement`, `same` or `noisy` from one run to the next, as the spare core comes and
        // goes; only that both sides were measured and judged can be asked.
        eprintln!("load {load_before} > {cores} cores: asking only for a judged step_time");
        assert!(
            ["regression", "improvement", "same", "noisy"].contains(&step["verdict"].as_str().unwrap_or("")),
            "{step:#}"
        );
    }
    assert_eq!(run.leftovers(), "", "containers left behind");
}

/// The Debian bullseye image (glibc 2.31) that scripts/build-bullseye-image.sh builds.
fn bullseye() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-bullseye-image.sh");
    let out = Command::new("bash").arg(&script).output().expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} failed: {stderr}", script.display());
    eprint!("{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("an image name")
        .to_string()
}

/// The newest `GLIBC_2.x` symbol version `objdump -T` lists for `binary`, as (2, x).
fn newest_glibc_symbol(binary: &Path) -> (u32, u32) {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .expect("objdump runs");
    assert!(out.status.success(), "objdump -T {}", binary.display());
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .max()
        .expect("the worker has glibc symbols")
}

/// An image from the glibc 2.31 era runs the native engine's smoke cases and a `command`
/// workload, because the worker mounted into it is the one linked for glibc 2.17 (no symbol
/// newer than GLIBC_2.17); the binary linked on this host is refused there with the glibc found
/// against the glibc needed.
#[test]
fn an_old_glibc_image_runs_the_smoke_cases_and_a_command() {
    let Some((_guard, _)) = setup() else {
        return;
    };
    let release = Path::new(env!("CARGO_BIN_EXE_tagbench"))
        .parent()
        .unwrap()
        .to_owned();
    let worker = release.join("tagbench-glibc2.17");
    assert!(
        worker.is_file(),
        "{} is missing: scripts/test builds it with scripts/build-worker.sh",
        worker.display()
    );
    assert_eq!(
        newest_glibc_symbol(&worker),
        (2, 17),
        "objdump -T {}",
        worker.display()
    );
    let image = bullseye();
    let run = Run::new("bullseye");
    let mut suite =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("suites/smoke.toml")).unwrap();
    suite.push_str(
        r#"
[[workload]]
kind = "command"
name = "python"
argv = ["python3", "-c", 'import json, os, time; t = time.perf_counter(); sum(range(10**5)); open(os.environ["TAGBENCH_METRICS"], "a").write(json.dumps({"metric": "loop", "value": (time.perf_counter() - t) * 1e3, "unit": "ms"}) + "\n")']
"#,
    );
    std::fs::write(run.dir.path().join("suite.toml"), suite).unwrap();
    let (code, stderr) = run.run(&["--image", &image, "--set", "rounds=1"]);
    assert_eq!(code, 0, "{stderr}");
    let rows = run.rows();
    let meta = run.run_dir().read_meta().unwrap();
    assert_eq!(
        meta.targets[0].env.get("os").map(String::as_str),
        Some("Debian GNU/Linux 11 (bullseye)"),
        "{:?}",
        meta.targets[0].env
    );
    for w in ["probe", "gemm", "attention", "generate", "precision", "python"] {
        assert!(
            rows.iter().any(|r| r.workload == w && r.status == Status::Ok),
            "no ok {w} row in {image}: {rows:#?}"
        );
    }
    assert!(rows.iter().all(|r| r.status != Status::Failed), "{rows:#?}");
    let lp = rows
        .iter()
        .find(|r| r.workload == "python" && r.metric == "loop")
        .expect("loop row");
    assert!(lp.median.is_some_and(|m| m > 0.0), "{lp:?}");

    // The binary linked on this host (glibc 2.34+ symbols) cannot start there, and says why.
    let host = release.join("tagbench");
    let needed = newest_glibc_symbol(&host);
    assert!(needed > (2, 31), "this host's binary needs glibc {needed:?}");
    let run = Run::new("bullseye-host-binary");
    let out = Command::new(&host)
        .env("TAGBENCH_WORKER", &host)
        .arg("run")
        .arg(run.dir.path().join("suite.toml"))
        .arg("--results-dir")
        .arg(run.dir.path().join("results"))
        .args([
            "--run-id",
            &run.run_id,
            "--no-progress",
            "--no-report",
            "--image",
            &image,
        ])
        .args(["--filter", "probe"])
        .output()
        .unwrap();
    let rows = run.rows();
    let r = rows.iter().find(|r| r.workload == "probe").expect("a probe row");
    assert_eq!(r.status, Status::Failed, "{r:?}");
    let want = format!(
        "has glibc 2.31, but the worker ({}) needs glibc 2.{} or newer",
        host.display(),
        needed.1
    );
    assert!(r.reason.contains(&want), "{want}: {}", r.reason);
    assert!(r.reason.contains("scripts/build-worker.sh"), "{}", r.reason);
    assert_ne!(out.status.code(), Some(0));
}

/// `tagbench bisect` on BASE against SLOW: the two differ by `OMP_NUM_THREADS=1` in SLOW's image
/// config (and a label). The bisect swaps BASE's environment into SLOW (the variable removed,
/// as BASE has none), SLOW gets its speed back, and the answer names the variable. On one core
/// the variable changes nothing, so the test needs two.
#[test]
fn bisect_names_omp_num_threads_as_the_cause_of_the_gemm_regression() {
    let Some((_guard, (base, slow))) = setup() else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("skipped: one core, where OMP_NUM_THREADS=1 changes nothing");
        return;
    }
    let run = Run::new("bisect");
    std::fs::write(
        run.dir.path().join("suite.toml"),
        "name = \"bisect\"\n[defaults]\nwarmup_s = 0.1\nmin_samples = 5\nmax_samples = 40\nmax_time_s = 0.3\ntimeout_s = 120\nrounds = 5\n\n[[workload]]\nkind = \"gemm\"\nsize = 512\ndtype = \"fp32\"\n",
    )
    .unwrap();
    // One OpenMP thread is slower than two only where two cores are free: on a machine whose
    // cores other work already fills, the two images measure alike (see the example's test).
    let load = common::load_average();
    if load > cores as f64 - 0.5 {
        eprintln!("skipped: load average {load} on {cores} cores leaves no core for a second OpenMP thread");
        return;
    }
    let (code, stderr) = run.run(&["--engine", "torch", "--image", base, "--image", slow]);
    assert_eq!(
        code, 1,
        "SLOW is slower than BASE with one OpenMP thread (load {load}): {stderr}"
    );
    // Eight rounds a step: one OpenMP thread against two spreads a round's ratio by ~18% on a
    // busy 2-core VM, and the control of five rounds once read 1.58x [1.25, 1.98] `noisy`.
    let out = run
        .bisect(base, slow, &["--format", "json", "--rounds", "8"])
        .output()
        .expect("tagbench bisect runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    let components = json["components"].as_array().unwrap();
    let found: Vec<&str> = json["found"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| components[i.as_u64().unwrap() as usize]["key"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["OMP_NUM_THREADS"], "{json:#}");
    assert_eq!(json["found"]["trial"]["outcome"], "recovers", "{json:#}");
    let answer = json["answer"].as_str().unwrap();
    assert!(
        answer.starts_with("`OMP_NUM_THREADS` 1 → (unset) explains +"),
        "{answer}"
    );
    // B measured again beside the swaps is still the regression.
    assert_eq!(json["controls"][0]["verdict"], "regression", "{json:#}");
    let leftovers = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=tagbench.run"])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&leftovers.stdout);
    let mine: Vec<&str> = ids.lines().collect();
    assert!(
        mine.is_empty() || !stderr.contains("bisect runs in"),
        "containers left behind: {mine:?}"
    );
}

/// BASE with one more `ENV` line (no layer: builds offline in a moment).
fn image_with_env(base: &str, tag: &str, env: &str) -> String {
    let name = format!("tagbench-test/env:{tag}");
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", &name, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker build runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("FROM {base}\nENV {env}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    name
}

/// The bisect machinery end to end at any load: a `command` whose program sleeps five times
/// longer when an environment variable of its image is set. The bisect swaps BASE's environment
/// into the slow image (the variable removed), names the variable, and leaves no container.
/// Two more bisects of the same run, interrupted while their first step measures (Ctrl-C to the
/// process group; SIGTERM to the bisect alone), exit 130 within seconds and leave no container
/// either.
#[test]
fn bisect_names_the_environment_variable_that_slows_a_command_and_ctrl_c_leaves_no_container() {
    let Some((_guard, (base, _))) = setup() else {
        return;
    };
    let slow = image_with_env(base, "sleepy", "TAGBENCH_TEST_SLOWDOWN=1");
    let run = Run::new("bisect-command");
    std::fs::write(
        run.dir.path().join("suite.toml"),
        r#"name = "bisect-command"
[defaults]
warmup_s = 0
min_samples = 4
max_samples = 4
timeout_s = 60
rounds = 4

[[workload]]
kind = "command"
name = "sleepy"
argv = ["python3", "-c", "import os, time; time.sleep(0.2 if os.environ.get('TAGBENCH_TEST_SLOWDOWN') else 0.04)"]
"#,
    )
    .unwrap();
    let (code, stderr) = run.run(&["--image", base, "--image", &slow]);
    assert_eq!(code, 1, "{stderr}");
    let out = run
        .bisect(base, &slow, &["--rounds", "4"])
        .output()
        .expect("tagbench bisect runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}\n{stderr}");
    assert!(
        text.contains("answer: `TAGBENCH_TEST_SLOWDOWN` 1 → (unset) explains +"),
        "{text}\n{stderr}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("TAGBENCH_TEST_SLOWDOWN") && l.ends_with("recovers")),
        "{text}"
    );
    // The control (the slow image as it is) stays slower in the bisect's own step.
    assert!(
        text.lines()
            .any(|l| l.contains("(none: B as it is)") && l.contains("regression")),
        "{text}"
    );
    // Each step is a run of its own, with a run id no other bisect shares.
    let (work, label) = bisect_work(&stderr);
    assert!(Path::new(&work)
        .join(format!("{label}-step1"))
        .join("results.csv")
        .exists());
    let leftovers = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=tagbench.target=copy from"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&leftovers.stdout).trim(), "");
    assert_eq!(run.leftovers(), "", "containers left behind");

    // Ctrl-C at a terminal: SIGINT to the whole foreground process group, the bisect and its
    // step's `tagbench run` alike; and SIGTERM to the bisect alone (a CI job's time limit),
    // which passes it on to its step. Each while the step's containers run.
    for (signal, group) in [(libc::SIGINT, true), (libc::SIGTERM, false)] {
        let interrupted = Interrupted::bisect(&run, base, &slow, signal, group);
        eprintln!(
            "bisect stopped by signal {signal} (to its group: {group}): exit {:?} after {:.1} s\n{}",
            interrupted.code, interrupted.exit_s, interrupted.stderr
        );
        assert_eq!(interrupted.code, Some(130), "{}", interrupted.stderr);
        assert!(
            interrupted.exit_s < 60.0,
            "exited {:.1} s after the signal: {}",
            interrupted.exit_s,
            interrupted.stderr
        );
        assert_eq!(
            bisect_containers(&interrupted.label),
            Vec::<String>::new(),
            "containers of bisect {} left behind: {}",
            interrupted.label,
            interrupted.stderr
        );
    }
}

/// The work directory and run-id prefix a bisect names on stderr:
/// `bisect runs in DIR (runs LABEL-step1, LABEL-step2, …)`.
fn bisect_work(stderr: &str) -> (String, String) {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("bisect runs in "))
        .unwrap_or_else(|| panic!("the bisect names its work directory: {stderr}"));
    let (dir, runs) = line.split_once(" (runs ").expect("and its runs");
    let label = runs.split_once("-step1").expect("step 1's run id").0;
    (dir.to_string(), label.to_string())
}

/// Containers of a bisect (`LABEL`, whose steps are runs `LABEL-stepN` and whose copies out of
/// an image are labelled `LABEL`), by their `tagbench.run` label.
fn bisect_containers(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=tagbench.run",
            "--format",
            "{{.ID}} {{.Label \"tagbench.run\"}}",
        ])
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let run = l.split_once(' ').map_or("", |(_, r)| r);
            run == label || run.starts_with(&format!("{label}-step"))
        })
        .map(str::to_string)
        .collect()
}

/// A bisect interrupted once its first step's containers run: `signal` to its process group
/// (`group`, as Ctrl-C at a terminal) or to the bisect alone.
struct Interrupted {
    code: Option<i32>,
    /// Seconds from the SIGINT to the bisect's exit.
    exit_s: f64,
    label: String,
    stderr: String,
}

impl Interrupted {
    fn bisect(run: &Run, baseline: &str, candidate: &str, signal: i32, group: bool) -> Interrupted {
        use std::io::BufRead as _;
        use std::os::unix::process::CommandExt as _;
        use std::time::{Duration, Instant};
        let mut child = run
            .bisect(baseline, candidate, &["--rounds", "4"])
            // A process group of its own, as a shell gives a foreground job.
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tagbench bisect starts");
        let pgid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let label = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|e| panic!("{e}: the bisect never named its runs: {seen}"));
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("bisect runs in ") {
                break bisect_work(&line).1;
            }
        };
        let step1 = format!("label=tagbench.run={label}-step1");
        while Command::new("docker")
            .args(["ps", "-q", "--filter", &step1])
            .output()
            .map(|o| o.stdout.is_empty())
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "no container of step 1 started: {seen}"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the bisect ended before its step ran: {seen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let to = if group { -pgid } else { pgid };
        // SAFETY: a signal to the process (group) this test started.
        assert_eq!(unsafe { libc::kill(to, signal) }, 0);
        let sent = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if sent.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let exit_s = sent.elapsed().as_secs_f64();
        Interrupted {
            code: status.and_then(|s| s.code()),
            exit_s,
            label,
            stderr: reader.join().unwrap(),
        }
    }
}

static NUMPY_IMAGES: OnceLock<(String, String)> = OnceLock::new();

/// (NUMPY1, NUMPY2): BASE with numpy 1.26.4 and Bottleneck 1.3.7, and BASE (numpy 2) with
/// Bottleneck 1.4.2, from PyPI, as scripts/build-numpy-images.sh builds them (one small layer
/// each on BASE, cached by content hash).
fn numpy_images(base: &str) -> &'static (String, String) {
    NUMPY_IMAGES.get_or_init(|| built_pair("scripts/build-numpy-images.sh", &[base]))
}

/// A data-prep step that imports numpy and Bottleneck and finds the unique values of 600,000
/// distinct int64 (its own `unique` metric beside the wall time).
const UNIQUE_SUITE: &str = r#"name = "bisect-numpy"
[defaults]
warmup_s = 0
min_samples = 3
max_samples = 3
timeout_s = 60
rounds = 5

[[workload]]
kind = "command"
name = "unique"
argv = ["python3", "-c", 'import json, os, time; import numpy as np, bottleneck as bn; x = np.random.default_rng(0).integers(0, 1 << 40, 600_000); t = time.perf_counter(); u = np.unique(x); ms = (time.perf_counter() - t) * 1e3; assert bn.nanmax(u) == u[-1]; open(os.environ["TAGBENCH_METRICS"], "a").write(json.dumps({"metric": "unique", "value": ms, "unit": "ms"}) + "\n")']
"#;

/// The second real pair: NUMPY2 differs from NUMPY1 by two Python distributions from PyPI, numpy
/// (2.4 against 1.26: numpy 2.3+ finds unique integers with a hash table, measured here 4-8x
/// slower on this array) and Bottleneck (1.4.2 against 1.3.7). The bisect copies both
/// distributions out of NUMPY1's image and swaps them into NUMPY2: together they recover; then
/// numpy alone recovers, and NUMPY1's Bottleneck alone cannot import beside numpy 2 (it was
/// built against numpy 1.x), which the table reports as `cannot run: <the ImportError>` while
/// the bisect goes on to name numpy. The native engine's worker lists the distributions the image's python can
/// import because the suite runs a command (no torch session: a container starts in a second,
/// not the eight that importing torch takes).
#[test]
fn bisect_names_the_numpy_release_and_reports_the_swap_that_cannot_import() {
    let Some((_guard, (base, _))) = setup() else {
        return;
    };
    let (old, new) = numpy_images(base);
    let run = Run::with_suite("bisect-numpy", UNIQUE_SUITE);
    let (code, stderr) = run.run(&["--image", old, "--image", new]);
    assert_eq!(code, 1, "numpy 2's np.unique is slower: {stderr}");
    let out = run
        .bisect(old, new, &["--rounds", "5"])
        .output()
        .expect("tagbench bisect runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}\n{stderr}");
    // Both differ, each its own component of the Python packages group.
    for c in ["bottleneck  1.3.7 -> 1.4.2", "numpy  1.26.4 -> 2.4"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("Python packages") && l.contains(c)),
            "{c}: {text}\n{stderr}"
        );
    }
    // The table's rows: `step  swapped  ratio  verdict  outcome`, columns two spaces apart.
    let row = |swapped: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| {
                let cells: Vec<&str> = l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
                cells.get(1) == Some(&swapped)
            })
            .collect()
    };
    // NUMPY1's Bottleneck alone in NUMPY2: no verdict, the import error instead.
    let lone = row("bottleneck");
    assert_eq!(lone.len(), 1, "{text}");
    assert!(
        lone[0].trim_end().ends_with(
            "cannot run: ImportError: numpy.core.multiarray failed to import (python3 exited with status 1)"
        ),
        "{text}"
    );
    assert!(row("numpy")[0].trim_end().ends_with("recovers"), "{text}");
    let answer = text
        .lines()
        .find_map(|l| l.strip_prefix("answer: "))
        .unwrap_or_else(|| panic!("no answer: {text}"));
    assert!(answer.starts_with("`numpy` 2.4."), "{answer}");
    assert!(answer.contains(" → 1.26.4 explains +"), "{answer}");
    assert_eq!(run.leftovers(), "", "containers left behind");
}
