//! `tagbench clean`: removes the containers that interrupted runs left behind.

use anyhow::{Context, Result};

use super::docker::{connect, remove_labelled};

/// Removes the containers labelled with `run` (every tagbench container without one); says which.
pub fn cmd_clean(run: Option<&str>) -> Result<crate::outcome::Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let removed = rt.block_on(async {
        let docker = connect().await?;
        remove_labelled(&docker, run).await
    })?;
    for r in &removed {
        crate::outln!("{r}")?;
    }
    match run {
        Some(r) => crate::errln!("{} containers of run {r} removed", removed.len()),
        None => crate::errln!("{} tagbench containers removed", removed.len()),
    }
    Ok(crate::outcome::Outcome::Complete)
}
