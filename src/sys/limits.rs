//! The limits the kernel applies to this process, read where a container sees its own: the
//! cgroup's CPU quota and memory limit (cgroup v2 `cpu.max`/`memory.max`, or v1's
//! `cpu.cfs_quota_us`/`memory.limit_in_bytes`, under `/sys/fs/cgroup`), the size of `/dev/shm`,
//! and the capabilities and `no_new_privs` flag from `/proc/self/status`. The worker reports
//! them with its environment, so that run.json shows what a container was given (and "what
//! differs" shows a limit one target had and the other had not).

use std::collections::BTreeMap;
use std::path::Path;

const CGROUP: &str = "/sys/fs/cgroup";

/// A v1 memory limit at or above this is "no limit" (the kernel writes the largest page-aligned
/// `i64`, 9223372036854771712).
const V1_NO_LIMIT: u64 = 1 << 62;

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Cores of CPU time per period from cgroup v2's `cpu.max` (`150000 100000`; `max 100000` is
/// no limit).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Cores from cgroup v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us` (a quota of -1 is no limit).
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Bytes from `memory.max` (v2, `max` is no limit) or `memory.limit_in_bytes` (v1).
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&b| b < V1_NO_LIMIT)
}

/// The CPU quota of this process's cgroup, in cores (`--cpus`); `None` without one.
pub fn cpu_quota_cores() -> Option<f64> {
    if let Some(t) = read(format!("{CGROUP}/cpu.max")) {
        return parse_cpu_max(&t);
    }
    ["cpu", "cpu,cpuacct"].iter().find_map(|dir| {
        parse_cfs(
            &read(format!("{CGROUP}/{dir}/cpu.cfs_quota_us"))?,
            &read(format!("{CGROUP}/{dir}/cpu.cfs_period_us"))?,
        )
    })
}

/// The memory limit of this process's cgroup, bytes; `None` without one.
pub fn memory_limit_bytes() -> Option<u64> {
    match read(format!("{CGROUP}/memory.max")) {
        Some(t) => parse_memory_limit(&t),
        None => parse_memory_limit(&read(format!("{CGROUP}/memory/memory.limit_in_bytes"))?),
    }
}

/// Bytes of memory this process can still take: the kernel's `MemAvailable` (`/proc/meminfo`),
/// lowered to what the cgroup's memory limit leaves above its current usage (`memory.current`
/// or v1's `memory.usage_in_bytes`); `None` when neither is readable.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = read("/proc/meminfo").and_then(|t| parse_mem_available(&t));
    let cgroup = memory_limit_bytes().map(|limit| {
        let used = read(format!("{CGROUP}/memory.current"))
            .or_else(|| read(format!("{CGROUP}/memory/memory.usage_in_bytes")))
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        limit.saturating_sub(used)
    });
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` from `/proc/meminfo`, bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let kib: u64 = status_field(meminfo, "MemAvailable")?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The size of the file system at `/dev/shm` (`--shm-size`), bytes.
pub fn shm_bytes() -> Option<u64> {
    let path = std::ffi::CString::new("/dev/shm").ok()?;
    // SAFETY: statvfs(3) writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_blocks as u64 * st.f_frsize as u64)
}

/// A field of `/proc/self/status` (`CapEff`, `NoNewPrivs`).
fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Every limit that is known, keyed as the worker's `env` message reports them: `cgroup_cpus`
/// (cores), `cgroup_memory_bytes`, `shm_bytes`, `cap_eff` (the effective capability mask, hex)
/// and `no_new_privs` (`1` when set).
pub fn facts() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(c) = cpu_quota_cores() {
        m.insert("cgroup_cpus".into(), format!("{c}"));
    }
    if let Some(b) = memory_limit_bytes() {
        m.insert("cgroup_memory_bytes".into(), b.to_string());
    }
    if let Some(b) = shm_bytes() {
        m.insert("shm_bytes".into(), b.to_string());
    }
    if let Some(status) = read("/proc/self/status") {
        for (field, key) in [("CapEff", "cap_eff"), ("NoNewPrivs", "no_new_privs")] {
            if let Some(v) = status_field(&status, field) {
                m.insert(key.into(), v);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cfs("50000\n", "100000\n"), Some(0.5));
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_memory_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
    }

    #[test]
    fn mem_available() {
        let m = "MemTotal:       16303460 kB\nMemFree:  1000 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(parse_mem_available(m), Some(12_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert!(available_memory_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn status_fields() {
        let s = "Name:\ttagbench\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n";
        assert_eq!(status_field(s, "CapEff").as_deref(), Some("0000000000000000"));
        assert_eq!(status_field(s, "NoNewPrivs").as_deref(), Some("1"));
        assert_eq!(status_field(s, "Cap"), None);
    }

    #[test]
    fn this_process_has_a_shm_and_a_status() {
        let f = facts();
        // Every Linux host (and container) mounts /dev/shm and has /proc/self/status.
        assert!(f["shm_bytes"].parse::<u64>().unwrap() > 0, "{f:?}");
        assert_eq!(f["cap_eff"].len(), 16, "{f:?}");
    }
}
