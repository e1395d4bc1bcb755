//! The worker protocol: what the host hands the worker (a [`Job`]) and the JSON lines the worker
//! prints on stdout ([`Message`]), each behind the job's token (a per-job nonce the host drew),
//! so that text something else in the image prints on the same stdout (a banner, an LD_PRELOAD
//! library, a sitecustomize) can never pass for a result: [`classify`] tells the three kinds of
//! line apart.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::case::{Better, Case, Device, EngineKind};
use crate::stats::Summary;

/// The protocol's version. The worker's first line (`hello`) says which it speaks; the host
/// refuses a worker that speaks another, naming both tagbench versions. 3: the host may drive a
/// worker with [`Command`]s on its stdin (`Job::control`), and every case ends with `ended`.
pub const PROTOCOL: u32 = 3;

/// What the worker is asked to do: run these cases on this device with this engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub run_id: String,
    /// The nonce every protocol line of this job starts with ([`new_token`]); empty: lines are
    /// bare JSON (the worker's own tests).
    #[serde(default)]
    pub token: String,
    pub engine: EngineKind,
    pub device: Device,
    /// CUDA device ordinals the worker may use (as the container sees them); empty = all.
    #[serde(default)]
    pub gpus: Vec<usize>,
    pub cases: Vec<Case>,
    /// The host drives this worker with [`Command`]s on its stdin: the worker runs the case
    /// each `case` command names and, in a paired case, measures sample batches on command
    /// (`measure::control`); the end of its stdin ends the job. Without it the worker runs its
    /// cases in order to the end.
    #[serde(default)]
    pub control: bool,
}

/// What the host tells a worker under [`Job::control`], one JSON object per stdin line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Run this case of the job. `paired`: after its warm-up, say `ready` and take sample
    /// batches on command until `release`; otherwise sample by the case's own settings.
    Case {
        workload: String,
        case: String,
        paired: bool,
    },
    /// Take `n` samples of the case that is ready, then say `batch`.
    Batch { n: usize },
    /// Stop sampling the ready case: the worker finishes it (rows, `ended`).
    Release,
    /// The job is over: the worker reports its components and says `done` (as at the end of
    /// its stdin, which not every engine's attach delivers).
    End,
}

impl Command {
    /// The stdin line of a command (with its newline).
    pub fn line(&self) -> String {
        format!("{}\n", serde_json::to_string(self).unwrap_or_default())
    }
}

/// One line of worker output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The worker's first line: its tagbench version and protocol.
    Hello { version: String, protocol: u32 },
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
    /// A paired case has warmed up (phase: which sampling of the case, from 0) and waits for
    /// `batch` commands; `per_call_s` is the warm-up's mean time per call, for batch sizes.
    Ready {
        case: String,
        workload: String,
        phase: usize,
        per_call_s: f64,
    },
    /// One batch of samples taken on command: `index` counts the case's batches from 0 over
    /// its phases; `start_s` is when it began (seconds since the Unix epoch); `seconds` are its
    /// samples; `settle_ms` is how long the worker then waited for its own processes to go
    /// idle (`settled`: they did) before it answered, so that the next target's batch does not
    /// share its cores with this one's spinning threads.
    Batch {
        case: String,
        workload: String,
        phase: usize,
        index: usize,
        start_s: f64,
        seconds: Vec<f64>,
        settle_ms: f64,
        settled: bool,
    },
    /// A case is over (after its rows): `timed_s` is the time inside timed samples (the
    /// numerator of the run's duty cycle).
    Ended {
        case: String,
        workload: String,
        timed_s: f64,
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

/// A fresh job token: 128 random bits, hex.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One protocol line: `<token> <json>` (bare JSON when the token is empty).
pub fn frame(token: &str, msg: &Message) -> String {
    let json = serde_json::to_string(msg).unwrap_or_default();
    if token.is_empty() {
        json
    } else {
        format!("{token} {json}")
    }
}

/// What a line of the worker's stdout is.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per stdout line, used at once, never stored"
)]
pub enum Line<'a> {
    /// A line behind this job's token: the message (or why it does not parse). Text before the
    /// token (a banner without its newline) is `before`, for the log.
    Framed {
        msg: Result<Message, serde_json::Error>,
        json: &'a str,
        before: &'a str,
    },
    /// It looks like a protocol message (a JSON object with a `type`) but does not carry this
    /// job's token: a forgery, a banner, or a worker of another tagbench version. Never a result.
    Unframed,
    /// Plain text (an image's banner): for the log.
    Text,
}

/// Sorts one stdout line of a worker whose job has `token` (never empty).
pub fn classify<'a>(line: &'a str, token: &str) -> Line<'a> {
    if !token.is_empty() {
        if let Some(at) = line.find(token) {
            if let Some(json) = line[at + token.len()..].strip_prefix(' ') {
                return Line::Framed {
                    msg: Message::parse(json),
                    json,
                    before: &line[..at],
                };
            }
        }
    }
    if looks_like_protocol(line) {
        Line::Unframed
    } else {
        Line::Text
    }
}

/// The message of a line behind `token` (any JSON message when the token is empty); `None`
/// for every other line.
pub fn parse_framed(line: &str, token: &str) -> Option<Message> {
    if token.is_empty() {
        return Message::parse(line).ok();
    }
    match classify(line, token) {
        Line::Framed { msg, .. } => msg.ok(),
        _ => None,
    }
}

/// Whether a JSON object with a `type` key starts somewhere in `line` (after a prefix such as
/// another job's token).
fn looks_like_protocol(line: &str) -> bool {
    line.match_indices('{').any(|(i, _)| {
        let mut it = serde_json::Deserializer::from_str(&line[i..]).into_iter::<serde_json::Value>();
        matches!(it.next(), Some(Ok(serde_json::Value::Object(o))) if o.contains_key("type"))
    })
}

/// Writes protocol lines, one framed JSON object per line, flushed each time so that the host
/// sees results as they are made and a crash loses nothing already measured.
pub struct Emitter<W: Write> {
    out: W,
    token: String,
}

impl<W: Write> Emitter<W> {
    pub fn new(out: W, token: &str) -> Self {
        Emitter {
            out,
            token: token.to_string(),
        }
    }

    pub fn emit(&mut self, msg: &Message) -> std::io::Result<()> {
        writeln!(self.out, "{}", frame(&self.token, msg))?;
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
    fn only_lines_behind_the_token_are_messages() {
        let t = new_token();
        assert_eq!(t.len(), 32);
        assert_ne!(t, new_token());
        let line = frame(&t, &Message::Done);
        assert_eq!(line, format!(r#"{t} {{"type":"done"}}"#));
        assert!(matches!(
            classify(&line, &t),
            Line::Framed {
                msg: Ok(Message::Done),
                before: "",
                ..
            }
        ));
        // A banner without its newline in front of the line: the message still counts.
        let glued = format!("Welcome!{line}");
        assert!(matches!(
            classify(&glued, &t),
            Line::Framed {
                msg: Ok(Message::Done),
                before: "Welcome!",
                ..
            }
        ));
        let forged = r#"{"type":"summary","case":"a","workload":"gemm","metric":"latency"}"#;
        assert!(matches!(classify(forged, &t), Line::Unframed));
        let other = format!("{} {forged}", new_token());
        assert!(matches!(classify(&other, &t), Line::Unframed));
        assert!(matches!(classify("== CUDA banner {not json} ==", &t), Line::Text));
        assert!(matches!(classify(r#"{"ok": 1}"#, &t), Line::Text));
        assert!(matches!(
            classify(&format!("{t} nope"), &t),
            Line::Framed { msg: Err(_), .. }
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Message::parse("hello").is_err());
        assert!(Message::parse(r#"{"type":"nope"}"#).is_err());
    }
}
