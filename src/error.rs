//! Exit codes and the typed errors a user can cause.

use std::path::PathBuf;

/// Exit code: everything went fine (and, for comparisons, no regression).
pub const EXIT_OK: i32 = 0;
/// Exit code: a regression was found.
pub const EXIT_REGRESSION: i32 = 1;
/// Exit code: bad input, no data, or any other error.
pub const EXIT_ERROR: i32 = 2;

/// The exit code of a comparison (compare, report): a regression or a failed case is 1;
/// nothing measured on both sides is 2 (the input cannot answer the question); else 0.
pub fn comparison_exit(matched: usize, regressions: usize) -> i32 {
    if regressions > 0 {
        EXIT_REGRESSION
    } else if matched == 0 {
        EXIT_ERROR
    } else {
        EXIT_OK
    }
}

/// The exit code of a command that ended in an error. Every error a user can cause (a bad
/// suite, bad options, nothing matched) and every other failure is 2.
pub fn exit_code_of(_err: &anyhow::Error) -> i32 {
    EXIT_ERROR
}

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
