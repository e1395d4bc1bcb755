//! The results of a run on disk: `results.csv` (one row per target, case and metric),
//! `samples.csv` (every sample), `run.json` (metadata) and `logs/`, under `results/<run-id>/`.

pub mod load;
pub mod lock;
pub mod meta;
pub mod record;
pub mod row;
pub mod store;
pub mod unit;

pub use load::{LoadedRun, Measurement};
pub use lock::{check_run_id, Liveness, RunBusy, RunLock};
pub use meta::{DutyCycle, Placement, RunMeta, TargetMeta, STATE_COMPLETE, STATE_INTERRUPTED, STATE_RUNNING};
pub use record::{set_summary, MetricId, Recorder};
pub use row::{ResultRow, SampleRow, Status, SCHEMA_VERSION};
pub use store::{
    drop_orphan_samples, mark_outlier_rounds, outlier_rounds_of, read_results, read_samples, RoundKey,
    RunDir, RunWriter,
};
pub use unit::Quantity;
