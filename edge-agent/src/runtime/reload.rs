//! Live reload of the tag map (SIGHUP, `systemctl reload`).

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::pipeline::Pipeline;
use crate::buffer::{Buffer, BufferError};
use crate::config::{ConfigError, Severity, TagMap};
use crate::drivers::{Acquisition, Tagged};

/// Live reload (SIGHUP). The new tag map is loaded and validated first; if it has errors, or
/// changes what needs a restart (`[agent]`, `[buffer]`, `[uplink]`), every problem is logged and
/// the old map keeps running (`Ok(false)`). Otherwise (`Ok(true)`): units (a device, or an RTU
/// bus) whose devices and tags are unchanged keep polling; changed and removed ones are stopped
/// — each finishes its current request and its readings are committed under the old map — then
/// the buffer switches to the new map's hash, the uplink publishes a new birth, and changed and
/// added units start. Batches already buffered keep the hash they were written under, so the
/// cloud resolves them with the catalog of the map they came from. Nothing buffered is touched.
pub async fn reload(
    path: &Path,
    pipe: &mut Pipeline,
    acq: &mut Acquisition,
    rx: &mut mpsc::Receiver<Tagged>,
    buffer: &Buffer,
    map_tx: &watch::Sender<Arc<TagMap>>,
) -> Result<bool, BufferError> {
    tracing::info!(file = %path.display(), "SIGHUP: reloading the tag map");
    let new = match crate::config::load(path) {
        Ok((m, warnings)) => {
            for d in &warnings {
                tracing::warn!(file = %d.file, line = d.line, column = d.column, subject = %d.subject, "{d}");
            }
            m
        }
        Err(ConfigError::Invalid(diags)) => {
            for d in &diags {
                match d.severity {
                    Severity::Error => {
                        tracing::error!(file = %d.file, line = d.line, column = d.column, subject = %d.subject, "{d}")
                    }
                    Severity::Warning => {
                        tracing::warn!(file = %d.file, line = d.line, column = d.column, subject = %d.subject, "{d}")
                    }
                }
            }
            let errors = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            tracing::error!(errors, config_hash = %pipe.map.hash, "reload refused: the new tag map has errors; the running one is kept");
            return Ok(false);
        }
        Err(e) => {
            tracing::error!(error = %e, config_hash = %pipe.map.hash, "reload refused; the running tag map is kept");
            return Ok(false);
        }
    };
    let old = pipe.map.clone();
    if new.hash == old.hash {
        tracing::info!(config_hash = %old.hash, "tag map unchanged; nothing to reload");
        return Ok(true);
    }
    let mut needs_restart = Vec::new();
    if format!("{:?}", new.agent) != format!("{:?}", old.agent) {
        needs_restart.push("[agent]");
    }
    if new.buffer != old.buffer {
        needs_restart.push("[buffer]");
    }
    if new.uplink != old.uplink {
        needs_restart.push("[uplink]");
    }
    if !needs_restart.is_empty() {
        tracing::error!(sections = %needs_restart.join(", "), config_hash = %old.hash,
            "reload refused: these sections changed and need a restart (systemctl restart edge-agent); the running tag map is kept");
        return Ok(false);
    }

    let plan = acq.plan_reload(&new);
    tracing::info!(keep = ?plan.keep, restart = ?plan.restart, add = ?plan.add, remove = ?plan.remove, "reload plan");
    // Stop the changed units while still taking what every unit sends (they finish their
    // current request; the unchanged ones keep polling).
    let stopping = acq.stop_for_reload(&plan);
    let join = stopping.join();
    tokio::pin!(join);
    loop {
        tokio::select! {
            _ = &mut join => break,
            o = rx.recv() => match o {
                Some(o) => pipe.hand_over(o, buffer).await?,
                None => break,
            },
        }
    }
    // Everything the stopped units sent is queued now: take it under the old map.
    for _ in 0..rx.len() {
        match rx.try_recv() {
            Ok(o) => pipe.hand_over(o, buffer).await?,
            Err(_) => break,
        }
    }
    let new = Arc::new(new);
    // The uplink announces the new map (retained birth) before batches written under it.
    let _ = map_tx.send(new.clone());
    buffer.reconfigure(&new).await?;
    acq.start_reloaded(&old, &new, &plan);
    pipe.switch(new.clone(), acq.generation());
    let live = acq.live_generations();
    pipe.translate.retain(|g, _| live.contains(g));
    tracing::info!(
        config_hash = %new.hash, previous_hash = %old.hash, devices = new.devices.len(), tags = new.tags.len(),
        kept = plan.keep.len(), restarted = plan.restart.len(), added = plan.add.len(), removed = plan.remove.len(),
        "tag map reloaded"
    );
    Ok(true)
}
