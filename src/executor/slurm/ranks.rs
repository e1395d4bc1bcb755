//! The stdout of a multi-rank step, one stream for the supervisor. srun `--label`s each line
//! with its task; rank 0's worker writes the protocol (rows), the other ranks' workers write
//! only their failures. A non-zero rank's failure is the cause when rank 0 then fails too (its
//! collective broke), so the two are joined, the rank that failed first named first; when rank 0
//! was ended before it could say anything, the other rank's failure becomes the case's row.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::command::parse_labelled_line;
use crate::executor::local::recv_line;
use crate::executor::LineEvent;
use crate::protocol::{frame, parse_framed, Message};

/// How long rank 0's error waits for another rank's: the rank that died first may be on another
/// node, whose line srun forwards later.
pub const GRACE: Duration = Duration::from_secs(2);

/// The merge of one step's tasks (a multi-rank step runs one case).
#[derive(Debug, Default)]
pub struct RankStream {
    /// The job's token: the lines that count carry it, and the lines made here carry it too.
    token: String,
    /// Rank 0 said `start`.
    started: bool,
    /// A failed or skipped row of the case has been handed on.
    failed: bool,
    /// Rank 0 said `done`.
    done: bool,
    /// Rank 0's error, held until another rank's failure or the grace's end.
    held: Option<(Instant, Message)>,
    /// The other ranks' failures and skips, in arrival order.
    reports: Vec<Message>,
}

fn line(token: &str, m: &Message) -> String {
    frame(token, m)
}

impl RankStream {
    /// Task `rank` wrote `text` at `now`: the lines to hand on now.
    pub fn push(&mut self, rank: usize, text: &str, now: Instant) -> Vec<String> {
        let msg = parse_framed(text, &self.token);
        if rank != 0 {
            if let Some(m @ (Message::Error { .. } | Message::Skip { .. })) = msg {
                self.reports.push(m);
                if self.held.is_some() {
                    return self.release();
                }
            }
            // Other ranks report nothing else; a stray line is theirs, not the protocol's.
            return Vec::new();
        }
        if let Some(m @ Message::Error { .. }) = msg {
            if self.held.is_none() && !self.failed {
                // The case's first error: another rank's, if any, is its cause.
                self.held = Some((now + GRACE, m));
                return if self.reports.is_empty() {
                    Vec::new()
                } else {
                    self.release()
                };
            }
            let mut out = self.release();
            self.failed = true;
            out.push(text.to_string());
            return out;
        }
        let mut out = self.release();
        match msg {
            Some(Message::Start { .. }) => self.started = true,
            Some(Message::Skip { .. }) => self.failed = true,
            Some(Message::Done) => self.done = true,
            _ => {}
        }
        out.push(text.to_string());
        out
    }

    /// Nothing arrived until `now`: rank 0's held error once its grace has run out.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        match &self.held {
            Some((until, _)) if now >= *until => self.release(),
            _ => Vec::new(),
        }
    }

    /// When a held line is due (how long the handle may wait for the next line).
    pub fn due(&self) -> Option<Instant> {
        self.held.as_ref().map(|(t, _)| *t)
    }

    /// Whether rank 0 said `done` (the other tasks should then end too).
    pub fn done(&self) -> bool {
        self.done
    }

    /// The tasks' output ended: what is still held, the other ranks' failures when rank 0 never
    /// reported the case (ended by Slurm's `--kill-on-bad-exit`), and `done` after a failure, so
    /// that the failure's reason stays the case's row rather than "the worker ended".
    pub fn end(&mut self) -> Vec<String> {
        let mut out = self.release();
        if !self.failed && !self.done {
            if let Some(first) = self.reports.first().cloned() {
                let (case, workload) = match &first {
                    Message::Error { case, workload, .. } | Message::Skip { case, workload, .. } => {
                        (case.clone(), workload.clone())
                    }
                    _ => unreachable!("only failures are reports"),
                };
                if !self.started {
                    out.push(line(
                        &self.token,
                        &Message::Start {
                            case: case.clone(),
                            workload: workload.clone(),
                        },
                    ));
                }
                let all_skips = self.reports.iter().all(|m| matches!(m, Message::Skip { .. }));
                let reason = self.report_reasons();
                out.push(line(
                    &self.token,
                    &if all_skips {
                        Message::Skip {
                            case,
                            workload,
                            reason,
                        }
                    } else {
                        Message::Error {
                            case,
                            workload,
                            reason,
                        }
                    },
                ));
                self.failed = true;
            }
        }
        if self.failed && !self.done {
            out.push(line(&self.token, &Message::Done));
            self.done = true;
        }
        out
    }

    fn report_reasons(&self) -> String {
        let reasons: Vec<&str> = self
            .reports
            .iter()
            .filter_map(|m| match m {
                Message::Error { reason, .. } | Message::Skip { reason, .. } => Some(reason.as_str()),
                _ => None,
            })
            .collect();
        reasons.join("; ")
    }

    /// Hands rank 0's held error on, the other ranks' failures in front of it.
    fn release(&mut self) -> Vec<String> {
        let Some((
            _,
            Message::Error {
                case,
                workload,
                reason,
            },
        )) = self.held.take()
        else {
            return Vec::new();
        };
        let reason = if self.reports.is_empty() {
            reason
        } else {
            format!("{}; then {reason}", self.report_reasons())
        };
        self.failed = true;
        vec![line(
            &self.token,
            &Message::Error {
                case,
                workload,
                reason,
            },
        )]
    }
}

/// srun's stdout of a multi-rank step, read through a [`RankStream`]: what the supervisor reads.
pub struct RankLines {
    stream: RankStream,
    /// Merged lines not yet handed on.
    queue: VecDeque<String>,
    /// srun's stdout ended.
    ended: bool,
    /// The case log: the other ranks' lines go there.
    log: Option<File>,
}

impl RankLines {
    /// Other ranks' lines go to `log` (the case log).
    pub fn new(log: Option<File>, token: &str) -> RankLines {
        RankLines {
            stream: RankStream {
                token: token.to_string(),
                ..Default::default()
            },
            queue: VecDeque::new(),
            ended: false,
            log,
        }
    }

    /// Whether rank 0 said `done`.
    pub fn done(&self) -> bool {
        self.stream.done()
    }

    /// The next merged line, as [`WorkerHandle::next_line`](crate::executor::WorkerHandle) gives one.
    pub fn next_line(&mut self, lines: &Receiver<std::io::Result<String>>, timeout: Duration) -> LineEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.queue.pop_front() {
                return LineEvent::Line(l);
            }
            if self.ended {
                return LineEvent::Eof;
            }
            let now = Instant::now();
            let until = self.stream.due().map_or(deadline, |d| d.min(deadline));
            match recv_line(lines, until.saturating_duration_since(now)) {
                LineEvent::Line(raw) => match parse_labelled_line(&raw) {
                    Some((rank, text)) => {
                        if rank != 0 {
                            if let Some(f) = self.log.as_mut() {
                                let _ = writeln!(f, "[task {rank} stdout] {text}");
                            }
                        }
                        let out = self.stream.push(rank, text, Instant::now());
                        self.queue.extend(out);
                    }
                    // Not a task's line (srun's own): the supervisor reports it.
                    None => self.queue.push_back(raw),
                },
                LineEvent::Eof => {
                    let out = self.stream.end();
                    self.queue.extend(out);
                    self.ended = true;
                }
                LineEvent::Timeout => {
                    let out = self.stream.tick(Instant::now());
                    self.queue.extend(out);
                    if self.queue.is_empty() && Instant::now() >= deadline {
                        return LineEvent::Timeout;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(reason: &str) -> String {
        line(
            "",
            &Message::Error {
                case: "ranks=2".into(),
                workload: "allreduce".into(),
                reason: reason.into(),
            },
        )
    }

    fn reason_of(l: &str) -> String {
        match Message::parse(l).unwrap() {
            Message::Error { reason, .. } | Message::Skip { reason, .. } => reason,
            other => panic!("{other:?}"),
        }
    }

    const START: &str = r#"{"type":"start","workload":"allreduce","case":"ranks=2"}"#;
    const DONE: &str = r#"{"type":"done"}"#;

    #[test]
    fn rank_zero_rows_pass_and_a_clean_end_adds_nothing() {
        let mut s = RankStream::default();
        let t = Instant::now();
        assert_eq!(s.push(0, START, t), [START]);
        assert_eq!(s.push(1, "not json", t), Vec::<String>::new());
        assert_eq!(s.push(0, DONE, t), [DONE]);
        assert!(s.done());
        assert!(s.end().is_empty());
    }

    #[test]
    fn another_ranks_failure_comes_first() {
        let mut s = RankStream::default();
        let t = Instant::now();
        s.push(0, START, t);
        // Rank 0's error waits for the cause...
        assert!(s
            .push(0, &error("rank 0: torch: connection closed"), t)
            .is_empty());
        assert_eq!(s.due(), Some(t + GRACE));
        // ... which arrives from rank 1.
        let out = s.push(1, &error("rank 1 on n2 exited with status 3: torch: boom"), t);
        assert_eq!(
            reason_of(&out[0]),
            "rank 1 on n2 exited with status 3: torch: boom; then rank 0: torch: connection closed"
        );
        // srun ended rank 0 before its `done`: the failure stays the row.
        assert_eq!(s.end(), [DONE]);
    }

    #[test]
    fn rank_zero_alone_after_the_grace() {
        let mut s = RankStream::default();
        let t = Instant::now();
        s.push(0, START, t);
        s.push(0, &error("rank 0: torch: bad"), t);
        assert!(s.tick(t + GRACE / 2).is_empty());
        assert_eq!(reason_of(&s.tick(t + GRACE)[0]), "rank 0: torch: bad");
        assert_eq!(s.push(0, DONE, t), [DONE]);
        assert!(s.end().is_empty());
    }

    #[test]
    fn a_rank_failing_while_rank_zero_is_killed_is_the_row() {
        let mut s = RankStream::default();
        let t = Instant::now();
        assert!(s
            .push(1, &error("rank 1 on n2 exited with status 7"), t)
            .is_empty());
        let out = s.end();
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(matches!(Message::parse(&out[0]).unwrap(), Message::Start { .. }));
        assert_eq!(reason_of(&out[1]), "rank 1 on n2 exited with status 7");
        assert_eq!(out[2], DONE);
        // All ranks skipping is a skip.
        let mut s = RankStream::default();
        let skip = line(
            "",
            &Message::Skip {
                case: "c".into(),
                workload: "w".into(),
                reason: "rank 1 on n2: no GPU".into(),
            },
        );
        s.push(1, &skip, t);
        s.push(0, START, t);
        let out = s.end();
        assert!(
            matches!(Message::parse(&out[0]).unwrap(), Message::Skip { .. }),
            "{out:?}"
        );
    }

    #[test]
    fn rank_zero_dying_alone_is_left_to_the_supervisor() {
        let mut s = RankStream::default();
        let t = Instant::now();
        s.push(0, START, t);
        // No report from anyone: the supervisor fails the case with srun's task error.
        assert!(s.end().is_empty());
    }
}
