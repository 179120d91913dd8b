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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::{events::EventOptions, translate_ids};

    fn map(devices: &str) -> TagMap {
        let text = format!("[agent]\nsite = \"s\"\nid = \"a\"\n{devices}");
        match crate::config::parse_str("t.toml", &text) {
            Ok((m, _)) => m,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn tcp(name: &str, tags: &[(&str, u16)]) -> String {
        let mut s = format!(
            "[[device]]\nname = \"{name}\"\nprotocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"\nport = 1\npoll_interval = \"1s\"\n"
        );
        for (t, a) in tags {
            s += &format!("  [[device.tag]]\n  name = \"{t}\"\n  register = \"holding\"\n  address = {a}\n  type = \"u16\"\n");
        }
        s
    }

    fn rtu(name: &str, unit: u8, tag: &str) -> String {
        format!(
            "[[device]]\nname = \"{name}\"\nprotocol = \"modbus-rtu\"\nserial = \"/dev/ttyUSB9\"\nbaud = 19200\nunit = {unit}\npoll_interval = \"1s\"\n  [[device.tag]]\n  name = \"{tag}\"\n  register = \"holding\"\n  address = 0\n  type = \"u16\"\n"
        )
    }

    #[tokio::test]
    async fn a_reload_plan_keeps_identical_units_and_restarts_a_shared_bus_as_one() {
        let old = map(&(tcp("a", &[("a/x", 0)])
            + &tcp("b", &[("b/x", 0)])
            + &tcp("gone", &[("g/x", 0)])
            + &rtu("r1", 1, "r1/x")
            + &rtu("r2", 2, "r2/x")));
        // b gets a tag, r2 changes (so the whole bus restarts), c is new, "gone" is removed; a is
        // identical although every tag id after it moved.
        let new = map(&(tcp("c", &[("c/x", 0)])
            + &tcp("a", &[("a/x", 0)])
            + &tcp("b", &[("b/x", 0), ("b/y", 1)])
            + &rtu("r1", 1, "r1/x")
            + &rtu("r2", 2, "r2/renamed")));
        let (tx, _rx) = mpsc::channel(16);
        let acq = Acquisition::start_tagged(&old, tx, EventOptions::default());
        let plan = acq.plan_reload(&new);
        assert_eq!(plan.keep, vec!["device a"]);
        assert_eq!(plan.restart, vec!["bus /dev/ttyUSB9", "device b"]);
        assert_eq!(plan.add, vec!["device c"]);
        assert_eq!(plan.remove, vec!["device gone"]);
        acq.stop().await;
    }

    #[test]
    fn tag_ids_translate_by_device_and_tag_name() {
        let old = map(&(tcp("a", &[("x", 0), ("y", 1)]) + &tcp("b", &[("z", 0)])));
        let new = map(&(tcp("b", &[("z", 0)]) + &tcp("a", &[("y", 1)])));
        // old: a/x=0, a/y=1, b/z=2; new: b/z=0, a/y=1.
        assert_eq!(translate_ids(&old, &new), vec![None, Some(1), Some(0)]);
    }
}
