//! What a worker process really loaded, read at its end: every shared object mapped into it
//! (from `/proc/self/maps`: path, soname, version, size, GNU build-id) and, under the torch
//! engine, the Python distributions importable in the image with the ones the run imported.
//! What pip says is installed can differ from what a process loaded (a library found first on
//! `LD_LIBRARY_PATH`); this is the latter. Stored per target in run.json, bounded in size.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// At most this many libraries and distributions are kept; the rest is counted in `omitted`
/// and covered by `digest`.
pub const MAX_LIBRARIES: usize = 512;
pub const MAX_DISTRIBUTIONS: usize = 1024;

/// What one worker process loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Components {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub libraries: Vec<Library>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python: Vec<Distribution>,
    /// Entries past the caps, left out of the lists above.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
    /// FNV-1a of the full lists (before the caps): equal digests, equal components.
    #[serde(default)]
    pub digest: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A shared object mapped into the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Library {
    pub path: String,
    /// `DT_SONAME`, else the file name.
    pub soname: String,
    /// From the file name (`libcudnn.so.9.1.0` → `9.1.0`); empty when it has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub size: u64,
    /// The GNU build-id note, hex; empty when the file has none or cannot be read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build_id: String,
}

/// A Python distribution importable in the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    pub name: String,
    pub version: String,
    /// The run imported one of its modules or loaded one of its shared objects.
    #[serde(default)]
    pub imported: bool,
    /// The directory its files are relative to (site-packages), as the image has it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    /// Its top-level entries there (packages, modules, its `.dist-info`), from RECORD: what a
    /// bisect copies out of the image to swap it into another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_level: Vec<String>,
}

impl Components {
    /// Builds the record from the mapped paths and distributions, sorted, capped and digested.
    pub fn new(mut libraries: Vec<Library>, mut python: Vec<Distribution>) -> Components {
        libraries.sort_by(|a, b| (&a.soname, &a.path).cmp(&(&b.soname, &b.path)));
        python.sort_by_key(|d| d.name.to_ascii_lowercase());
        let digest = {
            let mut parts: Vec<String> = libraries
                .iter()
                .map(|l| format!("{}={}:{}", l.soname, l.version, l.build_id))
                .collect();
            parts.extend(python.iter().map(|d| format!("{}=={}", d.name, d.version)));
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            format!("{:016x}", crate::stats::bootstrap::fnv1a(&refs))
        };
        let omitted =
            libraries.len().saturating_sub(MAX_LIBRARIES) + python.len().saturating_sub(MAX_DISTRIBUTIONS);
        libraries.truncate(MAX_LIBRARIES);
        python.truncate(MAX_DISTRIBUTIONS);
        Components {
            libraries,
            python,
            omitted,
            digest,
        }
    }

    /// What this very process loaded (the native engine's worker).
    pub fn of_this_process() -> Components {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        Components::new(
            mapped_objects(&maps).iter().map(|p| library(p)).collect(),
            Vec::new(),
        )
    }
}

/// The shared objects in a `/proc/<pid>/maps` text, each once, in the order first mapped.
pub fn mapped_objects(maps: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path (the path may hold spaces)
        let Some(path) = line.splitn(6, char::is_whitespace).nth(5).map(str::trim) else {
            continue;
        };
        if !path.starts_with('/') || path.ends_with(" (deleted)") || !is_shared_object(path) {
            continue;
        }
        if seen.insert(path.to_string()) {
            out.push(path.to_string());
        }
    }
    out
}

/// `libfoo.so`, `libfoo.so.1.2`, `_C.cpython-311-x86_64-linux-gnu.so`.
fn is_shared_object(path: &str) -> bool {
    let name = file_name(path);
    name.ends_with(".so") || name.contains(".so.")
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The version a file name carries after `.so.` (`libcublas.so.12.4.5.8` → `12.4.5.8`).
pub fn version_of_name(name: &str) -> String {
    match name.split_once(".so.") {
        Some((_, v)) if v.chars().next().is_some_and(|c| c.is_ascii_digit()) => v.to_string(),
        _ => String::new(),
    }
}

/// Reads what a shared object says of itself; a file that cannot be read keeps its path only.
pub fn library(path: &str) -> Library {
    let name = file_name(path).to_string();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let (soname, build_id) = elf_identity(Path::new(path)).unwrap_or_default();
    let version = match version_of_name(&name) {
        v if v.is_empty() => version_of_name(&soname),
        v => v,
    };
    Library {
        path: path.to_string(),
        soname: if soname.is_empty() { name } else { soname },
        version,
        size,
        build_id,
    }
}

/// `DT_SONAME` and the GNU build-id (hex) of an ELF file, read through a cache so that only the
/// headers, the dynamic section and the notes are read, not the whole file.
fn elf_identity(path: &Path) -> Option<(String, String)> {
    use object::read::elf::{Dyn, ElfFile64};
    use object::{Object, ReadCache};

    let file = std::fs::File::open(path).ok()?;
    let cache = ReadCache::new(file);
    let elf = ElfFile64::<object::Endianness, _>::parse(&cache).ok()?;
    let build_id = elf
        .build_id()
        .ok()
        .flatten()
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap_or_default();
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let mut soname = String::new();
    if let Ok(Some((entries, link))) = sections.dynamic(endian, &cache) {
        if let Ok(strings) = sections.strings(endian, &cache, link) {
            for d in entries {
                if d.tag32(endian) == Some(object::elf::DT_SONAME) {
                    if let Some(Ok(s)) = d.val32(endian).map(|at| strings.get(at)) {
                        soname = String::from_utf8_lossy(s).into_owned();
                    }
                    break;
                }
            }
        }
    }
    Some((soname, build_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a2a000 r--p 00000000 fd:01 123 /usr/bin/python3.11
7f1c2a000000-7f1c2a200000 r--p 00000000 fd:01 456 /opt/venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so
7f1c2a200000-7f1c2b000000 r-xp 00200000 fd:01 456 /opt/venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so
7f1c2c000000-7f1c2c100000 r-xp 00000000 fd:01 789 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0
7f1c2d000000-7f1c2d100000 rw-p 00000000 00:00 0 
7f1c2e000000-7f1c2e100000 r-xp 00000000 fd:01 790 /tmp/my dir/libspace.so
7f1c2f000000-7f1c2f100000 r-xp 00000000 fd:01 791 /tmp/libgone.so (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7f1c30000000-7f1c30100000 r--s 00000000 fd:01 792 /usr/lib/locale/C.utf8/LC_CTYPE
";

    #[test]
    fn maps_give_each_shared_object_once_in_order() {
        assert_eq!(
            mapped_objects(MAPS),
            [
                "/opt/venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so",
                "/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0",
                "/tmp/my dir/libspace.so",
            ]
        );
    }

    #[test]
    fn versions_come_from_the_file_name() {
        assert_eq!(version_of_name("libcublas.so.12.4.5.8"), "12.4.5.8");
        assert_eq!(version_of_name("libgomp.so.1"), "1");
        assert_eq!(version_of_name("libtorch_cpu.so"), "");
        assert_eq!(version_of_name("libfoo.so.abc"), "");
    }

    /// The test process's own libc: a real ELF with a soname and a build-id that `readelf -n`
    /// agrees with (where readelf is installed).
    #[test]
    fn this_process_lists_libc_with_its_soname_and_build_id() {
        let c = Components::of_this_process();
        let libc = c
            .libraries
            .iter()
            .find(|l| l.soname == "libc.so.6")
            .unwrap_or_else(|| panic!("no libc.so.6 in {c:?}"));
        assert!(libc.size > 100_000, "{libc:?}");
        assert_eq!(libc.build_id.len(), 40, "{libc:?}");
        assert!(!c.digest.is_empty());
        if let Ok(out) = std::process::Command::new("readelf")
            .args(["-n", &libc.path])
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() {
                assert!(text.contains(&libc.build_id), "{text}");
            }
        }
    }

    #[test]
    fn lists_are_capped_and_the_digest_covers_everything() {
        let lib = |i: usize| Library {
            path: format!("/l/lib{i}.so"),
            soname: format!("lib{i:04}.so"),
            size: 1,
            ..Default::default()
        };
        let a = Components::new((0..MAX_LIBRARIES + 3).map(lib).collect(), Vec::new());
        assert_eq!(a.libraries.len(), MAX_LIBRARIES);
        assert_eq!(a.omitted, 3);
        let mut more: Vec<Library> = (0..MAX_LIBRARIES + 3).map(lib).collect();
        more.last_mut().unwrap().build_id = "ff".into();
        let b = Components::new(more, Vec::new());
        assert_ne!(
            a.digest, b.digest,
            "a change past the cap still changes the digest"
        );
    }

    #[test]
    fn an_unreadable_file_keeps_its_path_and_name() {
        let l = library("/nonexistent/libnothing.so.3.1");
        assert_eq!(l.soname, "libnothing.so.3.1");
        assert_eq!(l.version, "3.1");
        assert_eq!((l.size, l.build_id.as_str()), (0, ""));
    }
}
