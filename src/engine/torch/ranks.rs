//! One multi-rank launch for every torch workload: N python processes with `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` set (gloo between local processes on
//! the CPU, NCCL with one process per GPU on CUDA). Rank 0 answers the protocol and broadcasts
//! each request to the others, so every rank handles it in lockstep; a rank that ends early fails
//! the case with its rank and reason. Under a Slurm step of N tasks (`launcher.rs`) each worker
//! starts only its own rank: rank 0's worker leads ([`RankGroup::lead`]), the others
//! [`follow`].

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::launcher::{free_port, RankSpec, SlurmRank};
use super::python::{PyProcess, Role, ScriptFile};
use crate::case::Device;
use crate::error::CaseError;

/// How a non-zero rank ended before the group was closed.
struct RankEnd {
    /// `rank 1`, or `rank 1 on n2` under Slurm.
    rank: String,
    how: String,
    reply: Option<Result<Value, CaseError>>,
}

impl RankEnd {
    /// The case's error: the rank, how its process ended and what it said.
    fn error(&self) -> CaseError {
        match &self.reply {
            Some(Err(CaseError::Skipped(r))) => CaseError::Skipped(format!("{}: {r}", self.rank)),
            Some(Err(e)) => CaseError::Failed(anyhow::anyhow!("{} {}: {e}", self.rank, self.how)),
            _ => CaseError::Failed(anyhow::anyhow!(
                "{} {} (its stderr is in the case log)",
                self.rank,
                self.how
            )),
        }
    }
}

/// The ranks of one multi-rank case, torn down (every process ended) when dropped.
pub struct RankGroup {
    leader: PyProcess,
    watchers: Vec<(u32, Arc<AtomicBool>, JoinHandle<()>)>,
    /// The first non-zero rank that ended while the group was open.
    early_end: Arc<Mutex<Option<RankEnd>>>,
    closing: Arc<AtomicBool>,
}

impl RankGroup {
    /// Starts one process per device (`devices[r]` is rank r's), rank 0 last so that the others
    /// are already waiting at the rendezvous.
    pub fn launch(
        python: &OsStr,
        script: &ScriptFile,
        devices: &[String],
        device: Device,
    ) -> Result<RankGroup, CaseError> {
        let ranks = devices.len();
        let port = free_port()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let env = |rank: usize| {
            RankSpec {
                rank,
                world: ranks,
                local_rank: rank,
                master_addr: "127.0.0.1".to_string(),
                master_port: port,
                ranks_on_node: ranks,
                loopback: true,
            }
            .env(device, cores, |k| std::env::var_os(k).is_some())
        };
        let early_end = Arc::new(Mutex::new(None));
        let closing = Arc::new(AtomicBool::new(false));
        let mut followers = Vec::with_capacity(ranks.saturating_sub(1));
        for (rank, d) in devices.iter().enumerate().skip(1) {
            followers.push((
                rank,
                PyProcess::spawn(python, script, Role::Follower { device: d }, &env(rank))?,
            ));
        }
        let leader = PyProcess::spawn(python, script, Role::Leader { device: &devices[0] }, &env(0))?;
        let leader_pid = leader.pid();
        let mut watchers = Vec::with_capacity(followers.len());
        for (rank, mut p) in followers {
            let pid = p.pid();
            let reaped = Arc::new(AtomicBool::new(false));
            let (early_end, closing, done) = (early_end.clone(), closing.clone(), reaped.clone());
            let handle = std::thread::spawn(move || {
                let reply = p.last_reply();
                let (_, how) = p.ended();
                done.store(true, Ordering::SeqCst);
                if closing.load(Ordering::SeqCst) {
                    return;
                }
                let mut slot = early_end.lock().unwrap_or_else(|e| e.into_inner());
                if slot.is_none() {
                    let rank = format!("rank {rank}");
                    *slot = Some(RankEnd { rank, how, reply });
                    // Rank 0 may be inside a collective that can no longer complete (NCCL waits
                    // for its timeout): end it, so that the case fails now.
                    kill(leader_pid);
                }
            });
            watchers.push((pid, reaped, handle));
        }
        Ok(RankGroup {
            leader,
            watchers,
            early_end,
            closing,
        })
    }

    /// Rank 0 of a group that Slurm launched as the tasks of one step: only this worker's own
    /// python; the other ranks are other tasks, whose failures reach the host through their own
    /// workers ([`follow`]).
    pub fn lead(
        python: &OsStr,
        script: &ScriptFile,
        device_name: &str,
        me: &SlurmRank,
        device: Device,
    ) -> Result<RankGroup, CaseError> {
        let leader = PyProcess::spawn(
            python,
            script,
            Role::Leader { device: device_name },
            &slurm_env(me, device),
        )?;
        Ok(RankGroup {
            leader,
            watchers: Vec::new(),
            early_end: Arc::new(Mutex::new(None)),
            closing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Sends a request to rank 0 (which hands it to the others) and returns its reply. When the
    /// request fails, a rank that ended early is named as the cause.
    pub fn request(&mut self, req: &Value) -> Result<Value, CaseError> {
        match self.leader.request(req) {
            Err(CaseError::Failed(e)) => {
                // Rank 0's collective may have failed first, when the other rank's process had
                // ended but its watcher had not yet said so: give the watchers a moment.
                let deadline = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < deadline {
                    if let Some(end) = self.early_end.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        return Err(end.error());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(CaseError::Failed(anyhow::anyhow!("rank 0: {e:#}")))
            }
            other => other,
        }
    }
}

impl Drop for RankGroup {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // An idle rank 0 broadcasts the end when its stdin closes, and every rank leaves.
        self.leader.close_stdin();
        self.leader.wait_or_kill(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(5);
        for (pid, reaped, handle) in self.watchers.drain(..) {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !reaped.load(Ordering::SeqCst) {
                // A rank that did not leave (hung in a collective) ends with the case.
                kill(pid);
            }
            let _ = handle.join();
        }
    }
}

/// How long a follower's python may take to exit after its last protocol line.
const FOLLOWER_EXIT_WAIT: Duration = Duration::from_secs(30);

/// A non-zero rank of a group that Slurm launched: runs this worker's python rank until rank 0
/// ends the group. A rank that could not go on fails (or skips) naming itself and its node.
pub fn follow(
    python: &OsStr,
    script: &ScriptFile,
    device_name: &str,
    me: &SlurmRank,
    device: Device,
) -> Result<(), CaseError> {
    let mut p = PyProcess::spawn(
        python,
        script,
        Role::Follower { device: device_name },
        &slurm_env(me, device),
    )?;
    let reply = p.last_reply();
    // Its protocol closed, the rank leaves once torch's group has ended with rank 0, whose own
    // end waits for its leader (up to 10 s): killing it sooner turns a clean end into a failure
    // (5-6 s on a loaded 2-core host).
    p.wait_or_kill(FOLLOWER_EXIT_WAIT);
    let (ok, how) = p.ended();
    if ok && reply.is_none() {
        return Ok(());
    }
    Err(RankEnd {
        rank: me.label(),
        how,
        reply,
    }
    .error())
}

fn slurm_env(me: &SlurmRank, device: Device) -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    me.spec.env(device, cores, |k| std::env::var_os(k).is_some())
}

#[cfg(unix)]
fn kill(pid: u32) {
    // SAFETY: kill(2) with a pid this group started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill(_pid: u32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_end_names_the_rank() {
        let end = RankEnd {
            rank: "rank 1".into(),
            how: "exited with status 7".into(),
            reply: None,
        };
        let text = match end.error() {
            CaseError::Failed(e) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(text.starts_with("rank 1 exited with status 7"), "{text}");
        let skipped = RankEnd {
            rank: "rank 2 on n2".into(),
            how: "exited with status 3".into(),
            reply: Some(Err(CaseError::Skipped("no GPU".into()))),
        };
        assert!(matches!(skipped.error(), CaseError::Skipped(r) if r == "rank 2 on n2: no GPU"));
    }
}
