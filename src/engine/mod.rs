//! Engines measure cases inside the worker. An engine turns a [`Case`] into metrics
//! ([`CaseOutput`]) or says why it could not ([`CaseError`]).

pub mod command;
pub mod cpu;
pub mod cuda;
pub mod startup;
pub mod torch;

use std::collections::BTreeMap;

use crate::case::{Better, Case, Device, EngineKind, Seconds};
use crate::error::CaseError;
use crate::protocol::Job;
use crate::workload::allreduce::AllreduceParams;
use crate::workload::attention::AttentionParams;
use crate::workload::command::CommandParams;
use crate::workload::conv::ConvParams;
use crate::workload::gemm::GemmParams;
use crate::workload::generate::GenerateParams;
use crate::workload::precision::PrecisionParams;
use crate::workload::probe::ProbeParams;
use crate::workload::startup::StartupParams;
use crate::workload::Params;

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

    /// Token-generation metrics from per-generation timings, the same for every engine: TTFT
    /// (prefill through the first token on the host), TPOT (mean decode step) and the token
    /// rates derived per generation, so that each has a full distribution.
    pub fn generation_metrics(
        &mut self,
        batch: usize,
        prompt_len: usize,
        ttft_s: &[Seconds],
        tpot_s: &[Seconds],
    ) {
        use crate::workload::metric;
        self.metric(
            metric::TTFT,
            "ms",
            Better::Lower,
            ttft_s.iter().map(|s| s * 1e3).collect(),
        );
        if !tpot_s.is_empty() {
            self.metric(
                metric::TPOT,
                "ms",
                Better::Lower,
                tpot_s.iter().map(|s| s * 1e3).collect(),
            );
            self.metric(
                metric::DECODE_TPS,
                "tokens/s",
                Better::Higher,
                tpot_s.iter().map(|s| batch as f64 / s).collect(),
            );
        }
        self.metric(
            metric::PREFILL_TPS,
            "tokens/s",
            Better::Higher,
            ttft_s.iter().map(|s| (batch * prompt_len) as f64 / s).collect(),
        );
    }

    /// `step_time` (ms) and `samples_per_s` of training steps over `batch` samples each (the
    /// global batch of a multi-rank step), derived per step.
    pub fn step_metrics(&mut self, batch: usize, steps: &[Seconds]) {
        use crate::workload::metric;
        self.metric(
            metric::STEP_TIME,
            "ms",
            Better::Lower,
            steps.iter().map(|s| s * 1e3).collect(),
        );
        self.metric(
            metric::SAMPLES_PER_S,
            "samples/s",
            Better::Higher,
            steps.iter().map(|s| batch as f64 / s).collect(),
        );
    }

    /// `speedup_vs_fp32` and `loss_diff_vs_fp32` of a reduced-precision training step against its
    /// fp32 reference (same weights, data and steps), with a warning when the loss diverged.
    pub fn versus_fp32(&mut self, mode: &str, reference: &PrecisionReference, median_s: Seconds, loss: f64) {
        use crate::workload::metric;
        self.metric(
            metric::SPEEDUP,
            "x",
            Better::Higher,
            vec![reference.step_median_s / median_s],
        );
        self.metric(
            metric::LOSS_DIFF,
            "relative",
            Better::Lower,
            vec![relative_diff(loss, reference.loss)],
        );
        if !loss.is_finite() {
            self.warn(format!("{mode} loss is not finite after the seeded steps"));
        }
    }

    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }
}

/// The fp32 reference of a precision case, kept so that each mode compares with one measurement.
#[derive(Debug, Clone)]
pub struct PrecisionReference {
    pub step_median_s: Seconds,
    /// Loss after the seeded steps.
    pub loss: f64,
}

/// |a − b| / |b|, or |a − b| where b is 0.
pub fn relative_diff(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        (a - b).abs()
    } else {
        ((a - b) / b).abs()
    }
}

/// Mean time per output token of one generation's decode steps (`None` without any).
pub fn mean_step(steps: &[Seconds]) -> Option<Seconds> {
    (!steps.is_empty()).then(|| steps.iter().sum::<Seconds>() / steps.len() as Seconds)
}

/// Something that measures cases: one method per workload. A workload an engine does not
/// implement answers `skipped` with a reason naming the engine and the workload (as candle's
/// dummy backends answer for a device that is not compiled in), so adding a workload to one
/// engine leaves the others compiling and saying why they cannot run it.
pub trait Engine {
    /// The engine's name in skip reasons (`native CPU`, `torch`).
    fn name(&self) -> &'static str;
    /// Facts about the environment as this engine sees it (versions, devices).
    fn env(&mut self) -> BTreeMap<String, String>;

    fn probe(&mut self, _p: &ProbeParams, case: &Case) -> Result<CaseOutput, CaseError> {
        Err(not_implemented(self.name(), case))
    }
    fn gemm(&mut self, _p: &GemmParams, case: &Case) -> Result<CaseOutput, CaseError> {
        Err(not_implemented(self.name(), case))
    }
    fn attention(&mut self, _p: &AttentionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        Err(not_implemented(self.name(), case))
    }
    fn generate(&mut self, _p: &GenerateParams, case: &Case) -> Result<CaseOutput, CaseError> {
        Err(not_implemented(self.name(), case))
    }
    fn precision(&mut self, _p: &PrecisionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        Err(not_implemented(self.name(), case))
    }
    fn allreduce(&mut self, _p: &AllreduceParams, case: &Case) -> Result<CaseOutput, CaseError> {
        Err(not_implemented(self.name(), case))
    }
    fn conv(&mut self, _p: &ConvParams, case: &Case) -> Result<CaseOutput, CaseError> {
        Err(not_implemented(self.name(), case))
    }
    /// A user's program: the same for every engine ([`command::run`]); an engine says which
    /// device its rows are on.
    fn command(&mut self, p: &CommandParams, case: &Case) -> Result<CaseOutput, CaseError> {
        command::run(p, case, Device::Cpu, CaseOutput::new(Device::Cpu.as_str()))
    }

    /// What the process that measured loaded, asked after the last case: this worker's own
    /// process by default; the torch engine asks its python session.
    fn components(&mut self) -> crate::components::Components {
        crate::components::Components::of_this_process()
    }

    /// The start-up metrics measured inside the target ([`startup`]): without an override,
    /// `first_cuda_op` has no CUDA device and `python_import_torch` needs the torch engine.
    fn startup(&mut self, p: &StartupParams, _case: &Case) -> Result<CaseOutput, CaseError> {
        startup::not_here(self.name(), p)
    }

    /// `Some(rank 1 on n2)` when this worker is a non-zero rank of a multi-rank step whose
    /// rank 0 is another worker (a task of a Slurm step of N tasks): it then reports failures
    /// only, and rank 0 the rows.
    fn follower(&self) -> Option<String> {
        None
    }
    /// This worker's rank of `case`, led by another worker's rank 0.
    fn follow(&mut self, _case: &Case) -> Result<(), CaseError> {
        Err(CaseError::Failed(anyhow::anyhow!(
            "the {} engine cannot be one rank of a multi-rank step",
            self.name()
        )))
    }
}

/// The skip of a workload an engine does not implement.
fn not_implemented(engine: &str, case: &Case) -> CaseError {
    CaseError::skipped(format!(
        "the {engine} engine does not implement {} cases",
        case.params.kind()
    ))
}

/// Measures one case with `engine`: the one place that matches on the workload kind.
pub fn run_case(engine: &mut dyn Engine, case: &Case) -> Result<CaseOutput, CaseError> {
    match &case.params {
        Params::Probe(p) => engine.probe(p, case),
        Params::Gemm(p) => engine.gemm(p, case),
        Params::Attention(p) => engine.attention(p, case),
        Params::Generate(p) => engine.generate(p, case),
        Params::Precision(p) => engine.precision(p, case),
        Params::Allreduce(p) => engine.allreduce(p, case),
        Params::Conv(p) => engine.conv(p, case),
        Params::Command(p) => engine.command(p, case),
        Params::Startup(p) => engine.startup(p, case),
    }
}

/// The engine a job asks for.
pub fn create(job: &Job) -> Box<dyn Engine> {
    match (job.engine, job.device) {
        (EngineKind::Native, Device::Cpu) => Box::new(cpu::CpuEngine::new()),
        (EngineKind::Native, Device::Cuda) => Box::new(cuda::CudaEngine::new(&job.gpus)),
        (EngineKind::Torch, device) => Box::new(torch::TorchEngine::new(device, &job.gpus)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine that implements nothing.
    struct Nothing;
    impl Engine for Nothing {
        fn name(&self) -> &'static str {
            "test"
        }
        fn env(&mut self) -> BTreeMap<String, String> {
            BTreeMap::new()
        }
    }

    #[test]
    fn unimplemented_workloads_skip_naming_engine_and_workload() {
        let case = Case {
            workload: "g".into(),
            kind: crate::case::WorkloadKind::Gemm,
            id: "default".into(),
            params: crate::workload::example(crate::case::WorkloadKind::Gemm),
            measure: Default::default(),
        };
        match run_case(&mut Nothing, &case) {
            Err(CaseError::Skipped(r)) => assert_eq!(r, "the test engine does not implement gemm cases"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn relative_diff_of_zero_reference() {
        assert_eq!(relative_diff(0.5, 0.0), 0.5);
        assert!((relative_diff(1.1, 1.0) - 0.1).abs() < 1e-12);
        assert!((relative_diff(0.9, -1.0) - 1.9).abs() < 1e-12);
    }

    #[test]
    fn generation_metrics_derive_rates() {
        let mut out = CaseOutput::new("cpu");
        out.generation_metrics(2, 8, &[0.5], &[mean_step(&[0.1, 0.3]).unwrap()]);
        let get = |n: &str| out.metrics.iter().find(|m| m.name == n).unwrap().values[0];
        assert_eq!(get("ttft"), 500.0);
        assert!((get("tpot") - 200.0).abs() < 1e-9);
        assert!((get("decode_tokens_per_s") - 10.0).abs() < 1e-9);
        assert_eq!(get("prefill_tokens_per_s"), 32.0);
        assert_eq!(mean_step(&[]), None);
    }
}
