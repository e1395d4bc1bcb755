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

/// Token-generation kernels (compiled after [`PRELUDE`] and [`SOFTMAX`], whose `block_reduce`
/// they use). Element indices are `long long`: a prefill's activations pass 2³¹ elements.
pub const GENERATE: &str = r#"
/* splitmix64 of (seed, i) to an odd multiple of 2^-24 in (-1, 1): exact in fp32, never 0. */
__device__ __forceinline__ float hash_uniform(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed + (i + 1ull) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    long long k = (long long)(z >> 40);
    return (float)(2ll * k + 1ll - 16777216ll) * (1.0f / 16777216.0f);
}

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

/* Random weights: offset + scale * U(-1, 1). */
extern "C" __global__ void init_uniform(T* p, long long n, unsigned long long seed, float offset, float scale) {
    GRID_STRIDE(i, n) p[i] = from_f(offset + scale * hash_uniform(seed, (unsigned long long)i));
}

/* One block per token: out[t] = table[ids[t]]; ids outside the vocabulary read row 0. */
extern "C" __global__ void embed(T* out, const T* table, const int* ids, int hidden, int vocab) {
    int t = blockIdx.x;
    int id = ids[t];
    if (id < 0 || id >= vocab) id = 0;
    const T* row = table + (long long)id * hidden;
    T* o = out + (long long)t * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) o[j] = row[j];
}

/* One block per row: y = x / sqrt(mean(x^2) + eps) * w, fp32 arithmetic. Row strides let the
   final norm read only the last token of each sequence. */
extern "C" __global__ void rms_norm(T* out, const T* in, const T* w, int cols, long long in_stride,
                                   long long out_stride, float eps) {
    __shared__ float red[32];
    const T* x = in + blockIdx.x * in_stride;
    T* y = out + blockIdx.x * out_stride;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) { float v = to_f(x[j]); ss += v * v; }
    ss = block_reduce(ss, red, 0);
    float r = rsqrtf(ss / (float)cols + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) y[j] = from_f(to_f(x[j]) * r * to_f(w[j]));
}

/* Rotary embedding in place on the first n_heads heads of each row (the Q then K heads of the
   fused QKV row), HF Llama's rotate_half pairing (i, i + d/2). Row t is at position
   pos0 + t % seq; cos/sin tables are [position][d/2] in fp32 (computed in float64 on the host:
   fast-math sinf is inaccurate at large angles). */
extern "C" __global__ void rope(T* x, const float* cos_t, const float* sin_t, int rows, int seq, int pos0,
                                int n_heads, int d, long long row_stride) {
    int half = d / 2;
    long long n = (long long)rows * n_heads * half;
    GRID_STRIDE(idx, n) {
        int i = (int)(idx % half);
        long long r = idx / half;
        int h = (int)(r % n_heads);
        long long t = r / n_heads;
        int pos = pos0 + (int)(t % seq);
        T* v = x + t * row_stride + (long long)h * d;
        float c = cos_t[(long long)pos * half + i], s = sin_t[(long long)pos * half + i];
        float a = to_f(v[i]), b = to_f(v[i + half]);
        v[i] = from_f(a * c - b * s);
        v[i + half] = from_f(b * c + a * s);
    }
}

/* Copies each row's K and V heads (after rope) into the caches [batch][kv_heads][max_seq][d]
   at position pos0 + t % seq of sequence t / seq. */
extern "C" __global__ void kv_append(T* kc, T* vc, const T* qkv, int rows, int seq, int pos0, int heads,
                                     int kv_heads, int d, int max_seq) {
    long long n = (long long)rows * kv_heads * d;
    long long width = (long long)(heads + 2 * kv_heads) * d;
    GRID_STRIDE(idx, n) {
        int j = (int)(idx % d);
        long long r = idx / d;
        int g = (int)(r % kv_heads);
        long long t = r / kv_heads;
        long long b = t / seq;
        int pos = pos0 + (int)(t % seq);
        const T* row = qkv + t * width;
        long long dst = ((b * kv_heads + g) * max_seq + pos) * d + j;
        kc[dst] = row[(long long)(heads + g) * d + j];
        vc[dst] = row[(long long)(heads + kv_heads + g) * d + j];
    }
}

/* Causal row softmax in place over the first cols entries of rows ld apart: row r is query
   r % seq_q, which sees keys j <= q + offset (offset = keys - queries, bottom-right aligned);
   masked entries become 0. */
extern "C" __global__ void softmax_causal(T* s, int rows, int cols, int ld, int seq_q, int offset) {
    __shared__ float red[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    T* p = s + (long long)row * ld;
    int q = row % seq_q;
    int limit = min(cols, max(0, q + offset + 1));
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

/* SwiGLU: out[t][i] = silu(gu[t][i]) * gu[t][inter + i] (gate then up in the fused row). */
extern "C" __global__ void swiglu(T* out, const T* gu, int rows, int inter) {
    long long n = (long long)rows * inter;
    GRID_STRIDE(idx, n) {
        long long t = idx / inter;
        int i = (int)(idx % inter);
        float g = to_f(gu[t * 2 * inter + i]), u = to_f(gu[t * 2 * inter + inter + i]);
        out[idx] = from_f(g / (1.0f + __expf(-g)) * u);
    }
}

/* One block per row: the index of the largest value (the lowest index among ties; 0 when
   every value is NaN, so that the next embedding lookup stays in bounds). */
extern "C" __global__ void argmax_rows(int* out, const T* x, int cols) {
    __shared__ float rv[32];
    __shared__ int ri[32];
    const T* p = x + (long long)blockIdx.x * cols;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = to_f(p[j]);
        if (v > best || (v == best && j < bi)) { best = v; bi = j; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, best, o);
        int wi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (w > best || (w == best && wi < bi)) { best = w; bi = wi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) { rv[warp] = best; ri[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        best = lane < nw ? rv[lane] : NEG_INF;
        bi = lane < nw ? ri[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float w = __shfl_xor_sync(0xffffffffu, best, o);
            int wi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (w > best || (w == best && wi < bi)) { best = w; bi = wi; }
        }
        if (lane == 0) out[blockIdx.x] = bi < cols ? bi : 0;
    }
}
"#;

/// The kernels of [`GENERATE`], in the order the engine loads them.
pub const GENERATE_KERNELS: [&str; 8] = [
    "init_uniform",
    "embed",
    "rms_norm",
    "rope",
    "kv_append",
    "softmax_causal",
    "swiglu",
    "argmax_rows",
];

/// Threads per block for kernels that give one block to a row of `cols` elements: a warp
/// multiple (the reductions shuffle whole warps) between 32 and 1024.
pub fn row_threads(cols: usize) -> u32 {
    (cols.clamp(32, 1024) as u32).div_ceil(32) * 32
}

/// Threads per block of the grid-stride elementwise kernels.
pub const ELEMENTWISE_THREADS: u32 = 256;

/// Blocks for `n` elements at `threads` per block; the kernels loop (grid-stride), so the grid
/// is capped at 65 536 blocks and is never empty.
pub fn elementwise_blocks(n: u64, threads: u32) -> u32 {
    n.div_ceil(threads as u64).clamp(1, 1 << 16) as u32
}

/// The Rust twin of the kernels' `hash_uniform` (same bits): tests check its distribution.
pub fn hash_uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let k = (z >> 40) as i64;
    (2 * k + 1 - (1 << 24)) as f32 * (1.0 / 16_777_216.0)
}

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
    module(rt, gpu_index, dtype, "softmax", &format!("{PRELUDE}{SOFTMAX}"))
}

/// The token-generation module ([`GENERATE`] with the softmax's helpers) for a GPU and dtype.
pub fn generate_module(
    rt: &mut Runtime,
    gpu_index: usize,
    dtype: Dtype,
) -> Result<Arc<CudaModule>, CaseError> {
    module(
        rt,
        gpu_index,
        dtype,
        "generate",
        &format!("{PRELUDE}{SOFTMAX}{GENERATE}"),
    )
}

/// Compiles `src` for a GPU and dtype once per worker and loads it.
fn module(
    rt: &mut Runtime,
    gpu_index: usize,
    dtype: Dtype,
    name: &str,
    src: &str,
) -> Result<Arc<CudaModule>, CaseError> {
    let kind = t_kind(dtype).ok_or_else(|| CaseError::skipped(format!("no {name} kernels for {dtype}")))?;
    let key = (gpu_index, format!("{name}-{kind}"));
    if let Some(m) = rt.kernels.get(&key) {
        return Ok(m.clone());
    }
    let nvrtc = rt.nvrtc()?;
    let gpu: &Gpu = &rt.gpus[gpu_index];
    let ptx = compile_ptx(&nvrtc, src, &format!("{name}.cu"), &nvrtc_options(gpu.cc, kind))?;
    let module = gpu
        .ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| anyhow!("failed to load the NVRTC {name} PTX on GPU {}: {e}", gpu.ordinal))?;
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

    #[test]
    fn generate_kernels_are_exported_and_self_contained() {
        let src = format!("{PRELUDE}{SOFTMAX}{GENERATE}");
        assert!(!src.contains("#include"));
        for k in GENERATE_KERNELS {
            let decl = format!("extern \"C\" __global__ void {k}(");
            assert_eq!(src.matches(&decl).count(), 1, "{k}");
        }
        // Balanced delimiters: a cheap guard against a truncated edit of the sources.
        for (open, close) in [('{', '}'), ('(', ')'), ('[', ']')] {
            assert_eq!(
                GENERATE.matches(open).count(),
                GENERATE.matches(close).count(),
                "{open}{close}"
            );
        }
        // Helpers used by the generation kernels exist before them.
        assert!(src.find("float block_reduce(").unwrap() < src.find("void rms_norm(").unwrap());
        assert!(
            !GENERATE.contains("__sinf") && !GENERATE.contains("sinf("),
            "rope uses host tables"
        );
    }

    #[test]
    fn launch_arithmetic() {
        assert_eq!(row_threads(1), 32);
        assert_eq!(row_threads(33), 64);
        assert_eq!(row_threads(4096), 1024);
        assert_eq!(row_threads(128_256), 1024);
        assert_eq!(row_threads(100) % 32, 0);
        assert_eq!(elementwise_blocks(0, 256), 1);
        assert_eq!(elementwise_blocks(256, 256), 1);
        assert_eq!(elementwise_blocks(257, 256), 2);
        // llama-3-8b's embedding (525M elements) is covered by the grid-stride loop.
        assert_eq!(elementwise_blocks(128_256 * 4096, 256), 1 << 16);
    }

    #[test]
    fn hash_uniform_is_uniform_and_never_zero() {
        let n = 200_000u64;
        let v: Vec<f64> = (0..n).map(|i| hash_uniform(42, i) as f64).collect();
        assert!(v.iter().all(|x| *x != 0.0 && x.abs() < 1.0));
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "{var}");
        // Seeds give different streams.
        assert_ne!(hash_uniform(1, 0), hash_uniform(2, 0));
    }

    /// NVRTC needs no GPU: where the library is found (an image, CI with the NVRTC wheel on
    /// `LD_LIBRARY_PATH`), every module compiles for every element type and exports its kernels.
    #[test]
    fn kernels_compile_with_nvrtc_when_present() {
        let nvrtc = match Nvrtc::load(&super::super::loader::LIBNVRTC) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        for kind in 0..3 {
            for cc in [(8, 0), (9, 0)] {
                let opts = nvrtc_options(cc, kind);
                let ptx = compile_ptx(
                    &nvrtc,
                    &format!("{PRELUDE}{SOFTMAX}{GENERATE}"),
                    "generate.cu",
                    &opts,
                )
                .unwrap_or_else(|e| panic!("T_KIND={kind} cc {cc:?}: {e:#}"));
                for k in GENERATE_KERNELS.iter().chain(["softmax_rows"].iter()) {
                    assert!(
                        ptx.contains(&format!(".entry {k}(")),
                        "T_KIND={kind}: no {k} in the PTX"
                    );
                }
            }
        }
        // A broken source reports NVRTC's log.
        let e = compile_ptx(
            &nvrtc,
            "extern \"C\" __global__ void f() { undefined_name; }",
            "bad.cu",
            &nvrtc_options((8, 0), 0),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("undefined_name"), "{e}");
    }
}
