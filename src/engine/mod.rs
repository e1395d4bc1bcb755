//! Engines measure cases inside the worker. An engine turns a [`Case`] into metrics
//! ([`CaseOutput`]) or says why it could not ([`CaseError`]).

pub mod cpu;
pub mod cuda;
pub mod torch;

use std::collections::BTreeMap;

use crate::case::{Better, Case, Device, EngineKind, Seconds};
use crate::error::CaseError;
use crate::protocol::Job;

/// One metric of a case: its samples and how to read them.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSamples {
    pub name: String,
    pub unit: String,
    pub better: Better,
    pub values: Vec<f64>,
}

/// What a case produced.
#[derive(Debug, Clone, Default)]
pub struct CaseOutput {
    pub metrics: Vec<MetricSamples>,
    pub warnings: Vec<String>,
    /// A status line for cases without metrics (the probe), shown in the `reason` column.
    pub status: Option<String>,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    pub gpu_name: String,
    pub gpu_index: Option<usize>,
    /// Facts to merge into the target's metadata in run.json (the probe's versions).
    pub env: BTreeMap<String, String>,
}

impl CaseOutput {
    pub fn new(device: impl Into<String>) -> Self {
        CaseOutput {
            device: device.into(),
            ..Default::default()
        }
    }

    pub fn metric(&mut self, name: &str, unit: &str, better: Better, values: Vec<f64>) {
        self.metrics.push(MetricSamples {
            name: name.into(),
            unit: unit.into(),
            better,
            values,
        });
    }

    /// Latency samples in seconds become `latency` (ms) plus a throughput metric derived per
    /// sample, so that both have a full distribution for comparisons.
    pub fn latency_and_rate(
        &mut self,
        seconds: &[Seconds],
        work: f64,
        rate_name: &str,
        rate_unit: &str,
        rate_scale: f64,
    ) {
        self.metric(
            crate::workload::metric::LATENCY,
            "ms",
            Better::Lower,
            seconds.iter().map(|s| s * 1e3).collect(),
        );
        self.metric(
            rate_name,
            rate_unit,
            Better::Higher,
            seconds.iter().map(|s| work / s / rate_scale).collect(),
        );
    }

    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }
}

/// Something that measures cases.
pub trait Engine {
    /// Facts about the environment as this engine sees it (versions, devices).
    fn env(&mut self) -> BTreeMap<String, String>;
    /// Measures one case.
    fn run(&mut self, case: &Case) -> Result<CaseOutput, CaseError>;
}

/// The engine a job asks for.
pub fn create(job: &Job) -> Box<dyn Engine> {
    match (job.engine, job.device) {
        (EngineKind::Native, Device::Cpu) => Box::new(cpu::CpuEngine::new()),
        (EngineKind::Native, Device::Cuda) => Box::new(cuda::CudaEngine::new(&job.gpus)),
        (EngineKind::Torch, device) => Box::new(torch::TorchEngine::new(device, &job.gpus)),
    }
}
