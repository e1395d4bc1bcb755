//! Gives the build an identity (`TAGBENCH_BUILD_ID`: a hash of the sources), shown by
//! `tagbench --version`, so that the docker executor can tell that the glibc-2.17 worker beside
//! the binary (scripts/build-worker.sh) was linked from the same sources, not an older build.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let mut paths = Vec::new();
    files(Path::new("src"), &mut paths);
    paths.extend(["Cargo.toml", "Cargo.lock", "build.rs"].map(PathBuf::from));
    paths.sort();
    let mut h = DefaultHasher::new();
    for p in &paths {
        p.hash(&mut h);
        std::fs::read(p).unwrap_or_default().hash(&mut h);
    }
    println!("cargo:rustc-env=TAGBENCH_BUILD_ID={:016x}", h.finish());
    for p in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
}
