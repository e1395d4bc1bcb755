//! The `slurm` executor: one allocation per run ([`allocation`]), each round × target one
//! `srun --jobid` step that starts the worker (inside the target's container platform) and
//! streams its JSON lines back; the step id and node go into run.json and rows. A multi-rank
//! case (torch engine) is a step of its own with one task per rank, whose labelled output
//! [`ranks`] merges. Command lines come from [`command`] (pure functions); [`poll`] confirms
//! that what was cancelled has ended.

pub mod allocation;
pub mod command;
pub mod poll;
pub mod ranks;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::local::{recv_line, spawn_line_reader};
use super::{Executor, ExitInfo, LineEvent, WorkerHandle};
use crate::case::{Case, Device, EngineKind};
use crate::protocol::Job;
use crate::results::{Placement, TargetMeta};
use crate::suite::{ContainerPlatform, GpuNamed, GpuSelection, TargetSpec};
use crate::sys::interrupt::hold_if_interrupted;
use crate::sys::safe_name;
use crate::workload::allreduce::CPU_DEFAULT_RANKS;
use allocation::{cancel, run_bounded, Allocation, CANCEL_WAIT, CLIENT_TIMEOUT};
use command::{
    container_launch, parse_launch_line, parse_task_error, rank_env, rank_layout, scancel_args, StepSpec,
    WorkerCommand,
};
use ranks::RankLines;

/// How long `start` waits for srun to say which step and node it launched (a step waiting for
/// resources inside the allocation says nothing until it runs).
const LAUNCH_WAIT: Duration = Duration::from_secs(30);
/// stderr lines kept for messages (srun's own `-v` chatter left out).
const TAIL_LINES: usize = 20;
/// How long the other tasks of a multi-rank step may take to end after rank 0 said `done`
/// before the step is cancelled (a rank still waiting at a rendezvous rank 0 never joined,
/// because it skipped the case, would otherwise hold the step until torch's own timeout).
const FOLLOWERS_GRACE: Duration = Duration::from_secs(10);

/// Runs workers as Slurm steps of the run's allocation.
pub struct SlurmExecutor {
    run_id: String,
    /// The worker binary as the nodes see it: this binary, or `TAGBENCH_SLURM_WORKER` where the
    /// nodes mount it elsewhere.
    worker_exe: PathBuf,
    alloc: Option<Arc<Allocation>>,
}

impl SlurmExecutor {
    pub fn new(run_id: &str) -> Result<Self> {
        let worker_exe = match std::env::var_os("TAGBENCH_SLURM_WORKER") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe().context("failed to locate the tagbench binary")?,
        };
        Ok(SlurmExecutor {
            run_id: run_id.to_string(),
            worker_exe,
            alloc: None,
        })
    }
}

/// Where a target's step runs and which GPU it sees.
#[derive(Debug, Clone, PartialEq, Default)]
struct Pin {
    nodelist: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` for the worker (node-local indices).
    visible: Option<String>,
    /// The job's GPU ordinals as the worker then numbers them.
    job_gpus: Vec<usize>,
}

/// `gpus = [i]` (what `--gpus each` expands into) on an allocation of `per_node` GPUs per node:
/// the node holding GPU `i` (numbered across the allocation's nodes) and its local index.
fn pin(gpus: &GpuSelection, per_node: usize, nodes: &[String]) -> Result<Pin> {
    let GpuSelection::List(list) = gpus else {
        return Ok(Pin::default());
    };
    if list.is_empty() {
        return Ok(Pin::default());
    }
    if per_node == 0 {
        bail!("gpus {list:?} under slurm need `gpus_per_node` (--gpus-per-node)");
    }
    let node = list[0] / per_node;
    if list.iter().any(|g| g / per_node != node) {
        bail!("gpus {list:?} span several nodes of {per_node} GPUs; a step's GPUs must be on one node");
    }
    let Some(name) = nodes.get(node) else {
        bail!(
            "GPU {} is beyond the allocation's {} nodes × {per_node} GPUs",
            list[0],
            nodes.len()
        );
    };
    let local: Vec<String> = list.iter().map(|g| (g % per_node).to_string()).collect();
    Ok(Pin {
        nodelist: Some(name.clone()),
        visible: Some(local.join(",")),
        job_gpus: (0..list.len()).collect(),
    })
}

/// The ranks of `case` as one Slurm step of that many tasks, or `None` when it runs as one task.
/// Only the torch engine runs a rank per process; a target pinned to a GPU (`--gpus each`) keeps
/// its one task, where the engine says what it cannot run. `0` ranks (all-reduce) are every GPU
/// of the allocation, or the engine's CPU default.
fn step_ranks(target: &TargetSpec, case: &Case, gpus_per_node: usize, nodes: usize) -> Option<usize> {
    if target.engine.unwrap_or_default() != EngineKind::Torch || matches!(target.gpus, GpuSelection::List(_))
    {
        return None;
    }
    // A command's ranks are started by its worker, as processes of one task (engine/command.rs).
    if case.kind == crate::case::WorkloadKind::Command {
        return None;
    }
    let cuda = target.device.unwrap_or_default() == Device::Cuda;
    let ranks = match case.params.ranks()? {
        0 if cuda && gpus_per_node > 0 => gpus_per_node * nodes,
        0 if cuda => return None,
        0 => CPU_DEFAULT_RANKS,
        n => n,
    };
    (ranks > 1).then_some(ranks)
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn prepare(&mut self, target: &TargetSpec) -> Result<TargetMeta> {
        let settings = target.slurm.clone().unwrap_or_default();
        let platform = target.container.unwrap_or_default();
        if platform == ContainerPlatform::None && target.image.is_some() {
            bail!(
                "image `{}` needs a container platform under slurm: set `container` in the target or pass --container (pyxis, apptainer, oci or docker)",
                target.image.as_deref().unwrap_or_default()
            );
        }
        if platform == ContainerPlatform::Docker {
            super::docker::remove_containers_on_interrupt(&self.run_id);
        }
        let alloc = Allocation::shared(&self.run_id, &settings)?;
        // A bad GPU pin is this target's error, found before any step starts.
        pin(&target.gpus, settings.gpus_per_node.unwrap_or(0), &alloc.nodes)?;
        let mut env = BTreeMap::from([
            ("slurm_job".to_string(), alloc.job_id.clone()),
            ("slurm_nodes".to_string(), alloc.nodes.join(",")),
            (
                "slurm_allocation_s".to_string(),
                format!("{:.3}", alloc.allocation_s),
            ),
            ("slurm_container".to_string(), platform.as_str().to_string()),
        ]);
        if let Some(g) = settings.gpus_per_node {
            env.insert("slurm_gpus_per_node".into(), g.to_string());
        }
        let gpu_index = match &target.gpus {
            GpuSelection::List(l) if l.len() == 1 => Some(l[0]),
            _ => None,
        };
        self.alloc = Some(alloc);
        Ok(TargetMeta {
            name: target.display_name(),
            executor: "slurm".into(),
            engine: target.engine.unwrap_or_default().as_str().into(),
            device: target.device.unwrap_or_default().as_str().into(),
            image: target.image.clone().unwrap_or_default(),
            gpu_index,
            env,
            ..Default::default()
        })
    }

    fn job_len(&self, target: &TargetSpec, pending: &[Case]) -> usize {
        let per_node = target.slurm.as_ref().and_then(|s| s.gpus_per_node).unwrap_or(0);
        let nodes = self.alloc.as_ref().map_or(1, |a| a.nodes.len());
        let multi = |c: &Case| step_ranks(target, c, per_node, nodes).is_some();
        match pending.first() {
            Some(c) if multi(c) => 1,
            _ => pending.iter().take_while(|c| !multi(c)).count(),
        }
    }

    fn start(&mut self, target: &TargetSpec, job: &Job, log: &Path) -> Result<Box<dyn WorkerHandle>> {
        let Some(alloc) = self.alloc.clone() else {
            bail!("the slurm target was not prepared");
        };
        let settings = target.slurm.clone().unwrap_or_default();
        let per_node = settings.gpus_per_node.unwrap_or(0);
        let cuda = target.device.unwrap_or_default() == Device::Cuda;
        // A multi-rank case comes alone (`job_len`): one task per rank.
        let ranks = match job.cases.as_slice() {
            [case] => step_ranks(target, case, per_node, alloc.nodes.len()),
            _ => None,
        };
        let pinned = pin(&target.gpus, per_node, &alloc.nodes)?;
        let mut job = job.clone();
        if !pinned.job_gpus.is_empty() {
            job.gpus = pinned.job_gpus.clone();
        }
        let job_path = log.with_extension("job.json");
        std::fs::write(&job_path, serde_json::to_vec(&job)?)
            .with_context(|| format!("failed to write {}", job_path.display()))?;
        let mut env = target.env.clone();
        if let Some(v) = &pinned.visible {
            env.insert("CUDA_VISIBLE_DEVICES".into(), v.clone());
        }
        let target_name = target.display_name();
        let mut layout = (1, pinned.nodelist.clone());
        if let Some(n) = ranks {
            let case = &job.cases[0];
            let (nodes, list) = rank_layout(n, if cuda { per_node } else { 0 }, &alloc.nodes)
                .map_err(|e| anyhow::anyhow!("target {target_name}: {}/{}: {e}", case.workload, case.id))?;
            layout = (nodes, Some(list));
            // The rendezvous: the first node's address, a port that was free here a moment ago
            // (the ephemeral range makes a clash on the node unlikely; torch says so if one
            // happens).
            let port = std::net::TcpListener::bind(("0.0.0.0", 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .context("failed to choose a MASTER_PORT")?;
            env.extend(rank_env(&alloc.master_addr()?, port));
        }
        let stem = log
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let container_name = format!("tagbench-{}-{}", safe_name(&self.run_id), safe_name(&stem));
        let platform = target.container.unwrap_or_default();
        let uses_gpus = per_node > 0 && target.gpus != GpuSelection::Named(GpuNamed::None);
        let launch = container_launch(
            platform,
            &WorkerCommand {
                exe: &self.worker_exe,
                job: &job_path,
                target,
                env,
                gpus: uses_gpus,
                run_id: &self.run_id,
                container_name: &container_name,
                multi_rank: ranks.is_some(),
            },
        )
        .map_err(|e| anyhow::anyhow!("target {target_name}: {e}"))?;
        let step = StepSpec {
            job_id: alloc.job_id.clone(),
            name: format!("tagbench-{}-{}", safe_name(&self.run_id), safe_name(&target_name)),
            nodes: layout.0,
            ntasks: ranks.unwrap_or(1),
            nodelist: layout.1,
            gpus_per_node: uses_gpus.then_some(per_node),
        };
        let argv = launch.argv(&step);
        let mut logf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("failed to open {}", log.display()))?;
        let _ = writeln!(logf, "[tagbench] {}", argv.join(" "));
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to run srun for target {target_name} (is Slurm installed?)"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let state = Arc::new(Mutex::new(StepState::default()));
        let (launched_tx, launched) = mpsc::channel();
        let task_log = logf.try_clone().ok();
        let reader = spawn_stderr_reader(stderr, logf, state.clone(), launched_tx);
        // The step id is known once srun launched it (one line per node); a step that cannot
        // be created ends srun.
        for _ in 0..step.nodes {
            if launched.recv_timeout(LAUNCH_WAIT).is_err() {
                break;
            }
        }
        let placement = state.lock().ok().and_then(|s| s.placement());
        if let Some(p) = &placement {
            if let Ok(mut s) = alloc.steps.lock() {
                s.insert(p.job_step.clone());
            }
        }
        Ok(Box::new(SlurmWorker {
            child,
            lines: spawn_line_reader(stdout),
            ranks: ranks.map(|_| RankLines::new(task_log, &job.token)),
            reader: Some(reader),
            state,
            placement,
            alloc,
            run_id: self.run_id.clone(),
            docker: platform == ContainerPlatform::Docker,
        }))
    }
}

/// What srun's stderr told so far.
#[derive(Debug, Default)]
struct StepState {
    /// (`J.S`, node) per launch line (one per node of the step).
    launches: Vec<(String, String)>,
    /// Tasks that ended abnormally (`n1: task 0: Segmentation fault`).
    task_errors: Vec<String>,
    /// The last stderr lines that are not srun's `-v` chatter.
    tail: VecDeque<String>,
}

impl StepState {
    fn placement(&self) -> Option<Placement> {
        let (step, _) = self.launches.first()?;
        let nodes: Vec<&str> = self.launches.iter().map(|(_, n)| n.as_str()).collect();
        Some(Placement {
            node: nodes.join(","),
            job_step: step.clone(),
        })
    }
}

/// Copies srun's stderr into the log, learning the step id and node from `-v`'s launch lines
/// and the tasks' abnormal ends from its error lines.
fn spawn_stderr_reader(
    stderr: impl std::io::Read + Send + 'static,
    log: File,
    state: Arc<Mutex<StepState>>,
    launched: mpsc::Sender<()>,
) -> JoinHandle<()> {
    let mut log = crate::sys::log_cap::CappedLog::new(log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            let Ok(mut s) = state.lock() else { break };
            if let Some(l) = parse_launch_line(&line) {
                s.launches.push(l);
                let _ = launched.send(());
                continue;
            }
            if let Some(e) = parse_task_error(&line) {
                s.task_errors.push(e);
            }
            let chatter = line.starts_with("srun: ") && !line.starts_with("srun: error:");
            if !chatter {
                s.tail.push_back(line);
                if s.tail.len() > TAIL_LINES {
                    s.tail.pop_front();
                }
            }
        }
    })
}

struct SlurmWorker {
    child: Child,
    lines: Receiver<std::io::Result<String>>,
    /// Set for a multi-rank step.
    ranks: Option<RankLines>,
    reader: Option<JoinHandle<()>>,
    state: Arc<Mutex<StepState>>,
    placement: Option<Placement>,
    alloc: Arc<Allocation>,
    run_id: String,
    /// docker run inside the step: a cancelled step leaves the container running.
    docker: bool,
}

impl SlurmWorker {
    fn step_id(&self) -> Option<String> {
        self.placement
            .as_ref()
            .map(|p| p.job_step.clone())
            .or_else(|| self.state.lock().ok()?.placement().map(|p| p.job_step))
    }

    fn remove_containers(&self) {
        if self.docker {
            if let Err(e) = super::docker::remove_run_containers(&self.run_id) {
                eprintln!(
                    "warning: failed to remove the containers of run {}: {e:#}; `tagbench clean --run {}` does",
                    self.run_id, self.run_id
                );
            }
        }
    }
}

impl WorkerHandle for SlurmWorker {
    fn next_line(&mut self, timeout: Duration) -> LineEvent {
        match self.ranks.as_mut() {
            Some(r) => r.next_line(&self.lines, timeout),
            None => recv_line(&self.lines, timeout),
        }
    }

    fn kill(&mut self) -> Result<()> {
        // scancel ends the step on its node (srun alone would leave the task to Slurm's timers),
        // and the step must have ended before the next one asks for its resources.
        let cancelled = match self.step_id() {
            Some(id) => cancel(&id, CANCEL_WAIT).with_context(|| format!("failed to cancel slurm step {id}")),
            None => Ok(()),
        };
        let _ = self.child.kill();
        self.remove_containers();
        cancelled
    }

    fn finish(&mut self) -> Result<ExitInfo> {
        if self.ranks.as_ref().is_some_and(RankLines::done) {
            // Rank 0 is done; a rank still running waits for a group that will not come.
            let deadline = std::time::Instant::now() + FOLLOWERS_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if let (Ok(None), Some(id)) = (self.child.try_wait(), self.step_id()) {
                eprintln!("warning: slurm step {id}: ranks still running {} s after rank 0 ended; cancelling the step", FOLLOWERS_GRACE.as_secs());
                let _ = cancel(&id, CANCEL_WAIT);
            }
        }
        let status = self.child.wait().context("failed to wait for srun")?;
        hold_if_interrupted();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let step = self.step_id();
        if let (Some(id), Ok(mut s)) = (&step, self.alloc.steps.lock()) {
            s.remove(id);
        }
        if !status.success() {
            self.remove_containers();
        }
        let state = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("step state poisoned"))?;
        let mut info = ExitInfo {
            code: status.code().map(i64::from),
            stderr_tail: state.tail.iter().cloned().collect::<Vec<_>>().join("\n"),
            ..Default::default()
        };
        let at = match &step {
            Some(id) => format!("slurm step {id}"),
            None => "slurm step (not launched)".to_string(),
        };
        if !state.task_errors.is_empty() {
            info.detail = Some(format!("{at}: {}", state.task_errors.join("; ")));
        } else if !status.success() {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                if let Some(sig) = status.signal() {
                    info.detail = Some(format!(
                        "{at}: srun killed by signal {sig} ({})",
                        crate::sys::signal_name(sig)
                    ));
                }
            }
            if info.detail.is_none() {
                info.detail = Some(format!("{at}: srun exit status {}", status.code().unwrap_or(-1)));
            }
        }
        Ok(info)
    }

    fn placement(&self) -> Option<Placement> {
        self.placement.clone()
    }
}

impl Drop for SlurmWorker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(id) = self.step_id() {
                let _ = run_bounded(&scancel_args(&id), CLIENT_TIMEOUT);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_map_to_their_node() {
        let nodes = vec!["n1".to_string(), "n2".to_string()];
        let p = pin(&GpuSelection::List(vec![3]), 2, &nodes).unwrap();
        assert_eq!(p.nodelist.as_deref(), Some("n2"));
        assert_eq!(p.visible.as_deref(), Some("1"));
        assert_eq!(p.job_gpus, vec![0]);
        assert_eq!(pin(&GpuSelection::Unset, 2, &nodes).unwrap(), Pin::default());
        let e = pin(&GpuSelection::List(vec![1, 2]), 2, &nodes).unwrap_err();
        assert!(format!("{e}").contains("span several nodes"), "{e}");
        let e = pin(&GpuSelection::List(vec![4]), 2, &nodes).unwrap_err();
        assert!(format!("{e}").contains("beyond the allocation"), "{e}");
        let e = pin(&GpuSelection::List(vec![0]), 0, &nodes).unwrap_err();
        assert!(format!("{e}").contains("gpus_per_node"), "{e}");
    }

    #[test]
    fn step_state_names_every_node() {
        let s = StepState {
            launches: vec![("5.1".into(), "n1".into()), ("5.1".into(), "n2".into())],
            ..Default::default()
        };
        assert_eq!(
            s.placement(),
            Some(Placement {
                node: "n1,n2".into(),
                job_step: "5.1".into()
            })
        );
    }
}
