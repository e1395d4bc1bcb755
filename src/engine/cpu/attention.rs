//! Attention on the CPU: softmax(Q·Kᵀ/√d + mask)·V as candle matmuls, with grouped KV heads
//! served without copying them (each KV head multiplies the stacked queries of its group).

use std::time::Instant;

use candle_core::{DType, Device as CDevice, Tensor, D};

use super::{candle_err, cpu_dtype, randn};
use crate::case::Case;
use crate::engine::CaseOutput;
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::attention::{AttentionParams, Backend};
use crate::workload::metric;

pub fn run(p: &AttentionParams, case: &Case) -> Result<CaseOutput, CaseError> {
    if !matches!(p.backend, Backend::Auto | Backend::Math) {
        return Err(CaseError::skipped(format!(
            "backend {:?} is a CUDA kernel; the CPU engine computes matmul-softmax-matmul (backend = \"math\")",
            p.backend
        )));
    }
    let dtype = cpu_dtype(p.dtype)?;
    let attn = Attention::new(p, dtype).map_err(candle_err)?;
    attn.check().map_err(candle_err)?;
    let samples = Sampler::new(&case.measure).run(|| -> Result<f64, CaseError> {
        let t = Instant::now();
        let y = attn.forward().map_err(candle_err)?;
        let dt = t.elapsed().as_secs_f64();
        drop(y);
        Ok(dt)
    })?;
    let mut out = CaseOutput::new("cpu");
    out.latency_and_rate(&samples.values, p.flops(), metric::THROUGHPUT, "GFLOP/s", 1e9);
    Ok(out)
}

struct Attention {
    b: usize,
    h: usize,
    kvh: usize,
    sq: usize,
    skv: usize,
    d: usize,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Option<Tensor>,
    scale: f64,
}

impl Attention {
    fn new(p: &AttentionParams, dtype: DType) -> candle_core::Result<Self> {
        let (b, h, kvh) = (p.batch as usize, p.heads as usize, p.kv_heads() as usize);
        let (sq, skv, d) = (p.seq_q as usize, p.seq_kv() as usize, p.head_dim as usize);
        let q = randn(&[b, h, sq, d], dtype)?;
        let k = randn(&[b, kvh, skv, d], dtype)?;
        let v = randn(&[b, kvh, skv, d], dtype)?;
        let mask = if p.causal {
            Some(causal_mask(sq, skv, dtype)?)
        } else {
            None
        };
        Ok(Attention {
            b,
            h,
            kvh,
            sq,
            skv,
            d,
            q,
            k,
            v,
            mask,
            scale: 1.0 / (d as f64).sqrt(),
        })
    }

    /// Output of shape (b, h, sq, d).
    fn forward(&self) -> candle_core::Result<Tensor> {
        let g = self.h / self.kvh;
        // (b, h, sq, d) → (b, kvh, g·sq, d): query heads of one group share their KV head.
        let q = self.q.reshape((self.b, self.kvh, g * self.sq, self.d))?;
        let scores = (q.matmul(&self.k.t()?)? * self.scale)?;
        let scores = match &self.mask {
            Some(m) => scores
                .reshape((self.b, self.kvh, g, self.sq, self.skv))?
                .broadcast_add(m)?
                .reshape((self.b, self.kvh, g * self.sq, self.skv))?,
            None => scores,
        };
        // Softmax in fp32, as fused attention kernels do, then back to the compute dtype.
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(self.q.dtype())?;
        probs.matmul(&self.v)?.reshape((self.b, self.h, self.sq, self.d))
    }

    /// Compares one (batch, head) against a direct computation with repeated KV heads.
    fn check(&self) -> candle_core::Result<()> {
        let y = self.forward()?.to_dtype(DType::F32)?;
        let (bi, hi) = (self.b - 1, self.h - 1);
        let kv = hi / (self.h / self.kvh);
        let q = self.q.get(bi)?.get(hi)?.to_dtype(DType::F32)?;
        let k = self.k.get(bi)?.get(kv)?.to_dtype(DType::F32)?;
        let v = self.v.get(bi)?.get(kv)?.to_dtype(DType::F32)?;
        let mut s = (q.matmul(&k.t()?)? * self.scale)?;
        if let Some(m) = &self.mask {
            s = s.broadcast_add(&m.to_dtype(DType::F32)?)?;
        }
        let want = candle_nn::ops::softmax(&s, D::Minus1)?.matmul(&v)?;
        let got = y.get(bi)?.get(hi)?;
        let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let tol = if self.q.dtype() == DType::F32 { 1e-3 } else { 0.1 };
        // NaN fails too.
        if err.is_nan() || err > tol {
            candle_core::bail!("attention result differs from the reference by {err}");
        }
        Ok(())
    }
}

/// Additive causal mask (sq, skv): query i sees keys j ≤ i + (skv − sq), as with a KV cache.
fn causal_mask(sq: usize, skv: usize, dtype: DType) -> candle_core::Result<Tensor> {
    let off = skv.saturating_sub(sq);
    let data: Vec<f32> = (0..sq)
        .flat_map(|i| (0..skv).map(move |j| if j <= i + off { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(data, (sq, skv), &CDevice::Cpu)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_shape_and_offset() {
        let m = causal_mask(2, 4, DType::F32).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0], [0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], [0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn gqa_matches_reference() {
        let p: AttentionParams = serde_json::from_str(
            r#"{"batch":2,"heads":4,"kv_heads":2,"seq_q":8,"seq_kv":12,"head_dim":16,"causal":true}"#,
        )
        .unwrap();
        Attention::new(&p, DType::F32).unwrap().check().unwrap();
    }
}
