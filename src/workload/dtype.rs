//! Element types of the compute workloads and their sizes.

use serde::{Deserialize, Serialize};

/// Element types of the compute workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Fp32,
    /// fp32 storage, TF32 tensor-core math (CUDA only).
    Tf32,
    Fp16,
    Bf16,
    /// e4m3 inputs, higher-precision output (CUDA, compute capability >= 8.9).
    Fp8,
}

impl Dtype {
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Tf32 => "tf32",
            Dtype::Fp16 => "fp16",
            Dtype::Bf16 => "bf16",
            Dtype::Fp8 => "fp8",
        }
    }

    /// Bytes per stored input element.
    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::Fp32 | Dtype::Tf32 => 4,
            Dtype::Fp16 | Dtype::Bf16 => 2,
            Dtype::Fp8 => 1,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
