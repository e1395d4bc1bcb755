//! Slurm command lines as pure functions, in ReFrame's three layers: the scheduler (`salloc` of
//! one allocation per run), the launcher (an `srun --jobid` step of N tasks) and the container
//! platform (how the worker starts inside the step: none, pyxis, apptainer, Slurm OCI, docker).
//! Nothing here runs a process; `slurm/mod.rs` does, and the snapshot tests below pin every line.

use std::collections::BTreeMap;
use std::path::Path;

use crate::engine::torch::launcher::SLURM_RANKS_VAR;
use crate::executor::container_spec::{job_args, ContainerSpec, EnvVar, GpuRequest, JOB_PATH, WORKER_PATH};
use crate::suite::{ContainerPlatform, SlurmSettings, TargetSpec};

/// Seconds an allocation may stay pending when the suite does not say (`pending_timeout_s`).
pub const DEFAULT_PENDING_TIMEOUT_S: u64 = 600;

/// Scheduler layer: `salloc --no-shell` of the run's allocation. Exclusive, because a benchmark
/// shares its nodes with nobody; `--immediate` makes Slurm itself cancel a request that stays
/// pending past the limit.
pub fn salloc_args(s: &SlurmSettings, job_name: &str) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "salloc".into(),
        "--no-shell".into(),
        format!("--job-name={job_name}"),
        format!("--nodes={}", s.nodes()),
        "--exclusive".into(),
        format!(
            "--immediate={}",
            s.pending_timeout_s.unwrap_or(DEFAULT_PENDING_TIMEOUT_S).max(1)
        ),
    ];
    let opt = |a: &mut Vec<String>, k: &str, v: &Option<String>| {
        if let Some(v) = v {
            a.push(format!("--{k}={v}"));
        }
    };
    opt(&mut a, "partition", &s.partition);
    opt(&mut a, "account", &s.account);
    opt(&mut a, "qos", &s.qos);
    opt(&mut a, "time", &s.time);
    if let Some(g) = s.gpus_per_node.filter(|g| *g > 0) {
        a.push(format!("--gres=gpu:{g}"));
    }
    a.extend(s.sbatch_options.iter().cloned());
    a
}

/// One step of the allocation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepSpec {
    pub job_id: String,
    /// Shown by `squeue -s`; names the run, target and round.
    pub name: String,
    pub nodes: usize,
    pub ntasks: usize,
    /// Pin the step to these nodes (a `--gpus each` step runs on the node of its GPU).
    pub nodelist: Option<String>,
    /// GPUs per node the step takes (all of the node's, so that the pinned one is among them).
    pub gpus_per_node: Option<usize>,
}

/// Launcher layer: `srun` of one step inside the allocation. `-v` makes srun print
/// `launching StepId=J.S on host N`, which is how the step id and node are learnt without
/// `sacct` (that needs slurmdbd).
pub fn srun_args(s: &StepSpec) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "srun".into(),
        "-v".into(),
        format!("--jobid={}", s.job_id),
        format!("--job-name={}", s.name),
        format!("--nodes={}", s.nodes.max(1)),
        format!("--ntasks={}", s.ntasks.max(1)),
        // One rank dying ends the step, so a multi-rank case cannot hang on its peers.
        "--kill-on-bad-exit=1".into(),
    ];
    if s.ntasks > 1 {
        // Every output line starts with its task (`1: {...}`), so that the host tells rank 0's
        // rows from the other ranks' failures; block placement puts rank 0 on the first node,
        // which is MASTER_ADDR.
        a.push("--label".into());
        a.push("--distribution=block".into());
    }
    if let Some(n) = &s.nodelist {
        a.push(format!("--nodelist={n}"));
    }
    if let Some(g) = s.gpus_per_node.filter(|g| *g > 0) {
        a.push(format!("--gres=gpu:{g}"));
    }
    a
}

/// Nodes and tasks of a multi-rank step of `ranks` ranks on an allocation of `nodes` (in
/// Slurm's order) with `gpus_per_node` GPUs each (0: CPU ranks). GPU ranks fill nodes (one rank
/// per GPU, as nccl-tests places them: 8 ranks on 8-GPU nodes stay on one node); CPU ranks spread
/// over as many nodes as there are ranks. The step is pinned to the first nodes, so that rank 0
/// runs on `nodes[0]`, whose address is MASTER_ADDR.
pub fn rank_layout(ranks: usize, gpus_per_node: usize, nodes: &[String]) -> Result<(usize, String), String> {
    if ranks == 0 {
        return Err("a multi-rank step needs at least one rank".into());
    }
    let used = if gpus_per_node > 0 {
        ranks.div_ceil(gpus_per_node)
    } else {
        ranks.min(nodes.len())
    };
    if used > nodes.len() || used == 0 {
        return Err(format!(
            "{ranks} ranks at {gpus_per_node} GPUs per node need {} nodes; the allocation has {}",
            ranks.div_ceil(gpus_per_node.max(1)),
            nodes.len()
        ));
    }
    Ok((used, nodes[..used].join(",")))
}

/// What the host adds to the environment of a multi-rank step's tasks: the marker that makes
/// each worker one rank (the torch engine's launcher layer) and the rendezvous.
pub fn rank_env(master_addr: &str, master_port: u16) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SLURM_RANKS_VAR.to_string(), "1".to_string()),
        ("MASTER_ADDR".to_string(), master_addr.to_string()),
        ("MASTER_PORT".to_string(), master_port.to_string()),
    ])
}

/// The Slurm variables a task's rank is read from; a container that does not inherit the step's
/// environment (docker) gets them by name.
const RANK_VARS: [&str; 6] = [
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURMD_NODENAME",
];

/// What the worker is and gets, wherever it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCommand<'a> {
    /// The worker binary as the nodes see it (a shared file system).
    pub exe: &'a Path,
    /// The job file as the nodes see it.
    pub job: &'a Path,
    /// The target: its image (none with platform `none`), name and container settings.
    pub target: &'a TargetSpec,
    /// Variables the worker must see after Slurm set up the task (a pinned
    /// `CUDA_VISIBLE_DEVICES`, which Slurm would otherwise overwrite), and the target's `env`.
    pub env: BTreeMap<String, String>,
    /// Whether the target uses GPUs (docker needs `--gpus`, apptainer `--nv`).
    pub gpus: bool,
    pub run_id: &'a str,
    /// The docker container's name (unique per step).
    pub container_name: &'a str,
    /// One task of a multi-rank step: the ranks talk over the nodes' network.
    pub multi_rank: bool,
}

/// Container-platform layer: the options the platform adds to `srun`, and the step's command.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Launch {
    pub srun_extra: Vec<String>,
    pub command: Vec<String>,
}

impl Launch {
    /// The whole command line: the step's `srun`, the platform's options, the command.
    pub fn argv(&self, step: &StepSpec) -> Vec<String> {
        let mut a = srun_args(step);
        a.extend(self.srun_extra.iter().cloned());
        a.extend(self.command.iter().cloned());
        a
    }
}

fn env_prefix(env: &BTreeMap<String, String>) -> Vec<String> {
    if env.is_empty() {
        return Vec::new();
    }
    let mut a = vec!["env".to_string()];
    a.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    a
}

fn worker_args(exe: &str, job: &str) -> Vec<String> {
    vec![exe.into(), "worker".into(), "--job".into(), job.into()]
}

/// The step's command for `platform`; an error names what the target lacks.
pub fn container_launch(platform: ContainerPlatform, w: &WorkerCommand<'_>) -> Result<Launch, String> {
    let exe = w.exe.display().to_string();
    let job = w.job.display().to_string();
    let image = || {
        w.target
            .image
            .as_deref()
            .ok_or_else(|| format!("container `{}` needs the target's `image`", platform.as_str()))
    };
    let mounts = format!("{exe}:{WORKER_PATH}:ro,{job}:{JOB_PATH}:ro");
    Ok(match platform {
        ContainerPlatform::None => {
            if let Some(i) = &w.target.image {
                return Err(format!(
                    "image `{i}` needs a container platform under slurm: set `container` (pyxis, apptainer, oci or docker)"
                ));
            }
            let mut command = env_prefix(&w.env);
            command.extend(worker_args(&exe, &job));
            Launch {
                srun_extra: Vec::new(),
                command,
            }
        }
        ContainerPlatform::Pyxis => {
            let mut command = env_prefix(&w.env);
            command.extend(worker_args(WORKER_PATH, JOB_PATH));
            Launch {
                srun_extra: vec![
                    format!("--container-image={}", image()?),
                    format!("--container-mounts={mounts}"),
                    "--no-container-remap-root".into(),
                ],
                command,
            }
        }
        ContainerPlatform::Apptainer => {
            let img = image()?;
            // A `.sif` file runs as it is; anything else comes from the node's Docker daemon.
            let source = if img.ends_with(".sif") {
                img.to_string()
            } else {
                format!("docker-daemon:{img}")
            };
            let mut command = vec!["apptainer".into(), "exec".into()];
            if w.gpus {
                command.push("--nv".into());
            }
            command.push(format!("--bind={exe}:{WORKER_PATH}:ro,{job}:{JOB_PATH}:ro"));
            command.extend(w.env.iter().map(|(k, v)| format!("--env={k}={v}")));
            command.push(source);
            command.extend(worker_args(WORKER_PATH, JOB_PATH));
            Launch {
                srun_extra: Vec::new(),
                command,
            }
        }
        ContainerPlatform::Oci => {
            // Slurm's OCI support runs a bundle; oci.conf's runtime binds the worker and the
            // job directory into it (docs/slurm.md), so the paths are the host's.
            let mut command = env_prefix(&w.env);
            command.extend(worker_args(&exe, &job));
            Launch {
                srun_extra: vec![format!("--container={}", image()?)],
                command,
            }
        }
        ContainerPlatform::Docker => Launch {
            srun_extra: Vec::new(),
            command: docker_in_step(w)?,
        },
    })
}

/// `docker run` inside the step: the container the Docker executor would create for the target
/// ([`ContainerSpec`], the one rule for both), with what the step changes. The GPU Slurm pinned
/// becomes the container's only one (so `CUDA_VISIBLE_DEVICES` does not go in with the other
/// variables); a task of a multi-rank step shares the node's network, where the other ranks
/// reach rank 0's rendezvous, and gets its `SLURM_*` rank variables by name (docker does not
/// pass the step's environment on).
fn docker_in_step(w: &WorkerCommand<'_>) -> Result<Vec<String>, String> {
    let mut spec = ContainerSpec::for_target(w.target, w.run_id, w.exe, Some(w.job), job_args())
        .map_err(|e| format!("{e:#}"))?;
    let pinned = w.env.get("CUDA_VISIBLE_DEVICES");
    spec.env = w
        .env
        .iter()
        .filter(|(k, _)| k.as_str() != "CUDA_VISIBLE_DEVICES")
        .map(|(k, v)| EnvVar::Set(k.clone(), v.clone()))
        .collect();
    spec.gpus = match (w.gpus, pinned) {
        (true, Some(d)) => GpuRequest::Devices(d.split(',').map(str::to_owned).collect()),
        (true, None) => GpuRequest::All,
        (false, _) => GpuRequest::None,
    };
    if w.multi_rank {
        if let Some(n) = w.target.network.as_deref().filter(|n| *n != "host") {
            return Err(format!(
                "the ranks of a multi-rank docker step reach each other over the nodes' network; `network = \"{n}\"` cannot be honoured (set `network = \"host\"` or leave it out)"
            ));
        }
        spec.network = "host".into();
        spec.env
            .extend(RANK_VARS.iter().map(|v| EnvVar::Inherit(v.to_string())));
    }
    Ok(spec.docker_run_args(w.container_name))
}

/// `scancel` of a job or a step (`J` or `J.S`).
pub fn scancel_args(id: &str) -> Vec<String> {
    vec!["scancel".into(), id.into()]
}

/// The step id and node of one `srun -v` line `srun: launching StepId=12.3 on host n1, 1 tasks: 0`.
pub fn parse_launch_line(line: &str) -> Option<(String, String)> {
    let rest = line.split("launching StepId=").nth(1)?;
    let (step, rest) = rest.split_once(' ')?;
    let host = rest.strip_prefix("on host ")?;
    let host = host.split([',', ' ']).next()?;
    Some((step.to_string(), host.to_string()))
}

/// The job id of salloc's `salloc: Granted job allocation 12` (or `Pending job allocation 12`).
pub fn parse_allocation_line(line: &str) -> Option<(bool, String)> {
    for (granted, key) in [
        (true, "Granted job allocation "),
        (false, "Pending job allocation "),
    ] {
        if let Some(rest) = line.split(key).nth(1) {
            let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !id.is_empty() {
                return Some((granted, id));
            }
        }
    }
    None
}

/// A task's abnormal end from srun's stderr: `srun: error: n1: task 0: Segmentation fault`.
pub fn parse_task_error(line: &str) -> Option<String> {
    let rest = line.strip_prefix("srun: error: ")?;
    let (node, rest) = rest.split_once(": task ")?;
    let (task, what) = rest.split_once(": ")?;
    task.parse::<usize>().ok()?;
    Some(format!("{node}: task {task}: {what}"))
}

/// A line of a `--label`led step's stdout: the task that wrote it and what it wrote
/// (`1: {...}`; srun pads the task number when there are ten tasks or more).
pub fn parse_labelled_line(line: &str) -> Option<(usize, &str)> {
    let (task, rest) = line.trim_start().split_once(": ")?;
    Some((task.parse().ok()?, rest))
}

/// The node names of `scontrol show hostnames n[1-2],gpu7`, one per line, in Slurm's order: the
/// first is where rank 0 of a multi-rank step runs.
pub fn parse_hostnames(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// `NodeAddr=10.0.0.1` out of `scontrol show node N`: the address the node is reached at (its
/// name need not resolve; Slurm's `NodeAddr` defaults to the name when not set).
pub fn parse_node_addr(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("NodeAddr="))
        .filter(|a| !a.is_empty() && *a != "(null)")
        .map(str::to_owned)
}

/// `NodeList=n[1-2]` out of `scontrol show job`.
pub fn parse_job_nodelist(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("NodeList="))
        .filter(|l| *l != "(null)")
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{ByteSize, PullPolicy};

    fn settings() -> SlurmSettings {
        SlurmSettings {
            partition: Some("gpu".into()),
            account: Some("perf".into()),
            qos: Some("high".into()),
            time: Some("1:00:00".into()),
            nodes: Some(2),
            gpus_per_node: Some(8),
            sbatch_options: vec!["--constraint=h100".into()],
            pending_timeout_s: Some(120),
        }
    }

    fn step() -> StepSpec {
        StepSpec {
            job_id: "42".into(),
            name: "tagbench-r1-img_a-r0".into(),
            nodes: 1,
            ntasks: 1,
            nodelist: Some("n2".into()),
            gpus_per_node: Some(8),
        }
    }

    /// A target named `img:a` with `image`, leaked for the `'static` command.
    fn target(image: Option<&str>) -> &'static TargetSpec {
        Box::leak(Box::new(TargetSpec {
            name: Some("img:a".into()),
            image: image.map(str::to_owned),
            ..Default::default()
        }))
    }

    fn worker(image: Option<&'static str>) -> WorkerCommand<'static> {
        WorkerCommand {
            exe: Path::new("/shared/bin/tagbench"),
            job: Path::new("/shared/results/r1/logs/img_a-r0-1.job.json"),
            target: target(image),
            env: BTreeMap::from([
                ("CUDA_VISIBLE_DEVICES".to_string(), "3".to_string()),
                ("NCCL_DEBUG".to_string(), "WARN".to_string()),
            ]),
            gpus: true,
            run_id: "r1",
            container_name: "tagbench-r1-img_a-r0-1",
            multi_rank: false,
        }
    }

    fn line(platform: ContainerPlatform, image: Option<&'static str>) -> String {
        container_launch(platform, &worker(image))
            .unwrap()
            .argv(&step())
            .join(" ")
    }

    #[test]
    fn salloc_lines() {
        insta::assert_snapshot!(salloc_args(&settings(), "tagbench-r1").join(" "), @"salloc --no-shell --job-name=tagbench-r1 --nodes=2 --exclusive --immediate=120 --partition=gpu --account=perf --qos=high --time=1:00:00 --gres=gpu:8 --constraint=h100");
        insta::assert_snapshot!(salloc_args(&SlurmSettings::default(), "t").join(" "), @"salloc --no-shell --job-name=t --nodes=1 --exclusive --immediate=600");
    }

    #[test]
    fn srun_line() {
        insta::assert_snapshot!(srun_args(&step()).join(" "), @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=1 --ntasks=1 --kill-on-bad-exit=1 --nodelist=n2 --gres=gpu:8");
        let multi = StepSpec {
            nodes: 2,
            ntasks: 16,
            nodelist: None,
            ..step()
        };
        insta::assert_snapshot!(srun_args(&multi).join(" "), @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=2 --ntasks=16 --kill-on-bad-exit=1 --label --distribution=block --gres=gpu:8");
    }

    #[test]
    fn multi_rank_step() {
        let nodes: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        // CPU ranks spread over the nodes; GPU ranks fill them.
        assert_eq!(rank_layout(4, 0, &nodes), Ok((3, "n1,n2,n3".into())));
        assert_eq!(rank_layout(2, 0, &nodes), Ok((2, "n1,n2".into())));
        assert_eq!(rank_layout(8, 8, &nodes), Ok((1, "n1".into())));
        assert_eq!(rank_layout(12, 8, &nodes), Ok((2, "n1,n2".into())));
        let e = rank_layout(32, 8, &nodes).unwrap_err();
        assert!(e.contains("need 4 nodes; the allocation has 3"), "{e}");
        let (n, list) = rank_layout(4, 0, &nodes[..2]).unwrap();
        let step = StepSpec {
            nodes: n,
            ntasks: 4,
            nodelist: Some(list),
            gpus_per_node: None,
            ..step()
        };
        let mut w = worker(None);
        w.env = rank_env("10.0.0.1", 29500);
        w.multi_rank = true;
        let line = container_launch(ContainerPlatform::None, &w)
            .unwrap()
            .argv(&step)
            .join(" ");
        insta::assert_snapshot!(line, @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=2 --ntasks=4 --kill-on-bad-exit=1 --label --distribution=block --nodelist=n1,n2 env MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 TAGBENCH_SLURM_RANKS=1 /shared/bin/tagbench worker --job /shared/results/r1/logs/img_a-r0-1.job.json");
        let docker = container_launch(
            ContainerPlatform::Docker,
            &WorkerCommand {
                target: target(Some("img:a")),
                ..w.clone()
            },
        )
        .unwrap()
        .command
        .join(" ");
        insta::assert_snapshot!(docker, @"docker run --rm --init --name=tagbench-r1-img_a-r0-1 --pull=never --label=tagbench.run=r1 --label=tagbench.target=img:a --cap-drop=ALL --security-opt=no-new-privileges --network=host --mount=type=bind,source=/shared/bin/tagbench,target=/opt/tagbench/tagbench,readonly --mount=type=bind,source=/shared/results/r1/logs/img_a-r0-1.job.json,target=/opt/tagbench/job.json,readonly --env=MASTER_ADDR=10.0.0.1 --env=MASTER_PORT=29500 --env=TAGBENCH_SLURM_RANKS=1 --env=SLURM_PROCID --env=SLURM_NTASKS --env=SLURM_LOCALID --env=SLURM_NODEID --env=SLURM_STEP_TASKS_PER_NODE --env=SLURMD_NODENAME --gpus=all --entrypoint=/opt/tagbench/tagbench img:a worker --job /opt/tagbench/job.json");
        // The ranks need the nodes' network: a target that names another is refused, not
        // silently given the host's.
        let mut bridged = target(Some("img:a")).clone();
        bridged.network = Some("bridge".into());
        let err = container_launch(
            ContainerPlatform::Docker,
            &WorkerCommand {
                target: &bridged,
                ..w.clone()
            },
        )
        .unwrap_err();
        assert!(err.contains("`network = \"bridge\"` cannot be honoured"), "{err}");
        bridged.network = Some("host".into());
        let line = container_launch(
            ContainerPlatform::Docker,
            &WorkerCommand {
                target: &bridged,
                ..w
            },
        )
        .unwrap()
        .command;
        assert!(line.contains(&"--network=host".to_string()), "{line:?}");
    }

    #[test]
    fn platform_none() {
        insta::assert_snapshot!(line(ContainerPlatform::None, None), @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=1 --ntasks=1 --kill-on-bad-exit=1 --nodelist=n2 --gres=gpu:8 env CUDA_VISIBLE_DEVICES=3 NCCL_DEBUG=WARN /shared/bin/tagbench worker --job /shared/results/r1/logs/img_a-r0-1.job.json");
        let err = container_launch(ContainerPlatform::None, &worker(Some("img:a"))).unwrap_err();
        assert!(err.contains("set `container`"), "{err}");
    }

    #[test]
    fn platform_pyxis() {
        insta::assert_snapshot!(line(ContainerPlatform::Pyxis, Some("nvcr.io#nvidia/pytorch:24.05-py3")), @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=1 --ntasks=1 --kill-on-bad-exit=1 --nodelist=n2 --gres=gpu:8 --container-image=nvcr.io#nvidia/pytorch:24.05-py3 --container-mounts=/shared/bin/tagbench:/opt/tagbench/tagbench:ro,/shared/results/r1/logs/img_a-r0-1.job.json:/opt/tagbench/job.json:ro --no-container-remap-root env CUDA_VISIBLE_DEVICES=3 NCCL_DEBUG=WARN /opt/tagbench/tagbench worker --job /opt/tagbench/job.json");
        let err = container_launch(ContainerPlatform::Pyxis, &worker(None)).unwrap_err();
        assert!(err.contains("needs the target's `image`"), "{err}");
    }

    #[test]
    fn platform_apptainer() {
        insta::assert_snapshot!(line(ContainerPlatform::Apptainer, Some("img:a")), @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=1 --ntasks=1 --kill-on-bad-exit=1 --nodelist=n2 --gres=gpu:8 apptainer exec --nv --bind=/shared/bin/tagbench:/opt/tagbench/tagbench:ro,/shared/results/r1/logs/img_a-r0-1.job.json:/opt/tagbench/job.json:ro --env=CUDA_VISIBLE_DEVICES=3 --env=NCCL_DEBUG=WARN docker-daemon:img:a /opt/tagbench/tagbench worker --job /opt/tagbench/job.json");
        insta::assert_snapshot!(line(ContainerPlatform::Apptainer, Some("/shared/images/a.sif")), @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=1 --ntasks=1 --kill-on-bad-exit=1 --nodelist=n2 --gres=gpu:8 apptainer exec --nv --bind=/shared/bin/tagbench:/opt/tagbench/tagbench:ro,/shared/results/r1/logs/img_a-r0-1.job.json:/opt/tagbench/job.json:ro --env=CUDA_VISIBLE_DEVICES=3 --env=NCCL_DEBUG=WARN /shared/images/a.sif /opt/tagbench/tagbench worker --job /opt/tagbench/job.json");
    }

    #[test]
    fn platform_oci() {
        insta::assert_snapshot!(line(ContainerPlatform::Oci, Some("/shared/bundles/a")), @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=1 --ntasks=1 --kill-on-bad-exit=1 --nodelist=n2 --gres=gpu:8 --container=/shared/bundles/a env CUDA_VISIBLE_DEVICES=3 NCCL_DEBUG=WARN /shared/bin/tagbench worker --job /shared/results/r1/logs/img_a-r0-1.job.json");
    }

    #[test]
    fn platform_docker() {
        insta::assert_snapshot!(line(ContainerPlatform::Docker, Some("img:a")), @"srun -v --jobid=42 --job-name=tagbench-r1-img_a-r0 --nodes=1 --ntasks=1 --kill-on-bad-exit=1 --nodelist=n2 --gres=gpu:8 docker run --rm --init --name=tagbench-r1-img_a-r0-1 --pull=never --label=tagbench.run=r1 --label=tagbench.target=img:a --cap-drop=ALL --security-opt=no-new-privileges --network=none --mount=type=bind,source=/shared/bin/tagbench,target=/opt/tagbench/tagbench,readonly --mount=type=bind,source=/shared/results/r1/logs/img_a-r0-1.job.json,target=/opt/tagbench/job.json,readonly --env=NCCL_DEBUG=WARN --gpus=device=3 --entrypoint=/opt/tagbench/tagbench img:a worker --job /opt/tagbench/job.json");
    }

    /// Every container option of the target reaches `docker run`, as the Docker executor
    /// applies them (both come from `ContainerSpec`).
    #[test]
    fn platform_docker_takes_the_targets_settings() {
        let t = TargetSpec {
            name: Some("img:a".into()),
            image: Some("img:a".into()),
            shm_size: Some(ByteSize::parse("1g").unwrap()),
            ipc: Some("host".into()),
            network: Some("bridge".into()),
            ulimits: [("memlock".to_string(), -1), ("stack".to_string(), 67108864)].into(),
            cpus: Some(1.5),
            memory: Some(ByteSize::parse("8g").unwrap()),
            pull: Some(PullPolicy::Missing),
            env: [("A".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let mut w = worker(None);
        w.target = &t;
        // The executor adds the target's env and the pinned GPUs to the step's variables.
        w.env.insert("A".into(), "1".into());
        w.env.insert("CUDA_VISIBLE_DEVICES".into(), "0,1".into());
        let command = container_launch(ContainerPlatform::Docker, &w)
            .unwrap()
            .command
            .join(" ");
        insta::assert_snapshot!(command, @r#"docker run --rm --init --name=tagbench-r1-img_a-r0-1 --pull=missing --label=tagbench.run=r1 --label=tagbench.target=img:a --cap-drop=ALL --security-opt=no-new-privileges --network=bridge --ipc=host --shm-size=1073741824 --ulimit=memlock=-1:-1 --ulimit=stack=67108864:67108864 --cpus=1.5 --memory=8589934592 --memory-swap=8589934592 --mount=type=bind,source=/shared/bin/tagbench,target=/opt/tagbench/tagbench,readonly --mount=type=bind,source=/shared/results/r1/logs/img_a-r0-1.job.json,target=/opt/tagbench/job.json,readonly --env=A=1 --env=NCCL_DEBUG=WARN --gpus="device=0,1" --entrypoint=/opt/tagbench/tagbench img:a worker --job /opt/tagbench/job.json"#);
        w.gpus = false;
        let command = container_launch(ContainerPlatform::Docker, &w).unwrap().command;
        assert!(!command.iter().any(|a| a.starts_with("--gpus")), "{command:?}");
    }

    #[test]
    fn srun_and_salloc_output() {
        assert_eq!(
            parse_launch_line("srun: launching StepId=2.0 on host n1, 1 tasks: 0"),
            Some(("2.0".into(), "n1".into()))
        );
        assert_eq!(parse_launch_line("srun: jobid 2: nodes(2)"), None);
        assert_eq!(
            parse_allocation_line("salloc: Granted job allocation 17"),
            Some((true, "17".into()))
        );
        assert_eq!(
            parse_allocation_line("salloc: Pending job allocation 18"),
            Some((false, "18".into()))
        );
        assert_eq!(
            parse_task_error("srun: error: n1: task 0: Segmentation fault").as_deref(),
            Some("n1: task 0: Segmentation fault")
        );
        assert_eq!(parse_task_error("srun: error: Unable to create step"), None);
        assert_eq!(
            parse_job_nodelist("JobId=2 JobName=tb\n   NodeList=n[1-2]\n   BatchHost=n1").as_deref(),
            Some("n[1-2]")
        );
        assert_eq!(parse_job_nodelist("   NodeList=(null)"), None);
        assert_eq!(
            parse_labelled_line("1: {\"type\":\"done\"}"),
            Some((1, "{\"type\":\"done\"}"))
        );
        assert_eq!(parse_labelled_line(" 3: x: y"), Some((3, "x: y")));
        assert_eq!(parse_labelled_line("{\"type\":\"done\"}"), None);
        assert_eq!(
            parse_node_addr("NodeName=n1 Arch=x86_64\n   NodeAddr=127.0.0.1 NodeHostName=vm").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(parse_node_addr("NodeName=n1"), None);
        assert_eq!(parse_hostnames("n1\nn2\ngpu7\n"), ["n1", "n2", "gpu7"]);
        assert!(parse_hostnames("").is_empty());
    }
}
