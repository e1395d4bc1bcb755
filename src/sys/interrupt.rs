//! Ctrl-C and SIGTERM, process-wide: the clean-ups registered here run once, then the process
//! exits 130. Whoever starts something that must not outlive the process (a container)
//! registers how to remove it; threads that see their worker die meanwhile wait in
//! [`hold_if_interrupted`] instead of taking the death for a crash. In order: the clean-ups
//! ([`on_interrupt`]), then every local worker child (`tagbench worker`) is killed, then the
//! last words ([`on_interrupt_last`]: a run records its state and says where it is), then exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

type Cleanup = Box<dyn Fn() + Send>;

/// Clean-ups by key, so that registering the same thing twice runs it once.
static CLEANUPS: Mutex<Vec<(String, Cleanup)>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();
/// What runs after the clean-ups and the workers' end, by key.
static LAST: Mutex<Vec<(String, Cleanup)>> = Mutex::new(Vec::new());
/// Set when SIGINT/SIGTERM arrived: the clean-ups are running and the process will exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Runs `cleanup` (once per `key`) when the process is interrupted, then exits 130. The signal
/// handler is installed before this returns, so no interrupt can slip past it.
pub fn on_interrupt(key: &str, cleanup: impl Fn() + Send + 'static) {
    if let Ok(mut list) = CLEANUPS.lock() {
        if !list.iter().any(|(k, _)| k == key) {
            list.push((key.to_string(), Box::new(cleanup)));
        }
    }
    install();
}

/// Runs `last` (once per `key`) when the process is interrupted, after every [`on_interrupt`]
/// clean-up and after the local workers are killed, so that nothing the run started still
/// writes: a run records run.json's state here and says where the partial run is.
pub fn on_interrupt_last(key: &str, last: impl Fn() + Send + 'static) {
    if let Ok(mut list) = LAST.lock() {
        if !list.iter().any(|(k, _)| k == key) {
            list.push((key.to_string(), Box::new(last)));
        }
    }
    install();
}

/// Whether SIGINT/SIGTERM arrived (the process is about to exit 130).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Like [`hold_if_interrupted`], for a worker that died of SIGINT or SIGTERM itself: a Ctrl-C
/// at the terminal reaches the whole process group, so a local worker may die of it a moment
/// before this process's handler has said so. Waits up to `grace` for the handler.
pub fn hold_if_interrupted_within(grace: Duration) {
    let until = std::time::Instant::now() + grace;
    while !interrupted() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    hold_if_interrupted();
}

/// After an interrupt the workers die because their clean-ups remove them; the caller must not
/// take that for a crash and carry on, so the thread waits here for the exit.
pub fn hold_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn install() {
    #[cfg(unix)]
    HANDLER.call_once(|| {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        let (int, term) = {
            let _guard = rt.enter();
            (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        };
        let (Ok(mut int), Ok(mut term)) = (int, term) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("tagbench-interrupt".into())
            .spawn(move || {
                let by = rt.block_on(async {
                    tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                    }
                });
                INTERRUPTED.store(true, Ordering::SeqCst);
                eprintln!("\ninterrupted by {by}");
                if let Ok(list) = CLEANUPS.lock() {
                    for (_, cleanup) in list.iter() {
                        cleanup();
                    }
                }
                kill_local_workers();
                if let Ok(list) = LAST.lock() {
                    for (_, last) in list.iter() {
                        last();
                    }
                }
                std::process::exit(crate::outcome::Outcome::Interrupted.code());
            });
        if let Err(e) = spawned {
            eprintln!("warning: failed to watch for Ctrl-C ({e}); interrupted runs may leave containers (`tagbench clean` removes them)");
        }
    });
}

/// Kills (SIGKILL) every child of this process that runs `tagbench worker`: a local worker
/// would otherwise go on until its case ends, an orphan. Its own children (python, a command's
/// ranks) die with it (`sys::die_with_parent`). Found through /proc (children whose parent is
/// this process and whose argv is `… worker --job …`), so it needs no registry that a worker
/// started a moment ago could miss. Returns the pids killed.
pub fn kill_local_workers() -> Vec<u32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    for pid in children_of(me) {
        if !is_worker(pid) {
            continue;
        }
        // SAFETY: a signal to a child of this process; no memory is passed.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
            killed.push(pid);
        }
    }
    killed
}

/// The processes whose parent is `pid`, from /proc (none where /proc cannot be read).
fn children_of(pid: u32) -> impl Iterator<Item = u32> {
    super::pids().filter(move |&c| super::parent_of(c) == Some(pid))
}

/// Whether a process's argv is a worker's: `EXE worker --job FILE`.
fn is_worker(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.get(1..3) == Some(&[&b"worker"[..], &b"--job"[..]][..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_kills_only_worker_children() {
        // A child whose argv reads as a worker's: `sh worker --job` runs a script named `worker`.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("worker"), "while :; do sleep 0.1; done\n").unwrap();
        let mut worker = std::process::Command::new("sh")
            .args(["worker", "--job"])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        // What /proc says of the worker, for a failure message.
        let seen = |pid: u32| {
            let read = |f: &str| {
                std::fs::read(format!("/proc/{pid}/{f}"))
                    .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            };
            format!("stat {:?}, cmdline {:?}", read("stat"), read("cmdline"))
        };
        // The test runs beside others on a busy machine: wait until /proc shows the worker's
        // argv and its shell has read its script (its first `sleep` child exists), so that a
        // failure below is the function's and not a process that has not started yet.
        let started = std::time::Instant::now();
        while !(is_worker(worker.id()) && children_of(worker.id()).next().is_some()) {
            assert!(
                started.elapsed().as_secs() < 20,
                "the worker did not start: {}",
                seen(worker.id())
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(crate::sys::parent_of(worker.id()), Some(std::process::id()));
        assert!(!is_worker(other.id()));
        let killed = kill_local_workers();
        assert!(
            killed.contains(&worker.id()),
            "killed {killed:?}; worker {}: {}",
            worker.id(),
            seen(worker.id())
        );
        assert!(!killed.contains(&other.id()), "{killed:?}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(worker.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(other.try_wait().unwrap(), None);
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
