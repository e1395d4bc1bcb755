//! CUDA C kernels compiled at run time with the image's NVRTC (to PTX for the GPU's compute
//! capability) and loaded through the driver. The sources include no headers, so they compile
//! with any NVRTC (12 or 13) without an include path: fp16 converts through PTX `cvt`, bf16
//! through bit operations.

use std::ffi::{c_char, CString};
use std::sync::Arc;

use anyhow::anyhow;
use cudarc::driver::CudaModule;

use super::device::Gpu;
use super::ffi::{self, Nvrtc, NVRTC_SUCCESS};
use super::Runtime;
use crate::case::Dtype;
use crate::error::CaseError;

/// Element-type prelude: `T`, `to_f(T) -> float`, `from_f(float) -> T`, chosen by `T_KIND`
/// (0 = fp32, 1 = fp16, 2 = bf16).
pub const PRELUDE: &str = r#"
#if T_KIND == 0
typedef float T;
__device__ __forceinline__ float to_f(T x) { return x; }
__device__ __forceinline__ T from_f(float x) { return x; }
#elif T_KIND == 1
typedef unsigned short T;
__device__ __forceinline__ float to_f(T x) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x)); return f; }
__device__ __forceinline__ T from_f(float f) { T x; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(x) : "f"(f)); return x; }
#else
typedef unsigned short T;
__device__ __forceinline__ float to_f(T x) { return __uint_as_float(((unsigned int)x) << 16); }
__device__ __forceinline__ T from_f(float f) {
    unsigned int u = __float_as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (T)(u >> 16);
}
#endif
#define NEG_INF __int_as_float(0xff800000)
"#;

/// Row softmax of attention scores in place, one block per row, fp32 arithmetic. Row `r` is
/// query `r % seq_q`; with `causal`, key `j` is masked when `j > q + offset` (offset = seq_kv −
/// seq_q: the mask is aligned to the bottom right, as FlashAttention and torch SDPA align it)
/// and masked probabilities are written as 0.
pub const SOFTMAX: &str = r#"
__device__ float block_reduce(float v, float* red, int is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? red[lane] : (is_max ? NEG_INF : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            float w = __shfl_xor_sync(0xffffffffu, v, o);
            v = is_max ? fmaxf(v, w) : v + w;
        }
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    float r = red[0];
    __syncthreads();
    return r;
}

extern "C" __global__ void softmax_rows(T* s, int rows, int cols, int seq_q, int offset, int causal) {
    __shared__ float red[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    T* p = s + (long long)row * cols;
    int q = row % seq_q;
    int limit = causal ? min(cols, max(0, q + offset + 1)) : cols;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < limit; j += blockDim.x) m = fmaxf(m, to_f(p[j]));
    m = block_reduce(m, red, 1);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < limit; j += blockDim.x) sum += __expf(to_f(p[j]) - m);
    sum = block_reduce(sum, red, 0);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        p[j] = from_f(j < limit ? __expf(to_f(p[j]) - m) * inv : 0.0f);
}
"#;

/// `T_KIND` for a dtype (fp32 0, fp16 1, bf16 2); other dtypes have no kernels.
pub fn t_kind(d: Dtype) -> Option<u32> {
    match d {
        Dtype::Fp32 => Some(0),
        Dtype::Fp16 => Some(1),
        Dtype::Bf16 => Some(2),
        Dtype::Tf32 | Dtype::Fp8 => None,
    }
}

/// NVRTC options for a GPU: PTX for its own compute capability.
pub fn nvrtc_options(cc: (i32, i32), t_kind: u32) -> Vec<String> {
    vec![
        format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
        format!("-DT_KIND={t_kind}"),
        "--use_fast_math".into(),
    ]
}

/// Compiles `src` to PTX with NVRTC; the error carries NVRTC's log.
pub fn compile_ptx(nvrtc: &Nvrtc, src: &str, name: &str, options: &[String]) -> anyhow::Result<String> {
    let csrc = CString::new(src)?;
    let cname = CString::new(name)?;
    let copts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()))
        .collect::<Result<_, _>>()?;
    let opt_ptrs: Vec<*const c_char> = copts.iter().map(|c| c.as_ptr()).collect();
    let err = |rc| ffi::c_str(unsafe { (nvrtc.nvrtcGetErrorString)(rc) });
    let mut prog: ffi::Handle = std::ptr::null_mut();
    // SAFETY: valid C strings; no headers.
    let rc = unsafe {
        (nvrtc.nvrtcCreateProgram)(
            &mut prog,
            csrc.as_ptr(),
            cname.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != NVRTC_SUCCESS {
        return Err(anyhow!("nvrtcCreateProgram failed for {name}: {}", err(rc)));
    }
    let result = (|| {
        // SAFETY: prog is valid until destroyed below; buffers are sized as NVRTC says.
        let rc = unsafe { (nvrtc.nvrtcCompileProgram)(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
        if rc != NVRTC_SUCCESS {
            let mut n = 0usize;
            let mut log = String::new();
            if unsafe { (nvrtc.nvrtcGetProgramLogSize)(prog, &mut n) } == NVRTC_SUCCESS && n > 0 {
                let mut buf = vec![0u8; n];
                if unsafe { (nvrtc.nvrtcGetProgramLog)(prog, buf.as_mut_ptr() as *mut c_char) }
                    == NVRTC_SUCCESS
                {
                    log = String::from_utf8_lossy(&buf)
                        .trim_end_matches('\0')
                        .trim()
                        .to_string();
                }
            }
            return Err(anyhow!("NVRTC failed to compile {name} ({}): {log}", err(rc)));
        }
        let mut n = 0usize;
        let rc = unsafe { (nvrtc.nvrtcGetPTXSize)(prog, &mut n) };
        if rc != NVRTC_SUCCESS {
            return Err(anyhow!("nvrtcGetPTXSize failed for {name}: {}", err(rc)));
        }
        let mut buf = vec![0u8; n];
        let rc = unsafe { (nvrtc.nvrtcGetPTX)(prog, buf.as_mut_ptr() as *mut c_char) };
        if rc != NVRTC_SUCCESS {
            return Err(anyhow!("nvrtcGetPTX failed for {name}: {}", err(rc)));
        }
        Ok(String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string())
    })();
    // SAFETY: destroys the program created above.
    unsafe { (nvrtc.nvrtcDestroyProgram)(&mut prog) };
    result
}

/// The softmax module for a GPU and dtype, compiled once per worker.
pub fn softmax_module(
    rt: &mut Runtime,
    gpu_index: usize,
    dtype: Dtype,
) -> Result<Arc<CudaModule>, CaseError> {
    let kind = t_kind(dtype).ok_or_else(|| CaseError::skipped(format!("no softmax kernel for {dtype}")))?;
    let key = (gpu_index, format!("softmax-{kind}"));
    if let Some(m) = rt.kernels.get(&key) {
        return Ok(m.clone());
    }
    let nvrtc = rt.nvrtc()?;
    let gpu: &Gpu = &rt.gpus[gpu_index];
    let src = format!("{PRELUDE}{SOFTMAX}");
    let ptx = compile_ptx(&nvrtc, &src, "softmax.cu", &nvrtc_options(gpu.cc, kind))?;
    let module = gpu
        .ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| anyhow!("failed to load the NVRTC softmax PTX on GPU {}: {e}", gpu.ordinal))?;
    rt.kernels.insert(key, module.clone());
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_self_contained() {
        let src = format!("{PRELUDE}{SOFTMAX}");
        assert!(!src.contains("#include"), "NVRTC has no include path here");
        assert!(src.contains("extern \"C\" __global__ void softmax_rows("));
        for k in ["T_KIND == 0", "T_KIND == 1", "cvt.rn.f16.f32", "__shfl_xor_sync"] {
            assert!(src.contains(k), "{k}");
        }
    }

    #[test]
    fn options_target_the_gpu() {
        let o = nvrtc_options((9, 0), 2);
        assert_eq!(o[0], "--gpu-architecture=compute_90");
        assert_eq!(o[1], "-DT_KIND=2");
        assert_eq!(t_kind(Dtype::Fp8), None);
        assert_eq!(t_kind(Dtype::Bf16), Some(2));
    }

    #[test]
    fn bf16_rounding_matches_half() {
        // The kernel's bf16 rounding (round to nearest even on the top 16 bits), checked here
        // against `half` on the host for a spread of values.
        fn kernel_round(f: f32) -> u16 {
            let u = f.to_bits();
            let u = u.wrapping_add(0x7fff + ((u >> 16) & 1));
            (u >> 16) as u16
        }
        for i in 0..10_000 {
            let f = (i as f32 - 5000.0) * 0.001_234_5;
            assert_eq!(kernel_round(f), half::bf16::from_f32(f).to_bits(), "{f}");
        }
    }
}
