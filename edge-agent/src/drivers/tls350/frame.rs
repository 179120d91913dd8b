//! Veeder-Root TLS-350 computer-format frames: commands, reply framing and checksum, and the
//! `i201` (in-tank inventory) and `i202` (delivery report) decoders. Pure; nothing here panics
//! on any input (see the fuzz-style tests).
//!
//! # Framing
//! Command: `<SOH>` [security code] `i201TT` (TT = tank, `00` = all). Reply:
//! `<SOH>i201TT` `YYMMDDHHmm` (console time) data `&&` `CCCC` `<ETX>`, where `CCCC` (4 hex digits)
//! is the 16-bit two's complement of the sum of every byte from `<SOH>` through `&&`, so the
//! bytes plus the checksum sum to 0 modulo 2^16. A command the console does not support is
//! answered `<SOH>9999FF1B<ETX>`. Floats are 8 hex digits of an IEEE-754 single, big-endian
//! (`3F800000` = 1.0, `C2C7FAE1` = −99.99). Source: the project's measurement reference
//! (`/work/shared/reference/measurement.md` §4) and Veeder-Root's *Serial Interface Manual for
//! TLS-300/350/350R*, manual 576013-635, sections 5–7.
//!
//! # i201 — in-tank inventory
//! Per tank: `TT` tank (decimal), `p` product code (one character), `ssss` tank status bits
//! (4 hex digits), `NN` number of floats (hex), then NN floats: volume, TC volume, ullage,
//! height, water, temperature, water volume (consoles with fewer/more fields send a different
//! NN; the driver reads what is there and reports a missing field as a bad reading).
//!
//! # i202 — delivery report
//! Per tank: `TT` tank, `p` product code, `dd` number of deliveries that follow (the console
//! keeps a fixed number of recent deliveries per tank), then per delivery: `YYMMDDHHmm` start, `YYMMDDHHmm` end, `NN`
//! number of floats (hex), then NN floats: 1 starting volume, 2 starting TC volume,
//! 3 starting water, 4 starting temperature, 5 ending volume, 6 ending TC volume, 7 ending water,
//! 8 ending temperature, 9 starting height, 10 ending height.
//!
//! This layout follows the field order of the public `function_202` decoder of
//! eredden/Veeder-Root-TLS-Socket-Library (`tls_3xx.py`, written against manual 576013-635)
//! and the manual's `NN` convention ("number of eight character data fields to follow (hex)",
//! as in the published TLS-4/TLS-450 manual 577013-950 for the neighbouring reports). Not
//! confirmed against the manual's own i202 page: whether `dd` is decimal or hex (the library
//! reads it as decimal, which this decoder follows; a count with hex letters A–F is read as
//! hex), how many deliveries a console keeps per tank (the missed-delivery check in
//! `tracker.rs` assumes ten), and which fields consoles with newer software append after the
//! tenth float (extra floats are kept in `Delivery::values` and ignored by name).

use super::error::FrameError;

/// Start of header.
pub const SOH: u8 = 0x01;
/// End of text.
pub const ETX: u8 = 0x03;
/// The answer to an unsupported command (between SOH and ETX).
pub const UNSUPPORTED: &[u8] = b"9999FF1B";
/// Longest reply accepted (an all-tanks i202 of a large site is ~100 KB).
pub const MAX_FRAME: usize = 256 * 1024;

/// A console report's date and time (the console's local clock, no zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsoleTime {
    /// Year, 2000–2099.
    pub year: u16,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
}

impl ConsoleTime {
    /// UTC milliseconds, given the console clock's offset from UTC in minutes.
    pub fn epoch_ms(self, utc_offset_minutes: i32) -> Option<i64> {
        let month = time::Month::try_from(self.month).ok()?;
        let d = time::Date::from_calendar_date(i32::from(self.year), month, self.day).ok()?;
        let t = time::Time::from_hms(self.hour, self.minute, 0).ok()?;
        let local = time::PrimitiveDateTime::new(d, t)
            .assume_utc()
            .unix_timestamp();
        Some((local - i64::from(utc_offset_minutes) * 60) * 1000)
    }

    /// Parse `YYMMDDHHmm` (what [`ConsoleTime::code`] writes).
    pub fn from_code(s: &str) -> Option<Self> {
        let mut c = Cur {
            d: s.as_bytes(),
            at: 0,
        };
        let t = c.time("time").ok()?;
        c.done().then_some(t)
    }

    /// `YYMMDDHHmm`.
    pub fn code(self) -> String {
        format!(
            "{:02}{:02}{:02}{:02}{:02}",
            self.year % 100,
            self.month,
            self.day,
            self.hour,
            self.minute
        )
    }
}

/// One tank of an `i201` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct TankInventory {
    /// Tank number.
    pub tank: u8,
    /// Product code character.
    pub product: char,
    /// Tank status bits.
    pub status: u16,
    /// The floats, in report order (see [`super::config::TankField`]).
    pub values: Vec<f32>,
}

/// A decoded `i201` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// Console time of the report.
    pub time: ConsoleTime,
    /// Tanks in reply order.
    pub tanks: Vec<TankInventory>,
}

/// One delivery of an `i202` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Tank number.
    pub tank: u8,
    /// Product code character.
    pub product: char,
    /// Start of the delivery (console time).
    pub start: ConsoleTime,
    /// End of the delivery.
    pub end: ConsoleTime,
    /// The floats, in report order (see [`DELIVERY_FIELDS`]).
    pub values: Vec<f32>,
}

/// Names of a delivery's floats, in report order (event field names).
pub const DELIVERY_FIELDS: [&str; 10] = [
    "start_volume",
    "start_tc_volume",
    "start_water",
    "start_temperature",
    "end_volume",
    "end_tc_volume",
    "end_water",
    "end_temperature",
    "start_height",
    "end_height",
];

impl Delivery {
    /// The float called `name` (one of [`DELIVERY_FIELDS`]), if the console sent it.
    pub fn get(&self, name: &str) -> Option<f32> {
        let i = DELIVERY_FIELDS.iter().position(|f| *f == name)?;
        self.values.get(i).copied()
    }
}

/// A decoded `i202` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryReport {
    /// Console time of the report.
    pub time: ConsoleTime,
    /// Every delivery, tank by tank, in reply order.
    pub deliveries: Vec<Delivery>,
}

/// The command bytes for `function` (e.g. `"i201"`) and `tank` (0 = all).
pub fn command(security_code: &str, function: &str, tank: u8) -> Vec<u8> {
    let mut c = vec![SOH];
    c.extend_from_slice(security_code.as_bytes());
    c.extend_from_slice(format!("{function}{tank:02}").as_bytes());
    c
}

/// The checksum that makes `bytes` (SOH through `&&`) sum to zero.
pub fn checksum(bytes: &[u8]) -> u16 {
    let sum = bytes
        .iter()
        .fold(0u16, |a, &b| a.wrapping_add(u16::from(b)));
    sum.wrapping_neg()
}

/// Wrap `body` (`i20100…`, without SOH) into a reply frame with its checksum (tests, probe).
pub fn encode_reply(body: &str) -> Vec<u8> {
    let mut f = vec![SOH];
    f.extend_from_slice(body.as_bytes());
    f.extend_from_slice(b"&&");
    let c = checksum(&f);
    f.extend_from_slice(format!("{c:04X}").as_bytes());
    f.push(ETX);
    f
}

/// Check a complete reply frame (SOH … ETX) to `echo` (e.g. `"i20100"`) and return its data
/// (after the echo, before `&&`).
pub fn open_reply<'a>(frame: &'a [u8], echo: &str) -> Result<&'a [u8], FrameError> {
    let start = frame
        .iter()
        .position(|&b| b == SOH)
        .ok_or(FrameError::NoSoh)?;
    let frame = &frame[start..];
    let end = frame
        .iter()
        .rposition(|&b| b == ETX)
        .ok_or(FrameError::NoEtx)?;
    let inner = &frame[1..end];
    if inner == UNSUPPORTED {
        return Err(FrameError::Unsupported);
    }
    if inner.len() < 6 || inner[inner.len() - 6..inner.len() - 4] != *b"&&" {
        return Err(FrameError::NoChecksum);
    }
    let given_text = &inner[inner.len() - 4..];
    let given = std::str::from_utf8(given_text)
        .ok()
        .and_then(|s| u16::from_str_radix(s, 16).ok())
        .ok_or(FrameError::NoChecksum)?;
    let computed = checksum(&frame[..end - 4]);
    if given != computed {
        return Err(FrameError::Checksum { given, computed });
    }
    let body = &inner[..inner.len() - 6];
    if !body.starts_with(echo.as_bytes()) {
        let got: String = String::from_utf8_lossy(&body[..body.len().min(echo.len())]).into();
        return Err(FrameError::Echo {
            expected: echo.to_owned(),
            got,
        });
    }
    Ok(&body[echo.len()..])
}

/// A cursor over reply data.
struct Cur<'a> {
    d: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        let s = self
            .d
            .get(self.at..self.at + n)
            .ok_or(FrameError::Truncated { what, at: self.at })?;
        self.at += n;
        Ok(s)
    }
    fn done(&self) -> bool {
        self.at >= self.d.len()
    }
    fn dec(&mut self, n: usize, what: &'static str) -> Result<u32, FrameError> {
        let at = self.at;
        let s = self.take(n, what)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return Err(field(what, s, at));
        }
        Ok(s.iter().fold(0, |a, &b| a * 10 + u32::from(b - b'0')))
    }
    fn hex(&mut self, n: usize, what: &'static str) -> Result<u32, FrameError> {
        let at = self.at;
        let s = self.take(n, what)?;
        std::str::from_utf8(s)
            .ok()
            .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| field(what, s, at))
    }
    /// Decimal digits read as decimal, anything with A–F as hex (see the module notes on `dd`).
    fn dec_or_hex(&mut self, n: usize, what: &'static str) -> Result<u32, FrameError> {
        let at = self.at;
        let s = self.take(n, what)?;
        self.at = at;
        if s.iter().all(u8::is_ascii_digit) {
            self.dec(n, what)
        } else {
            self.hex(n, what)
        }
    }
    fn float(&mut self, what: &'static str) -> Result<f32, FrameError> {
        Ok(f32::from_bits(self.hex(8, what)?))
    }
    fn time(&mut self, what: &'static str) -> Result<ConsoleTime, FrameError> {
        let at = self.at;
        let s = self.take(10, what)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return Err(field(what, s, at));
        }
        let two = |i: usize| (s[i] - b'0') * 10 + (s[i + 1] - b'0');
        let t = ConsoleTime {
            year: 2000 + u16::from(two(0)),
            month: two(2),
            day: two(4),
            hour: two(6),
            minute: two(8),
        };
        t.epoch_ms(0).ok_or_else(|| field(what, s, at))?;
        Ok(t)
    }
    fn product(&mut self) -> Result<char, FrameError> {
        let at = self.at;
        let s = self.take(1, "product code")?;
        match s[0] {
            c @ 0x20..=0x7e => Ok(char::from(c)),
            _ => Err(field("product code", s, at)),
        }
    }
}

fn field(what: &'static str, s: &[u8], at: usize) -> FrameError {
    FrameError::Field {
        what,
        text: String::from_utf8_lossy(s).chars().take(16).collect(),
        at,
    }
}

/// Tank numbers are two decimal digits.
fn tank(c: &mut Cur<'_>) -> Result<u8, FrameError> {
    Ok(c.dec(2, "tank number")? as u8)
}

/// Decode the data of an `i201` reply.
pub fn parse_inventory(data: &[u8]) -> Result<Inventory, FrameError> {
    let mut c = Cur { d: data, at: 0 };
    let time = c.time("report time")?;
    let mut tanks = Vec::new();
    while !c.done() {
        let t = tank(&mut c)?;
        let product = c.product()?;
        let status = c.hex(4, "tank status")? as u16;
        let n = c.hex(2, "field count")? as usize;
        let values = (0..n)
            .map(|_| c.float("inventory value"))
            .collect::<Result<_, _>>()?;
        tanks.push(TankInventory {
            tank: t,
            product,
            status,
            values,
        });
    }
    Ok(Inventory { time, tanks })
}

/// Decode the data of an `i202` reply.
pub fn parse_deliveries(data: &[u8]) -> Result<DeliveryReport, FrameError> {
    let mut c = Cur { d: data, at: 0 };
    let time = c.time("report time")?;
    let mut deliveries = Vec::new();
    while !c.done() {
        let t = tank(&mut c)?;
        let product = c.product()?;
        let count = c.dec_or_hex(2, "delivery count")?;
        for _ in 0..count {
            let start = c.time("delivery start")?;
            let end = c.time("delivery end")?;
            let n = c.hex(2, "field count")? as usize;
            let values = (0..n)
                .map(|_| c.float("delivery value"))
                .collect::<Result<_, _>>()?;
            deliveries.push(Delivery {
                tank: t,
                product,
                start,
                end,
                values,
            });
        }
    }
    Ok(DeliveryReport { time, deliveries })
}

/// 8 hex digits of an IEEE-754 single (encoder for tests and the simulator's format).
pub fn hex_float(v: f32) -> String {
    format!("{:08X}", v.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory_body() -> String {
        let mut s = String::from("i201002403231435");
        for (t, vals) in [
            (1u8, [1000.0f32, 990.5, 9000.0, 52.25, 0.5, 15.5, 2.0]),
            (2, [1.0, 1.0, 1.0, 1.0, 0.0, -99.99, 0.0]),
        ] {
            s.push_str(&format!("{t:02}1000007"));
            for v in vals {
                s.push_str(&hex_float(v));
            }
        }
        s
    }

    #[test]
    fn reference_floats() {
        assert_eq!(f32::from_bits(0x3F80_0000), 1.0);
        assert_eq!(hex_float(-99.99), "C2C7FAE1");
        assert_eq!(hex_float(1.0), "3F800000");
    }

    #[test]
    fn checksum_makes_the_frame_sum_to_zero() {
        let f = encode_reply("i20100");
        let text = std::str::from_utf8(&f[f.len() - 5..f.len() - 1]).expect("ascii");
        let c = u16::from_str_radix(text, 16).expect("hex");
        let sum = f[..f.len() - 5]
            .iter()
            .fold(0u16, |a, &b| a.wrapping_add(u16::from(b)));
        assert_eq!(sum.wrapping_add(c), 0);
    }

    #[test]
    fn inventory_decodes() {
        let frame = encode_reply(&inventory_body());
        let data = open_reply(&frame, "i20100").expect("frame");
        let inv = parse_inventory(data).expect("inventory");
        assert_eq!(
            inv.time,
            ConsoleTime {
                year: 2024,
                month: 3,
                day: 23,
                hour: 14,
                minute: 35
            }
        );
        assert_eq!(inv.tanks.len(), 2);
        assert_eq!(inv.tanks[0].values[3], 52.25);
        assert_eq!(inv.tanks[1].values[5], -99.99);
        assert_eq!(inv.tanks[1].product, '1');
    }

    #[test]
    fn bad_checksum_unsupported_and_echo() {
        let mut frame = encode_reply(&inventory_body());
        let n = frame.len();
        frame[n - 2] = if frame[n - 2] == b'0' { b'1' } else { b'0' };
        assert!(matches!(
            open_reply(&frame, "i20100"),
            Err(FrameError::Checksum { .. })
        ));
        assert_eq!(
            open_reply(b"\x019999FF1B\x03", "i20100"),
            Err(FrameError::Unsupported)
        );
        let other = encode_reply("i202002403231435");
        assert!(matches!(
            open_reply(&other, "i20100"),
            Err(FrameError::Echo { .. })
        ));
        assert_eq!(open_reply(b"i20100", "i20100"), Err(FrameError::NoSoh));
        assert_eq!(open_reply(b"\x01i20100", "i20100"), Err(FrameError::NoEtx));
    }

    #[test]
    fn deliveries_decode() {
        let mut s = String::from("i202002403231435");
        s.push_str("011");
        s.push_str("02");
        for (st, en, base) in [
            ("2403220800", "2403220830", 1000.0f32),
            ("2403230900", "2403230945", 3000.0),
        ] {
            s.push_str(st);
            s.push_str(en);
            s.push_str("0A");
            for v in [
                base,
                base - 10.0,
                0.5,
                15.0,
                base + 2000.0,
                base + 1985.0,
                0.5,
                15.5,
                30.0,
                70.0,
            ] {
                s.push_str(&hex_float(v));
            }
        }
        s.push_str("022");
        s.push_str("00");
        let frame = encode_reply(&s);
        let r = parse_deliveries(open_reply(&frame, "i20200").expect("frame")).expect("report");
        assert_eq!(r.deliveries.len(), 2);
        let d = &r.deliveries[1];
        assert_eq!((d.tank, d.product), (1, '1'));
        assert_eq!(d.start.code(), "2403230900");
        assert_eq!(d.get("end_volume"), Some(5000.0));
        assert_eq!(d.get("end_height"), Some(70.0));
        assert_eq!(d.end.epoch_ms(120), Some(1_711_187_100_000 - 7_200_000));
    }

    #[test]
    fn malformed_data_is_an_error() {
        for data in [
            &b"24032314"[..],
            b"2413231435",
            b"2403231435011000007",
            b"24032314350110000073F80000",
            b"2403231435X11000000",
            b"240323143501\x0010000",
            b"2403231435011zzzz00",
        ] {
            assert!(
                parse_inventory(data).is_err(),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        assert!(parse_deliveries(b"240323143501101").is_err());
    }

    #[test]
    fn random_bytes_and_truncations_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let n = (next() % 200) as usize;
            let bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let _ = open_reply(&bytes, "i20100");
            let _ = parse_inventory(&bytes);
            let _ = parse_deliveries(&bytes);
            let hexish: Vec<u8> = bytes
                .iter()
                .map(|b| b"0123456789ABCDEF&\x01\x03"[usize::from(*b) % 19])
                .collect();
            let _ = open_reply(&hexish, "i20200");
            let _ = parse_deliveries(&hexish);
        }
        let frame = encode_reply(&inventory_body());
        for cut in 0..frame.len() {
            let _ = open_reply(&frame[..cut], "i20100");
            let _ = parse_inventory(
                &inventory_body().as_bytes()[6..cut.max(6).min(inventory_body().len())],
            );
        }
    }
}
