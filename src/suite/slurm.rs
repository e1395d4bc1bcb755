//! Where a suite runs on a cluster: the `[slurm]` table (allocation settings), the executor a
//! target picks and the container platform that starts its image inside a Slurm step.

use serde::{Deserialize, Serialize};

/// Which executor runs a target's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// A child process on this host (targets without an image).
    Local,
    /// A container through the Docker Engine API (targets with an image).
    Docker,
    /// Slurm job steps in one allocation (`salloc`, `srun --jobid`).
    Slurm,
}

/// How a target's image starts inside a Slurm step (ReFrame's "container platform" layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ContainerPlatform {
    /// No container: the worker runs on the node itself.
    #[default]
    None,
    /// NVIDIA's pyxis SPANK plugin: `srun --container-image`.
    Pyxis,
    /// `apptainer exec --nv` of a `.sif` file or a `docker-daemon:` image.
    Apptainer,
    /// Slurm's own OCI support: `srun --container BUNDLE` (the image is the bundle directory).
    Oci,
    /// `docker run` inside the step: the Docker executor's container (its hardening and the
    /// target's settings), labelled so that the clean-up finds what `scancel` leaves.
    Docker,
}

impl ContainerPlatform {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerPlatform::None => "none",
            ContainerPlatform::Pyxis => "pyxis",
            ContainerPlatform::Apptainer => "apptainer",
            ContainerPlatform::Oci => "oci",
            ContainerPlatform::Docker => "docker",
        }
    }
}

/// The `[slurm]` table of a suite, merged with the command line (`--partition`, `--nodes`,
/// `--gpus-per-node`). Every field is optional: Slurm's defaults apply to what is not given.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    /// The allocation's time limit, as Slurm writes it (`30`, `1:00:00`, `1-0`).
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub nodes: Option<usize>,
    #[serde(default)]
    pub gpus_per_node: Option<usize>,
    /// Further `salloc`/`sbatch` options, passed as they are (`["--constraint=h100"]`).
    #[serde(default)]
    pub sbatch_options: Vec<String>,
    /// How long the allocation may stay pending before it is cancelled (default 600 s).
    #[serde(default)]
    pub pending_timeout_s: Option<u64>,
}

impl SlurmSettings {
    /// `self` with every field that `over` sets taken from `over`.
    pub fn merged(&self, over: &SlurmSettings) -> SlurmSettings {
        let mut extra = self.sbatch_options.clone();
        extra.extend(over.sbatch_options.iter().cloned());
        SlurmSettings {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            account: over.account.clone().or_else(|| self.account.clone()),
            qos: over.qos.clone().or_else(|| self.qos.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            nodes: over.nodes.or(self.nodes),
            gpus_per_node: over.gpus_per_node.or(self.gpus_per_node),
            sbatch_options: extra,
            pending_timeout_s: over.pending_timeout_s.or(self.pending_timeout_s),
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes.unwrap_or(1).max(1)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.nodes == Some(0) {
            return Err("key `nodes`: must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_wins_and_options_add_up() {
        let suite = SlurmSettings {
            partition: Some("gpu".into()),
            nodes: Some(2),
            sbatch_options: vec!["--constraint=h100".into()],
            ..Default::default()
        };
        let cli = SlurmSettings {
            nodes: Some(4),
            sbatch_options: vec!["--reservation=r".into()],
            ..Default::default()
        };
        let m = suite.merged(&cli);
        assert_eq!((m.partition.as_deref(), m.nodes()), (Some("gpu"), 4));
        assert_eq!(m.sbatch_options, ["--constraint=h100", "--reservation=r"]);
        assert_eq!(SlurmSettings::default().nodes(), 1);
    }
}
