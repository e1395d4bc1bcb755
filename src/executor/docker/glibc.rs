//! Which worker binary goes into containers, and why one cannot start in an image: the glibc
//! the worker needs (the newest `GLIBC_2.x` symbol version it references) against the glibc the
//! image has (its dynamic loader's `--version`), or no glibc at all.

use std::path::{Path, PathBuf};

/// The oldest glibc the shipped worker needs (`scripts/build-worker.sh` links it against this).
pub const WORKER_GLIBC: &str = "2.17";
/// Where x86-64 glibc keeps its dynamic loader; an image without it has no glibc.
pub const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
/// Where distributions keep libc.so.6 (Debian/Ubuntu, RHEL/UBI): run through the loader it prints
/// its version, for glibc older than 2.33 whose loader has no `--version`.
pub const LIBC_PATHS: [&str; 4] = [
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib64/libc.so.6",
];
/// Overrides the worker binary mounted into containers (tests; a worker built elsewhere).
pub const WORKER_VAR: &str = "TAGBENCH_WORKER";

/// The worker mounted into containers: `$TAGBENCH_WORKER`, else `tagbench-glibc2.17` beside
/// `host_exe` when it is there and from the same build (its `--version` equals `version`: it
/// starts in images with glibc 2.17 or newer), else `host_exe`. The second value is a warning
/// for a worker beside the binary that is from another build (stale: rebuild it).
pub fn worker_for(
    host_exe: &Path,
    env_override: Option<PathBuf>,
    version: &str,
) -> (PathBuf, Option<String>) {
    if let Some(p) = env_override.filter(|p| !p.as_os_str().is_empty()) {
        return (p, None);
    }
    let old = host_exe.with_file_name(format!("tagbench-glibc{WORKER_GLIBC}"));
    if !old.is_file() {
        return (host_exe.to_owned(), None);
    }
    let said = std::process::Command::new(&old)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if said == version {
        (old, None)
    } else {
        let warning = format!(
            "{} is from another build ({}; this is {version}): containers get {} instead, which needs              this host's glibc; run scripts/build-worker.sh to link it again",
            old.display(),
            if said.is_empty() { "it did not say its version" } else { &said },
            host_exe.display()
        );
        (host_exe.to_owned(), Some(warning))
    }
}

/// The newest `GLIBC_2.N[.M]` version named in `binary` (its symbol versions), as `2.34`.
pub fn needed_glibc(binary: &[u8]) -> Option<String> {
    let pat = b"GLIBC_2.";
    let mut best: Option<(u32, u32)> = None;
    let mut i = 0;
    while let Some(off) = find(&binary[i..], pat) {
        let start = i + off + pat.len();
        let digits: Vec<u8> = binary[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .copied()
            .take(8)
            .collect();
        let text = String::from_utf8_lossy(&digits);
        let mut parts = text.split('.').filter(|p| !p.is_empty());
        if let Some(Ok(minor)) = parts.next().map(str::parse::<u32>) {
            let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            best = best.max(Some((minor, patch)));
        }
        i = start;
    }
    best.map(|(m, p)| {
        if p == 0 {
            format!("2.{m}")
        } else {
            format!("2.{m}.{p}")
        }
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The glibc version in the banner of the loader's `--version` or of libc.so.6 (`GNU C Library
/// (Debian GLIBC 2.31-13) stable release version 2.31.`).
pub fn found_glibc(loader_output: &str) -> Option<String> {
    let first = loader_output.lines().find(|l| l.contains("release version"))?;
    let v = first.rsplit("version").next()?.trim().trim_end_matches('.');
    (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')).then(|| v.to_string())
}

/// The sentence for an image the worker cannot start in: the glibc found (or none) against the
/// glibc needed.
pub fn mismatch(image: &str, found: Option<&str>, needed: &str, worker: &Path) -> String {
    let hint = format!(
        "use an image with glibc {needed} or newer{}",
        if needed == WORKER_GLIBC {
            String::new()
        } else {
            format!(
                ", or build the worker for glibc {WORKER_GLIBC} (scripts/build-worker.sh writes {} beside tagbench)",
                worker.with_file_name(format!("tagbench-glibc{WORKER_GLIBC}")).display()
            )
        }
    );
    match found {
        Some(v) => format!(
            "image {image} has glibc {v}, but the worker ({}) needs glibc {needed} or newer; {hint}",
            worker.display()
        ),
        None => format!(
            "image {image} has no glibc (no {LOADER}), but the worker ({}) needs glibc {needed} or newer; {hint}",
            worker.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_is_the_newest_symbol_version() {
        let bin = b"\0GLIBC_2.2.5\0memcpy\0GLIBC_2.14\0GLIBC_2.34\0GLIBC_2.3.4\0GLIBC_PRIVATE\0";
        assert_eq!(needed_glibc(bin).as_deref(), Some("2.34"));
        assert_eq!(
            needed_glibc(b"\0GLIBC_2.2.5\0GLIBC_2.17\0").as_deref(),
            Some("2.17")
        );
        assert_eq!(needed_glibc(b"static"), None);
    }

    #[test]
    fn found_reads_the_loader() {
        let out = "ld.so (Debian GLIBC 2.31-13+deb11u11) stable release version 2.31.\nCopyright (C) 2020";
        assert_eq!(found_glibc(out).as_deref(), Some("2.31"));
        let libc = "GNU C Library (Debian GLIBC 2.31-13+deb11u5) stable release version 2.31.\nCopyright";
        assert_eq!(found_glibc(libc).as_deref(), Some("2.31"));
        assert_eq!(found_glibc("--version: cannot open shared object file"), None);
        assert_eq!(found_glibc("exec failed"), None);
    }

    #[test]
    fn messages_say_found_and_needed() {
        let w = Path::new("/usr/bin/tagbench");
        let m = mismatch("old:1", Some("2.12"), "2.17", w);
        assert!(
            m.starts_with(
                "image old:1 has glibc 2.12, but the worker (/usr/bin/tagbench) needs glibc 2.17 or newer"
            ),
            "{m}"
        );
        let m = mismatch("scratch:1", None, "2.34", w);
        assert!(m.contains("has no glibc (no /lib64/ld-linux-x86-64.so.2)"), "{m}");
        assert!(
            m.contains("scripts/build-worker.sh writes /usr/bin/tagbench-glibc2.17"),
            "{m}"
        );
    }

    #[test]
    fn the_old_glibc_worker_beside_the_binary_wins_when_it_is_from_this_build() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("tagbench");
        assert_eq!(worker_for(&host, None, "tagbench 1"), (host.clone(), None));
        let old = dir.path().join("tagbench-glibc2.17");
        std::fs::write(&old, "#!/bin/sh\necho 'tagbench 1'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(worker_for(&host, None, "tagbench 1"), (old.clone(), None));
        let (w, warning) = worker_for(&host, None, "tagbench 2");
        assert_eq!(w, host);
        assert!(warning
            .unwrap()
            .contains("is from another build (tagbench 1; this is tagbench 2)"));
        assert_eq!(
            worker_for(&host, Some("/x/w".into()), "v").0,
            PathBuf::from("/x/w")
        );
    }
}
