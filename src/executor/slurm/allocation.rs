//! The run's one Slurm allocation: `salloc --no-shell` (or the job tagbench runs inside,
//! `SLURM_JOB_ID`), its node names, cancelled when the run ends or on Ctrl-C. Targets of one run
//! share it through a registry keyed by the run id.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::command::{
    parse_allocation_line, parse_hostnames, parse_job_nodelist, parse_node_addr, salloc_args, scancel_args,
    DEFAULT_PENDING_TIMEOUT_S,
};
use super::poll;
use crate::suite::SlurmSettings;

/// How long a Slurm client command (scancel, scontrol) may take: they hang for a long time
/// when slurmctld is down.
pub(super) const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a cancelled job or step may take to end before tagbench warns that it is left.
pub(super) const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// A granted allocation.
#[derive(Debug)]
pub struct Allocation {
    pub job_id: String,
    /// Node names, in Slurm's order (`scontrol show hostnames`).
    pub nodes: Vec<String>,
    /// Seconds from `salloc` to the grant (0 for a reused allocation).
    pub allocation_s: f64,
    /// Whether tagbench made it (and so cancels it); a reused `SLURM_JOB_ID` is left alone.
    owned: bool,
    /// Steps running now (`J.S`), cancelled on Ctrl-C when the allocation is not ours.
    pub(super) steps: Arc<Mutex<BTreeSet<String>>>,
    /// The first node's address: MASTER_ADDR of multi-rank steps, looked up once when needed.
    master_addr: OnceLock<Result<String, String>>,
}

/// The allocations of the runs in this process, by run id.
static REGISTRY: Mutex<Vec<(String, Weak<Allocation>)>> = Mutex::new(Vec::new());

impl Allocation {
    /// The run's allocation, made on first use; every target of the run shares it and it is
    /// cancelled when the last one lets go.
    pub fn shared(run_id: &str, settings: &SlurmSettings) -> Result<Arc<Allocation>> {
        let mut reg = REGISTRY
            .lock()
            .map_err(|_| anyhow::anyhow!("allocation registry poisoned"))?;
        reg.retain(|(_, w)| w.strong_count() > 0);
        if let Some(a) = reg
            .iter()
            .find(|(r, _)| r == run_id)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(a);
        }
        let a = Arc::new(Allocation::acquire(run_id, settings)?);
        reg.push((run_id.to_string(), Arc::downgrade(&a)));
        Ok(a)
    }

    fn acquire(run_id: &str, settings: &SlurmSettings) -> Result<Allocation> {
        let steps: Arc<Mutex<BTreeSet<String>>> = Arc::new(Mutex::new(BTreeSet::new()));
        if let Some(job) = std::env::var("SLURM_JOB_ID")
            .ok()
            .filter(|j| !j.trim().is_empty())
        {
            let nodes = job_nodes(&job)?;
            let running = steps.clone();
            // Not our allocation: Ctrl-C cancels only the steps we started in it.
            crate::sys::interrupt::on_interrupt(&format!("slurm steps of job {job}"), move || {
                if let Ok(s) = running.lock() {
                    for id in s.iter() {
                        let _ = run_bounded(&scancel_args(id), CLIENT_TIMEOUT);
                    }
                }
            });
            return Ok(Allocation {
                job_id: job,
                nodes,
                allocation_s: 0.0,
                owned: false,
                steps,
                master_addr: OnceLock::new(),
            });
        }
        let started = Instant::now();
        let job = salloc(run_id, settings)?;
        let allocation_s = started.elapsed().as_secs_f64();
        let id = job.clone();
        crate::sys::interrupt::on_interrupt(&format!("slurm job {job}"), move || {
            eprintln!("cancelling slurm job {id}");
            let _ = cancel(&id, Duration::from_secs(5));
        });
        let nodes = job_nodes(&job).inspect_err(|_| {
            let _ = run_bounded(&scancel_args(&job), CLIENT_TIMEOUT);
        })?;
        Ok(Allocation {
            job_id: job,
            nodes,
            allocation_s,
            owned: true,
            steps,
            master_addr: OnceLock::new(),
        })
    }

    /// The address of the allocation's first node (`scontrol show hostnames` order): where
    /// rank 0 of a multi-rank step runs and the others meet it (torch's MASTER_ADDR). Its
    /// `NodeAddr`, since a node's name need not resolve.
    pub fn master_addr(&self) -> Result<String> {
        self.master_addr
            .get_or_init(|| {
                let first = &self.nodes[0];
                let args: Vec<String> = ["scontrol", "show", "node", first.as_str()]
                    .map(String::from)
                    .to_vec();
                let out = run_bounded(&args, CLIENT_TIMEOUT).map_err(|e| format!("{e:#}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "`scontrol show node {first}` failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Ok(parse_node_addr(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|| first.clone()))
            })
            .clone()
            .map_err(|e| anyhow::anyhow!("failed to find the address of slurm node {}: {e}", self.nodes[0]))
    }
}

/// `scancel` of a job or step, then polls until Slurm says it ended (at most `limit`): the
/// next step or run must not find its nodes still busy. An error when it is still active.
pub(super) fn cancel(id: &str, limit: Duration) -> Result<()> {
    run_bounded(&scancel_args(id), CLIENT_TIMEOUT)?;
    if let Some(state) = poll::wait_ended(id, limit)? {
        bail!(
            "slurm job {id} is still {state} {} s after scancel",
            limit.as_secs()
        );
    }
    Ok(())
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = cancel(&self.job_id, CANCEL_WAIT) {
                eprintln!(
                    "warning: failed to cancel slurm job {}: {e:#}; `scancel {}` does",
                    self.job_id, self.job_id
                );
            }
        }
    }
}

/// `salloc --no-shell`: the job id once granted; an allocation still pending past the limit is
/// cancelled (by Slurm, through `--immediate`, and here again in case salloc itself hangs).
fn salloc(run_id: &str, s: &SlurmSettings) -> Result<String> {
    let name = format!("tagbench-{}", crate::sys::safe_name(run_id));
    let args = salloc_args(s, &name);
    let limit = s.pending_timeout_s.unwrap_or(DEFAULT_PENDING_TIMEOUT_S);
    let out = run_bounded(&args, Duration::from_secs(limit + 30))
        .with_context(|| format!("failed to run `{}`", args.join(" ")))?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut pending = None;
    for line in text.lines() {
        match parse_allocation_line(line) {
            Some((true, id)) if out.status.success() => return Ok(id),
            Some((_, id)) => pending = Some(id),
            None => {}
        }
    }
    if let Some(id) = &pending {
        if let Err(e) = cancel(id, CANCEL_WAIT) {
            eprintln!("warning: failed to cancel the pending slurm job {id}: {e:#}; `scancel {id}` does");
        }
    }
    let said: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let said = said.join(" | ");
    if said.contains("Immediate execution impossible") || out.status.code().is_none() || pending.is_some() {
        bail!(
            "the slurm allocation stayed pending past {limit} s (pending_timeout_s) and was cancelled: {said}"
        );
    }
    bail!("failed to get a slurm allocation (`{}`): {said}", args.join(" "))
}

/// The node names of job `job`: `scontrol show job`, then `scontrol show hostnames`.
pub fn job_nodes(job: &str) -> Result<Vec<String>> {
    let show = run_bounded(
        &["scontrol".into(), "show".into(), "job".into(), job.into()],
        CLIENT_TIMEOUT,
    )?;
    let text = String::from_utf8_lossy(&show.stdout);
    let Some(list) = parse_job_nodelist(&text) else {
        bail!(
            "slurm job {job} has no nodes (`scontrol show job {job}`: {})",
            String::from_utf8_lossy(&show.stderr).trim()
        );
    };
    let names = run_bounded(
        &["scontrol".into(), "show".into(), "hostnames".into(), list.clone()],
        CLIENT_TIMEOUT,
    )?;
    let nodes = parse_hostnames(&String::from_utf8_lossy(&names.stdout));
    if nodes.is_empty() {
        bail!("`scontrol show hostnames {list}` gave no node names");
    }
    Ok(nodes)
}

/// Runs a Slurm client command with a time limit (they hang when slurmctld is away).
pub(super) fn run_bounded(args: &[String], limit: Duration) -> Result<Output> {
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run `{}` (is Slurm installed?)", args[0]))?;
    // Drain both pipes on threads so that a chatty command cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{}` did not finish within {} s", args.join(" "), limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
