//! What differs between compared targets: image digest and date, probed versions (torch, CUDA,
//! cuDNN, cuBLAS, NCCL, driver, python, ...) and baked-in settings, old → new, from run.json. One
//! pure function that the report and `compare`'s text output both call.

use std::collections::BTreeMap;

use super::matching::column_value;
use super::{CompareReport, LoadedRun};
use crate::results::TargetMeta;

/// What kind of component a change is about, in the order "what differs" lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// The image's identity: name, ID, digests, creation date, labels.
    Image,
    /// The image config's environment variables.
    Environment,
    /// Python distributions importable in the image (the torch engine's worker).
    Python,
    /// Shared objects the worker process loaded.
    Libraries,
    /// What the worker's probe reported: driver, device, framework versions and settings.
    Driver,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::Image => "image",
            Group::Environment => "environment",
            Group::Python => "Python packages",
            Group::Libraries => "libraries",
            Group::Driver => "driver, device and versions",
        }
    }
}

/// At most this many changes of one group are printed in text; run.json holds them all.
pub const TEXT_PER_GROUP: usize = 40;

/// One setting or version that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub group: Group,
    pub key: String,
    /// Empty when the baseline did not report the key.
    pub old: String,
    /// Empty when the candidate did not report the key.
    pub new: String,
}

/// The differences between the baseline and one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetChanges {
    pub baseline: String,
    pub candidate: String,
    pub changes: Vec<Change>,
}

/// Keys that differ from one process or one minute to the next without saying anything about the
/// image: host names and timings of the tool itself. They must not read as differences.
pub fn is_noise_key(key: &str) -> bool {
    const EXACT: [&str; 5] = ["hostname", "host", "pid", "started_at", "uptime_s"];
    const SUFFIX: [&str; 5] = ["_ms", "_us", "_ns", "_seconds", "_timestamp"];
    let k = key.to_ascii_lowercase();
    let last = k.rsplit('.').next().unwrap_or(&k);
    EXACT.contains(&last) || SUFFIX.iter().any(|s| last.ends_with(s))
}

/// A target's comparable settings by group: the image's identity, its environment, the
/// components its worker loaded and everything its probe reported.
fn settings(t: &TargetMeta) -> BTreeMap<(Group, String), String> {
    let mut m: BTreeMap<(Group, String), String> = t
        .env
        .iter()
        .filter(|(k, _)| !is_noise_key(k))
        .map(|(k, v)| ((Group::Driver, k.clone()), v.clone()))
        .collect();
    for (k, v) in [
        ("image", &t.image),
        ("image_id", &t.image_id),
        ("image_created", &t.image_created),
        ("engine", &t.engine),
        ("executor", &t.executor),
    ] {
        if !v.is_empty() {
            m.insert((Group::Image, k.to_string()), v.clone());
        }
    }
    if !t.device.is_empty() {
        m.insert((Group::Driver, "device".into()), t.device.clone());
    }
    if !t.repo_digests.is_empty() {
        m.insert((Group::Image, "repo_digests".into()), t.repo_digests.join(" "));
    }
    for (k, v) in &t.image_labels {
        m.insert((Group::Image, format!("label {k}")), v.clone());
    }
    for (k, v) in &t.image_env {
        m.insert((Group::Environment, k.clone()), v.clone());
    }
    if let Some(c) = &t.components {
        for d in &c.python {
            m.insert((Group::Python, d.name.to_ascii_lowercase()), d.version.clone());
        }
        for l in &c.libraries {
            let mut key = l.soname.clone();
            if m.contains_key(&(Group::Libraries, key.clone())) {
                key = format!("{} ({})", l.soname, l.path);
            }
            m.insert((Group::Libraries, key), library_value(l));
        }
    }
    m
}

/// How a library is told apart: its version and build-id (its size when it has no build-id).
fn library_value(l: &crate::components::Library) -> String {
    let mut parts = Vec::new();
    if !l.version.is_empty() {
        parts.push(l.version.clone());
    }
    if l.build_id.is_empty() {
        parts.push(format!("{} bytes", l.size));
    } else {
        parts.push(format!("build-id {}", &l.build_id[..l.build_id.len().min(12)]));
    }
    parts.join(" ")
}

/// The keys whose values differ between two targets, by group, then key (image name first).
pub fn diff_targets(old: &TargetMeta, new: &TargetMeta) -> Vec<Change> {
    let (a, b) = (settings(old), settings(new));
    let mut keys: Vec<&(Group, String)> = a.keys().chain(b.keys()).collect();
    keys.sort_by_key(|(g, k)| (*g, !k.starts_with("image") && k != "repo_digests", k.as_str()));
    keys.dedup();
    keys.into_iter()
        .filter_map(|gk| {
            let (o, n) = (
                a.get(gk).cloned().unwrap_or_default(),
                b.get(gk).cloned().unwrap_or_default(),
            );
            (o != n).then(|| Change {
                group: gk.0,
                key: gk.1.clone(),
                old: o,
                new: n,
            })
        })
        .collect()
}

/// The run.json target that produced the rows with `column` = `value`.
fn target_of<'a>(runs: &'a [LoadedRun], column: &str, value: &str) -> Option<&'a TargetMeta> {
    runs.iter().find_map(|r| {
        let meta = r.meta.as_ref()?;
        let m = r
            .measurements
            .iter()
            .find(|m| column_value(&m.row, column).as_deref() == Some(value))?;
        meta.targets.iter().find(|t| t.name == m.row.target)
    })
}

/// What differs between the baseline and each candidate of a comparison. Targets without
/// run.json metadata are left out (nothing to tell).
pub fn changes_of(runs: &[LoadedRun], report: &CompareReport) -> Vec<TargetChanges> {
    let candidates = report.candidate_labels();
    let mut out = Vec::new();
    if let Some(column) = report.mode.strip_prefix("along ") {
        let Some(base) = target_of(runs, column, &report.baseline) else {
            return out;
        };
        for cand in candidates {
            if let Some(t) = target_of(runs, column, cand) {
                out.push(TargetChanges {
                    baseline: report.baseline.clone(),
                    candidate: cand.to_string(),
                    changes: diff_targets(base, t),
                });
            }
        }
    } else {
        // Two runs: pair their targets by name.
        let meta_of = |name: &str| {
            runs.iter()
                .find(|r| r.name() == name)
                .and_then(|r| r.meta.as_ref())
        };
        let Some(bm) = meta_of(&report.baseline) else {
            return out;
        };
        for cand in candidates {
            let Some(cm) = meta_of(cand) else { continue };
            for bt in &bm.targets {
                if let Some(ct) = cm.targets.iter().find(|t| t.name == bt.name) {
                    let label = |run: &str| {
                        if bm.targets.len() > 1 {
                            format!("{run} {}", bt.name)
                        } else {
                            run.to_string()
                        }
                    };
                    out.push(TargetChanges {
                        baseline: label(&report.baseline),
                        candidate: label(cand),
                        changes: diff_targets(bt, ct),
                    });
                }
            }
        }
    }
    out
}

/// The changes as plain text lines (for `compare`'s table output); empty when there is no
/// metadata to compare.
pub fn text(all: &[TargetChanges]) -> String {
    let mut o = String::new();
    for tc in all {
        if tc.changes.is_empty() {
            o.push_str(&format!(
                "changes {} -> {}: none in run.json (same image and versions)\n",
                tc.baseline, tc.candidate
            ));
            continue;
        }
        o.push_str(&format!("changes {} -> {}:\n", tc.baseline, tc.candidate));
        for (group, changes) in by_group(&tc.changes) {
            o.push_str(&format!("  {}:\n", group.title()));
            let shown = &changes[..changes.len().min(TEXT_PER_GROUP)];
            let w = shown.iter().map(|c| c.key.chars().count()).max().unwrap_or(0);
            for c in shown {
                o.push_str(&format!(
                    "    {:w$}  {} -> {}\n",
                    c.key,
                    or_dash(&c.old),
                    or_dash(&c.new)
                ));
            }
            if changes.len() > shown.len() {
                o.push_str(&format!(
                    "    ... and {} more (run.json lists them all)\n",
                    changes.len() - shown.len()
                ));
            }
        }
    }
    o
}

/// The changes in runs of one group each, in group order.
pub fn by_group(changes: &[Change]) -> Vec<(Group, Vec<&Change>)> {
    let mut out: Vec<(Group, Vec<&Change>)> = Vec::new();
    for c in changes {
        match out.last_mut() {
            Some((g, v)) if *g == c.group => v.push(c),
            _ => out.push((c.group, vec![c])),
        }
    }
    out
}

/// `(none)` for a value one side did not report.
pub fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, id: &str, env: &[(&str, &str)]) -> TargetMeta {
        TargetMeta {
            name: name.into(),
            executor: "docker".into(),
            engine: "torch".into(),
            device: "cpu".into(),
            image: name.into(),
            image_id: id.into(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_differences_and_no_noise() {
        let a = target(
            "a:1",
            "sha256:aa",
            &[
                ("torch_threads", "2"),
                ("torch_version", "2.9.1"),
                ("python_version", "3.11.2"),
                ("hostname", "x1"),
                ("docker.check_container_ms", "12"),
                ("torch_cudnn", "91002"),
            ],
        );
        let b = target(
            "b:1",
            "sha256:bb",
            &[
                ("torch_threads", "1"),
                ("torch_version", "2.10.0"),
                ("python_version", "3.11.2"),
                ("hostname", "x2"),
                ("docker.check_container_ms", "40"),
                ("torch_nccl", "2.27.3"),
            ],
        );
        let ch = diff_targets(&a, &b);
        let keys: Vec<(Group, &str)> = ch.iter().map(|c| (c.group, c.key.as_str())).collect();
        assert_eq!(
            keys,
            [
                (Group::Image, "image"),
                (Group::Image, "image_id"),
                (Group::Driver, "torch_cudnn"),
                (Group::Driver, "torch_nccl"),
                (Group::Driver, "torch_threads"),
                (Group::Driver, "torch_version")
            ]
        );
        let t = ch.iter().find(|c| c.key == "torch_threads").unwrap();
        assert_eq!((t.old.as_str(), t.new.as_str()), ("2", "1"));
        let nccl = ch.iter().find(|c| c.key == "torch_nccl").unwrap();
        assert_eq!((nccl.old.as_str(), nccl.new.as_str()), ("", "2.27.3"));
        assert!(diff_targets(&a, &a).is_empty());
    }

    #[test]
    fn noise_keys() {
        for k in ["hostname", "docker.check_container_ms", "probe_us", "HOSTNAME"] {
            assert!(is_noise_key(k), "{k}");
        }
        for k in ["torch_version", "driver", "cuda", "memory_mib", "cpu_cores"] {
            assert!(!is_noise_key(k), "{k}");
        }
    }

    #[test]
    fn text_lists_old_and_new() {
        let all = vec![TargetChanges {
            baseline: "a".into(),
            candidate: "b".into(),
            changes: vec![Change {
                group: Group::Driver,
                key: "torch_threads".into(),
                old: "2".into(),
                new: "1".into(),
            }],
        }];
        assert_eq!(
            text(&all),
            "changes a -> b:\n  driver, device and versions:\n    torch_threads  2 -> 1\n"
        );
    }

    /// The image's environment, the Python distributions and the loaded libraries each get
    /// their group; a library is told apart by version and build-id, not by where it lies.
    #[test]
    fn components_are_grouped() {
        use crate::components::{Components, Distribution, Library};
        let lib = |path: &str, soname: &str, id: &str| Library {
            path: path.into(),
            soname: soname.into(),
            size: 10,
            build_id: id.into(),
            ..Default::default()
        };
        let dist = |name: &str, version: &str| Distribution {
            name: name.into(),
            version: version.into(),
            imported: true,
            ..Default::default()
        };
        let mut a = target("a", "sha256:aa", &[]);
        a.image_env = [("PATH", "/usr/bin"), ("LANG", "C.UTF-8")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        a.components = Some(Components::new(
            vec![
                lib(
                    "/a/site-packages/torch/lib/libtorch_cpu.so",
                    "libtorch_cpu.so",
                    "aaaaaaaaaaaaaaaa",
                ),
                lib("/usr/lib/libgomp.so.1", "libgomp.so.1", "0101"),
            ],
            vec![dist("torch", "2.9.1"), dist("numpy", "2.1.0")],
        ));
        let mut b = a.clone();
        b.image = "b".into();
        b.image_env.insert("OMP_NUM_THREADS".into(), "1".into());
        b.components = Some(Components::new(
            vec![
                lib(
                    "/b/other/torch/lib/libtorch_cpu.so",
                    "libtorch_cpu.so",
                    "bbbbbbbbbbbbbbbb",
                ),
                lib("/usr/lib64/libgomp.so.1", "libgomp.so.1", "0101"),
            ],
            vec![dist("torch", "2.10.0"), dist("numpy", "2.1.0")],
        ));
        let ch = diff_targets(&a, &b);
        let got: Vec<(Group, &str, &str, &str)> = ch
            .iter()
            .map(|c| (c.group, c.key.as_str(), c.old.as_str(), c.new.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Group::Image, "image", "a", "b"),
                (Group::Environment, "OMP_NUM_THREADS", "", "1"),
                (Group::Python, "torch", "2.9.1", "2.10.0"),
                (
                    Group::Libraries,
                    "libtorch_cpu.so",
                    "build-id aaaaaaaaaaaa",
                    "build-id bbbbbbbbbbbb"
                ),
            ]
        );
        let t = text(&[TargetChanges {
            baseline: "a".into(),
            candidate: "b".into(),
            changes: ch,
        }]);
        assert!(
            t.contains("  environment:\n    OMP_NUM_THREADS  (none) -> 1\n"),
            "{t}"
        );
    }
}
