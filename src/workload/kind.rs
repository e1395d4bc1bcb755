//! The kinds of workload tagbench knows: what a suite's `kind` names and the engines dispatch on.

use serde::{Deserialize, Serialize};

/// The kinds of workload tagbench knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Probe,
    Gemm,
    Attention,
    Generate,
    Precision,
    Allreduce,
    /// A 2-D convolution's forward and backward (`workload/conv.rs`).
    Conv,
    /// A user's own program (`workload/command.rs`).
    Command,
    /// Container start, torch import, first CUDA op, image size (`workload/startup.rs`).
    Startup,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 9] = [
        WorkloadKind::Probe,
        WorkloadKind::Gemm,
        WorkloadKind::Attention,
        WorkloadKind::Generate,
        WorkloadKind::Precision,
        WorkloadKind::Allreduce,
        WorkloadKind::Conv,
        WorkloadKind::Command,
        WorkloadKind::Startup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Probe => "probe",
            WorkloadKind::Gemm => "gemm",
            WorkloadKind::Attention => "attention",
            WorkloadKind::Generate => "generate",
            WorkloadKind::Precision => "precision",
            WorkloadKind::Allreduce => "allreduce",
            WorkloadKind::Conv => "conv",
            WorkloadKind::Command => "command",
            WorkloadKind::Startup => "startup",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a bigger or a smaller value of a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
        }
    }
}
