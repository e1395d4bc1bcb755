//! Token generation on the CPU: candle-transformers' Llama with random weights (a VarMap, never
//! zeros), a prefill of the prompt, then greedy decoding with the KV cache.

use std::time::Instant;

use candle_core::{DType, Device as CDevice, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::llama::{Cache, Config, Llama};

use super::{candle_err, cpu_dtype, memory};
use crate::case::{Better, Case};
use crate::engine::{mean_step, CaseOutput};
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::generate::{GenerateParams, ModelShape};
use crate::workload::metric;

/// candle's Llama configuration for a model shape.
pub fn llama_config(s: &ModelShape) -> Config {
    Config {
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        vocab_size: s.vocab,
        num_hidden_layers: s.layers,
        num_attention_heads: s.heads,
        num_key_value_heads: s.kv_heads,
        use_flash_attn: false,
        rms_norm_eps: 1e-5,
        rope_theta: s.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: s.max_positions,
        tie_word_embeddings: false,
    }
}

/// One generation's timings.
struct Generation {
    ttft_s: f64,
    decode_steps_s: Vec<f64>,
}

pub fn run(p: &GenerateParams, case: &Case) -> Result<CaseOutput, CaseError> {
    let dtype = cpu_dtype(p.dtype)?;
    let shape = p.shape().map_err(|e| CaseError::Failed(anyhow::anyhow!(e)))?;
    let weight_bytes = shape.parameters() as f64 * dtype.size_in_bytes() as f64;
    if let Some(avail) = memory::available_bytes() {
        // Weights, plus room for the KV cache and activations.
        if weight_bytes * 1.2 > avail as f64 {
            return Err(CaseError::skipped(format!(
                "the model needs {:.1} GiB for its weights and {:.1} GiB of memory is available (lower `layers`)",
                weight_bytes / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            )));
        }
    }
    let tracked = memory::reset_peak();
    let cfg = llama_config(&shape);
    let dev = CDevice::Cpu;
    let varmap = VarMap::new();
    let model = Llama::load(VarBuilder::from_varmap(&varmap, dtype, &dev), &cfg).map_err(candle_err)?;
    let prompt: Vec<u32> = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..p.batch * p.prompt_len)
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect()
    };
    let prompt = Tensor::from_vec(prompt, (p.batch, p.prompt_len), &dev).map_err(candle_err)?;

    let mut runs: Vec<Generation> = Vec::new();
    let samples = Sampler::new(&case.measure).run(|| -> Result<f64, CaseError> {
        let g = generate(&model, &cfg, &prompt, p.new_tokens, dtype).map_err(candle_err)?;
        let total = g.ttft_s + g.decode_steps_s.iter().sum::<f64>();
        runs.push(g);
        Ok(total)
    })?;
    // The sampler's warm-up calls come first; keep only the measured generations.
    let runs = &runs[samples.warmup_iterations..];

    let mut out = CaseOutput::new("cpu");
    let ttft: Vec<f64> = runs.iter().map(|g| g.ttft_s).collect();
    let tpot: Vec<f64> = runs.iter().filter_map(|g| mean_step(&g.decode_steps_s)).collect();
    out.generation_metrics(p.batch, p.prompt_len, &ttft, &tpot);
    if tracked {
        if let Some(peak) = memory::peak_mib() {
            out.metric(metric::PEAK_MEMORY, "MiB", Better::Lower, vec![peak]);
        }
    } else {
        out.warn(
            "peak memory not measured: the kernel's peak-RSS reset (/proc/self/clear_refs) is not available",
        );
    }
    Ok(out)
}

/// Prefill then greedy decode of `new_tokens` tokens (the first comes from the prefill).
fn generate(
    model: &Llama,
    cfg: &Config,
    prompt: &Tensor,
    new_tokens: usize,
    dtype: DType,
) -> candle_core::Result<Generation> {
    let mut cache = Cache::new(true, dtype, cfg, &CDevice::Cpu)?;
    let (_, prompt_len) = prompt.dims2()?;
    let t = Instant::now();
    let logits = model.forward(prompt, 0, &mut cache)?;
    let mut next = logits.argmax(candle_core::D::Minus1)?.unsqueeze(1)?;
    // Reading the token back forces the computation, as a server returning it would.
    let _ = next.i((0, 0))?.to_scalar::<u32>()?;
    let ttft_s = t.elapsed().as_secs_f64();
    let mut decode_steps_s = Vec::with_capacity(new_tokens.saturating_sub(1));
    for i in 1..new_tokens {
        let t = Instant::now();
        let logits = model.forward(&next, prompt_len + i - 1, &mut cache)?;
        next = logits.argmax(candle_core::D::Minus1)?.unsqueeze(1)?;
        let _ = next.i((0, 0))?.to_scalar::<u32>()?;
        decode_steps_s.push(t.elapsed().as_secs_f64());
    }
    Ok(Generation {
        ttft_s,
        decode_steps_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_generates_tokens() {
        let shape = ModelShape {
            layers: 1,
            vocab: 64,
            hidden: 32,
            intermediate: 64,
            heads: 4,
            kv_heads: 2,
            ..ModelShape::TINY
        };
        let cfg = llama_config(&shape);
        let varmap = VarMap::new();
        let model = Llama::load(VarBuilder::from_varmap(&varmap, DType::F32, &CDevice::Cpu), &cfg).unwrap();
        // Random weights, not zeros: the embedding has spread.
        let emb = varmap
            .data()
            .lock()
            .unwrap()
            .get("model.embed_tokens.weight")
            .unwrap()
            .as_tensor()
            .clone();
        let std = emb
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v * v)
            .sum::<f32>();
        assert!(std > 0.0);
        let prompt = Tensor::new(&[[1u32, 2, 3, 4]], &CDevice::Cpu).unwrap();
        let g = generate(&model, &cfg, &prompt, 5, DType::F32).unwrap();
        assert_eq!(g.decode_steps_s.len(), 4);
        assert!(g.ttft_s > 0.0);
    }
}
