//! Attention on CUDA as the math backend computes it: S = Q·Kᵀ/√d with one batched cuBLAS GEMM
//! (pointer arrays, so grouped KV heads need no copies), a row softmax with the causal mask in an
//! NVRTC kernel, and O = P·V with a second batched GEMM; fp32 accumulation throughout.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use anyhow::anyhow;
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{self, rel_error, DeviceBuf, Gpu};
use super::ffi::{self, Cublas};
use super::gemm::{self, blas_check};
use super::{kernels, Runtime};
use crate::case::{Case, Dtype};
use crate::engine::CaseOutput;
use crate::error::CaseError;
use crate::workload::attention::{AttentionParams, Backend};
use crate::workload::metric;

/// Shapes of one attention problem (row-major Q [b,h,sq,d], K and V [b,kvh,skv,d], S
/// [b,h,sq,skv], O [b,h,sq,d]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub b: usize,
    pub h: usize,
    pub kvh: usize,
    pub sq: usize,
    pub skv: usize,
    pub d: usize,
    pub causal: bool,
}

impl Shape {
    pub fn of(p: &AttentionParams) -> Shape {
        Shape {
            b: p.batch as usize,
            h: p.heads as usize,
            kvh: p.kv_heads() as usize,
            sq: p.seq_q as usize,
            skv: p.seq_kv() as usize,
            d: p.head_dim as usize,
            causal: p.causal,
        }
    }

    /// Element counts of Q, K (= V), S and O.
    pub fn elems(&self) -> (usize, usize, usize, usize) {
        let q = self.b * self.h * self.sq * self.d;
        let kv = self.b * self.kvh * self.skv * self.d;
        let s = self.b * self.h * self.sq * self.skv;
        (q, kv, s, q)
    }

    /// For each (batch, head) in order, the index of its K/V head block (grouped-query attention:
    /// `h / (heads / kv_heads)`).
    pub fn kv_index(&self) -> Vec<usize> {
        let group = self.h / self.kvh;
        (0..self.b)
            .flat_map(|b| (0..self.h).map(move |h| b * self.kvh + h / group))
            .collect()
    }
}

/// Float64 reference: softmax(Q·Kᵀ/√d + mask)·V, the mask aligned bottom-right.
pub fn reference(s: &Shape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let mut out = vec![0.0; s.b * s.h * s.sq * s.d];
    let scale = 1.0 / (s.d as f64).sqrt();
    let kvi = s.kv_index();
    let offset = s.skv as i64 - s.sq as i64;
    for (bh, &kv) in kvi.iter().enumerate() {
        for i in 0..s.sq {
            let limit = if s.causal {
                (i as i64 + offset + 1).clamp(0, s.skv as i64) as usize
            } else {
                s.skv
            };
            let qrow = &q[(bh * s.sq + i) * s.d..][..s.d];
            let scores: Vec<f64> = (0..limit)
                .map(|j| {
                    let krow = &k[(kv * s.skv + j) * s.d..][..s.d];
                    qrow.iter()
                        .zip(krow)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let o = &mut out[(bh * s.sq + i) * s.d..][..s.d];
            for (j, w) in e.iter().enumerate() {
                let vrow = &v[(kv * s.skv + j) * s.d..][..s.d];
                for (x, vv) in o.iter_mut().zip(vrow) {
                    *x += w / z * *vv as f64;
                }
            }
        }
    }
    out
}

/// Device buffers of one input set and the pointer arrays the batched GEMMs read.
struct Set {
    _q: DeviceBuf,
    _k: DeviceBuf,
    _v: DeviceBuf,
    s: DeviceBuf,
    o: DeviceBuf,
    /// Pointer arrays (device): K, Q, S for the first GEMM; V, S, O for the second.
    ptrs: [DeviceBuf; 6],
}

fn make_set(gpu: &Gpu, sh: &Shape, dtype: Dtype, q: &[u8], k: &[u8], v: &[u8]) -> anyhow::Result<Set> {
    let e = dtype.size_bytes();
    let (_, _, ns, no) = sh.elems();
    let qb = gpu.upload(q)?;
    let kb = gpu.upload(k)?;
    let vb = gpu.upload(v)?;
    // Poisoned outputs: anything the kernels do not write is NaN.
    let sb = gpu.filled(ns * e, 0xff)?;
    let ob = gpu.filled(no * e, 0xff)?;
    let kvi = sh.kv_index();
    let arr = |base: u64, stride: usize, idx: &dyn Fn(usize) -> usize| -> anyhow::Result<DeviceBuf> {
        let bytes: Vec<u8> = (0..kvi.len())
            .flat_map(|i| (base + (idx(i) * stride * e) as u64).to_le_bytes())
            .collect();
        gpu.upload(&bytes)
    };
    let qs = sh.sq * sh.d;
    let kvs = sh.skv * sh.d;
    let ss = sh.sq * sh.skv;
    let ptrs = [
        arr(kb.ptr, kvs, &|i| kvi[i])?,
        arr(qb.ptr, qs, &|i| i)?,
        arr(sb.ptr, ss, &|i| i)?,
        arr(vb.ptr, kvs, &|i| kvi[i])?,
        arr(sb.ptr, ss, &|i| i)?,
        arr(ob.ptr, qs, &|i| i)?,
    ];
    Ok(Set {
        _q: qb,
        _k: kb,
        _v: vb,
        s: sb,
        o: ob,
        ptrs,
    })
}

struct Attn<'a> {
    gpu: &'a Gpu,
    lib: Arc<Cublas>,
    handle: ffi::Handle,
    func: cudarc::driver::CudaFunction,
    sh: Shape,
    ty: c_int,
}

impl Drop for Attn<'_> {
    fn drop(&mut self) {
        // SAFETY: created in `Attn::new`, destroyed once.
        unsafe { (self.lib.cublasDestroy_v2)(self.handle) };
    }
}

impl<'a> Attn<'a> {
    fn new(
        lib: Arc<Cublas>,
        gpu: &'a Gpu,
        func: cudarc::driver::CudaFunction,
        sh: Shape,
        dtype: Dtype,
    ) -> anyhow::Result<Self> {
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("failed to bind GPU {}: {e}", gpu.ordinal))?;
        let handle = gemm::cublas_handle(&lib, gpu)?;
        Ok(Attn {
            gpu,
            lib: lib.clone(),
            handle,
            func,
            sh,
            ty: gemm::gemm_types(dtype).ab,
        })
    }

    /// Enqueues the three steps for one input set.
    fn launch(&self, set: &Set) -> anyhow::Result<()> {
        let sh = &self.sh;
        let batch = (sh.b * sh.h) as c_int;
        let scale = 1.0f32 / (sh.d as f32).sqrt();
        let (one, zero) = (1.0f32, 0.0f32);
        let p = |i: usize| set.ptrs[i].ptr as usize as *const *const c_void;
        let pm = |i: usize| set.ptrs[i].ptr as usize as *const *mut c_void;
        // SAFETY: pointer arrays hold b·h device addresses into buffers sized for the shape.
        unsafe {
            // Sᵀ (skv×sq, column-major) = K (op T of stored d×skv) · Qᵀ (stored d×sq).
            blas_check(
                (self.lib.cublasGemmBatchedEx)(
                    self.handle,
                    ffi::CUBLAS_OP_T,
                    ffi::CUBLAS_OP_N,
                    sh.skv as c_int,
                    sh.sq as c_int,
                    sh.d as c_int,
                    &scale as *const f32 as *const c_void,
                    p(0),
                    self.ty,
                    sh.d as c_int,
                    p(1),
                    self.ty,
                    sh.d as c_int,
                    &zero as *const f32 as *const c_void,
                    pm(2),
                    self.ty,
                    sh.skv as c_int,
                    batch,
                    ffi::CUBLAS_COMPUTE_32F,
                    ffi::CUBLAS_GEMM_DEFAULT,
                ),
                "cublasGemmBatchedEx (Q·Kᵀ)",
            )?;
        }
        let rows = (sh.b * sh.h * sh.sq) as i32;
        let cols = sh.skv as i32;
        let seq_q = sh.sq as i32;
        let offset = sh.skv as i32 - sh.sq as i32;
        let causal = sh.causal as i32;
        let threads = kernels::row_threads(sh.skv);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let sptr = set.s.ptr;
        let mut b = self.gpu.stream.launch_builder(&self.func);
        // Rows are contiguous here: the leading dimension is the row length.
        b.arg(&sptr)
            .arg(&rows)
            .arg(&cols)
            .arg(&cols)
            .arg(&seq_q)
            .arg(&offset)
            .arg(&causal);
        // SAFETY: the arguments match softmax_rows(T*, int, int, int, int, int, int).
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("softmax kernel launch failed: {e}"))?;
        // SAFETY: as above.
        unsafe {
            // Oᵀ (d×sq) = Vᵀ (stored d×skv) · Pᵀ (stored skv×sq).
            blas_check(
                (self.lib.cublasGemmBatchedEx)(
                    self.handle,
                    ffi::CUBLAS_OP_N,
                    ffi::CUBLAS_OP_N,
                    sh.d as c_int,
                    sh.sq as c_int,
                    sh.skv as c_int,
                    &one as *const f32 as *const c_void,
                    p(3),
                    self.ty,
                    sh.d as c_int,
                    p(4),
                    self.ty,
                    sh.skv as c_int,
                    &zero as *const f32 as *const c_void,
                    pm(5),
                    self.ty,
                    sh.d as c_int,
                    batch,
                    ffi::CUBLAS_COMPUTE_32F,
                    ffi::CUBLAS_GEMM_DEFAULT,
                ),
                "cublasGemmBatchedEx (P·V)",
            )
        }
    }
}

/// Tolerance of the output check: fp32 end to end, half-precision storage of S and P.
pub fn tolerance(d: Dtype) -> f64 {
    match d {
        Dtype::Fp32 => 1e-4,
        Dtype::Fp16 => 1e-2,
        _ => 3e-2,
    }
}

pub fn run(rt: &mut Runtime, p: &AttentionParams, case: &Case) -> Result<CaseOutput, CaseError> {
    if !matches!(p.backend, Backend::Auto | Backend::Math) {
        let name = serde_json::to_value(p.backend)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        return Err(CaseError::skipped(format!(
            "the native CUDA engine computes attention as batched cuBLAS GEMMs and an NVRTC softmax (backend `math`); `{name}` is a torch SDPA backend: use the torch engine"
        )));
    }
    let sh = Shape::of(p);
    let lib = rt.cublas()?;
    let module = kernels::softmax_module(rt, 0, p.dtype)?;
    let func = module
        .load_function("softmax_rows")
        .map_err(|e| anyhow!("softmax_rows missing from the NVRTC module: {e}"))?;
    let spin = kernels::spin(rt, 0);
    let gpu = rt.gpu0();
    let e = p.dtype.size_bytes();

    // Check a small problem with the same mask and grouping against float64.
    let group = sh.h / sh.kvh;
    let small_kvh = sh.kvh.min(2);
    let small = Shape {
        b: 1,
        h: small_kvh * group,
        kvh: small_kvh,
        sq: 24,
        // Unequal lengths exercise the bottom-right causal alignment when the case has them.
        skv: if sh.skv != sh.sq { 40 } else { 24 },
        d: sh.d.min(128),
        causal: sh.causal,
    };
    let (nq, nkv, _, no) = small.elems();
    let (qb, qv) = device::random_values(p.dtype, nq, 11);
    let (kb, kv) = device::random_values(p.dtype, nkv, 12);
    let (vb, vv) = device::random_values(p.dtype, nkv, 13);
    let attn = Attn::new(lib.clone(), gpu, func.clone(), small, p.dtype)?;
    let set = make_set(gpu, &small, p.dtype, &qb, &kb, &vb)?;
    attn.launch(&set)?;
    gpu.synchronize()?;
    let got = device::decode_all(p.dtype, &gpu.download(&set.o)?);
    let err = rel_error(&got[..no], &reference(&small, &qv, &kv, &vv));
    if err.is_nan() || err > tolerance(p.dtype) {
        return Err(CaseError::Failed(anyhow!(
            "{} attention result is wrong: relative error {err:.3e} against a float64 reference (tolerance {:.0e})",
            p.dtype,
            tolerance(p.dtype)
        )));
    }
    drop((attn, set));

    let (nq, nkv, ns, no) = sh.elems();
    let set_bytes = (nq + 2 * nkv + ns + no) * e;
    let free = gpu.free_mem_bytes();
    if set_bytes > free {
        return Err(CaseError::skipped(format!(
            "needs {} MiB of GPU memory (the score matrix alone is {} MiB), {} MiB free",
            set_bytes >> 20,
            (ns * e) >> 20,
            free >> 20
        )));
    }
    let sets_n = device::rotation_sets(set_bytes, gpu.l2_bytes, free);
    let mut sets = Vec::with_capacity(sets_n);
    for s in 0..sets_n as u64 {
        let q = device::random_bytes(p.dtype, nq, 3 * s + 1);
        let k = device::random_bytes(p.dtype, nkv, 3 * s + 2);
        let v = device::random_bytes(p.dtype, nkv, 3 * s + 3);
        sets.push(make_set(gpu, &sh, p.dtype, &q, &k, &v)?);
    }
    let attn = Attn::new(lib, gpu, func, sh, p.dtype)?;
    let mut rec = rt.recorder(gpu);
    let (samples, batching) = device::sample_rotating(gpu, &spin, &case.measure, &mut rec, &sets, |set| {
        Ok(attn.launch(set)?)
    })?;
    let mut out = CaseOutput::new(gpu.device_label());
    out.gpu_name = gpu.name.clone();
    out.gpu_index = Some(gpu.ordinal);
    out.latency_and_rate(&samples.values, p.flops(), metric::THROUGHPUT, "TFLOP/s", 1e12);
    rec.finish(&mut out);
    // Per case: the worker's env messages merge into one map for the target.
    batching.record(&mut out, case);
    if p.causal {
        out.warn("causal attention on the math path computes the full score matrix and masks it; TFLOP/s counts the causal half, as FlashAttention does");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gqa_maps_heads_to_kv_heads() {
        let s = Shape {
            b: 2,
            h: 8,
            kvh: 2,
            sq: 4,
            skv: 4,
            d: 8,
            causal: false,
        };
        let kv = s.kv_index();
        assert_eq!(&kv[..8], &[0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(&kv[8..], &[2, 2, 2, 2, 3, 3, 3, 3]);
        assert_eq!(
            s.elems(),
            (2 * 8 * 4 * 8, 2 * 2 * 4 * 8, 2 * 8 * 4 * 4, 2 * 8 * 4 * 8)
        );
    }

    #[test]
    fn reference_with_uniform_scores_averages_values() {
        // Q = 0 gives equal scores: non-causal output is the mean of V; causal row i averages the
        // first i + 1 + (skv - sq) values.
        let s = Shape {
            b: 1,
            h: 1,
            kvh: 1,
            sq: 2,
            skv: 3,
            d: 1,
            causal: true,
        };
        let q = [0.0, 0.0];
        let k = [1.0, 2.0, 3.0];
        let v = [3.0, 6.0, 9.0];
        let o = reference(&s, &q, &k, &v);
        assert!((o[0] - 4.5).abs() < 1e-12, "{o:?}"); // keys 0..=1
        assert!((o[1] - 6.0).abs() < 1e-12, "{o:?}"); // keys 0..=2
        let o = reference(&Shape { causal: false, ..s }, &q, &k, &v);
        assert!((o[0] - 6.0).abs() < 1e-12);
    }

    #[test]
    fn reference_matches_naive_softmax() {
        let s = Shape {
            b: 1,
            h: 2,
            kvh: 1,
            sq: 3,
            skv: 3,
            d: 2,
            causal: false,
        };
        let q: Vec<f32> = (0..12).map(|i| (i as f32 * 0.3).sin()).collect();
        let k: Vec<f32> = (0..6).map(|i| (i as f32 * 0.7).cos()).collect();
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let o = reference(&s, &q, &k, &v);
        // head 1, query 2 by hand
        let qi = &q[(3 + 2) * 2..][..2];
        let sc: Vec<f64> = (0..3)
            .map(|j| (qi[0] as f64 * k[j * 2] as f64 + qi[1] as f64 * k[j * 2 + 1] as f64) / 2f64.sqrt())
            .collect();
        let z: f64 = sc.iter().map(|x| x.exp()).sum();
        let want0: f64 = (0..3).map(|j| sc[j].exp() / z * v[j * 2] as f64).sum();
        assert!((o[(3 + 2) * 2] - want0).abs() < 1e-12);
    }
}
