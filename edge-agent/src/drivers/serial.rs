//! Serial ports, shared by every serial driver (Modbus RTU, NMEA 0183 GPS, TLS-350): the line
//! settings a tag map gives, their range checks, and opening the port.

use std::time::Duration;

use serde::Deserialize;

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (8N1 is the most common field setting).
    #[default]
    None,
    /// Even parity (the Modbus specification's default, 8E1).
    Even,
    /// Odd parity.
    Odd,
}

/// Serial line settings of a port (an RTU bus, a GPS receiver, a tank gauge console).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    /// Device path.
    pub path: String,
    /// Baud rate.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Data bits.
    pub data_bits: u8,
    /// Stop bits.
    pub stop_bits: u8,
}

impl SerialSettings {
    /// Bits on the wire per character (start + data + parity + stop).
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }
    /// Time to transmit `bytes` characters.
    pub fn wire_time(&self, bytes: u32) -> Duration {
        Duration::from_secs_f64(
            f64::from(bytes * self.bits_per_char()) / f64::from(self.baud.max(1)),
        )
    }
}

/// Range checks of serial line settings, as `(key, message)`.
pub fn serial_problems(
    baud: u32,
    data_bits: u8,
    stop_bits: u8,
    problems: &mut Vec<(&'static str, String)>,
) {
    if !(7..=8).contains(&data_bits) {
        problems.push(("data_bits", format!("data_bits {data_bits} must be 7 or 8")));
    }
    if !(1..=2).contains(&stop_bits) {
        problems.push(("stop_bits", format!("stop_bits {stop_bits} must be 1 or 2")));
    }
    if !(300..=4_000_000).contains(&baud) {
        problems.push(("baud", format!("baud {baud} out of range 300..=4000000")));
    }
}

/// Open a serial port with `s`'s line settings.
pub fn open_serial(s: &SerialSettings) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    use tokio_serial::SerialPortBuilderExt;
    tokio_serial::new(&s.path, s.baud)
        .parity(match s.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(if s.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        })
        .stop_bits(if s.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .open_native_async()
}
