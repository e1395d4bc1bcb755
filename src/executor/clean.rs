//! `tagbench clean`: removes the containers that interrupted runs left behind, and keeps those
//! of a run that a live `tagbench run` still writes (its run directory's lock is held: see
//! `results::lock`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::docker::{connect, list_labelled, remove_listed, Labelled};
use crate::results::{Liveness, RunDir};

/// Removes the containers labelled with `run` (every tagbench container without one), except
/// those of a live run under `results_dir`; says which it removed and which it kept.
pub fn cmd_clean(run: Option<&str>, results_dir: &Path) -> Result<crate::outcome::Outcome> {
    let (removed, kept) = super::docker::block_on(async {
        let docker = connect().await?;
        let list = list_labelled(&docker, run).await?;
        let (live, gone) = split_live(list, results_dir)?;
        Ok::<_, anyhow::Error>((remove_listed(&docker, &gone).await?, live))
    })?;
    for r in &removed {
        crate::outln!("{r}")?;
    }
    for line in kept_lines(&kept) {
        crate::errln!("{line}");
    }
    match run {
        Some(r) => crate::errln!("{} containers of run {r} removed", removed.len()),
        None => crate::errln!("{} tagbench containers removed", removed.len()),
    }
    Ok(crate::outcome::Outcome::Complete)
}

/// Containers of a live run (by run id, with what its lock file says), and the others.
type Live = BTreeMap<String, (String, Vec<Labelled>)>;

/// Splits containers into those of runs a live process writes (their run directory under
/// `results_dir` is locked) and the rest.
fn split_live(list: Vec<Labelled>, results_dir: &Path) -> Result<(Live, Vec<Labelled>)> {
    let mut live: Live = BTreeMap::new();
    let mut gone = Vec::new();
    for c in list {
        // A label that is not a run id (hand-made) cannot name a directory: never live.
        let state = if crate::results::check_run_id(&c.run).is_ok() {
            RunDir::new(results_dir.join(&c.run)).liveness()?
        } else {
            Liveness::NotLive
        };
        match state {
            Liveness::Live(holder) => {
                let holder = match holder.pid {
                    Some(pid) => format!("pid {pid}"),
                    None => holder.to_string(),
                };
                live.entry(c.run.clone())
                    .or_insert_with(|| (holder, Vec::new()))
                    .1
                    .push(c);
            }
            Liveness::NotLive => gone.push(c),
        }
    }
    Ok((live, gone))
}

/// `kept 2 containers of live run X (pid N)`, one line per live run.
fn kept_lines(live: &Live) -> Vec<String> {
    live.iter()
        .map(|(run, (holder, list))| {
            format!(
                "kept {} container{} of live run {run} ({holder}); stop that run first to remove {}",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                if list.len() == 1 { "it" } else { "them" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(run: &str) -> Labelled {
        Labelled {
            id: format!("{run}0123456789abcdef"),
            name: format!("tagbench-{run}"),
            image: "img".into(),
            run: run.into(),
            target: "img".into(),
        }
    }

    #[test]
    fn containers_of_a_locked_run_are_kept_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let live = RunDir::new(dir.path().join("live"));
        std::fs::create_dir_all(&live.root).unwrap();
        std::fs::create_dir_all(dir.path().join("dead")).unwrap();
        let _lock = live.lock().unwrap();
        let list = vec![
            container("live"),
            container("dead"),
            container("live"),
            container("elsewhere"),
            container("../x"),
        ];
        let (kept, gone) = split_live(list, dir.path()).unwrap();
        let gone: Vec<&str> = gone.iter().map(|c| c.run.as_str()).collect();
        assert_eq!(gone, ["dead", "elsewhere", "../x"]);
        assert_eq!(
            kept_lines(&kept),
            [format!(
                "kept 2 containers of live run live (pid {}); stop that run first to remove them",
                std::process::id()
            )]
        );
    }
}
