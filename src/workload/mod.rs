//! Workload parameters, their validation and the arithmetic every engine shares
//! (FLOP counts, bus bandwidth, size sweeps). Engines implement the measuring.

pub mod allreduce;
pub mod attention;
pub mod gemm;
pub mod generate;
pub mod precision;
pub mod probe;

use crate::case::WorkloadKind;

/// Checks a case's parameters against its kind (used when a suite is read, so that a bad value
/// fails before anything runs) and returns them with every default filled in.
pub fn validate_params<'de, D: serde::Deserializer<'de>>(
    kind: WorkloadKind,
    de: D,
) -> Result<serde_json::Map<String, serde_json::Value>, D::Error> {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    fn to_map<E: serde::de::Error, T: serde::Serialize>(
        v: T,
    ) -> Result<serde_json::Map<String, serde_json::Value>, E> {
        match serde_json::to_value(v).map_err(E::custom)? {
            serde_json::Value::Object(m) => Ok(m),
            _ => Err(E::custom("parameters must be a table")),
        }
    }
    let map = match kind {
        WorkloadKind::Probe => to_map(probe::ProbeParams::deserialize(de)?)?,
        WorkloadKind::Gemm => {
            let mut p = gemm::GemmParams::deserialize(de)?;
            p.normalize().map_err(D::Error::custom)?;
            to_map(p)?
        }
        WorkloadKind::Attention => {
            let p = attention::AttentionParams::deserialize(de)?;
            p.check().map_err(D::Error::custom)?;
            to_map(p)?
        }
        WorkloadKind::Generate => {
            let p = generate::GenerateParams::deserialize(de)?;
            p.check().map_err(D::Error::custom)?;
            to_map(p)?
        }
        WorkloadKind::Precision => {
            let p = precision::PrecisionParams::deserialize(de)?;
            p.check().map_err(D::Error::custom)?;
            to_map(p)?
        }
        WorkloadKind::Allreduce => {
            let p = allreduce::AllreduceParams::deserialize(de)?;
            p.check().map_err(D::Error::custom)?;
            to_map(p)?
        }
    };
    Ok(map)
}

/// Keys whose list value is one parameter, not a sweep axis.
pub fn list_valued_keys(kind: WorkloadKind) -> &'static [&'static str] {
    match kind {
        WorkloadKind::Allreduce => &["gpus"],
        _ => &[],
    }
}

/// Metric names shared by engines and reports.
pub mod metric {
    pub const LATENCY: &str = "latency";
    pub const THROUGHPUT: &str = "throughput";
    pub const PCT_OF_PEAK: &str = "pct_of_peak";
    pub const TTFT: &str = "ttft";
    pub const TPOT: &str = "tpot";
    pub const DECODE_TPS: &str = "decode_tokens_per_s";
    pub const PREFILL_TPS: &str = "prefill_tokens_per_s";
    pub const PEAK_MEMORY: &str = "peak_memory";
    pub const STEP_TIME: &str = "step_time";
    pub const SAMPLES_PER_S: &str = "samples_per_s";
    pub const SPEEDUP: &str = "speedup_vs_fp32";
    pub const LOSS_DIFF: &str = "loss_diff_vs_fp32";
    pub const TIME_US: &str = "time";
    pub const ALGBW: &str = "algbw";
    pub const BUSBW: &str = "busbw";
    pub const WRONG: &str = "wrong_elements";
}
