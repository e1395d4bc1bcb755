//! Training-step parameters for the fp32 vs reduced-precision comparison.

use serde::{Deserialize, Serialize};

use super::compile::Compile;

/// Training steps from the seeded start before the loss is compared across modes (every
/// engine: the torch worker gets it with the case).
pub const NUMERICS_STEPS: usize = 10;

/// The model trained for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrecisionModel {
    /// Two hidden layers with GELU.
    Mlp,
    /// One pre-norm transformer block (attention + MLP) over a sequence.
    TransformerBlock,
    /// Two ResNet bottleneck blocks (1×1, 3×3, 1×1 convolutions with batch norm, a residual)
    /// over `hidden` channels of `image_size`² images, channels_last (torch engine).
    Resnet,
}

/// How the step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Fp32,
    /// fp32 storage, TF32 matmuls (CUDA only).
    Tf32,
    /// Mixed precision: fp16 compute, fp32 master weights, loss scaling.
    AmpFp16,
    /// Mixed precision: bf16 compute, fp32 master weights.
    AmpBf16,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fp32 => "fp32",
            Mode::Tf32 => "tf32",
            Mode::AmpFp16 => "amp-fp16",
            Mode::AmpBf16 => "amp-bf16",
        }
    }
}

/// How the step is spread over ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parallel {
    /// One process.
    None,
    /// DistributedDataParallel: the model replicated, gradients all-reduced.
    Ddp,
    /// FSDP2 (`fully_shard` per layer, then the model): parameters, gradients and optimizer
    /// state sharded across ranks.
    Fsdp,
}

impl Parallel {
    pub fn as_str(self) -> &'static str {
        match self {
            Parallel::None => "none",
            Parallel::Ddp => "ddp",
            Parallel::Fsdp => "fsdp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionParams {
    #[serde(default = "default_model")]
    pub model: PrecisionModel,
    pub batch: usize,
    /// Hidden width.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Sequence length (transformer block only).
    #[serde(default = "default_seq")]
    pub seq: usize,
    /// Attention heads (transformer block only).
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Image height and width (resnet only).
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// The mode of this case; fp32 is also measured (once per worker) as the reference.
    pub mode: Mode,
    /// DDP or FSDP over `ranks` processes (torch engine only; a sweep axis). `batch` is then
    /// the global batch, split evenly across the ranks.
    #[serde(default = "default_parallel")]
    pub parallel: Parallel,
    #[serde(default = "default_ranks")]
    pub ranks: usize,
    /// torch.compile's mode for the model (torch engine; a sweep axis). The fp32 reference is
    /// eager, so `speedup_vs_fp32` of a compiled fp32 case is what compiling gains.
    #[serde(default)]
    pub compile: Compile,
    /// Keep the image's compilation cache across workers instead of a fresh one per worker.
    #[serde(default)]
    pub warm_cache: bool,
}

fn default_parallel() -> Parallel {
    Parallel::None
}
fn default_ranks() -> usize {
    1
}

fn default_model() -> PrecisionModel {
    PrecisionModel::Mlp
}
fn default_hidden() -> usize {
    512
}
fn default_seq() -> usize {
    64
}
fn default_image_size() -> usize {
    56
}
fn default_heads() -> usize {
    8
}

impl PrecisionParams {
    pub fn check(&self) -> Result<(), String> {
        if self.batch == 0 || self.hidden == 0 || self.seq == 0 || self.heads == 0 || self.image_size == 0 {
            return Err("batch, hidden, seq, heads and image_size must be positive".into());
        }
        if self.model == PrecisionModel::Resnet && self.hidden % 4 != 0 {
            return Err(format!(
                "hidden ({}) must be a multiple of 4: a bottleneck narrows the channels fourfold",
                self.hidden
            ));
        }
        if self.model == PrecisionModel::TransformerBlock && self.hidden % self.heads != 0 {
            return Err(format!(
                "hidden ({}) must be a multiple of heads ({})",
                self.hidden, self.heads
            ));
        }
        if self.ranks == 0 {
            return Err("ranks must be at least 1".into());
        }
        if self.parallel == Parallel::None && self.ranks > 1 {
            return Err(format!(
                "ranks = {} needs parallel = \"ddp\" or \"fsdp\"",
                self.ranks
            ));
        }
        if self.batch % self.ranks != 0 {
            return Err(format!(
                "batch ({}) must be a multiple of ranks ({}): each rank takes an equal slice",
                self.batch, self.ranks
            ));
        }
        Ok(())
    }

    /// The same case on one rank: what a DDP/FSDP step is measured against.
    pub fn single_rank(&self) -> PrecisionParams {
        PrecisionParams {
            parallel: Parallel::None,
            ranks: 1,
            ..self.clone()
        }
    }

    /// The same case in eager fp32 on one rank: the reference this case's loss is compared with.
    pub fn reference(&self) -> PrecisionParams {
        PrecisionParams {
            mode: Mode::Fp32,
            compile: Compile::None,
            warm_cache: false,
            ..self.single_rank()
        }
    }

    /// Whether this case is its own reference (eager fp32 on one rank).
    pub fn is_reference(&self) -> bool {
        *self == self.reference()
    }

    /// The `skipped` reason of a native engine (eager, one process) for a case that needs the
    /// torch engine.
    pub fn native_can_run(&self, engine: &str) -> Result<(), String> {
        if self.model == PrecisionModel::Resnet {
            return Err(format!(
                "model = resnet needs the torch engine (--engine torch): the {engine} engine has no convolutions"
            ));
        }
        if self.parallel != Parallel::None {
            return Err(format!(
                "parallel = {} needs the torch engine (--engine torch): the {engine} engine trains in one process",
                self.parallel.as_str()
            ));
        }
        self.compile.native_can_run(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> PrecisionParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn resnet_needs_channels_in_fours_and_the_torch_engine() {
        let p = params(r#"{"model":"resnet","batch":2,"hidden":64,"mode":"amp-bf16"}"#);
        assert!(p.check().is_ok());
        assert_eq!(p.image_size, 56);
        assert!(p
            .native_can_run("native CPU")
            .unwrap_err()
            .contains("model = resnet"));
        assert!(
            params(r#"{"model":"resnet","batch":2,"hidden":30,"mode":"fp32"}"#)
                .check()
                .unwrap_err()
                .contains("multiple of 4")
        );
    }

    #[test]
    fn parallel_defaults_to_one_process() {
        let p = params(r#"{"batch":8,"mode":"fp32"}"#);
        assert_eq!((p.parallel, p.ranks), (Parallel::None, 1));
        assert!(p.check().is_ok() && p.native_can_run("native CPU").is_ok());
    }

    #[test]
    fn ranks_need_a_parallel_mode_and_an_even_batch() {
        assert!(params(r#"{"batch":8,"mode":"fp32","ranks":2}"#)
            .check()
            .unwrap_err()
            .contains("parallel"));
        assert!(params(r#"{"batch":9,"mode":"fp32","parallel":"ddp","ranks":2}"#)
            .check()
            .unwrap_err()
            .contains("multiple of ranks"));
        let fsdp = params(r#"{"batch":8,"mode":"amp-bf16","parallel":"fsdp","ranks":2}"#);
        assert!(fsdp.check().is_ok());
        assert!(fsdp
            .native_can_run("native CPU")
            .unwrap_err()
            .contains("torch engine"));
        // The loss reference is one rank in fp32; the timing reference one rank in the same mode.
        assert_eq!(
            (
                fsdp.reference().mode,
                fsdp.reference().parallel,
                fsdp.reference().ranks
            ),
            (Mode::Fp32, Parallel::None, 1)
        );
        assert_eq!(fsdp.single_rank().mode, Mode::AmpBf16);
    }
}
