//! The torch engine: the image's own python3 and PyTorch, driven by an embedded worker package.
//!
//! The worker package (`worker/tagbench_worker/`, Python) sets a case up and times one sample per
//! request; this side runs the shared [`Sampler`] over those samples and turns them into the same
//! metrics as the native engine, so that both engines share one statistics implementation and one
//! set of metric names. The constants the worker times with come from here ([`timing_constants`]).

mod allreduce;
pub mod launcher;
mod python;
mod ranks;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use self::launcher::Launcher;
use self::python::{PyProcess, Role, ScriptFile};
use self::ranks::RankGroup;
use super::{CaseOutput, Engine};
use crate::case::{Better, Case, Device, Seconds};
use crate::components::Distribution;
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::allreduce::AllreduceParams;
use crate::workload::attention::AttentionParams;
use crate::workload::command::CommandParams;
use crate::workload::conv::ConvParams;
use crate::workload::gemm::GemmParams;
use crate::workload::generate::GenerateParams;
use crate::workload::metric;
use crate::workload::precision::{Parallel, PrecisionParams};
use crate::workload::probe::ProbeParams;
use crate::workload::startup::StartupParams;
use crate::workload::Params;

pub use self::python::python_command;

use crate::engine::PrecisionReference as Reference;

/// GPU (or CPU) time one torch sample should span: a small operation is repeated until then, so
/// that timer resolution and launch overhead do not dominate it.
const SAMPLE_TARGET_S: Seconds = 1e-3;
/// The most calls one torch sample repeats.
const MAX_CALLS_PER_SAMPLE: usize = 1000;

/// The constants the worker times with, sent with every setup (`timing.py`): the sample target
/// above, and the queued sample's lead and retakes of the native CUDA engine (one home:
/// `engine/cuda/device.rs`).
fn timing_constants() -> Value {
    use crate::engine::cuda::device;
    json!({
        "min_sample_s": SAMPLE_TARGET_S,
        "max_calls": MAX_CALLS_PER_SAMPLE,
        "min_lead_s": device::MIN_LEAD_S,
        "max_lead_s": device::MAX_LEAD_S,
        "max_retakes": device::MAX_RETAKES,
    })
}

pub struct TorchEngine {
    python: std::ffi::OsString,
    device: Device,
    gpus: Vec<usize>,
    script: ScriptFile,
    session: Option<PyProcess>,
    /// The ranks of the multi-rank case being measured: requests go to its rank 0 meanwhile.
    group: Option<RankGroup>,
    /// Who starts those ranks: this worker, or Slurm (this worker is then one of them); an
    /// error when the step's environment is incomplete.
    launcher: Result<Launcher, String>,
    /// Why torch cannot run here (no python3, torch not importable): every case skips with it.
    unavailable: Option<String>,
    /// What python said when it started (versions, GPU count).
    hello: Value,
    precision_refs: BTreeMap<String, Reference>,
}

impl TorchEngine {
    pub fn new(device: Device, gpus: &[usize]) -> Self {
        Self::with_python(python_command(), device, gpus)
    }

    /// An engine on a given python (tests; `new` reads `TAGBENCH_PYTHON`).
    pub fn with_python(python: std::ffi::OsString, device: Device, gpus: &[usize]) -> Self {
        TorchEngine {
            python,
            device,
            gpus: gpus.to_vec(),
            script: ScriptFile::write(),
            session: None,
            group: None,
            launcher: Launcher::from_env(),
            unavailable: None,
            hello: Value::Null,
            precision_refs: BTreeMap::new(),
        }
    }

    /// The device name python uses: `cpu`, or the first GPU the job may use.
    fn device_name(&self) -> String {
        match self.device {
            Device::Cpu => "cpu".into(),
            Device::Cuda => format!("cuda:{}", self.gpus.first().copied().unwrap_or(0)),
        }
    }

    /// The running python session, started (and greeted) on first use or after it died.
    fn session(&mut self) -> Result<&mut PyProcess, CaseError> {
        if let Some(reason) = &self.unavailable {
            return Err(CaseError::Skipped(reason.clone()));
        }
        if !self.session.as_mut().is_some_and(PyProcess::alive) {
            self.session = None;
            let started = PyProcess::spawn(&self.python, &self.script, Role::Session, &[])
                .and_then(|mut p| p.request(&json!({"op": "hello"})).map(|hello| (p, hello)));
            match started {
                Ok((p, hello)) => {
                    self.hello = hello;
                    self.session = Some(p);
                }
                Err(CaseError::Skipped(reason)) => {
                    self.unavailable = Some(reason.clone());
                    return Err(CaseError::Skipped(reason));
                }
                Err(e) => return Err(e),
            }
        }
        self.session
            .as_mut()
            .ok_or_else(|| CaseError::Failed(anyhow::anyhow!("the torch session did not start")))
    }

    fn request(&mut self, req: &Value) -> Result<Value, CaseError> {
        if let Some(group) = self.group.as_mut() {
            return group.request(req);
        }
        let result = self.session()?.request(req);
        if matches!(result, Err(CaseError::Failed(_))) && !self.session.as_mut().is_some_and(PyProcess::alive)
        {
            // A crashed python is replaced for the next case.
            self.session = None;
        }
        result
    }

    /// Sets a case up in python; returns its facts and passes its warnings on.
    fn setup(&mut self, case: &Case, extra: Value, out: &mut CaseOutput) -> Result<Value, CaseError> {
        let mut req = json!({
            "op": "setup",
            "kind": case.params.kind().as_str(),
            "device": self.device_name(),
            "params": case.params.to_json(),
            "timing": timing_constants(),
        });
        if let (Value::Object(r), Value::Object(e)) = (&mut req, extra) {
            r.extend(e);
        }
        let reply = self.request(&req)?;
        for w in reply["warnings"].as_array().into_iter().flatten() {
            out.warn(w.as_str().unwrap_or_default());
        }
        let facts = reply["facts"].clone();
        if let Some(name) = facts["gpu_name"].as_str() {
            out.gpu_name = name.to_string();
        }
        if let Some(i) = facts["gpu_index"].as_u64() {
            out.gpu_index = Some(i as usize);
            out.device = format!("cuda:{i}");
        }
        Ok(facts)
    }

    /// Samples the set-up case under the case's settings. Returns the seconds of each kept
    /// sample and the extra values python reported with them (warm-up calls dropped).
    fn sample(&mut self, case: &Case) -> Result<(Vec<Seconds>, Vec<Value>), CaseError> {
        let mut extras = Vec::new();
        let samples = Sampler::new(&case.measure).run(|| -> Result<Seconds, CaseError> {
            let r = self.request(&json!({"op": "run"}))?;
            let s = r["seconds"].as_f64().ok_or_else(|| {
                CaseError::Failed(anyhow::anyhow!(
                    "the torch worker's run reply has no seconds: {r}"
                ))
            })?;
            extras.push(r["values"].clone());
            Ok(s)
        })?;
        let kept = extras.split_off(samples.warmup_iterations.min(extras.len()));
        Ok((samples.values, kept))
    }

    fn finish(&mut self) -> Result<Value, CaseError> {
        self.request(&json!({"op": "finish"}))
    }

    /// Runs `f` with every request going to a fresh group of `ranks` processes (one per GPU on
    /// CUDA), torn down afterwards whatever happened: one launch for every multi-rank workload.
    fn with_ranks<T>(
        &mut self,
        ranks: usize,
        f: impl FnOnce(&mut Self) -> Result<T, CaseError>,
    ) -> Result<T, CaseError> {
        // The session tells whether torch is here at all and how many GPUs it sees.
        self.session()?;
        let group = match self.launcher()? {
            Launcher::Local => {
                let devices = self.rank_devices(ranks)?;
                RankGroup::launch(&self.python, &self.script, &devices, self.device)?
            }
            Launcher::Slurm(me) => {
                if ranks != me.spec.world {
                    return Err(CaseError::Failed(anyhow::anyhow!(
                        "the case needs {ranks} ranks but its slurm step has {} tasks",
                        me.spec.world
                    )));
                }
                let device = self.rank_device(me.spec.local_rank)?;
                RankGroup::lead(&self.python, &self.script, &device, &me, self.device)?
            }
        };
        self.group = Some(group);
        let result = f(self);
        // Dropping the group ends every rank (a hung one is killed) before the next case.
        self.group = None;
        result
    }

    fn launcher(&self) -> Result<Launcher, CaseError> {
        self.launcher
            .clone()
            .map_err(|e| CaseError::Failed(anyhow::anyhow!("cannot start the ranks: {e}")))
    }

    /// How many ranks a case asking for `asked` runs as (`0`: every GPU, two processes on the
    /// CPU, or as many as the Slurm step has tasks).
    fn ranks_for(&self, asked: usize) -> usize {
        match (&self.launcher, self.device, asked) {
            (Ok(Launcher::Slurm(me)), _, 0) => me.spec.world,
            (_, Device::Cpu, 0) => crate::workload::allreduce::CPU_DEFAULT_RANKS,
            (_, Device::Cuda, 0) => self.gpu_pool().len().max(1),
            (_, _, n) => n,
        }
    }

    /// The device of each of `ranks` ranks: `cpu` for every CPU rank, one GPU per rank on CUDA.
    fn rank_devices(&self, ranks: usize) -> Result<Vec<String>, CaseError> {
        let gpus = self.gpu_pool().len();
        if self.device == Device::Cuda && gpus > 0 && ranks > gpus {
            return Err(CaseError::skipped(format!(
                "{ranks} ranks need {ranks} GPUs (one process per GPU); the target has {gpus}"
            )));
        }
        (0..ranks).map(|r| self.rank_device(r)).collect()
    }

    /// The device of the rank with node-local index `local`: `cpu`, or the node's `local`-th GPU.
    fn rank_device(&self, local: usize) -> Result<String, CaseError> {
        match self.device {
            Device::Cpu => Ok("cpu".to_string()),
            Device::Cuda => {
                let pool = self.gpu_pool();
                if pool.is_empty() {
                    return Err(CaseError::skipped("torch sees no CUDA device"));
                }
                match pool.get(local) {
                    Some(g) => Ok(format!("cuda:{g}")),
                    None => Err(CaseError::skipped(format!(
                        "local rank {local} needs a GPU of its own (one process per GPU); the node gives the step {}",
                        pool.len()
                    ))),
                }
            }
        }
    }

    /// The GPUs the job may use: its own list, else every GPU torch sees.
    fn gpu_pool(&self) -> Vec<usize> {
        if self.gpus.is_empty() {
            (0..self.hello["gpu_count"].as_u64().unwrap_or(0) as usize).collect()
        } else {
            self.gpus.clone()
        }
    }

    /// A generation on the engine's current ranks: the session, or the group of a
    /// tensor-parallel case (every rank decodes; rank 0 reports).
    fn generate_here(&mut self, p: &GenerateParams, case: &Case) -> Result<CaseOutput, CaseError> {
        let shape = p.shape().map_err(|e| CaseError::Failed(anyhow::anyhow!(e)))?;
        let mut shape_json = serde_json::to_value(shape).map_err(|e| CaseError::Failed(e.into()))?;
        shape_json["parameters"] = json!(shape.parameters());
        let mut out = self.new_output();
        let facts = self.setup(case, json!({"shape": shape_json}), &mut out)?;
        compile_metrics(&facts, &mut out);
        let (seconds, runs) = self.sample(case)?;
        let done = self.finish()?;
        let ttft: Vec<f64> = runs.iter().filter_map(|v| v["ttft_s"].as_f64()).collect();
        let tpot: Vec<f64> = runs.iter().filter_map(|v| v["tpot_s"].as_f64()).collect();
        out.generation_metrics(p.batch, p.prompt_len, &ttft, &tpot);
        // The whole generation, prompt to last token: what a client of generate() waits.
        out.metric(
            metric::LATENCY,
            "ms",
            Better::Lower,
            seconds.iter().map(|s| s * 1e3).collect(),
        );
        let share: Vec<f64> = runs
            .iter()
            .filter_map(|v| v["allreduce_share_pct"].as_f64())
            .collect();
        if !share.is_empty() {
            out.metric(metric::ALLREDUCE_SHARE, "%", Better::Lower, share);
        }
        match done["peak_memory_mib"].as_f64() {
            Some(mib) => out.metric(metric::PEAK_MEMORY, "MiB", Better::Lower, vec![mib]),
            None => out.warn("peak memory not measured: the kernel's peak-RSS reset (/proc/self/clear_refs) is not available"),
        }
        // What was generated, hashed: greedy decoding from one seed must give the same tokens at
        // every tensor_parallel, which a reader of the rows can check.
        if let Some(hash) = done["tokens_hash"].as_str().filter(|h| !h.is_empty()) {
            let mut status = format!(
                "tokens {hash} (greedy, seed 0) at tensor_parallel {}",
                p.tensor_parallel
            );
            if let Some(v) = facts["transformers_version"].as_str() {
                let attn = facts["attn_implementation"].as_str().unwrap_or("?");
                status.push_str(&format!(", impl hf (transformers {v}, attention {attn})"));
            }
            out.status = Some(status);
        }
        Ok(out)
    }

    fn remember_reference(&mut self, p: &PrecisionParams, median: f64, loss: f64) -> Result<(), CaseError> {
        let key = serde_json::to_string(&p.reference()).map_err(|e| CaseError::Failed(e.into()))?;
        self.precision_refs.insert(
            key,
            Reference {
                step_median_s: median,
                loss,
            },
        );
        Ok(())
    }

    /// The single-rank fp32 run of `p` (measured now unless this worker already has it).
    fn fp32_reference(&mut self, case: &Case, p: &PrecisionParams) -> Result<Reference, CaseError> {
        let key = serde_json::to_string(&p.reference()).map_err(|e| CaseError::Failed(e.into()))?;
        if let Some(r) = self.precision_refs.get(&key) {
            return Ok(r.clone());
        }
        let mut scratch = self.new_output();
        let (m, l, _, _) = self.precision_mode(case, &p.reference(), &mut scratch)?;
        self.remember_reference(&p.reference(), m, l)?;
        Ok(Reference {
            step_median_s: m,
            loss: l,
        })
    }

    /// A DDP/FSDP step over `p.ranks` ranks, against the one-rank step of the same mode measured
    /// in the same case (scaling efficiency) and the one-rank fp32 loss (numerics).
    fn precision_parallel(&mut self, p: &PrecisionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        let mut out = self.new_output();
        let (_, loss, steps, peak) = self.with_ranks(p.ranks, |e| e.precision_mode(case, p, &mut out))?;
        let mut scratch = self.new_output();
        let (one_rank, one_loss, _, _) = self.precision_mode(case, &p.single_rank(), &mut scratch)?;
        let reference = if p.single_rank().is_reference() {
            self.remember_reference(p, one_rank, one_loss)?;
            Reference {
                step_median_s: one_rank,
                loss: one_loss,
            }
        } else {
            self.fp32_reference(case, p)?
        };
        out.step_metrics(p.batch, &steps);
        // Strong scaling: the same global batch on one rank, over N ranks' time.
        out.metric(
            metric::SCALING_EFFICIENCY,
            "%",
            Better::Higher,
            steps
                .iter()
                .map(|s| 100.0 * one_rank / (p.ranks as f64 * s))
                .collect(),
        );
        if let Some(mib) = peak {
            out.metric(metric::PEAK_MEMORY, "MiB", Better::Lower, vec![mib]);
        }
        out.metric(
            metric::LOSS_DIFF,
            "relative",
            Better::Lower,
            vec![crate::engine::relative_diff(loss, reference.loss)],
        );
        if !loss.is_finite() {
            out.warn(format!(
                "{} {} loss is not finite after the seeded steps",
                p.parallel.as_str(),
                p.mode.as_str()
            ));
        }
        Ok(out)
    }

    fn new_output(&self) -> CaseOutput {
        CaseOutput::new(self.device.as_str())
    }

    /// GFLOP/s on the CPU, TFLOP/s on GPUs, as the native engines report them.
    fn rate_unit(&self) -> (&'static str, f64) {
        match self.device {
            Device::Cpu => ("GFLOP/s", 1e9),
            Device::Cuda => ("TFLOP/s", 1e12),
        }
    }

    /// Measures one precision mode: (median step seconds, loss after the seeded steps, step
    /// samples, peak memory MiB).
    fn precision_mode(
        &mut self,
        case: &Case,
        params: &PrecisionParams,
        out: &mut CaseOutput,
    ) -> Result<(f64, f64, Vec<Seconds>, Option<f64>), CaseError> {
        let mut c = case.clone();
        c.params = Params::Precision(params.clone());
        let steps = json!({"numerics_steps": crate::workload::precision::NUMERICS_STEPS});
        let facts = self.setup(&c, steps, out)?;
        compile_metrics(&facts, out);
        let loss = facts["loss"].as_f64().unwrap_or(f64::NAN);
        let (seconds, _) = self.sample(&c)?;
        let peak = self.finish()?["peak_memory_mib"].as_f64();
        let median = crate::stats::summarize(&seconds).map_or(f64::NAN, |s| s.median);
        Ok((median, loss, seconds, peak))
    }
}

/// `compile_time` and `graph_breaks` of a compiled case, from its setup facts (one value a round:
/// the first call, compilation included, happens once per worker).
fn compile_metrics(facts: &Value, out: &mut CaseOutput) {
    if let Some(s) = facts["compile_time_s"].as_f64() {
        out.metric(metric::COMPILE_TIME, "ms", Better::Lower, vec![s * 1e3]);
    }
    if let Some(n) = facts["graph_breaks"].as_f64() {
        out.metric(metric::GRAPH_BREAKS, "count", Better::Lower, vec![n]);
    }
}

/// The distributions of a `distributions` reply of the worker script.
fn parse_distributions(reply: &Value) -> Vec<Distribution> {
    reply
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| Distribution {
            name: d["name"].as_str().unwrap_or_default().to_string(),
            version: d["version"].as_str().unwrap_or_default().to_string(),
            imported: d["imported"].as_bool().unwrap_or(false),
            location: d["location"].as_str().unwrap_or_default().to_string(),
            top_level: d["top_level"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        })
        .filter(|d| !d.name.is_empty())
        .collect()
}

/// How long python gets to list its distributions (it takes well under a second) before it is
/// killed and the list left empty: a hung python must not keep the worker from its end.
const LISTING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The Python distributions that the python here (`TAGBENCH_PYTHON`, else `python3`) can
/// import, none marked imported: what a `command` case's programs find, for an engine without a
/// python session of its own. Empty where there is no python or it cannot answer.
pub fn importable_distributions() -> Vec<Distribution> {
    let script = ScriptFile::write();
    let Ok(mut p) = PyProcess::spawn(&python_command(), &script, Role::Distributions, &[]) else {
        return Vec::new();
    };
    let pid = p.pid();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let reply = p.last_reply();
        let _ = p.ended();
        let _ = tx.send(reply);
    });
    match rx.recv_timeout(LISTING_TIMEOUT) {
        Ok(Some(Ok(v))) => parse_distributions(&v["distributions"]),
        Ok(_) => Vec::new(),
        Err(_) => {
            // SAFETY: kill(2) on the python this function started, which has not been waited for.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            Vec::new()
        }
    }
}

impl Engine for TorchEngine {
    fn name(&self) -> &'static str {
        "torch"
    }

    /// Fresh pythons, apart from this engine's session: `import torch`, and on CUDA the first
    /// kernel.
    fn startup(&mut self, p: &StartupParams, case: &Case) -> Result<CaseOutput, CaseError> {
        let device = self.device_name();
        crate::engine::startup::torch(&self.python, self.device, &device, p, case)
    }

    fn env(&mut self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let python = self.python.to_string_lossy().into_owned();
        match self.session() {
            Ok(_) => {
                for (k, v) in self.hello.as_object().into_iter().flatten() {
                    m.insert(
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    );
                }
                m.insert(
                    "engine".into(),
                    format!(
                        "torch {} ({python}, python {}) on {}",
                        self.hello["torch_version"].as_str().unwrap_or("?"),
                        self.hello["python_version"].as_str().unwrap_or("?"),
                        self.device_name()
                    ),
                );
            }
            Err(e) => {
                m.insert("engine".into(), format!("torch ({python}) unavailable: {e}"));
            }
        }
        m
    }

    /// What the python session loaded: its mapped shared objects (read here, in the same
    /// filesystem) and the distributions importable in the image. Without a live session (torch
    /// missing, every case skipped), this worker's own process.
    fn components(&mut self) -> crate::components::Components {
        use crate::components::{library, Components};
        if !self.session.as_mut().is_some_and(PyProcess::alive) {
            return Components::of_this_process();
        }
        let Ok(reply) = self.request(&json!({"op": "components"})) else {
            return Components::of_this_process();
        };
        let libraries = reply["maps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(library)
            .collect();
        Components::new(libraries, parse_distributions(&reply["distributions"]))
    }

    fn probe(&mut self, _p: &ProbeParams, _case: &Case) -> Result<CaseOutput, CaseError> {
        let mut out = self.new_output();
        let reply = self
            .request(&json!({"op": "setup", "kind": "probe", "device": self.device_name(), "params": {}}))?;
        out.status = reply["status"].as_str().map(str::to_string);
        out.env = crate::engine::cpu::probe::host_info();
        for (k, v) in reply["env"].as_object().into_iter().flatten() {
            out.env.insert(
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            );
        }
        if let Some(name) = reply["env"]["gpu_name"].as_str() {
            out.gpu_name = name.to_string();
        }
        for w in reply["warnings"].as_array().into_iter().flatten() {
            out.warn(w.as_str().unwrap_or_default());
        }
        Ok(out)
    }

    fn gemm(&mut self, p: &GemmParams, case: &Case) -> Result<CaseOutput, CaseError> {
        let mut out = self.new_output();
        // On the CPU, rotate inputs past the last-level cache exactly as the native engine does.
        let rotate = crate::engine::cpu::rotation_count(p.bytes() as usize);
        self.setup(case, json!({"rotate": rotate}), &mut out)?;
        let (seconds, _) = self.sample(case)?;
        self.finish()?;
        let (unit, scale) = self.rate_unit();
        out.latency_and_rate(&seconds, p.flops(), metric::THROUGHPUT, unit, scale);
        Ok(out)
    }

    fn attention(&mut self, p: &AttentionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        let mut out = self.new_output();
        let facts = self.setup(case, json!({}), &mut out)?;
        compile_metrics(&facts, &mut out);
        let (seconds, _) = self.sample(case)?;
        self.finish()?;
        let (unit, scale) = self.rate_unit();
        out.latency_and_rate(&seconds, p.flops(), metric::THROUGHPUT, unit, scale);
        // Which kernel SDPA chose is part of the result: a new image may switch it.
        out.status = Some(format!(
            "sdpa backend: {}",
            facts["sdpa_backend"].as_str().unwrap_or("unknown")
        ));
        Ok(out)
    }

    fn generate(&mut self, p: &GenerateParams, case: &Case) -> Result<CaseOutput, CaseError> {
        if p.tensor_parallel > 1 {
            return self.with_ranks(p.tensor_parallel, |e| e.generate_here(p, case));
        }
        self.generate_here(p, case)
    }

    fn precision(&mut self, p: &PrecisionParams, case: &Case) -> Result<CaseOutput, CaseError> {
        if p.parallel != Parallel::None {
            return self.precision_parallel(p, case);
        }
        let mut out = self.new_output();
        let (median, loss, steps, peak) = self.precision_mode(case, p, &mut out)?;
        out.step_metrics(p.batch, &steps);
        if let Some(mib) = peak {
            out.metric(metric::PEAK_MEMORY, "MiB", Better::Lower, vec![mib]);
        }
        if p.is_reference() {
            self.remember_reference(p, median, loss)?;
            return Ok(out);
        }
        let reference = self.fp32_reference(case, p)?;
        out.versus_fp32(p.mode.as_str(), &reference, median, loss);
        Ok(out)
    }

    fn allreduce(&mut self, p: &AllreduceParams, case: &Case) -> Result<CaseOutput, CaseError> {
        self.run_allreduce(p, case)
    }

    /// One convolution's forward, data gradient and weight gradient per call (cuDNN on CUDA,
    /// oneDNN or ATen on the CPU), checked against a float64 convolution on the CPU first.
    fn conv(&mut self, p: &ConvParams, case: &Case) -> Result<CaseOutput, CaseError> {
        let shape = p.shape().map_err(|e| CaseError::Failed(anyhow::anyhow!(e)))?;
        let mut out = self.new_output();
        let facts = self.setup(
            case,
            json!({"shape": shape, "out_size": shape.out_size()}),
            &mut out,
        )?;
        let (seconds, _) = self.sample(case)?;
        self.finish()?;
        let (unit, scale) = self.rate_unit();
        out.latency_and_rate(&seconds, p.flops(), metric::THROUGHPUT, unit, scale);
        // Which library ran it is part of the result: a new image may change its version.
        out.status = facts["backend"].as_str().map(str::to_string);
        Ok(out)
    }

    fn command(&mut self, p: &CommandParams, case: &Case) -> Result<CaseOutput, CaseError> {
        // The program is the user's: no torch session is needed to run it.
        crate::engine::command::run(p, case, self.device, self.new_output())
    }

    fn follower(&self) -> Option<String> {
        match &self.launcher {
            Ok(Launcher::Slurm(me)) if me.spec.rank != 0 => Some(me.label()),
            _ => None,
        }
    }

    fn follow(&mut self, case: &Case) -> Result<(), CaseError> {
        let me = match self.launcher()? {
            Launcher::Slurm(me) => me,
            Launcher::Local => {
                return Err(CaseError::Failed(anyhow::anyhow!(
                    "this worker launches its own ranks; it follows none"
                )))
            }
        };
        if case.params.ranks().is_none() {
            // A one-process case is rank 0's alone.
            return Ok(());
        }
        // No session here (it would cost a python start): the node-local GPU of this rank, as
        // rank 0's worker numbers it.
        let device = match self.device {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda => {
                let l = me.spec.local_rank;
                format!("cuda:{}", self.gpus.get(l).copied().unwrap_or(l))
            }
        };
        ranks::follow(&self.python, &self.script, &device, &me, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::WorkloadKind;

    #[test]
    fn missing_python_skips_every_case() {
        // A path that cannot exist: spawning it fails with NotFound, which is a skip.
        let mut e = TorchEngine::with_python("/nonexistent/tagbench-test/python3".into(), Device::Cpu, &[]);
        let case = Case {
            workload: "gemm".into(),
            kind: WorkloadKind::Gemm,
            id: "default".into(),
            params: Params::from_case_id(WorkloadKind::Gemm, "m=8,n=8,k=8,dtype=fp32,layout=nn").unwrap(),
            measure: Default::default(),
        };
        for _ in 0..2 {
            match crate::engine::run_case(&mut e, &case) {
                Err(CaseError::Skipped(r)) => assert!(r.contains("no python3 in image"), "{r}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(e.env()["engine"].contains("unavailable"));
    }
}
