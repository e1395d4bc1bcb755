//! The `docker` executor: the worker inside a container image, through the Docker Engine API
//! (bollard; Podman's compatible socket through `DOCKER_HOST`). The worker binary (this one) and
//! the job file are bind-mounted read-only, GPUs come through device requests, the network is
//! `none` unless the suite asks, every container is labelled `tagbench.run=<run-id>` and is
//! removed when its worker ends, on errors and on Ctrl-C. What the container gets is
//! [`ContainerSpec`]'s rule, shared with Slurm's docker-in-step.

mod api;
pub mod extract;
mod glibc;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bollard::container::LogOutput;
use bollard::models::ImageInspect;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::runtime::Runtime;

use super::container_spec::{command_binds, job_args, ContainerSpec, GpuRequest};
use super::{Executor, Unsupported, WorkerHandle};
use crate::case::Case;
use crate::error::CaseError;
use crate::protocol::Job;
use crate::results::TargetMeta;
use crate::suite::{GpuSelection, PullPolicy, TargetSpec};
use crate::sys::interrupt::hold_if_interrupted;
pub use api::docker_host;
pub(crate) use api::{block_on, connect, list_labelled, remove_labelled, remove_listed, Labelled};
use api::{call, create_and_start, engine_message, is_not_found, remove_container, API_TIMEOUT};
use worker::{exit_info, pump_output, DockerWorker};

/// How long the `--version` check of a new target may run (it takes well under a second).
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(60);

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
        let host_exe = std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .context("failed to locate the tagbench binary")?;
        let (worker_exe, stale) = glibc::worker_for(
            &host_exe,
            std::env::var_os(glibc::WORKER_VAR).map(PathBuf::from),
            &format!("tagbench {}", crate::VERSION),
        );
        if let Some(w) = stale {
            eprintln!("warning: {w}");
        }
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
    /// run in (no glibc, too old a glibc, no NVIDIA runtime, a bad option) fails the target once,
    /// with its cause.
    fn preflight(&mut self, target: &TargetSpec, image: &str) -> Result<f64> {
        let t0 = Instant::now();
        let (out, err, state) = self.check_container(target, None, vec!["--version".into()])?;
        let elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
        let info = exit_info(&state, target.memory.as_ref(), err.clone(), image);
        if info.code != Some(0) || !out.starts_with("tagbench ") {
            if worker::libc_problem(&err) {
                bail!(
                    "the worker cannot run in image {image}: {}",
                    self.libc_mismatch(target, image)
                );
            }
            bail!("the worker cannot run in image {image}: {info}");
        }
        Ok(elapsed_ms)
    }

    /// Why the worker's libc does not fit the image: the glibc the image has (its loader's
    /// `--version`, glibc 2.33+, else its libc.so.6 run through the loader, which prints the same
    /// banner), or none (no loader), against the newest glibc symbol version the worker references.
    fn libc_mismatch(&mut self, target: &TargetSpec, image: &str) -> String {
        let needed = std::fs::read(&self.worker_exe)
            .ok()
            .and_then(|b| glibc::needed_glibc(&b))
            .unwrap_or_else(|| "?".into());
        let mut found = None;
        for arg in std::iter::once("--version").chain(glibc::LIBC_PATHS) {
            match self.check_container(target, Some(glibc::LOADER), vec![arg.into()]) {
                Ok((out, err, _)) => {
                    if let Some(v) = glibc::found_glibc(&format!("{out}\n{err}")) {
                        found = Some(v);
                        break;
                    }
                    found = Some("of unknown version".to_string());
                }
                // The loader itself is missing: the container cannot start.
                Err(_) => break,
            }
        }
        glibc::mismatch(image, found.as_deref(), &needed, &self.worker_exe)
    }

    /// Runs a short check container of the target (the worker, or `entrypoint` instead) to its
    /// end: its stdout, stderr and final state. The container is removed.
    fn check_container(
        &mut self,
        target: &TargetSpec,
        entrypoint: Option<&str>,
        args: Vec<String>,
    ) -> Result<(String, String, bollard::models::ContainerInspectResponse)> {
        let docker = self.docker()?;
        let image = target.image.clone().unwrap_or_default();
        let mut body =
            ContainerSpec::for_target(target, &self.run_id, &self.worker_exe, None, args)?.create_body();
        if let Some(e) = entrypoint {
            body.entrypoint = Some(vec![e.to_string()]);
        }
        let name = container_name(&self.run_id, "check");
        self.rt.block_on(async {
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
            let _ = remove_container(&docker, &id).await;
            let (out, err, state) = result.map_err(|_| {
                anyhow!(
                    "the check container did not end within {} s in image {image}",
                    PREFLIGHT_TIMEOUT.as_secs()
                )
            })??;
            Ok((
                String::from_utf8_lossy(&out).into_owned(),
                String::from_utf8_lossy(&err).into_owned(),
                state,
            ))
        })
    }
}

impl Executor for DockerExecutor {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn controls(&self, _target: &TargetSpec, _pending: &[Case]) -> bool {
        true
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
            image_env: inspect
                .config
                .as_ref()
                .and_then(|c| c.env.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            image_labels: inspect
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        };
        let docker = self.docker()?;
        if let Ok(Ok(v)) = self
            .rt
            .block_on(async { tokio::time::timeout(API_TIMEOUT, docker.version()).await })
        {
            if let Some(podman) = api::podman_version(&v) {
                meta.env
                    .insert("docker.engine".into(), format!("podman {podman}"));
                if GpuRequest::for_target(target)? != GpuRequest::None {
                    return Err(Unsupported(api::podman_gpu_reason(&podman)).into());
                }
            }
            meta.env
                .insert("docker.engine_version".into(), v.version.unwrap_or_default());
            meta.env
                .insert("docker.api_version".into(), v.api_version.unwrap_or_default());
        }
        let check_ms = self
            .preflight(target, &image)
            .inspect_err(|_| hold_if_interrupted())?;
        meta.env
            .insert("docker.check_container_ms".into(), format!("{check_ms:.0}"));
        Ok(meta)
    }

    /// The image's `Size` from the engine's image inspect (Docker and Podman both report the
    /// whole image, every layer).
    fn image_size(&mut self, target: &TargetSpec) -> Result<u64, CaseError> {
        let image = target.image.clone().unwrap_or_default();
        let docker = self.docker().map_err(CaseError::Failed)?;
        let inspect = self
            .rt
            .block_on(call(
                &format!("inspect image {image}"),
                docker.inspect_image(&image),
            ))
            .map_err(CaseError::Failed)?;
        match inspect.size {
            Some(bytes) if bytes > 0 => Ok(bytes as u64),
            other => Err(CaseError::Failed(anyhow!(
                "the engine reported no size for image {image} ({other:?})"
            ))),
        }
    }

    fn start(&mut self, target: &TargetSpec, job: &Job, log: &Path) -> Result<Box<dyn WorkerHandle>> {
        let docker = self.docker()?;
        let image = target.image.clone().unwrap_or_default();
        // The container sees only the GPUs it was given, numbered from 0.
        let mut job = job.clone();
        job.gpus = (0..job.gpus.len()).collect();
        let files = command_binds(&mut job);
        let job_path = log.with_extension("job.json");
        std::fs::write(&job_path, serde_json::to_vec(&job)?)
            .with_context(|| format!("failed to write {}", job_path.display()))?;
        let job_path = job_path
            .canonicalize()
            .with_context(|| format!("failed to resolve {}", job_path.display()))?;
        let mut spec = ContainerSpec::for_target(
            target,
            &self.run_id,
            &self.worker_exe,
            Some(&job_path),
            job_args(),
        )?;
        spec.mounts.extend(files);
        spec.stdin = job.control;
        let body = spec.create_body();
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
            input: started.input,
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

/// A container's name: readable in `docker ps`, unique per start.
fn container_name(run_id: &str, what: &str) -> String {
    let safe = crate::sys::safe_name;
    let nonce: u32 = rand::random();
    let run: String = safe(run_id).chars().take(60).collect();
    format!("tagbench-{run}-{}-{nonce:08x}", safe(what))
}

/// On Ctrl-C or SIGTERM, the containers of `run_id` are removed before the process exits.
pub(crate) fn remove_containers_on_interrupt(run_id: &str) {
    let run = run_id.to_string();
    crate::sys::interrupt::on_interrupt(&format!("docker containers of run {run}"), move || {
        eprintln!("removing the containers of run {run}");
        match remove_run_containers(&run) {
            Ok(removed) => removed.iter().for_each(|r| eprintln!("{r}")),
            Err(e) => eprintln!("error: {e:#}; `tagbench clean --run {run}` removes them"),
        }
    });
}

/// Removes the containers labelled with `run` now (what a killed `docker run` client leaves
/// behind, e.g. under `scancel`); returns what was removed.
pub(crate) fn remove_run_containers(run: &str) -> Result<Vec<String>> {
    api::block_on(async {
        let docker = connect().await?;
        remove_labelled(&docker, Some(run)).await
    })
}
