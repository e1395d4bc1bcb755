//! The probe on CUDA: driver, CUDA runtime, cuBLAS, cuBLASLt, NVRTC and NCCL versions (with the
//! file each was found at), and per GPU its name, UUID, SM count, memory, L2 and compute
//! capability.

use std::collections::BTreeMap;
use std::ffi::c_int;

use super::loader::{self, LIBCUDART};
use super::{cuda_version_string, Runtime};
use crate::engine::CaseOutput;
use crate::error::CaseError;

/// NCCL's integer version (`22105` or the old `2708` form) as `2.21.5`.
pub fn nccl_version_string(v: i32) -> String {
    if v >= 10000 {
        format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
    }
}

/// cuBLASLt's `cublasLtGetVersion` (`120803` or `130001`) as `12.8.3`.
pub fn cublaslt_version_string(v: usize) -> String {
    format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
}

pub fn run(rt: &mut Runtime) -> Result<CaseOutput, CaseError> {
    let mut env = BTreeMap::new();
    env.insert(
        "cuda_driver_api".into(),
        cuda_version_string(rt.driver_cuda_version),
    );
    env.insert("cuda_driver_path".into(), rt.driver.path.clone());
    if let Some(v) = rt.telemetry.as_ref().and_then(|t| t.driver_version()) {
        env.insert("driver".into(), v);
    }
    // The CUDA runtime is not called (cudarc drives the GPU); its file name carries its version.
    match loader::find_in_dirs(&rt.spec(&LIBCUDART), &loader::search_dirs()) {
        Some(p) => {
            env.insert("cudart_path".into(), p.display().to_string());
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(v) = loader::version_suffix(LIBCUDART.stem, name) {
                if !v.is_empty() {
                    env.insert(
                        "cuda_runtime".into(),
                        v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("."),
                    );
                }
            }
        }
        None => {
            env.insert("cuda_runtime".into(), "not found".into());
        }
    }
    match rt.cublas() {
        Ok(l) => {
            let mut v = [0 as c_int; 3];
            // SAFETY: out pointers to locals.
            unsafe {
                (l.cublasGetProperty)(super::ffi::MAJOR_VERSION, &mut v[0]);
                (l.cublasGetProperty)(super::ffi::MINOR_VERSION, &mut v[1]);
                (l.cublasGetProperty)(super::ffi::PATCH_LEVEL, &mut v[2]);
            }
            env.insert("cublas".into(), format!("{}.{}.{}", v[0], v[1], v[2]));
            env.insert("cublas_path".into(), l.path.clone());
        }
        Err(e) => {
            env.insert("cublas".into(), e.to_string());
        }
    }
    match rt.cublaslt() {
        Ok(l) => {
            // SAFETY: no arguments.
            let v = unsafe { (l.cublasLtGetVersion)() };
            env.insert("cublaslt".into(), cublaslt_version_string(v));
        }
        Err(e) => {
            env.insert("cublaslt".into(), e.to_string());
        }
    }
    match rt.nvrtc() {
        Ok(l) => {
            let (a, b) = super::kernels::nvrtc_version(&l);
            env.insert("nvrtc".into(), format!("{a}.{b}"));
            env.insert("nvrtc_path".into(), l.path.clone());
            let cc = rt.gpu0().cc;
            let target = super::kernels::supported_archs(&l)
                .ok()
                .and_then(|archs| super::kernels::choose_target(cc, &archs));
            env.insert(
                "nvrtc_target".into(),
                target.map_or_else(|| "none".into(), |t| t.arch_flag()),
            );
        }
        Err(e) => {
            env.insert("nvrtc".into(), e.to_string());
        }
    }
    match rt.nccl() {
        Ok(l) => {
            let mut v = 0;
            // SAFETY: out pointer to a local.
            unsafe { (l.ncclGetVersion)(&mut v) };
            env.insert("nccl".into(), nccl_version_string(v));
            env.insert("nccl_path".into(), l.path.clone());
        }
        Err(e) => {
            env.insert("nccl".into(), e.to_string());
        }
    }
    env.insert(
        "cuda_library_majors".into(),
        super::library_majors_note(rt.driver_cuda_version),
    );
    // Every GPU of the job, described by the driver without a context on it.
    let facts = rt.describe_gpus();
    env.insert("gpu_count".into(), facts.len().to_string());
    for g in facts {
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                env.insert("gpu_error".into(), e);
                continue;
            }
        };
        let p = format!("gpu{}_", g.ordinal);
        env.insert(format!("{p}name"), g.name.clone());
        env.insert(format!("{p}uuid"), g.uuid.clone());
        env.insert(format!("{p}sm_count"), g.sm_count.to_string());
        env.insert(format!("{p}memory_mib"), (g.total_mem_bytes >> 20).to_string());
        env.insert(
            format!("{p}l2_mib"),
            format!("{:.1}", g.l2_bytes as f64 / 1048576.0),
        );
        env.insert(format!("{p}compute_capability"), format!("{}.{}", g.cc.0, g.cc.1));
    }
    let g = rt.gpu0();
    let mut out = CaseOutput::new(g.device_label());
    out.gpu_name = g.name.clone();
    out.gpu_index = Some(g.ordinal);
    out.status = Some(format!(
        "{} × {} (cc {}.{}, {} SMs, {} MiB), driver {} (CUDA {}), cuBLAS {}, NCCL {}",
        rt.gpus.len(),
        g.name,
        g.cc.0,
        g.cc.1,
        g.sm_count,
        g.total_mem_bytes >> 20,
        env.get("driver").map_or("?", String::as_str),
        cuda_version_string(rt.driver_cuda_version),
        env.get("cublas").map_or("?", String::as_str),
        env.get("nccl").map_or("?", String::as_str),
    ));
    out.env = env;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(nccl_version_string(22105), "2.21.5");
        assert_eq!(nccl_version_string(2708), "2.7.8");
        assert_eq!(cublaslt_version_string(120803), "12.8.3");
        assert_eq!(cublaslt_version_string(130001), "13.0.1");
    }
}
