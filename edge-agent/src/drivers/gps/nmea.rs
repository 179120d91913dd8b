//! NMEA 0183 sentences: framing, checksum and the GGA / RMC / VTG decoders. Pure: bytes in,
//! fields out; nothing here panics on any input (see the fuzz-style tests).
//!
//! A sentence is `$` + talker (2 letters, any: GP, GN, GL, GA, BD…) + type (3 letters), comma
//! separated fields, `*hh` (XOR of every byte between `$` and `*`, two hex digits), CR LF.

use super::error::NmeaError;

/// Longest sentence accepted (the standard says 82 characters including `$` and CR LF; some
/// receivers exceed it slightly, so allow a margin).
pub const MAX_SENTENCE: usize = 120;

/// Time of day in a sentence (UTC), milliseconds since midnight.
pub type TimeOfDayMs = u32;

/// A calendar date (UTC) from RMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Full year (ddmmyy years 80–99 are 1980–1999, 00–79 are 2000–2079).
    pub year: i32,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
}

impl Date {
    /// Milliseconds since the Unix epoch of this date's midnight UTC, if it is a real date.
    pub fn epoch_ms(self) -> Option<i64> {
        let month = time::Month::try_from(self.month).ok()?;
        let d = time::Date::from_calendar_date(self.year, month, self.day).ok()?;
        Some(d.midnight().assume_utc().unix_timestamp() * 1000)
    }
}

/// GGA: fix data.
#[derive(Debug, Clone, PartialEq)]
pub struct Gga {
    /// UTC time of the fix.
    pub time: Option<TimeOfDayMs>,
    /// Degrees, north positive.
    pub latitude: Option<f64>,
    /// Degrees, east positive.
    pub longitude: Option<f64>,
    /// 0 = no fix.
    pub quality: u8,
    /// Satellites in use.
    pub satellites: Option<u32>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Antenna altitude above mean sea level, metres.
    pub altitude: Option<f64>,
}

/// RMC: recommended minimum data.
#[derive(Debug, Clone, PartialEq)]
pub struct Rmc {
    /// UTC time of the fix.
    pub time: Option<TimeOfDayMs>,
    /// `A` (valid) rather than `V` (navigation receiver warning).
    pub valid: bool,
    /// Degrees, north positive.
    pub latitude: Option<f64>,
    /// Degrees, east positive.
    pub longitude: Option<f64>,
    /// Speed over ground, km/h (converted from knots).
    pub speed_kmh: Option<f64>,
    /// Course over ground, degrees true.
    pub course: Option<f64>,
    /// UTC date.
    pub date: Option<Date>,
}

/// VTG: course and speed over ground.
#[derive(Debug, Clone, PartialEq)]
pub struct Vtg {
    /// Course, degrees true.
    pub course: Option<f64>,
    /// Speed, km/h (the km/h field, or the knots field converted).
    pub speed_kmh: Option<f64>,
    /// Mode indicator `N` (data not valid), NMEA 2.3+.
    pub not_valid: bool,
}

/// A decoded sentence.
#[derive(Debug, Clone, PartialEq)]
pub enum Sentence {
    /// Fix data.
    Gga(Gga),
    /// Recommended minimum.
    Rmc(Rmc),
    /// Course and speed.
    Vtg(Vtg),
    /// A well-formed sentence of a type the driver does not use (GSA, GSV, TXT…).
    Other(String),
}

/// One knot in km/h.
pub const KNOT_KMH: f64 = 1.852;

/// The XOR checksum of `body` (the bytes between `$` and `*`).
pub fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0, |a, b| a ^ b)
}

/// Check the frame of one line (without CR LF) and return its talker, type and fields.
pub fn split(line: &[u8]) -> Result<(String, String, Vec<&str>), NmeaError> {
    let line = trim_end(line);
    if line.len() > MAX_SENTENCE {
        return Err(NmeaError::TooLong(line.len()));
    }
    let start = line
        .iter()
        .position(|&b| b == b'$' || b == b'!')
        .ok_or(NmeaError::NoStart)?;
    let line = &line[start + 1..];
    let star = line
        .iter()
        .rposition(|&b| b == b'*')
        .ok_or(NmeaError::NoChecksum)?;
    let (body, sum) = (&line[..star], &line[star + 1..]);
    let given = std::str::from_utf8(sum)
        .ok()
        .filter(|s| s.len() == 2)
        .and_then(|s| u8::from_str_radix(s, 16).ok())
        .ok_or(NmeaError::NoChecksum)?;
    let computed = checksum(body);
    if given != computed {
        return Err(NmeaError::Checksum { given, computed });
    }
    let body = std::str::from_utf8(body).map_err(|_| NmeaError::NotAscii)?;
    if !body.is_ascii() {
        return Err(NmeaError::NotAscii);
    }
    let mut fields = body.split(',');
    let addr = fields.next().unwrap_or("");
    if addr.len() != 5 || !addr.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(NmeaError::Address(addr.to_owned()));
    }
    let (talker, kind) = addr.split_at(2);
    Ok((talker.to_owned(), kind.to_owned(), fields.collect()))
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n' | b' ' | 0] = s {
        s = rest;
    }
    s
}

/// The sentences of one received line: a receiver that glitches (or a port opened mid-sentence)
/// leaves a partial sentence that runs into the next one, `$GPGGA,1235$GPRMC,…*hh`; each piece
/// from a `$` on is decoded separately, so the partial one is dropped (and counted) without
/// taking the complete one with it. Garbage before the first `$` is a piece of its own.
pub fn pieces(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = trim_end(line);
    std::iter::from_fn(move || {
        while let [b' ' | b'\r' | b'\n' | 0, tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return None;
        }
        let next = rest[1..]
            .iter()
            .position(|&b| b == b'$' || b == b'!')
            .map_or(rest.len(), |i| i + 1);
        let (piece, tail) = rest.split_at(next);
        rest = tail;
        Some(piece)
    })
}

/// Decode one sentence.
pub fn parse(line: &[u8]) -> Result<Sentence, NmeaError> {
    let (_talker, kind, f) = split(line)?;
    let get = |i: usize| f.get(i).copied().unwrap_or("");
    match kind.as_str() {
        "GGA" => {
            let quality = opt_num::<u8>(get(5), "fix quality")?.unwrap_or(0);
            Ok(Sentence::Gga(Gga {
                time: time_of_day(get(0))?,
                latitude: coordinate(get(1), get(2), 2)?,
                longitude: coordinate(get(3), get(4), 3)?,
                quality,
                satellites: opt_num::<u32>(get(6), "satellites")?,
                hdop: opt_f64(get(7), "hdop")?,
                altitude: opt_f64(get(8), "altitude")?,
            }))
        }
        "RMC" => Ok(Sentence::Rmc(Rmc {
            time: time_of_day(get(0))?,
            valid: get(1) == "A",
            latitude: coordinate(get(2), get(3), 2)?,
            longitude: coordinate(get(4), get(5), 3)?,
            speed_kmh: opt_f64(get(6), "speed")?.map(|k| k * KNOT_KMH),
            course: opt_f64(get(7), "course")?,
            date: date(get(8))?,
        })),
        "VTG" => {
            // NMEA 2.x: course T, "T", course M, "M", knots, "N", km/h, "K"[, mode]. Old
            // receivers omit the unit letters: course T, course M, knots, km/h.
            let with_units = get(1) == "T" || f.len() >= 8;
            let (course, knots, kmh, mode) = if with_units {
                (get(0), get(4), get(6), get(8))
            } else {
                (get(0), get(2), get(3), "")
            };
            let kmh = match opt_f64(kmh, "speed km/h")? {
                Some(v) => Some(v),
                None => opt_f64(knots, "speed knots")?.map(|k| k * KNOT_KMH),
            };
            Ok(Sentence::Vtg(Vtg {
                course: opt_f64(course, "course")?,
                speed_kmh: kmh,
                not_valid: mode == "N",
            }))
        }
        other => Ok(Sentence::Other(other.to_owned())),
    }
}

fn bad(field: &'static str, text: &str) -> NmeaError {
    NmeaError::Field {
        field,
        text: text.chars().take(20).collect(),
    }
}

fn opt_f64(s: &str, field: &'static str) -> Result<Option<f64>, NmeaError> {
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(bad(field, s)),
    }
}

fn opt_num<T: std::str::FromStr>(s: &str, field: &'static str) -> Result<Option<T>, NmeaError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<T>().map(Some).map_err(|_| bad(field, s))
}

/// `hhmmss.sss` → milliseconds since midnight.
fn time_of_day(s: &str) -> Result<Option<TimeOfDayMs>, NmeaError> {
    if s.is_empty() {
        return Ok(None);
    }
    let b = s.as_bytes();
    if b.len() < 6 || !b[..6].iter().all(u8::is_ascii_digit) {
        return Err(bad("time", s));
    }
    let two = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
    let (h, m, sec) = (two(0), two(2), two(4));
    let frac = match &s[6..] {
        "" => 0,
        f => {
            let digits = f.strip_prefix('.').ok_or_else(|| bad("time", s))?;
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad("time", s));
            }
            let d3: String = digits.chars().chain("000".chars()).take(3).collect();
            d3.parse::<u32>().map_err(|_| bad("time", s))?
        }
    };
    // 60 is a leap second.
    if h > 23 || m > 59 || sec > 60 {
        return Err(bad("time", s));
    }
    Ok(Some(((h * 60 + m) * 60 + sec) * 1000 + frac))
}

/// `ddmmyy` → date.
fn date(s: &str) -> Result<Option<Date>, NmeaError> {
    if s.is_empty() {
        return Ok(None);
    }
    let b = s.as_bytes();
    if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
        return Err(bad("date", s));
    }
    let two = |i: usize| (b[i] - b'0') * 10 + (b[i + 1] - b'0');
    let yy = i32::from(two(4));
    let d = Date {
        year: if yy >= 80 { 1900 + yy } else { 2000 + yy },
        month: two(2),
        day: two(0),
    };
    d.epoch_ms().ok_or_else(|| bad("date", s))?;
    Ok(Some(d))
}

/// `ddmm.mmmm` / `dddmm.mmmm` + hemisphere → signed degrees.
fn coordinate(v: &str, hemi: &str, deg_digits: usize) -> Result<Option<f64>, NmeaError> {
    let field = if deg_digits == 2 {
        "latitude"
    } else {
        "longitude"
    };
    if v.is_empty() && hemi.is_empty() {
        return Ok(None);
    }
    let dot = v.find('.').unwrap_or(v.len());
    if dot < deg_digits + 2 || !v.is_char_boundary(dot - 2) {
        return Err(bad(field, v));
    }
    let (deg, min) = v.split_at(dot - 2);
    if !deg.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad(field, v));
    }
    let deg: f64 = deg.parse().map_err(|_| bad(field, v))?;
    let min: f64 = min.parse().map_err(|_| bad(field, v))?;
    if !(0.0..60.0).contains(&min) {
        return Err(bad(field, v));
    }
    let val = deg + min / 60.0;
    let limit = if deg_digits == 2 { 90.0 } else { 180.0 };
    if val > limit {
        return Err(bad(field, v));
    }
    match (hemi, deg_digits) {
        ("N", 2) | ("E", 3) => Ok(Some(val)),
        ("S", 2) | ("W", 3) => Ok(Some(-val)),
        _ => Err(bad(
            if deg_digits == 2 {
                "latitude hemisphere"
            } else {
                "longitude hemisphere"
            },
            hemi,
        )),
    }
}

/// Build a sentence from its body (`GPGGA,...`), adding `$`, the checksum and CR LF (tests,
/// `probe`).
pub fn frame(body: &str) -> String {
    format!("${body}*{:02X}\r\n", checksum(body.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GGA: &str = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";

    #[test]
    fn reference_example_decodes() {
        let Sentence::Gga(g) = parse(GGA.as_bytes()).expect("gga") else {
            panic!("not gga")
        };
        assert!((g.latitude.unwrap_or(0.0) - 48.1173).abs() < 1e-9);
        assert!((g.longitude.unwrap_or(0.0) - 11.516_666_666).abs() < 1e-6);
        assert_eq!(g.time, Some((12 * 3600 + 35 * 60 + 19) * 1000));
        assert_eq!((g.quality, g.satellites), (1, Some(8)));
        assert_eq!((g.hdop, g.altitude), (Some(0.9), Some(545.4)));
    }

    #[test]
    fn any_talker_is_accepted() {
        for t in ["GN", "GL", "GA", "BD", "GB", "GQ"] {
            let line = frame(&format!(
                "{t}GGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
            ));
            assert!(
                matches!(parse(line.as_bytes()), Ok(Sentence::Gga(_))),
                "{t}"
            );
        }
    }

    #[test]
    fn bad_checksum_is_an_error() {
        let line = GGA.replace("*47", "*48");
        assert_eq!(
            parse(line.as_bytes()),
            Err(NmeaError::Checksum {
                given: 0x48,
                computed: 0x47
            })
        );
        let flipped = GGA.replace("4807", "4806");
        assert!(matches!(
            parse(flipped.as_bytes()),
            Err(NmeaError::Checksum { .. })
        ));
        assert_eq!(
            parse(b"$GPGGA,123519,4807.038,N"),
            Err(NmeaError::NoChecksum)
        );
    }

    #[test]
    fn southern_and_western_hemispheres_are_negative() {
        let line = frame("GPRMC,225446.50,A,3351.456,S,15112.345,W,12.5,084.4,191194,003.1,W");
        let Sentence::Rmc(r) = parse(line.as_bytes()).expect("rmc") else {
            panic!()
        };
        assert!((r.latitude.unwrap_or(0.0) + (33.0 + 51.456 / 60.0)).abs() < 1e-9);
        assert!((r.longitude.unwrap_or(0.0) + (151.0 + 12.345 / 60.0)).abs() < 1e-9);
        assert!(r.valid);
        assert!((r.speed_kmh.unwrap_or(0.0) - 12.5 * KNOT_KMH).abs() < 1e-9);
        assert_eq!(r.course, Some(84.4));
        assert_eq!(
            r.date,
            Some(Date {
                year: 1994,
                month: 11,
                day: 19
            })
        );
        assert_eq!(r.time, Some((22 * 3600 + 54 * 60 + 46) * 1000 + 500));
    }

    #[test]
    fn fix_loss_sentences() {
        let gga = frame("GPGGA,123520,,,,,0,00,99.9,,M,,M,,");
        let Sentence::Gga(g) = parse(gga.as_bytes()).expect("gga") else {
            panic!()
        };
        assert_eq!((g.quality, g.latitude, g.satellites), (0, None, Some(0)));
        let rmc = frame("GPRMC,123520,V,,,,,,,230394,,,N");
        let Sentence::Rmc(r) = parse(rmc.as_bytes()).expect("rmc") else {
            panic!()
        };
        assert!(!r.valid);
        assert_eq!(r.latitude, None);
    }

    #[test]
    fn vtg_with_and_without_unit_letters() {
        let v = frame("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A");
        let Sentence::Vtg(v) = parse(v.as_bytes()).expect("vtg") else {
            panic!()
        };
        assert_eq!(
            (v.course, v.speed_kmh, v.not_valid),
            (Some(54.7), Some(10.2), false)
        );
        let old = frame("GPVTG,054.7,034.4,005.5,010.2");
        let Sentence::Vtg(o) = parse(old.as_bytes()).expect("vtg") else {
            panic!()
        };
        assert_eq!((o.course, o.speed_kmh), (Some(54.7), Some(10.2)));
        let knots_only = frame("GNVTG,90.0,T,,M,10.0,N,,K,D");
        let Sentence::Vtg(k) = parse(knots_only.as_bytes()).expect("vtg") else {
            panic!()
        };
        assert!((k.speed_kmh.unwrap_or(0.0) - 18.52).abs() < 1e-9);
    }

    #[test]
    fn malformed_fields_are_errors_not_panics() {
        for body in [
            "GPGGA,12x519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,123519,48.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,123519,4877.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,123519,4807.038,N,01131.000,E,x,08,0.9,545.4,M,46.9,M,,",
            "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,320394,,",
            "GPRMC,123519,A,4807.038,N,01131.000,E,nan,084.4,230394,,",
            "G,1,2",
            "GPGGA,\u{e9}\u{e9}",
        ] {
            assert!(parse(frame(body).as_bytes()).is_err(), "{body}");
        }
        assert_eq!(
            parse(frame("GPGSV,3,1,11").as_bytes()),
            Ok(Sentence::Other("GSV".into()))
        );
    }

    #[test]
    fn a_partial_sentence_does_not_take_the_next_one_with_it() {
        let line = format!(
            "$GPGGA,1235{}",
            frame("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,,")
        );
        let got: Vec<bool> = pieces(line.as_bytes()).map(|p| parse(p).is_ok()).collect();
        assert_eq!(got, vec![false, true]);
        assert_eq!(pieces(b"  \r\n").count(), 0);
        assert_eq!(pieces(b"xx$GPGGA").count(), 2);
    }

    #[test]
    fn random_bytes_and_truncations_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let n = (next() % 100) as usize;
            let bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let _ = parse(&bytes);
            pieces(&bytes).for_each(|p| {
                let _ = parse(p);
            });
            let mut s = b"$GPRMC,".to_vec();
            s.extend(
                bytes
                    .iter()
                    .map(|b| b"0123456789.,NSEWAV*$"[usize::from(*b) % 20]),
            );
            let _ = parse(&s);
        }
        let rmc = frame("GPRMC,225446.50,A,3351.456,S,15112.345,W,12.5,084.4,191194,003.1,W");
        for cut in 0..rmc.len() {
            let _ = parse(&rmc.as_bytes()[..cut]);
            // A truncated line with a recomputed checksum is well framed: fields may be missing.
            let body = &rmc[1..cut.max(1).min(rmc.len() - 5)];
            let _ = parse(frame(body).as_bytes());
        }
    }
}
