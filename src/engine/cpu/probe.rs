//! The probe on the CPU: host facts (CPU model, cores, memory, OS, kernel, tagbench version).

use std::collections::BTreeMap;

use crate::case::Case;
use crate::engine::CaseOutput;
use crate::error::CaseError;

/// Facts about this host, read from /proc and /etc where present.
pub fn host_info() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("tagbench_version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("arch".into(), std::env::consts::ARCH.into());
    if let Ok(n) = std::thread::available_parallelism() {
        m.insert("cpu_cores".into(), n.get().to_string());
    }
    if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(name) = info.lines().find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        }) {
            m.insert("cpu_model".into(), name);
        }
    }
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(kb) = info
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            m.insert("memory_mib".into(), (kb / 1024).to_string());
        }
    }
    if let Ok(os) = std::fs::read_to_string("/etc/os-release") {
        if let Some(name) = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")) {
            m.insert("os".into(), name.trim_matches('"').to_string());
        }
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), k.trim().to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        m.insert("hostname".into(), h.trim().to_string());
    }
    m
}

pub fn run(_case: &Case) -> Result<CaseOutput, CaseError> {
    let info = host_info();
    let mut out = CaseOutput::new("cpu");
    out.status = Some(format!(
        "{} ({} cores, {} MiB), {}",
        info.get("cpu_model").map_or("unknown CPU", String::as_str),
        info.get("cpu_cores").map_or("?", String::as_str),
        info.get("memory_mib").map_or("?", String::as_str),
        info.get("os").map_or("unknown OS", String::as_str),
    ));
    out.env = info;
    Ok(out)
}
