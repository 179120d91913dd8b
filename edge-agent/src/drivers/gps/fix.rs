//! The receiver's current fix, merged from sentences (NMEA) or reports (gpsd), and the readings
//! of one poll made from it. Pure: callers pass the monotonic `Instant` and the system clock.
//!
//! Each figure keeps the instant it was last received, so a figure the receiver stopped sending
//! (or never sends, e.g. altitude without GGA) is reported bad with the reason, never silently
//! repeated. When the latest GGA/RMC (or gpsd TPV) says there is no fix, position figures are
//! bad (`bad-device`, "no fix"); fix quality and satellites stay good: "0 satellites" is true.
//!
//! GPS time: RMC carries the date, GGA and RMC the time of day; a GGA just after midnight is
//! put on the next day relative to the last RMC. Readings carry the GPS time of the fix they
//! report (the instant the position was measured), so polls faster than the receiver's fix rate
//! repeat it (`check` warns below 1 s); before the first RMC (no date yet) they carry system
//! time and no clock offset is reported. The gateway clock offset is system time at
//! reception minus GPS time (it includes the receiver's output latency, typically < 1 s).

use std::time::{Duration, Instant};

use super::config::GpsField;
use super::nmea::{Date, Sentence, TimeOfDayMs};
use crate::model::{Quality, Reading, Stamped, TagId, TimePolicy, Value};

const DAY_MS: i64 = 86_400_000;
const FIELDS: usize = 8;

fn slot(f: GpsField) -> usize {
    match f {
        GpsField::Latitude => 0,
        GpsField::Longitude => 1,
        GpsField::Altitude => 2,
        GpsField::Speed => 3,
        GpsField::Heading => 4,
        GpsField::FixQuality => 5,
        GpsField::Satellites => 6,
        GpsField::Hdop => 7,
    }
}

/// What a gpsd report (or any non-NMEA source) contributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    /// GPS time of the fix, UTC ms.
    pub gps_time_ms: Option<i64>,
    /// `Some(reason)` when the source says there is no fix.
    pub no_fix: Option<String>,
    /// `Some` when the report states whether there is a fix (TPV), `None` otherwise (SKY).
    pub has_fix_info: bool,
    /// Figures carried.
    pub values: Vec<(GpsField, f64)>,
}

/// The merged state of one receiver.
#[derive(Debug, Clone)]
pub struct FixState {
    values: [Option<(f64, Instant)>; FIELDS],
    /// Last RMC date and the time of day it came with.
    date: Option<(Date, TimeOfDayMs)>,
    /// Why there is no fix, per the latest GGA/RMC/TPV.
    no_fix: Option<String>,
    /// When the last usable sentence or report arrived.
    pub last_input: Option<Instant>,
    /// GPS time of the latest fix, UTC ms.
    pub gps_time_ms: Option<i64>,
    /// System time minus GPS time at the latest timed sentence, ms.
    pub clock_offset_ms: Option<i64>,
    /// Why the link is down, if it is (shown in the readings of a silent receiver).
    pub link_error: Option<String>,
}

impl Default for FixState {
    fn default() -> Self {
        FixState {
            values: [None; FIELDS],
            date: None,
            no_fix: None,
            last_input: None,
            gps_time_ms: None,
            clock_offset_ms: None,
            link_error: None,
        }
    }
}

impl FixState {
    fn put(&mut self, f: GpsField, v: Option<f64>, now: Instant) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.values[slot(f)] = Some((v, now));
        }
    }

    fn stamp(&mut self, gps_ms: i64, system_ms: i64) {
        self.gps_time_ms = Some(gps_ms);
        self.clock_offset_ms = Some(system_ms - gps_ms);
    }

    /// GPS time of a time of day, using the last RMC date (None before the first RMC).
    fn gps_ms(&self, t: TimeOfDayMs) -> Option<i64> {
        let (d, dt) = self.date?;
        let mut ms = d.epoch_ms()? + i64::from(t);
        let diff = i64::from(t) - i64::from(dt);
        if diff < -DAY_MS / 2 {
            ms += DAY_MS;
        } else if diff > DAY_MS / 2 {
            ms -= DAY_MS;
        }
        Some(ms)
    }

    /// Merge one decoded NMEA sentence received at `now` / `system_ms`.
    pub fn apply(&mut self, s: &Sentence, now: Instant, system_ms: i64) {
        match s {
            Sentence::Gga(g) => {
                self.last_input = Some(now);
                self.put(GpsField::FixQuality, Some(f64::from(g.quality)), now);
                self.put(GpsField::Satellites, g.satellites.map(f64::from), now);
                if g.quality == 0 {
                    self.no_fix = Some("no fix (GGA fix quality 0)".into());
                } else {
                    self.no_fix = None;
                    self.put(GpsField::Latitude, g.latitude, now);
                    self.put(GpsField::Longitude, g.longitude, now);
                    self.put(GpsField::Altitude, g.altitude, now);
                    self.put(GpsField::Hdop, g.hdop, now);
                }
                if let Some(ms) = g.time.and_then(|t| self.gps_ms(t)) {
                    self.stamp(ms, system_ms);
                }
            }
            Sentence::Rmc(r) => {
                self.last_input = Some(now);
                if let (Some(d), Some(t)) = (r.date, r.time) {
                    self.date = Some((d, t));
                }
                if r.valid {
                    self.no_fix = None;
                    self.put(GpsField::Latitude, r.latitude, now);
                    self.put(GpsField::Longitude, r.longitude, now);
                    self.put(GpsField::Speed, r.speed_kmh, now);
                    self.put(GpsField::Heading, r.course, now);
                } else {
                    self.no_fix = Some("no fix (RMC status V, receiver warning)".into());
                }
                if let Some(ms) = r.time.and_then(|t| self.gps_ms(t)) {
                    self.stamp(ms, system_ms);
                }
            }
            Sentence::Vtg(v) => {
                self.last_input = Some(now);
                if !v.not_valid {
                    self.put(GpsField::Speed, v.speed_kmh, now);
                    self.put(GpsField::Heading, v.course, now);
                }
            }
            Sentence::Other(_) => {}
        }
    }

    /// Merge a gpsd report.
    pub fn apply_update(&mut self, u: &Update, now: Instant, system_ms: i64) {
        self.last_input = Some(now);
        if u.has_fix_info {
            self.no_fix = u.no_fix.clone();
        }
        for (f, v) in &u.values {
            let position = !f.is_status() && *f != GpsField::Hdop;
            if position && u.no_fix.is_some() {
                continue;
            }
            self.put(*f, Some(*v), now);
        }
        if let Some(ms) = u.gps_time_ms {
            self.stamp(ms, system_ms);
        }
    }

    /// [`FixState::readings`], stamped by the device's time policy: readings of a current fix
    /// carry its GPS time while it is within the bound of the gateway clock (`system_ms`), else
    /// the gateway's (quality `time-substituted`, GPS time in `error`). Also returns how many
    /// were substituted.
    pub fn stamped_readings(
        &self,
        tags: &[(TagId, GpsField)],
        now: Instant,
        system_ms: i64,
        max_age: Duration,
        policy: &TimePolicy,
    ) -> (Vec<Reading>, u64) {
        let mut rs = self.readings(tags, now, system_ms, max_age);
        let input_fresh = self
            .last_input
            .is_some_and(|at| now.saturating_duration_since(at) <= max_age);
        let mut substituted = 0;
        if let (Some(gps), true) = (self.gps_time_ms, input_fresh) {
            for r in &mut rs {
                if policy.stamp(r, gps, system_ms, false) == Stamped::Substituted {
                    substituted += 1;
                }
            }
        }
        (rs, substituted)
    }

    /// One reading per tag at `now`. Readings of a current fix carry its GPS time; others the
    /// system time.
    pub fn readings(
        &self,
        tags: &[(TagId, GpsField)],
        now: Instant,
        system_ms: i64,
        max_age: Duration,
    ) -> Vec<Reading> {
        let fresh = |at: Instant| now.saturating_duration_since(at) <= max_age;
        let input_fresh = self.last_input.is_some_and(fresh);
        let ts = match self.gps_time_ms {
            Some(g) if input_fresh => g,
            _ => system_ms,
        };
        tags.iter()
            .map(|&(tag, field)| {
                if !input_fresh {
                    let mut why = match self.last_input {
                        None => "no NMEA sentence or gpsd report received yet".to_owned(),
                        Some(t) => format!(
                            "receiver silent for {:.1}s (max_age {:.1}s)",
                            now.saturating_duration_since(t).as_secs_f64(),
                            max_age.as_secs_f64()
                        ),
                    };
                    if let Some(e) = &self.link_error {
                        why.push_str(": ");
                        why.push_str(e);
                    }
                    return Reading::bad(tag, ts, Quality::BadCommunication, why);
                }
                let position = !field.is_status();
                if position {
                    if let Some(why) = &self.no_fix {
                        return Reading::bad(tag, ts, Quality::BadDevice, why.clone());
                    }
                }
                match self.values[slot(field)] {
                    Some((v, at)) if fresh(at) => {
                        let value = if field.is_integer() {
                            Value::Int(v as i64)
                        } else {
                            Value::Float(v)
                        };
                        Reading::good(tag, ts, value, 0)
                    }
                    Some(_) => Reading::bad(
                        tag,
                        ts,
                        Quality::BadDevice,
                        format!("no fresh {} from the receiver", field.as_str()),
                    ),
                    None => Reading::bad(
                        tag,
                        ts,
                        Quality::BadDevice,
                        format!(
                            "the receiver has sent no {} yet{}",
                            field.as_str(),
                            match field {
                                GpsField::Altitude | GpsField::Hdop | GpsField::Satellites =>
                                    " (NMEA: needs GGA sentences; gpsd: needs a 3D fix / SKY reports)",
                                GpsField::Speed | GpsField::Heading =>
                                    " (NMEA: needs RMC or VTG; gpsd: needs TPV speed/track)",
                                _ => "",
                            }
                        ),
                    ),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::nmea::{frame, parse};
    use super::*;

    const TAGS: [(TagId, GpsField); 8] = [
        (0, GpsField::Latitude),
        (1, GpsField::Longitude),
        (2, GpsField::Altitude),
        (3, GpsField::Speed),
        (4, GpsField::Heading),
        (5, GpsField::FixQuality),
        (6, GpsField::Satellites),
        (7, GpsField::Hdop),
    ];

    fn feed(st: &mut FixState, body: &str, now: Instant, sys: i64) {
        let s = parse(frame(body).as_bytes()).expect("sentence");
        st.apply(&s, now, sys);
    }

    #[test]
    fn a_full_epoch_gives_good_readings_at_gps_time_and_the_clock_offset() {
        let t0 = Instant::now();
        let mut st = FixState::default();
        // 2024-03-23 12:35:19 UTC = 1711197319000
        let gps = 1_711_197_319_000;
        feed(
            &mut st,
            "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W",
            t0,
            gps + 250,
        );
        feed(
            &mut st,
            "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            t0,
            gps + 300,
        );
        feed(&mut st, "GPVTG,084.4,T,,M,022.4,N,041.5,K,A", t0, gps + 310);
        let rs = st.readings(&TAGS, t0, gps + 500, Duration::from_secs(5));
        assert!(rs.iter().all(|r| r.quality == Quality::Good), "{rs:?}");
        assert!(rs.iter().all(|r| r.ts_ms == gps));
        assert_eq!(st.clock_offset_ms, Some(300));
        assert_eq!(rs[3].value, Some(Value::Float(41.5)));
        assert_eq!(rs[5].value, Some(Value::Int(1)));
        assert_eq!(rs[6].value, Some(Value::Int(8)));
    }

    #[test]
    fn fix_loss_marks_positions_bad_but_keeps_receiver_status() {
        let t0 = Instant::now();
        let mut st = FixState::default();
        feed(
            &mut st,
            "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,,",
            t0,
            0,
        );
        feed(
            &mut st,
            "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            t0,
            0,
        );
        feed(&mut st, "GPGGA,123520,,,,,0,00,99.9,,M,,M,,", t0, 0);
        let rs = st.readings(&TAGS, t0, 0, Duration::from_secs(5));
        assert_eq!(rs[0].quality, Quality::BadDevice);
        assert!(rs[0].error.as_deref().unwrap_or("").contains("no fix"));
        assert_eq!(rs[5].value, Some(Value::Int(0)));
        assert_eq!(rs[6].value, Some(Value::Int(0)));
        feed(
            &mut st,
            "GPGGA,123521,4807.038,N,01131.000,E,1,05,1.2,545.4,M,46.9,M,,",
            t0,
            0,
        );
        let rs = st.readings(&TAGS, t0, 0, Duration::from_secs(5));
        assert_eq!(rs[0].quality, Quality::Good);
    }

    #[test]
    fn silence_and_missing_sentences_are_reported() {
        let t0 = Instant::now();
        let mut st = FixState::default();
        let rs = st.readings(&TAGS, t0, 7, Duration::from_secs(5));
        assert!(rs
            .iter()
            .all(|r| r.quality == Quality::BadCommunication && r.ts_ms == 7));
        feed(
            &mut st,
            "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,,",
            t0,
            0,
        );
        let rs = st.readings(&TAGS, t0, 0, Duration::from_secs(5));
        assert_eq!(rs[0].quality, Quality::Good);
        assert_eq!(rs[2].quality, Quality::BadDevice, "no GGA, no altitude");
        let later = t0 + Duration::from_secs(6);
        let rs = st.readings(&TAGS, later, 0, Duration::from_secs(5));
        assert!(rs.iter().all(|r| r.quality == Quality::BadCommunication));
    }

    #[test]
    fn a_receiver_in_1994_is_stamped_with_the_gateway_time() {
        let t0 = Instant::now();
        let mut st = FixState::default();
        let sys = 1_796_000_000_000;
        // 1994-03-01 10:00:00 UTC
        feed(
            &mut st,
            "GPRMC,100000,A,4807.038,N,01131.000,E,022.4,084.4,010394,,",
            t0,
            sys,
        );
        let policy = TimePolicy::default();
        let tags = &TAGS[..2];
        let (rs, n) = st.stamped_readings(tags, t0, sys, Duration::from_secs(5), &policy);
        assert_eq!(n, 2);
        assert!(rs
            .iter()
            .all(|r| r.ts_ms == sys && r.quality == Quality::TimeSubstituted && r.value.is_some()));
        let e = rs[0].error.clone().unwrap_or_default();
        assert!(
            e.starts_with("source time 1994-03-01T10:00:00.000Z (skew -"),
            "{e}"
        );
        // gateway mode: gateway time, value good, GPS time noted.
        let policy = TimePolicy {
            mode: crate::model::TimestampMode::Gateway,
            ..TimePolicy::default()
        };
        let (rs, n) = st.stamped_readings(tags, t0, sys, Duration::from_secs(5), &policy);
        assert_eq!(n, 0);
        assert!(rs
            .iter()
            .all(|r| r.ts_ms == sys && r.quality == Quality::Good));
        // A receiver on time keeps its GPS time.
        let gps = 1_711_197_319_000;
        feed(
            &mut st,
            "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W",
            t0,
            gps + 250,
        );
        let (rs, n) = st.stamped_readings(
            tags,
            t0,
            gps + 400,
            Duration::from_secs(5),
            &TimePolicy::default(),
        );
        assert_eq!(n, 0);
        assert!(rs
            .iter()
            .all(|r| r.ts_ms == gps && r.quality == Quality::Good));
    }

    #[test]
    fn gga_after_midnight_is_on_the_next_day() {
        let t0 = Instant::now();
        let mut st = FixState::default();
        feed(
            &mut st,
            "GPRMC,235959,A,4807.038,N,01131.000,E,0,0,311224,,",
            t0,
            0,
        );
        feed(
            &mut st,
            "GPGGA,000000,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            t0,
            0,
        );
        // 2025-01-01T00:00:00Z
        assert_eq!(st.gps_time_ms, Some(1_735_689_600_000));
    }
}
