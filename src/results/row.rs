//! The CSV schema (see DESIGN.md). Columns are append-only across schema versions.

use serde::{Deserialize, Serialize};

/// Bumped when a column's meaning changes; new columns go at the end.
pub const SCHEMA_VERSION: u32 = 1;

/// The outcome of a case, per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Ok,
    Skipped,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }
}

/// One row of `results.csv`: a (target, case, metric) summary, or a status row (empty metric)
/// for a case that was skipped, failed or, like the probe, has no metric.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub schema: u32,
    pub run_id: String,
    pub suite: String,
    pub workload: String,
    pub case: String,
    pub engine: String,
    pub executor: String,
    pub image: String,
    pub image_id: String,
    pub gpu_index: Option<usize>,
    pub gpu_name: String,
    pub device: String,
    pub metric: String,
    pub unit: String,
    pub better: String,
    pub n: Option<usize>,
    pub median: Option<f64>,
    pub mean: Option<f64>,
    pub stddev: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub p05: Option<f64>,
    pub p95: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub status: Status,
    pub reason: String,
    pub started_at: String,
    /// Samples beyond Tukey's fences (counted, never dropped).
    pub outliers: Option<usize>,
    /// The target's name in the suite (`local`, or the image): what `compare` matches runs on.
    pub target: String,
    /// Which worker process (0-based) measured this row; see `rounds` in the suite.
    pub round: Option<usize>,
    /// The node(s) the worker ran on (Slurm; empty elsewhere).
    #[serde(default)]
    pub node: String,
    /// The Slurm step as `JOB.STEP` (empty elsewhere).
    #[serde(default)]
    pub job_step: String,
    /// Whether this round's median is far from the other rounds of its target, case and metric
    /// (modified z-score on log round medians, `stats::robust`); set when the run ends, empty
    /// in runs written before. `run` measured one more round for each such round.
    pub outlier_round: Option<bool>,
}

impl ResultRow {
    /// The key that identifies the same measurement across runs: (workload, case, metric, gpu).
    pub fn key(&self) -> (String, String, String, Option<usize>) {
        (
            self.workload.clone(),
            self.case.clone(),
            self.metric.clone(),
            self.gpu_index,
        )
    }
}

/// One row of `samples.csv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    pub run_id: String,
    pub image: String,
    pub image_id: String,
    pub gpu_index: Option<usize>,
    pub workload: String,
    pub case: String,
    pub metric: String,
    /// 0-based index of the sample within its (case, metric).
    pub sample: usize,
    pub value: f64,
    pub target: String,
    pub engine: String,
    /// Which worker process (0-based) took the sample.
    pub round: Option<usize>,
    /// The batch (0-based, per target, case and round) a paired case took this sample in: the
    /// host alternated batches between targets, and batch i of each target ran next to the
    /// others' batch i in time (`compare` pairs them). Empty where sampling was not paired.
    #[serde(default)]
    pub batch: Option<usize>,
    /// When that batch began, in seconds since the Unix epoch (to audit the alternation).
    #[serde(default)]
    pub batch_start_s: Option<f64>,
}
