//! GPS keys of a tag map: the `nmea` (serial NMEA 0183 receiver) and `gpsd` (gpsd's JSON over
//! TCP) device keys, and the `field` key of a GPS tag.

use serde::Deserialize;
use std::time::Duration;

use crate::drivers::serial::{serial_problems, Parity, SerialSettings};
use crate::drivers::{DeviceDriver, TagSource};
use crate::model::{TimePolicy, TimestampMode, DEFAULT_MAX_CLOCK_SKEW};
use crate::settings::duration;
use crate::settings::parse::{fields_of, part, STable, Spans};
use crate::settings::Diagnostics;

/// Default NMEA 0183 baud rate (the standard's 4800; many receivers are set to 9600 or more).
pub const DEFAULT_NMEA_BAUD: u32 = 4800;
/// gpsd's IANA port.
pub const DEFAULT_GPSD_PORT: u16 = 2947;
/// Default age after which a fix is no longer reported as good.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5);

/// Keys of a `protocol = "nmea"` device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNmeaDevice {
    /// Serial device path of the receiver, e.g. `/dev/ttyUSB0` or `/dev/ttyACM0`.
    pub serial: String,
    /// Baud rate.
    #[serde(default = "default_nmea_baud")]
    pub baud: u32,
    /// `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// A fix older than this (no sentence with a position) is reported with bad quality.
    #[serde(default = "default_max_age", deserialize_with = "duration::de")]
    pub max_age: Duration,
    /// How often the receiver sends a fix (most send one a second; some 5 or 10 Hz). Polling
    /// faster only repeats the last fix: `edge-agent check` warns when `poll_interval` is below it.
    #[serde(default = "default_fix_interval", deserialize_with = "duration::de")]
    pub fix_interval: Duration,
    /// `source` (readings carry the fix's GPS time while it is within `max_clock_skew` of the
    /// gateway clock) or `gateway` (always the gateway's time).
    #[serde(default)]
    pub timestamps: TimestampMode,
    /// Largest accepted difference between GPS time and the gateway clock; beyond it readings
    /// get the gateway's time and quality `time-substituted`.
    #[serde(default = "default_max_clock_skew", deserialize_with = "duration::de")]
    pub max_clock_skew: Duration,
}

/// Keys of a `protocol = "gpsd"` device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpsdDevice {
    /// Host running gpsd.
    #[serde(default = "default_gpsd_host")]
    pub host: String,
    /// gpsd's TCP port.
    #[serde(default = "default_gpsd_port")]
    pub port: u16,
    /// A fix older than this is reported with bad quality.
    #[serde(default = "default_max_age", deserialize_with = "duration::de")]
    pub max_age: Duration,
    /// How often the receiver sends a fix (most send one a second; some 5 or 10 Hz). Polling
    /// faster only repeats the last fix: `edge-agent check` warns when `poll_interval` is below it.
    #[serde(default = "default_fix_interval", deserialize_with = "duration::de")]
    pub fix_interval: Duration,
    /// `source` (readings carry the fix's GPS time while it is within `max_clock_skew` of the
    /// gateway clock) or `gateway` (always the gateway's time).
    #[serde(default)]
    pub timestamps: TimestampMode,
    /// Largest accepted difference between GPS time and the gateway clock; beyond it readings
    /// get the gateway's time and quality `time-substituted`.
    #[serde(default = "default_max_clock_skew", deserialize_with = "duration::de")]
    pub max_clock_skew: Duration,
}

fn default_nmea_baud() -> u32 {
    DEFAULT_NMEA_BAUD
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_max_age() -> Duration {
    DEFAULT_MAX_AGE
}
fn default_fix_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_clock_skew() -> Duration {
    DEFAULT_MAX_CLOCK_SKEW
}
fn default_gpsd_host() -> String {
    "127.0.0.1".into()
}
fn default_gpsd_port() -> u16 {
    DEFAULT_GPSD_PORT
}

/// Keys of a GPS tag.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpsTag {
    /// Which figure of the fix: `latitude`, `longitude`, `altitude`, `speed`, `heading`,
    /// `fix_quality`, `satellites` or `hdop`.
    pub field: GpsField,
}

/// The figures a GPS tag can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpsField {
    /// Degrees, north positive (WGS 84).
    Latitude,
    /// Degrees, east positive.
    Longitude,
    /// Metres above mean sea level (GGA; gpsd `altMSL`/`alt`).
    Altitude,
    /// Speed over ground, km/h.
    Speed,
    /// Course over ground, degrees true.
    #[serde(alias = "course", alias = "track")]
    Heading,
    /// GGA fix quality: 0 invalid, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 estimated…
    FixQuality,
    /// Satellites used in the fix.
    Satellites,
    /// Horizontal dilution of precision.
    Hdop,
}

impl GpsField {
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GpsField::Latitude => "latitude",
            GpsField::Longitude => "longitude",
            GpsField::Altitude => "altitude",
            GpsField::Speed => "speed",
            GpsField::Heading => "heading",
            GpsField::FixQuality => "fix_quality",
            GpsField::Satellites => "satellites",
            GpsField::Hdop => "hdop",
        }
    }
    /// Integer (`fix_quality`, `satellites`) rather than float?
    pub fn is_integer(self) -> bool {
        matches!(self, GpsField::FixQuality | GpsField::Satellites)
    }
    /// Does the figure describe the receiver rather than a position (so it stays good when the
    /// fix is lost: "0 satellites, fix quality 0" is a true reading)?
    pub fn is_status(self) -> bool {
        self.is_integer()
    }
}

/// How the receiver is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum GpsLink {
    /// NMEA 0183 sentences on a serial port.
    Nmea(SerialSettings),
    /// gpsd's JSON protocol over TCP.
    Gpsd {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
}

/// A resolved GPS device.
#[derive(Debug, Clone, PartialEq)]
pub struct GpsDevice {
    /// Serial port or gpsd address.
    pub link: GpsLink,
    /// Oldest fix reported as good.
    pub max_age: Duration,
    /// How often the receiver sends a fix.
    pub fix_interval: Duration,
    /// Which clock stamps the readings, and the bound on GPS time vs the gateway clock.
    pub time: TimePolicy,
}

/// A resolved GPS tag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpsTag {
    /// Which figure.
    pub field: GpsField,
}

/// The GPS part of the tag-map loader (`protocol = "nmea"` / `"gpsd"`).
pub struct Protocol;

impl crate::drivers::registry::ProtocolConfig for Protocol {
    fn check(
        &self,
        devices: &[crate::drivers::Device],
        _tags: &[crate::drivers::Tag],
        device_spans: &[crate::settings::parse::Spans],
        _tag_spans: &[crate::settings::parse::Spans],
        diags: &mut crate::settings::Diagnostics,
    ) {
        for (di, d) in devices.iter().enumerate() {
            let Some(gps) = d.driver.gps() else { continue };
            if d.poll_interval < gps.fix_interval {
                diags.warning(
                    device_spans[di].of("poll_interval"),
                    format!("device '{}'", d.name),
                    format!(
                        "poll_interval {} is below the receiver's fix_interval {} (default 1s: most receivers send one fix per second), so faster polls repeat the last fix with its GPS timestamp",
                        duration::format(d.poll_interval),
                        duration::format(gps.fix_interval)
                    ),
                );
            }
        }
    }

    fn device_keys(&self, protocol: &str) -> Vec<&'static [&'static str]> {
        if protocol == "gpsd" {
            vec![fields_of::<RawGpsdDevice>()]
        } else {
            vec![fields_of::<RawNmeaDevice>()]
        }
    }

    fn tag_keys(&self, _dev: &DeviceDriver) -> Vec<&'static [&'static str]> {
        vec![fields_of::<RawGpsTag>()]
    }

    fn device(
        &self,
        protocol: &str,
        table: &STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut Diagnostics,
    ) -> DeviceDriver {
        let mut problems = Vec::new();
        let dev = if protocol == "gpsd" {
            let r = part::<RawGpsdDevice>(table, subject, diags);
            let (host, port, max_age, fix_interval, time) = r
                .map(|r| {
                    let time = TimePolicy {
                        mode: r.timestamps,
                        max_skew: r.max_clock_skew,
                    };
                    (r.host, r.port, r.max_age, r.fix_interval, time)
                })
                .unwrap_or((
                    default_gpsd_host(),
                    DEFAULT_GPSD_PORT,
                    DEFAULT_MAX_AGE,
                    default_fix_interval(),
                    TimePolicy::default(),
                ));
            if host.trim().is_empty() {
                problems.push(("host", "host must not be empty".to_owned()));
            }
            GpsDevice {
                link: GpsLink::Gpsd { host, port },
                max_age,
                fix_interval,
                time,
            }
        } else {
            let r = part::<RawNmeaDevice>(table, subject, diags);
            let r = r.unwrap_or(RawNmeaDevice {
                serial: String::new(),
                baud: DEFAULT_NMEA_BAUD,
                parity: Parity::None,
                data_bits: 8,
                stop_bits: 1,
                max_age: DEFAULT_MAX_AGE,
                fix_interval: default_fix_interval(),
                timestamps: TimestampMode::Source,
                max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            });
            serial_problems(r.baud, r.data_bits, r.stop_bits, &mut problems);
            GpsDevice {
                link: GpsLink::Nmea(SerialSettings {
                    path: r.serial,
                    baud: r.baud,
                    parity: r.parity,
                    data_bits: r.data_bits,
                    stop_bits: r.stop_bits,
                }),
                max_age: r.max_age,
                fix_interval: r.fix_interval,
                time: TimePolicy {
                    mode: r.timestamps,
                    max_skew: r.max_clock_skew,
                },
            }
        };
        if dev.fix_interval.is_zero() {
            problems.push((
                "fix_interval",
                "fix_interval must be greater than zero".into(),
            ));
        }
        if dev.max_age.is_zero() {
            problems.push(("max_age", "max_age must be greater than zero".into()));
        }
        if dev.time.max_skew.is_zero() {
            problems.push((
                "max_clock_skew",
                "max_clock_skew must be greater than zero (every reading would be time-substituted)"
                    .into(),
            ));
        }
        for (key, msg) in problems {
            diags.error(spans.of(key), subject, msg);
        }
        DeviceDriver::Gps(dev)
    }

    fn tag(
        &self,
        dev: &DeviceDriver,
        table: &STable<'_, '_>,
        _spans: &Spans,
        subject: &str,
        diags: &mut Diagnostics,
    ) -> Option<TagSource> {
        dev.gps()?;
        let raw: RawGpsTag = part(table, subject, diags)?;
        Some(TagSource::Gps(GpsTag { field: raw.field }))
    }
}

impl GpsDevice {
    /// One line on how the receiver is reached (`plan`, logs).
    pub fn describe(&self) -> String {
        match &self.link {
            GpsLink::Nmea(s) => format!("nmea {} {} baud", s.path, s.baud),
            GpsLink::Gpsd { host, port } => format!("gpsd {host}:{port}"),
        }
    }

    /// What one poll does (`plan`).
    pub fn plan_lines(&self) -> Vec<String> {
        let source = match &self.link {
            GpsLink::Nmea(_) => {
                "listens to GGA, RMC and VTG sentences (any talker id; checksums verified)"
            }
            GpsLink::Gpsd { .. } => "watches gpsd's TPV and SKY reports",
        };
        vec![
            source.to_owned(),
            format!(
                "each poll reports the current fix; a figure older than max_age {} is reported bad",
                crate::settings::duration::format(self.max_age)
            ),
            crate::model::describe_time_policy(&self.time, "GPS time"),
        ]
    }
}
