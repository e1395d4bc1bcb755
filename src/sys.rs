//! Small facts about the operating system and the process, shared by every layer: signal names,
//! panic payloads, processes and their parents in /proc, identifiers safe for the file system
//! and the container engine, the limits the process runs under ([`limits`]), what the worker's
//! malloc keeps ([`alloc`]), output that a closed pipe cannot crash. Nearly a leaf: it imports
//! only [`crate::outcome`] (the exit code of an interrupt), itself a leaf, so any module may use
//! it without making an import cycle.

pub mod alloc;
pub mod interrupt;
pub mod limits;
pub mod log_cap;
pub mod output;

/// The process ids in /proc (none where /proc cannot be read).
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
}

/// A process's parent, from /proc/PID/stat (the field after the `(comm)`, which may hold
/// spaces and parentheses, so it is found after the last `)`).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A signal's conventional name (`SIGSEGV` for 11), `signal` for the ones we do not name.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// A child that dies with this process: when the host kills a worker past its time limit, a
/// python or a user's program still inside a long call would otherwise keep the CPU or GPU busy.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    signal_with_parent(cmd, libc::SIGKILL);
}

/// A child that gets `signal` when this process dies (PR_SET_PDEATHSIG): SIGTERM lets a child
/// that owns containers remove them.
#[cfg(target_os = "linux")]
pub fn signal_with_parent(cmd: &mut std::process::Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub fn signal_with_parent(_: &mut std::process::Command, _: libc::c_int) {}

/// What joins the lines [`tail_lines`] quotes.
pub const TAIL_SEPARATOR: &str = " | ";

/// The last `n` non-blank lines of `text`, joined with ` | ` (the last line last): how a
/// process's stderr is quoted in a reason.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(TAIL_SEPARATOR)
}

/// The message of a caught panic: `panic!` carries a `String` or a `&'static str`.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// `s` with every character outside ASCII alphanumerics, `-`, `_` and `.` replaced by `_`: the
/// set that container names, file names and run ids all accept.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The worker removes the variables this names (comma-separated) from its own environment
/// before anything starts: how a target's `unset_env` reaches past an image's `ENV`.
pub const UNSET_ENV_VAR: &str = "TAGBENCH_UNSET_ENV";

/// Removes the variables a target's `unset_env` names (`TAGBENCH_UNSET_ENV`, comma-separated)
/// from this process's environment, and that variable itself. Called first thing in the worker,
/// while it has one thread, so that an image's `ENV` can be taken away from everything it starts.
pub fn unset_requested_env() {
    let var = UNSET_ENV_VAR;
    if let Ok(names) = std::env::var(var) {
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            std::env::remove_var(name);
        }
        std::env::remove_var(var);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(64), "signal");
        assert_eq!(safe_name("repo/img:tag@gpu0 x"), "repo_img_tag_gpu0_x");
        assert_eq!(safe_name("a-b_c.d"), "a-b_c.d");
    }

    #[test]
    fn panic_payloads() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "unknown panic");
    }
}
