//! `--executor slurm` end to end on a real Slurm: a two-node cluster on this host (munged,
//! slurmctld, `slurmd -N n1`/`-N n2`, fake GPUs) brought up by `scripts/slurm-cluster.sh` in the
//! test's own temporary directory and torn down by PID afterwards. The test fails when Slurm
//! cannot be started; `TAGBENCH_SKIP_SLURM_TESTS=1` skips it explicitly.
//!
//! One test function runs every scenario in turn: the cluster's ports are fixed, so two
//! clusters cannot run side by side, and one cluster for all keeps the run time small.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tagbench::results::{read_results, ResultRow, RunDir, Status};

mod common;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tagbench"))
}

/// The cluster, stopped when dropped (also when an assertion fails).
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    fn up() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("up")
            .arg(dir.path())
            .output()
            .unwrap();
        let conf = dir.path().join("slurm.conf");
        let c = Cluster { dir, conf };
        assert!(
            out.status.success(),
            "failed to start a Slurm cluster with {} (set TAGBENCH_SKIP_SLURM_TESTS=1 to skip): {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf).env_remove("SLURM_JOB_ID");
        c
    }

    fn tagbench(&self) -> Command {
        let mut c = self.cmd(bin().to_str().unwrap());
        c.arg("run").arg("--no-progress").arg("--no-report");
        c
    }

    /// `tagbench run [SUITE] --executor slurm --run-id ID --results-dir RESULTS ARGS...`.
    fn run(&self, suite: Option<&Path>, run_id: &str, results: &Path, args: &[&str]) -> Command {
        let mut c = self.tagbench();
        c.args(suite)
            .args(["--executor", "slurm", "--run-id", run_id])
            .arg("--results-dir")
            .arg(results)
            .args(args);
        c
    }

    /// Job ids (and steps, `J.S`) that squeue lists, waiting up to `wait` for the list to empty.
    fn jobs_left(&self, wait: Duration) -> String {
        let end = Instant::now() + wait;
        loop {
            let out = self
                .cmd("timeout")
                .args(["5", "squeue", "-h", "-o", "%i %T"])
                .output()
                .unwrap();
            let steps = self
                .cmd("timeout")
                .args(["5", "squeue", "-h", "-s", "-o", "%i"])
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&steps.stdout)
            );
            if text.trim().is_empty() || Instant::now() >= end {
                return text.trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = write(dir, name, &format!("#!/bin/sh\n{body}\n"));
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&p, perm).unwrap();
    p
}

fn rows(results: &Path, run_id: &str) -> Vec<ResultRow> {
    read_results(&RunDir::new(results.join(run_id))).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A gemm workload that measures until its time limit (a hang, as the host sees it).
const ENDLESS_GEMM: &str = "[[workload]]\nkind = \"gemm\"\nname = \"slow\"\nsize = 512\nmin_samples = 100000\nmax_samples = 100000\nmax_time_s = 1000\n";

const FAST: [&str; 8] = [
    "--set",
    "rounds=2",
    "--set",
    "max_time_s=0.1",
    "--set",
    "min_samples=3",
    "--set",
    "warmup_s=0",
];

#[test]
fn slurm_executor_on_a_real_two_node_cluster() {
    if std::env::var("TAGBENCH_SKIP_SLURM_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: TAGBENCH_SKIP_SLURM_TESTS=1");
        return;
    }
    let cluster = Cluster::up();
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");

    smoke_suite_runs_as_steps(&cluster, &results);
    crash_fails_the_case(&cluster, tmp.path(), &results);
    hang_is_cancelled_and_the_run_goes_on(&cluster, tmp.path(), &results);
    gpus_each_is_one_step_per_gpu(&cluster, tmp.path(), &results);
    pending_allocation_is_cancelled(&cluster, tmp.path(), &results);
    ctrl_c_cancels_the_allocation(&cluster, tmp.path(), &results);
    docker_in_a_step_leaves_no_container(&cluster, tmp.path(), &results);
    if let Some(python) = common::torch_python() {
        allreduce_spans_both_nodes_as_one_step(&cluster, tmp.path(), &results, &python);
    }
    assert_eq!(
        cluster.jobs_left(Duration::from_secs(10)),
        "",
        "jobs left in squeue"
    );
}

/// The smoke suite through Slurm: every row `executor=slurm`, with its node and step.
fn smoke_suite_runs_as_steps(c: &Cluster, results: &Path) {
    let out = c
        .run(None, "smoke", results, &["--nodes", "2"])
        .args(FAST)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = rows(results, "smoke");
    assert!(rows.len() > 20, "{rows:?}");
    for r in &rows {
        assert_eq!(r.executor, "slurm", "{r:?}");
        assert!(["n1", "n2"].contains(&r.node.as_str()), "{r:?}");
        assert!(r.job_step.contains('.'), "{r:?}");
    }
    // Each round is its own step.
    let steps: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.job_step.as_str()).collect();
    assert!(steps.len() >= 2, "{steps:?}");
    let meta = RunDir::new(results.join("smoke")).read_meta().unwrap();
    let t = &meta.targets[0];
    assert_eq!(t.executor, "slurm");
    assert_eq!(t.env["slurm_nodes"], "n1,n2");
    assert!(t.steps.len() >= 2, "{:?}", t.steps);
    assert_eq!(
        c.jobs_left(Duration::from_secs(10)),
        "",
        "jobs left after the smoke run"
    );
}

/// A worker killed by a signal inside a case: that case fails naming the signal and the step.
fn crash_fails_the_case(c: &Cluster, dir: &Path, results: &Path) {
    let suite = write(
        dir,
        "crash.toml",
        "[[workload]]\nkind = \"gemm\"\nsize = 64\ndtype = \"fp32\"\n",
    );
    let crash = script(
        dir,
        "crash.sh",
        // A worker of this build: its lines carry the job's token (`worker --job PATH`).
        r#"tok=$(sed -n 's/.*"token":"\([0-9a-f]*\)".*/\1/p' "$3")
echo "$tok {\"type\":\"start\",\"workload\":\"gemm\",\"case\":\"size=64,dtype=fp32\"}"
kill -SEGV $$"#,
    );
    let out = c
        .run(Some(&suite), "crash", results, &[])
        .env("TAGBENCH_SLURM_WORKER", &crash)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let rows = rows(results, "crash");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r.status, Status::Failed);
    assert!(r.reason.contains("Segmentation fault"), "{}", r.reason);
    assert!(r.reason.contains("slurm step"), "{}", r.reason);
    assert_eq!(r.executor, "slurm");
}

/// A case past its `timeout_s`: its step is cancelled, the case fails, the next case runs in a
/// new step, and no job or step is left.
fn hang_is_cancelled_and_the_run_goes_on(c: &Cluster, dir: &Path, results: &Path) {
    let toml = format!(
        "[defaults]\nwarmup_s = 0.0\nmin_samples = 3\nmax_time_s = 0.1\n\n{ENDLESS_GEMM}timeout_s = 1.5\n\n[[workload]]\nkind = \"gemm\"\nname = \"fast\"\nsize = 64\n"
    );
    let suite = write(dir, "hang.toml", &toml);
    let started = Instant::now();
    let out = c.run(Some(&suite), "hang", results, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(60));
    let rows = rows(results, "hang");
    let slow: Vec<&ResultRow> = rows.iter().filter(|r| r.workload == "slow").collect();
    assert_eq!(slow.len(), 1, "{rows:?}");
    assert_eq!(slow[0].status, Status::Failed);
    assert!(
        slow[0].reason.contains("timed out after 1.5 s"),
        "{}",
        slow[0].reason
    );
    let fast: Vec<&ResultRow> = rows.iter().filter(|r| r.workload == "fast").collect();
    assert!(
        !fast.is_empty() && fast.iter().all(|r| r.status == Status::Ok),
        "{fast:?}"
    );
    assert_ne!(fast[0].job_step, slow[0].job_step, "the rest ran in a new step");
    // The step itself was cancelled (srun reports it), not left to the allocation's end.
    let logs = RunDir::new(results.join("hang")).logs();
    let cancelled = std::fs::read_dir(&logs)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .any(|t| t.contains(&format!("STEP {} ON", slow[0].job_step)) && t.contains("CANCELLED"));
    assert!(
        cancelled,
        "no log in {} says the step was cancelled",
        logs.display()
    );
    assert_eq!(
        c.jobs_left(Duration::from_secs(10)),
        "",
        "jobs left after the hang"
    );
}

/// `--gpus each` on 2 nodes × 2 fake GPUs: one step per GPU, on the GPU's node, with its own
/// CUDA_VISIBLE_DEVICES (as the step's process saw it).
fn gpus_each_is_one_step_per_gpu(c: &Cluster, dir: &Path, results: &Path) {
    let seen = dir.join("seen.txt");
    let wrap = script(
        dir,
        "wrap.sh",
        &format!(
            "echo \"$SLURMD_NODENAME $CUDA_VISIBLE_DEVICES $SLURM_JOB_ID.$SLURM_STEP_ID\" >> {}\nexec {} \"$@\"",
            seen.display(),
            bin().display()
        ),
    );
    let out = c
        .run(
            None,
            "each",
            results,
            &["--nodes", "2", "--gpus-per-node", "2", "--gpus", "each"],
        )
        .args(["--filter", "gemm/size=256,dtype=fp32"])
        .args(["--set", "rounds=1", "--set", "max_time_s=0.1"])
        .env("TAGBENCH_SLURM_WORKER", &wrap)
        .output()
        .unwrap();
    // Each target measures on its own GPU, and the end-of-run comparison matches them GPU
    // against GPU (one round a side: `noisy`, never `missing`), so the gate passes.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(said.lines().all(|l| !l.ends_with(" missing")), "{said}");
    assert!(
        said.contains("gpu 0 vs gpu 1") && said.contains("0 missing"),
        "{said}"
    );
    let seen = std::fs::read_to_string(&seen).unwrap();
    let mut placed: Vec<(String, String)> = seen
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    placed.sort();
    let want =
        [("n1", "0"), ("n1", "1"), ("n2", "0"), ("n2", "1")].map(|(n, g)| (n.to_string(), g.to_string()));
    assert_eq!(placed, want, "{seen}");
    let rows = rows(results, "each");
    for (i, node) in ["n1", "n1", "n2", "n2"].iter().enumerate() {
        let target = format!("local@gpu{i}");
        let mine: Vec<&ResultRow> = rows.iter().filter(|r| r.target == target).collect();
        assert!(!mine.is_empty(), "{target}: {rows:?}");
        assert!(
            mine.iter().all(|r| r.node == *node && r.gpu_index == Some(i)),
            "{mine:?}"
        );
    }
    let steps: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.job_step.as_str()).collect();
    assert_eq!(steps.len(), 4, "{steps:?}");
}

/// An allocation that cannot be granted within `pending_timeout_s` is cancelled with an error
/// saying so; the job holding the nodes is untouched and nothing of ours is left.
fn pending_allocation_is_cancelled(c: &Cluster, dir: &Path, results: &Path) {
    let hold = c
        .cmd("timeout")
        .args([
            "20",
            "salloc",
            "--no-shell",
            "--nodes=2",
            "--exclusive",
            "--job-name=holder",
        ])
        .output()
        .unwrap();
    assert!(hold.status.success(), "{}", text(&hold));
    let suite = write(
        dir,
        "pending.toml",
        "[slurm]\nnodes = 1\npending_timeout_s = 2\n\n[[workload]]\nkind = \"gemm\"\nsize = 64\n",
    );
    let out = c.run(Some(&suite), "pending", results, &[]).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("stayed pending past 2 s"), "{said}");
    let left = c.jobs_left(Duration::from_secs(3));
    assert_eq!(left.lines().count(), 1, "only the holder: {left}");
    let _ = c.cmd("timeout").args(["5", "scancel", "--name=holder"]).status();
    assert_eq!(c.jobs_left(Duration::from_secs(10)), "");
}

/// Ctrl-C during a step: tagbench exits 130 and the allocation is gone.
fn ctrl_c_cancels_the_allocation(c: &Cluster, dir: &Path, results: &Path) {
    let suite = write(dir, "long.toml", &format!("{ENDLESS_GEMM}timeout_s = 600\n"));
    let mut child = c
        .run(Some(&suite), "ctrlc", results, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step runs.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let steps = c
            .cmd("timeout")
            .args(["5", "squeue", "-h", "-s", "-o", "%i"])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&steps.stdout).trim().is_empty() {
            break;
        }
        assert!(Instant::now() < end, "the step never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) of our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(c.jobs_left(Duration::from_secs(10)), "", "jobs left after Ctrl-C");
}

/// An image holding only the worker's shared libraries (from `ldd`), imported from a tar stream;
/// removed when dropped.
struct WorkerImage(String);

impl WorkerImage {
    fn build(dir: &Path) -> WorkerImage {
        let root = dir.join("rootfs");
        let ldd = Command::new("ldd").arg(bin()).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
            let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else {
                continue;
            };
            let dest = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(path, &dest).unwrap();
        }
        let tag = format!("tagbench-slurm-test:{}", std::process::id());
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let import = Command::new("docker")
            .args(["import", "-", &tag])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of {}", root.display());
        assert!(import.status.success(), "docker import: {}", text(&import));
        WorkerImage(tag)
    }
}

impl Drop for WorkerImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// `container = "docker"`: the worker runs in `docker run` inside the step, hardened and limited
/// as the Docker executor's containers are (what the worker saw inside is checked: /dev/shm's
/// size, the cgroup's CPU quota and memory limit, no capabilities, `no_new_privs`); a case past
/// its time limit is cancelled with its step, and the container (which outlives its docker
/// client) is removed, so none of the run is left.
fn docker_in_a_step_leaves_no_container(c: &Cluster, dir: &Path, results: &Path) {
    let image = WorkerImage::build(dir);
    let toml = format!(
        "[[target]]\nimage = \"{}\"\nexecutor = \"slurm\"\ncontainer = \"docker\"\nshm_size = \"96m\"\ncpus = 1.5\nmemory = \"1g\"\n\n{ENDLESS_GEMM}timeout_s = 3\n\n[[workload]]\nkind = \"gemm\"\nname = \"fast\"\nsize = 64\nmax_time_s = 0.1\n",
        image.0
    );
    let suite = write(dir, "docker.toml", &toml);
    let out = c.run(Some(&suite), "docker-step", results, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let rows = rows(results, "docker-step");
    let slow: Vec<&ResultRow> = rows.iter().filter(|r| r.workload == "slow").collect();
    assert_eq!(slow.len(), 1, "{rows:?}");
    assert!(slow[0].reason.contains("timed out"), "{}", slow[0].reason);
    let fast: Vec<&ResultRow> = rows.iter().filter(|r| r.workload == "fast").collect();
    assert!(
        !fast.is_empty() && fast.iter().all(|r| r.status == Status::Ok && r.image == image.0),
        "{fast:?}"
    );
    // What the worker found inside its container (its `env` message, kept in run.json).
    let meta = RunDir::new(results.join("docker-step")).read_meta().unwrap();
    let seen = &meta.targets[0].env;
    assert_eq!(seen["shm_bytes"], (96u64 << 20).to_string(), "{seen:?}");
    assert_eq!(seen["cgroup_cpus"], "1.5", "{seen:?}");
    assert_eq!(seen["cgroup_memory_bytes"], (1u64 << 30).to_string(), "{seen:?}");
    assert_eq!(seen["cap_eff"], "0000000000000000", "{seen:?}");
    assert_eq!(seen["no_new_privs"], "1", "{seen:?}");
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=tagbench.run=docker-step"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "containers left"
    );
}

/// A 4-rank all-reduce (torch engine, gloo on the CPU) as one step of 4 tasks on both nodes:
/// rows come from rank 0 alone (each metric once), busbw is measured, the step's nodes are both
/// recorded; then a rank on the second node that dies at set-up fails the case naming itself
/// and its node, and nothing is left in squeue.
fn allreduce_spans_both_nodes_as_one_step(c: &Cluster, dir: &Path, results: &Path, python: &Path) {
    let suite = write(
        dir,
        "allreduce.toml",
        "[defaults]\nwarmup_s = 0.0\nmin_samples = 3\nmax_time_s = 0.2\nrounds = 1\n\n[[workload]]\nkind = \"gemm\"\nsize = 64\n\n[[workload]]\nkind = \"allreduce\"\nranks = 4\nmax_bytes = 65536\n",
    );
    let run = |id: &str, crash: Option<&str>| {
        let mut cmd = c.run(Some(&suite), id, results, &["--engine", "torch", "--nodes", "2"]);
        cmd.env("TAGBENCH_PYTHON", python);
        // srun passes the environment on to every task; the worker's test switch reads this one.
        match crash {
            Some(rank) => cmd.env("TAGBENCH_TEST_HOOK", format!("crash-rank={rank}")),
            None => cmd.env_remove("TAGBENCH_TEST_HOOK"),
        };
        cmd.output().unwrap()
    };
    let out = run("allreduce", None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let measured = rows(results, "allreduce");
    let ar: Vec<&ResultRow> = measured.iter().filter(|r| r.workload == "allreduce").collect();
    assert!(ar.iter().all(|r| r.status == Status::Ok), "{ar:?}");
    // Rank 0 alone reports: every metric exactly once (1 KiB to 64 KiB by 4, 4 metrics each, and
    // the headline busbw).
    let metrics: std::collections::BTreeSet<&str> = ar.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(ar.len(), 17, "{ar:?}");
    assert_eq!(metrics.len(), ar.len(), "a metric reported twice: {ar:?}");
    let busbw = ar.iter().find(|r| r.metric == "busbw").unwrap();
    assert!(busbw.median.is_some_and(|m| m > 0.0), "{busbw:?}");
    // One step across both nodes, not the gemm's step.
    assert!(ar.iter().all(|r| r.node == "n1,n2"), "{ar:?}");
    let gemm = measured.iter().find(|r| r.workload == "gemm").unwrap();
    assert_eq!(gemm.status, Status::Ok, "{gemm:?}");
    assert_ne!(gemm.job_step, ar[0].job_step);
    let logs = RunDir::new(results.join("allreduce")).logs();
    let launched = std::fs::read_dir(&logs)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .any(|t| t.contains("--ntasks=4") && t.contains("on host n2, 2 tasks"));
    assert!(launched, "no log in {} shows 2 of 4 tasks on n2", logs.display());
    assert_eq!(
        c.jobs_left(Duration::from_secs(10)),
        "",
        "jobs left after the all-reduce"
    );

    // Rank 3 (on n2) exits at set-up: the case fails naming it (among the ranks whose collective
    // it broke, in the order their reports arrived); the gemm is unaffected.
    let out = run("allreduce-crash", Some("3"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let crashed = rows(results, "allreduce-crash");
    let ar: Vec<&ResultRow> = crashed.iter().filter(|r| r.workload == "allreduce").collect();
    assert_eq!(ar.len(), 1, "{ar:?}");
    assert_eq!(ar[0].status, Status::Failed);
    assert!(
        ar[0].reason.contains("rank 3 on n2 exited with status 7"),
        "{}",
        ar[0].reason
    );
    assert!(
        crashed
            .iter()
            .any(|r| r.workload == "gemm" && r.status == Status::Ok),
        "{crashed:?}"
    );
    assert_eq!(
        c.jobs_left(Duration::from_secs(10)),
        "",
        "jobs left after the crashed rank"
    );
}
