//! Conversions between wire/store values and PostgreSQL columns.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use flowsquare_wire as wire;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use crate::store::StoreError;

/// Milliseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MS: i64 = 946_684_800_000;
/// Milliseconds in a day.
pub(super) const DAY_MS: i64 = 86_400_000;
/// Oldest timestamp accepted from a batch: 1900-01-01T00:00:00Z.
pub(super) const MIN_TS_MS: i64 = -2_208_988_800_000;
/// First timestamp refused from a batch: 10000-01-01T00:00:00Z.
pub(super) const MAX_TS_MS: i64 = 253_402_300_800_000;
/// 2^53: integers below it in magnitude are exact in `f64`.
const EXACT_INT: u64 = 1 << 53;

/// A `timestamptz` given and read as UTC milliseconds since the Unix epoch, encoded directly in
/// PostgreSQL's binary format (microseconds since 2000-01-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Ts(pub i64);

impl ToSql for Ts {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let us = self
            .0
            .checked_sub(PG_EPOCH_MS)
            .and_then(|ms| ms.checked_mul(1000))
            .ok_or_else(|| format!("timestamp {} ms out of range", self.0))?;
        out.put_i64(us);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Ts {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Ts, Box<dyn Error + Sync + Send>> {
        let bytes: [u8; 8] = raw
            .try_into()
            .map_err(|_| "timestamptz: expected 8 bytes")?;
        // ±infinity are i64::MAX / i64::MIN: saturate.
        let us = i64::from_be_bytes(bytes);
        Ok(Ts(us.div_euclid(1000).saturating_add(PG_EPOCH_MS)))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP)
    }
}

/// `ms` as an RFC 3339 UTC timestamp, for SQL literals (e.g. partition bounds).
pub(super) fn rfc3339(ms: i64) -> Result<String, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| StoreError::Invalid(format!("timestamp {ms} ms out of range")))
}

/// `YYYYMMDD` of a day number (days since the Unix epoch).
pub(super) fn day_name(day: i64) -> Result<String, StoreError> {
    let t = OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
        .map_err(|_| StoreError::Invalid(format!("day {day} out of range")))?;
    Ok(format!(
        "{:04}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day()
    ))
}

/// The day number of a `YYYYMMDD` name, if it is one.
pub(super) fn parse_day_name(s: &str) -> Option<i64> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = s[0..4].parse().ok()?;
    let month: u8 = s[4..6].parse().ok()?;
    let day: u8 = s[6..8].parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Some(
        date.midnight()
            .assume_utc()
            .unix_timestamp()
            .div_euclid(86_400),
    )
}

/// The `value` and `text` columns of a reading value: numbers and booleans in `value`
/// (booleans 0/1), integers that `f64` cannot hold exactly also as exact decimal text, text in
/// `text`.
pub(super) fn value_columns(v: Option<&wire::WireValue>) -> (Option<f64>, Option<ValueText<'_>>) {
    match v {
        None => (None, None),
        Some(wire::WireValue::Bool(b)) => (Some(if *b { 1.0 } else { 0.0 }), None),
        Some(wire::WireValue::Int(i)) => {
            let text = (i.unsigned_abs() > EXACT_INT).then_some(ValueText::Int(*i));
            (Some(*i as f64), text)
        }
        Some(wire::WireValue::UInt(u)) => {
            let text = (*u > EXACT_INT).then_some(ValueText::UInt(*u));
            (Some(*u as f64), text)
        }
        Some(wire::WireValue::Float(f)) => (Some(*f), None),
        Some(wire::WireValue::Text(s)) => (None, Some(ValueText::Str(s))),
    }
}

/// What goes into the `text` column, written without allocating for text values.
#[derive(Debug, Clone, Copy)]
pub(super) enum ValueText<'a> {
    /// A text value.
    Str(&'a str),
    /// A large signed integer, as decimal.
    Int(i64),
    /// A large unsigned integer, as decimal.
    UInt(u64),
}

impl ToSql for ValueText<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            ValueText::Str(s) => s.to_sql(ty, out),
            ValueText::Int(i) => i.to_string().as_str().to_sql(ty, out),
            ValueText::UInt(u) => u.to_string().as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// `counter_kind` and `counter_value` of a reading.
pub(super) fn counter_columns(c: Option<&wire::Counter>) -> (Option<i16>, Option<f64>) {
    match c {
        None => (None, None),
        Some(wire::Counter::Rollover { delta }) => (Some(0), Some(*delta)),
        Some(wire::Counter::Reset { previous }) => (Some(1), Some(*previous)),
    }
}

/// The wire spelling of a gap reason.
pub(super) fn gap_reason(r: &wire::GapReason) -> &str {
    match r {
        wire::GapReason::BufferFull => "buffer-full",
        wire::GapReason::BufferAge => "buffer-age",
        wire::GapReason::MissedEvent => "missed-event",
        wire::GapReason::Other(s) => s,
    }
}

/// A quality code from the database, spelled out.
pub(super) fn quality_name(code: i16) -> String {
    u8::try_from(code)
        .ok()
        .and_then(wire::Quality::from_code)
        .map_or_else(|| format!("unknown-{code}"), |q| q.as_str().to_string())
}

/// Event fields as a JSON object (numbers that JSON cannot carry, NaN and ±infinity, as text).
pub(super) fn fields_json(fields: &[(String, wire::WireValue)]) -> serde_json::Value {
    let map = fields
        .iter()
        .map(|(k, v)| {
            let j = match v {
                wire::WireValue::Bool(b) => serde_json::Value::Bool(*b),
                wire::WireValue::Int(i) => serde_json::Value::from(*i),
                wire::WireValue::UInt(u) => serde_json::Value::from(*u),
                wire::WireValue::Float(f) => serde_json::Number::from_f64(*f).map_or_else(
                    || serde_json::Value::String(f.to_string()),
                    serde_json::Value::Number,
                ),
                wire::WireValue::Text(s) => serde_json::Value::String(s.clone()),
            };
            (k.clone(), j)
        })
        .collect();
    serde_json::Value::Object(map)
}

/// A `u64` stored bit for bit in a `bigint`.
pub(super) fn u64_bits(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// A `u64` count as `bigint`, saturating.
pub(super) fn u64_sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        assert_eq!(day_name(0).unwrap(), "19700101");
        assert_eq!(day_name(20454).unwrap(), "20260101");
        assert_eq!(parse_day_name("20260101"), Some(20454));
        assert_eq!(parse_day_name("19691231"), Some(-1));
        assert_eq!(parse_day_name("2026010"), None);
        assert_eq!(parse_day_name("20261301"), None);
        assert_eq!(rfc3339(1_767_225_600_000).unwrap(), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn values_map_to_columns() {
        let big = wire::WireValue::Int(i64::MAX);
        assert!(matches!(
            value_columns(Some(&big)),
            (Some(_), Some(ValueText::Int(i64::MAX)))
        ));
        assert!(
            matches!(value_columns(Some(&wire::WireValue::Int(-5))), (Some(v), None) if v == -5.0)
        );
        assert!(
            matches!(value_columns(Some(&wire::WireValue::Bool(true))), (Some(v), None) if v == 1.0)
        );
        assert!(matches!(
            value_columns(Some(&wire::WireValue::UInt(u64::MAX))),
            (Some(_), Some(ValueText::UInt(_)))
        ));
        assert_eq!(u64_bits(u64::MAX), -1);
    }
}
