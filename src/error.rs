//! Exit codes and the typed errors a user can cause.

use std::path::PathBuf;

/// Exit code: everything went fine (and, for comparisons, no regression).
pub const EXIT_OK: i32 = 0;
/// Exit code: a regression was found.
pub const EXIT_REGRESSION: i32 = 1;
/// Exit code: bad input, no data, or any other error.
pub const EXIT_ERROR: i32 = 2;

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
