//! The data model every stage shares: a tag's reading, its value and its quality.
//!
//! A reading is produced for every tag on every poll, good or bad, so that "nothing lost, nothing
//! invented" can be checked downstream: a bad reading carries no value, only the reason.

use serde::Serialize;

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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_renders_utc_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
