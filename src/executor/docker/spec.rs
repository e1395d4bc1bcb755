//! The container a target's worker runs in, as pure data: the create body (mounts, limits,
//! labels, device requests) and the container's name. Nothing here talks to the engine.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType, ResourcesUlimits};

use crate::case::Device;
use crate::protocol::Job;
use crate::suite::{ByteSize, GpuNamed, GpuSelection, TargetSpec};
use crate::workload::Params;

/// The label every tagbench container carries; its value is the run id.
pub const LABEL_RUN: &str = "tagbench.run";
/// The label naming the target a container belongs to (for `tagbench clean`'s listing).
pub const LABEL_TARGET: &str = "tagbench.target";
/// Where the worker binary and the job file appear inside the container.
pub const WORKER_PATH: &str = "/opt/tagbench/tagbench";
pub const JOB_PATH: &str = "/opt/tagbench/job.json";
/// Where a command case's `files` appear inside the container, under their paths relative to
/// the suite file; the program starts there unless its `workdir` says otherwise.
pub const SUITE_PATH: &str = "/opt/tagbench/suite";

/// GPU device requests for the target (driver nvidia, capabilities [[gpu]]).
fn device_requests(target: &TargetSpec) -> Result<Option<Vec<DeviceRequest>>> {
    let request = |count: Option<i64>, ids: Option<Vec<String>>| DeviceRequest {
        driver: Some("nvidia".into()),
        count,
        device_ids: ids,
        capabilities: Some(vec![vec!["gpu".into()]]),
        options: None,
    };
    Ok(match &target.gpus {
        GpuSelection::Named(GpuNamed::All) => Some(vec![request(Some(-1), None)]),
        GpuSelection::Named(GpuNamed::None) => None,
        GpuSelection::Named(GpuNamed::Each) => bail!(
            "target {}: `gpus = \"each\"` was not expanded into one target per GPU",
            target.display_name()
        ),
        GpuSelection::List(ids) if ids.is_empty() => None,
        GpuSelection::List(ids) => Some(vec![request(
            None,
            Some(ids.iter().map(usize::to_string).collect()),
        )]),
        // A CUDA target that names no GPUs gets all of them, as `docker run --gpus all`.
        GpuSelection::Unset if target.device == Some(Device::Cuda) => Some(vec![request(Some(-1), None)]),
        GpuSelection::Unset => None,
    })
}

/// The container for `target`: the worker binary as entrypoint (the image's own entrypoint
/// would print banners into the protocol), the suite's options, no network, no privileges.
pub fn container_body(
    target: &TargetSpec,
    worker_exe: &Path,
    job_file: Option<&Path>,
    args: Vec<String>,
    run_id: &str,
) -> Result<ContainerCreateBody> {
    let image = target
        .image
        .clone()
        .with_context(|| format!("target {} has no image", target.display_name()))?;
    let bind = |source: &Path, dest: &str| Mount {
        target: Some(dest.to_string()),
        source: Some(source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    };
    let mut mounts = vec![bind(worker_exe, WORKER_PATH)];
    if let Some(job) = job_file {
        mounts.push(bind(job, JOB_PATH));
    }
    let ulimits = target
        .ulimits
        .iter()
        .map(|(name, &v)| ResourcesUlimits {
            name: Some(name.clone()),
            soft: Some(v),
            hard: Some(v),
        })
        .collect::<Vec<_>>();
    let memory = target.memory.as_ref().map(ByteSize::bytes);
    let host_config = HostConfig {
        mounts: Some(mounts),
        network_mode: Some(target.network.clone().unwrap_or_else(|| "none".into())),
        ipc_mode: target.ipc.clone(),
        shm_size: target.shm_size.as_ref().map(ByteSize::bytes),
        ulimits: (!ulimits.is_empty()).then_some(ulimits),
        nano_cpus: target.cpus.map(|c| (c * 1e9) as i64),
        memory,
        // The limit is the memory the benchmark may use: no swap on top of it.
        memory_swap: memory,
        device_requests: device_requests(target)?,
        privileged: Some(false),
        // The worker reads two read-only files and computes: it needs no capability.
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        auto_remove: Some(false),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(image),
        entrypoint: Some(vec![WORKER_PATH.to_string()]),
        cmd: Some(args),
        env: Some(target.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(HashMap::from([
            (LABEL_RUN.to_string(), run_id.to_string()),
            (LABEL_TARGET.to_string(), target.display_name()),
        ])),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// The read-only bind mounts of the `files` of the job's command cases, each at its path
/// relative to the suite under [`SUITE_PATH`]. The cases' suite directory is rewritten to
/// [`SUITE_PATH`] (to none, the image's working directory, when a case has no files).
pub fn command_mounts(job: &mut Job) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = Vec::new();
    for case in &mut job.cases {
        let Params::Command(p) = &mut case.params else {
            continue;
        };
        let root = std::path::PathBuf::from(&p.root);
        for f in &p.files {
            let rel = f.trim_end_matches('/');
            let target = format!("{SUITE_PATH}/{rel}");
            if mounts
                .iter()
                .any(|m| m.target.as_deref() == Some(target.as_str()))
            {
                continue;
            }
            mounts.push(Mount {
                target: Some(target),
                source: Some(root.join(rel).display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        p.root = if p.files.is_empty() {
            String::new()
        } else {
            SUITE_PATH.to_string()
        };
    }
    mounts
}

/// A container's name: readable in `docker ps`, unique per start.
pub(super) fn container_name(run_id: &str, what: &str) -> String {
    let safe = crate::sys::safe_name;
    let nonce: u32 = rand::random();
    let run: String = safe(run_id).chars().take(60).collect();
    format!("tagbench-{run}-{}-{nonce:08x}", safe(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetSpec {
        TargetSpec {
            image: Some("repo/name:tag".into()),
            ..Default::default()
        }
    }

    #[test]
    fn safe_defaults() {
        let body = container_body(&target(), Path::new("/x/tagbench"), None, vec![], "r1").unwrap();
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert!(hc.device_requests.is_none());
        let mounts = hc.mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].target.as_deref(), Some(WORKER_PATH));
        assert_eq!(body.labels.unwrap()[LABEL_RUN], "r1");
        assert_eq!(body.entrypoint, Some(vec![WORKER_PATH.to_string()]));
    }

    #[test]
    fn suite_options() {
        let mut t = target();
        t.shm_size = Some(ByteSize::parse("1g").unwrap());
        t.ipc = Some("host".into());
        t.network = Some("bridge".into());
        t.ulimits = [("memlock".to_string(), -1), ("stack".to_string(), 67108864)].into();
        t.cpus = Some(1.5);
        t.memory = Some(ByteSize::parse("8g").unwrap());
        t.env = [("A".to_string(), "1".to_string())].into();
        t.gpus = GpuSelection::List(vec![0, 2]);
        let body = container_body(&t, Path::new("/x"), Some(Path::new("/j.json")), vec![], "r").unwrap();
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
        assert_eq!(hc.mounts.unwrap()[1].target.as_deref(), Some(JOB_PATH));
    }

    #[test]
    fn command_files_are_mounted_read_only_under_the_suite_path() {
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
            params: Params::Command(p),
            measure: Default::default(),
        };
        let mut job = Job {
            run_id: "r".into(),
            engine: Default::default(),
            device: Device::Cpu,
            gpus: vec![],
            cases: vec![case.clone(), case],
        };
        let mounts = command_mounts(&mut job);
        let shown: Vec<(String, String, bool)> = mounts
            .iter()
            .map(|m| {
                (
                    m.source.clone().unwrap(),
                    m.target.clone().unwrap(),
                    m.read_only.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("/home/u/suites/bench".into(), format!("{SUITE_PATH}/bench"), true),
                (
                    "/home/u/suites/data.txt".into(),
                    format!("{SUITE_PATH}/data.txt"),
                    true
                ),
            ]
        );
        match &job.cases[0].params {
            Params::Command(p) => assert_eq!(p.root, SUITE_PATH),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gpu_requests() {
        let mut t = target();
        t.gpus = GpuSelection::Named(GpuNamed::All);
        assert_eq!(device_requests(&t).unwrap().unwrap()[0].count, Some(-1));
        t.gpus = GpuSelection::Named(GpuNamed::None);
        assert!(device_requests(&t).unwrap().is_none());
        t.gpus = GpuSelection::Unset;
        t.device = Some(Device::Cuda);
        assert_eq!(device_requests(&t).unwrap().unwrap()[0].count, Some(-1));
        t.gpus = GpuSelection::Named(GpuNamed::Each);
        assert!(device_requests(&t).is_err());
    }
}
