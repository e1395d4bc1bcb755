//! The native CUDA engine: the driver API through cudarc, cuBLAS / cuBLASLt / NVRTC / NCCL / NVML
//! through function tables opened by path ([`loader`], [`ffi`]).
//!
//! One binary serves CUDA 12 and CUDA 13 images: the driver (libcuda.so.1) keeps its ABI across
//! toolkit majors, and the other libraries are found under whichever major the image carries and
//! called only through entry points whose signatures both majors share. Nothing CUDA is needed to
//! build; every library is checked for before its first use, so a machine without a driver gets
//! `skipped` rows, never a panic.

pub mod allreduce;
pub mod attention;
pub mod device;
pub mod ffi;
pub mod gemm;
pub mod generate;
pub mod kernels;
pub mod loader;
pub mod probe;
pub mod telemetry;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{CaseOutput, Engine};
use crate::case::Case;
use crate::error::CaseError;
use crate::workload::allreduce::AllreduceParams;
use crate::workload::attention::AttentionParams;
use crate::workload::gemm::GemmParams;
use crate::workload::generate::GenerateParams;
use crate::workload::precision::PrecisionParams;
use crate::workload::probe::ProbeParams;
use device::Gpu;
use loader::{LibSpec, LoadError};

/// The skip reason for a machine without the driver library.
pub const NO_DRIVER: &str = "no CUDA driver (libcuda.so.1 not found)";

pub struct CudaEngine {
    wanted: Vec<usize>,
    rt: Option<Result<Runtime, String>>,
}

impl CudaEngine {
    pub fn new(gpus: &[usize]) -> Self {
        CudaEngine {
            wanted: gpus.to_vec(),
            rt: None,
        }
    }

    /// The runtime, created on first use; `Err` is the skip reason for every case.
    fn runtime(&mut self) -> Result<&mut Runtime, CaseError> {
        if self.rt.is_none() {
            let wanted = self.wanted.clone();
            // cudarc panics on a missing driver symbol (an old driver); that is a reason to skip,
            // not a crash.
            let rt = std::panic::catch_unwind(|| Runtime::open(&wanted)).unwrap_or_else(|p| {
                Err(format!(
                    "the CUDA driver could not be used: {}",
                    crate::sys::panic_message(p.as_ref())
                ))
            });
            self.rt = Some(rt);
        }
        match self.rt.as_mut() {
            Some(Ok(rt)) => Ok(rt),
            Some(Err(reason)) => Err(CaseError::skipped(reason.clone())),
            None => Err(CaseError::skipped(NO_DRIVER)),
        }
    }
}

/// The skip reason for a driver that failed to load.
pub fn driver_skip_reason(e: &LoadError) -> String {
    match e {
        LoadError::NotFound { .. } => NO_DRIVER.to_string(),
        other => format!("CUDA driver unusable: {other}"),
    }
}

/// A library opened once per worker; the error is kept so that every case gets the same reason.
type Lib<T> = Option<Result<Arc<T>, String>>;

fn get_lib<T>(
    slot: &mut Lib<T>,
    spec: &LibSpec,
    load: impl FnOnce(&LibSpec) -> Result<T, LoadError>,
) -> Result<Arc<T>, CaseError> {
    if slot.is_none() {
        *slot = Some(load(spec).map(Arc::new).map_err(|e| e.to_string()));
    }
    match slot.as_ref() {
        Some(Ok(l)) => Ok(l.clone()),
        Some(Err(e)) => Err(CaseError::skipped(e.clone())),
        None => Err(CaseError::skipped(format!("{} not loaded", spec.what))),
    }
}

/// Everything the engine holds once the driver is up.
pub struct Runtime {
    /// Kept open so that cudarc's own dlopen of `libcuda.so.1` finds this already loaded object.
    pub driver: loader::Loaded,
    /// `cuDriverGetVersion`: 12080 for 12.8.
    pub driver_cuda_version: i32,
    pub gpus: Vec<Gpu>,
    cublas: Lib<ffi::Cublas>,
    cublaslt: Lib<ffi::CublasLt>,
    nvrtc: Lib<ffi::Nvrtc>,
    nccl: Lib<ffi::Nccl>,
    pub telemetry: Option<Arc<telemetry::Telemetry>>,
    pub telemetry_error: Option<String>,
    pub(crate) kernels: BTreeMap<(usize, String), Arc<cudarc::driver::CudaModule>>,
}

impl Runtime {
    fn open(wanted: &[usize]) -> Result<Runtime, String> {
        let driver = loader::open(&loader::LIBCUDA).map_err(|e| driver_skip_reason(&e))?;
        cudarc::driver::result::init()
            .map_err(|e| format!("the CUDA driver ({}) failed to initialise: {e}", driver.path))?;
        let mut v = 0;
        // SAFETY: out pointer to a local.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        let count = cudarc::driver::result::device::get_count()
            .map_err(|e| format!("failed to count CUDA devices: {e}"))?
            .max(0) as usize;
        if count == 0 {
            return Err("no CUDA device visible (the driver reports 0 GPUs)".into());
        }
        let ordinals: Vec<usize> = if wanted.is_empty() {
            (0..count).collect()
        } else {
            wanted.to_vec()
        };
        if let Some(bad) = ordinals.iter().find(|&&o| o >= count) {
            return Err(format!(
                "GPU {bad} was asked for, but only {count} GPUs are visible"
            ));
        }
        let mut gpus = Vec::new();
        for o in ordinals {
            gpus.push(Gpu::open(o).map_err(|e| format!("{e:#}"))?);
        }
        let (telemetry, telemetry_error) = match telemetry::Telemetry::open() {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        Ok(Runtime {
            driver,
            driver_cuda_version: v,
            gpus,
            cublas: None,
            cublaslt: None,
            nvrtc: None,
            nccl: None,
            telemetry,
            telemetry_error,
            kernels: BTreeMap::new(),
        })
    }

    pub fn cublas(&mut self) -> Result<Arc<ffi::Cublas>, CaseError> {
        get_lib(&mut self.cublas, &loader::LIBCUBLAS, ffi::Cublas::load)
    }
    pub fn cublaslt(&mut self) -> Result<Arc<ffi::CublasLt>, CaseError> {
        get_lib(&mut self.cublaslt, &loader::LIBCUBLASLT, ffi::CublasLt::load)
    }
    pub fn nvrtc(&mut self) -> Result<Arc<ffi::Nvrtc>, CaseError> {
        get_lib(&mut self.nvrtc, &loader::LIBNVRTC, ffi::Nvrtc::load)
    }
    pub fn nccl(&mut self) -> Result<Arc<ffi::Nccl>, CaseError> {
        get_lib(&mut self.nccl, &loader::LIBNCCL, ffi::Nccl::load)
    }

    /// The first GPU of the job: single-GPU workloads run there.
    pub fn gpu0(&self) -> &Gpu {
        &self.gpus[0]
    }

    /// A telemetry recorder for a GPU.
    pub fn recorder(&self, gpu: &Gpu) -> telemetry::Recorder {
        telemetry::Recorder::new(self.telemetry.as_ref(), &gpu.uuid)
    }
}

/// `major.minor` from CUDA's integer versions (12080 → 12.8).
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

impl Engine for CudaEngine {
    fn name(&self) -> &'static str {
        "native CUDA"
    }

    fn env(&mut self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([("engine".to_string(), "native-cuda".to_string())]);
        match self.runtime() {
            Ok(rt) => {
                m.insert("cuda_driver_path".into(), rt.driver.path.clone());
                m.insert(
                    "cuda_driver_api".into(),
                    cuda_version_string(rt.driver_cuda_version),
                );
                m.insert(
                    "gpus".into(),
                    rt.gpus
                        .iter()
                        .map(|g| format!("{}: {}", g.ordinal, g.name))
                        .collect::<Vec<_>>()
                        .join("; "),
                );
                if let Some(e) = &rt.telemetry_error {
                    m.insert("telemetry".into(), format!("none ({e})"));
                }
            }
            Err(e) => {
                m.insert("cuda".into(), e.to_string());
            }
        }
        m
    }

    fn probe(&mut self, _p: &ProbeParams, _case: &Case) -> Result<CaseOutput, CaseError> {
        probe::run(self.runtime()?)
    }

    fn gemm(&mut self, p: &GemmParams, case: &Case) -> Result<CaseOutput, CaseError> {
        gemm::run(self.runtime()?, p, case)
    }

    fn attention(&mut self, p: &AttentionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        attention::run(self.runtime()?, p, case)
    }

    fn generate(&mut self, p: &GenerateParams, case: &Case) -> Result<CaseOutput, CaseError> {
        generate::run(self.runtime()?, p, case)
    }

    fn precision(&mut self, _p: &PrecisionParams, _case: &Case) -> Result<CaseOutput, CaseError> {
        // Without a driver every case gives the driver's reason, this one included.
        self.runtime()?;
        Err(CaseError::skipped(
            "the native CUDA engine does not implement training steps; the torch engine does (engine = \"torch\")",
        ))
    }

    fn allreduce(&mut self, p: &AllreduceParams, case: &Case) -> Result<CaseOutput, CaseError> {
        allreduce::run(self.runtime()?, p, case)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::WorkloadKind;

    #[test]
    fn version_strings() {
        assert_eq!(cuda_version_string(12080), "12.8");
        assert_eq!(cuda_version_string(13000), "13.0");
        assert_eq!(cuda_version_string(12020), "12.2");
    }

    #[test]
    fn missing_driver_reason_is_exact() {
        let e = LoadError::NotFound {
            what: "CUDA driver",
            soname: "libcuda.so.1".into(),
        };
        assert_eq!(driver_skip_reason(&e), NO_DRIVER);
    }

    #[test]
    fn no_driver_every_kind_skips_without_panic() {
        // Only meaningful where no driver is installed (CI, this build machine).
        if loader::open(&loader::LIBCUDA).is_ok() {
            eprintln!("skipped: a CUDA driver is present on this machine");
            return;
        }
        let mut e = CudaEngine::new(&[]);
        let env = e.env();
        assert_eq!(
            env.get("cuda").map(String::as_str),
            Some(format!("skipped: {NO_DRIVER}").as_str())
        );
        for kind in WorkloadKind::ALL {
            let case = Case {
                workload: kind.as_str().into(),
                kind,
                id: "default".into(),
                params: crate::workload::example(kind),
                measure: Default::default(),
            };
            match crate::engine::run_case(&mut e, &case) {
                Err(CaseError::Skipped(r)) => assert_eq!(r, NO_DRIVER),
                other => panic!("{kind}: expected a skip, got {:?}", other.map(|_| ())),
            }
        }
    }
}
