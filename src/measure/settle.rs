//! Waiting for a worker's own processes to go idle after a batch of samples.
//!
//! When the host alternates sample batches between two warm workers on one machine, the worker
//! that just finished a batch must not steal the cores of the one that measures next. Thread
//! pools keep running after their work is done: OpenMP's threads spin before they sleep
//! (`GOMP_SPINCOUNT`, `OMP_WAIT_POLICY`; torch's intra-op pool), rayon's threads spin a little
//! before they park. Setting those variables would change the image's environment, which is
//! part of what is measured, so the worker measures instead: after a batch it reads the state of
//! every thread of its process tree (this process and its descendants, such as the torch
//! engine's python) from `/proc/<pid>/task/<tid>/stat` and answers the host only once none is
//! runnable (`R`: on a CPU, or waiting for one, as a spinning thread is) in two looks
//! [`WINDOW`] apart, or after [`MAX_SETTLE`]. The state, not the CPU time used, decides: on a
//! loaded machine a spinning thread can wait several milliseconds for a CPU and use none in a
//! window, yet it takes a core as soon as it gets one. How long settling took is reported with
//! the batch (`settle_ms`), so the cost is measured, not assumed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The time between two looks.
pub const WINDOW: Duration = Duration::from_millis(1);
/// The longest a worker waits for its threads to go idle.
pub const MAX_SETTLE: Duration = Duration::from_millis(100);

/// How long settling took and whether the tree went idle within [`MAX_SETTLE`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settled {
    pub waited: Duration,
    pub idle: bool,
}

/// Waits until this process tree is idle (see the module's comment). Where `/proc` has no
/// task states (not Linux), returns at once, not idle.
pub fn settle() -> Settled {
    settle_tree(std::process::id(), current_tid())
}

/// [`settle`] for the tree of `root`, leaving out thread `skip`.
fn settle_tree(root: u32, skip: u32) -> Settled {
    let start = Instant::now();
    let pids = tree_of(root);
    let mut quiet = 0;
    loop {
        match runnable(&pids, skip) {
            None => {
                return Settled {
                    waited: start.elapsed(),
                    idle: false,
                }
            }
            Some(0) => quiet += 1,
            Some(_) => quiet = 0,
        }
        if quiet >= 2 {
            return Settled {
                waited: start.elapsed(),
                idle: true,
            };
        }
        if start.elapsed() >= MAX_SETTLE {
            return Settled {
                waited: start.elapsed(),
                idle: false,
            };
        }
        std::thread::sleep(WINDOW);
    }
}

/// `pid` and its descendants (from the parent pid in `/proc/<pid>/stat`).
fn tree_of(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in crate::sys::pids() {
        if let Some(pp) = crate::sys::parent_of(p) {
            children.entry(pp).or_default().push(p);
        }
    }
    let mut out = vec![pid];
    let mut seen: HashSet<u32> = HashSet::from([pid]);
    let mut i = 0;
    while i < out.len() {
        for &c in children.get(&out[i]).into_iter().flatten() {
            if seen.insert(c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

fn current_tid() -> u32 {
    #[cfg(target_os = "linux")]
    {
        // The raw system call: glibc's gettid() wrapper is 2.30+, and the worker links against
        // glibc 2.17 for old images (scripts/build-worker.sh).
        // SAFETY: gettid(2) takes no arguments and cannot fail.
        (unsafe { libc::syscall(libc::SYS_gettid) }) as u32
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// How many threads of `pids` but `skip` (the thread that watches) are runnable; `None` where
/// `/proc` has no task states (not Linux).
fn runnable(pids: &[u32], skip: u32) -> Option<usize> {
    let mut seen = false;
    let mut n = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) == Some(skip) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            // The state follows the parenthesised name.
            let Some(state) = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
            else {
                continue;
            };
            seen = true;
            n += usize::from(state == "R");
        }
    }
    seen.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process tree: `sh -c SCRIPT`.
    fn child(script: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_sleeping_tree_settles_and_a_spinning_one_does_not() {
        if runnable(&[std::process::id()], 0).is_none() {
            return; // no task states here
        }
        let mut spin = child("while :; do :; done");
        std::thread::sleep(Duration::from_millis(50));
        let busy = settle_tree(spin.id(), 0);
        let _ = spin.kill();
        let _ = spin.wait();
        assert!(!busy.idle, "{busy:?}");
        assert!(busy.waited >= MAX_SETTLE);
        let mut sleeping = child("sleep 5");
        std::thread::sleep(Duration::from_millis(50));
        let quiet = settle_tree(sleeping.id(), 0);
        let _ = sleeping.kill();
        let _ = sleeping.wait();
        assert!(quiet.idle, "{quiet:?}");
        assert!(quiet.waited < MAX_SETTLE);
    }

    #[test]
    fn the_tree_holds_children() {
        let mut sleeper = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let tree = tree_of(std::process::id());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_eq!(tree[0], std::process::id());
        assert!(tree.contains(&sleeper.id()), "{tree:?}");
    }
}
