//! `compile`: a sweep axis of generate, precision and attention (torch engine): the workload runs
//! through `torch.compile` in one of its modes, and reports `compile_time` and `graph_breaks`.

use serde::{Deserialize, Serialize};

/// How the torch engine compiles a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compile {
    /// Eager PyTorch.
    #[default]
    None,
    /// `torch.compile(fn)`: Dynamo + Inductor.
    Default,
    /// `mode = "max-autotune-no-cudagraphs"`: Inductor benchmarks its kernel choices.
    MaxAutotuneNoCudagraphs,
    /// `mode = "reduce-overhead"`: CUDA graphs around the compiled graphs.
    ReduceOverhead,
}

impl Compile {
    pub fn as_str(self) -> &'static str {
        match self {
            Compile::None => "none",
            Compile::Default => "default",
            Compile::MaxAutotuneNoCudagraphs => "max-autotune-no-cudagraphs",
            Compile::ReduceOverhead => "reduce-overhead",
        }
    }

    /// The `skipped` reason of a native engine for a compiled case.
    pub fn native_can_run(self, engine: &str) -> Result<(), String> {
        if self == Compile::None {
            return Ok(());
        }
        Err(format!(
            "compile = \"{}\" needs the torch engine (--engine torch): the {engine} engine has no torch.compile",
            self.as_str()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_torch_names_them() {
        for c in [
            Compile::None,
            Compile::Default,
            Compile::MaxAutotuneNoCudagraphs,
            Compile::ReduceOverhead,
        ] {
            let json = serde_json::to_value(c).unwrap();
            assert_eq!(json, c.as_str());
            assert_eq!(serde_json::from_value::<Compile>(json).unwrap(), c);
        }
        assert!(Compile::None.native_can_run("native CPU").is_ok());
        let why = Compile::Default.native_can_run("native CPU").unwrap_err();
        assert!(
            why.contains("compile = \"default\"") && why.contains("torch engine"),
            "{why}"
        );
    }
}
