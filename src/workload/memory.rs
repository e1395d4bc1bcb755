//! The memory plan of a token-generation case: bytes per rank for weights, KV cache,
//! activations and workspace at a given tensor-parallel degree, computed before anything runs,
//! and the smallest degree whose plan fits a GPU; and the bytes a GEMM case holds, checked
//! against the memory available before anything is allocated.
//!
//! Sharding follows Megatron-LM (Shoeybi et al., 2019, §3): attention heads and the MLP's gate
//! and up projections are split by columns, o_proj and down_proj by rows, the embedding and the
//! LM head by vocabulary; RMSNorm weights are replicated. The degree must divide the heads, the
//! KV heads, the MLP width and the vocabulary (the torch engine's sharding does not replicate
//! KV heads).

use serde::Serialize;

use super::gemm::GemmParams;
use super::generate::{GenerateParams, ModelShape};
use super::Dtype;

/// Bytes per GiB, for messages.
const GIB: f64 = (1u64 << 30) as f64;

/// Device memory a rank needs beyond its tensors: cuBLAS/cuBLASLt workspaces (32 MiB each on
/// Hopper, per the cuBLAS documentation's recommendation for `cublasSetWorkspace`) and, with
/// more than one rank, NCCL's buffers (`NCCL_BUFFSIZE` 4 MiB × 2 directions × up to 32
/// channels). The CUDA context itself (a few hundred MiB) is outside the GPU's reported total
/// only on some drivers, so it is not counted here; `tagbench run` compares with the free
/// memory it reads from the device instead.
const LIBRARY_WORKSPACE: u64 = 64 << 20;
const NCCL_BUFFERS: u64 = 256 << 20;

/// Bytes per rank of one generation case, by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    pub tensor_parallel: usize,
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
    pub workspace: u64,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.activations + self.workspace
    }

    pub fn fits(&self, gpu_memory: u64) -> bool {
        self.total() <= gpu_memory
    }
}

/// Why a tensor-parallel degree cannot shard a model: it must divide the heads, KV heads, the
/// MLP width and the vocabulary, as the torch engine's sharding requires.
pub fn shardable(s: &ModelShape, tp: usize) -> Result<(), String> {
    if tp == 0 {
        return Err("tensor_parallel must be at least 1".into());
    }
    for (name, n) in [
        ("heads", s.heads),
        ("kv_heads", s.kv_heads),
        ("intermediate", s.intermediate),
        ("vocab", s.vocab),
    ] {
        if n % tp != 0 {
            return Err(format!("tensor_parallel={tp} does not divide {name} ({n})"));
        }
    }
    Ok(())
}

/// The plan of a model at `tp` ranks for `batch` sequences of `prompt_len + new_tokens` tokens,
/// weights and activations in `dtype` (logits and softmax in fp32, as every engine computes them).
pub fn plan(
    s: &ModelShape,
    dtype: Dtype,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    tp: usize,
) -> Result<MemoryPlan, String> {
    shardable(s, tp)?;
    let e = dtype.size_bytes() as u64;
    let (h, d) = (s.hidden as u64, s.head_dim() as u64);
    let n = tp as u64;
    let q_heads = (s.heads / tp) as u64;
    let kv = (s.kv_heads / tp) as u64;
    let inter = s.intermediate as u64 / n;
    let vocab = s.vocab as u64 / n;

    // Per layer: q and o (heads·d × hidden each), k and v (kv·d × hidden each), gate, up and
    // down (inter × hidden each), two RMSNorm weights.
    let layer = 2 * q_heads * d * h + 2 * kv * d * h + 3 * inter * h + 2 * h;
    // Embedding and LM head split by vocabulary, one final norm.
    let global = 2 * vocab * h + h;
    let weights = (layer * s.layers as u64 + global) * e;

    let context = (prompt_len + new_tokens) as u64;
    let b = batch as u64;
    let kv_cache = b * context * s.layers as u64 * 2 * kv * d * e;

    // The prefill is the largest step: one layer's buffers are live at a time (inference keeps
    // no activations for a backward pass). Residual stream, its normed copy and the all-reduce
    // output (hidden each), q/k/v and the attention output, gate/up/activation, the fp32 scores
    // of the prompt against the whole context, and fp32 logits of the last position.
    let t = b * prompt_len as u64;
    let elems = t * (3 * h + (2 * q_heads + 2 * kv) * d + 3 * inter);
    let scores = b * q_heads * prompt_len as u64 * context * 4;
    let logits = b * vocab * 4;
    let activations = elems * e + scores + logits;

    let workspace = LIBRARY_WORKSPACE + if tp > 1 { NCCL_BUFFERS } else { 0 };
    Ok(MemoryPlan {
        tensor_parallel: tp,
        weights,
        kv_cache,
        activations,
        workspace,
    })
}

/// The plan of a case's parameters at their own `tensor_parallel`.
pub fn plan_of(p: &GenerateParams, tp: usize) -> Result<MemoryPlan, String> {
    plan(&p.shape()?, p.dtype, p.batch, p.prompt_len, p.new_tokens, tp)
}

/// The smallest power-of-two degree (up to the head count) that shards the model and whose plan
/// fits `gpu_memory`.
pub fn smallest_fitting(p: &GenerateParams, gpu_memory: u64) -> Option<MemoryPlan> {
    let heads = p.shape().ok()?.heads;
    std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|&n| n <= heads)
        .filter_map(|n| plan_of(p, n).ok())
        .find(|m| m.fits(gpu_memory))
}

/// The reason a case cannot run at its degree on GPUs of `gpu_memory` bytes, naming what would
/// fit (`None` when it fits).
pub fn does_not_fit(p: &GenerateParams, model: &str, tp: usize, gpu_memory: u64) -> Option<String> {
    let m = plan_of(p, tp).ok()?;
    if m.fits(gpu_memory) {
        return None;
    }
    let need = |m: &MemoryPlan| format!("{:.1} GiB", m.total() as f64 / GIB);
    let head = format!(
        "{model} {} needs {} per rank at tensor_parallel={tp} ({:.1} GiB weights, {:.1} GiB KV cache, {:.1} GiB activations)",
        p.dtype,
        need(&m),
        m.weights as f64 / GIB,
        m.kv_cache as f64 / GIB,
        m.activations as f64 / GIB,
    );
    let gpus = format!("{:.0} GiB GPUs", gpu_memory as f64 / GIB);
    Some(match smallest_fitting(p, gpu_memory) {
        Some(f) => format!(
            "{head}; {gpus} need tensor_parallel ≥ {} ({} per rank)",
            f.tensor_parallel,
            need(&f)
        ),
        None => format!("{head}; it does not fit {gpus} at any tensor_parallel up to the head count"),
    })
}

/// Bytes a GEMM case holds at once: `sets` rotated copies of A and B (rotated past the cache)
/// and one C.
pub fn gemm_bytes(p: &GemmParams, sets: usize) -> u64 {
    let e = p.dtype.size_bytes() as u64;
    let ab = p.m.saturating_mul(p.k).saturating_add(p.k.saturating_mul(p.n));
    let c = p.m.saturating_mul(p.n);
    ab.saturating_mul(e)
        .saturating_mul(sets as u64)
        .saturating_add(c.saturating_mul(e.max(2)))
}

/// Why a GEMM of `needed` bytes cannot run where `available` bytes are free (`None`: it fits).
pub fn gemm_does_not_fit(needed: u64, sets: usize, available: u64) -> Option<String> {
    (needed > available).then(|| {
        format!(
            "needs {needed} bytes ({:.1} GiB: A and B ×{sets}, C) but {available} bytes ({:.1} GiB) of memory are available; not allocated",
            needed as f64 / GIB,
            available as f64 / GIB
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB_U: u64 = 1 << 30;

    fn params(model: &str, dtype: &str, prompt: usize, new: usize) -> GenerateParams {
        serde_json::from_str(&format!(
            r#"{{"model":"{model}","dtype":"{dtype}","prompt_len":{prompt},"new_tokens":{new}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn weights_at_one_rank_are_every_parameter() {
        for s in [
            ModelShape::LLAMA2_7B,
            ModelShape::LLAMA3_8B,
            ModelShape::LLAMA3_70B,
        ] {
            let m = plan(&s, Dtype::Bf16, 1, 16, 16, 1).unwrap();
            assert_eq!(m.weights, s.parameters() * 2);
        }
    }

    #[test]
    fn hand_arithmetic_llama2_7b_fp16() {
        // 32 layers × (4·4096² + 3·4096·11008 + 2·4096) + 2·32000·4096 + 4096 = 6,738,415,616
        // parameters; fp16: 13,476,831,232 bytes.
        let m = plan(&ModelShape::LLAMA2_7B, Dtype::Fp16, 1, 2048, 128, 1).unwrap();
        assert_eq!(m.weights, 13_476_831_232);
        // KV: 1 × 2176 tokens × 32 layers × 2 × 32 heads × 128 × 2 bytes.
        assert_eq!(m.kv_cache, 2176 * 32 * 2 * 32 * 128 * 2);
        // At 2 ranks: half of everything but the norms (65 × 4096 elements, replicated).
        let m2 = plan(&ModelShape::LLAMA2_7B, Dtype::Fp16, 1, 2048, 128, 2).unwrap();
        assert_eq!(m2.weights, (6_738_415_616 - 65 * 4096) / 2 * 2 + 65 * 4096 * 2);
        assert_eq!(m2.kv_cache, m.kv_cache / 2);
    }

    #[test]
    fn hand_arithmetic_llama3_8b_bf16() {
        // 32 × (2·4096² + 2·1024·4096 + 3·4096·14336 + 2·4096) + 2·128256·4096 + 4096
        // = 8,030,261,248 parameters.
        assert_eq!(ModelShape::LLAMA3_8B.parameters(), 8_030_261_248);
        let m = plan(&ModelShape::LLAMA3_8B, Dtype::Bf16, 1, 2048, 128, 1).unwrap();
        assert_eq!(m.weights, 16_060_522_496);
        // GQA: 8 KV heads of 128.
        assert_eq!(m.kv_cache, 2176 * 32 * 2 * 8 * 128 * 2);
        // 8 ranks share 8 KV heads: one each.
        let m8 = plan(&ModelShape::LLAMA3_8B, Dtype::Bf16, 1, 2048, 128, 8).unwrap();
        assert_eq!(m8.kv_cache, m.kv_cache / 8);
    }

    #[test]
    fn hand_arithmetic_llama3_70b_bf16() {
        // 80 × (2·8192² + 2·1024·8192 + 3·8192·28672 + 2·8192) + 2·128256·8192 + 8192
        // = 70,553,706,496 parameters; bf16: 141,107,412,992 bytes = 131.4 GiB.
        assert_eq!(ModelShape::LLAMA3_70B.parameters(), 70_553_706_496);
        let m = plan(&ModelShape::LLAMA3_70B, Dtype::Bf16, 1, 2048, 128, 1).unwrap();
        assert_eq!(m.weights, 141_107_412_992);
        assert!((m.weights as f64 / GIB - 131.4).abs() < 0.05);
        let m4 = plan(&ModelShape::LLAMA3_70B, Dtype::Bf16, 1, 2048, 128, 4).unwrap();
        let norms = (80 * 2 + 1) * 8192 * 2;
        assert_eq!(m4.weights, (m.weights - norms) / 4 + norms);
    }

    #[test]
    fn llama3_70b_needs_more_than_one_80_gib_gpu() {
        let p = params("llama-3-70b", "bf16", 2048, 128);
        let gpu = 80 * GIB_U;
        assert!(!plan_of(&p, 1).unwrap().fits(gpu));
        assert!(plan_of(&p, 4).unwrap().fits(gpu));
        assert_eq!(smallest_fitting(&p, gpu).unwrap().tensor_parallel, 2);
        let why = does_not_fit(&p, "llama-3-70b", 1, gpu).unwrap();
        assert!(why.contains("tensor_parallel ≥ 2"), "{why}");
        assert!(why.contains("131.4 GiB weights"), "{why}");
        assert_eq!(does_not_fit(&p, "llama-3-70b", 4, gpu), None);
    }

    #[test]
    fn more_ranks_never_need_more_per_rank() {
        let p = params("llama-3-70b", "bf16", 2048, 128);
        let totals: Vec<u64> = [1, 2, 4, 8].map(|n| plan_of(&p, n).unwrap().total()).to_vec();
        assert!(totals.windows(2).all(|w| w[1] < w[0]), "{totals:?}");
    }

    #[test]
    fn a_gemm_too_large_is_refused_with_both_sizes() {
        let mut p = crate::workload::gemm::GemmParams {
            m: 0,
            n: 0,
            k: 0,
            size: Some(1_000_000),
            dtype: Dtype::Fp32,
            layout: crate::workload::gemm::Layout::Nn,
            fast_accum: None,
        };
        p.normalize().unwrap();
        let need = gemm_bytes(&p, 1);
        assert_eq!(need, 12_000_000_000_000);
        assert_eq!(
            gemm_does_not_fit(need, 1, 8 << 30).unwrap(),
            "needs 12000000000000 bytes (11175.9 GiB: A and B ×1, C) but 8589934592 bytes (8.0 GiB) of memory are available; not allocated"
        );
        assert_eq!(gemm_does_not_fit(1 << 20, 1, 8 << 30), None);
    }

    #[test]
    fn unshardable_degrees_are_refused() {
        assert!(shardable(&ModelShape::LLAMA3_8B, 3)
            .unwrap_err()
            .contains("heads"));
        assert!(shardable(&ModelShape::TINY, 0).is_err());
        // 16 ranks over 8 KV heads would need KV replication, which the engine does not do.
        assert!(shardable(&ModelShape::LLAMA3_70B, 16)
            .unwrap_err()
            .contains("kv_heads (8)"));
        assert!(shardable(&ModelShape::LLAMA3_70B, 8).is_ok());
    }
}
