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
use crate::workload::startup::{StartupMetric, StartupParams};
use crate::workload::Params;
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
    /// GPUs the driver reports.
    pub visible: usize,
    /// The job's GPUs (`gpus` of the target); empty means any visible GPU.
    pub wanted: Vec<usize>,
    /// The current case's GPUs, in the order the case uses them ([`Runtime::select`]).
    pub gpus: Vec<Gpu>,
    /// Every GPU opened so far: a context is created the first time a case needs its GPU and
    /// kept for later cases.
    opened: BTreeMap<usize, Gpu>,
    cublas: Lib<ffi::Cublas>,
    cublaslt: Lib<ffi::CublasLt>,
    nvrtc: Lib<ffi::Nvrtc>,
    nccl: Lib<ffi::Nccl>,
    pub telemetry: Option<Arc<telemetry::Telemetry>>,
    pub telemetry_error: Option<String>,
    pub(crate) kernels: BTreeMap<(usize, String), Arc<cudarc::driver::CudaModule>>,
}

/// How many GPUs a case needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuNeed {
    /// Nothing runs on a GPU (a case the engine skips anyway).
    None,
    /// The first `n` GPUs of the job.
    Count(usize),
    /// Every GPU of the job (an all-reduce with `ranks = 0`).
    All,
}

/// What a case needs: one GPU for GEMM, attention, generation and the probe (which describes
/// the others without contexts), the ranks of an all-reduce, none for training steps.
pub fn gpu_need(params: &Params) -> GpuNeed {
    match params {
        Params::Precision(_) => GpuNeed::None,
        Params::Allreduce(p) if p.ranks == 0 => GpuNeed::All,
        Params::Allreduce(p) => GpuNeed::Count(p.ranks),
        _ => GpuNeed::Count(1),
    }
}

/// The ordinals to open for a case: from the job's GPUs (all visible ones when the job names
/// none), only as many as the case needs. A context costs about 0.5 GB of the GPU's memory and
/// fails on a GPU that another process holds in exclusive mode, so a GPU no case needs is never
/// touched.
pub fn gpus_for_case(wanted: &[usize], visible: usize, need: GpuNeed) -> Result<Vec<usize>, String> {
    if visible == 0 {
        return Err("no CUDA device visible (the driver reports 0 GPUs)".into());
    }
    let pool: Vec<usize> = if wanted.is_empty() {
        (0..visible).collect()
    } else {
        wanted.to_vec()
    };
    if let Some(bad) = pool.iter().find(|&&o| o >= visible) {
        return Err(format!(
            "GPU {bad} was asked for, but only {visible} GPUs are visible"
        ));
    }
    match need {
        GpuNeed::None => Ok(Vec::new()),
        GpuNeed::All => Ok(pool),
        GpuNeed::Count(n) if n <= pool.len() => Ok(pool[..n].to_vec()),
        GpuNeed::Count(n) => Err(format!("needs {n} GPUs; the target has {}", pool.len())),
    }
}

/// Runs one case, turning a panic (cudarc panics on some driver errors and missing symbols)
/// into a `failed` case: the worker and the cases after it go on.
pub fn catch_case(
    label: &str,
    f: impl FnOnce() -> Result<CaseOutput, CaseError>,
) -> Result<CaseOutput, CaseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(CaseError::Failed(anyhow::anyhow!(
            "the CUDA engine panicked in case {label}: {}",
            crate::sys::panic_message(p.as_ref())
        )))
    })
}

impl Runtime {
    fn open(wanted: &[usize]) -> Result<Runtime, String> {
        let driver = loader::open(&loader::LIBCUDA).map_err(|e| driver_skip_reason(&e))?;
        cudarc::driver::result::init()
            .map_err(|e| format!("the CUDA driver ({}) failed to initialise: {e}", driver.path))?;
        let mut v = 0;
        // SAFETY: out pointer to a local.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        let visible = cudarc::driver::result::device::get_count()
            .map_err(|e| format!("failed to count CUDA devices: {e}"))?
            .max(0) as usize;
        // The job's GPUs are checked now (every case would fail alike); contexts wait for a
        // case that needs them.
        gpus_for_case(wanted, visible, GpuNeed::None)?;
        let (telemetry, telemetry_error) = match telemetry::Telemetry::open() {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        Ok(Runtime {
            driver,
            driver_cuda_version: v,
            visible,
            wanted: wanted.to_vec(),
            gpus: Vec::new(),
            opened: BTreeMap::new(),
            cublas: None,
            cublaslt: None,
            nvrtc: None,
            nccl: None,
            telemetry,
            telemetry_error,
            kernels: BTreeMap::new(),
        })
    }

    /// Makes `ordinals` the current case's GPUs, opening those not opened yet.
    pub fn select(&mut self, ordinals: &[usize]) -> Result<(), String> {
        for &o in ordinals {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.opened.entry(o) {
                slot.insert(Gpu::open(o).map_err(|e| format!("{e:#}"))?);
            }
        }
        self.gpus = ordinals.iter().map(|o| self.opened[o].clone()).collect();
        Ok(())
    }

    /// The job's GPUs as the driver describes them, without creating contexts.
    pub fn describe_gpus(&self) -> Vec<Result<device::GpuFacts, String>> {
        gpus_for_case(&self.wanted, self.visible, GpuNeed::All)
            .unwrap_or_default()
            .into_iter()
            .map(|o| device::GpuFacts::query(o).map_err(|e| format!("{e:#}")))
            .collect()
    }

    /// A toolkit library spec narrowed to the majors this driver runs.
    pub fn spec(&self, spec: &LibSpec) -> LibSpec {
        loader::for_driver(spec, self.driver_cuda_version)
    }

    pub fn cublas(&mut self) -> Result<Arc<ffi::Cublas>, CaseError> {
        let spec = self.spec(&loader::LIBCUBLAS);
        get_lib(&mut self.cublas, &spec, ffi::Cublas::load)
    }
    pub fn cublaslt(&mut self) -> Result<Arc<ffi::CublasLt>, CaseError> {
        let spec = self.spec(&loader::LIBCUBLASLT);
        get_lib(&mut self.cublaslt, &spec, ffi::CublasLt::load)
    }
    pub fn nvrtc(&mut self) -> Result<Arc<ffi::Nvrtc>, CaseError> {
        let spec = self.spec(&loader::LIBNVRTC);
        get_lib(&mut self.nvrtc, &spec, ffi::Nvrtc::load)
    }
    pub fn nccl(&mut self) -> Result<Arc<ffi::Nccl>, CaseError> {
        get_lib(&mut self.nccl, &loader::LIBNCCL, ffi::Nccl::load)
    }

    /// The first GPU of the case: single-GPU workloads run there.
    pub fn gpu0(&self) -> &Gpu {
        &self.gpus[0]
    }

    /// A telemetry recorder for a GPU.
    pub fn recorder(&self, gpu: &Gpu) -> telemetry::Recorder {
        telemetry::Recorder::new(self.telemetry.as_ref(), &gpu.uuid)
    }
}

/// What `first_cuda_op` times in a fresh process: the driver's start (dlopen, `cuInit`), a context
/// and stream on GPU `ordinal`, and a first operation on the device (a 4-byte fill), synchronised;
/// milliseconds.
pub fn first_cuda_op_ms(ordinal: usize) -> anyhow::Result<f64> {
    let t0 = std::time::Instant::now();
    let driver = loader::open(&loader::LIBCUDA).map_err(|e| anyhow::anyhow!(driver_skip_reason(&e)))?;
    cudarc::driver::result::init()
        .map_err(|e| anyhow::anyhow!("the CUDA driver ({}) failed to initialise: {e}", driver.path))?;
    let gpu = Gpu::open(ordinal)?;
    let buf = gpu.alloc(4)?;
    gpu.memset(&buf, 1)?;
    gpu.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// `major.minor` from CUDA's integer versions (12080 → 12.8).
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

impl CudaEngine {
    /// The run's environment: driver, the toolkit major chosen for it and the library files it
    /// selects, and the job's GPUs (described without contexts).
    fn describe(&mut self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([("engine".to_string(), "native-cuda".to_string())]);
        match self.runtime() {
            Ok(rt) => {
                m.insert("cuda_driver_path".into(), rt.driver.path.clone());
                m.insert(
                    "cuda_driver_api".into(),
                    cuda_version_string(rt.driver_cuda_version),
                );
                m.insert(
                    "cuda_library_majors".into(),
                    library_majors_note(rt.driver_cuda_version),
                );
                let dirs = loader::search_dirs();
                for spec in [
                    loader::LIBCUBLAS,
                    loader::LIBCUBLASLT,
                    loader::LIBNVRTC,
                    loader::LIBNCCL,
                ] {
                    let key = format!(
                        "{}_file",
                        spec.stem.trim_start_matches("lib").trim_end_matches(".so")
                    );
                    let found = loader::find_in_dirs(&rt.spec(&spec), &dirs)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| {
                            "not found (the dynamic loader's cache is tried at first use)".into()
                        });
                    m.insert(key, found);
                }
                m.insert(
                    "gpus".into(),
                    rt.describe_gpus()
                        .iter()
                        .map(|g| match g {
                            Ok(g) => format!("{}: {}", g.ordinal, g.name),
                            Err(e) => e.clone(),
                        })
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

    /// One case: the driver, then only the GPUs the case needs, then the workload under
    /// [`catch_case`].
    fn on_gpus(
        &mut self,
        case: &Case,
        f: impl FnOnce(&mut Runtime) -> Result<CaseOutput, CaseError>,
    ) -> Result<CaseOutput, CaseError> {
        let rt = self.runtime()?;
        let need = gpu_need(&case.params);
        if need == GpuNeed::None {
            return f(rt);
        }
        let ordinals = gpus_for_case(&rt.wanted, rt.visible, need).map_err(CaseError::skipped)?;
        rt.select(&ordinals).map_err(CaseError::skipped)?;
        catch_case(&case.label(), || f(rt))
    }
}

/// Which toolkit majors the driver allows, for run.json.
pub fn library_majors_note(driver_cuda_version: i32) -> String {
    let m = loader::toolkit_majors(driver_cuda_version);
    format!(
        "{} (driver supports CUDA {}; CUDA 13 libraries need a 13.0 driver)",
        m.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        cuda_version_string(driver_cuda_version)
    )
}

impl Engine for CudaEngine {
    fn name(&self) -> &'static str {
        "native CUDA"
    }

    fn env(&mut self) -> BTreeMap<String, String> {
        self.describe()
    }

    fn probe(&mut self, _p: &ProbeParams, case: &Case) -> Result<CaseOutput, CaseError> {
        self.on_gpus(case, probe::run)
    }

    fn gemm(&mut self, p: &GemmParams, case: &Case) -> Result<CaseOutput, CaseError> {
        self.on_gpus(case, |rt| gemm::run(rt, p, case))
    }

    fn attention(&mut self, p: &AttentionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        p.compile
            .native_can_run("native CUDA")
            .map_err(CaseError::Skipped)?;
        self.on_gpus(case, |rt| attention::run(rt, p, case))
    }

    fn generate(&mut self, p: &GenerateParams, case: &Case) -> Result<CaseOutput, CaseError> {
        p.native_can_run("native CUDA").map_err(CaseError::Skipped)?;
        self.on_gpus(case, |rt| generate::run(rt, p, case))
    }

    /// `first_cuda_op`: each sample a fresh worker process (`worker --first-cuda-op N`) that
    /// times its own driver start, context and first device operation ([`first_cuda_op_ms`]).
    fn startup(&mut self, p: &StartupParams, case: &Case) -> Result<CaseOutput, CaseError> {
        if p.metric != StartupMetric::FirstCudaOp {
            return crate::engine::startup::not_here(self.name(), p);
        }
        let rt = self.runtime()?;
        let ordinal =
            gpus_for_case(&rt.wanted, rt.visible, GpuNeed::Count(1)).map_err(CaseError::Skipped)?[0];
        let exe = std::env::current_exe()
            .map_err(|e| CaseError::Failed(anyhow::anyhow!("failed to locate the worker binary: {e}")))?;
        let n = ordinal.to_string();
        let values = crate::engine::startup::self_timed_processes(
            exe.as_os_str(),
            &["worker", "--first-cuda-op", &n],
            p,
        )
        .map_err(|e| {
            CaseError::Failed(anyhow::anyhow!(
                "{}: the first CUDA operation failed: {e}",
                case.label()
            ))
        })?;
        Ok(crate::engine::startup::output(
            p,
            &format!("cuda:{ordinal}"),
            values,
        ))
    }

    fn precision(&mut self, _p: &PrecisionParams, _case: &Case) -> Result<CaseOutput, CaseError> {
        // Without a driver every case gives the driver's reason, this one included.
        self.runtime()?;
        Err(CaseError::skipped(
            "the native CUDA engine does not implement training steps; the torch engine does (engine = \"torch\")",
        ))
    }

    fn allreduce(&mut self, p: &AllreduceParams, case: &Case) -> Result<CaseOutput, CaseError> {
        self.on_gpus(case, |rt| allreduce::run(rt, p, case))
    }

    fn command(
        &mut self,
        p: &crate::workload::command::CommandParams,
        case: &Case,
    ) -> Result<CaseOutput, CaseError> {
        // The program uses the GPUs itself; no CUDA context is opened here for it.
        let first = self.wanted.first().copied().unwrap_or(0);
        let out = CaseOutput::new(format!("cuda:{first}"));
        crate::engine::command::run(p, case, crate::case::Device::Cuda, out)
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
        // A user's program runs whatever the driver: it knows itself what it needs.
        for kind in WorkloadKind::ALL
            .into_iter()
            // Start-up cases say per metric what this engine cannot measure (engine/startup.rs).
            .filter(|k| !matches!(k, WorkloadKind::Command | WorkloadKind::Startup))
        {
            let case = Case {
                workload: kind.as_str().into(),
                kind,
                id: "default".into(),
                params: crate::workload::example(kind),
                measure: Default::default(),
            };
            match crate::engine::run_case(&mut e, &case) {
                // Convolutions are the torch engine's (cuDNN): no driver needed to say so.
                Err(CaseError::Skipped(r)) if kind == WorkloadKind::Conv => {
                    assert!(r.contains("does not implement conv cases"), "{r}")
                }
                Err(CaseError::Skipped(r)) => assert_eq!(r, NO_DRIVER),
                other => panic!("{kind}: expected a skip, got {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn only_the_gpus_a_case_needs_are_opened() {
        // No GPUs named: one GPU for a single-GPU case, not a context on all eight.
        assert_eq!(gpus_for_case(&[], 8, GpuNeed::Count(1)), Ok(vec![0]));
        assert_eq!(gpus_for_case(&[], 8, GpuNeed::Count(2)), Ok(vec![0, 1]));
        assert_eq!(gpus_for_case(&[], 8, GpuNeed::None), Ok(vec![]));
        assert_eq!(gpus_for_case(&[], 3, GpuNeed::All), Ok(vec![0, 1, 2]));
        // Named GPUs: in the job's order.
        assert_eq!(gpus_for_case(&[5, 2], 8, GpuNeed::Count(1)), Ok(vec![5]));
        assert_eq!(gpus_for_case(&[5, 2], 8, GpuNeed::All), Ok(vec![5, 2]));
        // Errors name the numbers.
        assert_eq!(
            gpus_for_case(&[9], 8, GpuNeed::Count(1)),
            Err("GPU 9 was asked for, but only 8 GPUs are visible".into())
        );
        assert_eq!(
            gpus_for_case(&[0], 8, GpuNeed::Count(2)),
            Err("needs 2 GPUs; the target has 1".into())
        );
        assert!(gpus_for_case(&[], 0, GpuNeed::Count(1))
            .unwrap_err()
            .contains("0 GPUs"));
    }

    #[test]
    fn need_follows_the_workload() {
        let params = |kind: WorkloadKind, v: serde_json::Value| Params::parse(kind, v).unwrap();
        let none = serde_json::json!({});
        let gemm = serde_json::json!({"size": 64, "dtype": "fp32"});
        assert_eq!(gpu_need(&params(WorkloadKind::Gemm, gemm)), GpuNeed::Count(1));
        assert_eq!(
            gpu_need(&params(WorkloadKind::Probe, none.clone())),
            GpuNeed::Count(1)
        );
        let mlp = serde_json::json!({"model": "mlp", "batch": 8, "mode": "fp32"});
        assert_eq!(gpu_need(&params(WorkloadKind::Precision, mlp)), GpuNeed::None);
        let ar = serde_json::json!({"min_bytes": 1024, "max_bytes": 4096});
        assert_eq!(
            gpu_need(&params(WorkloadKind::Allreduce, ar.clone())),
            GpuNeed::All
        );
        let mut two = ar;
        two["ranks"] = 2.into();
        assert_eq!(gpu_need(&params(WorkloadKind::Allreduce, two)), GpuNeed::Count(2));
    }

    #[test]
    fn a_panic_fails_the_case_only() {
        let r = catch_case("gemm/size=1024", || panic!("CUDA_ERROR_ILLEGAL_ADDRESS"));
        match r {
            Err(CaseError::Failed(e)) => {
                let m = e.to_string();
                assert!(
                    m.contains("gemm/size=1024") && m.contains("CUDA_ERROR_ILLEGAL_ADDRESS"),
                    "{m}"
                );
            }
            other => panic!("expected a failure, got {:?}", other.map(|_| ())),
        }
        // The next case runs normally.
        assert!(catch_case("probe/default", || Ok(CaseOutput::new("cuda:0"))).is_ok());
    }

    #[test]
    fn library_majors_are_recorded() {
        let n = library_majors_note(12080);
        assert!(n.starts_with("12, 11 (driver supports CUDA 12.8"), "{n}");
        assert!(library_majors_note(13000).starts_with("13, 12, 11"));
    }
}
