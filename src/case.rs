//! One measurable case: a workload with typed parameters and its measurement settings.
//!
//! Cases are what a suite expands into, what the host hands the worker (as JSON), and what
//! the CSV's `workload` and `case` columns name.

use serde::{Deserialize, Serialize};

// The workload's own vocabulary lives in `workload`; a case names it through these paths too.
pub use crate::workload::{Better, Dtype, WorkloadKind};

/// What measures inside the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Rust: candle on the CPU, cudarc (cuBLAS, NCCL, NVRTC) on CUDA.
    #[default]
    Native,
    /// The image's own python3 and PyTorch.
    Torch,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Native => "native",
            EngineKind::Torch => "torch",
        }
    }
}

/// Which device the worker measures on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// Seconds, as a float.
pub type Seconds = f64;

/// How long and how often to measure one case (nvbench's stdrel idea: stop when the
/// relative CI half-width of the median is under the target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasureSettings {
    /// Time-based warm-up before any sample is kept.
    pub warmup_s: Seconds,
    /// Samples always taken, even past `max_time_s` (`timeout_s` is the hard limit).
    pub min_samples: usize,
    /// Samples never exceeded.
    pub max_samples: usize,
    /// Sampling goes on at least this long, even when the target noise is reached.
    pub min_time_s: Seconds,
    /// Sampling stops after this long, noisy or not.
    pub max_time_s: Seconds,
    /// Target relative half-width of the 95% CI of the median (0.01 = 1%).
    pub target_rel_ci: f64,
    /// Wall-clock limit for the whole case in the worker; past it the host kills the worker and
    /// records a `failed` row.
    pub timeout_s: Seconds,
    /// How many separate worker processes (containers) measure the case, interleaved across
    /// targets. A process is the unit of replication: memory layout, thread placement and clock
    /// state differ between processes far more than between samples of one process, so
    /// comparisons judge on the spread of per-round medians when each side has 3 or more.
    /// With two or more targets this is the rounds measured first (`min_rounds`); more are
    /// added, up to `max_rounds`, while a comparison is undecided.
    pub rounds: usize,
    /// The most rounds a case gets when rounds are adaptive (`min_rounds` < `max_rounds`).
    pub max_rounds: usize,
}

impl Default for MeasureSettings {
    fn default() -> Self {
        MeasureSettings {
            warmup_s: 0.2,
            min_samples: 10,
            max_samples: 1000,
            min_time_s: 0.0,
            max_time_s: 2.0,
            target_rel_ci: 0.01,
            timeout_s: 300.0,
            rounds: 5,
            max_rounds: 20,
        }
    }
}

/// A single case of a workload, all sweep axes fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// The workload's name in the suite (defaults to its kind).
    pub workload: String,
    pub kind: WorkloadKind,
    /// Stable identifier within the workload: `key=value` pairs of the parameters the suite gave,
    /// in suite order (`m=1024,n=1024,k=1024,dtype=fp32`); `default` when none were given.
    pub id: String,
    /// Every parameter, defaults filled in, typed; its kind is `kind`.
    pub params: crate::workload::Params,
    pub measure: MeasureSettings,
}

impl Case {
    /// `workload/case`, the name used in messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.workload, self.id)
    }
}
