//! GPU discovery on this host and the `gpus = "each"` expansion it feeds (one target per GPU).

use anyhow::{anyhow, bail, Result};

use crate::suite::{GpuNamed, GpuSelection, TargetSpec};

/// One column of `nvidia-smi --query-gpu`, one line per GPU, without header or units.
fn query_gpus(field: &str) -> Result<String> {
    let out = std::process::Command::new("nvidia-smi")
        .arg(format!("--query-gpu={field}"))
        .arg("--format=csv,noheader,nounits")
        .output()
        .map_err(|e| anyhow!("nvidia-smi could not run ({e})"))?;
    if !out.status.success() {
        bail!(
            "nvidia-smi failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number of NVIDIA GPUs on this host, from `nvidia-smi`.
pub fn host_gpu_count() -> Result<usize> {
    let text = query_gpus("index").map_err(|e| anyhow!("failed to count the GPUs for `--gpus each`: {e}"))?;
    let n = text.lines().filter(|l| !l.trim().is_empty()).count();
    if n == 0 {
        bail!("`--gpus each` found no GPU on this host (nvidia-smi lists none)");
    }
    Ok(n)
}

/// The memory of the smallest NVIDIA GPU on this host in bytes, from `nvidia-smi` (the memory
/// plan judges whether a case fits by it).
pub fn host_gpu_memory() -> Result<u64> {
    smallest_mib(&query_gpus("memory.total")?)
        .map(|mib| mib << 20)
        .ok_or_else(|| anyhow!("nvidia-smi lists no GPU memory"))
}

/// The smallest of nvidia-smi's per-GPU `memory.total` lines (MiB).
fn smallest_mib(text: &str) -> Option<u64> {
    text.lines().filter_map(|l| l.trim().parse::<u64>().ok()).min()
}

/// Turns every `gpus = "each"` target into one target per GPU (`<name>@gpu<i>`), so that
/// results are per device.
pub fn expand_gpu_each(
    targets: Vec<TargetSpec>,
    gpu_count: impl FnOnce() -> Result<usize>,
) -> Result<Vec<TargetSpec>> {
    if !targets
        .iter()
        .any(|t| t.gpus == GpuSelection::Named(GpuNamed::Each))
    {
        return Ok(targets);
    }
    let n = gpu_count()?;
    let mut out = Vec::new();
    for t in targets {
        if t.gpus != GpuSelection::Named(GpuNamed::Each) {
            out.push(t);
            continue;
        }
        for i in 0..n {
            out.push(TargetSpec {
                name: Some(format!("{}@gpu{i}", t.display_name())),
                gpus: GpuSelection::List(vec![i]),
                ..t.clone()
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn smallest_gpu_memory_of_nvidia_smi_lines() {
        assert_eq!(super::smallest_mib("81559\n40960\n"), Some(40960));
        assert_eq!(super::smallest_mib(""), None);
    }

    use super::*;

    #[test]
    fn each_expands_per_gpu() {
        let image = TargetSpec {
            image: Some("repo/name:tag".into()),
            ..Default::default()
        };
        let each = TargetSpec {
            gpus: GpuSelection::Named(GpuNamed::Each),
            ..image.clone()
        };
        let out = expand_gpu_each(vec![each, TargetSpec::local()], || Ok(2)).unwrap();
        let names: Vec<String> = out.iter().map(TargetSpec::display_name).collect();
        assert_eq!(names, ["repo/name:tag@gpu0", "repo/name:tag@gpu1", "local"]);
        assert_eq!(out[1].gpus, GpuSelection::List(vec![1]));
        // No `each`: the GPUs are not counted at all.
        let out = expand_gpu_each(vec![image], || bail!("not called")).unwrap();
        assert_eq!(out.len(), 1);
    }
}
