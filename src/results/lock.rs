//! One writer per run directory: `tagbench run` (fresh or `--resume`) holds an exclusive
//! advisory lock (`flock(2)`) on `<run>/.lock` for as long as it writes the run, with its pid,
//! host and start time in the file. The kernel drops the lock when the process ends, however it
//! ends (SIGKILL included), so a killed run is resumable at once and a live one is never
//! written twice; `tagbench clean` asks [`RunDir::liveness`] before it removes a run's
//! containers. Also the rule for what a run id may be ([`check_run_id`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::RunDir;

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// Who holds a run directory's lock, as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holder {
    pub pid: Option<u32>,
    pub host: String,
    pub started: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "tagbench pid {pid}")?,
            None => write!(f, "a tagbench process")?,
        }
        if !self.host.is_empty() && self.host != this_host() {
            write!(f, " on {}", self.host)?;
        }
        if !self.started.is_empty() {
            write!(f, " (started {})", self.started)?;
        }
        Ok(())
    }
}

/// Whether a process writes a run directory now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// A `tagbench run` holds the lock.
    Live(Holder),
    /// Nobody holds it: the run is complete, interrupted or killed (or not a run at all).
    NotLive,
}

/// A second writer of a live run (a `run` with the same `--run-id`, or `--resume` of a live
/// run), refused.
#[derive(Debug, thiserror::Error)]
#[error("run {run} is being written by {holder}; wait for it or stop it")]
pub struct RunBusy {
    pub run: String,
    pub holder: Holder,
}

/// The held lock of a run directory; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunDir {
    fn lock_path(&self) -> std::path::PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// The run's name, as messages give it (its directory's name).
    pub fn name(&self) -> String {
        self.root.file_name().map_or_else(
            || self.root.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Takes the run directory's lock for this process (the directory must exist); a run that
    /// another process writes is [`RunBusy`], naming it.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        if !try_flock(&file, libc::LOCK_EX).with_context(|| format!("failed to lock {}", path.display()))? {
            return Err(RunBusy {
                run: self.name(),
                holder: read_holder(&mut file),
            }
            .into());
        }
        let me = format!(
            "pid={}\nhost={}\nstarted={}\n",
            std::process::id(),
            this_host(),
            chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|_| file.flush())
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(RunLock { _file: file })
    }

    /// Whether a process writes this run now. A directory without a lock file (a run written
    /// before runs were locked, or no run) is not live.
    pub fn liveness(&self) -> Result<Liveness> {
        let path = self.lock_path();
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Liveness::NotLive),
            Err(e) => return Err(e).with_context(|| format!("failed to open {}", path.display())),
        };
        // A shared lock is granted unless a writer holds the exclusive one; it is released when
        // `file` closes.
        if try_flock(&file, libc::LOCK_SH).with_context(|| format!("failed to lock {}", path.display()))? {
            return Ok(Liveness::NotLive);
        }
        Ok(Liveness::Live(read_holder(&mut file)))
    }
}

/// `flock(LOCK_NB | op)`: false when another open file holds a conflicting lock.
fn try_flock(file: &File, op: i32) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this function borrows; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// What a lock file says. Its holder writes it right after locking: a reader that comes in
/// between sees it empty for a moment, so an empty file is read again a few times.
fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    for _ in 0..20 {
        text.clear();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() && text.contains('\n') {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let mut h = Holder::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("pid", v)) => h.pid = v.trim().parse().ok(),
            Some(("host", v)) => h.host = v.trim().to_string(),
            Some(("started", v)) => h.started = v.trim().to_string(),
            _ => {}
        }
    }
    h
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// A run id is a directory name under `--results-dir`, never a path: empty, `.`, `..`, or
/// anything with a `/` (or a NUL) would put the run elsewhere. `Err` says why.
pub fn check_run_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("a run id cannot be empty".into());
    }
    if id == "." || id == ".." {
        return Err(format!(
            "`{id}` is not a run id: a run id names a directory under --results-dir"
        ));
    }
    if id.contains('/') || id.contains('\0') || Path::new(id).is_absolute() {
        return Err(format!(
            "`{id}` is a path: a run id names a directory under --results-dir (use --results-dir for where it goes)"
        ));
    }
    if id.starts_with('.') {
        return Err(format!(
            "`{id}` starts with `.`: run ids are visible directory names"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_holder_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("r1"));
        std::fs::create_dir_all(&run.root).unwrap();
        assert_eq!(run.liveness().unwrap(), Liveness::NotLive);
        let held = run.lock().unwrap();
        // flock locks belong to the open file: a second open in this process conflicts too.
        let Liveness::Live(holder) = run.liveness().unwrap() else {
            panic!("a held lock reads as live");
        };
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(!holder.started.is_empty());
        let err = run.lock().unwrap_err();
        let busy = err.downcast_ref::<RunBusy>().expect("RunBusy");
        assert_eq!(busy.run, "r1");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "run r1 is being written by tagbench pid {} (started ",
                std::process::id()
            )),
            "{text}"
        );
        assert!(text.ends_with("; wait for it or stop it"), "{text}");
        drop(held);
        assert_eq!(run.liveness().unwrap(), Liveness::NotLive);
        let _again = run.lock().unwrap();
    }

    #[test]
    fn a_run_dir_without_lock_file_is_not_live() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunDir::new(dir.path()).liveness().unwrap(), Liveness::NotLive);
        assert_eq!(
            RunDir::new(dir.path().join("absent")).liveness().unwrap(),
            Liveness::NotLive
        );
    }

    #[test]
    fn run_ids_are_names_not_paths() {
        for ok in ["20261205-101010-smoke", "base", "a.b", "nightly_1"] {
            assert_eq!(check_run_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "/tmp/x", ".hidden"] {
            assert!(check_run_id(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(check_run_id("").unwrap_err(), "a run id cannot be empty");
        assert!(check_run_id("../x").unwrap_err().contains("is a path"));
    }
}
