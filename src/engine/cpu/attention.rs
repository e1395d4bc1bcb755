//! attention on the CPU through candle.

use crate::case::Case;
use crate::engine::CaseOutput;
use crate::error::CaseError;

pub fn run(_case: &Case) -> Result<CaseOutput, CaseError> {
    Err(CaseError::Failed(anyhow::anyhow!(
        "attention on the CPU is being written"
    )))
}
