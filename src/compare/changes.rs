//! What differs between compared targets: image digest and date, probed versions (torch, CUDA,
//! cuDNN, cuBLAS, NCCL, driver, python, ...) and baked-in settings, old → new, from run.json. One
//! pure function that the report and `compare`'s text output both call.

use std::collections::BTreeMap;

use super::matching::column_value;
use super::{CompareReport, LoadedRun};
use crate::results::TargetMeta;

/// One setting or version that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
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

/// A target's comparable settings: the image's identity and everything its probe reported.
fn settings(t: &TargetMeta) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = t
        .env
        .iter()
        .filter(|(k, _)| !is_noise_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        ("image", &t.image),
        ("image_id", &t.image_id),
        ("image_created", &t.image_created),
        ("engine", &t.engine),
        ("executor", &t.executor),
        ("device", &t.device),
    ] {
        if !v.is_empty() {
            m.insert(k.to_string(), v.clone());
        }
    }
    if !t.repo_digests.is_empty() {
        m.insert("repo_digests".into(), t.repo_digests.join(" "));
    }
    m
}

/// The keys whose values differ between two targets, in key order (image identity first).
pub fn diff_targets(old: &TargetMeta, new: &TargetMeta) -> Vec<Change> {
    let (a, b) = (settings(old), settings(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort_by_key(|k| (!k.starts_with("image") && *k != "repo_digests", k.as_str()));
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (o, n) = (
                a.get(k).cloned().unwrap_or_default(),
                b.get(k).cloned().unwrap_or_default(),
            );
            (o != n).then(|| Change {
                key: k.clone(),
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
        let w = tc
            .changes
            .iter()
            .map(|c| c.key.chars().count())
            .max()
            .unwrap_or(0);
        for c in &tc.changes {
            o.push_str(&format!(
                "  {:w$}  {} -> {}\n",
                c.key,
                or_dash(&c.old),
                or_dash(&c.new)
            ));
        }
    }
    o
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
        let keys: Vec<&str> = ch.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "image",
                "image_id",
                "torch_cudnn",
                "torch_nccl",
                "torch_threads",
                "torch_version"
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
                key: "torch_threads".into(),
                old: "2".into(),
                new: "1".into(),
            }],
        }];
        assert_eq!(text(&all), "changes a -> b:\n  torch_threads  2 -> 1\n");
    }
}
