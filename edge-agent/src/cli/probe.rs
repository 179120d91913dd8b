//! `edge-agent probe modbus` (and the dispatch to `probe nmea` / `probe tls350`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::CliError;
use crate::drivers::modbus::config::{Parity, RegisterKind, SerialSettings};
use crate::drivers::modbus::plan::ReadRequest;
use crate::drivers::modbus::probe::{render_bits, render_registers};
use crate::drivers::modbus::transport::{self, Words};

/// Protocols `probe` speaks.
#[derive(Debug, Subcommand)]
pub enum ProbeProtocol {
    /// Read raw Modbus registers (TCP with --host, RTU with --serial) and decode them every way.
    Modbus {
        /// Modbus TCP: device host name or address.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        host: Option<String>,
        /// Modbus TCP port.
        #[arg(long, default_value_t = 502)]
        port: u16,
        /// Modbus RTU: serial device path.
        #[arg(long)]
        serial: Option<String>,
        /// RTU baud rate.
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// RTU parity: none, even, odd.
        #[arg(long, default_value = "none", value_parser = ["none", "even", "odd"])]
        parity: String,
        /// RTU data bits.
        #[arg(long, default_value_t = 8)]
        data_bits: u8,
        /// RTU stop bits.
        #[arg(long, default_value_t = 1)]
        stop_bits: u8,
        /// Unit (slave) id.
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// What to read: TABLE:ADDRESS, TABLE = holding | input | coil | discrete.
        #[arg(long)]
        register: String,
        /// How many registers (bits).
        #[arg(long, default_value_t = 4)]
        count: u16,
        /// 1 if ADDRESS is a 1-based register number rather than the protocol address.
        #[arg(long, default_value_t = 0)]
        address_base: u8,
        /// Answer timeout.
        #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
        timeout: Duration,
    },
    /// Listen to a GPS receiver and print every NMEA sentence, decoded or why it was dropped.
    ///
    /// Example: edge-agent probe nmea --serial /dev/ttyACM0 --baud 9600 --seconds 10s
    Nmea {
        /// Serial device path of the receiver.
        #[arg(long)]
        serial: String,
        /// Baud rate (NMEA 0183 standard: 4800; many receivers: 9600 or 38400).
        #[arg(long, default_value_t = 4800)]
        baud: u32,
        /// Parity: none, even, odd.
        #[arg(long, default_value = "none", value_parser = ["none", "even", "odd"])]
        parity: String,
        /// How long to listen.
        #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
        seconds: Duration,
    },
    /// Watch gpsd and print every report with what the agent takes from it.
    ///
    /// Example: edge-agent probe gpsd --host 127.0.0.1 --seconds 10s
    Gpsd {
        /// gpsd host.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// gpsd port.
        #[arg(long, default_value_t = 2947)]
        port: u16,
        /// How long to watch.
        #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
        seconds: Duration,
    },
    /// Send one command to a Veeder-Root TLS-350 and print the raw reply, its checksum verdict
    /// and the decoded report (i201 inventory, i202 deliveries).
    ///
    /// Example: edge-agent probe tls350 --serial /dev/ttyS1 --command i20100
    Tls350 {
        /// RS-232: serial device path.
        #[arg(long, conflicts_with = "host", required_unless_present = "host")]
        serial: Option<String>,
        /// TCP/IP interface: host.
        #[arg(long)]
        host: Option<String>,
        /// TCP port.
        #[arg(long, default_value_t = 10001)]
        port: u16,
        /// Serial baud rate.
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// Serial parity: none, even, odd.
        #[arg(long, default_value = "odd", value_parser = ["none", "even", "odd"])]
        parity: String,
        /// Serial data bits.
        #[arg(long, default_value_t = 7)]
        data_bits: u8,
        /// Function and tank: i20100 = inventory of all tanks, i20201 = deliveries of tank 1.
        #[arg(long, default_value = "i20100")]
        command: String,
        /// The console's security code, if set (visible to other users in the process list:
        /// prefer --security-code-file).
        #[arg(long, default_value = "")]
        security_code: String,
        /// File holding the console's security code (one trailing newline ignored).
        #[arg(long, conflicts_with = "security_code")]
        security_code_file: Option<std::path::PathBuf>,
        /// Answer timeout.
        #[arg(long, default_value = "3s", value_parser = super::parse_duration)]
        timeout: Duration,
    },
}

pub async fn run(p: ProbeProtocol) -> Result<ExitCode, CliError> {
    match p {
        ProbeProtocol::Nmea {
            serial,
            baud,
            parity,
            seconds,
        } => super::probe_serial::nmea(&serial, baud, &parity, seconds).await,
        ProbeProtocol::Gpsd {
            host,
            port,
            seconds,
        } => super::probe_serial::gpsd(&host, port, seconds).await,
        ProbeProtocol::Tls350 {
            serial,
            host,
            port,
            baud,
            parity,
            data_bits,
            command,
            security_code,
            security_code_file,
            timeout,
        } => {
            let security_code = match security_code_file {
                Some(p) => flowsquare_service::secret::SecretSource::File(p)
                    .read()
                    .map_err(|e| CliError::Usage(e.to_string()))?
                    .expose()
                    .to_owned(),
                None => security_code,
            };
            super::probe_serial::tls350(
                serial,
                host,
                port,
                baud,
                &parity,
                data_bits,
                &command,
                &security_code,
                timeout,
            )
            .await
        }
        m @ ProbeProtocol::Modbus { .. } => modbus(m).await,
    }
}

/// `probe modbus`: raw registers decoded every way.
async fn modbus(p: ProbeProtocol) -> Result<ExitCode, CliError> {
    let ProbeProtocol::Modbus {
        host,
        port,
        serial,
        baud,
        parity,
        data_bits,
        stop_bits,
        unit,
        register,
        count,
        address_base,
        timeout,
    } = p
    else {
        return Err(CliError::Usage("not a Modbus probe".into()));
    };
    let (kind, addr) = register
        .split_once(':')
        .and_then(|(k, a)| Some((RegisterKind::parse(k)?, a.parse::<u32>().ok()?)))
        .ok_or_else(|| CliError::Usage(format!("--register {register:?}: expected TABLE:ADDRESS, e.g. holding:100 (tables: holding, input, coil, discrete)")))?;
    let start = addr
        .checked_sub(u32::from(address_base.min(1)))
        .and_then(|a| u16::try_from(a).ok())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "address {addr} out of range for address base {address_base}"
            ))
        })?;
    let max = if kind.is_bit() { 2000 } else { 125 };
    if count == 0 || count > max || u32::from(start) + u32::from(count) > 65_536 {
        return Err(CliError::Usage(format!(
            "--count {count}: must be 1..={max} and stay within 65535"
        )));
    }
    let (mut ctx, target) = match (host, serial) {
        (Some(h), _) => (
            transport::connect_tcp(&h, port, unit, timeout).await?,
            format!("{h}:{port}"),
        ),
        (None, Some(path)) => {
            let s = SerialSettings {
                path: path.clone(),
                baud,
                parity: match parity.as_str() {
                    "even" => Parity::Even,
                    "odd" => Parity::Odd,
                    _ => Parity::None,
                },
                data_bits,
                stop_bits,
            };
            (transport::open_rtu(&s, unit)?, path)
        }
        (None, None) => {
            return Err(CliError::Usage(
                "give --host (TCP) or --serial (RTU)".into(),
            ))
        }
    };
    let req = ReadRequest {
        kind,
        start,
        count,
        tags: Vec::new(),
    };
    let t0 = std::time::Instant::now();
    let res = transport::read(&mut ctx, &req, timeout).await?;
    let rtt = t0.elapsed();
    println!(
        "{} {}..{} from {target} unit {unit}: FC{}, {count} {}, answered in {:.1} ms",
        kind.as_str(),
        start,
        u32::from(start) + u32::from(count) - 1,
        kind.function_code(),
        if kind.is_bit() { "bits" } else { "registers" },
        rtt.as_secs_f64() * 1000.0
    );
    match res {
        Ok(Words::Registers(w)) => print!("{}", render_registers(start, &w)),
        Ok(Words::Bits(b)) => print!(
            "{}",
            render_bits(start, &b[..usize::from(count).min(b.len())])
        ),
        Err(exc) => {
            println!("the device answered {exc}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
