//! The worker protocol: what the host hands the worker (a [`Job`]) and the JSON lines the worker
//! prints on stdout ([`Message`]). Anything else on stdout is a protocol error.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::case::{Better, Case, Device, EngineKind};
use crate::stats::Summary;

/// What the worker is asked to do: run these cases on this device with this engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub run_id: String,
    pub engine: EngineKind,
    pub device: Device,
    /// CUDA device ordinals the worker may use (as the container sees them); empty = all.
    #[serde(default)]
    pub gpus: Vec<usize>,
    pub cases: Vec<Case>,
}

/// One line of worker output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Facts about the worker's environment (the probe's findings, versions, devices).
    Env { info: BTreeMap<String, String> },
    /// A case begins.
    Start { case: String, workload: String },
    /// One measured value.
    Sample {
        case: String,
        workload: String,
        metric: String,
        value: f64,
    },
    /// The summary of one metric of a case, computed by the worker from its samples.
    Summary {
        case: String,
        workload: String,
        metric: String,
        unit: String,
        better: Better,
        #[serde(flatten)]
        summary: Summary,
        /// Device the numbers are from (`cpu`, `cuda:0`).
        #[serde(default)]
        device: String,
        #[serde(default)]
        gpu_name: String,
        #[serde(default)]
        gpu_index: Option<usize>,
    },
    /// A case-level fact that is not a metric (the probe's `status` row).
    Status {
        case: String,
        workload: String,
        reason: String,
    },
    /// Something the user should know (outliers, clock throttling); not fatal.
    Warning {
        case: String,
        workload: String,
        message: String,
    },
    /// The case cannot run here; the reason says why.
    Skip {
        case: String,
        workload: String,
        reason: String,
    },
    /// The case broke.
    Error {
        case: String,
        workload: String,
        reason: String,
    },
    /// What the worker process loaded (shared objects, Python distributions), sent once after
    /// the last case and before `done`.
    Components {
        #[serde(flatten)]
        components: crate::components::Components,
    },
    /// Every case of the job has been handled.
    Done,
}

impl Message {
    /// Parses one stdout line.
    pub fn parse(line: &str) -> Result<Message, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Writes protocol lines, one JSON object per line, flushed each time so that the host sees
/// results as they are made and a crash loses nothing already measured.
pub struct Emitter<W: Write> {
    out: W,
}

impl<W: Write> Emitter<W> {
    pub fn new(out: W) -> Self {
        Emitter { out }
    }

    pub fn emit(&mut self, msg: &Message) -> std::io::Result<()> {
        let line = serde_json::to_string(msg).map_err(std::io::Error::other)?;
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_round_trip() {
        let m = Message::Summary {
            case: "m=1".into(),
            workload: "gemm".into(),
            metric: "latency".into(),
            unit: "ms".into(),
            better: Better::Lower,
            summary: crate::stats::summarize(&[1.0, 2.0, 3.0]).unwrap(),
            device: "cpu".into(),
            gpu_name: String::new(),
            gpu_index: None,
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(line.starts_with(r#"{"type":"summary""#), "{line}");
        assert_eq!(Message::parse(&line).unwrap(), m);
    }

    #[test]
    fn done_is_tiny() {
        assert_eq!(
            serde_json::to_string(&Message::Done).unwrap(),
            r#"{"type":"done"}"#
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Message::parse("hello").is_err());
        assert!(Message::parse(r#"{"type":"nope"}"#).is_err());
    }
}
