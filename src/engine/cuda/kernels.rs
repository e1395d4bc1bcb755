//! CUDA C kernels compiled at run time with the image's NVRTC to a cubin for the GPU's own
//! `sm_XY` and loaded through the driver. The sources include no headers, so they compile with
//! any NVRTC (12 or 13) without an include path: fp16 converts through PTX `cvt`, bf16 through
//! bit operations.
//!
//! Why a cubin and not PTX: the driver must understand the PTX ISA version the image's NVRTC
//! emits (NVRTC 12.8 writes PTX 8.7, 13.2 writes 9.2), and images are routinely newer than the
//! host driver. CUDA's minor-version compatibility covers cubins (and cuBLAS), not PTX JIT, so a
//! PTX module from a newer toolkit fails with `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`. PTX is used
//! only when this NVRTC cannot write machine code for the GPU at all (a GPU newer than the
//! toolkit), where the driver is necessarily the newer side and can JIT it.

use std::ffi::{c_char, c_int, CString};
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

/// Row softmax of attention scores in place over the first `cols` entries of rows `ld` apart,
/// one block per row, fp32 arithmetic. Row `r` is query `r % seq_q`; with `causal`, key `j` is
/// masked when `j > q + offset` (offset = seq_kv − seq_q: the mask is aligned to the bottom
/// right, as FlashAttention and torch SDPA align it) and masked probabilities are written as 0.
/// Attention (`ld = cols`) and token generation (`ld` = the KV cache length, causal) share it.
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

extern "C" __global__ void softmax_rows(T* s, int rows, int cols, int ld, int seq_q, int offset, int causal) {
    __shared__ float red[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    T* p = s + (long long)row * ld;
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

/// The kernels of the generate module ([`SOFTMAX`]'s `softmax_rows` and [`GENERATE`]), in the
/// order the engine loads them.
pub const GENERATE_KERNELS: [&str; 8] = [
    "init_uniform",
    "embed",
    "rms_norm",
    "rope",
    "kv_append",
    "softmax_rows",
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

/// What NVRTC is asked to write for a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Machine code for `sm_XY` (`XY` = 10·major + minor): loads on that GPU whatever the
    /// driver's own PTX support, which is what minor-version compatibility promises.
    Cubin(u32),
    /// PTX for `compute_XY`, JIT-compiled by the driver: only for a GPU newer than every arch
    /// this NVRTC knows, where the driver is necessarily the newer side.
    Ptx(u32),
}

impl Target {
    /// The `--gpu-architecture` value.
    pub fn arch_flag(self) -> String {
        match self {
            Target::Cubin(a) => format!("sm_{a}"),
            Target::Ptx(a) => format!("compute_{a}"),
        }
    }
}

/// The compile target for a GPU of compute capability `cc`, given the archs this NVRTC lists
/// (`nvrtcGetSupportedArchs`: 75, 80, 86, 87, 89, 90, 100, ... as plain numbers).
///
/// - the GPU's own `sm_XY` when NVRTC supports it. Plain `sm_90`, never `sm_90a`: no kernel
///   here uses arch-specific instructions (wgmma, setmaxnreg), and an `a` cubin runs on that
///   exact chip only;
/// - else the newest supported arch of the same major not above the GPU's (a cubin runs on
///   later minors of its major: `sm_80` code runs on an 8.6 GPU);
/// - else, when the GPU is newer than every supported arch, PTX for the newest one;
/// - else `None`: the GPU is older than anything this NVRTC can target (NVRTC 13 dropped
///   everything before Turing).
pub fn choose_target(cc: (i32, i32), supported: &[u32]) -> Option<Target> {
    let dev = (cc.0.max(0) * 10 + cc.1.max(0)) as u32;
    if supported.contains(&dev) {
        return Some(Target::Cubin(dev));
    }
    if let Some(&same_major) = supported
        .iter()
        .filter(|&&a| a / 10 == dev / 10 && a <= dev)
        .max()
    {
        return Some(Target::Cubin(same_major));
    }
    match supported.iter().max() {
        Some(&newest) if newest < dev => Some(Target::Ptx(newest)),
        _ => None,
    }
}

/// NVRTC options for a target and element type.
pub fn nvrtc_options(target: Target, t_kind: u32) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", target.arch_flag()),
        format!("-DT_KIND={t_kind}"),
        "--use_fast_math".into(),
    ]
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version(nvrtc: &Nvrtc) -> (i32, i32) {
    let (mut a, mut b) = (0, 0);
    // SAFETY: out pointers to locals.
    unsafe { (nvrtc.nvrtcVersion)(&mut a, &mut b) };
    (a, b)
}

/// The `sm_XY` numbers this NVRTC can compile for.
pub fn supported_archs(nvrtc: &Nvrtc) -> anyhow::Result<Vec<u32>> {
    let mut n: c_int = 0;
    // SAFETY: out pointer; then a buffer of the size NVRTC gave.
    let rc = unsafe { (nvrtc.nvrtcGetNumSupportedArchs)(&mut n) };
    if rc != NVRTC_SUCCESS || n <= 0 {
        return Err(anyhow!("nvrtcGetNumSupportedArchs failed (status {rc})"));
    }
    let mut v = vec![0 as c_int; n as usize];
    let rc = unsafe { (nvrtc.nvrtcGetSupportedArchs)(v.as_mut_ptr()) };
    if rc != NVRTC_SUCCESS {
        return Err(anyhow!("nvrtcGetSupportedArchs failed (status {rc})"));
    }
    Ok(v.into_iter().filter(|a| *a > 0).map(|a| a as u32).collect())
}

/// What NVRTC produced: a cubin (ELF) or PTX text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiled {
    Cubin(Vec<u8>),
    Ptx(String),
}

/// The 4 bytes every ELF file, hence every cubin, starts with.
pub const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Compiles `src` with NVRTC for `target`; the error carries NVRTC's log.
pub fn compile(
    nvrtc: &Nvrtc,
    src: &str,
    name: &str,
    target: Target,
    t_kind: u32,
) -> anyhow::Result<Compiled> {
    let options = nvrtc_options(target, t_kind);
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
    // One reader for both outputs: size, then a buffer of that size.
    let read = |size: unsafe extern "C" fn(ffi::Handle, *mut usize) -> c_int,
                get: unsafe extern "C" fn(ffi::Handle, *mut c_char) -> c_int,
                what: &str|
     -> anyhow::Result<Vec<u8>> {
        let mut n = 0usize;
        // SAFETY: prog is valid until destroyed below; the buffer is sized as NVRTC says.
        let rc = unsafe { size(prog, &mut n) };
        if rc != NVRTC_SUCCESS {
            return Err(anyhow!("{what} size failed for {name}: {}", err(rc)));
        }
        let mut buf = vec![0u8; n];
        let rc = unsafe { get(prog, buf.as_mut_ptr() as *mut c_char) };
        if rc != NVRTC_SUCCESS {
            return Err(anyhow!("{what} failed for {name}: {}", err(rc)));
        }
        Ok(buf)
    };
    let result = (|| {
        // SAFETY: prog is valid until destroyed below.
        let rc = unsafe { (nvrtc.nvrtcCompileProgram)(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
        if rc != NVRTC_SUCCESS {
            let log = read(
                nvrtc.nvrtcGetProgramLogSize,
                nvrtc.nvrtcGetProgramLog,
                "nvrtcGetProgramLog",
            )
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches('\0')
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
            return Err(anyhow!("NVRTC failed to compile {name} ({}): {log}", err(rc)));
        }
        Ok(match target {
            Target::Cubin(_) => Compiled::Cubin(read(
                nvrtc.nvrtcGetCUBINSize,
                nvrtc.nvrtcGetCUBIN,
                "nvrtcGetCUBIN",
            )?),
            Target::Ptx(_) => {
                let b = read(nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX, "nvrtcGetPTX")?;
                Compiled::Ptx(String::from_utf8_lossy(&b).trim_end_matches('\0').to_string())
            }
        })
    })();
    // SAFETY: destroys the program created above.
    unsafe { (nvrtc.nvrtcDestroyProgram)(&mut prog) };
    result
}

/// The skip reason for a module the driver would not load: the versions that decide it.
pub fn load_skip_reason(name: &str, target: Target, nvrtc: (i32, i32), driver_cuda: i32, e: &str) -> String {
    format!(
        "the driver (CUDA {}) could not load the {name} kernels NVRTC {}.{} built for {}: {e}",
        super::cuda_version_string(driver_cuda),
        nvrtc.0,
        nvrtc.1,
        target.arch_flag()
    )
}

/// A one-thread kernel that keeps the stream busy for `ns` nanoseconds of the GPU's global timer:
/// queued before a timed sample's start event, it holds the GPU while the host enqueues the
/// sample's calls, so that the start event fires with the whole batch already waiting and the
/// sample measures back-to-back GPU work, not launch latency (nvbench's method, with a timed
/// spin in place of its host-released flag: it can never deadlock on a full launch queue).
pub const SPIN: &str = r#"
extern "C" __global__ void spin_ns(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}
"#;

/// The spin module ([`SPIN`]) for a GPU, compiled once per worker.
pub fn spin_module(rt: &mut Runtime, gpu_index: usize) -> Result<Arc<CudaModule>, CaseError> {
    module(rt, gpu_index, Dtype::Fp32, "spin", SPIN)
}

/// The spin kernel of a GPU, or why there is none (no NVRTC, a load failure): the caller then
/// times samples with the start event on an idle GPU and says so.
pub fn spin(rt: &mut Runtime, gpu_index: usize) -> Result<super::device::Spin, String> {
    let module = spin_module(rt, gpu_index).map_err(|e| e.to_string())?;
    module
        .load_function("spin_ns")
        .map(super::device::Spin::new)
        .map_err(|e| format!("spin_ns missing from the NVRTC module: {e}"))
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
    // Keyed by ordinal: the runtime's GPU list is the current case's, not a fixed one.
    let key = (rt.gpus[gpu_index].ordinal, format!("{name}-{kind}"));
    if let Some(m) = rt.kernels.get(&key) {
        return Ok(m.clone());
    }
    let nvrtc = rt.nvrtc()?;
    let gpu: &Gpu = &rt.gpus[gpu_index];
    let version = nvrtc_version(&nvrtc);
    let archs = supported_archs(&nvrtc)?;
    let target = choose_target(gpu.cc, &archs).ok_or_else(|| {
        CaseError::skipped(format!(
            "NVRTC {}.{} cannot compile for compute capability {}.{} of GPU {} (it supports sm_{})",
            version.0,
            version.1,
            gpu.cc.0,
            gpu.cc.1,
            gpu.ordinal,
            archs.iter().map(u32::to_string).collect::<Vec<_>>().join(", sm_")
        ))
    })?;
    let image = match compile(&nvrtc, src, &format!("{name}.cu"), target, kind)? {
        Compiled::Cubin(b) => cudarc::nvrtc::Ptx::from_binary(b),
        Compiled::Ptx(p) => cudarc::nvrtc::Ptx::from_src(p),
    };
    let module = gpu.ctx.load_module(image).map_err(|e| {
        CaseError::skipped(load_skip_reason(
            name,
            target,
            version,
            rt.driver_cuda_version,
            &e.to_string(),
        ))
    })?;
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
        let o = nvrtc_options(Target::Cubin(90), 2);
        assert_eq!(o[0], "--gpu-architecture=sm_90");
        assert_eq!(o[1], "-DT_KIND=2");
        assert_eq!(
            nvrtc_options(Target::Ptx(120), 0)[0],
            "--gpu-architecture=compute_120"
        );
        assert_eq!(t_kind(Dtype::Fp8), None);
        assert_eq!(t_kind(Dtype::Bf16), Some(2));
    }

    /// NVRTC 12.8's and 13.2's `nvrtcGetSupportedArchs` lists.
    const NVRTC_12_8: [u32; 15] = [50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100];
    const NVRTC_13_2: [u32; 10] = [75, 80, 86, 87, 88, 89, 90, 100, 110, 120];

    #[test]
    fn target_is_the_gpus_own_sm() {
        // H100 / H200: plain sm_90 (no kernel needs sm_90a's wgmma / setmaxnreg).
        assert_eq!(choose_target((9, 0), &NVRTC_12_8), Some(Target::Cubin(90)));
        assert_eq!(choose_target((9, 0), &NVRTC_13_2), Some(Target::Cubin(90)));
        assert_eq!(choose_target((8, 0), &NVRTC_13_2), Some(Target::Cubin(80)));
        assert_eq!(choose_target((8, 9), &NVRTC_12_8), Some(Target::Cubin(89)));
    }

    #[test]
    fn target_falls_back_within_the_major() {
        // An 8.6 GPU with an NVRTC that lists only 8.0 of that major: sm_80 code runs on 8.6.
        assert_eq!(choose_target((8, 6), &[75, 80, 90]), Some(Target::Cubin(80)));
        // Never a newer minor of the same major than the GPU (sm_87 code does not run on 8.6).
        assert_eq!(choose_target((8, 6), &[75, 80, 87, 90]), Some(Target::Cubin(80)));
    }

    #[test]
    fn gpu_newer_than_nvrtc_gets_ptx_and_older_gets_none() {
        // Blackwell (12.0) with NVRTC 12.8, whose newest is sm_100: cubins do not cross majors, so
        // PTX for compute_100, which the (necessarily newer) driver JIT-compiles.
        assert_eq!(choose_target((12, 0), &NVRTC_12_8), Some(Target::Ptx(100)));
        // Pascal (6.0) with NVRTC 13, which starts at Turing: nothing to compile for.
        assert_eq!(choose_target((6, 0), &NVRTC_13_2), None);
        assert_eq!(choose_target((9, 0), &[]), None);
    }

    #[test]
    fn load_failure_names_both_versions() {
        let r = load_skip_reason(
            "softmax",
            Target::Cubin(90),
            (13, 2),
            12080,
            "CUDA_ERROR_NO_BINARY_FOR_GPU",
        );
        assert!(r.contains("CUDA 12.8"), "{r}");
        assert!(r.contains("NVRTC 13.2"), "{r}");
        assert!(r.contains("sm_90"), "{r}");
        assert!(r.contains("CUDA_ERROR_NO_BINARY_FOR_GPU"), "{r}");
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

    /// Where the tests find a libnvrtc: `TAGBENCH_NVRTC` (a file), else the library search the
    /// engine does, else the `nvidia/*/lib` folders of `TAGBENCH_PYTHON`'s site-packages (the
    /// torch venv that `scripts/test` installs ships NVRTC in its CUDA wheels).
    fn find_nvrtc() -> Result<Nvrtc, String> {
        use super::super::loader::{self, LIBNVRTC};
        if let Some(p) = std::env::var_os("TAGBENCH_NVRTC") {
            return Nvrtc::load_path(std::path::Path::new(&p), "NVRTC").map_err(|e| e.to_string());
        }
        let searched = match Nvrtc::load(&LIBNVRTC) {
            Ok(n) => return Ok(n),
            Err(e) => e.to_string(),
        };
        let Some(python) = std::env::var_os("TAGBENCH_PYTHON") else {
            return Err(format!(
                "{searched}; TAGBENCH_PYTHON and TAGBENCH_NVRTC are unset"
            ));
        };
        let out = std::process::Command::new(&python)
            .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
            .output()
            .map_err(|e| format!("failed to run {python:?}: {e}"))?;
        let site = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let nv = site.join("nvidia");
        let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&nv)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("lib")).collect())
            .unwrap_or_default();
        dirs.sort();
        match loader::find_in_dirs(&LIBNVRTC, &dirs) {
            Some(p) => Nvrtc::load_path(&p, "NVRTC").map_err(|e| e.to_string()),
            None => Err(format!("{searched}; none under {}", nv.display())),
        }
    }

    /// NVRTC needs no GPU: every module compiles for every element type to a non-empty ELF
    /// cubin for sm_80 and sm_90, and to PTX that exports every kernel.
    #[test]
    fn kernels_compile_to_cubin_with_nvrtc() {
        let nvrtc = match find_nvrtc() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("skipped: no libnvrtc found: {e}");
                return;
            }
        };
        let version = nvrtc_version(&nvrtc);
        let archs = supported_archs(&nvrtc).unwrap();
        assert!(
            archs.contains(&80) && archs.contains(&90),
            "{version:?} lists {archs:?}"
        );
        let modules = [
            ("softmax", format!("{PRELUDE}{SOFTMAX}"), &["softmax_rows"][..]),
            (
                "generate",
                format!("{PRELUDE}{SOFTMAX}{GENERATE}"),
                &GENERATE_KERNELS[..],
            ),
            ("spin", SPIN.to_string(), &["spin_ns"][..]),
        ];
        for (name, src, entries) in &modules {
            for kind in 0..3 {
                for sm in [80, 90] {
                    let target = choose_target((sm as i32 / 10, sm as i32 % 10), &archs).unwrap();
                    assert_eq!(target, Target::Cubin(sm));
                    let Compiled::Cubin(bin) = compile(&nvrtc, src, name, target, kind)
                        .unwrap_or_else(|e| panic!("{name} T_KIND={kind} sm_{sm}: {e:#}"))
                    else {
                        panic!("{name}: a cubin target gave PTX");
                    };
                    assert!(
                        bin.len() > 1024,
                        "{name} T_KIND={kind} sm_{sm}: {} bytes",
                        bin.len()
                    );
                    assert_eq!(bin[..4], ELF_MAGIC, "{name} T_KIND={kind} sm_{sm}");
                    for k in entries.iter() {
                        // The cubin's symbol table names every exported kernel.
                        assert!(
                            bin.windows(k.len()).any(|w| w == k.as_bytes()),
                            "{name} T_KIND={kind} sm_{sm}: no {k} in the cubin"
                        );
                    }
                }
                let Compiled::Ptx(ptx) = compile(&nvrtc, src, name, Target::Ptx(80), kind).unwrap() else {
                    panic!("{name}: a PTX target gave a cubin");
                };
                for k in entries.iter() {
                    assert!(
                        ptx.contains(&format!(".entry {k}(")),
                        "{name} T_KIND={kind}: no {k} in the PTX"
                    );
                }
            }
        }
        // A broken source reports NVRTC's log.
        let e = compile(
            &nvrtc,
            "extern \"C\" __global__ void f() { undefined_name; }",
            "bad.cu",
            Target::Cubin(80),
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("undefined_name"), "{e}");
        eprintln!(
            "NVRTC {}.{}: every kernel compiled to cubin for sm_80 and sm_90",
            version.0, version.1
        );
    }
}
