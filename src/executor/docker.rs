//! The `docker` executor: the worker inside a container image, through the Docker Engine API
//! (bollard; Podman's compatible socket through `DOCKER_HOST`). The worker binary (this one) and
//! the job file are bind-mounted read-only, GPUs come through device requests, the network is
//! `none` unless the suite asks, every container is labelled `tagbench.run=<run-id>` and is
//! removed when its worker ends, on errors and on Ctrl-C.

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, DeviceRequest, HostConfig, ImageInspect, Mount, MountType,
    ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use tokio::runtime::Runtime;

use super::local::{log_tail, recv_line, signal_name};
use super::{Executor, ExitInfo, LineEvent, WorkerHandle};
use crate::case::Device;
use crate::protocol::Job;
use crate::results::TargetMeta;
use crate::suite::{GpuNamed, GpuSelection, PullPolicy, TargetSpec};

/// The label every tagbench container carries; its value is the run id.
pub const LABEL_RUN: &str = "tagbench.run";
/// The label naming the target a container belongs to (for `tagbench clean`'s listing).
const LABEL_TARGET: &str = "tagbench.target";
/// Where the worker binary and the job file appear inside the container.
const WORKER_PATH: &str = "/opt/tagbench/tagbench";
const JOB_PATH: &str = "/opt/tagbench/job.json";
/// The prefix of the lines the host adds to a worker's log.
const HOST_NOTE: &str = "[tagbench]";
/// How long one engine call (inspect, create, start, remove) may take before we give up on it.
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a finished or killed container may take to stop before it is killed (again).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the `--version` check of a new target may run (it takes well under a second).
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(60);

type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// The engine address, as `DOCKER_HOST` gives it or bollard's default socket (the same value).
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the engine and negotiates the API version (so that 1.41 engines work).
async fn connect() -> Result<Docker> {
    let host = docker_host();
    let from = if std::env::var_os("DOCKER_HOST").is_some() {
        "DOCKER_HOST"
    } else {
        "the default socket; set DOCKER_HOST for another engine or Podman's socket"
    };
    let fail = |e: String| anyhow!("failed to reach the Docker engine at {host} ({from}): {e}");
    let docker = Docker::connect_with_defaults().map_err(|e| fail(e.to_string()))?;
    match tokio::time::timeout(API_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail(format!("no answer within {} s", API_TIMEOUT.as_secs()))),
    }
}

/// An engine call with a time limit, its error naming what was attempted.
async fn call<T>(what: &str, fut: impl std::future::Future<Output = Result<T, DockerError>>) -> Result<T> {
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("failed to {what}: {}", engine_message(&e))),
        Err(_) => Err(anyhow!(
            "failed to {what}: the engine did not answer within {} s",
            API_TIMEOUT.as_secs()
        )),
    }
}

/// The engine's own message where it sent one (`could not select device driver ...`).
fn engine_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

/// Run ids whose containers are removed when the process is interrupted.
static INTERRUPT_RUNS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static INTERRUPT_HANDLER: Once = Once::new();
/// Set when SIGINT/SIGTERM arrived: the handler is removing containers and will exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// After an interrupt the workers die because their containers are being removed; the runner
/// must not take that for a crash and carry on, so the thread waits here for the exit.
fn hold_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// On SIGINT/SIGTERM: remove the containers of the runs registered here, then exit 130. The
/// handler is registered before this returns, so no interrupt can slip past it.
fn remove_containers_on_interrupt(run_id: &str) {
    if let Ok(mut runs) = INTERRUPT_RUNS.lock() {
        runs.insert(run_id.to_string());
    }
    #[cfg(unix)]
    INTERRUPT_HANDLER.call_once(|| {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        let (int, term) = {
            let _guard = rt.enter();
            (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        };
        let (Ok(mut int), Ok(mut term)) = (int, term) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("tagbench-interrupt".into())
            .spawn(move || {
                rt.block_on(async {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    let runs: Vec<String> = INTERRUPT_RUNS
                        .lock()
                        .map(|r| r.iter().cloned().collect())
                        .unwrap_or_default();
                    eprintln!("\ninterrupted: removing the containers of run {}", runs.join(", "));
                    match connect().await {
                        Ok(docker) => {
                            for run in &runs {
                                match remove_labelled(&docker, Some(run)).await {
                                    Ok(removed) => removed.iter().for_each(|r| eprintln!("{r}")),
                                    Err(e) => eprintln!("error: {e:#}"),
                                }
                            }
                        }
                        Err(e) => eprintln!("error: {e:#}"),
                    }
                });
                std::process::exit(130);
            });
        if let Err(e) = spawned {
            eprintln!("warning: failed to watch for Ctrl-C ({e}); interrupted runs may leave containers (`tagbench clean` removes them)");
        }
    });
}

/// Removes every container labelled `tagbench.run` (or `tagbench.run=<run>`); says which.
async fn remove_labelled(docker: &Docker, run: Option<&str>) -> Result<Vec<String>> {
    let label = match run {
        Some(r) => format!("{LABEL_RUN}={r}"),
        None => LABEL_RUN.to_string(),
    };
    let filters = HashMap::from([("label".to_string(), vec![label.clone()])]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let list = call(
        &format!("list the containers labelled {label}"),
        docker.list_containers(Some(opts)),
    )
    .await?;
    let mut removed = Vec::new();
    for c in list {
        let Some(id) = c.id else { continue };
        let name = c
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let labels = c.labels.unwrap_or_default();
        let short = &id[..id.len().min(12)];
        remove_container(docker, &id)
            .await
            .with_context(|| format!("failed to remove container {short} ({name})"))?;
        removed.push(format!(
            "removed container {short} {name} (image {}, run {}, target {})",
            c.image.unwrap_or_default(),
            labels.get(LABEL_RUN).map_or("?", String::as_str),
            labels.get(LABEL_TARGET).map_or("?", String::as_str),
        ));
    }
    Ok(removed)
}

/// Force-removes a container (killing it if it runs); one that is gone already is fine.
async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match tokio::time::timeout(API_TIMEOUT, docker.remove_container(id, Some(opts))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if is_not_found(&e) => Ok(()),
        // 409: removal already in progress (another path got there first).
        Ok(Err(DockerError::DockerResponseServerError { status_code: 409, .. })) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("{}", engine_message(&e))),
        Err(_) => Err(anyhow!(
            "the engine did not answer within {} s",
            API_TIMEOUT.as_secs()
        )),
    }
}

/// `tagbench clean`: removes the containers that interrupted runs left behind.
pub fn cmd_clean(run: Option<&str>) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let removed = rt.block_on(async {
        let docker = connect().await?;
        remove_labelled(&docker, run).await
    })?;
    for r in &removed {
        println!("{r}");
    }
    match run {
        Some(r) => eprintln!("{} containers of run {r} removed", removed.len()),
        None => eprintln!("{} tagbench containers removed", removed.len()),
    }
    Ok(crate::error::EXIT_OK)
}

/// Parses a Docker-style size (`64m`, `1g`, `512MiB`, `1073741824`) into bytes; the units are
/// binary, as `docker run --shm-size` reads them.
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let num: f64 = num
        .parse()
        .map_err(|_| anyhow!("bad size `{s}` (expected e.g. 64m, 1g, 2gib or a byte count)"))?;
    let shift = match unit.trim().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => bail!("bad size `{s}` (unknown unit; expected b, k, m, g or t)"),
    };
    Ok((num * (1u64 << shift) as f64) as i64)
}

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
    let memory = target
        .memory
        .as_deref()
        .map(parse_bytes)
        .transpose()
        .context("bad `memory`")?;
    let host_config = HostConfig {
        mounts: Some(mounts),
        network_mode: Some(target.network.clone().unwrap_or_else(|| "none".into())),
        ipc_mode: target.ipc.clone(),
        shm_size: target
            .shm_size
            .as_deref()
            .map(parse_bytes)
            .transpose()
            .context("bad `shm_size`")?,
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

/// A container's name: readable in `docker ps`, unique per start.
fn container_name(run_id: &str, what: &str) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let nonce: u32 = rand::random();
    let run: String = safe(run_id).chars().take(60).collect();
    format!("tagbench-{run}-{}-{nonce:08x}", safe(what))
}

/// A created, attached and started container.
struct Started {
    id: String,
    output: OutputStream,
    create_ms: f64,
    start_ms: f64,
}

/// Creates, attaches and starts a container; a container that cannot start is removed.
async fn create_and_start(docker: &Docker, name: &str, body: ContainerCreateBody) -> Result<Started> {
    let image = body.image.clone().unwrap_or_default();
    let t0 = Instant::now();
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    let created = call(
        &format!("create a container from image {image}"),
        docker.create_container(Some(opts), body),
    )
    .await?;
    let id = created.id;
    let create_ms = t0.elapsed().as_secs_f64() * 1e3;
    let started = async {
        // Attached before the start, so that not a byte of output is lost.
        let attach = AttachContainerOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(true)
            .build();
        let attached = call(
            &format!("attach to container {name}"),
            docker.attach_container(&id, Some(attach)),
        )
        .await?;
        call(
            &format!("start a container from image {image}"),
            docker.start_container(&id, None),
        )
        .await
        .map_err(add_start_hint)?;
        Ok::<_, anyhow::Error>(attached.output)
    }
    .await;
    match started {
        Ok(output) => Ok(Started {
            id,
            output,
            create_ms,
            start_ms: t0.elapsed().as_secs_f64() * 1e3 - create_ms,
        }),
        Err(e) => {
            let _ = remove_container(docker, &id).await;
            Err(e)
        }
    }
}

/// What to do about the start errors users meet most.
fn add_start_hint(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("could not select device driver") {
        e.context("the engine has no NVIDIA runtime for GPU device requests (install the NVIDIA Container Toolkit and restart the engine, or run with --gpus none)")
    } else {
        e
    }
}

/// Why a worker that printed nothing ended, where the cause is the image itself.
fn diagnose_image(stderr: &str, image: &str) -> Option<String> {
    let exec_failed = stderr.contains(&format!("exec {WORKER_PATH}: no such file or directory"));
    let old_glibc = stderr.contains("GLIBC_") && stderr.contains("not found");
    (exec_failed || old_glibc).then(|| {
        format!(
            "image {image} has no compatible libc for the worker: tagbench is linked against glibc \
             (it needs /lib64/ld-linux-x86-64.so.2, libc.so.6, libm.so.6, libgcc_s.so.1 of glibc 2.34 or newer); \
             use a glibc-based image (Debian, Ubuntu, the CUDA and PyTorch images)"
        )
    })
}

/// How a container ended, from its state.
fn exit_info(
    state: &ContainerInspectResponse,
    memory: Option<&str>,
    stderr_tail: String,
    image: &str,
) -> ExitInfo {
    let st = state.state.clone().unwrap_or_default();
    let code = st.exit_code;
    let detail = if st.oom_killed == Some(true) {
        Some(match memory {
            Some(m) => format!("OOM-killed: the container exceeded its memory limit ({m})"),
            None => "OOM-killed: the container ran out of memory".to_string(),
        })
    } else if let Some(d) = diagnose_image(&stderr_tail, image) {
        Some(d)
    } else {
        match code {
            // The engine reports a process killed by signal N as 128 + N.
            Some(c) if (129..160).contains(&c) => {
                let sig = (c - 128) as i32;
                Some(format!("killed by signal {sig} ({})", signal_name(sig)))
            }
            _ => st.error.filter(|e| !e.is_empty()),
        }
    };
    ExitInfo {
        code,
        detail,
        stderr_tail,
    }
}

/// Runs the containers of a target's workers.
pub struct DockerExecutor {
    rt: Arc<Runtime>,
    docker: Option<Docker>,
    worker_exe: PathBuf,
    run_id: String,
}

impl DockerExecutor {
    pub fn new(run_id: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("failed to start the async runtime")?;
        let worker_exe = std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .context("failed to locate the tagbench binary")?;
        remove_containers_on_interrupt(run_id);
        Ok(DockerExecutor {
            rt: Arc::new(rt),
            docker: None,
            worker_exe,
            run_id: run_id.to_string(),
        })
    }

    fn docker(&mut self) -> Result<Docker> {
        if let Some(d) = &self.docker {
            return Ok(d.clone());
        }
        let d = self.rt.block_on(connect())?;
        self.docker = Some(d.clone());
        Ok(d)
    }

    /// The image, pulled first where the policy says so.
    fn ensure_image(&mut self, image: &str, pull: PullPolicy) -> Result<ImageInspect> {
        let docker = self.docker()?;
        self.rt.block_on(async {
            let present = match tokio::time::timeout(API_TIMEOUT, docker.inspect_image(image)).await {
                Ok(Ok(i)) => Some(i),
                Ok(Err(e)) if is_not_found(&e) => None,
                Ok(Err(e)) => bail!("failed to inspect image {image}: {}", engine_message(&e)),
                Err(_) => bail!("failed to inspect image {image}: the engine did not answer"),
            };
            match (present, pull) {
                (Some(i), PullPolicy::Never | PullPolicy::Missing) => return Ok(i),
                (None, PullPolicy::Never) => bail!(
                    "image {image} is not on the Docker engine and the pull policy is `never` \
                     (build or load it, or run with --pull=missing)"
                ),
                _ => {}
            }
            let opts = CreateImageOptionsBuilder::default().from_image(image).build();
            let mut progress = docker.create_image(Some(opts), None, None);
            eprintln!("pulling image {image}");
            while let Some(item) = progress.next().await {
                item.map_err(|e| anyhow!("failed to pull image {image}: {}", engine_message(&e)))?;
            }
            call(&format!("inspect image {image}"), docker.inspect_image(image)).await
        })
    }

    /// Runs `tagbench --version` in the target's container, so that an image the worker cannot
    /// run in (no glibc, no NVIDIA runtime, a bad option) fails the target once, with its cause.
    fn preflight(&mut self, target: &TargetSpec, image: &str) -> Result<f64> {
        let docker = self.docker()?;
        let body = container_body(
            target,
            &self.worker_exe,
            None,
            vec!["--version".into()],
            &self.run_id,
        )?;
        let name = container_name(&self.run_id, "check");
        let memory = target.memory.clone();
        self.rt.block_on(async {
            let t0 = Instant::now();
            let mut started = create_and_start(&docker, &name, body).await?;
            let id = started.id.clone();
            let run = async {
                let (mut out, mut err) = (Vec::new(), Vec::new());
                while let Some(item) = started.output.next().await {
                    match item {
                        Ok(LogOutput::StdOut { message }) => out.extend_from_slice(&message),
                        Ok(LogOutput::StdErr { message }) => err.extend_from_slice(&message),
                        _ => {}
                    }
                }
                let _ = docker.wait_container(&id, None).collect::<Vec<_>>().await;
                let state = call("inspect the check container", docker.inspect_container(&id, None)).await?;
                Ok::<_, anyhow::Error>((out, err, state))
            };
            let result = tokio::time::timeout(PREFLIGHT_TIMEOUT, run).await;
            let elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
            let _ = remove_container(&docker, &id).await;
            let (out, err, state) = result.map_err(|_| {
                anyhow!(
                    "the worker did not answer `--version` in image {image} within {} s",
                    PREFLIGHT_TIMEOUT.as_secs()
                )
            })??;
            let out = String::from_utf8_lossy(&out);
            let err = String::from_utf8_lossy(&err).into_owned();
            let info = exit_info(&state, memory.as_deref(), err, image);
            if info.code != Some(0) || !out.starts_with("tagbench ") {
                bail!("the worker cannot run in image {image}: {info}");
            }
            Ok(elapsed_ms)
        })
    }
}

impl Executor for DockerExecutor {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn prepare(&mut self, target: &TargetSpec) -> Result<TargetMeta> {
        let image = target
            .image
            .clone()
            .with_context(|| format!("target {} has no image", target.display_name()))?;
        let inspect = self.ensure_image(&image, target.pull.unwrap_or_default())?;
        let mut meta = TargetMeta {
            name: target.display_name(),
            executor: "docker".into(),
            engine: target.engine.unwrap_or_default().as_str().into(),
            device: target.device.unwrap_or_default().as_str().into(),
            image: image.clone(),
            image_id: inspect.id.clone().unwrap_or_default(),
            repo_digests: inspect.repo_digests.clone().unwrap_or_default(),
            image_created: inspect
                .created
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default(),
            gpu_index: match &target.gpus {
                GpuSelection::List(l) if l.len() == 1 => Some(l[0]),
                _ => None,
            },
            ..Default::default()
        };
        let check_ms = self
            .preflight(target, &image)
            .inspect_err(|_| hold_if_interrupted())?;
        let docker = self.docker()?;
        if let Ok(Ok(v)) = self
            .rt
            .block_on(async { tokio::time::timeout(API_TIMEOUT, docker.version()).await })
        {
            meta.env
                .insert("docker.engine_version".into(), v.version.unwrap_or_default());
            meta.env
                .insert("docker.api_version".into(), v.api_version.unwrap_or_default());
        }
        meta.env
            .insert("docker.check_container_ms".into(), format!("{check_ms:.0}"));
        Ok(meta)
    }

    fn start(&mut self, target: &TargetSpec, job: &Job, log: &Path) -> Result<Box<dyn WorkerHandle>> {
        let docker = self.docker()?;
        let image = target.image.clone().unwrap_or_default();
        // The container sees only the GPUs it was given, numbered from 0.
        let mut job = job.clone();
        job.gpus = (0..job.gpus.len()).collect();
        let job_path = log.with_extension("job.json");
        std::fs::write(&job_path, serde_json::to_vec(&job)?)
            .with_context(|| format!("failed to write {}", job_path.display()))?;
        let job_path = job_path
            .canonicalize()
            .with_context(|| format!("failed to resolve {}", job_path.display()))?;
        let body = container_body(
            target,
            &self.worker_exe,
            Some(&job_path),
            vec!["worker".into(), "--job".into(), JOB_PATH.into()],
            &self.run_id,
        )?;
        let stem = log.file_stem().and_then(|s| s.to_str()).unwrap_or("worker");
        let name = container_name(&self.run_id, stem);
        let created_at = Instant::now();
        let started = self.rt.block_on(create_and_start(&docker, &name, body))?;
        let (tx, rx) = mpsc::channel();
        let pump = self.rt.spawn(pump_output(started.output, tx, log.to_owned()));
        Ok(Box::new(DockerWorker {
            rt: self.rt.clone(),
            docker,
            id: started.id,
            name,
            image,
            memory: target.memory.clone(),
            lines: rx,
            pump: Some(pump),
            log: log.to_owned(),
            created_at,
            create_ms: started.create_ms,
            start_ms: started.start_ms,
            first_line_seen: false,
            removed: false,
        }))
    }
}

/// Forwards the container's stdout line by line into `tx` and appends its stderr to `log`.
async fn pump_output(mut output: OutputStream, tx: Sender<std::io::Result<String>>, log: PathBuf) {
    let mut log_file = OpenOptions::new().create(true).append(true).open(&log).ok();
    let mut partial: Vec<u8> = Vec::new();
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) => {
                partial.extend_from_slice(&message);
                while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1])
                        .trim_end_matches('\r')
                        .to_string();
                    if tx.send(Ok(text)).is_err() {
                        return;
                    }
                }
            }
            Ok(LogOutput::StdErr { message }) | Ok(LogOutput::Console { message }) => {
                if let Some(f) = log_file.as_mut() {
                    let _ = f.write_all(&message);
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        }
    }
    if !partial.is_empty() {
        let _ = tx.send(Ok(String::from_utf8_lossy(&partial).into_owned()));
    }
}

struct DockerWorker {
    rt: Arc<Runtime>,
    docker: Docker,
    id: String,
    name: String,
    image: String,
    memory: Option<String>,
    lines: Receiver<std::io::Result<String>>,
    pump: Option<tokio::task::JoinHandle<()>>,
    log: PathBuf,
    created_at: Instant,
    create_ms: f64,
    start_ms: f64,
    first_line_seen: bool,
    removed: bool,
}

impl DockerWorker {
    /// Notes in the log how long the container took to say its first protocol line: the
    /// per-container overhead of this executor.
    fn note_first_line(&mut self) {
        self.first_line_seen = true;
        let first_ms = self.created_at.elapsed().as_secs_f64() * 1e3;
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(
                f,
                "{HOST_NOTE} container {} ({}): create {:.0} ms, attach+start {:.0} ms, first protocol line {:.0} ms after create",
                self.name, self.image, self.create_ms, self.start_ms, first_ms
            );
        }
    }

    fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        let docker = self.docker.clone();
        let id = self.id.clone();
        self.rt
            .block_on(remove_container(&docker, &id))
            .with_context(|| format!("failed to remove container {}", self.name))?;
        self.removed = true;
        Ok(())
    }
}

impl WorkerHandle for DockerWorker {
    fn next_line(&mut self, timeout: Duration) -> LineEvent {
        let ev = recv_line(&self.lines, timeout);
        if matches!(ev, LineEvent::Eof) {
            hold_if_interrupted();
        }
        if matches!(ev, LineEvent::Line(_)) && !self.first_line_seen {
            self.note_first_line();
        }
        ev
    }

    fn kill(&mut self) -> Result<()> {
        let docker = self.docker.clone();
        let id = self.id.clone();
        let opts = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
        match self.rt.block_on(async {
            tokio::time::timeout(API_TIMEOUT, docker.kill_container(&id, Some(opts))).await
        }) {
            Ok(Ok(())) => Ok(()),
            // 409: not running (it ended on its own); 404: gone.
            Ok(Err(DockerError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            })) => Ok(()),
            Ok(Err(e)) => Err(anyhow!(
                "failed to kill container {}: {}",
                self.name,
                engine_message(&e)
            )),
            Err(_) => Err(anyhow!(
                "failed to kill container {}: the engine did not answer",
                self.name
            )),
        }
    }

    fn finish(&mut self) -> Result<ExitInfo> {
        hold_if_interrupted();
        let docker = self.docker.clone();
        let id = self.id.clone();
        let pump = self.pump.take();
        let state = self.rt.block_on(async {
            let waited =
                tokio::time::timeout(STOP_TIMEOUT, docker.wait_container(&id, None).collect::<Vec<_>>())
                    .await;
            if waited.is_err() {
                let opts = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                let _ = tokio::time::timeout(API_TIMEOUT, docker.kill_container(&id, Some(opts))).await;
            }
            // The last stderr bytes reach the log before its tail is read.
            if let Some(p) = pump {
                let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
            }
            call(
                &format!("inspect container {}", self.name),
                docker.inspect_container(&id, None),
            )
            .await
        });
        let removed = self.remove();
        let state = state?;
        removed?;
        // The host's own notes in the log are not the worker's last words.
        let log = log_tail(&self.log, 4000);
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with(HOST_NOTE))
            .collect::<Vec<_>>();
        let tail = tail[tail.len().saturating_sub(20)..].join("\n");
        Ok(exit_info(&state, self.memory.as_deref(), tail, &self.image))
    }
}

impl Drop for DockerWorker {
    fn drop(&mut self) {
        // Every path out (an error in the runner included) leaves no container behind.
        if !self.removed {
            if let Err(e) = self.remove() {
                eprintln!("warning: {e:#}; `tagbench clean` removes it");
            }
        }
    }
}

/// The number of NVIDIA GPUs on this host, from `nvidia-smi`.
pub fn host_gpu_count() -> Result<usize> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .output()
        .map_err(|e| anyhow!("failed to count the GPUs for `--gpus each`: nvidia-smi could not run ({e})"))?;
    if !out.status.success() {
        bail!(
            "failed to count the GPUs for `--gpus each`: nvidia-smi failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let n = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    if n == 0 {
        bail!("`--gpus each` found no GPU on this host (nvidia-smi lists none)");
    }
    Ok(n)
}

/// Turns every `gpus = "each"` target into one target per GPU (`<name>@gpu<i>`), so that
/// results are per device.
pub fn expand_gpu_each(
    targets: Vec<TargetSpec>,
    gpu_count: impl FnOnce() -> Result<usize>,
) -> Result<Vec<TargetSpec>> {
    if !targets
        .iter()
        .any(|t| t.gpus == GpuSelection::Named(GpuNamed::Each))
    {
        return Ok(targets);
    }
    let n = gpu_count()?;
    let mut out = Vec::new();
    for t in targets {
        if t.gpus != GpuSelection::Named(GpuNamed::Each) {
            out.push(t);
            continue;
        }
        for i in 0..n {
            out.push(TargetSpec {
                name: Some(format!("{}@gpu{i}", t.display_name())),
                gpus: GpuSelection::List(vec![i]),
                ..t.clone()
            });
        }
    }
    Ok(out)
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
    fn sizes() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512kb").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert!(parse_bytes("12q").is_err());
        assert!(parse_bytes("g").is_err());
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
        t.shm_size = Some("1g".into());
        t.ipc = Some("host".into());
        t.network = Some("bridge".into());
        t.ulimits = [("memlock".to_string(), -1), ("stack".to_string(), 67108864)].into();
        t.cpus = Some(1.5);
        t.memory = Some("8g".into());
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

    #[test]
    fn each_expands_per_gpu() {
        let mut t = target();
        t.gpus = GpuSelection::Named(GpuNamed::Each);
        let out = expand_gpu_each(vec![t, TargetSpec::local()], || Ok(2)).unwrap();
        let names: Vec<String> = out.iter().map(TargetSpec::display_name).collect();
        assert_eq!(names, ["repo/name:tag@gpu0", "repo/name:tag@gpu1", "local"]);
        assert_eq!(out[1].gpus, GpuSelection::List(vec![1]));
        // No `each`: the GPUs are not counted at all.
        let out = expand_gpu_each(vec![target()], || bail!("not called")).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn libc_diagnosis() {
        let d = diagnose_image("exec /opt/tagbench/tagbench: no such file or directory\n", "x:1").unwrap();
        assert!(d.contains("no compatible libc"), "{d}");
        assert!(diagnose_image(
            "/opt/tagbench/tagbench: /lib/libc.so.6: version `GLIBC_2.34' not found",
            "x"
        )
        .is_some());
        assert!(diagnose_image("panicked at foo", "x").is_none());
    }
}
