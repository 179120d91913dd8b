//! Time sanity: the one place that says which instants the cloud accepts. The API checks every
//! time it is given through these functions (event times in bodies, query ranges, dates), and
//! the store checks the gap records of a batch with them, so a number and its text form, a body
//! and a batch, are judged alike.

/// 2000-01-01T00:00:00Z, epoch ms: the earliest plausible event time (a discharge, a delivery,
/// a reported gap). Anything earlier is a clock that was never set, or a typo.
pub const EVENT_MIN_MS: i64 = 946_684_800_000;
/// How far ahead of the cloud's clock an event time may be (clock skew, time zones): one day.
pub const EVENT_AHEAD_MS: i64 = 86_400_000;
/// The latest time a query may name: 9999-12-31T23:59:59.999Z, epoch ms.
pub const QUERY_MAX_MS: i64 = 253_402_300_799_999;
/// The earliest time a query may name: 1970-01-01T00:00:00Z.
pub const QUERY_MIN_MS: i64 = 0;

/// Milliseconds as an RFC 3339 text for messages (the number itself when out of range).
pub fn show(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// An event time (something that happened: a discharge opened or closed, a delivery, the ends
/// of a gap): from 2000-01-01 to one day after `now_ms`. The error says why, without the name
/// of the field (the caller adds it).
pub fn check_event(ms: i64, now_ms: i64) -> Result<i64, String> {
    let latest = now_ms.saturating_add(EVENT_AHEAD_MS);
    if ms < EVENT_MIN_MS {
        Err(format!(
            "{ms} ms ({}) is before 2000-01-01, not a plausible event time",
            show(ms)
        ))
    } else if ms > latest {
        Err(format!(
            "{ms} ms ({}) is more than a day after now ({})",
            show(ms),
            show(now_ms)
        ))
    } else {
        Ok(ms)
    }
}

/// A time a query names (a range end, an `as_of`, a date's midnight): 1970-01-01 to 9999-12-31.
pub fn check_query(ms: i64) -> Result<i64, String> {
    if (QUERY_MIN_MS..=QUERY_MAX_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!("{ms} ms is outside 1970-01-01 .. 9999-12-31"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600_000; // 2026-01-01

    #[test]
    fn event_times() {
        assert_eq!(check_event(NOW, NOW), Ok(NOW));
        assert_eq!(check_event(EVENT_MIN_MS, NOW), Ok(EVENT_MIN_MS));
        assert_eq!(
            check_event(NOW + EVENT_AHEAD_MS, NOW),
            Ok(NOW + EVENT_AHEAD_MS)
        );
        for bad in [
            -1,
            0,
            EVENT_MIN_MS - 1,
            NOW + EVENT_AHEAD_MS + 1,
            i64::MAX,
            i64::MIN,
        ] {
            assert!(check_event(bad, NOW).is_err(), "{bad}");
        }
        assert!(check_event(i64::MAX, i64::MAX).is_ok());
        assert!(check_event(-1, NOW).unwrap_err().contains("1969"));
    }

    #[test]
    fn query_times() {
        assert!(check_query(0).is_ok());
        assert!(check_query(QUERY_MAX_MS).is_ok());
        assert!(check_query(-1).is_err());
        assert!(check_query(QUERY_MAX_MS + 1).is_err());
    }
}
