//! Attention parameters (softmax(Q·Kᵀ/√d)·V with optional causal mask and grouped KV heads).

use serde::{Deserialize, Serialize};

use super::compile::Compile;
use super::Dtype;

/// Which implementation the engine should use. `auto` lets it choose (torch SDPA picks a
/// backend; the native CPU engine always computes matmul-softmax-matmul).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Math,
    Flash,
    Efficient,
    Cudnn,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionParams {
    #[serde(default = "one")]
    pub batch: u64,
    pub heads: u64,
    /// Key/value heads; fewer than `heads` is grouped-query attention. Defaults to `heads`.
    #[serde(default)]
    pub kv_heads: Option<u64>,
    pub seq_q: u64,
    /// Defaults to `seq_q`.
    #[serde(default)]
    pub seq_kv: Option<u64>,
    pub head_dim: u64,
    #[serde(default)]
    pub causal: bool,
    #[serde(default = "default_dtype")]
    pub dtype: Dtype,
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// torch.compile's mode (torch engine; a sweep axis).
    #[serde(default)]
    pub compile: Compile,
    /// Keep the image's compilation cache across workers instead of a fresh one per worker.
    #[serde(default)]
    pub warm_cache: bool,
}

fn one() -> u64 {
    1
}
fn default_dtype() -> Dtype {
    Dtype::Fp32
}
fn default_backend() -> Backend {
    Backend::Auto
}

impl AttentionParams {
    pub fn kv_heads(&self) -> u64 {
        self.kv_heads.unwrap_or(self.heads)
    }

    pub fn seq_kv(&self) -> u64 {
        self.seq_kv.unwrap_or(self.seq_q)
    }

    pub fn check(&self) -> Result<(), String> {
        if [self.batch, self.heads, self.seq_q, self.head_dim].contains(&0) || self.seq_kv() == 0 {
            return Err("batch, heads, seq_q, seq_kv and head_dim must be positive".into());
        }
        let kv = self.kv_heads();
        if kv == 0 || self.heads % kv != 0 {
            return Err(format!(
                "heads ({}) must be a multiple of kv_heads ({kv})",
                self.heads
            ));
        }
        if matches!(self.dtype, Dtype::Tf32 | Dtype::Fp8) {
            return Err(format!(
                "attention supports fp32, fp16 and bf16, not {}",
                self.dtype
            ));
        }
        Ok(())
    }

    /// 4·b·h·sq·skv·d (two matmuls of 2·sq·skv·d each), halved when causal, as FlashAttention counts.
    pub fn flops(&self) -> f64 {
        let f = 4.0
            * self.batch as f64
            * self.heads as f64
            * self.seq_q as f64
            * self.seq_kv() as f64
            * self.head_dim as f64;
        if self.causal {
            f / 2.0
        } else {
            f
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(causal: bool) -> AttentionParams {
        AttentionParams {
            batch: 2,
            heads: 8,
            kv_heads: Some(2),
            seq_q: 128,
            seq_kv: None,
            head_dim: 64,
            causal,
            dtype: Dtype::Fp32,
            backend: Backend::Auto,
            compile: Compile::None,
            warm_cache: false,
        }
    }

    #[test]
    fn causal_halves_flops() {
        assert_eq!(p(false).flops(), 4.0 * 2.0 * 8.0 * 128.0 * 128.0 * 64.0);
        assert_eq!(p(true).flops() * 2.0, p(false).flops());
    }

    #[test]
    fn gqa_needs_divisible_heads() {
        let mut q = p(false);
        q.kv_heads = Some(3);
        assert!(q.check().unwrap_err().contains("multiple"));
    }
}
