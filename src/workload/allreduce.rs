//! All-reduce parameters and the nccl-tests arithmetic: size sweeps and bus bandwidth.

use serde::{Deserialize, Serialize};

use super::Dtype;

/// The reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReduceOp {
    Sum,
    Prod,
    Max,
    Min,
    Avg,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllreduceParams {
    /// Smallest message, bytes (nccl-tests `-b`).
    #[serde(default = "default_min")]
    pub min_bytes: u64,
    /// Largest message, bytes (nccl-tests `-e`).
    #[serde(default = "default_max")]
    pub max_bytes: u64,
    /// Multiplication factor between sizes (nccl-tests `-f`).
    #[serde(default = "default_factor")]
    pub factor: u64,
    #[serde(default = "default_dtype")]
    pub dtype: Dtype,
    #[serde(default = "default_op")]
    pub op: ReduceOp,
    /// Number of ranks (GPUs, or CPU processes for gloo); 0 means every GPU of the target.
    #[serde(default)]
    pub ranks: usize,
    /// Reduce in place (recvbuff == sendbuff) instead of out of place.
    #[serde(default)]
    pub in_place: bool,
}

/// CPU ranks when a case does not say (`ranks = 0`): two processes exercise the whole path.
pub const CPU_DEFAULT_RANKS: usize = 2;

fn default_min() -> u64 {
    1 << 10
}
fn default_max() -> u64 {
    1 << 26
}
fn default_factor() -> u64 {
    4
}
fn default_dtype() -> Dtype {
    Dtype::Fp32
}
fn default_op() -> ReduceOp {
    ReduceOp::Sum
}

impl AllreduceParams {
    pub fn check(&self) -> Result<(), String> {
        if self.min_bytes == 0 || self.max_bytes < self.min_bytes {
            return Err("need 0 < min_bytes <= max_bytes".into());
        }
        if self.factor < 2 {
            return Err("factor must be at least 2".into());
        }
        if matches!(self.dtype, Dtype::Tf32 | Dtype::Fp8) {
            return Err(format!(
                "allreduce supports fp32, fp16 and bf16, not {}",
                self.dtype
            ));
        }
        Ok(())
    }

    /// Message sizes from min to max, multiplying by factor, each rounded down to whole
    /// elements (at least one), as nccl-tests does.
    pub fn sizes(&self) -> Vec<u64> {
        sizes(
            self.min_bytes,
            self.max_bytes,
            self.factor,
            self.dtype.size_bytes() as u64,
        )
    }
}

/// Sizes `min, min·f, min·f², … ≤ max`, rounded down to multiples of `elem` bytes.
pub fn sizes(min: u64, max: u64, factor: u64, elem: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut s = min;
    while s <= max {
        let rounded = (s / elem).max(1) * elem;
        if out.last() != Some(&rounded) {
            out.push(rounded);
        }
        match s.checked_mul(factor) {
            Some(n) => s = n,
            None => break,
        }
    }
    out
}

/// The metric name of one message size (`busbw@1048576` is the bus bandwidth at 1 MiB messages).
/// A case is a whole size sweep, so the size is part of the metric name: one row per size, so
/// that reports plot bandwidth against size and comparisons pair sizes.
pub fn sized(metric: &str, bytes: u64) -> String {
    format!("{metric}@{bytes}")
}

/// The base metric and message size of a [`sized`] name (`busbw@1048576` → `busbw`, 1048576);
/// a name without a size is returned whole.
pub fn split_sized(name: &str) -> (&str, Option<u64>) {
    match name.split_once('@') {
        Some((base, bytes)) => (base, bytes.parse().ok()),
        None => (name, None),
    }
}

/// Algorithm bandwidth in GB/s: bytes / time.
pub fn algbw_gbps(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e9
}

/// Bus bandwidth for all-reduce, nccl-tests' definition: algbw · 2(n−1)/n, the per-link
/// bandwidth a ring would need; comparable to the hardware's peak link bandwidth.
pub fn busbw_gbps(algbw_gbps: f64, ranks: usize) -> f64 {
    if ranks <= 1 {
        // One rank moves nothing over a bus; nccl-tests reports 0 too.
        return 0.0;
    }
    let n = ranks as f64;
    algbw_gbps * 2.0 * (n - 1.0) / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_names_parse_back() {
        let name = sized(crate::workload::metric::BUSBW, 1 << 20);
        assert_eq!(name, "busbw@1048576");
        assert_eq!(split_sized(&name), ("busbw", Some(1 << 20)));
        assert_eq!(split_sized("latency"), ("latency", None));
    }

    #[test]
    fn busbw_factor() {
        assert_eq!(busbw_gbps(100.0, 2), 100.0);
        assert_eq!(busbw_gbps(100.0, 8), 175.0);
        assert_eq!(busbw_gbps(100.0, 1), 0.0);
    }

    #[test]
    fn sizes_like_nccl_tests() {
        assert_eq!(sizes(8, 128, 2, 4), vec![8, 16, 32, 64, 128]);
        assert_eq!(sizes(1, 16, 4, 4), vec![4, 16]);
        assert_eq!(sizes(1024, 1000, 2, 4), Vec::<u64>::new());
    }

    #[test]
    fn algbw_units() {
        assert!((algbw_gbps(1_000_000_000, 0.5) - 2.0).abs() < 1e-12);
    }
}
