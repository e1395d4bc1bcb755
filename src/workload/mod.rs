//! Workload parameters, their validation and the arithmetic every engine shares
//! (FLOP counts, bus bandwidth, size sweeps). Engines implement the measuring.

pub mod allreduce;
pub mod attention;
pub mod command;
pub mod compile;
pub mod conv;
mod dtype;
pub mod gemm;
pub mod generate;
mod kind;
pub mod memory;
pub mod precision;
pub mod probe;
pub mod startup;

use serde::{Deserialize, Serialize};

pub use dtype::Dtype;
pub use kind::{Better, WorkloadKind};

/// A case's parameters, typed: built once when the suite is read, carried in the job JSON to the
/// worker (tagged with `kind`, so the file stays self-describing) and matched on by the engines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Params {
    Probe(probe::ProbeParams),
    Gemm(gemm::GemmParams),
    Attention(attention::AttentionParams),
    Generate(generate::GenerateParams),
    Precision(precision::PrecisionParams),
    Allreduce(allreduce::AllreduceParams),
    Conv(conv::ConvParams),
    Command(command::CommandParams),
    Startup(startup::StartupParams),
}

impl Default for Params {
    /// The probe's (empty) parameters: the case the runner adds for every target.
    fn default() -> Self {
        Params::Probe(probe::ProbeParams::default())
    }
}

impl Params {
    /// How many processes (ranks) the case runs as: `Some(n)` for a multi-rank case (all-reduce,
    /// DDP/FSDP steps, tensor-parallel generation; for all-reduce `0` means the launch's default:
    /// every GPU, or [`allreduce::CPU_DEFAULT_RANKS`] on the CPU), `None` for one process.
    pub fn ranks(&self) -> Option<usize> {
        match self {
            Params::Allreduce(p) => Some(p.ranks),
            Params::Precision(p) => (p.parallel != precision::Parallel::None).then_some(p.ranks),
            Params::Generate(p) => (p.tensor_parallel > 1).then_some(p.tensor_parallel),
            Params::Command(p) => (p.ranks > 1).then_some(p.ranks),
            _ => None,
        }
    }

    pub fn kind(&self) -> WorkloadKind {
        match self {
            Params::Probe(_) => WorkloadKind::Probe,
            Params::Gemm(_) => WorkloadKind::Gemm,
            Params::Attention(_) => WorkloadKind::Attention,
            Params::Generate(_) => WorkloadKind::Generate,
            Params::Precision(_) => WorkloadKind::Precision,
            Params::Allreduce(_) => WorkloadKind::Allreduce,
            Params::Conv(_) => WorkloadKind::Conv,
            Params::Command(_) => WorkloadKind::Command,
            Params::Startup(_) => WorkloadKind::Startup,
        }
    }

    /// Reads and checks the parameters of a `kind` (used when a suite is read, so that a bad
    /// value fails before anything runs), every default filled in.
    pub fn parse<'de, D: serde::Deserializer<'de>>(kind: WorkloadKind, de: D) -> Result<Params, D::Error> {
        /// Reads `T` and runs its check, whose message becomes the deserializer's error.
        fn checked<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
            de: D,
            check: impl FnOnce(&mut T) -> Result<(), String>,
        ) -> Result<T, D::Error> {
            let mut p = T::deserialize(de)?;
            check(&mut p).map_err(<D::Error as serde::de::Error>::custom)?;
            Ok(p)
        }
        Ok(match kind {
            WorkloadKind::Probe => Params::Probe(probe::ProbeParams::deserialize(de)?),
            WorkloadKind::Gemm => Params::Gemm(checked(de, gemm::GemmParams::normalize)?),
            WorkloadKind::Attention => {
                Params::Attention(checked(de, |p: &mut attention::AttentionParams| p.check())?)
            }
            WorkloadKind::Generate => {
                Params::Generate(checked(de, |p: &mut generate::GenerateParams| p.check())?)
            }
            WorkloadKind::Precision => {
                Params::Precision(checked(de, |p: &mut precision::PrecisionParams| p.check())?)
            }
            WorkloadKind::Allreduce => {
                Params::Allreduce(checked(de, |p: &mut allreduce::AllreduceParams| p.check())?)
            }
            WorkloadKind::Conv => Params::Conv(checked(de, |p: &mut conv::ConvParams| p.check())?),
            WorkloadKind::Command => Params::Command(checked(de, command::CommandParams::check)?),
            WorkloadKind::Startup => Params::Startup(checked(de, startup::StartupParams::check)?),
        })
    }

    /// The parameters recovered from a case id (`m=1024,n=1024,k=1024,dtype=fp32`, `default`),
    /// for readers of stored results that have the id but not the suite; `None` where the id
    /// does not read as parameters of `kind` (an id from another version, a list value).
    pub fn from_case_id(kind: WorkloadKind, id: &str) -> Option<Params> {
        let mut table = toml::Table::new();
        for kv in id.split(',').filter(|kv| *kv != "default") {
            let (k, v) = kv.split_once('=')?;
            let v = v.trim();
            let value = if let Ok(i) = v.parse::<i64>() {
                toml::Value::Integer(i)
            } else if let Ok(f) = v.parse::<f64>() {
                toml::Value::Float(f)
            } else if let Ok(b) = v.parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                toml::Value::String(v.to_string())
            };
            table.insert(k.trim().to_string(), value);
        }
        Params::parse(kind, toml::Value::Table(table)).ok()
    }

    /// The parameters alone, as a JSON object without the `kind` tag (what the torch worker
    /// script reads).
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Params::Probe(p) => serde_json::to_value(p),
            Params::Gemm(p) => serde_json::to_value(p),
            Params::Attention(p) => serde_json::to_value(p),
            Params::Generate(p) => serde_json::to_value(p),
            Params::Precision(p) => serde_json::to_value(p),
            Params::Allreduce(p) => serde_json::to_value(p),
            Params::Conv(p) => serde_json::to_value(p),
            Params::Command(p) => serde_json::to_value(p),
            Params::Startup(p) => serde_json::to_value(p),
        };
        // Plain structs of numbers, strings and enums always serialise.
        v.unwrap_or_default()
    }
}

/// The smallest valid parameters of each kind, for tests that need a case of every kind.
#[cfg(test)]
pub fn example(kind: WorkloadKind) -> Params {
    let id = match kind {
        WorkloadKind::Probe | WorkloadKind::Allreduce => "default",
        WorkloadKind::Gemm => "size=8,dtype=fp32",
        WorkloadKind::Attention => "heads=1,seq_q=8,head_dim=8",
        WorkloadKind::Generate => "prompt_len=4,new_tokens=2",
        WorkloadKind::Precision => "batch=2,mode=fp32",
        WorkloadKind::Conv => "layer=res5,batch=1",
        WorkloadKind::Startup => "metric=container_start",
        WorkloadKind::Command => {
            let mut p: command::CommandParams = toml::from_str(r#"argv = ["true"]"#).expect("valid");
            p.check().expect("valid");
            return Params::Command(p);
        }
    };
    Params::from_case_id(kind, id).expect("example parameters are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_from_case_ids() {
        for kind in WorkloadKind::ALL {
            assert_eq!(example(kind).kind(), kind);
        }
        match Params::from_case_id(WorkloadKind::Gemm, "m=64,n=32,k=16,dtype=bf16") {
            Some(Params::Gemm(g)) => {
                assert_eq!((g.m, g.n, g.k, g.dtype), (64, 32, 16, Dtype::Bf16));
            }
            other => panic!("{other:?}"),
        }
        // `size` stands for m = n = k, as in a suite.
        match Params::from_case_id(WorkloadKind::Gemm, "size=256") {
            Some(Params::Gemm(g)) => assert_eq!((g.m, g.n, g.k), (256, 256, 256)),
            other => panic!("{other:?}"),
        }
        assert_eq!(Params::from_case_id(WorkloadKind::Gemm, "size=big"), None);
        assert_eq!(Params::from_case_id(WorkloadKind::Gemm, "nonsense"), None);
    }

    #[test]
    fn multi_rank_cases_say_how_many_ranks() {
        fn ranks(kind: WorkloadKind, id: &str) -> Option<usize> {
            Params::from_case_id(kind, id).unwrap().ranks()
        }
        assert_eq!(ranks(WorkloadKind::Allreduce, "ranks=4"), Some(4));
        assert_eq!(ranks(WorkloadKind::Allreduce, "default"), Some(0));
        let gen = "prompt_len=4,new_tokens=2,tensor_parallel";
        assert_eq!(ranks(WorkloadKind::Generate, &format!("{gen}=2")), Some(2));
        assert_eq!(ranks(WorkloadKind::Generate, &format!("{gen}=1")), None);
        assert_eq!(
            ranks(WorkloadKind::Precision, "batch=4,mode=fp32,parallel=ddp,ranks=2"),
            Some(2)
        );
        assert_eq!(ranks(WorkloadKind::Precision, "batch=4,mode=fp32"), None);
        assert_eq!(ranks(WorkloadKind::Gemm, "size=8"), None);
    }

    #[test]
    fn job_json_is_tagged_with_the_kind() {
        let p = example(WorkloadKind::Gemm);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["kind"], "gemm");
        assert_eq!(json["m"], 8);
        assert_eq!(serde_json::from_value::<Params>(json).unwrap(), p);
        // The torch worker package gets the parameters alone.
        assert!(p.to_json().get("kind").is_none());
        assert_eq!(p.to_json()["layout"], "nn");
    }
}

/// Keys whose list value is one parameter, not a sweep axis.
pub fn list_valued_keys(kind: WorkloadKind) -> &'static [&'static str] {
    match kind {
        WorkloadKind::Allreduce => &["gpus"],
        WorkloadKind::Command => &command::LIST_KEYS,
        _ => &[],
    }
}

/// Keys left out of a case id unless they are swept: they describe the program, not a point of
/// the sweep (a command's argv).
pub fn id_silent_keys(kind: WorkloadKind) -> &'static [&'static str] {
    match kind {
        WorkloadKind::Command => &command::SILENT_KEYS,
        WorkloadKind::Startup => &startup::SILENT_KEYS,
        _ => &[],
    }
}

/// Sweep axes a workload gets when its suite entry does not name them: a `startup` workload
/// without `metric` measures every start-up metric, one case each.
pub fn default_axes(kind: WorkloadKind) -> Vec<(&'static str, Vec<&'static str>)> {
    match kind {
        WorkloadKind::Startup => vec![("metric", startup::default_metrics())],
        _ => Vec::new(),
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
    /// Share of decode time spent in all-reduce (tensor-parallel generation), %.
    pub const ALLREDUCE_SHARE: &str = "allreduce_share";
    /// One-rank step time over (ranks × the multi-rank step time), % (DDP/FSDP).
    pub const SCALING_EFFICIENCY: &str = "scaling_efficiency";
    /// The first call of a compiled workload, compilation included (ms).
    pub const COMPILE_TIME: &str = "compile_time";
    /// Dynamo's graph breaks while compiling (count).
    pub const GRAPH_BREAKS: &str = "graph_breaks";
}
