//! Copying files out of an image through the Engine API (no `docker` CLI): a container is
//! created from the image and never started, each path is downloaded as a tar archive and
//! unpacked, and the container is removed (it is labelled with the run like every other, so
//! `tagbench clean` and Ctrl-C remove it too). `tagbench bisect` swaps what it copies into
//! another image's containers.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder};
use futures_util::StreamExt;

use super::api::{call, connect, remove_container};
use crate::executor::container_spec::{LABEL_RUN, LABEL_TARGET};

/// Copies `paths` (absolute, inside `image`) into `dest`: `/x/site-packages/torch` becomes
/// `dest/torch`. The container is labelled with `run`.
pub fn copy_out(image: &str, paths: &[String], dest: &Path, run: &str) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("failed to create {}", dest.display()))?;
    super::api::block_on(async {
        let docker = connect().await?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            // Never started: the entrypoint only has to be there for the create call.
            entrypoint: Some(vec!["/opt/tagbench/not-started".into()]),
            labels: Some(
                [
                    (LABEL_RUN.to_string(), run.to_string()),
                    (LABEL_TARGET.to_string(), format!("copy from {image}")),
                ]
                .into(),
            ),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = super::container_name(run, "copy");
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = call(
            &format!("create a container from image {image} to copy files out of"),
            docker.create_container(Some(opts), body),
        )
        .await?
        .id;
        let copied = async {
            for path in paths {
                let tar_path = dest.join(".download.tar");
                let mut file = std::fs::File::create(&tar_path)
                    .with_context(|| format!("failed to create {}", tar_path.display()))?;
                let opts = DownloadFromContainerOptionsBuilder::default().path(path).build();
                let mut stream = docker.download_from_container(&id, Some(opts));
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| {
                        anyhow::anyhow!(
                            "failed to copy {path} out of {image}: {}",
                            super::api::engine_message(&e)
                        )
                    })?;
                    file.write_all(&chunk)?;
                }
                drop(file);
                let mut archive = tar::Archive::new(std::fs::File::open(&tar_path)?);
                archive
                    .unpack(dest)
                    .with_context(|| format!("failed to unpack {path} of {image} into {}", dest.display()))?;
                std::fs::remove_file(&tar_path)?;
            }
            anyhow::Ok(())
        }
        .await;
        let removed = remove_container(&docker, &id).await;
        copied?;
        removed
    })
}
