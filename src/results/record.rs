//! The only constructors of `results.csv` and `samples.csv` rows. Every row of a target (metric,
//! sample and status rows alike) takes its identity columns (engine, executor, image, device, GPU)
//! from one [`TargetMeta`], which learns the device and GPU from the worker's messages. Rows built
//! from two sources disagreed before: a failed case on `cuda:0` was written as device `cuda`
//! without a GPU, so `compare` could not pair it with its baseline.

use std::collections::BTreeMap;

use super::{ResultRow, SampleRow, Status, TargetMeta, SCHEMA_VERSION};
use crate::stats::Summary;

impl TargetMeta {
    /// Takes what the worker reported about where a case ran. Empty fields say nothing; the
    /// host's GPU index (set by the executor) wins over the worker's, because a container
    /// numbers its GPUs from 0.
    pub fn learn_device(&mut self, device: &str, gpu_name: &str, gpu_index: Option<usize>) {
        if !device.is_empty() {
            self.device = device.to_string();
        }
        if !gpu_name.is_empty() {
            self.gpu_name = gpu_name.to_string();
        }
        if gpu_index.is_some() {
            self.worker_gpu_index = gpu_index;
        }
    }

    /// Takes the worker's `env` message. A CUDA worker that sees exactly one GPU names it there
    /// (`gpu_count`, `gpu0_name`) before any case runs, so even a case that crashes first gets
    /// the GPU columns its baseline has.
    pub fn learn_env(&mut self, info: BTreeMap<String, String>) {
        let cuda = self.device.starts_with("cuda");
        if cuda && info.get("gpu_count").map(String::as_str) == Some("1") {
            if let Some(name) = info.get("gpu0_name") {
                let name = name.clone();
                self.learn_device("cuda:0", &name, Some(0));
            }
        }
        self.env.extend(info);
    }

    /// The GPU index rows carry: the host's when known, else the worker's.
    pub fn row_gpu_index(&self) -> Option<usize> {
        self.gpu_index.or(self.worker_gpu_index)
    }
}

/// Builds the rows of one target in one round of one run.
#[derive(Debug, Clone, Copy)]
pub struct Recorder<'a> {
    pub run_id: &'a str,
    pub suite: &'a str,
    /// The round (worker process, 0-based) the rows come from.
    pub round: usize,
    pub target: &'a TargetMeta,
}

impl Recorder<'_> {
    /// The columns every row of this target shares.
    fn base(&self, workload: &str, case: &str, started_at: &str) -> ResultRow {
        let t = self.target;
        ResultRow {
            schema: SCHEMA_VERSION,
            run_id: self.run_id.to_string(),
            suite: self.suite.to_string(),
            workload: workload.to_string(),
            case: case.to_string(),
            engine: t.engine.clone(),
            executor: t.executor.clone(),
            image: t.image.clone(),
            image_id: t.image_id.clone(),
            gpu_index: t.row_gpu_index(),
            gpu_name: t.gpu_name.clone(),
            device: t.device.clone(),
            started_at: started_at.to_string(),
            target: t.name.clone(),
            round: Some(self.round),
            node: t.node.clone(),
            job_step: t.job_step.clone(),
            ..Default::default()
        }
    }

    /// A row without a metric: `skipped`, `failed`, or an `ok` fact such as the probe's.
    pub fn status(
        &self,
        workload: &str,
        case: &str,
        status: Status,
        reason: &str,
        started_at: &str,
    ) -> ResultRow {
        ResultRow {
            status,
            reason: reason.to_string(),
            ..self.base(workload, case, started_at)
        }
    }

    /// The summary row of one metric.
    pub fn metric(&self, id: MetricId<'_>, summary: &Summary, started_at: &str) -> ResultRow {
        let mut row = ResultRow {
            metric: id.metric.to_string(),
            unit: id.unit.to_string(),
            better: id.better.to_string(),
            ..self.base(id.workload, id.case, started_at)
        };
        set_summary(&mut row, summary);
        row
    }

    /// One sample; `index` counts the samples of its (case, metric) from 0.
    pub fn sample(&self, workload: &str, case: &str, metric: &str, index: usize, value: f64) -> SampleRow {
        let t = self.target;
        SampleRow {
            run_id: self.run_id.to_string(),
            image: t.image.clone(),
            image_id: t.image_id.clone(),
            gpu_index: t.row_gpu_index(),
            workload: workload.to_string(),
            case: case.to_string(),
            metric: metric.to_string(),
            sample: index,
            value,
            target: t.name.clone(),
            engine: t.engine.clone(),
            round: Some(self.round),
            batch: None,
            batch_start_s: None,
        }
    }
}

/// What a metric row is about.
#[derive(Debug, Clone, Copy)]
pub struct MetricId<'a> {
    pub workload: &'a str,
    pub case: &'a str,
    pub metric: &'a str,
    pub unit: &'a str,
    /// `lower` or `higher`.
    pub better: &'a str,
}

/// Writes a summary into a row's statistics columns (the one Summary → row copy).
pub fn set_summary(row: &mut ResultRow, s: &Summary) {
    row.n = Some(s.n);
    row.median = Some(s.median);
    row.mean = Some(s.mean);
    row.stddev = Some(s.stddev);
    row.min = Some(s.min);
    row.max = Some(s.max);
    row.p05 = Some(s.p05);
    row.p95 = Some(s.p95);
    row.ci_low = Some(s.ci_low);
    row.ci_high = Some(s.ci_high);
    row.outliers = Some(s.outliers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda_target() -> TargetMeta {
        TargetMeta {
            name: "img:new".into(),
            executor: "docker".into(),
            engine: "native".into(),
            device: "cuda".into(),
            image: "img:new".into(),
            ..Default::default()
        }
    }

    #[test]
    fn status_and_metric_rows_agree_on_the_gpu() {
        let mut t = cuda_target();
        t.learn_device("cuda:0", "NVIDIA H100 80GB HBM3", Some(0));
        let rec = Recorder {
            run_id: "r",
            suite: "s",
            round: 1,
            target: &t,
        };
        let s = crate::stats::summarize(&[1.0, 2.0, 3.0]).unwrap();
        let id = MetricId {
            workload: "gemm",
            case: "m=1",
            metric: "latency",
            unit: "ms",
            better: "lower",
        };
        let m = rec.metric(id, &s, "t0");
        let f = rec.status("gemm", "m=1", Status::Failed, "segfault", "t0");
        for r in [&m, &f] {
            assert_eq!(r.device, "cuda:0");
            assert_eq!(r.gpu_index, Some(0));
            assert_eq!(r.gpu_name, "NVIDIA H100 80GB HBM3");
            assert_eq!(r.target, "img:new");
            assert_eq!(r.round, Some(1));
        }
        assert_eq!(m.median, Some(2.0));
        assert_eq!(f.median, None);
        let smp = rec.sample("gemm", "m=1", "latency", 3, 1.5);
        assert_eq!((smp.gpu_index, smp.sample, smp.round), (Some(0), 3, Some(1)));
    }

    #[test]
    fn host_gpu_index_wins_over_the_containers() {
        let mut t = cuda_target();
        t.gpu_index = Some(3);
        t.learn_device("cuda:0", "", Some(0));
        assert_eq!(t.row_gpu_index(), Some(3));
    }

    #[test]
    fn env_of_a_single_gpu_worker_names_the_gpu() {
        let mut t = cuda_target();
        t.learn_env(BTreeMap::from([
            ("gpu_count".to_string(), "1".to_string()),
            ("gpu0_name".to_string(), "NVIDIA H100 80GB HBM3".to_string()),
        ]));
        assert_eq!((t.device.as_str(), t.row_gpu_index()), ("cuda:0", Some(0)));
        assert_eq!(t.gpu_name, "NVIDIA H100 80GB HBM3");
        let mut cpu = TargetMeta {
            device: "cpu".into(),
            ..Default::default()
        };
        cpu.learn_env(BTreeMap::from([("gpu_count".to_string(), "1".to_string())]));
        assert_eq!(cpu.device, "cpu");
    }
}
