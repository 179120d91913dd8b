//! Per-device counters, shared (lock-free) between a driver task and whoever reports them
//! (`read` output, logs, later the metrics endpoint and the heartbeat).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// A protocol-specific figure of a device (besides the common counters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    /// `counter` (only goes up) or `gauge`.
    pub counter: bool,
    /// One-line help for the metrics endpoint.
    pub help: &'static str,
    /// Current value.
    pub value: f64,
}

/// Counters of one device.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Poll cycles run.
    pub cycles: AtomicU64,
    /// Cycles that started later than scheduled (the previous one overran the interval).
    pub overruns: AtomicU64,
    /// Cycles skipped because the unit kept failing.
    pub skipped_cycles: AtomicU64,
    /// Requests answered with data.
    pub requests_ok: AtomicU64,
    /// Requests answered with an exception.
    pub exceptions: AtomicU64,
    /// Requests without an answer in time.
    pub timeouts: AtomicU64,
    /// Requests that failed on the link (connect, I/O).
    pub link_errors: AtomicU64,
    /// Answers that could not be decoded (garbage, wrong unit, short data, NaN).
    pub decode_errors: AtomicU64,
    /// Sum of round-trip times of answered requests, microseconds.
    pub rtt_us_sum: AtomicU64,
    /// Readings produced (all qualities).
    pub readings: AtomicU64,
    /// Protocol-specific figures by metric suffix (e.g. `nmea_bad_sentences`,
    /// `gps_clock_offset_ms`): exported as `flowsquare_device_<suffix>{device=...}` and logged in
    /// the device summary. Set through [`DeviceStats::add`] / [`DeviceStats::set`].
    pub extra: Mutex<BTreeMap<&'static str, Figure>>,
}

/// A plain copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See `DeviceStats`.
    pub cycles: u64,
    /// See `DeviceStats`.
    pub overruns: u64,
    /// See `DeviceStats`.
    pub skipped_cycles: u64,
    /// See `DeviceStats`.
    pub requests_ok: u64,
    /// See `DeviceStats`.
    pub exceptions: u64,
    /// See `DeviceStats`.
    pub timeouts: u64,
    /// See `DeviceStats`.
    pub link_errors: u64,
    /// See `DeviceStats`.
    pub decode_errors: u64,
    /// See `DeviceStats`.
    pub rtt_us_sum: u64,
    /// See `DeviceStats`.
    pub readings: u64,
}

impl DeviceStats {
    /// Add one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Add `n` to the protocol-specific counter `name`.
    pub fn add(&self, name: &'static str, help: &'static str, n: f64) {
        if let Ok(mut m) = self.extra.lock() {
            m.entry(name)
                .or_insert(Figure {
                    counter: true,
                    help,
                    value: 0.0,
                })
                .value += n;
        }
    }

    /// Set the protocol-specific gauge `name`.
    pub fn set(&self, name: &'static str, help: &'static str, value: f64) {
        if let Ok(mut m) = self.extra.lock() {
            m.insert(
                name,
                Figure {
                    counter: false,
                    help,
                    value,
                },
            );
        }
    }

    /// A copy of the protocol-specific figures.
    pub fn extras(&self) -> Vec<(&'static str, Figure)> {
        self.extra
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    /// Copy the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            cycles: self.cycles.load(Relaxed),
            overruns: self.overruns.load(Relaxed),
            skipped_cycles: self.skipped_cycles.load(Relaxed),
            requests_ok: self.requests_ok.load(Relaxed),
            exceptions: self.exceptions.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            link_errors: self.link_errors.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            rtt_us_sum: self.rtt_us_sum.load(Relaxed),
            readings: self.readings.load(Relaxed),
        }
    }
}

impl StatsSnapshot {
    /// Share of requests that got an answer (data or exception).
    pub fn success_rate(&self) -> f64 {
        let answered = self.requests_ok + self.exceptions;
        let total = answered + self.timeouts + self.link_errors + self.decode_errors;
        if total == 0 {
            1.0
        } else {
            answered as f64 / total as f64
        }
    }

    /// Mean round-trip time of answered requests, milliseconds.
    pub fn mean_rtt_ms(&self) -> f64 {
        let n = self.requests_ok + self.exceptions;
        if n == 0 {
            0.0
        } else {
            self.rtt_us_sum as f64 / n as f64 / 1000.0
        }
    }
}
