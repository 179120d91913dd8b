//! `edge-agent run`: the whole agent pipeline
//! `drivers → filter → buffer (SQLite) → uplink (MQTT)`, the metrics endpoint, and an ordered
//! shutdown on SIGINT/SIGTERM: drivers stop, their last readings are committed to the buffer,
//! the uplink drains what it can within its deadline, the buffer closes.
//!
//! Under systemd (`Type=notify`, see `systemd/edge-agent.service`): `READY=1` once the tag map is
//! loaded, the buffer is open, every device has had its first poll cycle attempted (or 30 s have
//! passed) and, with an uplink, the first broker connection has been attempted. `WATCHDOG=1` only
//! while the pipeline makes progress (driver outputs arriving, the uplink loop turning).
//! SIGHUP (`systemctl reload`) reloads the tag map live: see [`reload`].

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowsquare_service::{Notifier, Progress};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::CliError;
use crate::buffer::{Buffer, BufferError, GapRow};
use crate::config::{ConfigError, Severity, TagMap};
use crate::drivers::filter::TagFilter;
use crate::drivers::stats::DeviceStats;
use crate::drivers::{Acquisition, Output, Tagged};
use crate::metrics::Telemetry;
use crate::model::{Reading, TagId};
use crate::sink;

/// Longest wait for every device's first poll cycle before telling systemd we are ready.
const READY_AFTER: Duration = Duration::from_secs(30);

/// The stage between the drivers and the buffer: tag ids of older map generations translated,
/// the deadband filter, counting, optional printing.
struct Pipeline {
    map: Arc<TagMap>,
    generation: u64,
    filter: TagFilter,
    /// Units still running from older generations: their tag ids → ids of the current map.
    translate: BTreeMap<u64, Vec<Option<TagId>>>,
    telemetry: Arc<Telemetry>,
    print: bool,
    /// Driver outputs handled (watchdog progress).
    outputs: u64,
}

impl Pipeline {
    fn consume(&mut self, batch: Vec<Reading>) -> Vec<Reading> {
        self.telemetry.polled.fetch_add(batch.len() as u64, Relaxed);
        let (map, filter) = (&self.map, &mut self.filter);
        let kept: Vec<Reading> = batch
            .into_iter()
            .filter_map(|r| {
                map.tags
                    .get(r.tag as usize)
                    .and_then(|t| filter.process(t, r))
            })
            .collect();
        self.telemetry
            .reported
            .fetch_add(kept.len() as u64, Relaxed);
        if self.print && !kept.is_empty() {
            let out: String = kept
                .iter()
                .map(|r| sink::json_line(map, r) + "\n")
                .collect();
            print!("{out}");
        }
        kept
    }

    /// Hand one driver output to the buffer: readings through the deadband filter, events and
    /// their gaps as they are (never filtered, never dropped).
    async fn hand_over(&mut self, t: Tagged, buffer: &Buffer) -> Result<(), BufferError> {
        self.outputs += 1;
        let out = if t.generation == self.generation {
            t.output
        } else {
            let (out, lost) = translate_output(self.translate.get(&t.generation), t.output);
            if let Some(gap) = lost {
                tracing::error!(readings = gap.count, generation = t.generation,
                    "readings of a unit from an older tag map have no tag in the current one; reported as a gap");
                buffer.add_gap(gap).await?;
            }
            out
        };
        match out {
            Output::Readings(b) => {
                let kept = self.consume(b);
                buffer.append(kept).await
            }
            Output::Events { events, gaps } => {
                for e in &events {
                    tracing::info!(event = %e.source, kind = %e.kind, seq = e.seq, "event captured");
                    if self.print {
                        println!("{}", sink::event_line(e));
                    }
                }
                if self.print {
                    for g in &gaps {
                        println!("{}", sink::gap_line(g));
                    }
                }
                // One transaction with the definitions' cursors (see `buffer/store.rs`).
                buffer.append_events_with_gaps(events, gaps).await
            }
        }
    }

    /// Switch to the reloaded map (generation `generation`).
    fn switch(&mut self, new: Arc<TagMap>, generation: u64) {
        let t = crate::drivers::translate_ids(&self.map, &new);
        for older in self.translate.values_mut() {
            for id in older.iter_mut() {
                *id = id.and_then(|i| t.get(i as usize).copied().flatten());
            }
        }
        self.filter = self.filter.remap(&t, new.tags.len());
        self.translate.insert(self.generation, t);
        self.map = new;
        self.generation = generation;
    }
}

/// Translate the tag ids of an output from an older generation; readings without a tag in the
/// current map come back as a gap (counted, reported), never silently dropped.
fn translate_output(table: Option<&Vec<Option<TagId>>>, out: Output) -> (Output, Option<GapRow>) {
    let map_id = |id: TagId| table.and_then(|t| t.get(id as usize).copied().flatten());
    match out {
        Output::Readings(rs) => {
            let (mut kept, mut lost) = (Vec::with_capacity(rs.len()), Vec::new());
            for mut r in rs {
                match map_id(r.tag) {
                    Some(id) => {
                        r.tag = id;
                        kept.push(r);
                    }
                    None => lost.push(r.ts_ms),
                }
            }
            let gap = (!lost.is_empty()).then(|| GapRow {
                tags: Vec::new(),
                range: lost.iter().copied().min().unwrap_or(0)
                    ..lost.iter().copied().max().unwrap_or(0) + 1,
                count: lost.len() as u64,
                reason: crate::model::GapReason::ReloadUnmapped,
            });
            (Output::Readings(kept), gap)
        }
        Output::Events { events, gaps } => {
            let gaps = gaps
                .into_iter()
                .map(|mut g| {
                    g.tags = g.tags.iter().filter_map(|&t| map_id(t)).collect();
                    g
                })
                .collect();
            (Output::Events { events, gaps }, None)
        }
    }
}

fn device_list(map: &TagMap, acq: &Acquisition) -> Vec<(String, Arc<DeviceStats>)> {
    map.devices
        .iter()
        .map(|d| d.name.clone())
        .zip(acq.stats.iter().cloned())
        .collect()
}

/// The watchdog window of the driver stage: every unit sends an output per cycle, good or bad
/// (a dead device still produces `bad-communication` or `stale` readings), so silence for a few
/// of the longest cycles plus the longest unit skip means the pipeline is wedged.
fn drivers_window(map: &TagMap) -> Duration {
    let longest = map
        .devices
        .iter()
        .map(|d| d.poll_interval)
        .max()
        .unwrap_or_default();
    longest * 3 + crate::drivers::modbus::poller::BACKOFF_CAP + Duration::from_secs(60)
}

fn status_line(map: &TagMap, telemetry: &Telemetry, uplink: bool) -> String {
    let up = if !uplink {
        "no uplink (buffering only)"
    } else if telemetry.uplink.connected.load(Relaxed) {
        "broker connected"
    } else {
        "broker not connected (buffering)"
    };
    format!(
        "polling {} devices, {} tags; config {}; {up}; {} readings polled",
        map.devices.len(),
        map.tags.len(),
        map.hash,
        telemetry.polled.load(Relaxed)
    )
}

pub async fn run(path: &Path, output: &str, stats_every: Duration) -> Result<ExitCode, CliError> {
    let notifier = Notifier::from_env();
    let map = Arc::new(super::load_map(path)?);
    super::release_startup_memory();
    tracing::info!(
        site = %map.agent.site, agent = %map.agent.id, devices = map.devices.len(), tags = map.tags.len(),
        config_hash = %map.hash, buffer = %map.buffer.effective_path().display(),
        uplink = map.uplink.as_ref().map(|u| u.broker.as_str()).unwrap_or("none (local buffering only)"),
        "edge-agent starting"
    );
    let (buffer, buffer_thread) =
        Buffer::start(&map, &map.buffer).map_err(|e| CliError::Usage(e.to_string()))?;
    let (tx, mut rx) = mpsc::channel::<Tagged>(256);
    let mut acq = Acquisition::start_tagged(
        &map,
        tx,
        crate::drivers::events::EventOptions {
            ledger: Some(buffer.event_ledger()),
            write_handshake: true,
        },
    );
    let telemetry = Arc::new(Telemetry::new(
        device_list(&map, &acq),
        buffer.stats.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (map_tx, map_rx) = watch::channel(map.clone());

    let mut tasks = Vec::new();
    if map.agent.metrics != "off" {
        match tokio::net::TcpListener::bind(&map.agent.metrics).await {
            Ok(l) => {
                let at = l
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| map.agent.metrics.clone());
                tracing::info!(address = %at, "metrics at http://{at}/metrics");
                tasks.push(tokio::spawn(crate::metrics::serve(
                    l,
                    telemetry.clone(),
                    stop_rx.clone(),
                )));
            }
            Err(e) => {
                tracing::error!(address = %map.agent.metrics, error = %e, "cannot serve metrics; going on without them")
            }
        }
    }
    {
        let (t, b, mut s) = (telemetry.clone(), buffer.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = every.tick() => t.refresh(&b).await,
                    _ = s.changed() => return,
                }
            }
        }));
    }
    let has_uplink = map.uplink.is_some();
    let mut uplink = map.uplink.clone().map(|u| {
        tokio::spawn(crate::uplink::supervise(
            u,
            map_rx.clone(),
            buffer.clone(),
            telemetry.clone(),
            stop_rx.clone(),
        ))
    });

    let mut pipe = Pipeline {
        map: map.clone(),
        generation: acq.generation(),
        filter: TagFilter::new(map.tags.len()),
        translate: BTreeMap::new(),
        telemetry: telemetry.clone(),
        print: output == "jsonl",
        outputs: 0,
    };
    drop(map);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut summary = tokio::time::interval(stats_every.max(Duration::from_secs(1)));
    summary.tick().await;

    // systemd: readiness, watchdog on progress, status text.
    let started = Instant::now();
    let mut ready = false;
    let mut progress = Progress::new();
    let drivers_src = progress.add("the drivers", drivers_window(&pipe.map), started);
    let uplink_src =
        has_uplink.then(|| progress.add("the uplink", Duration::from_secs(120), started));
    let wd_period = notifier.watchdog_period();
    let mut last_ping: Option<Instant> = None;
    let mut stall_logged = false;
    let mut service_tick = tokio::time::interval(
        wd_period.map_or(Duration::from_secs(1), |p| p.min(Duration::from_secs(1))),
    );
    service_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if notifier.enabled() {
        notifier.status("starting: first poll cycle");
    }

    let mut uplink_failed = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(o) => {
                    if pipe.hand_over(o, &buffer).await.is_err() {
                        tracing::error!("buffer stopped; shutting down");
                        break;
                    }
                }
                None => break,
            },
            _ = service_tick.tick() => {
                let now = Instant::now();
                if !ready {
                    let polled = acq.stats.iter().all(|s| {
                        let s = s.snapshot();
                        s.cycles + s.skipped_cycles > 0
                    });
                    let up = &telemetry.uplink;
                    let tried = !has_uplink || up.connected.load(Relaxed) || up.connect_errors.load(Relaxed) > 0;
                    if (polled && tried) || now.duration_since(started) >= READY_AFTER {
                        ready = true;
                        let status = status_line(&pipe.map, &telemetry, has_uplink);
                        tracing::info!(config_hash = %pipe.map.hash, first_cycles_done = polled, uplink_attempted = tried, "ready");
                        notifier.ready(&status);
                    }
                }
                progress.observe(drivers_src, pipe.outputs, pipe.map.devices.is_empty(), now);
                if let Some(i) = uplink_src {
                    // An uplink that ended on a configuration error is logged and not waited on.
                    progress.observe(i, telemetry.uplink.loop_ticks.load(Relaxed), uplink_failed, now);
                }
                match progress.stalled(now) {
                    None => {
                        if stall_logged {
                            tracing::info!("watchdog: progress again");
                            stall_logged = false;
                        }
                        if let Some(p) = wd_period {
                            if last_ping.is_none_or(|t| now.duration_since(t) >= p) {
                                notifier.watchdog();
                                last_ping = Some(now);
                            }
                        }
                    }
                    Some(stall) => {
                        if !stall_logged {
                            tracing::error!(stall = %stall, "watchdog: not pinging systemd (it restarts the agent when WatchdogSec passes)");
                            notifier.status(&format!("stalled: {stall}"));
                            stall_logged = true;
                        }
                    }
                }
            }
            _ = summary.tick() => {
                for (d, st) in pipe.map.devices.iter().zip(&acq.stats) {
                    let s = st.snapshot();
                    // Protocol-specific figures (NMEA checksum errors, GPS clock offset, …).
                    let figures: Vec<String> = st
                        .extras()
                        .iter()
                        .map(|(k, f)| format!("{k}={}", f.value))
                        .collect();
                    tracing::info!(
                        device = %d.name, cycles = s.cycles, success_rate = s.success_rate(), rtt_ms = s.mean_rtt_ms(),
                        exceptions = s.exceptions, timeouts = s.timeouts, decode_errors = s.decode_errors,
                        skipped_cycles = s.skipped_cycles, overruns = s.overruns, figures = %figures.join(" "),
                        "device summary"
                    );
                }
                if ready && !stall_logged {
                    notifier.status(&status_line(&pipe.map, &telemetry, has_uplink));
                }
            }
            r = async { match &mut uplink { Some(h) => h.await, None => std::future::pending().await } }, if !uplink_failed => {
                // `supervise` restarts a failed uplink and returns only at shutdown.
                uplink_failed = true;
                if let Err(e) = r {
                    tracing::error!(error = %e, "uplink supervisor failed; readings keep being buffered");
                }
                uplink = None;
            }
            _ = hup.recv() => {
                notifier.reloading("reloading the tag map");
                let res = reload(path, &mut pipe, &mut acq, &mut rx, &buffer, &map_tx).await;
                match res {
                    Ok(true) => {
                        telemetry.reloads_ok.fetch_add(1, Relaxed);
                        telemetry.set_devices(device_list(&pipe.map, &acq));
                        progress.set_window(drivers_src, drivers_window(&pipe.map));
                    }
                    Ok(false) => {
                        telemetry.reloads_refused.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "buffer stopped during the reload; shutting down");
                        break;
                    }
                }
                // READY=1 ends the reloading state whatever the outcome (the old map keeps
                // running when the new one was refused).
                let status = status_line(&pipe.map, &telemetry, has_uplink);
                notifier.ready(&if res.is_ok_and(|applied| !applied) { format!("reload refused (see the journal); {status}") } else { status });
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    notifier.stopping("stopping: committing the last readings, draining the uplink");

    // 1. Drivers stop (each finishes its current request); what they send meanwhile is taken,
    //    so none of them waits on a full channel.
    let stop = acq.stop();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(o) = rx.recv() => { let _ = pipe.hand_over(o, &buffer).await; }
        }
    }
    // 2. What they produced is filtered and committed.
    while let Ok(o) = rx.try_recv() {
        let _ = pipe.hand_over(o, &buffer).await;
    }
    if let Err(e) = buffer.flush().await {
        tracing::error!(error = %e, "final buffer commit failed");
    }
    // 3. The uplink drains what it can within its deadline; background tasks stop.
    let _ = stop_tx.send(true);
    if let Some(h) = uplink {
        if let Err(e) = h.await {
            tracing::error!(error = %e, "uplink task failed");
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let held = buffer.figures().await.map(|f| f.readings).unwrap_or(0);
    let (polled, reported) = (
        telemetry.polled.load(Relaxed),
        telemetry.reported.load(Relaxed),
    );
    // 4. The buffer closes when its last handle goes.
    drop(buffer);
    drop(pipe);
    drop(telemetry);
    tokio::task::spawn_blocking(move || buffer_thread.join())
        .await
        .ok();
    tracing::info!(
        polled,
        reported,
        buffered_readings = held,
        "edge-agent stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// Live reload (SIGHUP). The new tag map is loaded and validated first; if it has errors, or
/// changes what needs a restart (`[agent]`, `[buffer]`, `[uplink]`), every problem is logged and
/// the old map keeps running (`Ok(false)`). Otherwise (`Ok(true)`): units (a device, or an RTU
/// bus) whose devices and tags are unchanged keep polling; changed and removed ones are stopped
/// — each finishes its current request and its readings are committed under the old map — then
/// the buffer switches to the new map's hash, the uplink publishes a new birth, and changed and
/// added units start. Batches already buffered keep the hash they were written under, so the
/// cloud resolves them with the catalog of the map they came from. Nothing buffered is touched.
async fn reload(
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
    use crate::model::{Quality, Value};

    #[test]
    fn older_generation_ids_are_translated_and_untranslatable_readings_become_a_gap() {
        let table = vec![Some(5), None, Some(0)];
        let out = Output::Readings(vec![
            Reading::good(0, 100, Value::UInt(1), 0),
            Reading::bad(1, 110, Quality::BadCommunication, "x"),
            Reading::good(2, 120, Value::UInt(3), 0),
        ]);
        let (out, gap) = translate_output(Some(&table), out);
        let Output::Readings(rs) = out else {
            panic!("readings")
        };
        assert_eq!(rs.iter().map(|r| r.tag).collect::<Vec<_>>(), vec![5, 0]);
        let gap = gap.expect("one reading had no tag in the new map");
        assert_eq!((gap.count, gap.range.clone()), (1, 110..111));
        assert_eq!(gap.reason, crate::model::GapReason::ReloadUnmapped);
        // Gaps of events keep only the tags that still exist.
        let ev = Output::Events {
            events: Vec::new(),
            gaps: vec![GapRow {
                tags: vec![0, 1],
                range: 0..1,
                count: 2,
                reason: crate::model::GapReason::MissedEvent,
            }],
        };
        let (ev, none) = translate_output(Some(&table), ev);
        assert!(none.is_none());
        assert!(matches!(ev, Output::Events { gaps, .. } if gaps[0].tags == vec![5]));
    }
}
