//! `edge-agent run`: the whole agent pipeline
//! `drivers → filter → buffer (SQLite) → uplink (MQTT)`, the metrics endpoint, and an ordered
//! shutdown on SIGINT/SIGTERM: drivers stop, their last readings are committed to the buffer,
//! the uplink drains what it can within its deadline, the buffer closes.
//!
//! Under systemd (`Type=notify`, see `systemd/edge-agent.service`): readiness and the watchdog
//! in [`super::readiness`]. SIGHUP (`systemctl reload`) reloads the tag map live: see
//! [`super::reload`]. The stage between the drivers and the buffer is [`super::pipeline`].

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use flowsquare_service::Notifier;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::pipeline::Pipeline;
use super::readiness::{device_list, log_summary, status_line, Readiness};
use super::reload::reload;
use crate::buffer::{Buffer, BufferError, BufferThread};
use crate::config::TagMap;
use crate::drivers::{Acquisition, Tagged};
use crate::metrics::Telemetry;

/// Errors of the service.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The buffer could not be opened.
    #[error("{0}")]
    Buffer(#[from] BufferError),
    /// Setting up signals failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The running agent: every stage, the channels between them and the background tasks.
struct Agent {
    buffer: Buffer,
    buffer_thread: BufferThread,
    rx: mpsc::Receiver<Tagged>,
    acq: Acquisition,
    telemetry: Arc<Telemetry>,
    stop_tx: watch::Sender<bool>,
    map_tx: watch::Sender<Arc<TagMap>>,
    tasks: Vec<JoinHandle<()>>,
    uplink: Option<JoinHandle<()>>,
    has_uplink: bool,
    pipe: Pipeline,
}

/// The signals the service loop answers.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// Run the agent on `map` (loaded from `path`, which a reload reads again) until SIGINT or
/// SIGTERM, then stop in order. `print`: readings as JSON lines on stdout.
pub async fn run(
    map: TagMap,
    path: &Path,
    print: bool,
    stats_every: Duration,
    notifier: Notifier,
) -> Result<(), RuntimeError> {
    let map = Arc::new(map);
    tracing::info!(
        site = %map.agent.site, agent = %map.agent.id, devices = map.devices.len(), tags = map.tags.len(),
        config_hash = %map.hash, buffer = %map.buffer.effective_path().display(),
        uplink = %map.uplink.as_ref().map_or_else(|| "none (local buffering only)".to_owned(), |u| u.broker.to_string()),
        "edge-agent starting"
    );
    let mut agent = start(map, print).await?;
    let mut signals = Signals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
        hup: signal(SignalKind::hangup())?,
    };
    serve(&mut agent, &mut signals, path, stats_every, &notifier).await;
    shutdown(agent, &notifier).await;
    Ok(())
}

/// Open the buffer, start the drivers, the metrics endpoint, the figures refresh and the
/// uplink.
async fn start(map: Arc<TagMap>, print: bool) -> Result<Agent, RuntimeError> {
    let (buffer, buffer_thread) = Buffer::start(&map, &map.buffer)?;
    let (tx, rx) = mpsc::channel::<Tagged>(256);
    let acq = Acquisition::start_tagged(
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
    let uplink = map.uplink.clone().map(|u| {
        tokio::spawn(crate::uplink::supervise(
            u,
            map_rx.clone(),
            buffer.clone(),
            telemetry.clone(),
            stop_rx.clone(),
        ))
    });
    let pipe = Pipeline::new(map.clone(), acq.generation(), telemetry.clone(), print);
    Ok(Agent {
        buffer,
        buffer_thread,
        rx,
        acq,
        telemetry,
        stop_tx,
        map_tx,
        tasks,
        uplink,
        has_uplink,
        pipe,
    })
}

/// The service loop: driver outputs to the buffer, readiness and watchdog, summaries, reloads,
/// until a stop signal (or the buffer or the drivers' channel ends).
async fn serve(
    agent: &mut Agent,
    signals: &mut Signals,
    path: &Path,
    stats_every: Duration,
    notifier: &Notifier,
) {
    let mut summary = tokio::time::interval(stats_every.max(Duration::from_secs(1)));
    summary.tick().await;
    // systemd: readiness, watchdog on progress, status text.
    let mut readiness = Readiness::new(notifier, &agent.pipe.map, agent.has_uplink);
    let mut service_tick = readiness.tick_interval();
    let mut uplink_failed = false;
    let Agent {
        buffer,
        rx,
        acq,
        telemetry,
        map_tx,
        uplink,
        pipe,
        has_uplink,
        ..
    } = agent;
    let has_uplink = *has_uplink;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(o) => {
                    if pipe.hand_over(o, buffer).await.is_err() {
                        tracing::error!("buffer stopped; shutting down");
                        break;
                    }
                }
                None => break,
            },
            _ = service_tick.tick() => readiness.tick(notifier, pipe, acq, telemetry, uplink_failed),
            _ = summary.tick() => log_summary(notifier, pipe, acq, telemetry, &readiness),
            r = async { match uplink { Some(h) => h.await, None => std::future::pending().await } }, if !uplink_failed => {
                // `supervise` restarts a failed uplink and returns only at shutdown.
                uplink_failed = true;
                if let Err(e) = r {
                    tracing::error!(error = %e, "uplink supervisor failed; readings keep being buffered");
                }
                *uplink = None;
            }
            _ = signals.hup.recv() => {
                notifier.reloading("reloading the tag map");
                let res = reload(path, pipe, acq, rx, buffer, map_tx).await;
                match res {
                    Ok(true) => {
                        telemetry.reloads_ok.fetch_add(1, Relaxed);
                        telemetry.set_devices(device_list(&pipe.map, acq));
                        readiness.reloaded(&pipe.map);
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
                let status = status_line(&pipe.map, telemetry, has_uplink);
                notifier.ready(&if res.is_ok_and(|applied| !applied) { format!("reload refused (see the journal); {status}") } else { status });
            }
            _ = signals.term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = signals.int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
}

/// The ordered shutdown.
async fn shutdown(agent: Agent, notifier: &Notifier) {
    let Agent {
        buffer,
        buffer_thread,
        mut rx,
        acq,
        telemetry,
        stop_tx,
        map_tx,
        tasks,
        uplink,
        has_uplink: _,
        mut pipe,
    } = agent;
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
    drop(map_tx);
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
}
