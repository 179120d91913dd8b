//! Durations in tag maps are strings with a unit: `"250ms"`, `"1s"`, `"1.5s"`, `"2m"`, `"1h"`.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Parse `"250ms"`, `"1s"`, `"1.5s"`, `"2m"`, `"1h"`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number with a unit, like \"500ms\" or \"2s\"")
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        "" => {
            return Err(format!(
                "invalid duration {s:?}: a unit is required (ms, s, m, h, d), like \"{s}s\""
            ))
        }
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || secs > 1.0e9 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Render a duration the way tag maps spell them.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// serde helper: `#[serde(deserialize_with = "duration::de")]`.
pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// serde helper for `Option<Duration>`.
pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        assert!(parse("5").unwrap_err().contains("unit is required"));
        assert!(parse("5 days").unwrap_err().contains("unknown unit"));
        assert!(parse("fast").unwrap_err().contains("expected a number"));
    }
}
