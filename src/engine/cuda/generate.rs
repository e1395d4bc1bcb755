//! Token generation on CUDA: a Llama-architecture decoder with random weights (generated on the
//! device by an NVRTC kernel), a prefill of the prompt, then greedy decoding with a KV cache.
//! Projections, LM head and the attention products are cuBLAS GEMMs (fp32 accumulation); the
//! rest (embedding, RMSNorm, RoPE, KV-cache append, causal softmax, SwiGLU, argmax) are NVRTC
//! kernels from [`kernels::GENERATE`]. A float64 host decoder ([`HostModel`]) is the reference
//! the device is checked against before any timing.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use anyhow::anyhow;
use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};

use super::device::{self, rel_error, DeviceBuf, EventTimer, Gpu};
use super::ffi::{self, Cublas};
use super::gemm::{self, blas_check};
use super::kernels::{self, hash_uniform};
use super::Runtime;
use crate::case::{Better, Case, Dtype};
use crate::engine::{mean_step, CaseOutput};
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::generate::{GenerateParams, ModelShape};
use crate::workload::metric;

/// RMSNorm epsilon (Llama 2 and 3 configs; the CPU engine uses the same).
pub const RMS_EPS: f64 = 1e-5;

/// Bytes left free beyond the plan for cuBLAS workspaces and the driver's own allocations.
pub const RESERVE_BYTES: u64 = 512 << 20;

/// Everything the decoder's buffers are sized from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rope_theta: u32,
    pub batch: usize,
    /// The longest query block (the prompt): activations are sized for it.
    pub prompt_len: usize,
    /// KV-cache positions: prompt and generated tokens.
    pub max_seq: usize,
}

impl Dims {
    pub fn new(s: &ModelShape, batch: usize, prompt_len: usize, new_tokens: usize) -> Dims {
        Dims {
            hidden: s.hidden,
            inter: s.intermediate,
            layers: s.layers,
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim(),
            vocab: s.vocab,
            rope_theta: s.rope_theta,
            batch,
            prompt_len,
            max_seq: prompt_len + new_tokens,
        }
    }

    /// Width of the fused QKV projection's output: query heads, then key heads, then values.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    pub fn attn_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// One weight tensor: `rows × cols` row-major (PyTorch's `Linear` layout, out × in), filled with
/// `offset + scale·U(-1, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightSpec {
    pub rows: usize,
    pub cols: usize,
    pub offset: f32,
    pub scale: f32,
}

impl WeightSpec {
    pub fn elems(&self) -> usize {
        self.rows * self.cols
    }

    /// A projection with fan-in `cols`: variance 1/fan_in (U(-a, a) has variance a²/3), the
    /// scale that keeps activations of a random decoder O(1).
    fn linear(rows: usize, cols: usize) -> WeightSpec {
        WeightSpec {
            rows,
            cols,
            offset: 0.0,
            scale: (3.0 / cols as f32).sqrt(),
        }
    }

    /// Norm gains around 1 (never zeros: zero weights hide wrong indexing).
    fn norm(n: usize) -> WeightSpec {
        WeightSpec {
            rows: 1,
            cols: n,
            offset: 1.0,
            scale: 0.25,
        }
    }
}

/// Per-layer tensors, in this order.
pub const ATTN_NORM: usize = 0;
pub const QKV: usize = 1;
pub const O_PROJ: usize = 2;
pub const MLP_NORM: usize = 3;
/// Gate then up projection, fused: `[2·intermediate, hidden]`.
pub const GATE_UP: usize = 4;
pub const DOWN: usize = 5;
/// Model-wide tensors, in this order.
pub const EMBED: usize = 0;
pub const FINAL_NORM: usize = 1;
pub const LM_HEAD: usize = 2;

pub fn layer_specs(d: &Dims) -> [WeightSpec; 6] {
    [
        WeightSpec::norm(d.hidden),
        WeightSpec::linear(d.qkv_width(), d.hidden),
        WeightSpec::linear(d.hidden, d.attn_width()),
        WeightSpec::norm(d.hidden),
        WeightSpec::linear(2 * d.inter, d.hidden),
        WeightSpec::linear(d.hidden, d.inter),
    ]
}

pub fn global_specs(d: &Dims) -> [WeightSpec; 3] {
    [
        WeightSpec {
            rows: d.vocab,
            cols: d.hidden,
            offset: 0.0,
            scale: 1.0,
        },
        WeightSpec::norm(d.hidden),
        WeightSpec::linear(d.vocab, d.hidden),
    ]
}

/// The seed of tensor `slot` (layer tensors `layer·6 + index`, then the model-wide ones).
pub fn tensor_seed(base: u64, slot: usize) -> u64 {
    base ^ (slot as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)
}

/// Element counts of the activation buffers, sized for the prefill (the largest query block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activations {
    /// Residual stream `[tokens, hidden]`.
    pub x: usize,
    /// Normed input of a projection `[tokens, hidden]`.
    pub h: usize,
    pub qkv: usize,
    /// Attention output `[tokens, heads·head_dim]`.
    pub attn: usize,
    /// Gate and up `[tokens, 2·intermediate]`.
    pub gu: usize,
    pub act: usize,
    /// Scores `[batch, heads, prompt_len, max_seq]`: rows `max_seq` apart so that the batched
    /// GEMMs' pointers stay fixed while the key count grows.
    pub scores: usize,
    /// Final-normed last token of each sequence `[batch, hidden]`.
    pub last: usize,
    pub logits: usize,
}

impl Activations {
    pub fn of(d: &Dims) -> Activations {
        let t = d.batch * d.prompt_len;
        Activations {
            x: t * d.hidden,
            h: t * d.hidden,
            qkv: t * d.qkv_width(),
            attn: t * d.attn_width(),
            gu: t * 2 * d.inter,
            act: t * d.inter,
            scores: d.batch * d.heads * d.prompt_len * d.max_seq,
            last: d.batch * d.hidden,
            logits: d.batch * d.vocab,
        }
    }

    pub fn total(&self) -> usize {
        self.x + self.h + self.qkv + self.attn + self.gu + self.act + self.scores + self.last + self.logits
    }
}

/// Device bytes a case allocates, by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub weights: u64,
    pub kv_cache: u64,
    /// Activations, token ids, RoPE tables and the batched GEMMs' pointer arrays.
    pub activations: u64,
}

impl MemoryPlan {
    pub fn of(d: &Dims, elem_bytes: usize) -> MemoryPlan {
        let e = elem_bytes as u64;
        let per_layer: usize = layer_specs(d).iter().map(WeightSpec::elems).sum();
        let global: usize = global_specs(d).iter().map(WeightSpec::elems).sum();
        let weights = (per_layer * d.layers + global) as u64 * e;
        let kv_cache = (2 * d.layers * d.batch * d.kv_heads * d.max_seq * d.head_dim) as u64 * e;
        let ids = (d.batch * d.prompt_len + d.batch) as u64 * 4;
        let rope = 2 * (d.max_seq * d.head_dim / 2) as u64 * 4;
        let pointers = ((6 + 2 * d.layers) * d.batch * d.heads) as u64 * 8;
        let activations = Activations::of(d).total() as u64 * e + ids + rope + pointers;
        MemoryPlan {
            weights,
            kv_cache,
            activations,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.activations
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// A cuBLAS GEMM call (`cublasGemmEx`, or `cublasGemmBatchedEx` with `; batch`) on `$s`'s
/// handle and element type with the dimensions of a [`GemmArgs`], fp32 compute: the one place
/// that spells out cuBLAS's argument order for both.
macro_rules! gemm_call {
    ($f:expr, $s:expr, $g:expr, $alpha:expr, $a:expr, $b:expr, $beta:expr, $c:expr $(; $batch:expr)?) => {
        ($f)(
            $s.handle, $g.op_a, $g.op_b,
            $g.m as c_int, $g.n as c_int, $g.k as c_int,
            $alpha, $a, $s.ty, $g.lda as c_int, $b, $s.ty, $g.ldb as c_int,
            $beta, $c, $s.ty, $g.ldc as c_int,
            $($batch,)? ffi::CUBLAS_COMPUTE_32F, ffi::CUBLAS_GEMM_DEFAULT,
        )
    };
}

/// Column-major cuBLAS arguments of one GEMM (or each GEMM of a batch): C (m×n, ldc) =
/// op_a(A)·op_b(B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmArgs {
    pub op_a: c_int,
    pub op_b: c_int,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

/// y[rows, out] = x[rows, in]·Wᵀ with W stored `[out, in]` row-major and x's rows `ldx` apart:
/// column-major, yᵀ = W(stored in×out, transposed)·xᵀ.
pub fn linear_args(rows: usize, inp: usize, out: usize, ldx: usize) -> GemmArgs {
    GemmArgs {
        op_a: ffi::CUBLAS_OP_T,
        op_b: ffi::CUBLAS_OP_N,
        m: out,
        n: rows,
        k: inp,
        lda: inp,
        ldb: ldx,
        ldc: out,
    }
}

/// Per (sequence, head): Sᵀ (keys × queries, rows of S `max_seq` apart) = K (cached `[key, d]`
/// row-major, transposed) · Qᵀ (Q read in place from the fused QKV rows).
pub fn score_args(d: &Dims, sq: usize, skv: usize) -> GemmArgs {
    GemmArgs {
        op_a: ffi::CUBLAS_OP_T,
        op_b: ffi::CUBLAS_OP_N,
        m: skv,
        n: sq,
        k: d.head_dim,
        lda: d.head_dim,
        ldb: d.qkv_width(),
        ldc: d.max_seq,
    }
}

/// Per (sequence, head): Oᵀ (d × queries, written into the `[token, heads·d]` rows the output
/// projection reads) = Vᵀ (cached `[key, d]`) · Pᵀ.
pub fn pv_args(d: &Dims, sq: usize, skv: usize) -> GemmArgs {
    GemmArgs {
        op_a: ffi::CUBLAS_OP_N,
        op_b: ffi::CUBLAS_OP_N,
        m: d.head_dim,
        n: sq,
        k: skv,
        lda: d.head_dim,
        ldb: d.max_seq,
        ldc: d.attn_width(),
    }
}

/// Element offsets, per (sequence, head) in order, of the matrices the attention GEMMs read and
/// write for a query block of `sq` tokens per sequence: Q in the QKV buffer, S (= P) in the
/// score buffer, O in the attention output, and the K/V block of the head's group in a layer's
/// cache (grouped-query attention shares blocks, no copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttnOffsets {
    pub q: Vec<usize>,
    pub s: Vec<usize>,
    pub o: Vec<usize>,
    pub kv: Vec<usize>,
}

pub fn attn_offsets(d: &Dims, sq: usize) -> AttnOffsets {
    let mut a = AttnOffsets {
        q: Vec::new(),
        s: Vec::new(),
        o: Vec::new(),
        kv: Vec::new(),
    };
    for b in 0..d.batch {
        for h in 0..d.heads {
            a.q.push(b * sq * d.qkv_width() + h * d.head_dim);
            a.s.push((b * d.heads + h) * sq * d.max_seq);
            a.o.push(b * sq * d.attn_width() + h * d.head_dim);
            a.kv.push((b * d.kv_heads + h / d.group()) * d.max_seq * d.head_dim);
        }
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Host reference
// ---------------------------------------------------------------------------------------------

/// `x` rounded to how the device stores `dtype` (`None`: exact float64): the host reference can
/// emulate the device's rounding points to size the check's tolerance.
pub fn round_to(x: f64, st: Option<Dtype>) -> f64 {
    match st {
        None => x,
        Some(Dtype::Fp16) => half::f16::from_f64(x).to_f64(),
        Some(Dtype::Bf16) => half::bf16::from_f64(x).to_f64(),
        Some(_) => x as f32 as f64,
    }
}

pub fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

/// The rotation angle of pair `i` at position `pos`: pos·θ^(−2i/d).
pub fn rope_angle(pos: usize, i: usize, head_dim: usize, theta: u32) -> f64 {
    pos as f64 * (theta as f64).powf(-((2 * i) as f64) / head_dim as f64)
}

/// Rotary embedding of one head vector in place, HF Llama's rotate_half pairing (i, i + d/2);
/// `st` rounds the cos/sin tables (fp32 on the device) and the stored result.
pub fn apply_rope(v: &mut [f64], pos: usize, theta: u32, st: Option<Dtype>) {
    let d = v.len();
    let half = d / 2;
    for i in 0..half {
        let a = rope_angle(pos, i, d, theta);
        let (mut c, mut s) = (a.cos(), a.sin());
        if st.is_some() {
            c = c as f32 as f64;
            s = s as f32 as f64;
        }
        let (x1, x2) = (v[i], v[i + half]);
        v[i] = round_to(x1 * c - x2 * s, st);
        v[i + half] = round_to(x2 * c + x1 * s, st);
    }
}

fn matvec(w: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows)
        .map(|r| w[r * cols..][..cols].iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// One sequence's KV cache: `[layer][kv head][position] → head vector`.
#[derive(Debug, Clone, Default)]
pub struct SeqCache {
    k: Vec<Vec<Vec<Vec<f64>>>>,
    v: Vec<Vec<Vec<Vec<f64>>>>,
}

impl SeqCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.k.first().and_then(|l| l.first()).map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decoder in float64 on the host: the same architecture, layouts and weights as the device.
#[derive(Debug, Clone)]
pub struct HostModel {
    pub dims: Dims,
    /// `[layer][ATTN_NORM..=DOWN]`, row-major as [`layer_specs`] sizes them.
    pub layers: Vec<[Vec<f64>; 6]>,
    /// `[EMBED, FINAL_NORM, LM_HEAD]`.
    pub globals: [Vec<f64>; 3],
}

impl HostModel {
    /// The weights the device's init kernel generates for `seed`, before storage rounding.
    pub fn random(dims: Dims, seed: u64) -> HostModel {
        let fill = |spec: &WeightSpec, slot: usize| -> Vec<f64> {
            let s = tensor_seed(seed, slot);
            (0..spec.elems() as u64)
                .map(|i| (spec.offset + spec.scale * hash_uniform(s, i)) as f64)
                .collect()
        };
        let ls = layer_specs(&dims);
        let layers = (0..dims.layers)
            .map(|l| core::array::from_fn(|t| fill(&ls[t], l * 6 + t)))
            .collect();
        let gs = global_specs(&dims);
        let globals = core::array::from_fn(|t| fill(&gs[t], dims.layers * 6 + t));
        HostModel {
            dims,
            layers,
            globals,
        }
    }

    pub fn new_cache(&self) -> SeqCache {
        let d = &self.dims;
        SeqCache {
            k: vec![vec![Vec::new(); d.kv_heads]; d.layers],
            v: vec![vec![Vec::new(); d.kv_heads]; d.layers],
        }
    }

    /// Runs `tokens` of one sequence at the positions after those cached, appending to the
    /// cache, and returns the logits of every token. `st` emulates the device's storage rounding
    /// of every tensor it writes (`None`: exact).
    pub fn forward(&self, cache: &mut SeqCache, tokens: &[u32], st: Option<Dtype>) -> Vec<Vec<f64>> {
        let d = &self.dims;
        let (h, hd, nh, nkv, inter) = (d.hidden, d.head_dim, d.heads, d.kv_heads, d.inter);
        let rq = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|x| round_to(x, st)).collect() };
        let pos0 = cache.len();
        let scale = 1.0 / (hd as f64).sqrt();
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| self.globals[EMBED][t as usize * h..][..h].to_vec())
            .collect();
        for (l, w) in self.layers.iter().enumerate() {
            let mut qs = Vec::with_capacity(xs.len());
            for (i, x) in xs.iter().enumerate() {
                let hn = rq(rms_norm(x, &w[ATTN_NORM], RMS_EPS));
                let mut qkv = rq(matvec(&w[QKV], d.qkv_width(), h, &hn));
                for head in 0..nh + nkv {
                    apply_rope(&mut qkv[head * hd..][..hd], pos0 + i, d.rope_theta, st);
                }
                for g in 0..nkv {
                    cache.k[l][g].push(qkv[(nh + g) * hd..][..hd].to_vec());
                    cache.v[l][g].push(qkv[(nh + nkv + g) * hd..][..hd].to_vec());
                }
                qkv.truncate(nh * hd);
                qs.push(qkv);
            }
            for (i, x) in xs.iter_mut().enumerate() {
                let pos = pos0 + i;
                let mut o = vec![0.0; nh * hd];
                for head in 0..nh {
                    let g = head / d.group();
                    let q = &qs[i][head * hd..][..hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            let dot: f64 = q.iter().zip(&cache.k[l][g][j]).map(|(a, b)| a * b).sum();
                            round_to(dot * scale, st)
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let out = &mut o[head * hd..][..hd];
                    for (j, ej) in e.iter().enumerate() {
                        let p = round_to(ej / z, st);
                        for (oc, vc) in out.iter_mut().zip(&cache.v[l][g][j]) {
                            *oc += p * vc;
                        }
                    }
                }
                let o = rq(o);
                let proj = matvec(&w[O_PROJ], h, nh * hd, &o);
                for (xc, pc) in x.iter_mut().zip(&proj) {
                    *xc = round_to(*xc + pc, st);
                }
                let hn = rq(rms_norm(x, &w[MLP_NORM], RMS_EPS));
                let gu = rq(matvec(&w[GATE_UP], 2 * inter, h, &hn));
                let act: Vec<f64> = (0..inter)
                    .map(|c| round_to(silu(gu[c]) * gu[inter + c], st))
                    .collect();
                let down = matvec(&w[DOWN], h, inter, &act);
                for (xc, dc) in x.iter_mut().zip(&down) {
                    *xc = round_to(*xc + dc, st);
                }
            }
        }
        xs.iter()
            .map(|x| {
                let hn = rq(rms_norm(x, &self.globals[FINAL_NORM], RMS_EPS));
                rq(matvec(&self.globals[LM_HEAD], d.vocab, h, &hn))
            })
            .collect()
    }
}

/// Index of the largest value, the lowest among ties (the argmax kernel's rule).
pub fn argmax<T: PartialOrd>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// Device
// ---------------------------------------------------------------------------------------------

struct Kernels {
    init: CudaFunction,
    embed: CudaFunction,
    rms_norm: CudaFunction,
    rope: CudaFunction,
    kv_append: CudaFunction,
    softmax: CudaFunction,
    swiglu: CudaFunction,
    argmax: CudaFunction,
}

impl Kernels {
    fn load(m: &Arc<CudaModule>) -> anyhow::Result<Kernels> {
        let f = |name: &str| {
            m.load_function(name)
                .map_err(|e| anyhow!("{name} missing from the NVRTC generate module: {e}"))
        };
        Ok(Kernels {
            init: f("init_uniform")?,
            embed: f("embed")?,
            rms_norm: f("rms_norm")?,
            rope: f("rope")?,
            kv_append: f("kv_append")?,
            softmax: f("softmax_rows")?,
            swiglu: f("swiglu")?,
            argmax: f("argmax_rows")?,
        })
    }
}

/// A kernel argument (the kernels' C types: pointers and `unsigned long long` as u64, `int`,
/// `long long`, `float`).
enum Arg {
    U64(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Device pointer arrays of one query-block size: Q, S (= P) and O per (sequence, head).
struct PhasePtrs {
    q: DeviceBuf,
    s: DeviceBuf,
    o: DeviceBuf,
}

/// The decoder on one GPU: weights, KV cache, activations, a cuBLAS handle on the GPU's stream.
struct DeviceModel<'a> {
    gpu: &'a Gpu,
    lib: Arc<Cublas>,
    handle: ffi::Handle,
    k: Kernels,
    dims: Dims,
    ty: c_int,
    elem: usize,
    layers: Vec<[DeviceBuf; 6]>,
    globals: [DeviceBuf; 3],
    kcache: Vec<DeviceBuf>,
    vcache: Vec<DeviceBuf>,
    cos: DeviceBuf,
    sin: DeviceBuf,
    x: DeviceBuf,
    h: DeviceBuf,
    qkv: DeviceBuf,
    attn: DeviceBuf,
    gu: DeviceBuf,
    act: DeviceBuf,
    scores: DeviceBuf,
    last: DeviceBuf,
    logits: DeviceBuf,
    prompt: DeviceBuf,
    tokens: DeviceBuf,
    prefill_ptrs: PhasePtrs,
    decode_ptrs: PhasePtrs,
    /// Per layer: K and V pointer arrays (the same for every query-block size).
    kv_ptrs: Vec<[DeviceBuf; 2]>,
}

impl Drop for DeviceModel<'_> {
    fn drop(&mut self) {
        // SAFETY: created in `DeviceModel::new`, destroyed once.
        unsafe { (self.lib.cublasDestroy_v2)(self.handle) };
    }
}

/// One generation's timings.
struct Generation {
    ttft_s: f64,
    decode_steps_s: Vec<f64>,
}

impl<'a> DeviceModel<'a> {
    /// Allocates everything, generates the weights on the device and poisons the activations and
    /// the cache (NaN bytes) so that anything read before it is written shows in the check.
    fn new(
        gpu: &'a Gpu,
        lib: Arc<Cublas>,
        k: Kernels,
        dims: Dims,
        dtype: Dtype,
        seed: u64,
    ) -> anyhow::Result<Self> {
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("failed to bind GPU {}: {e}", gpu.ordinal))?;
        let handle = gemm::cublas_handle(&lib, gpu)?;
        let e = dtype.size_bytes();
        let d = dims;
        let poisoned = |elems: usize| -> anyhow::Result<DeviceBuf> {
            let b = gpu.alloc(elems * e)?;
            gpu.memset(&b, 0xff)?;
            Ok(b)
        };
        let ptr_array = |offsets: &[usize], base: u64| -> anyhow::Result<DeviceBuf> {
            let bytes: Vec<u8> = offsets
                .iter()
                .flat_map(|o| (base + (o * e) as u64).to_le_bytes())
                .collect();
            gpu.upload(&bytes)
        };
        let a = Activations::of(&d);
        let kv_elems = d.batch * d.kv_heads * d.max_seq * d.head_dim;
        let (x, h, qkv, attn) = (
            poisoned(a.x)?,
            poisoned(a.h)?,
            poisoned(a.qkv)?,
            poisoned(a.attn)?,
        );
        let (gu, act, scores) = (poisoned(a.gu)?, poisoned(a.act)?, poisoned(a.scores)?);
        let (last, logits) = (poisoned(a.last)?, poisoned(a.logits)?);
        let mut kcache = Vec::with_capacity(d.layers);
        let mut vcache = Vec::with_capacity(d.layers);
        for _ in 0..d.layers {
            kcache.push(poisoned(kv_elems)?);
            vcache.push(poisoned(kv_elems)?);
        }
        let half = d.head_dim / 2;
        let mut cos = Vec::with_capacity(d.max_seq * half * 4);
        let mut sin = Vec::with_capacity(d.max_seq * half * 4);
        for pos in 0..d.max_seq {
            for i in 0..half {
                let a = rope_angle(pos, i, d.head_dim, d.rope_theta);
                cos.extend_from_slice(&(a.cos() as f32).to_le_bytes());
                sin.extend_from_slice(&(a.sin() as f32).to_le_bytes());
            }
        }
        let (cos, sin) = (gpu.upload(&cos)?, gpu.upload(&sin)?);
        let prompt = gpu.alloc(d.batch * d.prompt_len * 4)?;
        let tokens = gpu.alloc(d.batch * 4)?;
        gpu.memset(&tokens, 0)?;
        let phase = |sq: usize| -> anyhow::Result<PhasePtrs> {
            let off = attn_offsets(&d, sq);
            Ok(PhasePtrs {
                q: ptr_array(&off.q, qkv.ptr)?,
                s: ptr_array(&off.s, scores.ptr)?,
                o: ptr_array(&off.o, attn.ptr)?,
            })
        };
        let prefill_ptrs = phase(d.prompt_len)?;
        let decode_ptrs = phase(1)?;
        let kv_off = attn_offsets(&d, 1).kv;
        let mut kv_ptrs = Vec::with_capacity(d.layers);
        for l in 0..d.layers {
            kv_ptrs.push([
                ptr_array(&kv_off, kcache[l].ptr)?,
                ptr_array(&kv_off, vcache[l].ptr)?,
            ]);
        }

        let init = |spec: &WeightSpec, slot: usize| -> anyhow::Result<DeviceBuf> {
            let b = gpu.alloc(spec.elems() * e)?;
            let n = spec.elems() as i64;
            launch(
                gpu,
                &k.init,
                kernels::elementwise_blocks(n as u64, kernels::ELEMENTWISE_THREADS),
                kernels::ELEMENTWISE_THREADS,
                &[
                    Arg::U64(b.ptr),
                    Arg::I64(n),
                    Arg::U64(tensor_seed(seed, slot)),
                    Arg::F32(spec.offset),
                    Arg::F32(spec.scale),
                ],
                "init_uniform",
            )?;
            Ok(b)
        };
        let ls = layer_specs(&d);
        let mut layers = Vec::with_capacity(d.layers);
        for l in 0..d.layers {
            layers.push([
                init(&ls[0], l * 6)?,
                init(&ls[1], l * 6 + 1)?,
                init(&ls[2], l * 6 + 2)?,
                init(&ls[3], l * 6 + 3)?,
                init(&ls[4], l * 6 + 4)?,
                init(&ls[5], l * 6 + 5)?,
            ]);
        }
        let gs = global_specs(&d);
        let g0 = d.layers * 6;
        let globals = [init(&gs[0], g0)?, init(&gs[1], g0 + 1)?, init(&gs[2], g0 + 2)?];
        gpu.synchronize()?;
        Ok(DeviceModel {
            gpu,
            lib,
            handle,
            k,
            dims: d,
            ty: gemm::gemm_types(dtype).ab,
            elem: e,
            layers,
            globals,
            kcache,
            vcache,
            cos,
            sin,
            x,
            h,
            qkv,
            attn,
            gu,
            act,
            scores,
            last,
            logits,
            prompt,
            tokens,
            prefill_ptrs,
            decode_ptrs,
            kv_ptrs,
        })
    }

    fn set_prompt(&self, ids: &[i32]) -> anyhow::Result<()> {
        let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        self.gpu.write(&self.prompt, &bytes)
    }

    /// C = alpha·op(A)·op(B) + beta·C on the GPU's stream (fp32 accumulation).
    /// `scalars` are (alpha, beta); `abc` the device addresses of A, B and C.
    fn gemm(&self, g: &GemmArgs, scalars: (f32, f32), abc: [u64; 3], what: &str) -> anyhow::Result<()> {
        let ((alpha, beta), [a, b, c]) = (scalars, abc);
        // SAFETY: the pointers address buffers sized for the arguments (see `Activations`);
        // scalars are host values alive across the call.
        blas_check(
            unsafe {
                gemm_call!(
                    self.lib.cublasGemmEx,
                    self,
                    g,
                    &alpha as *const f32 as *const c_void,
                    a as usize as *const c_void,
                    b as usize as *const c_void,
                    &beta as *const f32 as *const c_void,
                    c as usize as *mut c_void
                )
            },
            what,
        )
    }

    /// One GEMM per (sequence, head) through device pointer arrays.
    fn gemm_batched(
        &self,
        g: &GemmArgs,
        alpha: f32,
        a: &DeviceBuf,
        b: &DeviceBuf,
        c: &DeviceBuf,
        what: &str,
    ) -> anyhow::Result<()> {
        let zero = 0.0f32;
        let batch = (self.dims.batch * self.dims.heads) as c_int;
        // SAFETY: each array holds batch·heads device addresses into buffers sized for `g`.
        blas_check(
            unsafe {
                gemm_call!(
                    self.lib.cublasGemmBatchedEx,
                    self,
                    g,
                    &alpha as *const f32 as *const c_void,
                    a.ptr as usize as *const *const c_void,
                    b.ptr as usize as *const *const c_void,
                    &zero as *const f32 as *const c_void,
                    c.ptr as usize as *const *mut c_void;
                    batch
                )
            },
            what,
        )
    }

    fn rms_norm(
        &self,
        out: u64,
        inp: u64,
        w: &DeviceBuf,
        rows: usize,
        in_stride: usize,
        out_stride: usize,
    ) -> anyhow::Result<()> {
        let d = &self.dims;
        launch(
            self.gpu,
            &self.k.rms_norm,
            rows as u32,
            kernels::row_threads(d.hidden),
            &[
                Arg::U64(out),
                Arg::U64(inp),
                Arg::U64(w.ptr),
                Arg::I32(d.hidden as i32),
                Arg::I64(in_stride as i64),
                Arg::I64(out_stride as i64),
                Arg::F32(RMS_EPS as f32),
            ],
            "rms_norm",
        )
    }

    /// Enqueues one forward pass over `sq` tokens per sequence at positions `pos0..` (token ids
    /// at `ids`, int32 `[batch, sq]`), ending with the argmax of the last token's logits written
    /// to `self.tokens`.
    fn forward(&self, ids: u64, sq: usize, pos0: usize) -> anyhow::Result<()> {
        let d = &self.dims;
        let t = d.batch * sq;
        let skv = pos0 + sq;
        let ew = kernels::ELEMENTWISE_THREADS;
        let phase = if sq == 1 {
            &self.decode_ptrs
        } else {
            &self.prefill_ptrs
        };
        launch(
            self.gpu,
            &self.k.embed,
            t as u32,
            kernels::row_threads(d.hidden),
            &[
                Arg::U64(self.x.ptr),
                Arg::U64(self.globals[EMBED].ptr),
                Arg::U64(ids),
                Arg::I32(d.hidden as i32),
                Arg::I32(d.vocab as i32),
            ],
            "embed",
        )?;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        for (l, w) in self.layers.iter().enumerate() {
            self.rms_norm(self.h.ptr, self.x.ptr, &w[ATTN_NORM], t, d.hidden, d.hidden)?;
            self.gemm(
                &linear_args(t, d.hidden, d.qkv_width(), d.hidden),
                (1.0, 0.0),
                [w[QKV].ptr, self.h.ptr, self.qkv.ptr],
                "cublasGemmEx (QKV projection)",
            )?;
            let n = (t * (d.heads + d.kv_heads) * d.head_dim / 2) as u64;
            launch(
                self.gpu,
                &self.k.rope,
                kernels::elementwise_blocks(n, ew),
                ew,
                &[
                    Arg::U64(self.qkv.ptr),
                    Arg::U64(self.cos.ptr),
                    Arg::U64(self.sin.ptr),
                    Arg::I32(t as i32),
                    Arg::I32(sq as i32),
                    Arg::I32(pos0 as i32),
                    Arg::I32((d.heads + d.kv_heads) as i32),
                    Arg::I32(d.head_dim as i32),
                    Arg::I64(d.qkv_width() as i64),
                ],
                "rope",
            )?;
            let n = (t * d.kv_heads * d.head_dim) as u64;
            launch(
                self.gpu,
                &self.k.kv_append,
                kernels::elementwise_blocks(n, ew),
                ew,
                &[
                    Arg::U64(self.kcache[l].ptr),
                    Arg::U64(self.vcache[l].ptr),
                    Arg::U64(self.qkv.ptr),
                    Arg::I32(t as i32),
                    Arg::I32(sq as i32),
                    Arg::I32(pos0 as i32),
                    Arg::I32(d.heads as i32),
                    Arg::I32(d.kv_heads as i32),
                    Arg::I32(d.head_dim as i32),
                    Arg::I32(d.max_seq as i32),
                ],
                "kv_append",
            )?;
            let [kp, vp] = &self.kv_ptrs[l];
            self.gemm_batched(
                &score_args(d, sq, skv),
                scale,
                kp,
                &phase.q,
                &phase.s,
                "cublasGemmBatchedEx (Q·Kᵀ)",
            )?;
            launch(
                self.gpu,
                &self.k.softmax,
                (d.batch * d.heads * sq) as u32,
                kernels::row_threads(skv),
                &[
                    Arg::U64(self.scores.ptr),
                    Arg::I32((d.batch * d.heads * sq) as i32),
                    Arg::I32(skv as i32),
                    Arg::I32(d.max_seq as i32),
                    Arg::I32(sq as i32),
                    Arg::I32(pos0 as i32),
                    Arg::I32(1),
                ],
                "softmax_rows (causal)",
            )?;
            self.gemm_batched(
                &pv_args(d, sq, skv),
                1.0,
                vp,
                &phase.s,
                &phase.o,
                "cublasGemmBatchedEx (P·V)",
            )?;
            // The residual add is the GEMM's epilogue: beta = 1 accumulates onto x in fp32.
            self.gemm(
                &linear_args(t, d.attn_width(), d.hidden, d.attn_width()),
                (1.0, 1.0),
                [w[O_PROJ].ptr, self.attn.ptr, self.x.ptr],
                "cublasGemmEx (output projection)",
            )?;
            self.rms_norm(self.h.ptr, self.x.ptr, &w[MLP_NORM], t, d.hidden, d.hidden)?;
            self.gemm(
                &linear_args(t, d.hidden, 2 * d.inter, d.hidden),
                (1.0, 0.0),
                [w[GATE_UP].ptr, self.h.ptr, self.gu.ptr],
                "cublasGemmEx (gate/up projection)",
            )?;
            let n = (t * d.inter) as u64;
            launch(
                self.gpu,
                &self.k.swiglu,
                kernels::elementwise_blocks(n, ew),
                ew,
                &[
                    Arg::U64(self.act.ptr),
                    Arg::U64(self.gu.ptr),
                    Arg::I32(t as i32),
                    Arg::I32(d.inter as i32),
                ],
                "swiglu",
            )?;
            self.gemm(
                &linear_args(t, d.inter, d.hidden, d.inter),
                (1.0, 1.0),
                [w[DOWN].ptr, self.act.ptr, self.x.ptr],
                "cublasGemmEx (down projection)",
            )?;
        }
        // Only the last token of each sequence is normed and projected to logits.
        let last_row = self.x.ptr + ((sq - 1) * d.hidden * self.elem) as u64;
        self.rms_norm(
            self.last.ptr,
            last_row,
            &self.globals[FINAL_NORM],
            d.batch,
            sq * d.hidden,
            d.hidden,
        )?;
        self.gemm(
            &linear_args(d.batch, d.hidden, d.vocab, d.hidden),
            (1.0, 0.0),
            [self.globals[LM_HEAD].ptr, self.last.ptr, self.logits.ptr],
            "cublasGemmEx (LM head)",
        )?;
        launch(
            self.gpu,
            &self.k.argmax,
            d.batch as u32,
            kernels::row_threads(d.vocab),
            &[
                Arg::U64(self.tokens.ptr),
                Arg::U64(self.logits.ptr),
                Arg::I32(d.vocab as i32),
            ],
            "argmax_rows",
        )
    }

    /// Enqueues the copy of the generated tokens to `host` (pageable: the copy completes before
    /// the call returns or, at the latest, before the stream's next event).
    fn read_tokens(&self, host: &mut [i32]) -> anyhow::Result<()> {
        // SAFETY: `host` holds `batch` int32s, the size of `tokens`.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(host, self.tokens.ptr, self.gpu.stream.cu_stream())
        }
        .map_err(|e| anyhow!("failed to copy tokens from GPU {}: {e}", self.gpu.ordinal))
    }

    /// Prefill, then `new_tokens − 1` decode steps; each timed with CUDA events until its token
    /// is in host memory.
    fn generate(&self, timer: &EventTimer, new_tokens: usize) -> anyhow::Result<Generation> {
        let d = &self.dims;
        let mut host = vec![0i32; d.batch];
        let ttft_s = timer.time(|| -> anyhow::Result<()> {
            self.forward(self.prompt.ptr, d.prompt_len, 0)?;
            self.read_tokens(&mut host)
        })?;
        let mut decode_steps_s = Vec::with_capacity(new_tokens.saturating_sub(1));
        for i in 1..new_tokens {
            decode_steps_s.push(timer.time(|| -> anyhow::Result<()> {
                self.forward(self.tokens.ptr, 1, d.prompt_len + i - 1)?;
                self.read_tokens(&mut host)
            })?);
        }
        Ok(Generation {
            ttft_s,
            decode_steps_s,
        })
    }

    fn download(&self, buf: &DeviceBuf, dtype: Dtype) -> anyhow::Result<Vec<f32>> {
        Ok(device::decode_all(dtype, &self.gpu.download(buf)?))
    }

    /// The weights as the device stores them, for the host reference.
    fn to_host(&self, dtype: Dtype) -> anyhow::Result<HostModel> {
        let get = |b: &DeviceBuf| -> anyhow::Result<Vec<f64>> {
            Ok(self.download(b, dtype)?.into_iter().map(f64::from).collect())
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push([
                get(&l[0])?,
                get(&l[1])?,
                get(&l[2])?,
                get(&l[3])?,
                get(&l[4])?,
                get(&l[5])?,
            ]);
        }
        Ok(HostModel {
            dims: self.dims,
            layers,
            globals: [
                get(&self.globals[0])?,
                get(&self.globals[1])?,
                get(&self.globals[2])?,
            ],
        })
    }
}

fn launch(
    gpu: &Gpu,
    f: &CudaFunction,
    grid: u32,
    block: u32,
    args: &[Arg],
    what: &str,
) -> anyhow::Result<()> {
    let mut b = gpu.stream.launch_builder(f);
    for a in args {
        match a {
            Arg::U64(v) => b.arg(v),
            Arg::I32(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
        };
    }
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: every call site passes the argument list of the kernel's C signature in
    // kernels::GENERATE, with buffers sized by `Activations` / `MemoryPlan`.
    unsafe { b.launch(cfg) }
        .map_err(|e| anyhow!("{what} kernel launch failed on GPU {}: {e}", gpu.ordinal))?;
    Ok(())
}

/// The model the check runs: two layers, grouped-query attention (4 heads on 2 KV heads), the
/// case's head dimension (at most 128) and RoPE base, a prompt of 5 tokens in 2 sequences and one
/// decode step.
pub fn check_dims(case: &Dims) -> Dims {
    let hd = case.head_dim.min(128);
    Dims {
        hidden: 4 * hd,
        inter: 3 * hd,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: hd,
        vocab: 256,
        rope_theta: case.rope_theta,
        batch: 2,
        prompt_len: 5,
        max_seq: 7,
    }
}

/// Tolerance of ‖logits − ref‖/‖ref‖ over a whole decoder: every stored activation rounds to the
/// dtype. The host emulation of those roundings on the check model lands at 1.0e-7 (fp32),
/// 8.2e-4 (fp16) and 6.2e-3 (bf16), a fifth of these or less (`device_rounding_stays_within…`);
/// the rest is room for cuBLAS's summation order and fast-math `exp`/`rsqrt`.
pub fn tolerance(d: Dtype) -> f64 {
    match d {
        Dtype::Fp16 => 5e-3,
        Dtype::Bf16 => 3e-2,
        _ => 1e-4,
    }
}

/// Runs the check model on the device (prefill, then one decode step fed the device's own
/// argmax) and compares its logits with the float64 host decoder on the downloaded weights.
/// `tokens_equal` receives (device tokens equal to the float64 decoder's argmax, tokens checked).
fn check_small(
    gpu: &Gpu,
    lib: Arc<Cublas>,
    k: Kernels,
    dtype: Dtype,
    case: &Dims,
    tokens_equal: &mut (usize, usize),
) -> Result<f64, CaseError> {
    let d = check_dims(case);
    let m = DeviceModel::new(gpu, lib, k, d, dtype, 0x6e6e_0001)?;
    let prompt: Vec<i32> = (0..d.batch * d.prompt_len)
        .map(|i| (hash_uniform(77, i as u64).abs() * d.vocab as f32) as i32 % d.vocab as i32)
        .collect();
    m.set_prompt(&prompt)?;
    let mut toks = vec![0i32; d.batch];
    m.forward(m.prompt.ptr, d.prompt_len, 0)?;
    m.read_tokens(&mut toks)?;
    gpu.synchronize()?;
    let pre = m.download(&m.logits, dtype)?;
    let first = toks.clone();
    m.gpu.memset(&m.logits, 0xff)?;
    m.forward(m.tokens.ptr, 1, d.prompt_len)?;
    m.read_tokens(&mut toks)?;
    gpu.synchronize()?;
    let dec = m.download(&m.logits, dtype)?;
    let host = m.to_host(dtype)?;
    let mut got = Vec::new();
    let mut want = Vec::new();
    // Device tokens against the float64 decoder's argmax (recorded; a near-tie in bf16 may
    // legitimately differ, the logits' error is what fails the check).
    let (mut same, mut total) = (0usize, 0usize);
    for b in 0..d.batch {
        for (logits, tok) in [(&pre, first[b]), (&dec, toks[b])] {
            let row = &logits[b * d.vocab..][..d.vocab];
            let best = argmax(row);
            if tok < 0 || tok as usize >= d.vocab || row[tok as usize] != row[best] {
                return Err(CaseError::Failed(anyhow!(
                    "{dtype} generate check: the argmax kernel chose token {tok} for sequence {b}, the largest logit is at {best}"
                )));
            }
        }
        let mut cache = host.new_cache();
        let ids: Vec<u32> = prompt[b * d.prompt_len..][..d.prompt_len]
            .iter()
            .map(|&i| i as u32)
            .collect();
        let r = host.forward(&mut cache, &ids, None);
        got.extend_from_slice(&pre[b * d.vocab..][..d.vocab]);
        want.extend_from_slice(&r[d.prompt_len - 1]);
        let prefill_ref = argmax(&r[d.prompt_len - 1]);
        let r = host.forward(&mut cache, &[first[b] as u32], None);
        got.extend_from_slice(&dec[b * d.vocab..][..d.vocab]);
        want.extend_from_slice(&r[0]);
        for (tok, reference) in [(first[b], prefill_ref), (toks[b], argmax(&r[0]))] {
            total += 1;
            same += (tok as usize == reference) as usize;
        }
    }
    *tokens_equal = (same, total);
    let err = rel_error(&got, &want);
    if err.is_nan() || err > tolerance(dtype) {
        return Err(CaseError::Failed(anyhow!(
            "{dtype} generate result is wrong: relative error {err:.3e} of the logits (prefill and one decode step) against a float64 host decoder (tolerance {:.0e})",
            tolerance(dtype)
        )));
    }
    Ok(err)
}

pub fn run(rt: &mut Runtime, p: &GenerateParams, case: &Case) -> Result<CaseOutput, CaseError> {
    p.check().map_err(|e| anyhow!("case {}: {e}", case.label()))?;
    let shape = p.shape().map_err(|e| anyhow!("case {}: {e}", case.label()))?;
    let dims = Dims::new(&shape, p.batch, p.prompt_len, p.new_tokens);
    let lib = rt.cublas()?;
    let module = kernels::generate_module(rt, 0, p.dtype)?;
    let gpu = rt.gpu0();
    let mut tokens_equal = (0, 0);
    let check_err = check_small(
        gpu,
        lib.clone(),
        Kernels::load(&module)?,
        p.dtype,
        &dims,
        &mut tokens_equal,
    )?;
    gpu.synchronize()?;

    let plan = MemoryPlan::of(&dims, p.dtype.size_bytes());
    let free0 = gpu.free_mem_bytes() as u64;
    if plan.total() + RESERVE_BYTES > free0 {
        return Err(CaseError::skipped(format!(
            "the model needs {:.2} GiB of GPU memory ({:.2} GiB weights, {:.2} GiB KV cache, {:.2} GiB activations) and GPU {} has {:.2} GiB free (lower `layers`)",
            gib(plan.total()),
            gib(plan.weights),
            gib(plan.kv_cache),
            gib(plan.activations),
            gpu.ordinal,
            gib(free0)
        )));
    }
    let model = DeviceModel::new(gpu, lib, Kernels::load(&module)?, dims, p.dtype, 0x6e6e_1000)?;
    let prompt: Vec<i32> = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..p.batch * p.prompt_len)
            .map(|_| rng.random_range(0..shape.vocab as i32))
            .collect()
    };
    model.set_prompt(&prompt)?;
    let mut min_free = gpu.free_mem_bytes() as u64;
    let timer = gpu.timer()?;
    let mut rec = rt.recorder(gpu);
    let mut runs: Vec<Generation> = Vec::new();
    let samples = Sampler::new(&case.measure).run(|| -> Result<f64, CaseError> {
        let g = model.generate(&timer, p.new_tokens)?;
        // cuBLAS allocates workspaces at its first calls: the high-water mark is read after each
        // generation, outside the timed region.
        min_free = min_free.min(gpu.free_mem_bytes() as u64);
        rec.tick();
        let total = g.ttft_s + g.decode_steps_s.iter().sum::<f64>();
        runs.push(g);
        Ok(total)
    })?;
    let runs = &runs[samples.warmup_iterations..];

    let mut out = CaseOutput::new(gpu.device_label());
    out.gpu_name = gpu.name.clone();
    out.gpu_index = Some(gpu.ordinal);
    let ttft: Vec<f64> = runs.iter().map(|g| g.ttft_s).collect();
    let tpot: Vec<f64> = runs.iter().filter_map(|g| mean_step(&g.decode_steps_s)).collect();
    out.generation_metrics(p.batch, p.prompt_len, &ttft, &tpot);
    let peak = free0.saturating_sub(min_free);
    if (peak as f64) < 0.9 * plan.total() as f64 {
        out.warn(format!(
            "peak_memory ({} MiB) is below the {} MiB the case allocated: another process freed GPU memory during the case",
            peak >> 20,
            plan.total() >> 20
        ));
    }
    out.metric(
        metric::PEAK_MEMORY,
        "MiB",
        Better::Lower,
        vec![peak as f64 / (1u64 << 20) as f64],
    );
    rec.finish(&mut out);
    out.env.insert(
        format!("generate_{}_check_rel_error", p.dtype),
        format!("{check_err:.2e}"),
    );
    out.env.insert(
        format!("generate_{}_check_tokens", p.dtype),
        format!(
            "{} of {} equal the float64 reference",
            tokens_equal.0, tokens_equal.1
        ),
    );
    out.env.insert(
        "generate_planned_mib".into(),
        format!(
            "weights {} + KV cache {} + activations {}",
            plan.weights >> 20,
            plan.kv_cache >> 20,
            plan.activations >> 20
        ),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(heads: usize, kv_heads: usize) -> Dims {
        Dims {
            hidden: 32,
            inter: 48,
            layers: 2,
            heads,
            kv_heads,
            head_dim: 32 / heads,
            vocab: 50,
            rope_theta: 10_000,
            batch: 1,
            prompt_len: 6,
            max_seq: 10,
        }
    }

    #[test]
    fn llama3_8b_bf16_plan_is_about_16_gb() {
        let d = Dims::new(&ModelShape::LLAMA3_8B, 1, 512, 128);
        let plan = MemoryPlan::of(&d, 2);
        assert_eq!(plan.weights, ModelShape::LLAMA3_8B.parameters() * 2);
        assert!(
            (16.0e9..16.1e9).contains(&(plan.weights as f64)),
            "{}",
            plan.weights
        );
        // 2 (K, V) · 32 layers · 8 KV heads · 640 positions · 128 · 2 bytes = 80 MiB.
        assert_eq!(plan.kv_cache, 80 << 20);
        assert!(plan.activations < 1 << 30, "{}", plan.activations);
        // With layers = 4 the suite's case needs about 3.85 GB: 1.7 GB of layers, 2.1 GB of
        // embedding and LM head.
        let d4 = Dims { layers: 4, ..d };
        let w4 = MemoryPlan::of(&d4, 2).weights as f64;
        assert!((3.8e9..3.9e9).contains(&w4), "{w4}");
    }

    #[test]
    fn plan_counts_every_parameter() {
        for s in [ModelShape::TINY, ModelShape::LLAMA2_7B, ModelShape::LLAMA3_8B] {
            let d = Dims::new(&s, 2, 16, 16);
            assert_eq!(MemoryPlan::of(&d, 4).weights, s.parameters() * 4);
        }
    }

    #[test]
    fn rms_norm_by_hand() {
        // rms of (3, 4) = √12.5
        let y = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        assert!((y[0] - 3.0 / 12.5f64.sqrt()).abs() < 1e-15);
        assert!((y[1] - 8.0 / 12.5f64.sqrt()).abs() < 1e-15);
        assert!((y[0] - 0.848_528_137_423_857).abs() < 1e-12);
        let y = rms_norm(&[1e-3], &[1.0], 1e-5);
        assert!((y[0] - 1e-3 / (1e-6f64 + 1e-5).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn rope_by_hand() {
        // d = 4: pairs (0, 2) at frequency 1 and (1, 3) at 10000^-0.5 = 0.01.
        let mut v = [1.0, 2.0, 3.0, 4.0];
        apply_rope(&mut v, 1, 10_000, None);
        let (c1, s1) = (0.540_302_305_868_139_8, 0.841_470_984_807_896_5);
        let (c2, s2) = (0.01f64.cos(), 0.01f64.sin());
        assert!((v[0] - (1.0 * c1 - 3.0 * s1)).abs() < 1e-14, "{v:?}");
        assert!((v[2] - (3.0 * c1 + 1.0 * s1)).abs() < 1e-14);
        assert!((v[1] - (2.0 * c2 - 4.0 * s2)).abs() < 1e-14);
        assert!((v[3] - (4.0 * c2 + 2.0 * s2)).abs() < 1e-14);
        assert!((v[0] - -1.984_110_648_555_549_5).abs() < 1e-12);
        // Position 0 is the identity; rotations keep each pair's norm.
        let mut w = [1.0, 2.0, 3.0, 4.0];
        apply_rope(&mut w, 0, 500_000, None);
        assert_eq!(w, [1.0, 2.0, 3.0, 4.0]);
        apply_rope(&mut w, 1234, 500_000, None);
        assert!((w[0] * w[0] + w[2] * w[2] - 10.0).abs() < 1e-12);
        assert!((rope_angle(3, 1, 4, 10_000) - 0.03).abs() < 1e-15);
    }

    #[test]
    fn kv_cache_decoding_matches_a_full_prefill() {
        let m = HostModel::random(small(4, 2), 5);
        let toks = [3u32, 17, 42, 8, 0, 49, 21];
        let mut full = m.new_cache();
        let all = m.forward(&mut full, &toks, None);
        let mut c = m.new_cache();
        let mut got = m.forward(&mut c, &toks[..4], None);
        for t in &toks[4..] {
            got.extend(m.forward(&mut c, &[*t], None));
        }
        assert_eq!(c.len(), toks.len());
        for (a, b) in all.iter().zip(&got) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-12, "{x} vs {y}");
            }
        }
        // Causal: a token's logits do not depend on later tokens.
        let mut c2 = m.new_cache();
        let prefix = m.forward(&mut c2, &toks[..3], None);
        assert_eq!(prefix[2], all[2]);
        // ...but do on earlier ones.
        let mut c3 = m.new_cache();
        let other = m.forward(&mut c3, &[4, 17, 42], None);
        assert_ne!(other[2], all[2]);
    }

    #[test]
    fn grouped_query_attention_equals_repeated_kv_heads() {
        // heads 4 on 1 KV head versus 4 KV heads holding copies of it.
        let g = HostModel::random(small(4, 1), 9);
        let mut mha = HostModel::random(small(4, 4), 9);
        let hd = g.dims.head_dim;
        let h = g.dims.hidden;
        for (lm, lg) in mha.layers.iter_mut().zip(&g.layers) {
            for (t, src) in lg.iter().enumerate() {
                if t != QKV {
                    lm[t] = src.clone();
                }
            }
            let row = |r: usize| &lg[QKV][r * h..][..h];
            let mut qkv = Vec::new();
            for r in 0..4 * hd {
                qkv.extend_from_slice(row(r)); // query heads
            }
            for base in [4 * hd, 5 * hd] {
                for _ in 0..4 {
                    for r in 0..hd {
                        qkv.extend_from_slice(row(base + r)); // K then V, repeated per head
                    }
                }
            }
            lm[QKV] = qkv;
        }
        mha.globals = g.globals.clone();
        let toks = [1u32, 2, 3, 4, 5];
        let a = g.forward(&mut g.new_cache(), &toks, None);
        let b = mha.forward(&mut mha.new_cache(), &toks, None);
        for (x, y) in a.concat().iter().zip(b.concat().iter()) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
    }

    #[test]
    fn host_attention_agrees_with_the_attention_workloads_reference() {
        // One layer's attention, done through the offsets and GEMM arguments the device uses,
        // emulated as column-major GEMMs on host arrays, against attention::reference.
        let d = Dims {
            batch: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            hidden: 32,
            prompt_len: 3,
            max_seq: 7,
            ..small(4, 2)
        };
        for (sq, pos0) in [(3usize, 0usize), (1, 4)] {
            let skv = pos0 + sq;
            let t = d.batch * sq;
            let rnd = |n: usize, seed: u64| -> Vec<f64> {
                (0..n as u64).map(|i| hash_uniform(seed, i) as f64).collect()
            };
            let qkv = rnd(t * d.qkv_width(), 1);
            let kc = rnd(d.batch * d.kv_heads * d.max_seq * d.head_dim, 2);
            let vc = rnd(kc.len(), 3);
            let mut s = vec![f64::NAN; Activations::of(&d).scores];
            let mut o = vec![f64::NAN; d.batch * d.prompt_len * d.attn_width()];
            let off = attn_offsets(&d, sq);
            let scale = 1.0 / (d.head_dim as f64).sqrt();
            for i in 0..d.batch * d.heads {
                colmajor_gemm(
                    &score_args(&d, sq, skv),
                    scale,
                    &kc[off.kv[i]..],
                    &qkv[off.q[i]..],
                    &mut s[off.s[i]..],
                );
            }
            // Causal softmax over rows max_seq apart (the kernel's rule).
            for r in 0..d.batch * d.heads * sq {
                let row = &mut s[r * d.max_seq..][..skv];
                let limit = (r % sq + pos0 + 1).min(skv);
                let m = row[..limit].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row[..limit].iter().map(|x| (x - m).exp()).sum();
                for (j, x) in row.iter_mut().enumerate() {
                    *x = if j < limit { (*x - m).exp() / z } else { 0.0 };
                }
            }
            for i in 0..d.batch * d.heads {
                colmajor_gemm(
                    &pv_args(&d, sq, skv),
                    1.0,
                    &vc[off.kv[i]..],
                    &s[off.s[i]..],
                    &mut o[off.o[i]..],
                );
            }
            // The same problem in attention::reference's layout.
            let sh = super::super::attention::Shape {
                b: d.batch,
                h: d.heads,
                kvh: d.kv_heads,
                sq,
                skv,
                d: d.head_dim,
                causal: true,
            };
            let mut q = Vec::new();
            for b in 0..d.batch {
                for h in 0..d.heads {
                    for i in 0..sq {
                        q.extend_from_slice(
                            &qkv[(b * sq + i) * d.qkv_width() + h * d.head_dim..][..d.head_dim],
                        );
                    }
                }
            }
            let mut k = Vec::new();
            let mut v = Vec::new();
            for bg in 0..d.batch * d.kv_heads {
                k.extend_from_slice(&kc[bg * d.max_seq * d.head_dim..][..skv * d.head_dim]);
                v.extend_from_slice(&vc[bg * d.max_seq * d.head_dim..][..skv * d.head_dim]);
            }
            let f = |x: &Vec<f64>| x.iter().map(|v| *v as f32).collect::<Vec<f32>>();
            let want = super::super::attention::reference(&sh, &f(&q), &f(&k), &f(&v));
            for b in 0..d.batch {
                for h in 0..d.heads {
                    for i in 0..sq {
                        for c in 0..d.head_dim {
                            let got = o[(b * sq + i) * d.attn_width() + h * d.head_dim + c];
                            let w = want[((b * d.heads + h) * sq + i) * d.head_dim + c];
                            assert!((got - w).abs() < 1e-5, "sq {sq}: {got} vs {w}");
                        }
                    }
                }
            }
        }
    }

    /// C = alpha·op(A)·op(B) as column-major cuBLAS defines it (beta = 0).
    fn colmajor_gemm(g: &GemmArgs, alpha: f64, a: &[f64], b: &[f64], c: &mut [f64]) {
        let at = |r: usize, k: usize| {
            if g.op_a == ffi::CUBLAS_OP_N {
                a[r + k * g.lda]
            } else {
                a[k + r * g.lda]
            }
        };
        let bt = |k: usize, col: usize| {
            if g.op_b == ffi::CUBLAS_OP_N {
                b[k + col * g.ldb]
            } else {
                b[col + k * g.ldb]
            }
        };
        for i in 0..g.m {
            for j in 0..g.n {
                c[i + j * g.ldc] = alpha * (0..g.k).map(|l| at(i, l) * bt(l, j)).sum::<f64>();
            }
        }
    }

    #[test]
    fn linear_args_compute_x_times_w_transposed() {
        let (rows, inp, out, ldx) = (3, 4, 5, 6);
        let w: Vec<f64> = (0..out * inp).map(|i| (i as f64 * 0.3).sin()).collect();
        let x: Vec<f64> = (0..rows * ldx).map(|i| (i as f64 * 0.7).cos()).collect();
        let mut y = vec![0.0; rows * out];
        colmajor_gemm(&linear_args(rows, inp, out, ldx), 1.0, &w, &x, &mut y);
        for r in 0..rows {
            for o in 0..out {
                let want: f64 = (0..inp).map(|i| x[r * ldx + i] * w[o * inp + i]).sum();
                assert!((y[r * out + o] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn random_weights_have_the_planned_spread() {
        let m = HostModel::random(small(4, 2), 3);
        let qkv = &m.layers[0][QKV];
        assert!(qkv.iter().all(|v| *v != 0.0));
        let var = qkv.iter().map(|v| v * v).sum::<f64>() / qkv.len() as f64;
        assert!((var - 1.0 / 32.0).abs() < 0.2 / 32.0, "{var}");
        assert!(m.layers[1][ATTN_NORM].iter().all(|g| (0.75..=1.25).contains(g)));
        // Every tensor has its own stream.
        assert_ne!(m.layers[0][QKV][..8], m.layers[1][QKV][..8]);
    }

    #[test]
    fn device_rounding_stays_within_the_check_tolerance() {
        // Emulate the device's storage rounding on the check model and compare with float64:
        // the tolerance must hold with room to spare, and must not be so loose that a broken
        // decoder (a different model) passes.
        let d = check_dims(&Dims::new(&ModelShape::LLAMA3_8B, 1, 16, 16));
        let m = HostModel::random(d, 11);
        let toks: Vec<u32> = (0..6).map(|i| (i * 37 + 5) % d.vocab as u32).collect();
        let exact = m.forward(&mut m.new_cache(), &toks, None).concat();
        for dt in [Dtype::Fp32, Dtype::Fp16, Dtype::Bf16] {
            let got: Vec<f32> = m
                .forward(&mut m.new_cache(), &toks, Some(dt))
                .concat()
                .iter()
                .map(|v| *v as f32)
                .collect();
            let err = rel_error(&got, &exact);
            eprintln!(
                "{dt}: emulated rounding error {err:.2e}, tolerance {:.0e}",
                tolerance(dt)
            );
            assert!(err < tolerance(dt) / 2.0, "{dt}: {err}");
        }
        let other = HostModel::random(d, 12);
        let wrong: Vec<f32> = other
            .forward(&mut other.new_cache(), &toks, None)
            .concat()
            .iter()
            .map(|v| *v as f32)
            .collect();
        assert!(rel_error(&wrong, &exact) > 10.0 * tolerance(Dtype::Bf16));
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }

    #[test]
    fn attention_offsets_share_kv_blocks_across_a_group() {
        let d = Dims {
            batch: 2,
            ..small(4, 2)
        };
        let off = attn_offsets(&d, 1);
        let block = d.max_seq * d.head_dim;
        assert_eq!(
            off.kv,
            vec![0, 0, block, block, 2 * block, 2 * block, 3 * block, 3 * block]
        );
        assert_eq!(off.q[4], d.qkv_width()); // sequence 1, head 0: one row on
        assert_eq!(off.s[5], 5 * d.max_seq);
        assert_eq!(off.o[1], d.head_dim);
        assert_eq!(check_dims(&d).max_seq, check_dims(&d).prompt_len + 2);
    }
}
