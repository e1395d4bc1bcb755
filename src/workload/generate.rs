//! Token-generation parameters and the Llama-family model shapes they name.

use serde::{Deserialize, Serialize};

use super::compile::Compile;
use super::Dtype;

/// The dimensions of a Llama-architecture decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub rope_theta: u32,
}

impl ModelShape {
    /// A small shape that decodes quickly on a CPU but keeps every part of the architecture
    /// (RMSNorm, RoPE, GQA, SwiGLU MLP, KV cache).
    pub const TINY: ModelShape = ModelShape {
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        vocab: 4096,
        max_positions: 2048,
        rope_theta: 10_000,
    };
    /// Llama 2 7B (meta-llama/Llama-2-7b-hf config.json).
    pub const LLAMA2_7B: ModelShape = ModelShape {
        hidden: 4096,
        intermediate: 11008,
        layers: 32,
        heads: 32,
        kv_heads: 32,
        vocab: 32000,
        max_positions: 4096,
        rope_theta: 10_000,
    };
    /// Llama 3 8B (meta-llama/Meta-Llama-3-8B config.json).
    pub const LLAMA3_8B: ModelShape = ModelShape {
        hidden: 4096,
        intermediate: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        vocab: 128_256,
        max_positions: 8192,
        rope_theta: 500_000,
    };
    /// Llama 3 70B (meta-llama/Meta-Llama-3-70B config.json): 140 GB of bf16 weights, the case
    /// for tensor parallelism; `layers` keeps its width on a smaller machine.
    pub const LLAMA3_70B: ModelShape = ModelShape {
        hidden: 8192,
        intermediate: 28672,
        layers: 80,
        heads: 64,
        kv_heads: 8,
        vocab: 128_256,
        max_positions: 8192,
        rope_theta: 500_000,
    };

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Parameters of the decoder (embeddings and untied LM head included).
    pub fn parameters(&self) -> u64 {
        let h = self.hidden as u64;
        let kv = (self.kv_heads * self.head_dim()) as u64;
        let attn = h * h * 2 + h * kv * 2;
        let mlp = 3 * h * self.intermediate as u64;
        let norms = 2 * h;
        let per_layer = attn + mlp + norms;
        per_layer * self.layers as u64 + 2 * self.vocab as u64 * h + h
    }
}

/// Named model shapes, or `custom` with the dimensions given in the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    Tiny,
    #[serde(rename = "llama-2-7b")]
    Llama2_7b,
    #[serde(rename = "llama-3-8b")]
    Llama3_8b,
    #[serde(rename = "llama-3-70b")]
    Llama3_70b,
    Custom,
}

/// Who generates: the hand-written decode loop, or the image's Hugging Face transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impl {
    /// A Llama-architecture decoder in plain torch (every engine).
    #[default]
    Loop,
    /// `LlamaForCausalLM.from_config` + `model.generate` (torch engine: the image's transformers).
    Hf,
}

impl Impl {
    pub fn as_str(self) -> &'static str {
        match self {
            Impl::Loop => "loop",
            Impl::Hf => "hf",
        }
    }
}

/// transformers' KV-cache implementation (`cache_implementation`; `impl = "hf"` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    /// Grows with the sequence (transformers' default).
    #[default]
    Dynamic,
    /// Preallocated to the generation's length (what torch.compile wants).
    Static,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    #[serde(default = "default_model")]
    pub model: Model,
    #[serde(default = "one")]
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    #[serde(default = "default_dtype")]
    pub dtype: Dtype,
    /// Overrides of the named shape (all required for `custom`): a named shape with fewer
    /// layers keeps per-layer cost realistic at a fraction of the memory.
    #[serde(default)]
    pub layers: Option<usize>,
    #[serde(default)]
    pub hidden: Option<usize>,
    #[serde(default)]
    pub intermediate: Option<usize>,
    #[serde(default)]
    pub heads: Option<usize>,
    #[serde(default)]
    pub kv_heads: Option<usize>,
    #[serde(default)]
    pub vocab: Option<usize>,
    /// Ranks the decoder is split over, Megatron-style (torch engine only; a sweep axis).
    #[serde(default = "one")]
    pub tensor_parallel: usize,
    /// The implementation (`impl` in a suite): the loop, or transformers' generate.
    #[serde(rename = "impl", default)]
    pub implementation: Impl,
    /// transformers' KV cache (`impl = "hf"`; the loop skips anything but `dynamic`).
    #[serde(default)]
    pub cache: Cache,
    /// torch.compile's mode for the model's forward (torch engine, one rank; a sweep axis).
    #[serde(default)]
    pub compile: Compile,
    /// Keep the image's compilation cache across workers instead of a fresh one per worker.
    #[serde(default)]
    pub warm_cache: bool,
}

fn default_model() -> Model {
    Model::Tiny
}
fn one() -> usize {
    1
}
fn default_dtype() -> Dtype {
    Dtype::Fp32
}

impl GenerateParams {
    /// The model shape after overrides.
    pub fn shape(&self) -> Result<ModelShape, String> {
        let base = match self.model {
            Model::Tiny => ModelShape::TINY,
            Model::Llama2_7b => ModelShape::LLAMA2_7B,
            Model::Llama3_8b => ModelShape::LLAMA3_8B,
            Model::Llama3_70b => ModelShape::LLAMA3_70B,
            Model::Custom => {
                let need = |v: Option<usize>, k: &str| v.ok_or_else(|| format!("model `custom` needs `{k}`"));
                ModelShape {
                    hidden: need(self.hidden, "hidden")?,
                    intermediate: need(self.intermediate, "intermediate")?,
                    layers: need(self.layers, "layers")?,
                    heads: need(self.heads, "heads")?,
                    kv_heads: self.kv_heads.or(self.heads).unwrap_or(1),
                    vocab: need(self.vocab, "vocab")?,
                    max_positions: 8192,
                    rope_theta: 10_000,
                }
            }
        };
        let s = ModelShape {
            hidden: self.hidden.unwrap_or(base.hidden),
            intermediate: self.intermediate.unwrap_or(base.intermediate),
            layers: self.layers.unwrap_or(base.layers),
            heads: self.heads.unwrap_or(base.heads),
            kv_heads: self.kv_heads.unwrap_or(base.kv_heads),
            vocab: self.vocab.unwrap_or(base.vocab),
            max_positions: base.max_positions.max(self.prompt_len + self.new_tokens),
            rope_theta: base.rope_theta,
        };
        if s.hidden == 0 || s.heads == 0 || s.kv_heads == 0 || s.layers == 0 || s.vocab == 0 {
            return Err("model dimensions must be positive".into());
        }
        if s.hidden % s.heads != 0 {
            return Err(format!(
                "hidden ({}) must be a multiple of heads ({})",
                s.hidden, s.heads
            ));
        }
        if s.heads % s.kv_heads != 0 {
            return Err(format!(
                "heads ({}) must be a multiple of kv_heads ({})",
                s.heads, s.kv_heads
            ));
        }
        if s.head_dim() % 2 != 0 {
            return Err("head dimension must be even for rotary embeddings".into());
        }
        Ok(s)
    }

    /// The `skipped` reason of a native engine (its own loop, on one device), for a case that
    /// needs the torch engine.
    pub fn native_can_run(&self, engine: &str) -> Result<(), String> {
        if self.tensor_parallel > 1 {
            return Err(format!(
                "tensor_parallel = {} needs the torch engine (--engine torch): the {engine} engine generates on one device",
                self.tensor_parallel
            ));
        }
        if self.implementation == Impl::Hf {
            return Err(format!(
                "impl = \"hf\" needs the torch engine (--engine torch) and the image's transformers: the {engine} engine runs its own loop"
            ));
        }
        if self.cache != Cache::Dynamic {
            return Err("cache applies to impl = \"hf\": the loop preallocates its KV cache".into());
        }
        self.compile.native_can_run(engine)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.batch == 0 || self.prompt_len == 0 || self.new_tokens == 0 {
            return Err("batch, prompt_len and new_tokens must be positive".into());
        }
        if self.tensor_parallel == 0 {
            return Err("tensor_parallel must be at least 1".into());
        }
        if matches!(self.dtype, Dtype::Tf32 | Dtype::Fp8) {
            return Err(format!(
                "generate supports fp32, fp16 and bf16, not {}",
                self.dtype
            ));
        }
        self.shape().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_7b_has_about_7b_parameters() {
        let p = ModelShape::LLAMA2_7B.parameters() as f64;
        assert!((6.6e9..6.8e9).contains(&p), "{p}");
    }

    #[test]
    fn llama3_8b_has_about_8b_parameters() {
        let p = ModelShape::LLAMA3_8B.parameters() as f64;
        assert!((7.9e9..8.1e9).contains(&p), "{p}");
    }

    #[test]
    fn custom_needs_dimensions() {
        let p: GenerateParams =
            serde_json::from_str(r#"{"model":"custom","prompt_len":4,"new_tokens":4}"#).unwrap();
        assert!(p.check().unwrap_err().contains("needs"));
    }

    #[test]
    fn tensor_parallel_defaults_to_one_and_native_engines_skip_more() {
        let p: GenerateParams = serde_json::from_str(r#"{"prompt_len":4,"new_tokens":4}"#).unwrap();
        assert_eq!(p.tensor_parallel, 1);
        assert!(p.native_can_run("native CPU").is_ok());
        let tp2 = GenerateParams {
            tensor_parallel: 2,
            ..p.clone()
        };
        let why = tp2.native_can_run("native CUDA").unwrap_err();
        assert!(
            why.contains("tensor_parallel = 2") && why.contains("--engine torch"),
            "{why}"
        );
        let tp0 = GenerateParams {
            tensor_parallel: 0,
            ..p
        };
        assert!(tp0.check().unwrap_err().contains("tensor_parallel"));
    }

    #[test]
    fn impl_and_cache_default_to_the_loop_and_native_engines_skip_hf() {
        let p: GenerateParams = serde_json::from_str(r#"{"prompt_len":4,"new_tokens":4}"#).unwrap();
        assert_eq!((p.implementation, p.cache), (Impl::Loop, Cache::Dynamic));
        let hf: GenerateParams =
            serde_json::from_str(r#"{"prompt_len":4,"new_tokens":4,"impl":"hf","cache":"static"}"#).unwrap();
        assert_eq!((hf.implementation, hf.cache), (Impl::Hf, Cache::Static));
        assert!(hf
            .native_can_run("native CPU")
            .unwrap_err()
            .contains("impl = \"hf\""));
        let loop_static = GenerateParams {
            implementation: Impl::Loop,
            ..hf
        };
        assert!(loop_static
            .native_can_run("native CPU")
            .unwrap_err()
            .contains("cache"));
        // The job JSON and the torch worker see `impl`, as a suite writes it.
        assert_eq!(serde_json::to_value(&p).unwrap()["impl"], "loop");
    }

    #[test]
    fn layer_override_applies() {
        let p: GenerateParams =
            serde_json::from_str(r#"{"model":"llama-2-7b","layers":2,"prompt_len":4,"new_tokens":4}"#)
                .unwrap();
        assert_eq!(p.shape().unwrap().layers, 2);
        assert_eq!(p.shape().unwrap().hidden, 4096);
    }
}
