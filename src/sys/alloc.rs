//! How the worker's allocator keeps memory it frees, so that a native case measures its kernel
//! rather than the kernel's page faults.
//!
//! candle has no output arguments: every call of a native case allocates its results (attention
//! b1 h8 s256 d64: three 2 MiB score tensors and the output; GEMM 1024: a 4 MiB product) and
//! frees them before the next call. glibc's malloc gives such blocks back to the operating system
//! (`munmap`, or trimming the heap's top past `M_TRIM_THRESHOLD`), so the next call faults every
//! page in again: on the 2-core VM a 10-round A/A of attention and GEMM took 3.2–3.7 million
//! minor faults and 7.7–9.2 s of system time against 28–30 s of user time, attention's median was
//! 3.7–6.1 ms where the arithmetic takes 2, and its paired rounds spread twice as much as with the
//! memory kept (SD of a round's ratio 4.9–7.8% → 2.5–5.3%; 320–380 thousand faults, 3.5–4.3 s
//! of system time). What the VM's page faults cost changes from second to second; what a case
//! is meant to measure does not.
//!
//! So the worker keeps freed blocks up to [`KEEP_BYTES`] in its heap ([`keep_freed_memory`]),
//! the knobs that `MALLOC_TRIM_THRESHOLD_` and `MALLOC_MMAP_THRESHOLD_` set. This is the
//! worker's own allocator, not the image's: programs the worker starts (python, a user's
//! command) get the environment as the image has it. Where that environment sets the knobs
//! itself (either variable, or a `glibc.malloc` tunable), the worker follows it instead.

/// Blocks up to this size come from the heap and stay there once freed: 32 MiB, the largest
/// mmap threshold glibc accepts on 64-bit (larger blocks, a 16k GEMM's operands, are mapped
/// and unmapped as before, and their page faults are a small share of their call).
pub const KEEP_BYTES: i32 = 32 << 20;

/// What the worker's environment says about glibc's malloc, if anything: the variable that
/// sets it.
pub fn set_by_environment(env: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    for var in [
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TOP_PAD_",
    ] {
        if env(var).is_some() {
            return Some(var);
        }
    }
    env("GLIBC_TUNABLES")
        .filter(|t| t.contains("glibc.malloc."))
        .map(|_| "GLIBC_TUNABLES")
}

/// What [`keep_freed_memory`] did, once it ran.
static DONE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Keeps freed memory in the worker's heap (see the module's comment) unless the environment
/// sets malloc's knobs; once per process, before the first case allocates.
pub fn keep_freed_memory() {
    DONE.get_or_init(apply);
}

/// What the worker's malloc does with freed memory, for its `env` message (run.json's
/// `malloc`); `None` in a process that did not set it up (the host, a test).
pub fn described() -> Option<&'static str> {
    DONE.get().map(String::as_str)
}

fn apply() -> String {
    if let Some(var) = set_by_environment(|v| std::env::var(v).ok()) {
        return format!("as the environment sets it ({var})");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets malloc's parameters, under malloc's own lock.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP_BYTES) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_BYTES.saturating_mul(2)) == 1
        };
        if ok {
            let mib = KEEP_BYTES >> 20;
            return format!(
                "freed blocks up to {mib} MiB kept (mmap threshold {mib} MiB, trim threshold {} MiB)",
                2 * mib
            );
        }
        "glibc default (mallopt refused)".into()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        "the platform's default".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins() {
        let none = |_: &str| None;
        assert_eq!(set_by_environment(none), None);
        let trim = |v: &str| (v == "MALLOC_TRIM_THRESHOLD_").then(|| "0".to_string());
        assert_eq!(set_by_environment(trim), Some("MALLOC_TRIM_THRESHOLD_"));
        let tunable =
            |v: &str| (v == "GLIBC_TUNABLES").then(|| "glibc.malloc.mmap_threshold=4096".to_string());
        assert_eq!(set_by_environment(tunable), Some("GLIBC_TUNABLES"));
        let other = |v: &str| (v == "GLIBC_TUNABLES").then(|| "glibc.cpu.hwcaps=-AVX2".to_string());
        assert_eq!(set_by_environment(other), None);
    }
}
