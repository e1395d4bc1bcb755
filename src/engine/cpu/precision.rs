//! Training steps on the CPU through candle-nn.

use super::CpuEngine;
use crate::case::Case;
use crate::engine::CaseOutput;
use crate::error::CaseError;

/// The fp32 reference of a precision case.
#[derive(Debug, Clone)]
pub struct Reference {
    pub step_median_s: f64,
    pub loss: f64,
}

pub fn run(_engine: &mut CpuEngine, _case: &Case) -> Result<CaseOutput, CaseError> {
    Err(CaseError::Failed(anyhow::anyhow!(
        "precision on the CPU is being written"
    )))
}
