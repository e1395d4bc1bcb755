//! `run.json`: what was run, where, with which versions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// run.json's `state` of a run that measured everything it planned; any other state (`running`,
/// `interrupted`, `failed`) is a partial run that `compare` and `report` refuse to gate on.
pub const STATE_COMPLETE: &str = "complete";
/// run.json's `state` while a process writes the run (and after a SIGKILL, which leaves no
/// chance to say otherwise).
pub const STATE_RUNNING: &str = "running";
/// run.json's `state` of a run stopped by SIGINT/SIGTERM (or an error) before its end;
/// `tagbench run --resume` finishes it.
pub const STATE_INTERRUPTED: &str = "interrupted";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunMeta {
    pub schema: u32,
    pub run_id: String,
    pub suite: String,
    pub suite_path: String,
    pub tagbench_version: String,
    pub host: BTreeMap<String, String>,
    pub started_at: String,
    /// Set when the run ends (completely or not); absent while running or after a kill.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// `running`, `complete`, `interrupted`.
    pub state: String,
    /// The command line that started the run, as runs before `options` stored it (`--resume`
    /// still reads it when `options` is absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The run options (`options::RunOptions`) that `--resume` rebuilds the run from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Value>,
    #[serde(default)]
    pub targets: Vec<TargetMeta>,
    /// Per case (`workload/case`), the rounds design it ran under when rounds were adaptive
    /// (`min_rounds` < `max_rounds`): `compare` spends α across its looks
    /// (`stats::sequential`). Absent: a fixed number of rounds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rounds_design: BTreeMap<String, crate::stats::Design>,
    /// Per case (`workload/case`), how its targets took turns (`batches`, `case` or `round`,
    /// `suite::Pairing`); where a case's pairing fell back from the suite's, why follows after
    /// a colon. Absent in runs of one target and in runs written before pairing existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pairing: BTreeMap<String, String>,
    /// Wall time against time inside timed samples (set when the run ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duty_cycle: Option<DutyCycle>,
}

/// How much of a run's wall time went into timed samples: the rest is process start-up, CUDA
/// contexts, model set-up, warm-up, settling between paired batches and the host's own work.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DutyCycle {
    /// Seconds inside timed samples, as the workers reported them.
    pub timed_s: f64,
    /// Seconds this process spent on the run (a resumed run: since the resume).
    pub wall_s: f64,
    /// `timed_s / wall_s`.
    pub share: f64,
    /// Paired batches: how many, the mean wait for a worker's threads to go idle after one, and
    /// how many did not go idle within the limit (`measure::settle`).
    #[serde(default)]
    pub batches: usize,
    #[serde(default)]
    pub settle_ms_mean: f64,
    #[serde(default)]
    pub unsettled: usize,
}

/// Per target: the image and what the probe found inside it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetMeta {
    pub name: String,
    pub executor: String,
    pub engine: String,
    pub device: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub image_id: String,
    #[serde(default)]
    pub repo_digests: Vec<String>,
    #[serde(default)]
    pub image_created: String,
    /// The host's GPU index when the target has exactly one GPU.
    #[serde(default)]
    pub gpu_index: Option<usize>,
    /// The GPU the worker reported (see `record.rs`); empty until it did.
    #[serde(default)]
    pub gpu_name: String,
    /// The GPU index the worker reported (as its container numbers them).
    #[serde(default)]
    pub worker_gpu_index: Option<usize>,
    /// The worker's `env` message (probe): versions, devices, CPU.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The image config's environment variables (`Env`), as the Engine API reports them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_env: BTreeMap<String, String>,
    /// The image config's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_labels: BTreeMap<String, String>,
    /// What the target's latest worker process loaded (shared objects, Python distributions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<crate::components::Components>,
    /// Under Slurm: the node(s) of the latest step (comma-separated), what rows carry.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Under Slurm: the latest step as `JOB.STEP`, what rows carry.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job_step: String,
    /// Under Slurm: every step of this target, `JOB.STEP@NODES`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
}

/// Where an executor placed a worker (a Slurm step): what run.json and rows record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// Node names, comma-separated.
    pub node: String,
    /// `JOB.STEP`.
    pub job_step: String,
}

impl TargetMeta {
    /// Records the worker's placement: the rows that follow carry it.
    pub fn learn_placement(&mut self, p: Placement) {
        self.steps.push(format!("{}@{}", p.job_step, p.node));
        self.node = p.node;
        self.job_step = p.job_step;
    }
}
