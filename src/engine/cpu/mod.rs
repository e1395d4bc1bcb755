//! The native CPU engine: candle on the host's cores.

pub mod attention;
pub mod gemm;
pub mod generate;
pub mod precision;
pub mod probe;

use std::collections::BTreeMap;

use candle_core::{DType, Device as CDevice, Tensor};

use super::{CaseOutput, Engine};
use crate::case::{Case, Dtype};
use crate::error::CaseError;
use crate::workload::allreduce::AllreduceParams;
use crate::workload::attention::AttentionParams;
use crate::workload::gemm::GemmParams;
use crate::workload::generate::GenerateParams;
use crate::workload::precision::PrecisionParams;
use crate::workload::probe::ProbeParams;

/// The CPU engine keeps the fp32 reference of precision cases between cases.
pub struct CpuEngine {
    pub(crate) precision_refs: BTreeMap<String, precision::Reference>,
}

impl CpuEngine {
    pub fn new() -> Self {
        CpuEngine {
            precision_refs: BTreeMap::new(),
        }
    }
}

impl Default for CpuEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine for CpuEngine {
    fn name(&self) -> &'static str {
        "native CPU"
    }

    fn env(&mut self) -> BTreeMap<String, String> {
        let mut m = probe::host_info();
        m.insert("engine".into(), "native-cpu (candle)".into());
        m.insert(
            "cpu_threads".into(),
            candle_core::utils::get_num_threads().to_string(),
        );
        m
    }

    fn probe(&mut self, _p: &ProbeParams, case: &Case) -> Result<CaseOutput, CaseError> {
        probe::run(case)
    }

    fn gemm(&mut self, p: &GemmParams, case: &Case) -> Result<CaseOutput, CaseError> {
        gemm::run(p, case)
    }

    fn attention(&mut self, p: &AttentionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        p.compile
            .native_can_run("native CPU")
            .map_err(CaseError::Skipped)?;
        attention::run(p, case)
    }

    fn generate(&mut self, p: &GenerateParams, case: &Case) -> Result<CaseOutput, CaseError> {
        p.native_can_run("native CPU").map_err(CaseError::Skipped)?;
        generate::run(p, case)
    }

    fn precision(&mut self, p: &PrecisionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        p.native_can_run("native CPU").map_err(CaseError::Skipped)?;
        precision::run(self, p, case)
    }

    fn allreduce(&mut self, _p: &AllreduceParams, _case: &Case) -> Result<CaseOutput, CaseError> {
        Err(CaseError::skipped(
            "allreduce needs CUDA and NCCL (use device = \"cuda\", or the torch engine for gloo on CPU)",
        ))
    }
}

/// candle's dtype for a tagbench dtype on the CPU; tf32 and fp8 have no CPU arithmetic.
pub fn cpu_dtype(d: Dtype) -> Result<DType, CaseError> {
    match d {
        Dtype::Fp32 => Ok(DType::F32),
        Dtype::Fp16 => Ok(DType::F16),
        Dtype::Bf16 => Ok(DType::BF16),
        Dtype::Tf32 => Err(CaseError::skipped(
            "tf32 is a CUDA tensor-core mode; the CPU has no tf32 arithmetic",
        )),
        Dtype::Fp8 => Err(CaseError::skipped(
            "fp8 needs CUDA (compute capability 8.9 or newer); the CPU has no fp8 matmul",
        )),
    }
}

/// Normal(0, 1) values in `dtype` (never zeros: zeros run unrealistically fast on some paths).
pub fn randn(shape: &[usize], dtype: DType) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1f32, shape, &CDevice::Cpu)?.to_dtype(dtype)
}

/// Bytes of the last-level cache (for rotating inputs past it), or 32 MiB if unknown.
pub fn llc_bytes() -> usize {
    let mut best = 0;
    for idx in 0..8 {
        let p = format!("/sys/devices/system/cpu/cpu0/cache/index{idx}/size");
        if let Ok(s) = std::fs::read_to_string(p) {
            let s = s.trim();
            let (num, mul) = match s.chars().last() {
                Some('K') => (&s[..s.len() - 1], 1024),
                Some('M') => (&s[..s.len() - 1], 1024 * 1024),
                _ => (s, 1),
            };
            if let Ok(n) = num.parse::<usize>() {
                best = best.max(n * mul);
            }
        }
    }
    if best == 0 {
        32 << 20
    } else {
        best
    }
}

/// How many input sets to rotate through so that together they exceed twice the last-level
/// cache (each call then reads its inputs from memory, as a real model's layers would), capped
/// to keep memory small.
pub fn rotation_count(bytes_per_set: usize) -> usize {
    let want = (2 * llc_bytes()).div_ceil(bytes_per_set.max(1));
    let cap = (512usize << 20) / bytes_per_set.max(1);
    want.clamp(1, cap.max(1)).min(64)
}

pub(crate) fn candle_err(e: candle_core::Error) -> CaseError {
    CaseError::Failed(anyhow::anyhow!("candle: {e}"))
}

/// Process memory as the kernel counts it (resident set), for peak-memory metrics.
pub mod memory {
    /// Resets the process's peak resident set (VmHWM) so that the next reading covers only
    /// what follows. Returns false where the kernel does not allow it.
    pub fn reset_peak() -> bool {
        // Writing 5 to clear_refs resets the peak RSS (Linux ≥ 4.0, own process, no privilege).
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    fn status_kb(key: &str) -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// Peak resident set since the last reset, MiB.
    pub fn peak_mib() -> Option<f64> {
        status_kb("VmHWM:").map(|kb| kb as f64 / 1024.0)
    }

    /// Memory available for new allocations (MemAvailable, or the cgroup limit if lower), bytes.
    pub fn available_bytes() -> Option<u64> {
        let mem = std::fs::read_to_string("/proc/meminfo").ok()?;
        let avail = mem.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
        let avail: u64 = avail.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024;
        let cgroup = crate::sys::limits::memory_limit_bytes();
        Some(cgroup.map_or(avail, |c| c.min(avail)))
    }
}
