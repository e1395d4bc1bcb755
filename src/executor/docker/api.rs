//! The Docker Engine API as tagbench uses it: connecting (with API-version negotiation), calls
//! with a time limit and the engine's own error message, creating + starting a container, and
//! removing containers (one, or all those of a run).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::Stream;

use crate::executor::container_spec::{LABEL_RUN, LABEL_TARGET};

/// How long one engine call (inspect, create, start, remove) may take before we give up on it.
pub(super) const API_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;
/// A container's attached stdin.
pub(super) type Input = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// The engine address, as `DOCKER_HOST` gives it or bollard's default socket (the same value).
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the engine and negotiates the API version (so that 1.41 engines work).
pub(crate) async fn connect() -> Result<Docker> {
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

/// Podman's version when the engine is Podman's Docker-compatible service (its version
/// answer lists a `Podman Engine` component), else `None`.
pub(super) fn podman_version(v: &bollard::models::SystemVersion) -> Option<String> {
    v.components
        .iter()
        .flatten()
        .find(|c| c.name == "Podman Engine")
        .map(|c| c.version.clone())
}

/// Why a GPU target cannot run on Podman's Docker-compatible API: it accepts NVIDIA device
/// requests and ignores them (the container starts without GPUs, so every CUDA case would
/// report a missing driver), and a CDI name in `Devices` is taken for a path (podman 4.3:
/// "stat nvidia.com/gpu=all: no such file or directory") or, with permissions, does not resolve.
pub(super) fn podman_gpu_reason(version: &str) -> String {
    format!(
        "GPUs cannot be requested through Podman's Docker-compatible API (podman {version}): it ignores \
         NVIDIA device requests, and CDI devices (nvidia.com/gpu=all) are reachable only through \
         `podman run --device`; run GPU targets on Docker with the NVIDIA Container Toolkit, or give \
         this target `gpus = \"none\"`"
    )
}

/// Runs `fut` to completion on a runtime of its own (one thread): how the synchronous commands
/// (`clean`, a bisect's copy, an interrupt's clean-up) talk to the engine.
pub(crate) fn block_on<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(fut)
}

/// An engine call with a time limit, its error naming what was attempted.
pub(super) async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, DockerError>>,
) -> Result<T> {
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
pub(super) fn engine_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

pub(super) fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

/// A tagbench container, as `docker ps -a` lists it.
#[derive(Debug, Clone)]
pub(crate) struct Labelled {
    pub id: String,
    pub name: String,
    pub image: String,
    /// Its `tagbench.run` label: the run id.
    pub run: String,
    pub target: String,
}

impl Labelled {
    fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// Every container labelled `tagbench.run` (or `tagbench.run=<run>`), running or not.
pub(crate) async fn list_labelled(docker: &Docker, run: Option<&str>) -> Result<Vec<Labelled>> {
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
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            Some(Labelled {
                id: c.id?,
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                run: labels.get(LABEL_RUN).cloned().unwrap_or_else(|| "?".into()),
                target: labels.get(LABEL_TARGET).cloned().unwrap_or_else(|| "?".into()),
            })
        })
        .collect())
}

/// Removes the listed containers; says which.
pub(crate) async fn remove_listed(docker: &Docker, list: &[Labelled]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for c in list {
        let short = c.short_id();
        remove_container(docker, &c.id)
            .await
            .with_context(|| format!("failed to remove container {short} ({})", c.name))?;
        removed.push(format!(
            "removed container {short} {} (image {}, run {}, target {})",
            c.name, c.image, c.run, c.target
        ));
    }
    Ok(removed)
}

/// Removes every container labelled `tagbench.run` (or `tagbench.run=<run>`); says which.
pub(crate) async fn remove_labelled(docker: &Docker, run: Option<&str>) -> Result<Vec<String>> {
    let list = list_labelled(docker, run).await?;
    remove_listed(docker, &list).await
}

/// Force-removes a container (killing it if it runs); one that is gone already is fine.
pub(super) async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
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

/// A created, attached and started container.
pub(super) struct Started {
    pub id: String,
    pub output: OutputStream,
    /// The container's stdin, where the body asked for one.
    pub input: Option<Input>,
    pub create_ms: f64,
    pub start_ms: f64,
}

/// Creates, attaches and starts a container; a container that cannot start is removed.
pub(super) async fn create_and_start(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
) -> Result<Started> {
    let image = body.image.clone().unwrap_or_default();
    let stdin = body.open_stdin == Some(true);
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
        // Attached before the start, so that not a byte of output is lost. Without `logs`, as
        // `docker run` attaches: replaying the log while the live stream runs can deliver the
        // first lines twice when the worker writes them during the attach (seen as a duplicate
        // `start` line, so the case's first half "reported nothing").
        let attach = AttachContainerOptionsBuilder::default()
            .stdin(stdin)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
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
        Ok::<_, anyhow::Error>((attached.output, attached.input))
    }
    .await;
    match started {
        Ok((output, input)) => Ok(Started {
            id,
            output,
            input: stdin.then_some(input),
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
