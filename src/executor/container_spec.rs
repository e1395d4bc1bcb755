//! The container a target's worker runs in, as pure data, and the one rule for what every
//! tagbench container gets: the hardening (all capabilities dropped, `no-new-privileges`, never
//! privileged, read-only binds, no network unless the target asks, the `tagbench.run` label) and
//! the target's `env`, `shm_size`, `ipc`, `ulimits`, `cpus`, `memory`, GPUs and pull policy.
//!
//! Two renderings read the same [`ContainerSpec`]: the Docker executor's Engine API create body
//! ([`ContainerSpec::create_body`]) and the `docker run` command line that a Slurm step starts
//! ([`ContainerSpec::docker_run_args`]). Both destructure the spec field by field, so a setting
//! added here that one of them forgets does not compile. Nothing here talks to the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType, ResourcesUlimits};

use crate::case::Device;
use crate::suite::{ByteSize, GpuNamed, GpuSelection, PullPolicy, TargetSpec};

/// The label every tagbench container carries; its value is the run id.
pub const LABEL_RUN: &str = "tagbench.run";
/// The label naming the target a container belongs to (for `tagbench clean`'s listing).
pub const LABEL_TARGET: &str = "tagbench.target";
/// Where the worker binary and the job file appear inside the container.
pub const WORKER_PATH: &str = "/opt/tagbench/tagbench";
pub const JOB_PATH: &str = "/opt/tagbench/job.json";
/// The worker reads two read-only files and computes: it needs no capability.
pub const CAP_DROP: [&str; 1] = ["ALL"];
/// Nothing in the container gains privileges through setuid binaries or file capabilities.
pub const SECURITY_OPT: [&str; 1] = ["no-new-privileges"];
/// The network of a target that does not name one.
pub const DEFAULT_NETWORK: &str = "none";

/// The worker's arguments inside a container: run the job file bound at [`JOB_PATH`].
pub fn job_args() -> Vec<String> {
    vec!["worker".into(), "--job".into(), JOB_PATH.into()]
}

/// Where a command case's `files` appear inside the container, under their paths relative to
/// the suite file; the program starts there unless its `workdir` says otherwise.
pub const SUITE_PATH: &str = "/opt/tagbench/suite";

/// The read-only binds of the `files` of the job's command cases, each at its path relative to
/// the suite under [`SUITE_PATH`]. The cases' suite directory is rewritten to [`SUITE_PATH`] (to
/// none, the image's working directory, when a case has no files).
pub fn command_binds(job: &mut crate::protocol::Job) -> Vec<Bind> {
    let mut binds: Vec<Bind> = Vec::new();
    for case in &mut job.cases {
        let crate::workload::Params::Command(p) = &mut case.params else {
            continue;
        };
        let root = std::path::PathBuf::from(&p.root);
        for f in &p.files {
            let rel = f.trim_end_matches('/');
            let target = format!("{SUITE_PATH}/{rel}");
            if binds.iter().any(|b| b.target == target) {
                continue;
            }
            binds.push(Bind {
                source: root.join(rel).display().to_string(),
                target,
            });
        }
        p.root = if p.files.is_empty() {
            String::new()
        } else {
            SUITE_PATH.to_string()
        };
    }
    binds
}

pub use crate::sys::UNSET_ENV_VAR;

/// A host path bound into the container, always read-only.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub source: String,
    pub target: String,
}

/// A variable of the container's environment.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvVar {
    Set(String, String),
    /// Passed on by name from the process that starts the container (a Slurm task's `SLURM_*`),
    /// as `docker run --env NAME` does; absent when that process does not have it.
    Inherit(String),
}

/// The GPUs the container gets (NVIDIA device requests; `--gpus` on the command line).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum GpuRequest {
    #[default]
    None,
    All,
    /// Device indices (or UUIDs) as the host numbers them.
    Devices(Vec<String>),
}

impl GpuRequest {
    /// What `target.gpus` asks for. A CUDA target that names no GPUs gets all of them, as
    /// `docker run --gpus all` would.
    pub fn for_target(target: &TargetSpec) -> Result<Self> {
        Ok(match &target.gpus {
            GpuSelection::Named(GpuNamed::All) => GpuRequest::All,
            GpuSelection::Named(GpuNamed::None) => GpuRequest::None,
            GpuSelection::Named(GpuNamed::Each) => bail!(
                "target {}: `gpus = \"each\"` was not expanded into one target per GPU",
                target.display_name()
            ),
            GpuSelection::List(ids) if ids.is_empty() => GpuRequest::None,
            GpuSelection::List(ids) => GpuRequest::Devices(ids.iter().map(usize::to_string).collect()),
            GpuSelection::Unset if target.device == Some(Device::Cuda) => GpuRequest::All,
            GpuSelection::Unset => GpuRequest::None,
        })
    }
}

/// One container: what it runs, what it sees and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub image: String,
    /// `tagbench.run` and `tagbench.target`.
    pub labels: BTreeMap<String, String>,
    /// The worker binary and the job file.
    pub mounts: Vec<Bind>,
    pub env: Vec<EnvVar>,
    /// The worker's arguments (the entrypoint is always the worker at [`WORKER_PATH`]: an
    /// image's own entrypoint would print banners into the protocol).
    pub args: Vec<String>,
    /// `none` unless the target (or a multi-rank Slurm step) asks for another.
    pub network: String,
    pub ipc: Option<String>,
    pub shm_size_bytes: Option<i64>,
    /// name → value, the soft and the hard limit alike.
    pub ulimits: BTreeMap<String, i64>,
    /// CPU limit in billionths of a CPU (Docker's `NanoCpus`; a CFS quota per period).
    pub nano_cpus: Option<i64>,
    /// Memory limit; swap is not added on top of it.
    pub memory_bytes: Option<i64>,
    pub gpus: GpuRequest,
    pub pull: PullPolicy,
    /// The worker takes the host's commands on its stdin (`Job::control`).
    pub stdin: bool,
}

impl ContainerSpec {
    /// The container for `target`'s worker: `worker_exe` (and the job file, when there is one)
    /// bound read-only, the target's settings, labelled with `run_id`.
    pub fn for_target(
        target: &TargetSpec,
        run_id: &str,
        worker_exe: &Path,
        job_file: Option<&Path>,
        args: Vec<String>,
    ) -> Result<Self> {
        let image = target
            .image
            .clone()
            .with_context(|| format!("target {} has no image", target.display_name()))?;
        let bind = |source: &Path, target: &str| Bind {
            source: source.display().to_string(),
            target: target.to_string(),
        };
        let mut mounts = vec![bind(worker_exe, WORKER_PATH)];
        mounts.extend(job_file.map(|j| bind(j, JOB_PATH)));
        for m in &target.mounts {
            if !m.source.is_absolute() || !m.target.starts_with('/') {
                bail!(
                    "target {}: mount {} -> {}: both paths must be absolute",
                    target.display_name(),
                    m.source.display(),
                    m.target
                );
            }
            if !m.source.exists() {
                bail!(
                    "target {}: mount source {} does not exist",
                    target.display_name(),
                    m.source.display()
                );
            }
            mounts.push(bind(&m.source, &m.target));
        }
        let mut env: Vec<EnvVar> = target
            .env
            .iter()
            .map(|(k, v)| EnvVar::Set(k.clone(), v.clone()))
            .collect();
        if !target.unset_env.is_empty() {
            env.push(EnvVar::Set(UNSET_ENV_VAR.into(), target.unset_env.join(",")));
        }
        Ok(ContainerSpec {
            image,
            labels: BTreeMap::from([
                (LABEL_RUN.to_string(), run_id.to_string()),
                (LABEL_TARGET.to_string(), target.display_name()),
            ]),
            mounts,
            env,
            args,
            network: target.network.clone().unwrap_or_else(|| DEFAULT_NETWORK.into()),
            ipc: target.ipc.clone(),
            shm_size_bytes: target.shm_size.as_ref().map(ByteSize::bytes),
            ulimits: target.ulimits.clone(),
            nano_cpus: target.cpus.map(|c| (c * 1e9).round() as i64),
            memory_bytes: target.memory.as_ref().map(ByteSize::bytes),
            gpus: GpuRequest::for_target(target)?,
            pull: target.pull.unwrap_or_default(),
            stdin: false,
        })
    }

    /// The Engine API's create body (the Docker executor). The pull policy is applied before
    /// the container is created (`DockerExecutor::prepare`), so it is not part of the body.
    pub fn create_body(&self) -> ContainerCreateBody {
        let ContainerSpec {
            image,
            labels,
            mounts,
            env,
            args,
            network,
            ipc,
            shm_size_bytes,
            ulimits,
            nano_cpus,
            memory_bytes,
            gpus,
            pull: _,
            stdin,
        } = self;
        let stdin = *stdin;
        let mounts = mounts
            .iter()
            .map(|b| Mount {
                target: Some(b.target.clone()),
                source: Some(b.source.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            })
            .collect();
        let ulimits: Vec<ResourcesUlimits> = ulimits
            .iter()
            .map(|(name, &v)| ResourcesUlimits {
                name: Some(name.clone()),
                soft: Some(v),
                hard: Some(v),
            })
            .collect();
        let request = |count: Option<i64>, ids: Option<Vec<String>>| DeviceRequest {
            driver: Some("nvidia".into()),
            count,
            device_ids: ids,
            capabilities: Some(vec![vec!["gpu".into()]]),
            options: None,
        };
        let device_requests = match gpus {
            GpuRequest::None => None,
            GpuRequest::All => Some(vec![request(Some(-1), None)]),
            GpuRequest::Devices(ids) => Some(vec![request(None, Some(ids.clone()))]),
        };
        let host_config = HostConfig {
            mounts: Some(mounts),
            network_mode: Some(network.clone()),
            ipc_mode: ipc.clone(),
            shm_size: *shm_size_bytes,
            ulimits: (!ulimits.is_empty()).then_some(ulimits),
            nano_cpus: *nano_cpus,
            memory: *memory_bytes,
            memory_swap: *memory_bytes,
            device_requests,
            privileged: Some(false),
            cap_drop: Some(CAP_DROP.map(String::from).to_vec()),
            security_opt: Some(SECURITY_OPT.map(String::from).to_vec()),
            auto_remove: Some(false),
            ..Default::default()
        };
        let env = env
            .iter()
            .filter_map(|v| match v {
                EnvVar::Set(k, v) => Some(format!("{k}={v}")),
                // What `docker run --env NAME` does: the value of this process, if it has one.
                EnvVar::Inherit(k) => std::env::var(k).ok().map(|v| format!("{k}={v}")),
            })
            .collect();
        ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec![WORKER_PATH.to_string()]),
            cmd: Some(args.clone()),
            env: Some(env),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            ),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(stdin),
            open_stdin: Some(stdin),
            // The host's attach is the only writer: when it goes, stdin ends.
            stdin_once: Some(stdin),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// The same container as a `docker run` command line (docker-in-step under Slurm), named
    /// `name`. `--rm` because nothing inspects the container afterwards; `--init` so that the
    /// worker is not PID 1, which ignores the signals the docker client forwards.
    pub fn docker_run_args(&self, name: &str) -> Vec<String> {
        let ContainerSpec {
            image,
            labels,
            mounts,
            env,
            args,
            network,
            ipc,
            shm_size_bytes,
            ulimits,
            nano_cpus,
            memory_bytes,
            gpus,
            pull,
            stdin,
        } = self;
        let mut a: Vec<String> = vec![
            "docker".into(),
            "run".into(),
            "--rm".into(),
            "--init".into(),
            format!("--name={name}"),
            format!("--pull={}", pull.as_str()),
        ];
        if *stdin {
            a.push("--interactive".into());
        }
        a.extend(labels.iter().map(|(k, v)| format!("--label={k}={v}")));
        a.extend(CAP_DROP.iter().map(|c| format!("--cap-drop={c}")));
        a.extend(SECURITY_OPT.iter().map(|o| format!("--security-opt={o}")));
        a.push(format!("--network={network}"));
        if let Some(ipc) = ipc {
            a.push(format!("--ipc={ipc}"));
        }
        if let Some(b) = shm_size_bytes {
            a.push(format!("--shm-size={b}"));
        }
        a.extend(ulimits.iter().map(|(k, v)| format!("--ulimit={k}={v}:{v}")));
        if let Some(n) = nano_cpus {
            a.push(format!("--cpus={}", *n as f64 / 1e9));
        }
        if let Some(m) = memory_bytes {
            a.push(format!("--memory={m}"));
            a.push(format!("--memory-swap={m}"));
        }
        // `--mount` (not `--volume`) fails on a missing source as the API's bind mount does,
        // instead of creating an empty directory in its place.
        a.extend(mounts.iter().map(|b| {
            format!(
                "--mount={}",
                csv_line(&[
                    "type=bind",
                    &format!("source={}", b.source),
                    &format!("target={}", b.target),
                    "readonly"
                ])
            )
        }));
        a.extend(env.iter().map(|v| match v {
            EnvVar::Set(k, v) => format!("--env={k}={v}"),
            EnvVar::Inherit(k) => format!("--env={k}"),
        }));
        match gpus {
            GpuRequest::None => {}
            GpuRequest::All => a.push("--gpus=all".into()),
            GpuRequest::Devices(ids) => a.push(format!(
                "--gpus={}",
                csv_line(&[&format!("device={}", ids.join(","))])
            )),
        }
        a.push(format!("--entrypoint={WORKER_PATH}"));
        a.push(image.clone());
        a.extend(args.iter().cloned());
        a
    }
}

/// Fields joined as the docker CLI reads `--mount` and `--gpus` values (a CSV line): a field
/// holding a comma or a quote is quoted, its quotes doubled.
fn csv_line(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_files_are_bound_under_the_suite_path() {
        let mut p: crate::workload::command::CommandParams = toml::from_str(
            r#"argv = ["python3", "bench/t.py"]
               files = ["bench/", "data.txt"]"#,
        )
        .unwrap();
        p.check().unwrap();
        p.root = "/home/u/suites".into();
        let case = crate::case::Case {
            workload: "train".into(),
            kind: crate::case::WorkloadKind::Command,
            id: "default".into(),
            params: crate::workload::Params::Command(p),
            measure: Default::default(),
        };
        let mut job = crate::protocol::Job {
            run_id: "r".into(),
            token: String::new(),
            engine: Default::default(),
            device: Device::Cpu,
            gpus: vec![],
            cases: vec![case.clone(), case],
            control: false,
        };
        let binds = command_binds(&mut job);
        assert_eq!(
            binds,
            [
                Bind {
                    source: "/home/u/suites/bench".into(),
                    target: format!("{SUITE_PATH}/bench")
                },
                Bind {
                    source: "/home/u/suites/data.txt".into(),
                    target: format!("{SUITE_PATH}/data.txt")
                },
            ]
        );
        match &job.cases[0].params {
            crate::workload::Params::Command(p) => assert_eq!(p.root, SUITE_PATH),
            other => panic!("{other:?}"),
        }
    }

    fn target() -> TargetSpec {
        TargetSpec {
            image: Some("repo/name:tag".into()),
            ..Default::default()
        }
    }

    /// A target that sets every container option.
    fn full_target() -> TargetSpec {
        let mut t = target();
        t.shm_size = Some(ByteSize::parse("1g").unwrap());
        t.ipc = Some("host".into());
        t.network = Some("bridge".into());
        t.ulimits = [("memlock".to_string(), -1), ("stack".to_string(), 67108864)].into();
        t.cpus = Some(1.5);
        t.memory = Some(ByteSize::parse("8g").unwrap());
        t.env = [("A".to_string(), "1".to_string())].into();
        t.gpus = GpuSelection::List(vec![0, 2]);
        t.pull = Some(PullPolicy::Missing);
        t
    }

    fn spec(t: &TargetSpec, job: Option<&Path>) -> ContainerSpec {
        ContainerSpec::for_target(t, "r1", Path::new("/x/tagbench"), job, vec!["--version".into()]).unwrap()
    }

    #[test]
    fn safe_defaults() {
        let body = spec(&target(), None).create_body();
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert!(hc.device_requests.is_none());
        let mounts = hc.mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].target.as_deref(), Some(WORKER_PATH));
        assert_eq!(body.labels.unwrap()[LABEL_RUN], "r1");
        assert_eq!(body.entrypoint, Some(vec![WORKER_PATH.to_string()]));
        assert_eq!(body.cmd, Some(vec!["--version".to_string()]));
    }

    #[test]
    fn suite_options_reach_the_engine_api() {
        let body = spec(&full_target(), Some(Path::new("/j.json"))).create_body();
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.shm_size, Some(1 << 30));
        assert_eq!(hc.ipc_mode.as_deref(), Some("host"));
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.memory, Some(8 << 30));
        assert_eq!(hc.memory_swap, Some(8 << 30));
        let ul = hc.ulimits.unwrap();
        assert_eq!(ul[0].name.as_deref(), Some("memlock"));
        assert_eq!((ul[0].soft, ul[0].hard), (Some(-1), Some(-1)));
        let dr = &hc.device_requests.unwrap()[0];
        assert_eq!(dr.driver.as_deref(), Some("nvidia"));
        assert_eq!(dr.device_ids, Some(vec!["0".to_string(), "2".to_string()]));
        assert_eq!(dr.capabilities, Some(vec![vec!["gpu".to_string()]]));
        let mounts = hc.mounts.unwrap();
        assert_eq!(mounts[1].target.as_deref(), Some(JOB_PATH));
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
    }

    #[test]
    fn suite_options_reach_the_command_line() {
        let s = spec(&target(), Some(Path::new("/j.json")));
        insta::assert_snapshot!(s.docker_run_args("c1").join(" "), @"docker run --rm --init --name=c1 --pull=never --label=tagbench.run=r1 --label=tagbench.target=repo/name:tag --cap-drop=ALL --security-opt=no-new-privileges --network=none --mount=type=bind,source=/x/tagbench,target=/opt/tagbench/tagbench,readonly --mount=type=bind,source=/j.json,target=/opt/tagbench/job.json,readonly --entrypoint=/opt/tagbench/tagbench repo/name:tag --version");
        let s = spec(&full_target(), Some(Path::new("/j.json")));
        insta::assert_snapshot!(s.docker_run_args("c1").join(" "), @r#"docker run --rm --init --name=c1 --pull=missing --label=tagbench.run=r1 --label=tagbench.target=repo/name:tag --cap-drop=ALL --security-opt=no-new-privileges --network=bridge --ipc=host --shm-size=1073741824 --ulimit=memlock=-1:-1 --ulimit=stack=67108864:67108864 --cpus=1.5 --memory=8589934592 --memory-swap=8589934592 --mount=type=bind,source=/x/tagbench,target=/opt/tagbench/tagbench,readonly --mount=type=bind,source=/j.json,target=/opt/tagbench/job.json,readonly --env=A=1 --gpus="device=0,2" --entrypoint=/opt/tagbench/tagbench repo/name:tag --version"#);
    }

    #[test]
    fn gpu_requests() {
        let mut t = target();
        t.gpus = GpuSelection::Named(GpuNamed::All);
        assert_eq!(GpuRequest::for_target(&t).unwrap(), GpuRequest::All);
        t.gpus = GpuSelection::Named(GpuNamed::None);
        assert_eq!(GpuRequest::for_target(&t).unwrap(), GpuRequest::None);
        t.gpus = GpuSelection::Unset;
        t.device = Some(Device::Cuda);
        assert_eq!(GpuRequest::for_target(&t).unwrap(), GpuRequest::All);
        let body = spec(&t, None).create_body();
        assert_eq!(
            body.host_config.unwrap().device_requests.unwrap()[0].count,
            Some(-1)
        );
        assert!(spec(&t, None)
            .docker_run_args("c")
            .contains(&"--gpus=all".to_string()));
        t.gpus = GpuSelection::Named(GpuNamed::Each);
        assert!(GpuRequest::for_target(&t).is_err());
    }

    #[test]
    fn command_line_values_are_quoted_as_csv() {
        assert_eq!(
            csv_line(&["type=bind", "source=/a,b", "x\"y"]),
            "type=bind,\"source=/a,b\",\"x\"\"y\""
        );
        let mut s = spec(&target(), None);
        s.mounts[0].source = "/odd,dir/tagbench".into();
        s.gpus = GpuRequest::Devices(vec!["3".into()]);
        let line = s.docker_run_args("c");
        assert!(
            line.contains(
                &"--mount=type=bind,\"source=/odd,dir/tagbench\",target=/opt/tagbench/tagbench,readonly"
                    .to_string()
            ),
            "{line:?}"
        );
        assert!(line.contains(&"--gpus=device=3".to_string()), "{line:?}");
    }

    #[test]
    fn inherited_variables_are_passed_by_name() {
        let mut s = spec(&target(), None);
        s.env = vec![EnvVar::Inherit("TAGBENCH_TEST_SURELY_UNSET_VAR".into())];
        assert!(s
            .docker_run_args("c")
            .contains(&"--env=TAGBENCH_TEST_SURELY_UNSET_VAR".to_string()));
        // Unset here: the engine gets nothing, as the CLI would send.
        assert_eq!(s.create_body().env, Some(vec![]));
    }
}
