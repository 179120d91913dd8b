//! `edge-agent run`: the whole agent pipeline
//! `drivers → filter → buffer (SQLite) → uplink (MQTT)`, the metrics endpoint, and an ordered
//! shutdown on SIGINT/SIGTERM: drivers stop, their last readings are committed to the buffer,
//! the uplink drains what it can within its deadline, the buffer closes.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::CliError;
use crate::buffer::Buffer;
use crate::drivers::filter::TagFilter;
use crate::drivers::{Acquisition, Output};
use crate::metrics::Telemetry;
use crate::model::Reading;
use crate::sink;

pub async fn run(path: &Path, output: &str, stats_every: Duration) -> Result<ExitCode, CliError> {
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
    let (tx, mut rx) = mpsc::channel::<Output>(256);
    let acq = Acquisition::start_with(
        &map,
        tx,
        crate::drivers::events::EventOptions {
            ledger: Some(buffer.event_ledger()),
            write_handshake: true,
        },
    );
    let devices = map
        .devices
        .iter()
        .map(|d| d.name.clone())
        .zip(acq.stats.iter().cloned())
        .collect();
    let telemetry = Arc::new(Telemetry::new(devices, buffer.stats.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);

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
    let mut uplink = map.uplink.clone().map(|u| {
        tokio::spawn(crate::uplink::run(
            u,
            map.clone(),
            buffer.clone(),
            telemetry.clone(),
            stop_rx.clone(),
        ))
    });

    let mut filter = TagFilter::new(map.tags.len());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut summary = tokio::time::interval(stats_every.max(Duration::from_secs(1)));
    summary.tick().await;
    let print = output == "jsonl";
    let consume = |batch: Vec<Reading>, filter: &mut TagFilter| -> Vec<Reading> {
        telemetry.polled.fetch_add(batch.len() as u64, Relaxed);
        let kept: Vec<Reading> = batch
            .into_iter()
            .filter_map(|r| {
                map.tags
                    .get(r.tag as usize)
                    .and_then(|t| filter.process(t, r))
            })
            .collect();
        telemetry.reported.fetch_add(kept.len() as u64, Relaxed);
        if print && !kept.is_empty() {
            let out: String = kept
                .iter()
                .map(|r| sink::json_line(&map, r) + "\n")
                .collect();
            print!("{out}");
        }
        kept
    };
    let mut uplink_failed = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(o) => {
                    if hand_over(o, &buffer, &mut filter, &consume, print).await.is_err() {
                        tracing::error!("buffer stopped; shutting down");
                        break;
                    }
                }
                None => break,
            },
            _ = summary.tick() => {
                for (d, st) in map.devices.iter().zip(&acq.stats) {
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
            }
            r = async { match &mut uplink { Some(h) => h.await, None => std::future::pending().await } }, if !uplink_failed => {
                uplink_failed = true;
                match r {
                    Ok(Err(e)) => tracing::error!(error = %e, "uplink stopped; readings keep being buffered"),
                    Ok(Ok(())) => {}
                    Err(e) => tracing::error!(error = %e, "uplink task failed; readings keep being buffered"),
                }
                uplink = None;
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }

    // 1. Drivers stop (each finishes its current request).
    acq.stop().await;
    // 2. What they produced is filtered and committed.
    while let Ok(o) = rx.try_recv() {
        let _ = hand_over(o, &buffer, &mut filter, &consume, print).await;
    }
    if let Err(e) = buffer.flush().await {
        tracing::error!(error = %e, "final buffer commit failed");
    }
    // 3. The uplink drains what it can within its deadline; background tasks stop.
    let _ = stop_tx.send(true);
    if let Some(h) = uplink {
        match h.await {
            Ok(Err(e)) => tracing::error!(error = %e, "uplink ended with an error"),
            Err(e) => tracing::error!(error = %e, "uplink task failed"),
            Ok(Ok(())) => {}
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

/// Hand one driver output to the buffer: readings through the deadband filter, events and
/// their gaps as they are (never filtered, never dropped).
async fn hand_over(
    out: Output,
    buffer: &Buffer,
    filter: &mut TagFilter,
    consume: &impl Fn(Vec<Reading>, &mut TagFilter) -> Vec<Reading>,
    print: bool,
) -> Result<(), crate::buffer::BufferError> {
    match out {
        Output::Readings(b) => buffer.append(consume(b, filter)).await,
        Output::Events { events, gaps } => {
            for e in &events {
                tracing::info!(event = %e.source, kind = %e.kind, seq = e.seq, "event captured");
                if print {
                    println!("{}", sink::event_line(e));
                }
            }
            if print {
                for g in &gaps {
                    println!("{}", sink::gap_line(g));
                }
            }
            // One transaction with the definitions' cursors (see `buffer/store.rs`).
            buffer.append_events_with_gaps(events, gaps).await
        }
    }
}
