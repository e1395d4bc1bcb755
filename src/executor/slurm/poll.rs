//! The state of a job or step as Slurm tells it, for confirming that what tagbench cancelled is
//! gone. `sacct` first (it knows finished jobs for as long as the accounting database keeps
//! them); where it cannot answer (no slurmdbd: `Slurm accounting storage is disabled`, or no
//! sacct at all) every later poll of the process asks `scontrol show job` / `scontrol show
//! step` instead, which know a job until `MinJobAge` after its end and a step while it runs
//! (ReFrame's poller falls back from `sacct` to `squeue` in the same way).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::allocation::{run_bounded, CLIENT_TIMEOUT};

/// Where a job or step is.
#[derive(Debug, Clone, PartialEq)]
pub enum SlurmState {
    /// Pending, running, completing, ...: it still holds (or waits for) resources.
    Active(String),
    /// Ended (`COMPLETED`, `CANCELLED`, `FAILED`, ...).
    Ended(String),
    /// Slurm no longer knows it (a step that ended, a job past `MinJobAge`).
    Gone,
}

impl SlurmState {
    fn of(state: &str) -> SlurmState {
        // sacct writes `CANCELLED by 0`; the state is the first word.
        let word = state.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        const ENDED: [&str; 10] = [
            "COMPLETED",
            "CANCELLED",
            "FAILED",
            "TIMEOUT",
            "NODE_FAIL",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
            "OUT_OF_MEMORY",
            "REVOKED",
        ];
        if ENDED.contains(&word.as_str()) {
            SlurmState::Ended(word)
        } else {
            SlurmState::Active(word)
        }
    }
}

/// Set once `sacct` said it cannot answer here: no use asking it again.
static NO_SACCT: AtomicBool = AtomicBool::new(false);

/// The state of job `J` or step `J.S`.
pub fn state(id: &str) -> Result<SlurmState> {
    if !NO_SACCT.load(Ordering::Relaxed) {
        // An error here (no sacct installed) means the same as sacct's own refusal.
        match run_bounded(&sacct_args(id), CLIENT_TIMEOUT) {
            Ok(out) if out.status.success() => {
                return Ok(parse_sacct(&String::from_utf8_lossy(&out.stdout), id));
            }
            _ => NO_SACCT.store(true, Ordering::Relaxed),
        }
    }
    let out = run_bounded(&scontrol_args(id), CLIENT_TIMEOUT)?;
    // `Invalid job id specified` / `Job step J.S not found`: Slurm has forgotten it.
    if !out.status.success() {
        return Ok(SlurmState::Gone);
    }
    Ok(parse_scontrol_state(&String::from_utf8_lossy(&out.stdout)))
}

/// Polls `id` until it has ended or is gone, for at most `limit`; the state it was last seen in
/// when it is still active then.
pub fn wait_ended(id: &str, limit: Duration) -> Result<Option<String>> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(20);
    loop {
        match state(id)? {
            SlurmState::Active(s) if Instant::now() >= deadline => return Ok(Some(s)),
            SlurmState::Active(_) => {}
            SlurmState::Ended(_) | SlurmState::Gone => return Ok(None),
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

fn sacct_args(id: &str) -> Vec<String> {
    [
        "sacct",
        "--noheader",
        "--parsable2",
        "--jobs",
        id,
        "--format=JobID,State",
    ]
    .map(String::from)
    .to_vec()
}

fn scontrol_args(id: &str) -> Vec<String> {
    let what = if id.contains('.') { "step" } else { "job" };
    ["scontrol", "--oneliner", "show", what, id]
        .map(String::from)
        .to_vec()
}

/// sacct's `JobID|State` lines: the state of the line of `id` itself (a job's steps come as
/// further lines); `Gone` when it is not listed.
fn parse_sacct(text: &str, id: &str) -> SlurmState {
    text.lines()
        .filter_map(|l| l.split_once('|'))
        .find(|(j, _)| j.trim() == id)
        .map_or(SlurmState::Gone, |(_, s)| SlurmState::of(s))
}

/// `JobState=RUNNING` (a job) or `State=RUNNING` (a step) out of `scontrol --oneliner show`.
fn parse_scontrol_state(text: &str) -> SlurmState {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState=").or_else(|| w.strip_prefix("State=")))
        .map_or(SlurmState::Gone, SlurmState::of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sacct_lines() {
        let text = "12|CANCELLED by 0\n12.0|COMPLETED\n12.1|RUNNING\n";
        assert_eq!(parse_sacct(text, "12"), SlurmState::Ended("CANCELLED".into()));
        assert_eq!(parse_sacct(text, "12.1"), SlurmState::Active("RUNNING".into()));
        assert_eq!(parse_sacct(text, "12.2"), SlurmState::Gone);
        assert_eq!(parse_sacct("", "3"), SlurmState::Gone);
    }

    #[test]
    fn scontrol_lines() {
        assert_eq!(
            parse_scontrol_state("JobId=1 JobName=t UserId=root(0) JobState=CANCELLED Reason=None"),
            SlurmState::Ended("CANCELLED".into())
        );
        assert_eq!(
            parse_scontrol_state("StepId=1.1 UserId=0 State=RUNNING Partition=debug NodeList=n1"),
            SlurmState::Active("RUNNING".into())
        );
        assert_eq!(
            parse_scontrol_state("JobId=2 JobState=PENDING Reason=Resources"),
            SlurmState::Active("PENDING".into())
        );
        assert_eq!(parse_scontrol_state("nothing"), SlurmState::Gone);
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            sacct_args("7.1").join(" "),
            "sacct --noheader --parsable2 --jobs 7.1 --format=JobID,State"
        );
        assert_eq!(scontrol_args("7").join(" "), "scontrol --oneliner show job 7");
        assert_eq!(
            scontrol_args("7.1").join(" "),
            "scontrol --oneliner show step 7.1"
        );
    }
}
