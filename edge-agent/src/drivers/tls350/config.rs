//! Veeder-Root TLS-350 keys of a tag map: the `tls-350` device keys (serial port or TCP) and the
//! `tank` / `field` keys of an inventory tag.
//!
//! Serial defaults are 9600 baud, 7 data bits, odd parity, 1 stop bit: the port settings shown
//! in Veeder-Root's serial interface manuals (e.g. TLS2 manual 577013-767, function 881 example);
//! they must match the console's RS-232 setup. With a security code enabled on the port, a
//! command without it is not answered at all (manual §4), so a wrong or missing
//! `security_code` shows as timeouts.

use flowsquare_service::secret::{self, Secret, SecretSource};
use serde::Deserialize;
use std::time::Duration;

use crate::drivers::serial::{serial_problems, Parity, SerialSettings};
use crate::drivers::{DeviceDriver, TagSource};
use crate::settings::duration;
use crate::settings::parse::{fields_of, part, STable, Spans};
use crate::settings::Diagnostics;

/// Default TCP port of TLS-350 serial-to-Ethernet interfaces.
pub const DEFAULT_PORT: u16 = 10001;
/// Default answer timeout (a console answering an all-tanks report can take a while).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default interval of the `i202` delivery report poll.
pub const DEFAULT_DELIVERY_INTERVAL: Duration = Duration::from_secs(300);

/// Keys of a `protocol = "tls-350"` device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsDevice {
    /// Serial device path of the console's RS-232 port (give this or `host`).
    #[serde(default)]
    pub serial: Option<String>,
    /// Host of the console's TCP/IP interface (give this or `serial`).
    #[serde(default)]
    pub host: Option<String>,
    /// TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Serial baud rate (must match the console's RS-232 setup).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Serial parity: `none`, `even` or `odd`.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// Serial data bits, 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Serial stop bits, 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Time to wait for a complete answer.
    #[serde(default = "default_timeout", deserialize_with = "duration::de")]
    pub timeout: Duration,
    /// The console's RS-232 security code (6 characters), if one is set. Written here it works,
    /// with a `check` warning: prefer `security_code_file` or `security_code_credential`.
    #[serde(default)]
    pub security_code: Option<String>,
    /// File holding the security code (the code alone; one trailing newline is ignored).
    #[serde(default)]
    pub security_code_file: Option<std::path::PathBuf>,
    /// systemd credential holding the security code (`$CREDENTIALS_DIRECTORY/<name>`, passed
    /// with `LoadCredential=`).
    #[serde(default)]
    pub security_code_credential: Option<String>,
    /// How often to read the `i202` delivery report; `"0s"` turns delivery capture off.
    #[serde(
        default = "default_delivery_interval",
        deserialize_with = "duration::de"
    )]
    pub delivery_interval: Duration,
    /// Offset of the console's clock from UTC, e.g. `"+02:00"` (its reports carry local time
    /// without a zone).
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_baud() -> u32 {
    9600
}
fn default_parity() -> Parity {
    Parity::Odd
}
fn default_data_bits() -> u8 {
    7
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_delivery_interval() -> Duration {
    DEFAULT_DELIVERY_INTERVAL
}
fn default_utc_offset() -> String {
    "+00:00".into()
}

/// Keys of a TLS-350 tag.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsTag {
    /// Tank number, 1–99.
    pub tank: u8,
    /// Which figure of the in-tank inventory: `volume`, `tc_volume`, `ullage`, `height`,
    /// `water`, `temperature` or `water_volume`.
    pub field: TankField,
}

/// The figures of one tank in the `i201` in-tank inventory report, in reply order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TankField {
    /// Gross volume.
    Volume,
    /// Temperature-compensated (net) volume.
    TcVolume,
    /// Ullage (room left).
    Ullage,
    /// Product height.
    Height,
    /// Water height.
    Water,
    /// Product temperature.
    Temperature,
    /// Water volume.
    WaterVolume,
}

impl TankField {
    /// All fields, in the order of the report's floats.
    pub const ALL: [TankField; 7] = [
        TankField::Volume,
        TankField::TcVolume,
        TankField::Ullage,
        TankField::Height,
        TankField::Water,
        TankField::Temperature,
        TankField::WaterVolume,
    ];
    /// Index of the field's float in a tank record.
    pub fn index(self) -> usize {
        self as usize
    }
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TankField::Volume => "volume",
            TankField::TcVolume => "tc_volume",
            TankField::Ullage => "ullage",
            TankField::Height => "height",
            TankField::Water => "water",
            TankField::Temperature => "temperature",
            TankField::WaterVolume => "water_volume",
        }
    }
}

/// How the console is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsLink {
    /// RS-232.
    Serial(SerialSettings),
    /// TCP/IP interface.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
}

/// A resolved TLS-350 console.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsDevice {
    /// Serial port or TCP address.
    pub link: TlsLink,
    /// Answer timeout.
    pub timeout: Duration,
    /// Where the security code prefixed to every command comes from (`None`: no code). Read
    /// when the device's runtime starts ([`TlsDevice::read_security_code`]).
    pub security_code: Option<SecretSource>,
    /// `i202` poll interval; zero = off.
    pub delivery_interval: Duration,
    /// Console clock offset from UTC, minutes.
    pub utc_offset_minutes: i32,
}

impl TlsDevice {
    /// The security code, read from its file or credential (empty: none).
    pub fn read_security_code(&self) -> Result<Secret, String> {
        let Some(src) = &self.security_code else {
            return Ok(Secret::default());
        };
        let code = src.read().map_err(|e| format!("security_code: {e}"))?;
        check_security_code(code.expose()).map_err(|e| format!("{e} ({src:?})"))?;
        Ok(code)
    }
}

/// A security code is 6 printable ASCII characters.
fn check_security_code(code: &str) -> Result<(), &'static str> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("security_code must be 6 printable ASCII characters");
    }
    Ok(())
}

/// A resolved TLS-350 tag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TlsTag {
    /// Tank number.
    pub tank: u8,
    /// Which figure.
    pub field: TankField,
}

/// Parse `"+02:00"`, `"-05:30"`, `"Z"` into minutes.
pub fn parse_utc_offset(s: &str) -> Option<i32> {
    let s = s.trim();
    if s == "Z" || s == "UTC" {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && (0..60).contains(&m)).then_some(sign * (h * 60 + m))
}

/// Where the security code comes from; an inline one is checked here and warned about.
fn security_code(
    r: &RawTlsDevice,
    spans: &Spans,
    subject: &str,
    diags: &mut Diagnostics,
    problems: &mut Vec<(&'static str, String)>,
) -> Option<SecretSource> {
    let inline = r.security_code.clone().filter(|c| !c.is_empty());
    let src = match SecretSource::from_keys(
        "security_code",
        inline,
        r.security_code_file.clone(),
        r.security_code_credential.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            problems.push(("security_code", e));
            return None;
        }
    };
    if let Some(SecretSource::Inline(code)) = &src {
        if let Err(e) = check_security_code(code.expose()) {
            problems.push(("security_code", e.into()));
        }
        diags.warning(
            spans.of("security_code"),
            subject,
            secret::inline_warning(
                "security_code",
                "the console's security code",
                "security_code_file = \"/path\" or security_code_credential = \"NAME\"",
            ),
        );
    }
    src
}

/// The TLS-350 part of the tag-map loader (`protocol = "tls-350"`).
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
            if let Some(t) = d.driver.tls350() {
                if t.timeout > d.poll_interval {
                    diags.warning(
                        device_spans[di].of("timeout"),
                        format!("device '{}'", d.name),
                        format!(
                            "timeout {} is longer than poll_interval {}: a console that stops answering delays every cycle",
                            duration::format(t.timeout),
                            duration::format(d.poll_interval)
                        ),
                    );
                }
            }
        }
    }

    fn device_keys(&self, _protocol: &str) -> Vec<&'static [&'static str]> {
        vec![fields_of::<RawTlsDevice>()]
    }

    fn tag_keys(&self, _dev: &DeviceDriver) -> Vec<&'static [&'static str]> {
        vec![fields_of::<RawTlsTag>()]
    }

    fn device(
        &self,
        _protocol: &str,
        table: &STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut Diagnostics,
    ) -> DeviceDriver {
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        let raw = part::<RawTlsDevice>(table, subject, diags);
        let link = match &raw {
            Some(r) => match (&r.serial, &r.host) {
                (Some(path), None) => {
                    serial_problems(r.baud, r.data_bits, r.stop_bits, &mut problems);
                    TlsLink::Serial(SerialSettings {
                        path: path.clone(),
                        baud: r.baud,
                        parity: r.parity,
                        data_bits: r.data_bits,
                        stop_bits: r.stop_bits,
                    })
                }
                (None, Some(host)) => TlsLink::Tcp {
                    host: host.clone(),
                    port: r.port,
                },
                (Some(_), Some(_)) => {
                    problems.push((
                        "host",
                        "give either `serial` (RS-232) or `host` (TCP/IP interface), not both"
                            .into(),
                    ));
                    TlsLink::Tcp {
                        host: String::new(),
                        port: r.port,
                    }
                }
                (None, None) => {
                    problems.push((
                        "protocol",
                        "a tls-350 console needs `serial` (RS-232 path) or `host` (TCP/IP interface)"
                            .into(),
                    ));
                    TlsLink::Tcp {
                        host: String::new(),
                        port: r.port,
                    }
                }
            },
            None => TlsLink::Tcp {
                host: String::new(),
                port: DEFAULT_PORT,
            },
        };
        let timeout = raw.as_ref().map_or(DEFAULT_TIMEOUT, |r| r.timeout);
        if timeout.is_zero() {
            problems.push(("timeout", "timeout must be greater than zero".into()));
        }
        let security_code = raw
            .as_ref()
            .and_then(|r| security_code(r, spans, subject, diags, &mut problems));
        let offset_text = raw
            .as_ref()
            .map_or_else(default_utc_offset, |r| r.utc_offset.clone());
        let utc_offset_minutes = parse_utc_offset(&offset_text).unwrap_or_else(|| {
            problems.push((
                "utc_offset",
                format!("utc_offset {offset_text:?}: expected \"+HH:MM\" or \"-HH:MM\", e.g. \"+02:00\""),
            ));
            0
        });
        for (key, msg) in problems {
            diags.error(spans.of(key), subject, msg);
        }
        DeviceDriver::Tls350(TlsDevice {
            link,
            timeout,
            security_code,
            delivery_interval: raw
                .as_ref()
                .map_or(DEFAULT_DELIVERY_INTERVAL, |r| r.delivery_interval),
            utc_offset_minutes,
        })
    }

    fn tag(
        &self,
        dev: &DeviceDriver,
        table: &STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut Diagnostics,
    ) -> Option<TagSource> {
        dev.tls350()?;
        let raw: RawTlsTag = part(table, subject, diags)?;
        if !(1..=99).contains(&raw.tank) {
            diags.error(
                spans.of("tank"),
                subject,
                format!("tank {} out of range 1..=99", raw.tank),
            );
        }
        Some(TagSource::Tls350(TlsTag {
            tank: raw.tank,
            field: raw.field,
        }))
    }
}

impl TlsDevice {
    /// One line on how the console is reached (`plan`, logs).
    pub fn describe(&self) -> String {
        match &self.link {
            TlsLink::Serial(s) => format!(
                "tls-350 {} {} baud {}{}{}",
                s.path,
                s.baud,
                s.data_bits,
                match s.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                },
                s.stop_bits
            ),
            TlsLink::Tcp { host, port } => format!("tls-350 {host}:{port}"),
        }
    }

    /// The commands of one cycle (`plan`).
    pub fn plan_lines(&self, tanks: &[u8]) -> Vec<String> {
        let tanks: Vec<String> = tanks.iter().map(u8::to_string).collect();
        let mut l = vec![format!(
            "i20100 in-tank inventory (all tanks) every cycle, for tanks {}; timeout {}",
            if tanks.is_empty() {
                "-".to_owned()
            } else {
                tanks.join(", ")
            },
            crate::settings::duration::format(self.timeout)
        )];
        if self.delivery_interval.is_zero() {
            l.push("delivery capture off (delivery_interval = \"0s\")".into());
        } else {
            l.push(format!(
                "i20200 delivery report every {}: new deliveries become `delivery` events",
                crate::settings::duration::format(self.delivery_interval)
            ));
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_offsets() {
        assert_eq!(parse_utc_offset("+02:00"), Some(120));
        assert_eq!(parse_utc_offset("-05:30"), Some(-330));
        assert_eq!(parse_utc_offset("Z"), Some(0));
        assert_eq!(parse_utc_offset("+2"), Some(120));
        assert_eq!(parse_utc_offset("2:00"), None);
        assert_eq!(parse_utc_offset("+99:00"), None);
    }
}
