//! The `startup` workload: what a user waits for before their first step runs. One case per
//! start-up metric (`metric` is a sweep axis, every metric by default), each sample a fresh
//! container or process, so that the cold path is what is measured, in rounds like any case.
//! Two metrics are measured on the host (`run/startup.rs`: the container's start, the image's
//! size), two by the engine inside the target (`engine/startup.rs`).

use serde::{Deserialize, Serialize};

use super::Better;

/// One start-up metric: what a `startup` case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartupMetric {
    /// Container create (or the local worker's spawn) to the worker's first protocol line, ms,
    /// timed on the host.
    ContainerStart,
    /// `python -c "import torch"` in a fresh process inside the target, ms (torch engine).
    PythonImportTorch,
    /// A fresh process's CUDA context and first kernel (after its imports), ms (CUDA targets).
    FirstCudaOp,
    /// The image's size as the engine reports it (Engine API image inspect), MiB: a fact,
    /// the same every sample, compared like a metric.
    ImageSize,
}

impl StartupMetric {
    pub const ALL: [StartupMetric; 4] = [
        StartupMetric::ContainerStart,
        StartupMetric::PythonImportTorch,
        StartupMetric::FirstCudaOp,
        StartupMetric::ImageSize,
    ];

    /// The metric's name in rows (and in the case id).
    pub fn as_str(self) -> &'static str {
        match self {
            StartupMetric::ContainerStart => "container_start",
            StartupMetric::PythonImportTorch => "python_import_torch",
            StartupMetric::FirstCudaOp => "first_cuda_op",
            StartupMetric::ImageSize => "image_size",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            StartupMetric::ImageSize => "MiB",
            _ => "ms",
        }
    }

    /// Every start-up metric is better lower.
    pub fn better(self) -> Better {
        Better::Lower
    }

    /// Measured by the host (around the worker), not by an engine inside the target.
    pub fn on_host(self) -> bool {
        matches!(self, StartupMetric::ContainerStart | StartupMetric::ImageSize)
    }
}

/// A `startup` case's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupParams {
    /// What the case measures (a suite without `metric` gets one case per metric).
    pub metric: StartupMetric,
    /// Fresh containers (or processes) per round, each one sample.
    #[serde(default = "default_samples")]
    pub samples: usize,
}

/// Five cold starts a round: enough for a round median, cheap next to a container's start.
pub const DEFAULT_SAMPLES: usize = 5;

fn default_samples() -> usize {
    DEFAULT_SAMPLES
}

/// The most samples a round may ask for (each is a container).
const MAX_SAMPLES: usize = 1000;

/// Keys left out of a case id unless swept: the number of starts is not a point of the sweep.
pub const SILENT_KEYS: [&str; 1] = ["samples"];

/// The axis a suite gets when it names no `metric`: every start-up metric, one case each.
pub fn default_metrics() -> Vec<&'static str> {
    StartupMetric::ALL.iter().map(|m| m.as_str()).collect()
}

impl StartupParams {
    pub fn check(&mut self) -> Result<(), String> {
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return Err(format!(
                "key `samples`: expected 1 to {MAX_SAMPLES} starts a round, got {}",
                self.samples
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_by_name_and_sizes_are_mib() {
        for m in StartupMetric::ALL {
            let p: StartupParams = toml::from_str(&format!("metric = \"{}\"", m.as_str())).unwrap();
            assert_eq!((p.metric, p.samples), (m, DEFAULT_SAMPLES));
        }
        assert_eq!(StartupMetric::ImageSize.unit(), "MiB");
        assert_eq!(StartupMetric::ContainerStart.unit(), "ms");
        assert!(StartupMetric::ContainerStart.on_host() && !StartupMetric::FirstCudaOp.on_host());
        let err = toml::from_str::<StartupParams>("metric = \"boot\"").unwrap_err();
        assert!(err.message().contains("unknown variant `boot`"), "{err}");
        let mut p: StartupParams = toml::from_str("metric = \"image_size\"\nsamples = 0").unwrap();
        assert_eq!(
            p.check().unwrap_err(),
            "key `samples`: expected 1 to 1000 starts a round, got 0"
        );
    }
}
