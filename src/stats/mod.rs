//! Statistics as pure functions: summaries of one sample set here; comparisons and change-point
//! detection beside it. Nothing in this module runs a benchmark or renders anything.

pub mod summary;

pub use summary::{percentile_sorted, summarize, Summary};
