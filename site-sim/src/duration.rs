//! Human-readable durations: `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"` (the same spelling the
//! edge agent's tag maps use).

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A [`Duration`] written as a number with a unit (`us`, `ms`, `s`, `m`/`min`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct HumanDuration(pub Duration);

/// Parse `"500ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`, `"250us"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a number with a unit, like \"500ms\" or \"2s\"".to_string())?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1_000_000.0,
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "" => {
            return Err(format!(
                "a unit is required (us, ms, s, m, h), like \"{t}s\""
            ))
        }
        other => return Err(format!("unknown unit {other:?} (use us, ms, s, m or h)")),
    };
    if !secs.is_finite() || secs > 1.0e9 {
        return Err("too large".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Render a duration in the spelling [`parse_duration`] reads.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us == 0 {
        "0ms".into()
    } else if us % 1_000_000 == 0 {
        format!("{}s", us / 1_000_000)
    } else if us % 1000 == 0 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(|reason| serde::de::Error::custom(format!("invalid duration {s:?}: {reason}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse_duration("5")
            .unwrap_err()
            .contains("unit is required"));
        assert!(parse_duration("5 days")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("fast")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("1e99h").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["0ms", "250us", "500ms", "2s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
