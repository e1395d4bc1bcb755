//! `tagbench bisect`: which component of image B explains its regression against image A.
//!
//! From a run where B regressed against A, the components that differ (run.json: the image
//! config's environment, the Python distributions and the shared libraries the workers loaded)
//! are swapped from A into B, each swap a target of its own, measured beside A and B in
//! interleaved rounds as `run` does (a child `tagbench run` per round of the search, so that its
//! containers, lock and interrupt handling are the run's own). Groups first, then halves of the
//! group that gives A's speed back (`search.rs`), until one component, or a set that only moves
//! together, remains.
//!
//! Swaps, into B's containers:
//! - an environment variable: A's value, or removed (`unset_env`) where A has none;
//! - a Python distribution: A's top-level entries copied out of A's image through the Engine API
//!   (`executor/docker/extract.rs`), cached by image ID, mounted read-only and put first on
//!   `PYTHONPATH`;
//! - a shared library outside site-packages: A's file, mounted read-only and put first on
//!   `LD_LIBRARY_PATH`.
//!
//! A swap whose case fails or skips (an ImportError) is a trial that cannot run, not a verdict.
//! Each step's run id (`bisect-<id>-stepN`) labels its containers; on Ctrl-C or SIGTERM the step
//! is stopped and whatever still carries those labels is removed before the exit (130).

pub mod search;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use self::search::{search, Found, Trial, TrialOutcome, Trials};
use crate::compare::changes::Group;
use crate::compare::{compare_along, CompareOptions, LoadedRun, Verdict};
use crate::components::{Distribution, Library};
use crate::outcome::Outcome;
use crate::render::Format;
use crate::results::TargetMeta;
use crate::suite::target::TargetMount;
use crate::suite::TargetSpec;
use crate::{errln, out};

/// The step's child `tagbench run` while it runs (pid 0: none) and its run id: an interrupt of
/// the bisect stops it (it removes its own containers and marks its run interrupted), and the
/// bisect removes what is still labelled with that run.
static STEP: std::sync::Mutex<(i32, String)> = std::sync::Mutex::new((0, String::new()));

/// How long a step's `tagbench run` gets to clean up after SIGTERM before it is killed.
const STEP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// On Ctrl-C or SIGTERM: SIGTERM to the running step, up to [`STEP_GRACE`] for it to end (then
/// SIGKILL), then the containers still labelled with its run are removed. A Ctrl-C at the
/// terminal reaches the step too (one process group): it is then already cleaning up.
fn stop_step_on_interrupt() {
    crate::sys::interrupt::on_interrupt("bisect step", || {
        let (pid, run) = STEP.lock().map(|s| s.clone()).unwrap_or_default();
        if pid > 0 {
            // SAFETY: kill(2) with a pid this process started; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            // SAFETY: signal 0 only asks whether the process still exists (the main thread,
            // in `wait`, reaps it).
            let alive = || unsafe { libc::kill(pid, 0) } == 0;
            let until = std::time::Instant::now() + STEP_GRACE;
            while alive() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if alive() {
                // SAFETY: as above; a step that did not end in the grace period is killed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !run.is_empty() {
            match crate::executor::docker::remove_run_containers(&run) {
                Ok(removed) => removed.iter().for_each(|r| eprintln!("{r}")),
                Err(e) => eprintln!("error: {e:#}; `tagbench clean --run {run}` removes them"),
            }
        }
    });
}

fn set_step(pid: i32, run: &str) {
    if let Ok(mut s) = STEP.lock() {
        *s = (pid, run.to_string());
    }
}

/// Where swapped files go inside B's containers.
const SWAP_ROOT: &str = "/opt/tagbench/swap";

/// `tagbench bisect`'s options.
#[derive(Debug, Clone)]
pub struct BisectOptions {
    pub run: PathBuf,
    pub baseline: String,
    pub candidate: String,
    pub rounds: usize,
    pub work_dir: Option<PathBuf>,
    pub format: Format,
}

/// How a component is put back into B.
#[derive(Debug, Clone, PartialEq)]
enum Swap {
    /// A's value of an environment variable; `None`: A does not set it.
    Env(Option<String>),
    /// A's copy of a Python distribution.
    Python(Distribution),
    /// A's copy of a shared library.
    Library(Library),
}

/// One component that differs between A and B.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub group: &'static str,
    pub key: String,
    /// A's value (version, build-id); empty where A has none.
    pub baseline: String,
    pub candidate: String,
    #[serde(skip)]
    swap: Swap,
    #[serde(skip)]
    group_id: Group,
}

/// A regressed metric of the original comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Regressed {
    pub workload: String,
    pub case: String,
    pub metric: String,
    pub ratio: Option<f64>,
    pub ci: Option<(f64, f64)>,
}

/// What `bisect` found.
#[derive(Debug, Clone, Serialize)]
pub struct BisectReport {
    pub run: String,
    pub baseline: String,
    pub candidate: String,
    pub regressed: Vec<Regressed>,
    pub components: Vec<Component>,
    /// Differences no swap can undo (a distribution or library only B has, image identity).
    pub not_swappable: Vec<String>,
    pub trials: Vec<Trial>,
    /// B measured again beside each round's swaps (no component swapped).
    pub controls: Vec<Trial>,
    pub found: Found,
    pub answer: String,
}

fn target_meta<'a>(meta: &'a crate::results::RunMeta, name: &str) -> Result<&'a TargetMeta> {
    meta.targets.iter().find(|t| t.name == name).with_context(|| {
        let names: Vec<&str> = meta.targets.iter().map(|t| t.name.as_str()).collect();
        format!("no target `{name}` in run.json; the run's targets are {names:?}")
    })
}

/// A library that belongs to a Python distribution (it lies in site-packages) is swapped with
/// its distribution, not on its own.
fn in_site_packages(path: &str) -> bool {
    path.contains("/site-packages/") || path.contains("/dist-packages/")
}

/// The components that differ between A and B, and the differences no swap can undo.
fn differences(a: &TargetMeta, b: &TargetMeta) -> (Vec<Component>, Vec<String>) {
    let mut out = Vec::new();
    let mut not = Vec::new();
    let mut push = |group: Group, key: String, old: String, new: String, swap: Swap| {
        out.push(Component {
            group: group.title(),
            key,
            baseline: old,
            candidate: new,
            swap,
            group_id: group,
        })
    };
    let keys: std::collections::BTreeSet<&String> = a.image_env.keys().chain(b.image_env.keys()).collect();
    for k in keys {
        let (old, new) = (a.image_env.get(k), b.image_env.get(k));
        if old != new {
            push(
                Group::Environment,
                k.clone(),
                old.cloned().unwrap_or_default(),
                new.cloned().unwrap_or_default(),
                Swap::Env(old.cloned()),
            );
        }
    }
    let empty = crate::components::Components::default();
    let (ca, cb) = (
        a.components.as_ref().unwrap_or(&empty),
        b.components.as_ref().unwrap_or(&empty),
    );
    let dists = |c: &crate::components::Components| -> BTreeMap<String, Distribution> {
        c.python
            .iter()
            .map(|d| (d.name.to_ascii_lowercase(), d.clone()))
            .collect()
    };
    let (da, db) = (dists(ca), dists(cb));
    for (name, d) in &da {
        match db.get(name) {
            Some(e) if e.version == d.version => {}
            other => {
                if d.location.is_empty() || d.top_level.is_empty() {
                    not.push(format!(
                        "Python package {name}: run.json has no file list for A's copy"
                    ));
                    continue;
                }
                push(
                    Group::Python,
                    name.clone(),
                    d.version.clone(),
                    other.map(|e| e.version.clone()).unwrap_or_default(),
                    Swap::Python(d.clone()),
                )
            }
        }
    }
    for name in db.keys().filter(|n| !da.contains_key(*n)) {
        not.push(format!("Python package {name}: only in {}", b.name));
    }
    let libs = |c: &crate::components::Components| -> BTreeMap<String, Library> {
        c.libraries
            .iter()
            .filter(|l| !in_site_packages(&l.path) && !l.soname.contains(".cpython-"))
            .map(|l| (l.soname.clone(), l.clone()))
            .collect()
    };
    let (la, lb) = (libs(ca), libs(cb));
    for (soname, l) in &la {
        let same = lb
            .get(soname)
            .is_some_and(|m| m.build_id == l.build_id && m.version == l.version && m.size == l.size);
        if !same {
            let describe = |l: &Library| {
                format!("{} {}", l.version, &l.build_id[..l.build_id.len().min(12)])
                    .trim()
                    .to_string()
            };
            push(
                Group::Libraries,
                soname.clone(),
                describe(l),
                lb.get(soname).map(describe).unwrap_or_default(),
                Swap::Library(l.clone()),
            )
        }
    }
    for soname in lb.keys().filter(|n| !la.contains_key(*n)) {
        not.push(format!("library {soname}: only loaded in {}", b.name));
    }
    out.sort_by_key(|c| c.group_id);
    (out, not)
}

/// The metrics on which B regressed against A in the run.
fn regressed(run: &LoadedRun, a: &str, b: &str) -> Result<Vec<Regressed>> {
    let report = compare_along(std::slice::from_ref(run), "target", a, &CompareOptions::default())?;
    Ok(report
        .comparisons
        .iter()
        .filter(|c| c.candidate.label == b && c.verdict == Verdict::Regression)
        .map(|c| Regressed {
            workload: c.workload.clone(),
            case: c.case.clone(),
            metric: c.metric.clone(),
            ratio: c.judgement.ratio,
            ci: c.judgement.ci_low.zip(c.judgement.ci_high),
        })
        .collect())
}

/// The state of one bisect: what each round measures and where.
struct Bench<'a> {
    opts: &'a BisectOptions,
    suite_text: String,
    a: TargetSpec,
    b: TargetSpec,
    b_meta: &'a TargetMeta,
    a_image: String,
    a_image_id: String,
    components: &'a [Component],
    regressed: &'a [Regressed],
    work: PathBuf,
    label: String,
    controls: Vec<Trial>,
}

impl Bench<'_> {
    fn cache_dir(&self) -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        let id = self.a_image_id.trim_start_matches("sha256:");
        base.join("tagbench/bisect").join(&id[..id.len().min(16)])
    }

    /// Copies `paths` of A's image into `dir` once (a `.complete` marker says it is whole).
    fn copied(&self, dir: &Path, paths: &[String]) -> Result<()> {
        if dir.join(".complete").exists() {
            return Ok(());
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        crate::executor::docker::extract::copy_out(&self.a_image, paths, dir, &self.label)?;
        std::fs::write(dir.join(".complete"), b"")?;
        Ok(())
    }

    /// B with the set `set` of A's components swapped in.
    fn swapped(&self, name: String, set: &[usize]) -> Result<TargetSpec> {
        let mut t = self.b.clone();
        t.name = Some(name);
        let (mut py, mut ld) = (Vec::new(), Vec::new());
        for &i in set {
            let c = &self.components[i];
            match &c.swap {
                Swap::Env(Some(v)) => {
                    t.env.insert(c.key.clone(), v.clone());
                }
                Swap::Env(None) => t.unset_env.push(c.key.clone()),
                Swap::Python(d) => {
                    let dir = self
                        .cache_dir()
                        .join("python")
                        .join(format!("{}-{}", d.name, d.version).replace('/', "_"));
                    let paths: Vec<String> = d
                        .top_level
                        .iter()
                        .map(|top| format!("{}/{top}", d.location.trim_end_matches('/')))
                        .collect();
                    self.copied(&dir, &paths)?;
                    let target = format!("{SWAP_ROOT}/python/{i}");
                    t.mounts.push(TargetMount {
                        source: dir,
                        target: target.clone(),
                    });
                    py.push(target);
                }
                Swap::Library(l) => {
                    let dir = self.cache_dir().join("lib").join(&l.soname);
                    self.copied(&dir, std::slice::from_ref(&l.path))?;
                    // The loader looks the library up by its soname.
                    let file = l.path.rsplit('/').next().unwrap_or(&l.path);
                    let by_soname = dir.join(&l.soname);
                    if file != l.soname && !by_soname.exists() {
                        std::os::unix::fs::symlink(file, &by_soname)?;
                    }
                    let target = format!("{SWAP_ROOT}/lib/{i}");
                    t.mounts.push(TargetMount {
                        source: dir,
                        target: target.clone(),
                    });
                    ld.push(target);
                }
            }
        }
        for (var, dirs) in [("PYTHONPATH", py), ("LD_LIBRARY_PATH", ld)] {
            if dirs.is_empty() {
                continue;
            }
            let mut v = dirs.join(":");
            if let Some(old) = self.b_meta.image_env.get(var).filter(|o| !o.is_empty()) {
                v = format!("{v}:{old}");
            }
            t.env.insert(var.into(), v);
        }
        Ok(t)
    }

    /// The suite of one round: the run's suite with these targets and a fixed number of rounds.
    fn suite(&self, targets: &[TargetSpec]) -> Result<String> {
        let mut doc: toml::Table =
            toml::from_str(&self.suite_text).context("the run's suite.toml does not parse")?;
        doc.remove("target");
        let defaults = doc
            .entry("defaults")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(d) = defaults {
            d.remove("min_rounds");
            d.remove("max_rounds");
            d.insert("rounds".into(), toml::Value::Integer(self.opts.rounds as i64));
        }
        let targets = toml::Value::try_from(targets).context("failed to write the round's targets")?;
        doc.insert("target".into(), targets);
        Ok(toml::to_string(&doc)?)
    }

    /// Measures one round of the search: A, B and each swapped B, in one child `tagbench run`.
    fn measure(&mut self, step: usize, round: &Trials) -> Result<Vec<Trial>> {
        let a_name = self.a.display_name();
        let b_name = self.b.display_name();
        let mut targets = vec![self.a.clone(), self.b.clone()];
        let mut names = Vec::new();
        for (i, set) in round.iter().enumerate() {
            let keys: Vec<&str> = set.iter().map(|&c| self.components[c].key.as_str()).collect();
            errln!("bisect step {step}: swap {} of A into B", keys.join(", "));
            let name = format!("{b_name} + swap {step}.{}", i + 1);
            targets.push(self.swapped(name.clone(), set)?);
            names.push(name);
        }
        let suite_path = self.work.join(format!("step{step}.toml"));
        std::fs::write(&suite_path, self.suite(&targets)?)?;
        // Unique to this bisect: containers are labelled with the run id, and an interrupt or
        // `tagbench clean --run` removes them by it.
        let run_id = format!("{}-step{step}", self.label);
        let log = self.work.join(format!("step{step}.log"));
        let exe = std::env::current_exe().context("cannot find the tagbench binary")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("run")
            .arg(&suite_path)
            .arg("--results-dir")
            .arg(&self.work)
            .args([
                "--run-id",
                &run_id,
                "--no-report",
                "--no-progress",
                "--baseline",
                &a_name,
            ]);
        for r in self.regressed {
            cmd.args(["--filter", &format!("{}/{}", r.workload, r.case)]);
        }
        cmd.stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .stdin(Stdio::null());
        // A bisect killed outright (SIGKILL) leaves its step to clean up as on Ctrl-C.
        crate::sys::signal_with_parent(&mut cmd, libc::SIGTERM);
        let mut child = {
            // The interrupt handler sets `interrupted` before it reads STEP: either this sees
            // it and starts nothing, or the handler finds the child started here.
            let mut current = STEP.lock().unwrap_or_else(|e| e.into_inner());
            if crate::sys::interrupt::interrupted() {
                drop(current);
                crate::sys::interrupt::hold_if_interrupted();
                bail!("interrupted");
            }
            let child = cmd
                .spawn()
                .context("failed to start `tagbench run` for a bisect step")?;
            *current = (child.id() as i32, run_id.clone());
            child
        };
        let status = child.wait();
        set_step(0, &run_id);
        // Interrupted: the handler is stopping the step and will exit 130; no further step
        // may start meanwhile, and no verdict comes from a step cut short.
        crate::sys::interrupt::hold_if_interrupted();
        let status = status?;
        let dir = self.work.join(&run_id);
        if !dir.join("results.csv").exists() {
            bail!(
                "bisect step {step}: `tagbench run` exited with {status} and measured nothing; see {}",
                log.with_extension("err").display()
            );
        }
        let run = LoadedRun::load(&dir)?;
        let opts = CompareOptions::default();
        let vs_a = compare_along(std::slice::from_ref(&run), "target", &a_name, &opts)?;
        let vs_b = compare_along(std::slice::from_ref(&run), "target", &b_name, &opts)?;
        // The control asks one question of its own, whether B measured beside the swaps is
        // still slower than A: it is judged as its own family (A and B only), not Holm-corrected
        // over the swaps' tests, which would make a clear 1.6x slowdown of five rounds `noisy`.
        let control_run = LoadedRun {
            measurements: run
                .measurements
                .iter()
                .filter(|m| m.row.target == a_name || m.row.target == b_name)
                .cloned()
                .collect(),
            ..run.clone()
        };
        let control_vs_a = compare_along(std::slice::from_ref(&control_run), "target", &a_name, &opts)?;
        let regressed = self.regressed;
        let of = |report: &crate::compare::CompareReport, name: &str| -> Vec<crate::compare::Comparison> {
            report
                .comparisons
                .iter()
                .filter(|c| {
                    c.candidate.label == name
                        && regressed
                            .iter()
                            .any(|r| r.workload == c.workload && r.case == c.case && r.metric == c.metric)
                })
                .cloned()
                .collect()
        };
        // A swap recovers when B with it is faster than B (an improvement, judged in this
        // step beside B) and no longer a regression against A, on every regressed metric.
        let judge = |vs_a: &crate::compare::CompareReport, name: &str, set: &[usize]| -> Trial {
            let against_a = of(vs_a, name);
            let against_b = of(&vs_b, name);
            // The step runs only the regressed cases: a failed or skipped row of the swapped B
            // is a swap that cannot run (an ImportError in a program, torch that no longer
            // imports), whose error the table shows instead of a verdict.
            let failed = run.measurements.iter().find(|m| {
                m.row.target == name
                    && matches!(
                        m.row.status,
                        crate::results::Status::Failed | crate::results::Status::Skipped
                    )
            });
            let first = against_a.first();
            let outcome = if let Some(f) = failed {
                TrialOutcome::CannotRun {
                    reason: crate::engine::command::error_of(&f.row.reason),
                }
            } else if against_a.len() < regressed.len()
                || against_a
                    .iter()
                    .any(|c| matches!(c.verdict, Verdict::Missing | Verdict::Failed))
            {
                TrialOutcome::CannotRun {
                    reason: "no measurement of the regressed cases".into(),
                }
            } else if !set.is_empty()
                && against_a.iter().all(|c| c.verdict != Verdict::Regression)
                && against_b.len() == against_a.len()
                && against_b.iter().all(|c| c.verdict == Verdict::Improvement)
            {
                TrialOutcome::Recovers
            } else {
                TrialOutcome::Still
            };
            Trial {
                step,
                components: set.to_vec(),
                outcome,
                ratio: first.and_then(|c| c.judgement.ratio),
                ci: first.and_then(|c| c.judgement.ci_low.zip(c.judgement.ci_high)),
                verdict: first.map(|c| c.verdict.as_str().to_string()).unwrap_or_default(),
            }
        };
        self.controls.push(judge(&control_vs_a, &b_name, &[]));
        Ok(round
            .iter()
            .zip(&names)
            .map(|(set, name)| judge(&vs_a, name, set))
            .collect())
    }
}

fn pct(r: f64) -> String {
    format!("{:+.1}%", (r - 1.0) * 100.0)
}

/// The one-line answer.
fn answer(report: &BisectReport) -> String {
    let Some(first) = report.regressed.first() else {
        return String::new();
    };
    let what = format!("{}/{} {}", first.workload, first.case, first.metric);
    let change = match (first.ratio, first.ci) {
        (Some(r), Some((lo, hi))) => format!("{} [{}, {}]", pct(r), pct(lo), pct(hi)),
        (Some(r), None) => pct(r),
        _ => "the regression".into(),
    };
    let Some(trial) = &report.found.trial else {
        if report.components.is_empty() {
            return format!(
                "no swappable component differs between {} and {}: {change} of {what} is in what run.json does not record (image files outside site-packages, the kernel the image's libraries pick)",
                report.baseline, report.candidate
            );
        }
        return format!(
            "no swap of A's components into B gives back A's speed on {what} ({change}): the cause is in what cannot be swapped ({})",
            if report.not_swappable.is_empty() { "files outside site-packages, image layers".to_string() } else { report.not_swappable.join("; ") }
        );
    };
    let names: Vec<String> = report
        .found
        .components
        .iter()
        .map(|&i| {
            let c = &report.components[i];
            let side = |v: &str| {
                if v.is_empty() {
                    "(unset)".to_string()
                } else {
                    v.to_string()
                }
            };
            format!("`{}` {} → {}", c.key, side(&c.candidate), side(&c.baseline))
        })
        .collect();
    let verb = if names.len() > 1 { "explain" } else { "explains" };
    let together = if report.found.together {
        " (together: neither half alone does)"
    } else {
        ""
    };
    let after = match (trial.verdict.as_str(), trial.ratio) {
        ("same", _) => format!("`same` as {}", report.baseline),
        (v, Some(r)) => format!("{r:.3}× {} (`{v}`)", report.baseline),
        (v, None) => format!("`{v}` against {}", report.baseline),
    };
    format!(
        "{}{together} {verb} {change} of {what}; with {} swapped back, {} measures {after}",
        names.join(", "),
        if names.len() > 1 { "them" } else { "it" },
        report.candidate,
    )
}

fn set_text(report: &BisectReport, set: &[usize]) -> String {
    if set.is_empty() {
        return "(none: B as it is)".into();
    }
    set.iter()
        .map(|&i| report.components[i].key.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcome_text(t: &Trial) -> String {
    match &t.outcome {
        TrialOutcome::Recovers => "recovers".into(),
        TrialOutcome::Still => "still slower".into(),
        TrialOutcome::CannotRun { reason } => format!("cannot run: {reason}"),
    }
}

/// The report as text, markdown or JSON.
pub fn render(report: &BisectReport, format: Format) -> Result<String> {
    use std::fmt::Write;
    let rows: Vec<[String; 5]> = report
        .controls
        .iter()
        .chain(&report.trials)
        .map(|t| {
            [
                t.step.to_string(),
                set_text(report, &t.components),
                t.ratio.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into()),
                t.verdict.clone(),
                outcome_text(t),
            ]
        })
        .collect();
    let head = [
        "step",
        "swapped from A into B",
        "ratio vs A",
        "verdict",
        "outcome",
    ];
    let mut o = String::new();
    match format {
        Format::Json => return Ok(serde_json::to_string_pretty(report)? + "\n"),
        Format::Markdown => {
            let _ = writeln!(
                o,
                "## bisect: {} against {}\n",
                crate::render::escape::md_escape(&report.candidate),
                crate::render::escape::md_escape(&report.baseline)
            );
            let _ = writeln!(o, "| {} |\n|{}", head.join(" | "), "---|".repeat(head.len()));
            for r in &rows {
                let cells: Vec<String> = r.iter().map(|c| crate::render::escape::md_escape(c)).collect();
                let _ = writeln!(o, "| {} |", cells.join(" | "));
            }
            let _ = writeln!(
                o,
                "\n**Answer:** {}",
                crate::render::escape::md_escape(&report.answer)
            );
        }
        _ => {
            let _ = writeln!(
                o,
                "bisect: {} against {} on {} regressed metric(s) of {}",
                report.candidate,
                report.baseline,
                report.regressed.len(),
                report.run
            );
            let _ = writeln!(o, "components that differ: {}", report.components.len());
            for c in &report.components {
                let _ = writeln!(
                    o,
                    "  {:<12} {}  {} -> {}",
                    c.group,
                    c.key,
                    crate::compare::changes::or_dash(&c.baseline),
                    crate::compare::changes::or_dash(&c.candidate)
                );
            }
            for n in &report.not_swappable {
                let _ = writeln!(o, "  not swappable: {n}");
            }
            let all: Vec<Vec<String>> = std::iter::once(head.map(String::from).to_vec())
                .chain(rows.into_iter().map(|r| r.to_vec()))
                .collect();
            o.push_str(&crate::render::table::aligned(&all, |col| col == 2));
            let _ = writeln!(o, "\nanswer: {}", report.answer);
        }
    }
    Ok(o)
}

/// `tagbench bisect`.
pub fn cmd_bisect(opts: BisectOptions) -> Result<Outcome> {
    let result = bisect(opts);
    // An interrupt's clean-up removes what a step or a copy out of an image was using, which
    // may end this thread's work in an error first: the handler's exit (130) is the outcome.
    crate::sys::interrupt::hold_if_interrupted();
    result
}

fn bisect(opts: BisectOptions) -> Result<Outcome> {
    if opts.rounds < 3 {
        bail!(
            "--rounds {}: a verdict needs at least 3 rounds a side",
            opts.rounds
        );
    }
    let run = LoadedRun::load(&opts.run)?;
    let meta = run.meta.as_ref().with_context(|| {
        format!(
            "{} has no run.json: bisect needs the targets' components",
            opts.run.display()
        )
    })?;
    let (ma, mb) = (
        target_meta(meta, &opts.baseline)?,
        target_meta(meta, &opts.candidate)?,
    );
    for t in [ma, mb] {
        if t.executor != "docker" || t.image.is_empty() {
            bail!(
                "target `{}` ran on the {} executor: bisect swaps components between images run by the docker executor",
                t.name,
                t.executor
            );
        }
    }
    let regressed = regressed(&run, &opts.baseline, &opts.candidate)?;
    if regressed.is_empty() {
        crate::outln!(
            "{} is not slower than {} on any metric of {}: nothing to bisect",
            opts.candidate,
            opts.baseline,
            opts.run.display()
        )?;
        return Ok(Outcome::Complete);
    }
    let (components, not_swappable) = differences(ma, mb);
    let suite_text = std::fs::read_to_string(run.dir.join("suite.toml"))
        .with_context(|| format!("failed to read {}", run.dir.join("suite.toml").display()))?;
    let spec = |t: &TargetMeta| TargetSpec {
        name: Some(t.name.clone()),
        image: Some(t.image.clone()),
        engine: Some(if t.engine == "torch" {
            crate::case::EngineKind::Torch
        } else {
            crate::case::EngineKind::Native
        }),
        device: Some(if t.device.starts_with("cuda") {
            crate::case::Device::Cuda
        } else {
            crate::case::Device::Cpu
        }),
        pull: Some(crate::suite::PullPolicy::Never),
        ..Default::default()
    };
    let nonce: u32 = rand::random();
    let work = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| run.dir.join(format!("bisect-{nonce:08x}")));
    std::fs::create_dir_all(&work).with_context(|| format!("failed to create {}", work.display()))?;
    let label = format!("bisect-{nonce:08x}");
    crate::executor::docker::remove_containers_on_interrupt(&label);
    stop_step_on_interrupt();
    errln!(
        "bisect runs in {} (runs {label}-step1, {label}-step2, …)",
        work.display()
    );
    let mut bench = Bench {
        opts: &opts,
        suite_text,
        a: spec(ma),
        b: spec(mb),
        b_meta: mb,
        a_image: ma.image.clone(),
        a_image_id: ma.image_id.clone(),
        components: &components,
        regressed: &regressed,
        work: work.clone(),
        label,
        controls: Vec::new(),
    };
    let groups: Vec<Group> = components.iter().map(|c| c.group_id).collect();
    let mut trials = Vec::new();
    let found = search(&groups, |step, round| bench.measure(step, round), &mut trials)?;
    let controls = std::mem::take(&mut bench.controls);
    let mut report = BisectReport {
        run: opts.run.display().to_string(),
        baseline: opts.baseline.clone(),
        candidate: opts.candidate.clone(),
        regressed,
        components,
        not_swappable,
        trials,
        controls,
        found,
        answer: String::new(),
    };
    report.answer = answer(&report);
    out!("{}", render(&report, opts.format)?)?;
    Ok(Outcome::Regression)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::Components;

    fn meta(name: &str, env: &[(&str, &str)], dists: &[(&str, &str)], libs: &[(&str, &str)]) -> TargetMeta {
        TargetMeta {
            name: name.into(),
            executor: "docker".into(),
            image: name.into(),
            image_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            components: Some(Components::new(
                libs.iter()
                    .map(|(path, id)| Library {
                        path: path.to_string(),
                        soname: path.rsplit('/').next().unwrap().to_string(),
                        build_id: id.to_string(),
                        size: 1,
                        ..Default::default()
                    })
                    .collect(),
                dists
                    .iter()
                    .map(|(n, v)| Distribution {
                        name: n.to_string(),
                        version: v.to_string(),
                        location: "/usr/lib/python3/site-packages".into(),
                        top_level: vec![n.to_string()],
                        imported: true,
                    })
                    .collect(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn differences_are_what_can_be_swapped_from_a_into_b() {
        let a = meta(
            "a",
            &[("PATH", "/bin"), ("MKL_CBWR", "AVX2")],
            &[("torch", "2.9.1"), ("numpy", "2.1.0")],
            &[
                ("/usr/lib/libgomp.so.1", "aa"),
                ("/x/site-packages/torch/lib/libtorch_cpu.so", "t1"),
            ],
        );
        let b = meta(
            "b",
            &[("PATH", "/bin"), ("OMP_NUM_THREADS", "1")],
            &[("torch", "2.10.0"), ("numpy", "2.1.0"), ("triton", "3.5.0")],
            &[
                ("/usr/lib/libgomp.so.1", "bb"),
                ("/x/site-packages/torch/lib/libtorch_cpu.so", "t2"),
            ],
        );
        let (c, not) = differences(&a, &b);
        let got: Vec<(&str, &str, &str, &str)> = c
            .iter()
            .map(|c| (c.group, c.key.as_str(), c.baseline.as_str(), c.candidate.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("environment", "MKL_CBWR", "AVX2", ""),
                ("environment", "OMP_NUM_THREADS", "", "1"),
                ("Python packages", "torch", "2.9.1", "2.10.0"),
                ("libraries", "libgomp.so.1", "aa", "bb"),
            ]
        );
        assert_eq!(c[1].swap, Swap::Env(None), "unset where A has none");
        // libtorch_cpu.so moves with its distribution; triton has no copy in A.
        assert_eq!(not, ["Python package triton: only in b"]);
    }

    /// Each step's suite is the run's suite with the step's targets and a fixed design, and
    /// it loads as a suite: mounts, unset variables and all.
    #[test]
    fn a_steps_suite_loads_with_its_swapped_targets() {
        let opts = BisectOptions {
            run: "r".into(),
            baseline: "a".into(),
            candidate: "b".into(),
            rounds: 4,
            work_dir: None,
            format: Format::Table,
        };
        let b_meta = meta("b", &[], &[], &[]);
        let bench = Bench {
            opts: &opts,
            suite_text: "name = \"s\"\n[defaults]\nmin_rounds = 5\nmax_rounds = 9\n\n[[target]]\nimage = \"old\"\n\n[[workload]]\nkind = \"gemm\"\nsize = 64\n".into(),
            a: TargetSpec {
                name: Some("a".into()),
                image: Some("repo/a:1".into()),
                ..Default::default()
            },
            b: TargetSpec::default(),
            b_meta: &b_meta,
            a_image: "repo/a:1".into(),
            a_image_id: "sha256:0123".into(),
            components: &[],
            regressed: &[],
            work: PathBuf::new(),
            label: "l".into(),
            controls: Vec::new(),
        };
        let mut swapped = TargetSpec {
            name: Some("b + swap 1.1".into()),
            image: Some("repo/b:1".into()),
            unset_env: vec!["OMP_NUM_THREADS".into()],
            ..Default::default()
        };
        swapped
            .env
            .insert("PYTHONPATH".into(), "/opt/tagbench/swap/python/0".into());
        swapped.mounts.push(TargetMount {
            source: "/tmp".into(),
            target: "/opt/tagbench/swap/python/0".into(),
        });
        let text = bench.suite(&[bench.a.clone(), swapped.clone()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step1.toml");
        std::fs::write(&path, &text).unwrap();
        let suite = crate::suite::Suite::load(&path, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(suite.targets.len(), 2, "{text}");
        assert_eq!(suite.targets[1], swapped, "{text}");
        assert!(
            !text.contains("min_rounds") && text.contains("rounds = 4"),
            "{text}"
        );
    }
}
