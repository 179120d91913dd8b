//! Operator figures: the Prometheus `/metrics` endpoint (localhost by default) and the MQTT
//! heartbeat carry the same numbers — per-device success rate and RTT, readings polled,
//! buffered, sent, acknowledged and dropped by reason, oldest unsent age, drain rate and ETA,
//! MQTT connection state.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::buffer::{Buffer, BufferStats, StoreFigures};
use crate::drivers::stats::DeviceStats;
use crate::model::now_ms;

/// Uplink counters shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct UplinkShared {
    /// Connected to the broker?
    pub connected: AtomicBool,
    /// Connection attempts that failed.
    pub connect_errors: AtomicU64,
    /// Batches published for the first time.
    pub sent_batches: AtomicU64,
    /// Readings in them.
    pub sent_readings: AtomicU64,
    /// Re-publications.
    pub resent_batches: AtomicU64,
    /// Batches acknowledged by the cloud.
    pub acked_batches: AtomicU64,
    /// Readings deleted from the buffer after acknowledgement.
    pub acked_readings: AtomicU64,
    /// Batches the cloud rejected to its dead-letter table.
    pub rejected_batches: AtomicU64,
    /// Acknowledgements for unknown batch ids.
    pub unknown_acks: AtomicU64,
    /// Malformed or unexpected messages on the agent's topics.
    pub malformed_messages: AtomicU64,
    /// Batches in flight now.
    pub in_flight_batches: AtomicU64,
    /// Turns of the uplink send loop (watchdog progress).
    pub loop_ticks: AtomicU64,
    /// Readings in flight now.
    pub in_flight_readings: AtomicU64,
    /// The uplink task is running (false while it is restarted after a failure).
    pub running: AtomicBool,
    /// Restarts of the uplink task after a failure.
    pub restarts: AtomicU64,
    /// Acknowledgements naming another buffer epoch (ignored).
    pub foreign_epoch_acks: AtomicU64,
    /// Acknowledgements without a valid signature while an ack key is set (ignored).
    pub forged_acks: AtomicU64,
}

#[derive(Debug, Default)]
struct Drain {
    last: Option<(Instant, u64)>,
    rate: f64,
}

/// Everything the operator figures are made of.
pub struct Telemetry {
    started: Instant,
    /// Devices and their counters (replaced on a live reload).
    devices: std::sync::RwLock<Vec<(String, Arc<DeviceStats>)>>,
    /// Buffer counters.
    pub buffer: Arc<BufferStats>,
    /// Uplink counters.
    pub uplink: Arc<UplinkShared>,
    /// Readings produced by the drivers (one per tag per cycle).
    pub polled: AtomicU64,
    /// Readings reported after deadband/heartbeat filtering (handed to the buffer).
    pub reported: AtomicU64,
    /// Live reloads applied.
    pub reloads_ok: AtomicU64,
    /// Live reloads refused (invalid tag map, or a change that needs a restart).
    pub reloads_refused: AtomicU64,
    figures: Mutex<(StoreFigures, Drain)>,
}

impl Telemetry {
    /// New telemetry over these counters.
    pub fn new(devices: Vec<(String, Arc<DeviceStats>)>, buffer: Arc<BufferStats>) -> Self {
        Telemetry {
            started: Instant::now(),
            devices: std::sync::RwLock::new(devices),
            buffer,
            uplink: Arc::default(),
            polled: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            figures: Mutex::new((StoreFigures::default(), Drain::default())),
        }
    }

    /// The devices and their counters now.
    pub fn devices(&self) -> Vec<(String, Arc<DeviceStats>)> {
        // A poisoned lock only means a panic elsewhere while replacing the list: use it as is.
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replace the device list (after a live reload).
    pub fn set_devices(&self, devices: Vec<(String, Arc<DeviceStats>)>) {
        *self.devices.write().unwrap_or_else(|e| e.into_inner()) = devices;
    }

    /// Refresh the buffer figures and the drain rate (acked readings per second, smoothed).
    pub async fn refresh(&self, buffer: &Buffer) {
        let Ok(f) = buffer.figures().await else {
            return;
        };
        let acked = self.buffer.acked.load(Relaxed);
        let now = Instant::now();
        if let Ok(mut g) = self.figures.lock() {
            let (fig, drain) = &mut *g;
            if let Some((t, a)) = drain.last {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                if dt > 0.0 {
                    let inst = (acked.saturating_sub(a)) as f64 / dt;
                    drain.rate = if drain.rate == 0.0 {
                        inst
                    } else {
                        0.7 * drain.rate + 0.3 * inst
                    };
                }
            }
            drain.last = Some((now, acked));
            *fig = f;
        }
    }

    fn snapshot(&self) -> (StoreFigures, f64) {
        self.figures
            .lock()
            .map(|g| (g.0.clone(), g.1.rate))
            .unwrap_or_default()
    }

    /// The heartbeat message (refreshes the buffer figures first).
    pub async fn heartbeat(&self, buffer: &Buffer) -> flowsquare_wire::Heartbeat {
        self.refresh(buffer).await;
        let (f, rate) = self.snapshot();
        let mut counters = std::collections::BTreeMap::new();
        for (k, v) in self.counters(&f) {
            counters.insert(k.to_owned(), v);
        }
        flowsquare_wire::Heartbeat {
            v: 1,
            ts_ms: now_ms(),
            uptime_s: self.started.elapsed().as_secs(),
            buffer: flowsquare_wire::BufferFigures {
                rows: f.segments,
                bytes: f.bytes,
                readings: f.readings,
                oldest_unsent_ms: f.oldest_ts,
                drain_rate_per_s: rate,
                eta_s: (rate > 0.0).then(|| f.readings as f64 / rate),
            },
            counters,
            devices: self
                .devices()
                .iter()
                .map(|(n, s)| {
                    let s = s.snapshot();
                    flowsquare_wire::DeviceHealth {
                        name: n.clone(),
                        success_rate: s.success_rate(),
                        rtt_ms: s.mean_rtt_ms(),
                        errors: s.timeouts + s.link_errors + s.decode_errors + s.exceptions,
                    }
                })
                .collect(),
        }
    }

    fn counters(&self, f: &StoreFigures) -> Vec<(&'static str, u64)> {
        let u = &self.uplink;
        vec![
            ("polled", self.polled.load(Relaxed)),
            ("reported", self.reported.load(Relaxed)),
            ("buffered", self.buffer.committed.load(Relaxed)),
            ("sent", u.sent_readings.load(Relaxed)),
            ("acked", u.acked_readings.load(Relaxed)),
            ("dropped_buffer_full", f.dropped_full),
            ("dropped_buffer_age", f.dropped_age),
            ("resent_batches", u.resent_batches.load(Relaxed)),
            ("rejected_batches", u.rejected_batches.load(Relaxed)),
            ("malformed_messages", u.malformed_messages.load(Relaxed)),
            (
                "buffer_write_errors",
                self.buffer.write_errors.load(Relaxed),
            ),
            ("buffer_quarantined", f.quarantined),
            ("buffer_salvaged_readings", f.salvaged_readings),
            ("buffer_damaged_readings", f.damaged_readings),
            ("buffer_bad_segments", f.bad_segments),
            ("uplink_restarts", u.restarts.load(Relaxed)),
            ("foreign_epoch_acks", u.foreign_epoch_acks.load(Relaxed)),
            ("forged_acks", u.forged_acks.load(Relaxed)),
        ]
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let (f, rate) = self.snapshot();
        let u = &self.uplink;
        let devices = self.devices();
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let one = |v: u64| vec![(String::new(), v as f64)];
        metric(
            "flowsquare_readings_polled_total",
            "counter",
            "Readings produced by the drivers, one per tag per poll cycle, any quality.",
            one(self.polled.load(Relaxed)),
        );
        metric(
            "flowsquare_readings_reported_total",
            "counter",
            "Readings passed by deadband/heartbeat filtering to the buffer.",
            one(self.reported.load(Relaxed)),
        );
        metric(
            "flowsquare_readings_buffered_total",
            "counter",
            "Readings committed to the SQLite buffer.",
            one(self.buffer.committed.load(Relaxed)),
        );
        metric(
            "flowsquare_readings_sent_total",
            "counter",
            "Readings published to the broker (first publication).",
            one(u.sent_readings.load(Relaxed)),
        );
        metric(
            "flowsquare_readings_acked_total",
            "counter",
            "Readings the cloud acknowledged as committed (deleted from the buffer).",
            one(u.acked_readings.load(Relaxed)),
        );
        metric(
            "flowsquare_readings_dropped_total",
            "counter",
            "Readings dropped from the buffer, by reason (each drop is reported to the cloud as a gap).",
            vec![("{reason=\"buffer-full\"}".into(), f.dropped_full as f64), ("{reason=\"buffer-age\"}".into(), f.dropped_age as f64)],
        );
        metric(
            "flowsquare_config_reloads_total",
            "counter",
            "Tag-map reloads (SIGHUP, systemctl reload): applied, or refused with the old map kept.",
            vec![
                ("{result=\"applied\"}".into(), self.reloads_ok.load(Relaxed) as f64),
                ("{result=\"refused\"}".into(), self.reloads_refused.load(Relaxed) as f64),
            ],
        );
        metric(
            "flowsquare_buffer_readings",
            "gauge",
            "Readings held in the buffer (unsent and in flight).",
            one(f.readings),
        );
        metric(
            "flowsquare_buffer_bytes",
            "gauge",
            "Bytes of readings held in the buffer.",
            one(f.bytes),
        );
        metric(
            "flowsquare_buffer_oldest_unsent_age_seconds",
            "gauge",
            "Age of the oldest reading not yet acknowledged by the cloud (0 when empty).",
            vec![(
                String::new(),
                f.oldest_ts
                    .map(|t| (now_ms() - t).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0),
            )],
        );
        metric(
            "flowsquare_buffer_drain_rate",
            "gauge",
            "Readings acknowledged per second (smoothed).",
            vec![(String::new(), rate)],
        );
        metric(
            "flowsquare_buffer_drain_eta_seconds",
            "gauge",
            "Estimated time to empty the buffer at the current drain rate (-1 when not draining).",
            vec![(
                String::new(),
                if rate > 0.0 {
                    f.readings as f64 / rate
                } else {
                    -1.0
                },
            )],
        );
        metric(
            "flowsquare_buffer_quarantined_total",
            "counter",
            "Corrupt buffer databases moved aside.",
            one(f.quarantined),
        );
        metric(
            "flowsquare_buffer_epoch",
            "gauge",
            "Identity of the buffer database (random, made when it was created; changes when it is replaced).",
            one(f.epoch),
        );
        metric(
            "flowsquare_buffer_salvaged_readings_total",
            "counter",
            "Readings recovered from damaged buffer databases.",
            one(f.salvaged_readings),
        );
        metric(
            "flowsquare_buffer_damaged_readings_total",
            "counter",
            "Readings of damaged buffer databases or records that could not be read (reported to the cloud as buffer-damaged gaps).",
            one(f.damaged_readings),
        );
        metric(
            "flowsquare_buffer_damaged_uncounted_total",
            "counter",
            "Damaged buffer databases with parts whose readings could not be counted (reported as gaps of unknown count).",
            one(f.damaged_uncounted),
        );
        metric(
            "flowsquare_buffer_bad_segments_total",
            "counter",
            "Stored records that could not be decoded, moved to the bad_segment table.",
            one(f.bad_segments),
        );
        metric(
            "flowsquare_buffer_write_errors_total",
            "counter",
            "Failed buffer commits (retried).",
            one(self.buffer.write_errors.load(Relaxed)),
        );
        metric(
            "flowsquare_mqtt_connected",
            "gauge",
            "1 when connected to the broker.",
            one(u64::from(u.connected.load(Relaxed))),
        );
        metric(
            "flowsquare_uplink_running",
            "gauge",
            "1 while the uplink task runs (0 while it is restarted after a failure).",
            one(u64::from(u.running.load(Relaxed))),
        );
        metric(
            "flowsquare_uplink_restarts_total",
            "counter",
            "Restarts of the uplink task after a failure.",
            one(u.restarts.load(Relaxed)),
        );
        metric(
            "flowsquare_acks_foreign_epoch_total",
            "counter",
            "Acknowledgements naming another buffer epoch than this buffer's (ignored).",
            one(u.foreign_epoch_acks.load(Relaxed)),
        );
        metric(
            "flowsquare_acks_forged_total",
            "counter",
            "Acknowledgements without a valid signature (an ack key is set): ignored, nothing deleted.",
            one(u.forged_acks.load(Relaxed)),
        );
        metric(
            "flowsquare_mqtt_connect_errors_total",
            "counter",
            "Failed broker connections.",
            one(u.connect_errors.load(Relaxed)),
        );
        metric(
            "flowsquare_batches_in_flight",
            "gauge",
            "Batches sent and not yet acknowledged.",
            one(u.in_flight_batches.load(Relaxed)),
        );
        metric(
            "flowsquare_batches_resent_total",
            "counter",
            "Batches published again (timeouts, reconnects, restarts).",
            one(u.resent_batches.load(Relaxed)),
        );
        metric(
            "flowsquare_batches_rejected_total",
            "counter",
            "Batches the cloud put in its dead-letter table.",
            one(u.rejected_batches.load(Relaxed)),
        );
        metric(
            "flowsquare_malformed_messages_total",
            "counter",
            "Malformed or unexpected messages on the agent's topics (ignored).",
            one(u.malformed_messages.load(Relaxed)),
        );
        let dev = |f: &dyn Fn(&crate::drivers::stats::StatsSnapshot) -> f64| -> Vec<(String, f64)> {
            devices
                .iter()
                .map(|(n, s)| {
                    (
                        format!("{{device=\"{}\"}}", n.replace('"', "'")),
                        f(&s.snapshot()),
                    )
                })
                .collect()
        };
        metric(
            "flowsquare_device_success_ratio",
            "gauge",
            "Share of requests the device answered (data or exception).",
            dev(&|s| s.success_rate()),
        );
        metric(
            "flowsquare_device_rtt_ms",
            "gauge",
            "Mean round-trip time of answered requests.",
            dev(&|s| s.mean_rtt_ms()),
        );
        metric(
            "flowsquare_device_requests_ok_total",
            "counter",
            "Requests answered with data.",
            dev(&|s| s.requests_ok as f64),
        );
        metric(
            "flowsquare_device_exceptions_total",
            "counter",
            "Requests answered with an exception.",
            dev(&|s| s.exceptions as f64),
        );
        metric(
            "flowsquare_device_timeouts_total",
            "counter",
            "Requests without an answer in time.",
            dev(&|s| s.timeouts as f64),
        );
        metric(
            "flowsquare_device_decode_errors_total",
            "counter",
            "Answers that could not be decoded.",
            dev(&|s| s.decode_errors as f64),
        );
        metric(
            "flowsquare_device_link_errors_total",
            "counter",
            "Connection failures.",
            dev(&|s| s.link_errors as f64),
        );
        metric(
            "flowsquare_device_skipped_cycles_total",
            "counter",
            "Cycles skipped while the device kept failing.",
            dev(&|s| s.skipped_cycles as f64),
        );
        // Protocol-specific figures, grouped by name across devices.
        type PerDevice = (crate::drivers::stats::Figure, Vec<(String, f64)>);
        let mut extra: std::collections::BTreeMap<&'static str, PerDevice> =
            std::collections::BTreeMap::new();
        for (n, st) in &devices {
            for (name, fig) in st.extras() {
                extra
                    .entry(name)
                    .or_insert((fig, Vec::new()))
                    .1
                    .push((format!("{{device=\"{}\"}}", n.replace('"', "'")), fig.value));
            }
        }
        for (name, (fig, values)) in extra {
            let (kind, suffix) = if fig.counter {
                ("counter", "_total")
            } else {
                ("gauge", "")
            };
            metric(
                &format!("flowsquare_device_{name}{suffix}"),
                kind,
                fig.help,
                values,
            );
        }
        s
    }
}

/// Serve `/metrics` on `addr` until `shutdown` (a minimal HTTP/1.1 responder: GET only).
pub async fn serve(
    listener: tokio::net::TcpListener,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (mut sock, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let t = telemetry.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                ("200 OK", t.render())
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics is served here\n".to_owned(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
