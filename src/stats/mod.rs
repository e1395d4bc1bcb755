//! Statistics as pure functions: summaries of one sample set here; comparisons and change-point
//! detection beside it. Nothing in this module runs a benchmark or renders anything.

pub mod bootstrap;
pub mod edivisive;
pub mod holm;
pub mod mannwhitney;
pub mod paired;
pub mod pooled;
pub mod robust;
pub mod sequential;
pub mod summary;
pub mod synthetic;
pub mod welch;

pub use bootstrap::{ratio_of_medians_ci, RatioCi};
pub use edivisive::{change_points, change_points_log, ChangePoint, EDivisiveSettings};
pub use holm::holm_adjust;
pub use mannwhitney::{mann_whitney, MannWhitney};
pub use paired::{paired_log_ratio, PairedLogRatio};
pub use pooled::{pooled_runs_log_ratio, PooledLogRatio};
pub use robust::{outlier_rounds, without_outliers, yuen_log_ratio, TrimmedLogRatio};
pub use sequential::Design;
pub use summary::{percentile_sorted, summarize, Summary};
pub use welch::{log_t_interval, welch_log_ratio, welch_t, LogRatio, WelchT};
