//! Finds and opens the image's CUDA libraries (driver, cuBLAS, cuBLASLt, NVRTC, NCCL, NVML) by
//! path, whatever their major version, so that one binary serves CUDA 12 and CUDA 13 images.
//!
//! cudarc's own dynamic loading tries a fixed list of bare names derived from the CUDA version it
//! was built for (`libnccl.so`, `libcublas.so.12`, ...) and panics when none opens. Images often
//! ship only the versioned names (`libnccl.so.2`, `libnccl.so.2.21.5`, `libcublas.so.13`), in
//! directories the dynamic loader does not search (pip wheels under `site-packages/nvidia/*/lib`),
//! so tagbench searches itself and turns absence into a typed "not found".

use std::path::{Path, PathBuf};

/// A library to look for: its unversioned file name and the major versions (sonames) it may
/// carry, most preferred first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibSpec {
    /// What the library is, for messages (`NCCL`).
    pub what: &'static str,
    /// `libnccl.so`
    pub stem: &'static str,
    /// `[2]` for NCCL, [`TOOLKIT_MAJORS`] for cuBLAS, cuBLASLt, NVRTC and the runtime: narrowed
    /// to what the driver runs by [`for_driver`] before anything is opened.
    pub majors: &'static [u32],
}

pub const LIBCUDA: LibSpec = LibSpec {
    what: "CUDA driver",
    stem: "libcuda.so",
    majors: &[1],
};
pub const LIBNVML: LibSpec = LibSpec {
    what: "NVML",
    stem: "libnvidia-ml.so",
    majors: &[1],
};
/// The CUDA toolkit majors a library may carry, newest first.
pub const TOOLKIT_MAJORS: &[u32] = &[13, 12, 11];

pub const LIBCUBLAS: LibSpec = LibSpec {
    what: "cuBLAS",
    stem: "libcublas.so",
    majors: TOOLKIT_MAJORS,
};
pub const LIBCUBLASLT: LibSpec = LibSpec {
    what: "cuBLASLt",
    stem: "libcublasLt.so",
    majors: TOOLKIT_MAJORS,
};
pub const LIBNVRTC: LibSpec = LibSpec {
    what: "NVRTC",
    stem: "libnvrtc.so",
    majors: TOOLKIT_MAJORS,
};
pub const LIBNCCL: LibSpec = LibSpec {
    what: "NCCL",
    stem: "libnccl.so",
    majors: &[2],
};
pub const LIBCUDART: LibSpec = LibSpec {
    what: "CUDA runtime",
    stem: "libcudart.so",
    majors: TOOLKIT_MAJORS,
};

/// The toolkit majors a driver runs, newest first, from `cuDriverGetVersion` (12080 = 12.8).
///
/// A toolkit library needs a driver of at least its major (CUDA's minor-version compatibility
/// covers 12.x libraries on any 12.x driver, not 13 on 12): `libcublas.so.13` on a 12.x
/// driver loads and then fails in `cublasCreate`. So 13 only from a 13.0 driver on; older
/// majors always (a newer driver runs them).
pub fn toolkit_majors(driver_cuda_version: i32) -> &'static [u32] {
    if driver_cuda_version >= 13000 {
        &[13, 12, 11]
    } else if driver_cuda_version >= 12000 {
        &[12, 11]
    } else {
        &[11]
    }
}

/// `spec` narrowed to the majors the driver runs (toolkit libraries only; NCCL's `.so.2`, the
/// driver and NVML are not toolkit-versioned).
pub fn for_driver(spec: &LibSpec, driver_cuda_version: i32) -> LibSpec {
    if spec.majors == TOOLKIT_MAJORS {
        LibSpec {
            majors: toolkit_majors(driver_cuda_version),
            ..*spec
        }
    } else {
        *spec
    }
}

/// Directories to search, in order: `LD_LIBRARY_PATH`, the CUDA toolkit, the distribution's
/// library directories, the NVIDIA container toolkit's mount points, conda, and the `nvidia-*`
/// pip wheels that PyTorch images install (`site-packages/nvidia/<lib>/lib`).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/lib",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/cuda/targets/sbsa-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/usr/local/nvidia/lib64",
        "/usr/local/nvidia/lib",
        "/usr/lib/wsl/lib",
        "/opt/conda/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    // Python wheels: site-packages/nvidia/{cublas,nccl,cuda_nvrtc,cuda_runtime}/lib (CUDA 12
    // wheels) and site-packages/nvidia/cu13/lib (CUDA 13 wheels), under the system prefixes and
    // under every Python environment that is active or on PATH (a venv, conda).
    let mut bases: Vec<PathBuf> = ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    bases.extend(env_prefix_lib_dirs(
        std::env::var_os("VIRTUAL_ENV"),
        std::env::var_os("CONDA_PREFIX"),
        std::env::var_os("PATH"),
    ));
    for base in &bases {
        for entry in read_dir_names(base) {
            if !entry.starts_with("python3") {
                continue;
            }
            for sp in ["site-packages", "dist-packages"] {
                let nv = base.join(&entry).join(sp).join("nvidia");
                for pkg in read_dir_names(&nv) {
                    dirs.push(nv.join(pkg).join("lib"));
                }
            }
        }
    }
    for nv in [Path::new("/usr/lib/python3/dist-packages/nvidia")] {
        for pkg in read_dir_names(nv) {
            dirs.push(nv.join(pkg).join("lib"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// The `lib` directories of the Python environments in `VIRTUAL_ENV`, `CONDA_PREFIX` and of
/// every `.../bin` on `PATH` (a venv's or conda's interpreter lives in `<prefix>/bin`), in that
/// order; their `python3.X/site-packages/nvidia` hold the CUDA libraries PyTorch came with.
pub fn env_prefix_lib_dirs(
    virtual_env: Option<std::ffi::OsString>,
    conda_prefix: Option<std::ffi::OsString>,
    path: Option<std::ffi::OsString>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for prefix in [virtual_env, conda_prefix].into_iter().flatten() {
        if !prefix.is_empty() {
            out.push(PathBuf::from(prefix).join("lib"));
        }
    }
    if let Some(path) = path {
        for bin in std::env::split_paths(&path) {
            if bin.file_name().is_some_and(|n| n == "bin") {
                if let Some(prefix) = bin.parent().filter(|p| !p.as_os_str().is_empty()) {
                    out.push(prefix.join("lib"));
                }
            }
        }
    }
    out
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The version numbers after `stem.` in a file name (`libnccl.so.2.21.5` → `[2, 21, 5]`), or
/// `None` when the name is not `stem` followed by dot-separated numbers.
pub fn version_suffix(stem: &str, name: &str) -> Option<Vec<u32>> {
    let rest = name.strip_prefix(stem)?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let rest = rest.strip_prefix('.')?;
    rest.split('.').map(|p| p.parse::<u32>().ok()).collect()
}

/// Picks the best file for `spec` among the names found in one directory: the soname of the
/// most preferred major (`libnccl.so.2`), else the highest fully versioned file of that major
/// (`libnccl.so.2.21.5`), trying each major in order, else the bare development name.
pub fn best_name(spec: &LibSpec, names: &[String]) -> Option<String> {
    for &major in spec.majors {
        let soname = format!("{}.{major}", spec.stem);
        if names.contains(&soname) {
            return Some(soname);
        }
        let best = names
            .iter()
            .filter_map(|n| version_suffix(spec.stem, n).map(|v| (v, n)))
            .filter(|(v, _)| v.first() == Some(&major) && v.len() > 1)
            .max_by(|a, b| a.0.cmp(&b.0));
        if let Some((_, n)) = best {
            return Some(n.clone());
        }
    }
    names.iter().find(|n| *n == spec.stem).cloned()
}

/// The first directory that holds a file for `spec`, and that file's path.
pub fn find_in_dirs(spec: &LibSpec, dirs: &[PathBuf]) -> Option<PathBuf> {
    for d in dirs {
        let names = read_dir_names(d);
        if let Some(n) = best_name(spec, &names) {
            return Some(d.join(n));
        }
    }
    None
}

/// An opened library and where it came from.
pub struct Loaded {
    pub lib: libloading::Library,
    /// The path opened, or the soname the dynamic loader resolved.
    pub path: String,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("path", &self.path).finish()
    }
}

/// Why a library could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("{what} not found ({soname} in LD_LIBRARY_PATH, the CUDA and system library directories, and the dynamic loader's cache)")]
    NotFound { what: &'static str, soname: String },
    #[error("failed to open {what} at {path}: {message}")]
    Open {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("{what} at {path} lacks the symbol {symbol}")]
    Symbol {
        what: &'static str,
        path: String,
        symbol: String,
    },
}

/// The soname a message names for `spec` (`libnccl.so.2`).
pub fn soname(spec: &LibSpec) -> String {
    match spec.majors.first() {
        Some(m) => format!("{}.{m}", spec.stem),
        None => spec.stem.to_string(),
    }
}

/// Opens `spec`: the file the directory search finds, else whatever the dynamic loader resolves
/// for its sonames (its cache covers directories this search does not know).
pub fn open(spec: &LibSpec) -> Result<Loaded, LoadError> {
    if let Some(path) = find_in_dirs(spec, &search_dirs()) {
        // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's libraries,
        // which tagbench exists to measure.
        return match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => Ok(Loaded {
                lib,
                path: path.display().to_string(),
            }),
            Err(e) => Err(LoadError::Open {
                what: spec.what,
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        };
    }
    let mut names: Vec<String> = spec.majors.iter().map(|m| format!("{}.{m}", spec.stem)).collect();
    names.push(spec.stem.to_string());
    for name in names {
        // SAFETY: as above.
        if let Ok(lib) = unsafe { libloading::Library::new(&name) } {
            return Ok(Loaded { lib, path: name });
        }
    }
    Err(LoadError::NotFound {
        what: spec.what,
        soname: soname(spec),
    })
}

/// The major version a library file carries in its name (`libcublas.so.13.0.2` → 13).
pub fn major_of(path: &str, spec: &LibSpec) -> Option<u32> {
    let name = Path::new(path).file_name()?.to_str()?;
    version_suffix(spec.stem, name)?.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn soname_preferred_over_versioned_and_dev() {
        let n = names(&["libnccl.so", "libnccl.so.2", "libnccl.so.2.21.5"]);
        assert_eq!(best_name(&LIBNCCL, &n).as_deref(), Some("libnccl.so.2"));
    }

    #[test]
    fn only_versioned_name_is_found() {
        let n = names(&["libnccl.so.2.19.3", "libnccl.so.2.21.5", "libnccl-net.so"]);
        assert_eq!(best_name(&LIBNCCL, &n).as_deref(), Some("libnccl.so.2.21.5"));
    }

    #[test]
    fn versions_compare_numerically() {
        let n = names(&["libnccl.so.2.9.9", "libnccl.so.2.10.1"]);
        assert_eq!(best_name(&LIBNCCL, &n).as_deref(), Some("libnccl.so.2.10.1"));
    }

    #[test]
    fn cuda13_preferred_then_12() {
        let n = names(&["libcublas.so.12", "libcublas.so.13"]);
        assert_eq!(best_name(&LIBCUBLAS, &n).as_deref(), Some("libcublas.so.13"));
        let n = names(&["libcublas.so.12.4.5.8"]);
        assert_eq!(
            best_name(&LIBCUBLAS, &n).as_deref(),
            Some("libcublas.so.12.4.5.8")
        );
    }

    #[test]
    fn cublaslt_is_not_cublas() {
        // `libcublasLt.so.12` starts with `libcublas` but not with `libcublas.so`.
        let n = names(&["libcublasLt.so.12"]);
        assert_eq!(best_name(&LIBCUBLAS, &n), None);
        assert_eq!(best_name(&LIBCUBLASLT, &n).as_deref(), Some("libcublasLt.so.12"));
    }

    #[test]
    fn dev_name_is_last_resort_and_wrong_majors_ignored() {
        assert_eq!(
            best_name(&LIBNCCL, &names(&["libnccl.so"])).as_deref(),
            Some("libnccl.so")
        );
        assert_eq!(
            best_name(&LIBNCCL, &names(&["libnccl.so.3.0.0", "libnccl.so.x"])),
            None
        );
    }

    #[test]
    fn version_suffix_parses() {
        assert_eq!(
            version_suffix("libnccl.so", "libnccl.so.2.21.5"),
            Some(vec![2, 21, 5])
        );
        assert_eq!(version_suffix("libnccl.so", "libnccl.so"), Some(vec![]));
        assert_eq!(version_suffix("libnccl.so", "libnccl.so.2a"), None);
        assert_eq!(version_suffix("libnccl.so", "libnccl-net.so"), None);
    }

    #[test]
    fn search_walks_dirs_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("libnccl.so.2.21.5"), b"").unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(
            find_in_dirs(&LIBNCCL, &dirs),
            Some(b.path().join("libnccl.so.2.21.5"))
        );
        std::fs::write(a.path().join("libnccl.so.2"), b"").unwrap();
        assert_eq!(find_in_dirs(&LIBNCCL, &dirs), Some(a.path().join("libnccl.so.2")));
    }

    #[test]
    fn ld_library_path_is_searched_first() {
        let dirs = {
            // Only read the variable; the test binary's own value is whatever the harness set.
            let v = std::env::var_os("LD_LIBRARY_PATH");
            let first: Option<PathBuf> = v
                .as_ref()
                .and_then(|v| std::env::split_paths(v).find(|p| !p.as_os_str().is_empty()));
            (first, search_dirs())
        };
        if let Some(first) = dirs.0 {
            assert_eq!(dirs.1.first(), Some(&first));
        }
        assert!(dirs.1.contains(&PathBuf::from("/usr/local/cuda/lib64")));
    }

    #[test]
    fn missing_library_is_a_typed_error() {
        let spec = LibSpec {
            what: "nothing",
            stem: "libtagbench-does-not-exist.so",
            majors: &[7],
        };
        let e = open(&spec).unwrap_err();
        assert_eq!(
            e,
            LoadError::NotFound {
                what: "nothing",
                soname: "libtagbench-does-not-exist.so.7".into()
            }
        );
        assert!(e.to_string().contains("libtagbench-does-not-exist.so.7"));
    }

    #[test]
    fn major_from_path() {
        assert_eq!(major_of("/x/libcublas.so.13.0.2", &LIBCUBLAS), Some(13));
        assert_eq!(major_of("libcublas.so.12", &LIBCUBLAS), Some(12));
        assert_eq!(major_of("libcublas.so", &LIBCUBLAS), None);
    }

    #[test]
    fn python_environments_on_path_are_searched() {
        let path = std::env::join_paths(["/opt/torch/.venv/bin", "/usr/bin", "/sbin", "relative"]).unwrap();
        let dirs = env_prefix_lib_dirs(Some("/venv".into()), None, Some(path));
        assert_eq!(
            dirs,
            ["/venv/lib", "/opt/torch/.venv/lib", "/usr/lib"]
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );
        assert!(env_prefix_lib_dirs(Some("".into()), None, None).is_empty());
    }

    #[test]
    fn library_major_follows_the_driver() {
        assert_eq!(toolkit_majors(13000), &[13, 12, 11]);
        assert_eq!(toolkit_majors(13020), &[13, 12, 11]);
        // A 12.8 driver never gets a CUDA 13 library, even where the image prefers it.
        assert_eq!(toolkit_majors(12080), &[12, 11]);
        assert_eq!(toolkit_majors(12000), &[12, 11]);
        assert_eq!(toolkit_majors(11080), &[11]);
        let spec = for_driver(&LIBCUBLAS, 12080);
        let n = names(&["libcublas.so.13", "libcublas.so.12"]);
        assert_eq!(best_name(&spec, &n).as_deref(), Some("libcublas.so.12"));
        assert_eq!(
            best_name(&for_driver(&LIBCUBLAS, 13000), &n).as_deref(),
            Some("libcublas.so.13")
        );
        // Only a 13 in the image on a 12 driver: nothing (a typed "not found", then a skip).
        assert_eq!(best_name(&spec, &names(&["libcublas.so.13"])), None);
        // NCCL and the driver are not narrowed.
        assert_eq!(for_driver(&LIBNCCL, 12080), LIBNCCL);
        assert_eq!(for_driver(&LIBCUDA, 11000), LIBCUDA);
        for s in [LIBCUBLAS, LIBCUBLASLT, LIBNVRTC, LIBCUDART] {
            assert_eq!(for_driver(&s, 12080).majors, &[12, 11], "{}", s.what);
        }
    }
}
