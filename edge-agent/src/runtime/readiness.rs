//! systemd readiness, watchdog and status text of the running agent: `READY=1` once every
//! device has had its first poll cycle attempted and, with an uplink, the first broker
//! connection has been attempted (or [`READY_AFTER`] has passed); `WATCHDOG=1` only while the
//! drivers and the uplink make progress; the status line.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowsquare_service::{Notifier, Progress};

use super::pipeline::Pipeline;
use crate::config::TagMap;
use crate::drivers::stats::DeviceStats;
use crate::drivers::Acquisition;
use crate::metrics::Telemetry;

/// Longest wait for every device's first poll cycle before telling systemd we are ready.
pub const READY_AFTER: Duration = Duration::from_secs(30);

pub fn device_list(map: &TagMap, acq: &Acquisition) -> Vec<(String, Arc<DeviceStats>)> {
    map.devices
        .iter()
        .map(|d| d.name.clone())
        .zip(acq.stats.iter().cloned())
        .collect()
}

/// The watchdog window of the driver stage: every unit sends an output per cycle, good or bad
/// (a dead device still produces `bad-communication` or `stale` readings), so silence for a few
/// of the longest cycles plus the longest unit skip means the pipeline is wedged.
pub fn drivers_window(map: &TagMap) -> Duration {
    let longest = map
        .devices
        .iter()
        .map(|d| d.poll_interval)
        .max()
        .unwrap_or_default();
    longest * 3 + crate::drivers::modbus::poller::BACKOFF_CAP + Duration::from_secs(60)
}

pub fn status_line(map: &TagMap, telemetry: &Telemetry, uplink: bool) -> String {
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

/// The readiness and watchdog state of the service loop (systemd `Type=notify`).
pub struct Readiness {
    started: Instant,
    /// `READY=1` sent.
    pub ready: bool,
    progress: Progress,
    drivers_src: usize,
    uplink_src: Option<usize>,
    wd_period: Option<Duration>,
    last_ping: Option<Instant>,
    /// A stall was logged (and not yet cleared).
    pub stall_logged: bool,
    has_uplink: bool,
    /// When `READY=1` was sent, until the start-up memory is handed back.
    ready_at: Option<Instant>,
}

/// How long after `READY=1` the start-up memory is handed back (`memory.rs`): the first
/// connection's birth and the first commits have run by then.
const RELEASE_AFTER_READY: Duration = Duration::from_secs(5);

impl Readiness {
    /// Start watching `map`'s drivers (and the uplink, if there is one) from now.
    pub fn new(notifier: &Notifier, map: &TagMap, has_uplink: bool) -> Self {
        let started = Instant::now();
        let mut progress = Progress::new();
        let drivers_src = progress.add("the drivers", drivers_window(map), started);
        let uplink_src =
            has_uplink.then(|| progress.add("the uplink", Duration::from_secs(120), started));
        if notifier.enabled() {
            notifier.status("starting: first poll cycle");
        }
        Readiness {
            started,
            ready: false,
            progress,
            drivers_src,
            uplink_src,
            wd_period: notifier.watchdog_period(),
            last_ping: None,
            stall_logged: false,
            has_uplink,
            ready_at: None,
        }
    }

    /// The service tick: at most a second, shorter than the watchdog period.
    pub fn tick_interval(&self) -> tokio::time::Interval {
        let mut tick = tokio::time::interval(
            self.wd_period
                .map_or(Duration::from_secs(1), |p| p.min(Duration::from_secs(1))),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    }

    /// The reloaded map's drivers window.
    pub fn reloaded(&mut self, map: &TagMap) {
        self.progress
            .set_window(self.drivers_src, drivers_window(map));
    }

    /// One service tick: readiness once, then the watchdog ping while there is progress.
    pub fn tick(
        &mut self,
        notifier: &Notifier,
        pipe: &Pipeline,
        acq: &Acquisition,
        telemetry: &Telemetry,
        uplink_failed: bool,
    ) {
        let now = Instant::now();
        let has_uplink = self.has_uplink;
        if !self.ready {
            let polled = acq.stats.iter().all(|s| {
                let s = s.snapshot();
                s.cycles + s.skipped_cycles > 0
            });
            let up = &telemetry.uplink;
            let tried =
                !has_uplink || up.connected.load(Relaxed) || up.connect_errors.load(Relaxed) > 0;
            if (polled && tried) || now.duration_since(self.started) >= READY_AFTER {
                self.ready = true;
                let status = status_line(&pipe.map, telemetry, has_uplink);
                tracing::info!(config_hash = %pipe.map.hash, first_cycles_done = polled, uplink_attempted = tried, "ready");
                notifier.ready(&status);
                self.ready_at = Some(now);
            }
        }
        if self
            .ready_at
            .is_some_and(|t| now.duration_since(t) >= RELEASE_AFTER_READY)
        {
            self.ready_at = None;
            super::memory::release_after_start();
        }
        self.progress.observe(
            self.drivers_src,
            pipe.outputs,
            pipe.map.devices.is_empty(),
            now,
        );
        if let Some(i) = self.uplink_src {
            // An uplink that ended on a configuration error is logged and not waited on.
            self.progress.observe(
                i,
                telemetry.uplink.loop_ticks.load(Relaxed),
                uplink_failed,
                now,
            );
        }
        match self.progress.stalled(now) {
            None => {
                if self.stall_logged {
                    tracing::info!("watchdog: progress again");
                    self.stall_logged = false;
                }
                if let Some(p) = self.wd_period {
                    if self.last_ping.is_none_or(|t| now.duration_since(t) >= p) {
                        notifier.watchdog();
                        self.last_ping = Some(now);
                    }
                }
            }
            Some(stall) => {
                if !self.stall_logged {
                    tracing::error!(stall = %stall, "watchdog: not pinging systemd (it restarts the agent when WatchdogSec passes)");
                    notifier.status(&format!("stalled: {stall}"));
                    self.stall_logged = true;
                }
            }
        }
    }
}

/// The periodic summary: one log line per device, and the status text once ready.
pub fn log_summary(
    notifier: &Notifier,
    pipe: &Pipeline,
    acq: &Acquisition,
    telemetry: &Telemetry,
    readiness: &Readiness,
) {
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
    if readiness.ready && !readiness.stall_logged {
        notifier.status(&status_line(&pipe.map, telemetry, readiness.has_uplink));
    }
}
