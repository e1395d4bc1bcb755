//! Whether a generation case fits its GPUs, from the memory plan in [`crate::workload::memory`]:
//! `tagbench plan` prints it for a suite before anything runs, and `run` writes a `skipped` row,
//! naming what would fit, for a case that cannot.

use anyhow::Result;

use super::plan::{filtered_cases, load_suite};
use crate::case::Case;
use crate::options::SuiteOptions;
use crate::outcome::Outcome;
use crate::render::table::aligned;
use crate::workload::generate::GenerateParams;
use crate::workload::memory::{does_not_fit, plan_of, smallest_fitting};
use crate::workload::Params;
use crate::{errln, out};

const GIB: f64 = (1u64 << 30) as f64;

/// The generation parameters of a case and the tensor-parallel degree it runs at.
fn generation(case: &Case) -> Option<(&GenerateParams, usize)> {
    match &case.params {
        Params::Generate(p) => Some((p, p.tensor_parallel)),
        _ => None,
    }
}

/// The model's name as suites spell it (`llama-3-70b`).
fn model_name(p: &GenerateParams) -> String {
    serde_json::to_value(p.model)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "model".into())
}

/// Why `case` cannot run on GPUs of `gpu_memory` bytes each (`None`: it fits, or it is not a
/// generation case).
pub fn unfit_reason(case: &Case, gpu_memory: u64) -> Option<String> {
    let (p, tp) = generation(case)?;
    does_not_fit(p, &model_name(p), tp, gpu_memory)
}

/// Why two warm workers cannot each hold `case` on one GPU of `gpu_memory` bytes: its memory
/// plan needs more than half of it (`None`: it fits twice, or it is not a generation case).
/// Such a case is paired case by case, not in batches (`run::paired`).
pub fn twice_unfit_reason(case: &Case, gpu_memory: u64) -> Option<String> {
    let (p, tp) = generation(case)?;
    let need = plan_of(p, tp).ok()?.total();
    (need.saturating_mul(2) > gpu_memory).then(|| {
        format!(
            "the memory plan needs {} per rank, more than half of the GPU's {}: two warm workers cannot hold it at once",
            gib(need),
            gib(gpu_memory)
        )
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// `tagbench plan`: the memory per rank of every generation case of a suite and whether it fits
/// `gpu_memory` (given, or detected on this host). Exit 0 when every case fits (or nothing can be
/// judged), 2 when the suite has no generation case.
pub fn cmd_plan(opts: &SuiteOptions, gpu_memory: Option<u64>) -> Result<Outcome> {
    let (suite, _) = load_suite(opts)?;
    let cases = filtered_cases(&suite, &opts.filter);
    let memory = gpu_memory.or_else(|| crate::executor::gpus::host_gpu_memory().ok());
    let fit_head = match memory {
        Some(m) => format!("on {:.0} GiB", m as f64 / GIB),
        None => "fits".into(),
    };
    let mut rows = vec![[
        "case",
        "tp",
        "weights",
        "kv cache",
        "activations",
        "workspace",
        "total/rank",
        &fit_head,
        "smallest tp",
    ]
    .map(String::from)
    .to_vec()];
    let mut others = 0;
    for case in &cases {
        let Some((p, tp)) = generation(case) else {
            others += 1;
            continue;
        };
        let row = match plan_of(p, tp) {
            Ok(m) => {
                let (fits, smallest) = match memory {
                    Some(mem) => (
                        if m.fits(mem) { "fits" } else { "does not fit" }.to_string(),
                        smallest_fitting(p, mem)
                            .map_or_else(|| "none".to_string(), |f| f.tensor_parallel.to_string()),
                    ),
                    None => ("unknown".into(), String::new()),
                };
                vec![
                    case.label(),
                    tp.to_string(),
                    gib(m.weights),
                    gib(m.kv_cache),
                    gib(m.activations),
                    gib(m.workspace),
                    gib(m.total()),
                    fits,
                    smallest,
                ]
            }
            Err(e) => vec![case.label(), tp.to_string(), format!("cannot shard: {e}")],
        };
        rows.push(row);
    }
    out!("{}", aligned(&rows, |i| (1..7).contains(&i)))?;
    if memory.is_none() {
        errln!("no GPU memory given (--gpu-memory) or detected (nvidia-smi): fit not judged");
    }
    if others > 0 {
        errln!("{others} cases of other workloads have no memory plan (only generate cases are planned)");
    }
    // Only the header: the suite has no generation case to plan.
    Ok(if rows.len() == 1 {
        Outcome::Error
    } else {
        Outcome::Complete
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(params: serde_json::Value) -> Case {
        let params = Params::parse(crate::workload::WorkloadKind::Generate, params).unwrap();
        Case {
            workload: "generate".into(),
            kind: crate::workload::WorkloadKind::Generate,
            id: "x".into(),
            params,
            measure: Default::default(),
        }
    }

    #[test]
    fn a_70b_case_on_one_80_gib_gpu_is_unfit_and_says_what_fits() {
        let c = case(serde_json::json!({
            "model": "llama-3-70b", "dtype": "bf16", "prompt_len": 2048, "new_tokens": 128
        }));
        let why = unfit_reason(&c, 80 << 30).unwrap();
        assert!(why.starts_with("llama-3-70b bf16 needs"), "{why}");
        assert!(why.contains("80 GiB GPUs need tensor_parallel ≥ 2"), "{why}");
        assert_eq!(unfit_reason(&c, 200 << 30), None);
    }

    #[test]
    fn tiny_fits_anything() {
        let c = case(serde_json::json!({"model": "tiny", "prompt_len": 16, "new_tokens": 8}));
        assert_eq!(unfit_reason(&c, 1 << 30), None);
    }

    #[test]
    fn a_case_over_half_the_gpu_is_paired_case_by_case() {
        let c = case(serde_json::json!({
            "model": "llama-3-8b", "dtype": "bf16", "prompt_len": 512, "new_tokens": 64
        }));
        // About 16 GiB of weights: twice that fits 80 GiB, not 24 GiB.
        assert_eq!(twice_unfit_reason(&c, 80 << 30), None);
        let why = twice_unfit_reason(&c, 24 << 30).unwrap();
        assert!(why.contains("more than half of the GPU's 24.00 GiB"), "{why}");
        let tiny = case(serde_json::json!({"model": "tiny", "prompt_len": 16, "new_tokens": 8}));
        assert_eq!(twice_unfit_reason(&tiny, 1 << 30), None);
    }
}
