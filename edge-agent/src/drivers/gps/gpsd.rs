//! gpsd's JSON protocol (<https://gpsd.gitlab.io/gpsd/gpsd_json.html>): the `?WATCH` command and
//! the TPV / SKY reports, decoded into a [`fix::Update`](super::fix::Update). Pure.
//!
//! TPV: `mode` (0 unknown, 1 no fix, 2 2D, 3 3D), `time` (ISO 8601 UTC), `lat`, `lon`,
//! `altMSL` (gpsd ≥ 3.20; older: `alt`), `speed` (m/s), `track` (degrees true), `status`
//! (2 DGPS, 3 RTK fixed, 4 RTK float, 5 dead reckoning…). SKY: `hdop`, `uSat` or the
//! `satellites` array with `used` flags.

use super::config::GpsField;
use super::error::NmeaError;
use super::fix::Update;

/// Sent after connecting: stream JSON reports.
pub const WATCH: &str = "?WATCH={\"enable\":true,\"json\":true};\n";

/// Decode one line from gpsd. `Ok(None)` for reports the driver does not use (VERSION, DEVICES,
/// WATCH, GST…).
pub fn parse_line(line: &str) -> Result<Option<Update>, NmeaError> {
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| NmeaError::Json(e.to_string()))?;
    let class = v.get("class").and_then(|c| c.as_str()).unwrap_or("");
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    match class {
        "TPV" => {
            let mode = num("mode").unwrap_or(0.0) as i64;
            let mut u = Update {
                has_fix_info: true,
                ..Update::default()
            };
            if let Some(t) = v.get("time").and_then(|t| t.as_str()) {
                let parsed =
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| NmeaError::Json(format!("TPV time {t:?} is not ISO 8601")))?;
                u.gps_time_ms = Some((parsed.unix_timestamp_nanos() / 1_000_000) as i64);
            }
            let quality = if mode < 2 {
                0.0
            } else {
                match num("status").unwrap_or(1.0) as i64 {
                    2 => 2.0,
                    3 => 4.0,
                    4 => 5.0,
                    5 | 6 => 6.0,
                    8 => 8.0,
                    _ => 1.0,
                }
            };
            u.values.push((GpsField::FixQuality, quality));
            if mode < 2 {
                u.no_fix = Some(format!("no fix (gpsd TPV mode {mode})"));
                return Ok(Some(u));
            }
            for (field, key) in [
                (GpsField::Latitude, "lat"),
                (GpsField::Longitude, "lon"),
                (GpsField::Heading, "track"),
            ] {
                if let Some(x) = num(key) {
                    u.values.push((field, x));
                }
            }
            if let Some(s) = num("speed") {
                u.values.push((GpsField::Speed, s * 3.6));
            }
            if mode == 3 {
                if let Some(a) = num("altMSL").or_else(|| num("alt")) {
                    u.values.push((GpsField::Altitude, a));
                }
            }
            Ok(Some(u))
        }
        "SKY" => {
            let mut u = Update::default();
            if let Some(h) = num("hdop") {
                u.values.push((GpsField::Hdop, h));
            }
            let used = num("uSat").or_else(|| {
                v.get("satellites").and_then(|s| s.as_array()).map(|a| {
                    a.iter()
                        .filter(|s| s.get("used").and_then(|u| u.as_bool()) == Some(true))
                        .count() as f64
                })
            });
            if let Some(n) = used {
                u.values.push((GpsField::Satellites, n));
            }
            Ok(Some(u))
        }
        "" => Err(NmeaError::Json("report without \"class\"".into())),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpv_3d_fix() {
        let u = parse_line(r#"{"class":"TPV","device":"/dev/pts/1","mode":3,"time":"2024-03-23T12:35:19.000Z","lat":-33.857,"lon":-151.2,"altMSL":12.5,"speed":10.0,"track":84.4,"status":2}"#)
            .expect("ok")
            .expect("update");
        assert_eq!(u.gps_time_ms, Some(1_711_197_319_000));
        assert_eq!(u.no_fix, None);
        assert!(u.values.contains(&(GpsField::Latitude, -33.857)));
        assert!(u.values.contains(&(GpsField::Speed, 36.0)));
        assert!(u.values.contains(&(GpsField::FixQuality, 2.0)));
        assert!(u.values.contains(&(GpsField::Altitude, 12.5)));
    }

    #[test]
    fn tpv_without_fix_and_sky() {
        let u = parse_line(r#"{"class":"TPV","mode":1}"#)
            .expect("ok")
            .expect("u");
        assert!(u.no_fix.is_some());
        let s = parse_line(r#"{"class":"SKY","hdop":0.9,"satellites":[{"PRN":1,"used":true},{"PRN":2,"used":false},{"PRN":3,"used":true}]}"#)
            .expect("ok")
            .expect("u");
        assert_eq!(
            s.values,
            vec![(GpsField::Hdop, 0.9), (GpsField::Satellites, 2.0)]
        );
        assert_eq!(
            parse_line(r#"{"class":"VERSION","release":"3.25"}"#),
            Ok(None)
        );
    }

    #[test]
    fn random_and_truncated_reports_never_panic() {
        let tpv = r#"{"class":"TPV","mode":3,"time":"2024-03-23T12:35:19.000Z","lat":-33.857,"lon":-151.2,"altMSL":12.5,"speed":10.0,"track":84.4}"#;
        for cut in 0..tpv.len() {
            let _ = parse_line(&tpv[..cut]);
        }
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut s = tpv.as_bytes().to_vec();
            let i = (x % s.len() as u64) as usize;
            s[i] = b"{}[]\":,0123456789.-eE"[(x >> 32) as usize % 21];
            let _ = parse_line(&String::from_utf8_lossy(&s));
        }
        // Wrong types are ignored, not trusted.
        let u = parse_line(r#"{"class":"TPV","mode":"3","lat":"x"}"#)
            .expect("ok")
            .expect("u");
        assert!(u.no_fix.is_some());
    }

    #[test]
    fn garbage_is_an_error() {
        for l in [
            "",
            "{",
            "[1,2]",
            "{\"class\":\"TPV\",\"mode\":3,\"time\":\"yesterday\"}",
            "\u{0}\u{1}",
        ] {
            assert!(parse_line(l).is_err(), "{l:?}");
        }
    }
}
