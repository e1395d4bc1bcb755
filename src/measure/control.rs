//! Sampling on the host's command: the worker side of paired batches (docs/design.md,
//! "Paired batches").
//!
//! Under a controlled job (`Job::control`) the worker waits for a `case` command before each
//! case. In a paired case every [`Sampler`](super::Sampler) warms up as usual, says `ready`
//! (with the warm-up's time per call) and then takes sample batches only when the host asks
//! (`batch n`), until `release`: the engine's set-up (inputs, weights, plans, compiled kernels,
//! a CUDA context, a python session) happens once, and the host alternates short batches of two
//! warm workers so that each batch of A has one of B next to it in time. After each batch the
//! worker waits for its own threads to go idle ([`super::settle`]) before it answers, and so
//! it does before it says `ready` (the sides warm up at the same time).
//!
//! The controller belongs to the thread that runs the worker's cases (thread-local): the sampler
//! is called from deep inside the engines, on that thread, one case at a time.

use std::cell::RefCell;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::case::Seconds;
use crate::protocol::{frame, Command, Message};

/// The host's commands and the channel for the worker's answers.
pub struct Control {
    input: Box<dyn BufRead + Send>,
    out: Box<dyn Write + Send>,
    token: String,
    /// The case being measured (workload, case) and whether it is paired.
    case: Option<(String, String)>,
    paired: bool,
    /// Samplings and batches of the case so far.
    phase: usize,
    batches: usize,
}

thread_local! {
    static CONTROL: RefCell<Option<Control>> = const { RefCell::new(None) };
}

/// Nanoseconds spent inside timed samples in this process since the last [`take_timed`].
static TIMED_NS: AtomicU64 = AtomicU64::new(0);

/// Makes this process a controlled worker: commands come from `input`, answers go to `out`
/// behind `token` (the same stdout as the worker's other lines, written whole and flushed).
pub fn install(input: Box<dyn BufRead + Send>, out: Box<dyn Write + Send>, token: &str) {
    let control = Control {
        input,
        out,
        token: token.to_string(),
        case: None,
        paired: false,
        phase: 0,
        batches: 0,
    };
    CONTROL.with(|c| *c.borrow_mut() = Some(control));
}

/// Ends control (the job is over).
pub fn uninstall() {
    CONTROL.with(|c| *c.borrow_mut() = None);
}

/// Adds the seconds of timed samples (every sampler, controlled or not).
pub fn add_timed(values: &[Seconds]) {
    let ns: f64 = values.iter().filter(|v| v.is_finite() && **v > 0.0).sum::<f64>() * 1e9;
    TIMED_NS.fetch_add(ns as u64, Ordering::Relaxed);
}

/// Seconds inside timed samples since the last call.
pub fn take_timed() -> Seconds {
    TIMED_NS.swap(0, Ordering::Relaxed) as f64 / 1e9
}

/// Whether this process is a controlled worker.
pub fn installed() -> bool {
    CONTROL.with(|c| c.borrow().is_some())
}

/// The case the host asks for next: (workload, case, paired), or `None` when the host closed
/// the channel (the job is over, or the host is gone).
pub fn next_case() -> Result<Option<(String, String, bool)>> {
    CONTROL.with(|c| next_case_of(c.borrow_mut().as_mut()))
}

fn next_case_of(ctl: Option<&mut Control>) -> Result<Option<(String, String, bool)>> {
    let Some(ctl) = ctl else {
        bail!("no host controls this worker");
    };
    let (workload, case, paired) = match ctl.read()? {
        None | Some(Command::End) => return Ok(None),
        Some(Command::Case {
            workload,
            case,
            paired,
        }) => (workload, case, paired),
        Some(other) => bail!("the host sent {other:?} where a `case` command was due"),
    };
    ctl.case = Some((workload.clone(), case.clone()));
    ctl.paired = paired;
    ctl.phase = 0;
    ctl.batches = 0;
    Ok(Some((workload, case, paired)))
}

/// Runs `f` with the controller while a paired case is being measured (`None` otherwise).
pub(super) fn with_paired<R>(f: impl FnOnce(&mut Control) -> R) -> Option<R> {
    CONTROL.with(|c| {
        let mut c = c.borrow_mut();
        c.as_mut().filter(|c| c.paired && c.case.is_some()).map(f)
    })
}

/// Why a paired sampling stopped taking batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The host said `release`.
    Released,
    /// The host closed the channel, or sent something else (said on stderr).
    HostGone,
}

impl Control {
    /// One command from the host; `None` at the end of input.
    fn read(&mut self) -> Result<Option<Command>> {
        loop {
            let mut line = String::new();
            let n = self
                .input
                .read_line(&mut line)
                .context("failed to read the host's command")?;
            if n == 0 {
                return Ok(None);
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            return serde_json::from_str(line)
                .map(Some)
                .with_context(|| format!("the host's command is not one this worker knows: `{line}`"));
        }
    }

    fn emit(&mut self, msg: &Message) -> Result<()> {
        writeln!(self.out, "{}", frame(&self.token, msg))?;
        self.out.flush()?;
        Ok(())
    }

    /// Says `ready`, then takes batches of `f` until the host releases the case. Returns the
    /// samples of every batch in order, and how the batches ended.
    pub(super) fn sample_on_command<E>(
        &mut self,
        per_call_s: Seconds,
        f: &mut impl FnMut() -> Result<Seconds, E>,
    ) -> Result<(Vec<Seconds>, Ended), E> {
        let (workload, case) = self.case.clone().unwrap_or_default();
        let phase = self.phase;
        self.phase += 1;
        let mut values = Vec::new();
        // The warm-up's threads go idle before the host is told: the other target may be
        // measuring its first batch as soon as this one is ready.
        super::settle::settle();
        let said = self.emit(&Message::Ready {
            case: case.clone(),
            workload: workload.clone(),
            phase,
            per_call_s,
        });
        if let Err(e) = said {
            eprintln!("tagbench worker: cannot answer the host: {e:#}");
            return Ok((values, Ended::HostGone));
        }
        loop {
            let n = match self.read() {
                Ok(Some(Command::Batch { n })) => n.max(1),
                Ok(Some(Command::Release)) => return Ok((values, Ended::Released)),
                Ok(None) => return Ok((values, Ended::HostGone)),
                Ok(Some(other)) => {
                    eprintln!("tagbench worker: the host sent {other:?} during a paired case; the case ends");
                    return Ok((values, Ended::HostGone));
                }
                Err(e) => {
                    eprintln!("tagbench worker: {e:#}; the case ends");
                    return Ok((values, Ended::HostGone));
                }
            };
            let start_s = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let mut batch = Vec::with_capacity(n);
            for _ in 0..n {
                batch.push(f()?);
            }
            add_timed(&batch);
            let settled = super::settle::settle();
            let index = self.batches;
            self.batches += 1;
            values.extend_from_slice(&batch);
            let said = self.emit(&Message::Batch {
                case: case.clone(),
                workload: workload.clone(),
                phase,
                index,
                start_s,
                seconds: batch,
                settle_ms: settled.waited.as_secs_f64() * 1e3,
                settled: settled.idle,
            });
            if let Err(e) = said {
                eprintln!("tagbench worker: cannot answer the host: {e:#}");
                return Ok((values, Ended::HostGone));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    pub struct Shared(pub Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        pub fn messages(&self) -> Vec<Message> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| Message::parse(l).unwrap())
                .collect()
        }
    }

    #[test]
    fn batches_on_command_until_release() {
        let commands = [
            Command::Case {
                workload: "gemm".into(),
                case: "m=1".into(),
                paired: true,
            },
            Command::Batch { n: 3 },
            Command::Batch { n: 2 },
            Command::Release,
        ]
        .iter()
        .map(Command::line)
        .collect::<String>();
        let out = Shared::default();
        install(
            Box::new(std::io::Cursor::new(commands.into_bytes())),
            Box::new(out.clone()),
            "",
        );
        assert_eq!(
            next_case().unwrap(),
            Some(("gemm".to_string(), "m=1".to_string(), true))
        );
        let mut calls = 0;
        let settings = crate::case::MeasureSettings {
            warmup_s: 0.0,
            ..Default::default()
        };
        let s = super::super::Sampler::new(&settings)
            .run(|| {
                calls += 1;
                Ok::<_, ()>(calls as f64)
            })
            .unwrap();
        uninstall();
        // One warm-up call, then 3 + 2 on command.
        assert_eq!(s.values, vec![2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(s.stop, super::super::Stop::Host);
        let msgs = out.messages();
        assert!(matches!(&msgs[0], Message::Ready { phase: 0, per_call_s, .. } if *per_call_s > 0.0));
        match &msgs[2] {
            Message::Batch {
                index,
                seconds,
                phase,
                ..
            } => {
                assert_eq!((*index, *phase), (1, 0));
                assert_eq!(seconds, &vec![5.0, 6.0]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(msgs.len(), 3);
    }

    #[test]
    fn a_closed_channel_ends_the_job() {
        install(
            Box::new(std::io::Cursor::new(Vec::new())),
            Box::new(Shared::default()),
            "",
        );
        assert!(installed());
        assert_eq!(next_case().unwrap(), None);
        uninstall();
        assert!(!installed());
        assert!(next_case().is_err());
    }
}
