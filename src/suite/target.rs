//! Where a suite runs: `[[target]]` entries (an image, or the local machine).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::case::{Device, EngineKind};

/// Which GPUs a target uses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GpuSelection {
    /// `"all"`, `"none"` or `"each"` (run once per GPU, so results are per device).
    Named(GpuNamed),
    /// Device ordinals.
    List(Vec<usize>),
    #[default]
    #[serde(skip)]
    Unset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuNamed {
    All,
    None,
    Each,
}

impl GpuSelection {
    /// Parses the `--gpus` flag: `all`, `none`, `each` or `0,1`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(GpuSelection::Named(GpuNamed::All)),
            "none" => Ok(GpuSelection::Named(GpuNamed::None)),
            "each" => Ok(GpuSelection::Named(GpuNamed::Each)),
            list => list
                .split(',')
                .map(|p| {
                    p.trim().parse::<usize>().map_err(|_| {
                        format!("bad GPU index `{p}` in `{s}` (expected all, none, each or 0,1,...)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(GpuSelection::List),
        }
    }
}

/// When to pull an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull only when the image is not present.
    Missing,
    /// Never pull: a missing image is an error.
    #[default]
    Never,
    /// Always pull before running.
    Always,
}

/// A `[[target]]` entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Display name; defaults to the image, or `local`.
    #[serde(default)]
    pub name: Option<String>,
    /// The container image (`repo/name:tag`); absent (or `local = true`) runs on this host.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub device: Option<Device>,
    #[serde(default)]
    pub engine: Option<EngineKind>,
    #[serde(default)]
    pub gpus: GpuSelection,
    /// Environment variables for the worker.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `/dev/shm` size, e.g. `"1g"` (PyTorch data loaders and NCCL need more than Docker's 64 MiB).
    #[serde(default)]
    pub shm_size: Option<String>,
    /// IPC namespace: `private` (default) or `host`.
    #[serde(default)]
    pub ipc: Option<String>,
    /// Network: `none` (default) or `host`/`bridge` when a suite needs it.
    #[serde(default)]
    pub network: Option<String>,
    /// Ulimits, e.g. `{ memlock = -1, stack = 67108864 }` as NVIDIA recommends for PyTorch.
    #[serde(default)]
    pub ulimits: BTreeMap<String, i64>,
    /// CPU limit (cores, fractional allowed).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. `"8g"`.
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub pull: Option<PullPolicy>,
}

impl TargetSpec {
    pub fn local() -> Self {
        TargetSpec {
            local: true,
            ..Default::default()
        }
    }

    pub fn is_local(&self) -> bool {
        self.image.is_none()
    }

    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.image.clone())
            .unwrap_or_else(|| "local".to_string())
    }

    pub fn check(&self) -> Result<(), String> {
        if self.local && self.image.is_some() {
            return Err("a target is either `local = true` or has an `image`, not both".into());
        }
        if let Some(ipc) = &self.ipc {
            if !["private", "host", "shareable", "none"].contains(&ipc.as_str()) {
                return Err(format!(
                    "unknown ipc mode `{ipc}` (expected private, host, shareable or none)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_flag() {
        assert_eq!(
            GpuSelection::parse("all").unwrap(),
            GpuSelection::Named(GpuNamed::All)
        );
        assert_eq!(
            GpuSelection::parse("0,2").unwrap(),
            GpuSelection::List(vec![0, 2])
        );
        assert!(GpuSelection::parse("x").unwrap_err().contains("bad GPU index"));
    }
}
