//! The data model every stage shares: a tag's reading, its value and its quality; known losses
//! (`gap.rs`: gap rows with their reason); the event capture vocabulary (`event.rs`: cursor,
//! digest, the ledger trait the buffer implements, trigger modes and handshake values); the
//! protocol-independent tag vocabulary (`tag.rs`: kind, deadband, priority).
//!
//! A reading is produced for every tag on every poll, good or bad, so that "nothing lost, nothing
//! invented" can be checked downstream: a bad reading carries no value, only the reason.

pub mod event;
pub mod gap;
pub mod tag;

use serde::Serialize;

pub use event::{
    digest, Cursor, EventLedger, HandshakeValue, LedgerFuture, SharedLedger, TriggerMode,
};
pub use gap::{GapReason, GapRow};
pub use tag::{Deadband, Priority, TagKind};

/// Index of a tag in the loaded tag map (stable for the lifetime of one loaded config).
pub type TagId = u32;

/// A decoded, scaled value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Coils, discrete inputs, register bits and `bool` tags.
    Bool(bool),
    /// Signed integers (also unsigned ones that fit), when scale = 1 and offset = 0.
    Int(i64),
    /// Unsigned 64-bit integers that do not fit an `i64`.
    UInt(u64),
    /// Floats, and every integer tag with a scale or offset.
    Float(f64),
    /// Fixed-length strings (trailing NULs and spaces trimmed).
    Text(String),
}

impl Value {
    /// The value as a float, for deadbands and counters (`None` for text).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Text(_) => None,
        }
    }
}

/// Per-reading quality, shared by every driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quality {
    /// The device answered and the value decoded.
    Good,
    /// No answer: timeout, connection refused or lost.
    BadCommunication,
    /// The device answered with an exception (the code is kept on the reading).
    BadDevice,
    /// The device answered something that could not be decoded (garbage, short frame, NaN where
    /// not allowed, wrong unit id).
    BadDecode,
    /// The tag was not read this cycle (its unit is being skipped after repeated failures).
    Stale,
    /// The value is the device's, but the device's own time (GPS fix time, OPC UA source
    /// timestamp) was further from the gateway clock than the device's `max_clock_skew`: the
    /// reading carries the gateway's time and the source time is kept in `error`.
    TimeSubstituted,
}

impl Quality {
    /// The wire/CLI spelling (`good`, `bad-communication`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::BadCommunication => "bad-communication",
            Quality::BadDevice => "bad-device",
            Quality::BadDecode => "bad-decode",
            Quality::Stale => "stale",
            Quality::TimeSubstituted => "time-substituted",
        }
    }

    /// Does a reading of this quality carry the device's value (good, or good with the
    /// gateway's time)?
    pub fn has_value(self) -> bool {
        matches!(self, Quality::Good | Quality::TimeSubstituted)
    }
}

/// What a totalizer did between two readings, instead of a negative jump.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum CounterEvent {
    /// The counter wrapped past its rollover value; `delta` is the quantity counted across it.
    Rollover {
        /// Quantity counted since the previous reading, across the wrap.
        delta: f64,
    },
    /// The counter went back (device reset or replaced); the previous total is kept in `previous`.
    Reset {
        /// The total before the reset.
        previous: f64,
    },
}

/// One reading of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Which tag (index into the loaded tag map).
    pub tag: TagId,
    /// When the request was sent, UTC milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The value; `None` unless quality is good.
    pub value: Option<Value>,
    /// Quality of this reading.
    pub quality: Quality,
    /// Why the quality is not good (human readable).
    pub error: Option<String>,
    /// The Modbus exception code (or other protocol status) for `BadDevice`.
    pub status: Option<u32>,
    /// Round-trip time of the request that produced the reading, microseconds.
    pub rtt_us: u32,
    /// Totalizer rollover/reset detected at this reading.
    pub counter: Option<CounterEvent>,
}

impl Reading {
    /// A good reading.
    pub fn good(tag: TagId, ts_ms: i64, value: Value, rtt_us: u32) -> Self {
        Reading {
            tag,
            ts_ms,
            value: Some(value),
            quality: Quality::Good,
            error: None,
            status: None,
            rtt_us,
            counter: None,
        }
    }

    /// A reading without a value.
    pub fn bad(tag: TagId, ts_ms: i64, quality: Quality, error: impl Into<String>) -> Self {
        Reading {
            tag,
            ts_ms,
            value: None,
            quality,
            error: Some(error.into()),
            status: None,
            rtt_us: 0,
            counter: None,
        }
    }
}

/// Which clock a device's readings are stamped with (tag map `timestamps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampMode {
    /// The device's own time (GPS fix time, OPC UA source timestamp) while it is within
    /// `max_clock_skew` of the gateway clock; beyond it the gateway's time, quality
    /// `time-substituted`.
    #[default]
    Source,
    /// Always the gateway's time; a source time beyond the bound is noted in `error`.
    Gateway,
}

impl TimestampMode {
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TimestampMode::Source => "source",
            TimestampMode::Gateway => "gateway",
        }
    }
}

/// Per-device counter of readings whose source time was replaced by the gateway's
/// (`flowsquare_device_time_substituted_total`, through `DeviceStats::add`).
pub const M_TIME_SUBSTITUTED: &str = "time_substituted";
/// Its help text.
pub const M_TIME_SUBSTITUTED_HELP: &str =
    "readings stamped with the gateway's time because the device's own time was out of bounds";

/// Default `max_clock_skew`: how far a device's own time may be from the gateway clock.
pub const DEFAULT_MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Time sanity of one device: which clock stamps its readings and how far its own may drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimePolicy {
    /// `source` or `gateway`.
    pub mode: TimestampMode,
    /// Largest accepted |gateway − source| difference.
    pub max_skew: std::time::Duration,
}

impl Default for TimePolicy {
    fn default() -> Self {
        TimePolicy {
            mode: TimestampMode::Source,
            max_skew: DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

/// A clock-skew bound in milliseconds of the data clock. Under a simulated clock running
/// `speed` times real time (`FLOWSQUARE_CLOCK`), a real latency of one second is `speed`
/// seconds of data time, so the bound is scaled by the speed (never below the bound itself);
/// on the real clock it is the bound as configured.
pub fn data_clock_bound_ms(bound: std::time::Duration) -> i64 {
    let speed = flowsquare_service::clock::clock().speed().max(1.0);
    let ms = bound.as_millis() as f64 * speed;
    if ms >= i64::MAX as f64 {
        i64::MAX
    } else {
        ms as i64
    }
}

/// What [`TimePolicy::stamp`] did to a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamped {
    /// The source time was used (within the bound).
    Source,
    /// The gateway time was used as configured (or for an unchanged value's old source time).
    Gateway,
    /// The source time was out of bounds and replaced by the gateway's (count it).
    Substituted,
}

/// One `plan` line on how a device's readings are stamped (`what`: "GPS time", …).
pub fn describe_time_policy(p: &TimePolicy, what: &str) -> String {
    let bound = format_skew(i64::try_from(p.max_skew.as_millis()).unwrap_or(i64::MAX));
    let bound = bound.trim_start_matches('+');
    match p.mode {
        TimestampMode::Source => format!(
            "timestamps = \"source\": readings carry {what} while it is within {bound} of the gateway clock, else the gateway's time (quality time-substituted)"
        ),
        TimestampMode::Gateway => format!(
            "timestamps = \"gateway\": readings carry the gateway's time ({what} noted when more than {bound} off)"
        ),
    }
}

/// `-1021 d`, `+3.5 h`, `-42 s`: a signed clock difference for people.
pub fn format_skew(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let a = ms.unsigned_abs() as f64 / 1000.0;
    let (v, unit) = if a >= 86_400.0 {
        (a / 86_400.0, "d")
    } else if a >= 3_600.0 {
        (a / 3_600.0, "h")
    } else if a >= 60.0 {
        (a / 60.0, "min")
    } else {
        (a, "s")
    };
    // 9.95 and above print as whole units: with one decimal they would round to "10.0" (a
    // ten-day skew measured a few ms short of ten days read "-10.0 d", another "-10 d").
    if v >= 9.95 {
        format!("{sign}{v:.0} {unit}")
    } else {
        format!("{sign}{v:.1} {unit}")
    }
}

impl TimePolicy {
    /// Stamp `r` (a reading whose device says it was taken at `source_ms`, received at
    /// `gateway_ms`). The skew is source − gateway (negative: the source clock is behind).
    ///
    /// `may_lag`: the source time may rightly be older than the bound because it says when an
    /// unchanged value last changed (an OPC UA value delivered at subscription or read by
    /// polling); such a reading gets the gateway's time and keeps its quality, the old source
    /// time noted in `error`. A source time ahead of the gateway by more than the bound is
    /// always a clock error.
    pub fn stamp(
        &self,
        r: &mut Reading,
        source_ms: i64,
        gateway_ms: i64,
        may_lag: bool,
    ) -> Stamped {
        let skew = source_ms.saturating_sub(gateway_ms);
        let bound = data_clock_bound_ms(self.max_skew);
        let out = skew.unsigned_abs() > bound.unsigned_abs();
        let note = |what: &str| {
            format!(
                "{what} {} (skew {})",
                rfc3339_ms(source_ms),
                format_skew(skew)
            )
        };
        let add_note = |r: &mut Reading, n: String| {
            r.error = Some(match r.error.take() {
                Some(e) if !e.is_empty() => format!("{e}; {n}"),
                _ => n,
            });
        };
        if !out {
            r.ts_ms = match self.mode {
                TimestampMode::Source => source_ms,
                TimestampMode::Gateway => gateway_ms,
            };
            return match self.mode {
                TimestampMode::Source => Stamped::Source,
                TimestampMode::Gateway => Stamped::Gateway,
            };
        }
        r.ts_ms = gateway_ms;
        if may_lag && skew < 0 {
            add_note(r, note("unchanged since source time"));
            return Stamped::Gateway;
        }
        match self.mode {
            TimestampMode::Gateway => {
                add_note(r, note("source time"));
                Stamped::Gateway
            }
            TimestampMode::Source => {
                add_note(r, note("source time"));
                if r.quality == Quality::Good {
                    r.quality = Quality::TimeSubstituted;
                }
                Stamped::Substituted
            }
        }
    }
}

/// Current UTC time in milliseconds since the Unix epoch, on the data clock: the system clock,
/// or the simulated clock shared through `FLOWSQUARE_CLOCK` (`flowsquare_service::clock`;
/// every reading, event and gap timestamp is taken here). A clock before 1970 reads 0.
pub fn now_ms() -> i64 {
    flowsquare_service::clock::now_ms()
}

/// RFC 3339 rendering of a millisecond timestamp (UTC, millisecond precision).
pub fn rfc3339_ms(ts_ms: i64) -> String {
    let nanos = i128::from(ts_ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&fmt).unwrap_or_else(|_| ts_ms.to_string())
        }
        Err(_) => ts_ms.to_string(),
    }
}

/// A decoded value on the wire (event record fields).
pub fn wire_value(v: Value) -> flowsquare_wire::WireValue {
    match v {
        Value::Bool(b) => flowsquare_wire::WireValue::Bool(b),
        Value::Int(i) => flowsquare_wire::WireValue::Int(i),
        Value::UInt(u) => flowsquare_wire::WireValue::UInt(u),
        Value::Float(f) => flowsquare_wire::WireValue::Float(f),
        Value::Text(s) => flowsquare_wire::WireValue::Text(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_renders_utc_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    const NOW: i64 = 1_796_000_000_000;
    const MIN: i64 = 60_000;

    fn good() -> Reading {
        Reading::good(1, 0, Value::Float(1.5), 0)
    }

    #[test]
    fn a_source_time_within_the_bound_is_kept() {
        let p = TimePolicy::default();
        let mut r = good();
        assert_eq!(p.stamp(&mut r, NOW - 4 * MIN, NOW, false), Stamped::Source);
        assert_eq!(
            (r.ts_ms, r.quality, r.error),
            (NOW - 4 * MIN, Quality::Good, None)
        );
        let mut r = good();
        assert_eq!(p.stamp(&mut r, NOW + 4 * MIN, NOW, false), Stamped::Source);
        assert_eq!(r.ts_ms, NOW + 4 * MIN);
    }

    #[test]
    fn a_source_time_out_of_bounds_is_replaced_and_kept_in_error() {
        let p = TimePolicy::default();
        // A receiver in 1994 (GPS week rollover).
        let src = 762_516_000_000; // 1994-03-01T10:00:00Z
        let mut r = good();
        assert_eq!(p.stamp(&mut r, src, NOW, false), Stamped::Substituted);
        assert_eq!(r.ts_ms, NOW);
        assert_eq!(r.quality, Quality::TimeSubstituted);
        assert!(r.value.is_some());
        let e = r.error.unwrap_or_default();
        assert!(
            e.starts_with("source time 1994-03-01T10:00:00.000Z (skew -"),
            "{e}"
        );
        assert!(e.ends_with(" d)"), "{e}");
        // Ahead of the gateway: the same, also for an unchanged OPC UA value.
        let mut r = good();
        assert_eq!(
            p.stamp(&mut r, NOW + 6 * MIN, NOW, true),
            Stamped::Substituted
        );
        assert_eq!(
            r.error.as_deref(),
            Some("source time 2026-11-30T00:59:20.000Z (skew +6.0 min)")
        );
        // A bad reading keeps its quality; the note is added to its reason.
        let mut r = Reading::bad(1, 0, Quality::BadDevice, "no fix");
        assert_eq!(
            p.stamp(&mut r, NOW - 10 * MIN, NOW, false),
            Stamped::Substituted
        );
        assert_eq!(r.quality, Quality::BadDevice);
        assert!(r
            .error
            .unwrap_or_default()
            .starts_with("no fix; source time "));
    }

    #[test]
    fn gateway_mode_and_unchanged_values_keep_their_quality() {
        let p = TimePolicy {
            mode: TimestampMode::Gateway,
            max_skew: std::time::Duration::from_secs(60),
        };
        let mut r = good();
        assert_eq!(p.stamp(&mut r, NOW - 30_000, NOW, false), Stamped::Gateway);
        assert_eq!((r.ts_ms, r.quality, r.error), (NOW, Quality::Good, None));
        let mut r = good();
        assert_eq!(p.stamp(&mut r, NOW - 2 * MIN, NOW, false), Stamped::Gateway);
        assert_eq!((r.ts_ms, r.quality), (NOW, Quality::Good));
        assert!(r.error.unwrap_or_default().starts_with("source time "));
        let p = TimePolicy::default();
        let mut r = good();
        assert_eq!(
            p.stamp(&mut r, NOW - 3 * 86_400_000, NOW, true),
            Stamped::Gateway
        );
        assert_eq!((r.ts_ms, r.quality), (NOW, Quality::Good));
        assert!(r
            .error
            .unwrap_or_default()
            .starts_with("unchanged since source time "));
    }

    #[test]
    fn skews_read_in_the_largest_unit() {
        assert_eq!(format_skew(-1021 * 86_400_000), "-1021 d");
        assert_eq!(format_skew(90 * 60_000), "+1.5 h");
        assert_eq!(format_skew(-42_000), "-42 s");
        // Just short of ten days: whole days, never "10.0 d".
        assert_eq!(format_skew(-10 * 86_400_000 + 5), "-10 d");
        assert_eq!(format_skew(9 * 86_400_000 + 43_200_000), "+9.5 d");
    }
}
