//! All-reduce through torch.distributed: one python process per rank (gloo between local
//! processes on the CPU, NCCL with one process per GPU on CUDA), rank 0 answering the protocol
//! and ordering the others. Metrics follow nccl-tests: time, algbw, busbw per message size.

use std::time::Duration;

use serde_json::json;

use super::python::{PyProcess, Role};
use super::TorchEngine;
use crate::case::{Better, Case, Device};
use crate::engine::CaseOutput;
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::allreduce::{algbw_gbps, busbw_gbps, sized, AllreduceParams};
use crate::workload::metric;

/// CPU ranks when the case does not say (`ranks = 0`): two processes exercise the whole path.
const CPU_DEFAULT_RANKS: usize = 2;

impl TorchEngine {
    pub(super) fn run_allreduce(
        &mut self,
        p: &AllreduceParams,
        case: &Case,
    ) -> Result<CaseOutput, CaseError> {
        // The session tells whether torch is here at all and how many GPUs it sees.
        self.session()?;
        let devices = self.rank_devices(p)?;
        let ranks = devices.len();
        let port = free_port()?;
        let spec = json!({"dtype": p.dtype.as_str(), "op": serde_json::to_value(p.op).unwrap_or_default()});
        let env = |rank: usize| {
            let mut e = vec![
                ("MASTER_ADDR".to_string(), "127.0.0.1".to_string()),
                ("MASTER_PORT".to_string(), port.to_string()),
                ("WORLD_SIZE".to_string(), ranks.to_string()),
                ("RANK".to_string(), rank.to_string()),
                ("LOCAL_RANK".to_string(), rank.to_string()),
                ("TAGBENCH_ALLREDUCE".to_string(), spec.to_string()),
            ];
            // Loopback only: gloo would otherwise pick the interface of the host name, which a
            // container without a network may not have.
            if self.device == Device::Cpu && std::env::var_os("GLOO_SOCKET_IFNAME").is_none() {
                e.push(("GLOO_SOCKET_IFNAME".to_string(), "lo".to_string()));
            }
            e
        };
        let mut followers = Vec::with_capacity(ranks - 1);
        for (rank, device) in devices.iter().enumerate().skip(1) {
            followers.push(PyProcess::spawn(
                &self.python,
                &self.script,
                Role::Follower { device },
                &env(rank),
            )?);
        }
        let mut leader = PyProcess::spawn(&self.python, &self.script, Role::Session, &env(0))?;
        leader.request(&json!({"op": "hello"}))?;
        let mut out = CaseOutput::new(self.device.as_str());
        let setup = leader.request(&json!({
            "op": "setup",
            "kind": "allreduce",
            "device": devices[0],
            "params": case.params.to_json(),
        }))?;
        for w in setup["warnings"].as_array().into_iter().flatten() {
            out.warn(w.as_str().unwrap_or_default());
        }
        if let Some(name) = setup["facts"]["gpu_name"].as_str() {
            out.gpu_name = name.to_string();
            // Every rank's GPU: the numbers are the group's, not one device's.
            out.device = devices.join(",");
        }
        let mut largest: Option<Vec<f64>> = None;
        for bytes in p.sizes() {
            let r = leader.request(&json!({"op": "size", "bytes": bytes}))?;
            let wrong = r["wrong"].as_u64().unwrap_or(u64::MAX);
            let elements = r["elements"].as_u64().unwrap_or(0);
            let moved = elements * p.dtype.size_bytes() as u64;
            let samples = Sampler::new(&case.measure).run(|| -> Result<f64, CaseError> {
                let r = leader.request(&json!({"op": "run"}))?;
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
        leader.request(&json!({"op": "finish"}))?;
        // The largest message's bus bandwidth is the headline number (nccl-tests' plateau).
        if let Some(busbw) = largest {
            out.metric(metric::BUSBW, "GB/s", Better::Higher, busbw);
        }
        for (rank, f) in followers.iter_mut().enumerate() {
            match f.wait_or_kill(Duration::from_secs(30)) {
                Some(s) if s.success() => {}
                other => out.warn(format!("all-reduce rank {} ended badly: {other:?}", rank + 1)),
            }
        }
        Ok(out)
    }

    /// The device of each rank: `cpu` for every CPU rank, one GPU per rank on CUDA.
    fn rank_devices(&self, p: &AllreduceParams) -> Result<Vec<String>, CaseError> {
        match self.device {
            Device::Cpu => {
                let n = if p.ranks == 0 { CPU_DEFAULT_RANKS } else { p.ranks };
                Ok(vec!["cpu".to_string(); n])
            }
            Device::Cuda => {
                let visible = self.hello["gpu_count"].as_u64().unwrap_or(0) as usize;
                let pool: Vec<usize> = if self.gpus.is_empty() {
                    (0..visible).collect()
                } else {
                    self.gpus.clone()
                };
                if pool.is_empty() {
                    return Err(CaseError::skipped(
                        "torch sees no CUDA device for NCCL all-reduce",
                    ));
                }
                let n = if p.ranks == 0 { pool.len() } else { p.ranks };
                if n > pool.len() {
                    return Err(CaseError::skipped(format!(
                        "all-reduce over {n} ranks needs {n} GPUs; the target has {}",
                        pool.len()
                    )));
                }
                Ok(pool[..n].iter().map(|g| format!("cuda:{g}")).collect())
            }
        }
    }
}

/// A TCP port on loopback that was free a moment ago, for torch.distributed's rendezvous.
fn free_port() -> Result<u16, CaseError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CaseError::Failed(anyhow::anyhow!("failed to find a free loopback port: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
