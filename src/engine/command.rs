//! Runs a `command` case: the user's program, once per sample, as N rank processes when it asks
//! for ranks. Its stdout and stderr are captured apart from the worker's protocol channel (they go
//! to the case log and to the metric regexes, never to the host as protocol); its metrics come
//! from the file named by [`METRICS_VAR`] and from the regexes. Each rank is a process group of
//! its own, so that a hung program and everything it started is killed at the case's time limit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::torch::launcher::{free_port, RankSpec};
use super::{CaseOutput, MetricSamples};
use crate::case::{Better, Case, Device, Seconds};
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::command::{CommandParams, MetricLine, METRICS_VAR, WALL_TIME};

/// The most of a program's stdout (and of its stderr) kept for the regexes; past it the oldest
/// half is dropped.
const OUTPUT_CAP: usize = 16 << 20;
/// How many of the last stderr lines a failure's reason quotes.
const TAIL_LINES: usize = 3;
/// What comes between how a program ended and the stderr lines a failure's reason quotes.
const STDERR_QUOTE: &str = "; stderr: ";

/// The error a failed command case's reason ends with, and how the program ended:
/// `ImportError: … (python3 exited with status 1)` from `python3 exited with status 1; stderr:
/// … | ImportError: …` (a Python traceback ends with its exception). Any other reason (it
/// quotes no stderr) is returned as it is, on one line.
pub fn error_of(reason: &str) -> String {
    let reason = reason.lines().last().unwrap_or_default();
    match reason.split_once(STDERR_QUOTE) {
        Some((how, tail)) => {
            let last = tail.rsplit(crate::sys::TAIL_SEPARATOR).next().unwrap_or(tail);
            format!("{} ({how})", last.trim())
        }
        None => reason.to_string(),
    }
}

/// What one run of the program gave.
struct RunOutput {
    wall_s: Seconds,
    /// Every metric of rank 0 (file lines, then regex matches), in the order seen.
    metrics: Vec<MetricSamples>,
}

/// Measures `case`: the program's runs under the case's sampling settings, the warm-up runs'
/// metrics dropped. `out` carries the engine's device fields.
pub fn run(
    p: &CommandParams,
    case: &Case,
    device: Device,
    mut out: CaseOutput,
) -> Result<CaseOutput, CaseError> {
    let deadline = Instant::now() + Duration::from_secs_f64(case.measure.timeout_s);
    let workdir = workdir(p);
    let mut runs = Vec::new();
    let samples = Sampler::new(&case.measure).run(|| -> Result<Seconds, CaseError> {
        let r = run_once(p, &workdir, device, deadline, case.measure.timeout_s)?;
        let wall = r.wall_s;
        runs.push(r.metrics);
        Ok(wall)
    })?;
    let kept = runs.split_off(samples.warmup_iterations.min(runs.len()));
    out.metric(
        WALL_TIME,
        "ms",
        Better::Lower,
        samples.values.iter().map(|s| s * 1e3).collect(),
    );
    for m in merge(kept).map_err(|e| CaseError::Failed(anyhow!(e)))? {
        out.metrics.push(m);
    }
    Ok(out)
}

/// The directory the program starts in: the suite's (as the worker sees it) joined with
/// `workdir`; the worker's own when the suite gave none.
fn workdir(p: &CommandParams) -> PathBuf {
    let root = if p.root.is_empty() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    } else {
        PathBuf::from(&p.root)
    };
    match &p.workdir {
        Some(w) => root.join(w),
        None => root,
    }
}

/// One metric per name over every kept run, in the order first seen; a metric whose unit or
/// direction changes between lines is an error.
fn merge(runs: Vec<Vec<MetricSamples>>) -> Result<Vec<MetricSamples>, String> {
    let mut merged: Vec<MetricSamples> = Vec::new();
    for m in runs.into_iter().flatten() {
        match merged.iter_mut().find(|x| x.name == m.name) {
            Some(x) if x.unit != m.unit || x.better != m.better => {
                return Err(format!(
                    "metric `{}` was reported as {} ({}) and as {} ({})",
                    m.name,
                    x.unit,
                    x.better.as_str(),
                    m.unit,
                    m.better.as_str()
                ))
            }
            Some(x) => x.values.extend(m.values),
            None => merged.push(m),
        }
    }
    Ok(merged)
}

/// A rank's process and the threads that read its output and wait for it.
struct RankProc {
    pid: u32,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
    metrics_file: PathBuf,
}

/// How a rank ended: its status and when.
struct Exit {
    rank: usize,
    status: std::io::Result<ExitStatus>,
    at: Instant,
}

/// Runs the program once (all its ranks) and reads rank 0's metrics.
fn run_once(
    p: &CommandParams,
    workdir: &Path,
    device: Device,
    deadline: Instant,
    timeout_s: Seconds,
) -> Result<RunOutput, CaseError> {
    let line = p.command_line();
    let program = p.program();
    let ranks = p.ranks.max(1);
    let port = if ranks > 1 { free_port()? } else { 0 };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tx, rx) = mpsc::channel::<Exit>();
    let mut procs: Vec<RankProc> = Vec::with_capacity(ranks);
    let start = Instant::now();
    for rank in 0..ranks {
        let metrics_file = metrics_path();
        std::fs::write(&metrics_file, b"")
            .map_err(|e| CaseError::Failed(anyhow!("failed to create {}: {e}", metrics_file.display())))?;
        let mut cmd = Command::new(&line[0]);
        cmd.args(&line[1..])
            .current_dir(workdir)
            .envs(&p.env)
            .env(METRICS_VAR, &metrics_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if ranks > 1 {
            let spec = RankSpec {
                rank,
                world: ranks,
                local_rank: rank,
                master_addr: "127.0.0.1".into(),
                master_port: port,
                ranks_on_node: ranks,
                loopback: true,
            };
            cmd.envs(spec.env(device, cores, |k| {
                p.env.contains_key(k) || std::env::var_os(k).is_some()
            }));
        }
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a timeout or a failing rank kills everything it started.
            cmd.process_group(0);
        }
        crate::sys::die_with_parent(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                procs.iter().for_each(|r| kill_group(r.pid));
                let _ = std::fs::remove_file(&metrics_file);
                let hint = match e.kind() {
                    std::io::ErrorKind::NotFound if !workdir.is_dir() => {
                        format!(" (its workdir {} does not exist)", workdir.display())
                    }
                    std::io::ErrorKind::NotFound => " (no such program on PATH or in its workdir)".into(),
                    _ => String::new(),
                };
                return Err(CaseError::Failed(anyhow!("cannot start {}: {e}{hint}", line[0])));
            }
        };
        procs.push(watch(rank, child, ranks, tx.clone(), metrics_file));
    }
    drop(tx);

    // Wait for every rank, until the case's deadline. The first rank to fail ends the others
    // (rank 0 may wait in a collective for a rank that is gone).
    let mut exits: Vec<Exit> = Vec::with_capacity(ranks);
    let mut timed_out = false;
    let mut killed = false;
    while exits.len() < ranks {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(e) => {
                let bad = !matches!(&e.status, Ok(s) if s.success());
                exits.push(e);
                if bad && !killed {
                    // Let ranks that fail at about the same time say so; the earliest is named.
                    std::thread::sleep(Duration::from_millis(200));
                    procs.iter().for_each(|r| kill_group(r.pid));
                    killed = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                procs.iter().for_each(|r| kill_group(r.pid));
                // The waiters now see the kills.
                while exits.len() < ranks {
                    match rx.recv_timeout(Duration::from_secs(10)) {
                        Ok(e) => exits.push(e),
                        Err(_) => break,
                    }
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let end = exits.iter().map(|e| e.at).max().unwrap_or_else(Instant::now);
    let outputs: Vec<(Vec<u8>, Vec<u8>, PathBuf)> = procs
        .into_iter()
        .map(|r| {
            let out = r.stdout.join().unwrap_or_default();
            let err = r.stderr.join().unwrap_or_default();
            (out, err, r.metrics_file)
        })
        .collect();
    let cleanup = |outputs: &[(Vec<u8>, Vec<u8>, PathBuf)]| {
        for (_, _, f) in outputs {
            let _ = std::fs::remove_file(f);
        }
    };
    if timed_out {
        cleanup(&outputs);
        let tail = tail_of(&outputs[0].1);
        return Err(CaseError::Failed(anyhow!(
            "{program} did not finish within {timeout_s} s (timeout_s) and was killed{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!("{STDERR_QUOTE}{tail}")
            }
        )));
    }
    let mut failed: Vec<&Exit> = exits
        .iter()
        .filter(|e| !matches!(&e.status, Ok(s) if s.success()))
        .collect();
    failed.sort_by_key(|e| e.at);
    if let Some(e) = failed.first() {
        let how = match &e.status {
            Ok(s) => describe(s),
            Err(err) => format!("could not be waited for: {err}"),
        };
        let tail = tail_of(&outputs[e.rank].1);
        let who = if ranks > 1 {
            format!("rank {} of {ranks}: ", e.rank)
        } else {
            String::new()
        };
        cleanup(&outputs);
        return Err(CaseError::Failed(anyhow!(
            "{who}{program} {how}{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!("{STDERR_QUOTE}{tail}")
            }
        )));
    }
    let (stdout, stderr, file) = &outputs[0];
    let text = std::fs::read_to_string(file);
    cleanup(&outputs);
    let text = text.map_err(|e| CaseError::Failed(anyhow!("failed to read the metrics file: {e}")))?;
    let mut metrics = file_metrics(&text).map_err(|e| CaseError::Failed(anyhow!(e)))?;
    metrics.extend(regex_metrics(p, stdout, stderr).map_err(|e| CaseError::Failed(anyhow!(e)))?);
    Ok(RunOutput {
        wall_s: (end - start).as_secs_f64(),
        metrics,
    })
}

/// Starts the threads that read a rank's stdout and stderr (echoed to the worker's stderr, the
/// case log, and kept for the regexes) and the one that waits for it.
fn watch(
    rank: usize,
    mut child: Child,
    ranks: usize,
    tx: mpsc::Sender<Exit>,
    metrics_file: PathBuf,
) -> RankProc {
    let prefix = if ranks > 1 {
        format!("[rank {rank}] ")
    } else {
        String::new()
    };
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let (p1, p2) = (prefix.clone(), prefix);
    let stdout = std::thread::spawn(move || capture(out, &p1));
    let stderr = std::thread::spawn(move || capture(err, &p2));
    let pid = child.id();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(Exit {
            rank,
            status,
            at: Instant::now(),
        });
    });
    RankProc {
        pid,
        stdout,
        stderr,
        metrics_file,
    }
}

/// Reads a pipe to its end: echoes each line to this worker's stderr and keeps the bytes.
fn capture(mut r: impl Read, prefix: &str) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            line.push(b);
            if b == b'\n' {
                eprint!("{prefix}{}", String::from_utf8_lossy(&line));
                line.clear();
            }
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > OUTPUT_CAP {
            kept.drain(..OUTPUT_CAP / 2);
        }
    }
    if !line.is_empty() {
        eprintln!("{prefix}{}", String::from_utf8_lossy(&line));
    }
    kept
}

/// The last few lines of `stderr`, as every stderr is quoted in a reason.
fn tail_of(stderr: &[u8]) -> String {
    crate::sys::tail_lines(&String::from_utf8_lossy(stderr), TAIL_LINES)
}

/// `exited with status 3`, `was killed by signal 11 (SIGSEGV)`.
fn describe(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", crate::sys::signal_name(sig)),
        _ => "ended abnormally".into(),
    }
}

/// The metrics a run wrote to its metrics file, one sample a line.
fn file_metrics(text: &str) -> Result<Vec<MetricSamples>, String> {
    let mut out: Vec<MetricSamples> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(m) = MetricLine::parse(line) else {
            continue;
        };
        let m = m.map_err(|e| {
            let shown: String = line.chars().take(200).collect();
            format!(
                "line {} of ${METRICS_VAR} is not a metric ({e}): `{shown}`",
                i + 1
            )
        })?;
        out.push(MetricSamples {
            name: m.metric,
            unit: m.unit,
            better: m.better,
            values: vec![m.value],
        });
    }
    merge(vec![out])
}

/// The `[[workload.metric]]` regexes over rank 0's stdout, then its stderr: every match is a
/// sample; a regex that matches nothing fails the case, naming its pattern.
fn regex_metrics(p: &CommandParams, stdout: &[u8], stderr: &[u8]) -> Result<Vec<MetricSamples>, String> {
    let texts = [String::from_utf8_lossy(stdout), String::from_utf8_lossy(stderr)];
    let mut out = Vec::new();
    for m in &p.metric {
        let re = regex::Regex::new(&m.regex).map_err(|e| format!("metric `{}`: bad regex: {e}", m.name))?;
        let mut values = Vec::new();
        for text in &texts {
            for caps in re.captures_iter(text) {
                let hit = caps.get(1).or_else(|| caps.get(0)).map_or("", |g| g.as_str());
                let v: f64 = hit.trim().parse().map_err(|_| {
                    format!(
                        "metric `{}`: regex `{}` matched `{hit}`, which is not a number",
                        m.name, m.regex
                    )
                })?;
                values.push(v);
            }
        }
        if values.is_empty() {
            return Err(format!(
                "metric `{}`: regex `{}` matched nothing in the output of {}",
                m.name,
                m.regex,
                p.program()
            ));
        }
        out.push(MetricSamples {
            name: m.name.clone(),
            unit: m.unit.clone(),
            better: m.better,
            values,
        });
    }
    Ok(out)
}

/// A fresh path for one rank's metrics file, in the temporary directory.
fn metrics_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("tagbench-metrics-{}-{n}.jsonl", std::process::id()))
}

/// Kills a rank's process group (the program and everything it started).
fn kill_group(pid: u32) {
    // SAFETY: kill(2) on the process group this worker created for the rank (pgid = its pid).
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

/// Facts for tests: a metric's values by name.
#[cfg(test)]
fn values<'a>(out: &'a CaseOutput, name: &str) -> &'a [f64] {
    &out.metrics.iter().find(|m| m.name == name).expect(name).values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{MeasureSettings, WorkloadKind};
    use crate::workload::Params;

    fn case(toml_text: &str, measure: MeasureSettings) -> (CommandParams, Case) {
        let mut p: CommandParams = toml::from_str(toml_text).unwrap();
        p.check().unwrap();
        let case = Case {
            workload: "command".into(),
            kind: WorkloadKind::Command,
            id: "default".into(),
            params: Params::Command(p.clone()),
            measure,
        };
        (p, case)
    }

    fn quick() -> MeasureSettings {
        MeasureSettings {
            warmup_s: 0.0,
            min_samples: 3,
            max_samples: 3,
            timeout_s: 30.0,
            ..Default::default()
        }
    }

    fn measure(toml_text: &str, m: MeasureSettings) -> Result<CaseOutput, CaseError> {
        let (p, c) = case(toml_text, m);
        run(&p, &c, Device::Cpu, CaseOutput::new("cpu"))
    }

    fn failure(r: Result<CaseOutput, CaseError>) -> String {
        match r {
            Err(CaseError::Failed(e)) => format!("{e:#}"),
            Err(e) => panic!("{e}"),
            Ok(o) => panic!("no failure: {:?}", o.metrics),
        }
    }

    #[test]
    fn metrics_file_and_regex_give_samples() {
        let out = measure(
            r#"argv = ["/bin/sh", "-c", 'echo "{\"metric\":\"step_time\",\"value\":2.5,\"unit\":\"ms\"}" >> "$TAGBENCH_METRICS"; echo "{\"metric\":\"step_time\",\"value\":3.5,\"unit\":\"ms\"}" >> "$TAGBENCH_METRICS"; echo "busbw: 12.5 GB/s"']
               [[metric]]
               name = "busbw"
               regex = 'busbw: ([0-9.]+)'
               unit = "GB/s"
               better = "higher""#,
            quick(),
        )
        .unwrap();
        // One warm-up run dropped, three kept: two step_time lines and one busbw match each.
        assert_eq!(values(&out, WALL_TIME).len(), 3);
        assert_eq!(values(&out, "step_time"), [2.5, 3.5, 2.5, 3.5, 2.5, 3.5]);
        assert_eq!(values(&out, "busbw"), [12.5; 3]);
        let bw = out.metrics.iter().find(|m| m.name == "busbw").unwrap();
        assert_eq!((bw.unit.as_str(), bw.better), ("GB/s", Better::Higher));
        assert!(values(&out, WALL_TIME).iter().all(|&ms| ms > 0.0 && ms < 5000.0));
    }

    #[test]
    fn a_failing_program_names_its_status_and_last_stderr_line() {
        let e = failure(measure(
            r#"argv = ["/bin/sh", "-c", "echo first >&2; echo 'the last words' >&2; exit 3"]"#,
            quick(),
        ));
        assert!(e.starts_with("/bin/sh exited with status 3; stderr: "), "{e}");
        assert!(e.ends_with("the last words"), "{e}");
        // What a bisect's table says of it: the last line, then how the program ended.
        assert_eq!(error_of(&e), "the last words (/bin/sh exited with status 3)");
        assert_eq!(error_of("no such file"), "no such file");
    }

    #[test]
    fn a_hung_program_is_killed_at_the_time_limit() {
        let m = MeasureSettings {
            timeout_s: 1.0,
            ..quick()
        };
        let t0 = Instant::now();
        // The sleep is a grandchild: killing the process group ends it too.
        let e = failure(measure(r#"argv = ["/bin/sh", "-c", "sleep 60; true"]"#, m));
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
        assert!(
            e.contains("did not finish within 1 s (timeout_s) and was killed"),
            "{e}"
        );
    }

    #[test]
    fn an_unmatched_regex_names_its_pattern() {
        let e = failure(measure(
            r#"argv = ["echo", "nothing here"]
               [[metric]]
               name = "busbw"
               regex = 'busbw: ([0-9.]+)'"#,
            quick(),
        ));
        assert_eq!(
            e,
            "metric `busbw`: regex `busbw: ([0-9.]+)` matched nothing in the output of echo"
        );
    }

    #[test]
    fn bad_metric_lines_and_missing_programs_fail_clearly() {
        let e = failure(measure(
            r#"argv = ["/bin/sh", "-c", "echo 'step 3' >> $TAGBENCH_METRICS"]"#,
            quick(),
        ));
        assert!(
            e.starts_with("line 1 of $TAGBENCH_METRICS is not a metric"),
            "{e}"
        );
        let e = failure(measure(r#"argv = ["/nonexistent/tagbench-prog"]"#, quick()));
        assert!(e.starts_with("cannot start /nonexistent/tagbench-prog"), "{e}");
    }

    #[test]
    fn ranks_get_their_identity_and_rank_0_reports() {
        let script = r#"echo "{\"metric\":\"rank\",\"value\":$RANK}" >> "$TAGBENCH_METRICS"; test "$WORLD_SIZE" = 2 && test -n "$MASTER_PORT" && test "$LOCAL_RANK" = "$RANK""#;
        let out = measure(
            &format!("argv = [\"/bin/sh\", \"-c\", '{script}']\nranks = 2"),
            quick(),
        )
        .unwrap();
        assert_eq!(values(&out, "rank"), [0.0; 3]);
        let e = failure(measure(
            r#"argv = ["/bin/sh", "-c", 'if [ "$RANK" = 1 ]; then echo "rank one broke" >&2; exit 4; fi; sleep 30']
               ranks = 2"#,
            quick(),
        ));
        assert!(e.starts_with("rank 1 of 2: /bin/sh exited with status 4"), "{e}");
        assert!(e.ends_with("rank one broke"), "{e}");
    }

    #[test]
    fn the_program_starts_in_the_suite_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bench")).unwrap();
        let mut p: CommandParams = toml::from_str(
            r#"argv = ["/bin/sh", "-c", "test -d bench && echo ok: 1"]
               [[metric]]
               name = "ok"
               regex = 'ok: (\d)'"#,
        )
        .unwrap();
        p.check().unwrap();
        p.root = dir.path().display().to_string();
        let c = Case {
            workload: "c".into(),
            kind: WorkloadKind::Command,
            id: "default".into(),
            params: Params::Command(p.clone()),
            measure: quick(),
        };
        let out = run(&p, &c, Device::Cpu, CaseOutput::new("cpu")).unwrap();
        assert_eq!(values(&out, "ok"), [1.0; 3]);
    }
}
