//! GEMM on CUDA: cuBLAS `cublasGemmEx` for fp32, tf32, fp16 and bf16 (fp32 accumulation), and
//! cuBLASLt for fp8 e4m3 (compute capability 8.9+). Random inputs, CUDA events, input sets
//! rotated past L2, and a check of every dtype against a float64 host reference first.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use anyhow::anyhow;

use super::device::{self, rel_error, DeviceBuf, Gpu};
use super::ffi::{self, Cublas, CublasLt};
use super::Runtime;
use crate::case::{Case, Dtype};
use crate::engine::CaseOutput;
use crate::error::CaseError;
use crate::workload::gemm::{GemmParams, Layout};
use crate::workload::metric;

/// cuBLAS types of one dtype: A/B storage, C/D storage, compute type, and whether cuBLASLt
/// (fp8) is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmTypes {
    pub ab: c_int,
    pub c: c_int,
    pub compute: c_int,
    pub lt: bool,
}

/// fp16 and bf16 accumulate in fp32 (what torch.matmul does by default); tf32 is fp32 storage
/// with CUBLAS_COMPUTE_32F_FAST_TF32; fp8 writes bf16.
pub fn gemm_types(d: Dtype) -> GemmTypes {
    use ffi::*;
    match d {
        Dtype::Fp32 => GemmTypes {
            ab: CUDA_R_32F,
            c: CUDA_R_32F,
            compute: CUBLAS_COMPUTE_32F,
            lt: false,
        },
        Dtype::Tf32 => GemmTypes {
            ab: CUDA_R_32F,
            c: CUDA_R_32F,
            compute: CUBLAS_COMPUTE_32F_FAST_TF32,
            lt: false,
        },
        Dtype::Fp16 => GemmTypes {
            ab: CUDA_R_16F,
            c: CUDA_R_16F,
            compute: CUBLAS_COMPUTE_32F,
            lt: false,
        },
        Dtype::Bf16 => GemmTypes {
            ab: CUDA_R_16BF,
            c: CUDA_R_16BF,
            compute: CUBLAS_COMPUTE_32F,
            lt: false,
        },
        Dtype::Fp8 => GemmTypes {
            ab: CUDA_R_8F_E4M3,
            c: CUDA_R_16BF,
            compute: CUBLAS_COMPUTE_32F,
            lt: true,
        },
    }
}

/// The dtype C is stored in.
pub fn output_dtype(d: Dtype) -> Dtype {
    match d {
        Dtype::Fp8 => Dtype::Bf16,
        other => other,
    }
}

/// fp8 tensor-core GEMM exists from Ada (8.9) and Hopper (9.0) on.
pub fn fp8_supported(cc: (i32, i32)) -> bool {
    cc >= (8, 9)
}

/// Column-major cuBLAS arguments for the row-major problem C[m×n] = op(A)·op(B): cuBLAS computes
/// Cᵀ = op(B)ᵀ·op(A)ᵀ, so the B buffer is cuBLAS's first operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColMajor {
    pub op_first: c_int,
    pub op_second: c_int,
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub ld_first: i64,
    pub ld_second: i64,
    pub ldc: i64,
}

pub fn col_major(layout: Layout, m: u64, n: u64, k: u64) -> ColMajor {
    let (m, n, k) = (m as i64, n as i64, k as i64);
    // B stored k×n (row-major) is Bᵀ column-major: no transpose. Stored n×k: transpose.
    let b_t = matches!(layout, Layout::Nt | Layout::Tt);
    // A stored m×k is Aᵀ column-major: no transpose. Stored k×m: transpose.
    let a_t = matches!(layout, Layout::Tn | Layout::Tt);
    ColMajor {
        op_first: if b_t { ffi::CUBLAS_OP_T } else { ffi::CUBLAS_OP_N },
        op_second: if a_t { ffi::CUBLAS_OP_T } else { ffi::CUBLAS_OP_N },
        m: n,
        n: m,
        k,
        ld_first: if b_t { k } else { n },
        ld_second: if a_t { m } else { k },
        ldc: n,
    }
}

/// Row-major reference C = op(A)·op(B) in float64 from the stored values.
pub fn reference(layout: Layout, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
    let a_t = matches!(layout, Layout::Tn | Layout::Tt);
    let b_t = matches!(layout, Layout::Nt | Layout::Tt);
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for l in 0..k {
                let av = if a_t { a[l * m + i] } else { a[i * k + l] };
                let bv = if b_t { b[j * k + l] } else { b[l * n + j] };
                s += av as f64 * bv as f64;
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// Largest acceptable ‖C − ref‖/‖ref‖ for a dtype (METHOD.md: fp32 far under 1e-3, tf32 near
/// 3e-4, bf16 between 1e-3 and 1e-2; fp8 inputs are exact in the reference, its bf16 output
/// rounds like bf16).
pub fn tolerance(d: Dtype) -> f64 {
    match d {
        Dtype::Fp32 => 1e-5,
        Dtype::Tf32 => 2e-3,
        Dtype::Fp16 => 5e-3,
        Dtype::Bf16 | Dtype::Fp8 => 2e-2,
    }
}

/// One GEMM problem on one GPU, ready to launch.
struct Problem<'a> {
    gpu: &'a Gpu,
    types: GemmTypes,
    cm: ColMajor,
    blas: Blas,
}

enum Blas {
    Cublas { lib: Arc<Cublas>, handle: ffi::Handle },
    Lt(Box<LtPlan>),
}

/// A cuBLASLt fp8 matmul: descriptors, the heuristic's candidate algorithms (best first), the
/// one in use and the workspace. The heuristic's first answer is not guaranteed to run (the
/// cuBLASLt samples say so: "request more algos and try to run them one by one"), so a launch
/// that gets `CUBLAS_STATUS_NOT_SUPPORTED` moves on to the next candidate, once, before timing.
struct LtPlan {
    lib: Arc<CublasLt>,
    handle: ffi::Handle,
    desc: ffi::Handle,
    layouts: [ffi::Handle; 3],
    algos: Vec<ffi::LtHeuristic>,
    chosen: std::cell::Cell<usize>,
    workspace: DeviceBuf,
    // Per-tensor scales (1.0) that fp8 matmuls require, each its own allocation (aligned as
    // cudaMalloc aligns), kept alive for the descriptor. With B's scale 4 bytes after A's in
    // one buffer, every fp8 matmul failed with CUBLAS_STATUS_NOT_SUPPORTED on an H100
    // (cuBLASLt 13.1, driver 580; docs/gpu-validation.md).
    _scales: [DeviceBuf; 2],
}

/// How many candidate algorithms the fp8 plan asks the heuristic for.
const LT_CANDIDATES: usize = 8;

/// The alignment of a device address in bytes: the largest power of two dividing it, up to 256
/// (cuBLASLt's heuristic assumes 256 unless told otherwise).
pub fn address_alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        1u32 << ptr.trailing_zeros().min(8)
    }
}

/// The smallest alignment among addresses (256 for none).
pub fn min_alignment(ptrs: impl IntoIterator<Item = u64>) -> u32 {
    ptrs.into_iter().map(address_alignment).min().unwrap_or(256)
}

/// The index of the candidate to try after `tried` failed with `rc`: the next one when the
/// library said NOT_SUPPORTED (that algorithm cannot take these operands), none otherwise.
pub fn next_candidate(tried: usize, rc: c_int, candidates: usize) -> Option<usize> {
    (rc == ffi::CUBLAS_STATUS_NOT_SUPPORTED && tried + 1 < candidates).then_some(tried + 1)
}

impl Drop for Problem<'_> {
    fn drop(&mut self) {
        // SAFETY: destroys what `Problem::new` created, once.
        unsafe {
            match &self.blas {
                Blas::Cublas { lib, handle } => {
                    (lib.cublasDestroy_v2)(*handle);
                }
                Blas::Lt(p) => {
                    for l in p.layouts {
                        (p.lib.cublasLtMatrixLayoutDestroy)(l);
                    }
                    (p.lib.cublasLtMatmulDescDestroy)(p.desc);
                    (p.lib.cublasLtDestroy)(p.handle);
                }
            }
        }
    }
}

/// A cuBLAS status as a result naming the call.
pub(super) fn blas_check(rc: c_int, what: &str) -> anyhow::Result<()> {
    if rc == ffi::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(anyhow!("{what} failed with cuBLAS status {rc}"))
    }
}

/// A cuBLAS handle on the GPU's stream with the default math mode; the caller owns it and
/// destroys it in its Drop. The GPU's context must be bound to this thread.
pub(super) fn cublas_handle(lib: &Cublas, gpu: &Gpu) -> anyhow::Result<ffi::Handle> {
    let mut handle: ffi::Handle = std::ptr::null_mut();
    // SAFETY: out pointer; a handle whose setup fails is destroyed here.
    unsafe {
        blas_check((lib.cublasCreate_v2)(&mut handle), "cublasCreate")?;
        let r = blas_check(
            (lib.cublasSetStream_v2)(handle, gpu.stream_ptr()),
            "cublasSetStream",
        )
        .and_then(|_| {
            blas_check(
                (lib.cublasSetMathMode)(handle, ffi::CUBLAS_DEFAULT_MATH),
                "cublasSetMathMode",
            )
        });
        if let Err(e) = r {
            (lib.cublasDestroy_v2)(handle);
            return Err(e);
        }
    }
    Ok(handle)
}

/// The BLAS library a dtype needs, opened once per worker.
#[derive(Clone)]
enum Libs {
    Cublas(Arc<Cublas>),
    Lt(Arc<CublasLt>),
}

fn libs(rt: &mut Runtime, dtype: Dtype) -> Result<Libs, CaseError> {
    Ok(if gemm_types(dtype).lt {
        Libs::Lt(rt.cublaslt()?)
    } else {
        Libs::Cublas(rt.cublas()?)
    })
}

impl<'a> Problem<'a> {
    /// `fast_accum` and `align` (the smallest alignment of the operands it will be launched on)
    /// apply to the cuBLASLt (fp8) path only.
    fn new(
        libs: &Libs,
        gpu: &'a Gpu,
        dtype: Dtype,
        cm: ColMajor,
        fast_accum: bool,
        align: u32,
    ) -> Result<Problem<'a>, CaseError> {
        let types = gemm_types(dtype);
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("failed to bind GPU {}: {e}", gpu.ordinal))?;
        let blas = match libs {
            Libs::Lt(lib) => Blas::Lt(Box::new(lt_plan(lib.clone(), gpu, types, cm, fast_accum, align)?)),
            Libs::Cublas(lib) => {
                let handle = cublas_handle(lib, gpu)?;
                Blas::Cublas {
                    lib: lib.clone(),
                    handle,
                }
            }
        };
        Ok(Problem { gpu, types, cm, blas })
    }

    /// Enqueues C = op(A)·op(B) on the GPU's stream.
    fn launch(&self, a: &DeviceBuf, b: &DeviceBuf, c: &DeviceBuf) -> anyhow::Result<()> {
        let one = 1.0f32;
        let zero = 0.0f32;
        let cm = &self.cm;
        // SAFETY: buffers are sized for the problem; scalars live across the call (host pointer
        // mode); cuBLAS enqueues on the stream set at creation.
        unsafe {
            match &self.blas {
                Blas::Cublas { lib, handle } => blas_check(
                    (lib.cublasGemmEx)(
                        *handle,
                        cm.op_first,
                        cm.op_second,
                        cm.m as c_int,
                        cm.n as c_int,
                        cm.k as c_int,
                        &one as *const f32 as *const c_void,
                        b.cptr(),
                        self.types.ab,
                        cm.ld_first as c_int,
                        a.cptr(),
                        self.types.ab,
                        cm.ld_second as c_int,
                        &zero as *const f32 as *const c_void,
                        c.mptr(),
                        self.types.c,
                        cm.ldc as c_int,
                        self.types.compute,
                        ffi::CUBLAS_GEMM_DEFAULT,
                    ),
                    "cublasGemmEx",
                ),
                Blas::Lt(p) => {
                    let mut i = p.chosen.get();
                    loop {
                        let rc = (p.lib.cublasLtMatmul)(
                            p.handle,
                            p.desc,
                            &one as *const f32 as *const c_void,
                            b.cptr(),
                            p.layouts[0],
                            a.cptr(),
                            p.layouts[1],
                            &zero as *const f32 as *const c_void,
                            c.cptr(),
                            p.layouts[2],
                            c.mptr(),
                            p.layouts[2],
                            &p.algos[i],
                            p.workspace.mptr(),
                            p.workspace.len(),
                            self.gpu.stream_ptr(),
                        );
                        if rc == ffi::CUBLAS_STATUS_SUCCESS {
                            p.chosen.set(i);
                            return Ok(());
                        }
                        match next_candidate(i, rc, p.algos.len()) {
                            Some(next) => i = next,
                            None => {
                                return Err(anyhow!(
                                    "cublasLtMatmul failed with cuBLAS status {rc} (candidate {} of {} the heuristic offered; operand alignment A {} B {} C {} bytes, workspace {} bytes at alignment {})",
                                    i + 1,
                                    p.algos.len(),
                                    address_alignment(a.ptr),
                                    address_alignment(b.ptr),
                                    address_alignment(c.ptr),
                                    p.workspace.len(),
                                    address_alignment(p.workspace.ptr)
                                ))
                            }
                        }
                    }
                }
            }
        }
    }

    /// For the fp8 plan: the candidate algorithm in use (1-based) and how many were offered.
    fn lt_choice(&self) -> Option<(usize, usize)> {
        match &self.blas {
            Blas::Lt(p) => Some((p.chosen.get() + 1, p.algos.len())),
            Blas::Cublas { .. } => None,
        }
    }
}

/// Builds the cuBLASLt fp8 plan: TN column-major operands (the only form cuBLASLt's fp8
/// kernels take), unit scales, bf16 output, fast accumulation as asked, the heuristic's first
/// algorithm (chosen after the attributes are set: fast accumulation changes the candidates).
fn lt_plan(
    lib: Arc<CublasLt>,
    gpu: &Gpu,
    types: GemmTypes,
    cm: ColMajor,
    fast_accum: bool,
    align: u32,
) -> Result<LtPlan, CaseError> {
    const WORKSPACE: usize = 32 << 20;
    gpu.ctx
        .bind_to_thread()
        .map_err(|e| anyhow!("failed to bind GPU {}: {e}", gpu.ordinal))?;
    let workspace = gpu.filled(WORKSPACE, 0)?;
    let scales = [
        gpu.upload(&1.0f32.to_le_bytes())?,
        gpu.upload(&1.0f32.to_le_bytes())?,
    ];
    let mut handle: ffi::Handle = std::ptr::null_mut();
    let mut desc: ffi::Handle = std::ptr::null_mut();
    let mut layouts = [std::ptr::null_mut(); 3];
    // SAFETY: out pointers; attribute buffers sized as passed; destroyed in Problem's Drop (or
    // below on failure).
    unsafe {
        blas_check((lib.cublasLtCreate)(&mut handle), "cublasLtCreate")?;
        let r = (|| -> anyhow::Result<Vec<ffi::LtHeuristic>> {
            blas_check(
                (lib.cublasLtMatmulDescCreate)(&mut desc, types.compute, ffi::CUDA_R_32F),
                "cublasLtMatmulDescCreate",
            )?;
            let set = |attr: c_int, v: *const c_void, n: usize| {
                blas_check(
                    (lib.cublasLtMatmulDescSetAttribute)(desc, attr, v, n),
                    "cublasLtMatmulDescSetAttribute",
                )
            };
            let (ta, tb) = (cm.op_first, cm.op_second);
            set(
                ffi::CUBLASLT_MATMUL_DESC_TRANSA,
                &ta as *const c_int as *const c_void,
                4,
            )?;
            set(
                ffi::CUBLASLT_MATMUL_DESC_TRANSB,
                &tb as *const c_int as *const c_void,
                4,
            )?;
            let sa = scales[0].ptr;
            let sb = scales[1].ptr;
            set(
                ffi::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                &sa as *const u64 as *const c_void,
                8,
            )?;
            set(
                ffi::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                &sb as *const u64 as *const c_void,
                8,
            )?;
            // int8_t in cublasLt.h.
            let fa = fast_accum as i8;
            set(
                ffi::CUBLASLT_MATMUL_DESC_FAST_ACCUM,
                &fa as *const i8 as *const c_void,
                1,
            )?;
            // Stored shapes (column-major rows × cols): first operand is op_first^-1 of m×k.
            let (r0, c0) = if ta == ffi::CUBLAS_OP_T {
                (cm.k, cm.m)
            } else {
                (cm.m, cm.k)
            };
            let (r1, c1) = if tb == ffi::CUBLAS_OP_T {
                (cm.n, cm.k)
            } else {
                (cm.k, cm.n)
            };
            let mk = |l: &mut ffi::Handle, t: c_int, r: i64, c: i64, ld: i64| {
                blas_check(
                    (lib.cublasLtMatrixLayoutCreate)(l, t, r as u64, c as u64, ld),
                    "cublasLtMatrixLayoutCreate",
                )
            };
            mk(&mut layouts[0], types.ab, r0, c0, cm.ld_first)?;
            mk(&mut layouts[1], types.ab, r1, c1, cm.ld_second)?;
            mk(&mut layouts[2], types.c, cm.m, cm.n, cm.ldc)?;
            let mut pref: ffi::Handle = std::ptr::null_mut();
            blas_check(
                (lib.cublasLtMatmulPreferenceCreate)(&mut pref),
                "cublasLtMatmulPreferenceCreate",
            )?;
            let ws = WORKSPACE as u64;
            let set_pref = |attr: c_int, v: *const c_void, n: usize| {
                blas_check(
                    (lib.cublasLtMatmulPreferenceSetAttribute)(pref, attr, v, n),
                    "cublasLtMatmulPreferenceSetAttribute",
                )
            };
            // The operands' real alignment (the heuristic otherwise assumes 256 bytes and may
            // offer an algorithm the buffers cannot take).
            let mut r = set_pref(
                ffi::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            );
            for attr in [
                ffi::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                ffi::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                ffi::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                ffi::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                r = r.and_then(|_| set_pref(attr, &align as *const u32 as *const c_void, 4));
            }
            let mut heur: Vec<ffi::LtHeuristic> = vec![std::mem::zeroed(); LT_CANDIDATES];
            let mut found: c_int = 0;
            let r = r.and_then(|_| {
                blas_check(
                    (lib.cublasLtMatmulAlgoGetHeuristic)(
                        handle,
                        desc,
                        layouts[0],
                        layouts[1],
                        layouts[2],
                        layouts[2],
                        pref,
                        LT_CANDIDATES as c_int,
                        heur.as_mut_ptr(),
                        &mut found,
                    ),
                    "cublasLtMatmulAlgoGetHeuristic",
                )
            });
            (lib.cublasLtMatmulPreferenceDestroy)(pref);
            r?;
            heur.truncate(found.clamp(0, LT_CANDIDATES as c_int) as usize);
            heur.retain(|h| h.state == ffi::CUBLAS_STATUS_SUCCESS);
            if heur.is_empty() {
                return Err(anyhow!(
                    "cuBLASLt has no fp8 algorithm for this problem (operands aligned to {align} bytes)"
                ));
            }
            Ok(heur)
        })();
        match r {
            Ok(algos) => Ok(LtPlan {
                lib,
                handle,
                desc,
                layouts,
                algos,
                chosen: std::cell::Cell::new(0),
                workspace,
                _scales: scales,
            }),
            Err(e) => {
                for l in layouts.into_iter().filter(|l| !l.is_null()) {
                    (lib.cublasLtMatrixLayoutDestroy)(l);
                }
                if !desc.is_null() {
                    (lib.cublasLtMatmulDescDestroy)(desc);
                }
                (lib.cublasLtDestroy)(handle);
                Err(e.into())
            }
        }
    }
}

/// Element counts of A, B, C.
fn elems(m: u64, n: u64, k: u64) -> (usize, usize, usize) {
    ((m * k) as usize, (k * n) as usize, (m * n) as usize)
}

/// Runs a small problem of the same dtype and layout and compares it with the float64
/// reference; the output is poisoned first so that unwritten elements fail.
fn check_small(
    libs: &Libs,
    gpu: &Gpu,
    dtype: Dtype,
    layout: Layout,
    fast_accum: bool,
) -> Result<f64, CaseError> {
    let (m, n, k) = (64u64, 48u64, 80u64);
    let (ea, eb, ec) = elems(m, n, k);
    let (ab, av) = device::random_values(dtype, ea, 0x5eed_0001);
    let (bb, bv) = device::random_values(dtype, eb, 0x5eed_0002);
    let a = gpu.upload(&ab)?;
    let b = gpu.upload(&bb)?;
    let out_dtype = output_dtype(dtype);
    let c = gpu.filled(ec * out_dtype.size_bytes(), 0xff)?;
    let align = min_alignment([a.ptr, b.ptr, c.ptr]);
    let prob = Problem::new(libs, gpu, dtype, col_major(layout, m, n, k), fast_accum, align)?;
    prob.launch(&a, &b, &c)?;
    gpu.synchronize()?;
    let got = device::decode_all(out_dtype, &gpu.download(&c)?);
    let want = reference(layout, m as usize, n as usize, k as usize, &av, &bv);
    let err = rel_error(&got, &want);
    if err.is_nan() || err > tolerance(dtype) {
        return Err(CaseError::Failed(anyhow!(
            "{dtype} GEMM result is wrong: relative error {err:.3e} against a float64 reference (tolerance {:.0e}) on a {m}×{n}×{k} check",
            tolerance(dtype)
        )));
    }
    Ok(err)
}

pub fn run(rt: &mut Runtime, p: &GemmParams, case: &Case) -> Result<CaseOutput, CaseError> {
    let libs = libs(rt, p.dtype)?;
    let spin = super::kernels::spin(rt, 0);
    let gpu0 = rt.gpu0();
    let mut out = CaseOutput::new(gpu0.device_label());
    out.gpu_name = gpu0.name.clone();
    out.gpu_index = Some(gpu0.ordinal);
    let mut layout = p.layout;
    if p.dtype == Dtype::Fp8 {
        if !fp8_supported(gpu0.cc) {
            return Err(CaseError::skipped(format!(
                "fp8 needs compute capability 8.9 or newer; GPU {} ({}) is {}.{}",
                gpu0.ordinal, gpu0.name, gpu0.cc.0, gpu0.cc.1
            )));
        }
        if p.m % 16 != 0 || p.n % 16 != 0 || p.k % 16 != 0 {
            return Err(CaseError::skipped(
                "fp8 GEMM on cuBLASLt needs m, n and k divisible by 16",
            ));
        }
        if layout != Layout::Nt {
            out.warn(format!(
                "fp8 measured with layout nt instead of {:?}: cuBLASLt's fp8 kernels take only A·Bᵀ (TN in column-major)",
                layout
            ));
            layout = Layout::Nt;
        }
    }
    let gpu = gpu0;
    let fast_accum = p.fast_accum.unwrap_or(false);
    let rel_err = check_small(&libs, gpu, p.dtype, layout, fast_accum)?;

    let cm = col_major(layout, p.m, p.n, p.k);
    let (ea, eb, ec) = elems(p.m, p.n, p.k);
    let in_bytes = p.dtype.size_bytes();
    let out_bytes = output_dtype(p.dtype).size_bytes();
    let set_bytes = (ea + eb) * in_bytes + ec * out_bytes;
    let free = gpu.free_mem_bytes();
    if set_bytes > free {
        return Err(CaseError::skipped(format!(
            "needs {} MiB of GPU memory, {} MiB free",
            set_bytes >> 20,
            free >> 20
        )));
    }
    let sets_n = device::rotation_sets(set_bytes, gpu.l2_bytes, free);
    let mut sets = Vec::with_capacity(sets_n);
    for s in 0..sets_n as u64 {
        let a = gpu.upload(&device::random_bytes(p.dtype, ea, 2 * s + 1))?;
        let b = gpu.upload(&device::random_bytes(p.dtype, eb, 2 * s + 2))?;
        let c = gpu.filled(ec * out_bytes, 0)?;
        sets.push((a, b, c));
    }
    let align = min_alignment(sets.iter().flat_map(|(a, b, c)| [a.ptr, b.ptr, c.ptr]));
    let prob = Problem::new(&libs, gpu, p.dtype, cm, fast_accum, align)?;
    let mut rec = rt.recorder(gpu);
    let (samples, batching) =
        device::sample_rotating(gpu, &spin, &case.measure, &mut rec, &sets, |(a, b, c)| {
            Ok(prob.launch(a, b, c)?)
        })?;
    batching.record(&mut out, case);
    out.latency_and_rate(&samples.values, p.flops(), metric::THROUGHPUT, "TFLOP/s", 1e12);
    rec.finish(&mut out);
    out.env.insert(
        format!("gemm_{}_check_rel_error", p.dtype),
        format!("{rel_err:.2e}"),
    );
    if let Some((used, offered)) = prob.lt_choice() {
        out.env.insert(
            format!("cublaslt_algorithm {}", case.label()),
            format!("candidate {used} of {offered} (operands aligned to {align} bytes)"),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_mapping() {
        let t = gemm_types(Dtype::Tf32);
        assert_eq!(
            (t.ab, t.compute),
            (ffi::CUDA_R_32F, ffi::CUBLAS_COMPUTE_32F_FAST_TF32)
        );
        let t = gemm_types(Dtype::Fp32);
        assert_eq!(t.compute, ffi::CUBLAS_COMPUTE_32F);
        let t = gemm_types(Dtype::Bf16);
        assert_eq!(
            (t.ab, t.c, t.compute),
            (ffi::CUDA_R_16BF, ffi::CUDA_R_16BF, ffi::CUBLAS_COMPUTE_32F)
        );
        let t = gemm_types(Dtype::Fp16);
        assert_eq!(
            (t.ab, t.compute, t.lt),
            (ffi::CUDA_R_16F, ffi::CUBLAS_COMPUTE_32F, false)
        );
        let t = gemm_types(Dtype::Fp8);
        assert_eq!((t.ab, t.c, t.lt), (ffi::CUDA_R_8F_E4M3, ffi::CUDA_R_16BF, true));
        assert_eq!(output_dtype(Dtype::Fp8), Dtype::Bf16);
    }

    #[test]
    fn alignment_of_addresses() {
        assert_eq!(address_alignment(0x7f00_0000_0000), 256);
        assert_eq!(address_alignment(0x7f00_0000_0010), 16);
        assert_eq!(address_alignment(0x7f00_0000_0004), 4);
        assert_eq!(address_alignment(0x7f00_0000_0001), 1);
        assert_eq!(min_alignment([0x1000, 0x1080, 0x2000]), 128);
        assert_eq!(min_alignment([]), 256);
    }

    #[test]
    fn only_not_supported_moves_to_the_next_candidate() {
        let ns = ffi::CUBLAS_STATUS_NOT_SUPPORTED;
        assert_eq!(next_candidate(0, ns, 8), Some(1));
        assert_eq!(next_candidate(6, ns, 8), Some(7));
        assert_eq!(next_candidate(7, ns, 8), None);
        // Any other failure (invalid value, execution failed) is an error at once.
        assert_eq!(next_candidate(0, 7, 8), None);
        assert_eq!(next_candidate(0, 13, 8), None);
    }

    #[test]
    fn fp8_needs_89() {
        assert!(!fp8_supported((8, 0)));
        assert!(!fp8_supported((8, 6)));
        assert!(fp8_supported((8, 9)));
        assert!(fp8_supported((9, 0)));
        assert!(fp8_supported((10, 0)));
        assert!(fp8_supported((12, 0)));
    }

    /// Emulates column-major cuBLAS on the arguments `col_major` produces and checks that it
    /// computes the row-major product for every layout.
    #[test]
    fn col_major_arguments_compute_the_row_major_product() {
        let (m, n, k) = (3usize, 4usize, 5usize);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() + 1.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.73).cos() - 1.5).collect();
        for layout in [Layout::Nn, Layout::Nt, Layout::Tn, Layout::Tt] {
            let cm = col_major(layout, m as u64, n as u64, k as u64);
            let get = |buf: &[f32], op: c_int, ld: i64, r: usize, c: usize| {
                // element (r, c) of op(X) where X is column-major with leading dimension ld
                if op == ffi::CUBLAS_OP_N {
                    buf[r + c * ld as usize]
                } else {
                    buf[c + r * ld as usize]
                }
            };
            let mut c = vec![0.0f64; m * n];
            for i in 0..cm.m as usize {
                for j in 0..cm.n as usize {
                    let mut s = 0.0;
                    for l in 0..cm.k as usize {
                        s += get(&b, cm.op_first, cm.ld_first, i, l) as f64
                            * get(&a, cm.op_second, cm.ld_second, l, j) as f64;
                    }
                    c[i + j * cm.ldc as usize] = s;
                }
            }
            let want = reference(layout, m, n, k, &a, &b);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-9, "{layout:?}: {x} vs {y}");
            }
        }
        // fp8's TN form is layout nt.
        let cm = col_major(Layout::Nt, 16, 16, 16);
        assert_eq!((cm.op_first, cm.op_second), (ffi::CUBLAS_OP_T, ffi::CUBLAS_OP_N));
    }

    #[test]
    fn tolerances_are_ordered() {
        assert!(tolerance(Dtype::Fp32) < tolerance(Dtype::Tf32));
        assert!(tolerance(Dtype::Tf32) < tolerance(Dtype::Bf16));
    }
}
