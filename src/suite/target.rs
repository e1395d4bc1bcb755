//! Where a suite runs: `[[target]]` entries (an image, or the local machine).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::slurm::{ContainerPlatform, ExecutorKind, SlurmSettings};
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
    pub fn is_unset(&self) -> bool {
        *self == GpuSelection::Unset
    }

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

impl PullPolicy {
    /// The name a suite, the command line and `docker run --pull` use.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
            PullPolicy::Always => "always",
        }
    }
}

/// A byte count written as a Docker-style size (`64m`, `1g`, `512MiB`, `1073741824`), parsed
/// when the suite loads so that a bad one is reported with its file and line before anything
/// runs. The units are binary, as `docker run --shm-size` reads them; the text is kept for
/// messages and run.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteSize {
    bytes: i64,
    text: String,
}

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let digits_end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("bad size `{s}` (expected e.g. 64m, 1g, 2gib or a byte count)"))?;
        let shift = match unit.trim().trim_end_matches("ib").trim_end_matches('b') {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(format!("bad size `{s}` (unknown unit; expected b, k, m, g or t)")),
        };
        Ok(ByteSize {
            bytes: (num * (1u64 << shift) as f64) as i64,
            text: s.to_string(),
        })
    }

    /// The size in bytes, as the Docker Engine API takes it.
    pub fn bytes(&self) -> i64 {
        self.bytes
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    /// A string with a unit, or a plain byte count.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"64m\", \"1g\" or a byte count")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                ByteSize::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                ByteSize::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The resource limits a container's `ulimits` may set (`setrlimit(2)`'s, as Docker and Podman
/// name them).
pub const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

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
    #[serde(default, skip_serializing_if = "GpuSelection::is_unset")]
    pub gpus: GpuSelection,
    /// Environment variables for the worker.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables removed from the worker's environment, an image's own `ENV` included (the
    /// worker removes them first thing, before any engine or program starts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset_env: Vec<String>,
    /// Host paths bound read-only into the target's container (`{ source = "/data/x", target =
    /// "/data/x" }`); container targets only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<TargetMount>,
    /// `/dev/shm` size, e.g. `"1g"` (PyTorch data loaders and NCCL need more than Docker's 64 MiB).
    #[serde(default)]
    pub shm_size: Option<ByteSize>,
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
    pub memory: Option<ByteSize>,
    #[serde(default)]
    pub pull: Option<PullPolicy>,
    /// Which executor runs the worker; by default `local` without an image, `docker` with one.
    #[serde(default)]
    pub executor: Option<ExecutorKind>,
    /// How the image starts inside a Slurm step (`executor = "slurm"` only).
    #[serde(default)]
    pub container: Option<ContainerPlatform>,
    /// The allocation settings (the suite's `[slurm]` table and the command line), set by the
    /// run's plan for Slurm targets.
    #[serde(skip)]
    pub slurm: Option<SlurmSettings>,
}

/// A host path bound read-only into a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetMount {
    /// An absolute path on the host (the Docker daemon's host).
    pub source: std::path::PathBuf,
    /// An absolute path inside the container.
    pub target: String,
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

    /// The executor this target runs on: the one asked for, else `local` or `docker`.
    pub fn executor_kind(&self) -> ExecutorKind {
        self.executor.unwrap_or(if self.is_local() {
            ExecutorKind::Local
        } else {
            ExecutorKind::Docker
        })
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
        if self.container.is_some() && self.executor != Some(ExecutorKind::Slurm) {
            return Err("`container` chooses how an image starts under Slurm; set `executor = \"slurm\"` (or pass --executor slurm)".into());
        }
        if self.executor == Some(ExecutorKind::Local) && self.image.is_some() {
            return Err("`executor = \"local\"` runs on this host; a target with an `image` needs `docker` or `slurm`".into());
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("key `cpus`: {c} is not a positive number of cores"));
            }
        }
        if let Some(name) = self.ulimits.keys().find(|k| !ULIMIT_NAMES.contains(&k.as_str())) {
            return Err(format!(
                "key `ulimits`: unknown limit `{name}` (expected one of {})",
                ULIMIT_NAMES.join(", ")
            ));
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

    #[test]
    fn sizes() {
        let b = |s: &str| ByteSize::parse(s).map(|b| b.bytes());
        assert_eq!(b("64m").unwrap(), 64 << 20);
        assert_eq!(b("1g").unwrap(), 1 << 30);
        assert_eq!(b("2GiB").unwrap(), 2 << 30);
        assert_eq!(b("512kb").unwrap(), 512 << 10);
        assert_eq!(b("1000").unwrap(), 1000);
        assert_eq!(b("1.5g").unwrap(), 3 << 29);
        assert!(b("12q").is_err());
        assert!(b("g").is_err());
        assert_eq!(ByteSize::parse("8g").unwrap().to_string(), "8g");
    }
}
