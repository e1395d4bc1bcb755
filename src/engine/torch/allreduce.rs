//! All-reduce through torch.distributed on the engine's multi-rank launch (`ranks.rs`): every
//! rank runs each size and sample in lockstep. Metrics follow nccl-tests: time, algbw, busbw per
//! message size.

use serde_json::json;

use super::TorchEngine;
use crate::case::{Better, Case, Device};
use crate::engine::CaseOutput;
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::allreduce::{algbw_gbps, busbw_gbps, sized, AllreduceParams};
use crate::workload::metric;

impl TorchEngine {
    pub(super) fn run_allreduce(
        &mut self,
        p: &AllreduceParams,
        case: &Case,
    ) -> Result<CaseOutput, CaseError> {
        self.session()?;
        let ranks = self.ranks_for(p.ranks);
        self.with_ranks(ranks, |e| e.allreduce_on_ranks(p, case, ranks))
    }

    fn allreduce_on_ranks(
        &mut self,
        p: &AllreduceParams,
        case: &Case,
        ranks: usize,
    ) -> Result<CaseOutput, CaseError> {
        let mut out = CaseOutput::new(self.device.as_str());
        self.setup(case, json!({}), &mut out)?;
        if self.device == Device::Cuda {
            // Every rank's GPU: the numbers are the group's, not one device's. Ranks on other
            // nodes (a Slurm step) are not this worker's to name.
            out.device = match self.launcher()? {
                super::Launcher::Local => self.rank_devices(ranks)?.join(","),
                super::Launcher::Slurm(_) => format!("cuda x{ranks} ranks"),
            };
            out.gpu_index = None;
        }
        let mut largest: Option<Vec<f64>> = None;
        for bytes in p.sizes() {
            let r = self.request(&json!({"op": "size", "bytes": bytes}))?;
            let wrong = r["wrong"].as_u64().unwrap_or(u64::MAX);
            let elements = r["elements"].as_u64().unwrap_or(0);
            let moved = elements * p.dtype.size_bytes() as u64;
            let samples = Sampler::new(&case.measure).run(|| -> Result<f64, CaseError> {
                let r = self.request(&json!({"op": "run"}))?;
                r["seconds"].as_f64().ok_or_else(|| {
                    CaseError::Failed(anyhow::anyhow!(
                        "the torch worker's run reply has no seconds: {r}"
                    ))
                })
            })?;
            let s = &samples.values;
            out.metric(
                &sized(metric::TIME_US, moved),
                "us",
                Better::Lower,
                s.iter().map(|t| t * 1e6).collect(),
            );
            let algbw: Vec<f64> = s.iter().map(|&t| algbw_gbps(moved, t)).collect();
            let busbw: Vec<f64> = algbw.iter().map(|&a| busbw_gbps(a, ranks)).collect();
            out.metric(&sized(metric::ALGBW, moved), "GB/s", Better::Higher, algbw);
            out.metric(
                &sized(metric::BUSBW, moved),
                "GB/s",
                Better::Higher,
                busbw.clone(),
            );
            out.metric(
                &sized(metric::WRONG, moved),
                "elements",
                Better::Lower,
                vec![wrong as f64],
            );
            if wrong > 0 {
                out.warn(format!(
                    "all-reduce of {moved} bytes gave {wrong} wrong elements over {ranks} ranks: the result is broken"
                ));
            }
            largest = Some(busbw);
        }
        self.finish()?;
        // The largest message's bus bandwidth is the headline number (nccl-tests' plateau).
        if let Some(busbw) = largest {
            out.metric(metric::BUSBW, "GB/s", Better::Higher, busbw);
        }
        Ok(out)
    }
}
