//! Function tables for the CUDA libraries tagbench calls directly (cuBLAS, cuBLASLt, NVRTC, NCCL,
//! NVML), resolved from the file the loader found.
//!
//! Only entry points whose C signatures are identical in CUDA 12 and CUDA 13 are used, with the
//! enum values the headers document, so the same table works for either major version. The
//! driver API goes through cudarc (libcuda.so.1 keeps its ABI across toolkit majors).

#![allow(non_snake_case)]

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};

use super::loader::{self, LibSpec, LoadError};

/// Declares a struct of function pointers loaded by symbol name (the field name) from a library.
macro_rules! api {
    ($(#[$m:meta])* $name:ident { $( $f:ident : fn($($a:ty),*) -> $r:ty; )* }) => {
        $(#[$m])*
        pub struct $name {
            /// Where the library was found.
            pub path: String,
            // Kept open: the pointers below point into it.
            _lib: libloading::Library,
            $( pub $f: unsafe extern "C" fn($($a),*) -> $r, )*
        }

        impl $name {
            pub fn load(spec: &LibSpec) -> Result<Self, LoadError> {
                Self::from_loaded(loader::open(spec)?, spec.what)
            }

            /// Opens the library at `path` (tests that point at a known file).
            pub fn load_path(path: &std::path::Path, what: &'static str) -> Result<Self, LoadError> {
                // SAFETY: as in `loader::open`: NVIDIA's libraries, loaded to be called.
                let lib = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
                    what,
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                Self::from_loaded(loader::Loaded { lib, path: path.display().to_string() }, what)
            }

            fn from_loaded(l: loader::Loaded, what: &'static str) -> Result<Self, LoadError> {
                $(
                    // SAFETY: the symbol's C signature is the one declared (cuBLAS/NCCL/NVRTC/NVML
                    // headers of CUDA 12 and 13 agree on it).
                    let $f = unsafe {
                        l.lib.get::<unsafe extern "C" fn($($a),*) -> $r>(
                            concat!(stringify!($f), "\0").as_bytes(),
                        )
                    }
                    .map(|s| *s)
                    .map_err(|_| LoadError::Symbol {
                        what,
                        path: l.path.clone(),
                        symbol: stringify!($f).to_string(),
                    })?;
                )*
                Ok($name { path: l.path, _lib: l.lib, $($f,)* })
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("path", &self.path).finish()
            }
        }
    };
}

pub type Handle = *mut c_void;
pub type Stream = *mut c_void;

// ---- cuBLAS (cublas_api.h) ----
pub const CUBLAS_STATUS_SUCCESS: c_int = 0;
pub const CUBLAS_STATUS_NOT_SUPPORTED: c_int = 15;
pub const CUBLAS_OP_N: c_int = 0;
pub const CUBLAS_OP_T: c_int = 1;
pub const CUBLAS_GEMM_DEFAULT: c_int = -1;
pub const CUBLAS_DEFAULT_MATH: c_int = 0;
// library_types.h: cudaDataType
pub const CUDA_R_32F: c_int = 0;
pub const CUDA_R_16F: c_int = 2;
pub const CUDA_R_16BF: c_int = 14;
pub const CUDA_R_8F_E4M3: c_int = 28;
// cublasComputeType_t
pub const CUBLAS_COMPUTE_32F: c_int = 68;
pub const CUBLAS_COMPUTE_32F_FAST_TF32: c_int = 77;
// libraryPropertyType
pub const MAJOR_VERSION: c_int = 0;
pub const MINOR_VERSION: c_int = 1;
pub const PATCH_LEVEL: c_int = 2;

api!(
    /// cuBLAS.
    Cublas {
        cublasCreate_v2: fn(*mut Handle) -> c_int;
        cublasDestroy_v2: fn(Handle) -> c_int;
        cublasSetStream_v2: fn(Handle, Stream) -> c_int;
        cublasSetMathMode: fn(Handle, c_int) -> c_int;
        cublasGetProperty: fn(c_int, *mut c_int) -> c_int;
        cublasGemmEx: fn(Handle, c_int, c_int, c_int, c_int, c_int, *const c_void, *const c_void, c_int, c_int, *const c_void, c_int, c_int, *const c_void, *mut c_void, c_int, c_int, c_int, c_int) -> c_int;
        cublasGemmBatchedEx: fn(Handle, c_int, c_int, c_int, c_int, c_int, *const c_void, *const *const c_void, c_int, c_int, *const *const c_void, c_int, c_int, *const c_void, *const *mut c_void, c_int, c_int, c_int, c_int, c_int) -> c_int;
    }
);

// ---- cuBLASLt (cublasLt.h) ----
pub const CUBLASLT_MATMUL_DESC_TRANSA: c_int = 3;
pub const CUBLASLT_MATMUL_DESC_TRANSB: c_int = 4;
pub const CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: c_int = 17;
pub const CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: c_int = 18;
pub const CUBLASLT_MATMUL_DESC_FAST_ACCUM: c_int = 25;
pub const CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: c_int = 1;
pub const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: c_int = 5;
pub const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: c_int = 6;
pub const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: c_int = 7;
pub const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: c_int = 8;

/// `cublasLtMatmulHeuristicResult_t`: the algorithm (64 opaque bytes), its workspace, status,
/// waves and reserved words; 96 bytes in CUDA 12 and 13.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LtHeuristic {
    pub algo: [u64; 8],
    pub workspace_size: usize,
    pub state: c_int,
    pub waves_count: f32,
    pub reserved: [c_int; 4],
}

api!(
    /// cuBLASLt.
    CublasLt {
        cublasLtCreate: fn(*mut Handle) -> c_int;
        cublasLtDestroy: fn(Handle) -> c_int;
        cublasLtGetVersion: fn() -> usize;
        cublasLtMatmulDescCreate: fn(*mut Handle, c_int, c_int) -> c_int;
        cublasLtMatmulDescDestroy: fn(Handle) -> c_int;
        cublasLtMatmulDescSetAttribute: fn(Handle, c_int, *const c_void, usize) -> c_int;
        cublasLtMatrixLayoutCreate: fn(*mut Handle, c_int, u64, u64, i64) -> c_int;
        cublasLtMatrixLayoutDestroy: fn(Handle) -> c_int;
        cublasLtMatmulPreferenceCreate: fn(*mut Handle) -> c_int;
        cublasLtMatmulPreferenceDestroy: fn(Handle) -> c_int;
        cublasLtMatmulPreferenceSetAttribute: fn(Handle, c_int, *const c_void, usize) -> c_int;
        cublasLtMatmulAlgoGetHeuristic: fn(Handle, Handle, Handle, Handle, Handle, Handle, Handle, c_int, *mut LtHeuristic, *mut c_int) -> c_int;
        cublasLtMatmul: fn(Handle, Handle, *const c_void, *const c_void, Handle, *const c_void, Handle, *const c_void, *const c_void, Handle, *mut c_void, Handle, *const LtHeuristic, *mut c_void, usize, Stream) -> c_int;
    }
);

// ---- NVRTC (nvrtc.h) ----
pub const NVRTC_SUCCESS: c_int = 0;

api!(
    /// NVRTC.
    Nvrtc {
        nvrtcVersion: fn(*mut c_int, *mut c_int) -> c_int;
        nvrtcGetErrorString: fn(c_int) -> *const c_char;
        nvrtcCreateProgram: fn(*mut Handle, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int;
        nvrtcCompileProgram: fn(Handle, c_int, *const *const c_char) -> c_int;
        nvrtcGetPTXSize: fn(Handle, *mut usize) -> c_int;
        nvrtcGetPTX: fn(Handle, *mut c_char) -> c_int;
        nvrtcGetCUBINSize: fn(Handle, *mut usize) -> c_int;
        nvrtcGetCUBIN: fn(Handle, *mut c_char) -> c_int;
        nvrtcGetNumSupportedArchs: fn(*mut c_int) -> c_int;
        nvrtcGetSupportedArchs: fn(*mut c_int) -> c_int;
        nvrtcGetProgramLogSize: fn(Handle, *mut usize) -> c_int;
        nvrtcGetProgramLog: fn(Handle, *mut c_char) -> c_int;
        nvrtcDestroyProgram: fn(*mut Handle) -> c_int;
    }
);

// ---- NCCL (nccl.h) ----
pub const NCCL_SUCCESS: c_int = 0;
pub const NCCL_FLOAT16: c_int = 6;
pub const NCCL_FLOAT32: c_int = 7;
pub const NCCL_BFLOAT16: c_int = 9;
pub const NCCL_SUM: c_int = 0;
pub const NCCL_PROD: c_int = 1;
pub const NCCL_MAX: c_int = 2;
pub const NCCL_MIN: c_int = 3;
pub const NCCL_AVG: c_int = 4;

api!(
    /// NCCL.
    Nccl {
        ncclGetVersion: fn(*mut c_int) -> c_int;
        ncclGetErrorString: fn(c_int) -> *const c_char;
        ncclCommInitAll: fn(*mut Handle, c_int, *const c_int) -> c_int;
        ncclCommFinalize: fn(Handle) -> c_int;
        ncclCommDestroy: fn(Handle) -> c_int;
        ncclGroupStart: fn() -> c_int;
        ncclGroupEnd: fn() -> c_int;
        ncclAllReduce: fn(*const c_void, *mut c_void, usize, c_int, c_int, Handle, Stream) -> c_int;
    }
);

// ---- NVML (nvml.h) ----
pub const NVML_SUCCESS: c_int = 0;
pub const NVML_CLOCK_SM: c_int = 1;
pub const NVML_TEMPERATURE_GPU: c_int = 0;

api!(
    /// NVML (the driver's management library).
    Nvml {
        nvmlInit_v2: fn() -> c_int;
        nvmlShutdown: fn() -> c_int;
        nvmlErrorString: fn(c_int) -> *const c_char;
        nvmlSystemGetDriverVersion: fn(*mut c_char, c_uint) -> c_int;
        nvmlDeviceGetHandleByUUID: fn(*const c_char, *mut Handle) -> c_int;
        nvmlDeviceGetClockInfo: fn(Handle, c_int, *mut c_uint) -> c_int;
        nvmlDeviceGetDefaultApplicationsClock: fn(Handle, c_int, *mut c_uint) -> c_int;
        nvmlDeviceGetMaxClockInfo: fn(Handle, c_int, *mut c_uint) -> c_int;
        nvmlDeviceGetPowerUsage: fn(Handle, *mut c_uint) -> c_int;
        nvmlDeviceGetTemperature: fn(Handle, c_int, *mut c_uint) -> c_int;
        nvmlDeviceGetCurrentClocksThrottleReasons: fn(Handle, *mut c_ulonglong) -> c_int;
    }
);

/// A C string from a library (error strings), or `unknown` for a null pointer.
pub(crate) fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return "unknown".into();
    }
    // SAFETY: the libraries return static NUL-terminated strings.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heuristic_result_is_96_bytes() {
        // sizeof(cublasLtMatmulHeuristicResult_t) in cublasLt.h (CUDA 12 and 13).
        assert_eq!(std::mem::size_of::<LtHeuristic>(), 96);
    }

    #[test]
    fn enum_values_match_cudarc_bindings() {
        // cudarc's bindgen output for CUDA 12.8 is a second source for the header values.
        use cudarc::cublas::sys as cb;
        use cudarc::cublaslt::sys as lt;
        assert_eq!(CUDA_R_16BF, cb::cudaDataType_t::CUDA_R_16BF as c_int);
        assert_eq!(CUDA_R_8F_E4M3, cb::cudaDataType_t::CUDA_R_8F_E4M3 as c_int);
        assert_eq!(
            CUBLAS_COMPUTE_32F_FAST_TF32,
            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 as c_int
        );
        assert_eq!(
            CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
            lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER as c_int
        );
        assert_eq!(
            CUBLASLT_MATMUL_DESC_FAST_ACCUM,
            lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_FAST_ACCUM as c_int
        );
        type Pref = lt::cublasLtMatmulPreferenceAttributes_t;
        assert_eq!(
            [
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES
            ],
            [
                Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES as c_int,
                Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES as c_int,
                Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES as c_int,
                Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES as c_int
            ]
        );
        assert_eq!(
            cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED as c_int,
            CUBLAS_STATUS_NOT_SUPPORTED
        );
        assert_eq!(
            NCCL_BFLOAT16,
            cudarc::nccl::sys::ncclDataType_t::ncclBfloat16 as c_int
        );
        assert_eq!(NCCL_AVG, cudarc::nccl::sys::ncclRedOp_t::ncclAvg as c_int);
        assert_eq!(
            std::mem::size_of::<LtHeuristic>(),
            std::mem::size_of::<lt::cublasLtMatmulHeuristicResult_t>()
        );
    }
}
