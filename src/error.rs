//! The typed errors a user can cause (exit codes: [`crate::outcome`]).

use std::path::PathBuf;

/// Two sides of a comparison share no (workload, case, metric, gpu).
#[derive(Debug, thiserror::Error)]
#[error("nothing matched: no (workload, case, metric, gpu) appears on both sides")]
pub struct NothingMatched;

/// A problem in a suite file, located by file, line and (where known) key.
#[derive(Debug, thiserror::Error)]
#[error("failed to read suite {}: line {line}: {message}", path.display())]
pub struct SuiteError {
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// Why a case produced no measurement.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The engine cannot run this case here (missing driver, unsupported dtype, ...).
    #[error("skipped: {0}")]
    Skipped(String),
    /// The case ran and broke.
    #[error("failed: {0:#}")]
    Failed(#[from] anyhow::Error),
}

impl CaseError {
    pub fn skipped(reason: impl Into<String>) -> Self {
        CaseError::Skipped(reason.into())
    }
}

/// Converts a byte offset into a 1-based line number.
pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}
