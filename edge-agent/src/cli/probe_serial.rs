//! `edge-agent probe nmea`, `probe gpsd` and `probe tls350`: commissioning serial devices. NMEA:
//! print every sentence as received and as decoded (or why it was dropped), then a summary; gpsd:
//! the same for its JSON reports. TLS-350: send one
//! command and print the raw reply, its checksum verdict and the decoded report.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::CliError;
use crate::drivers::gps::nmea::{self, Sentence};
use crate::drivers::lines::LineSplitter;
use crate::drivers::modbus::config::{Parity, SerialSettings};
use crate::drivers::tls350::config::{TlsDevice, TlsLink};
use crate::drivers::tls350::frame;
use crate::drivers::tls350::run::{connect, transact, widen};

fn parity(p: &str) -> Parity {
    match p {
        "even" => Parity::Even,
        "odd" => Parity::Odd,
        _ => Parity::None,
    }
}

/// One decoded sentence as text.
pub fn describe_sentence(s: &Sentence) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.6}"));
    match s {
        Sentence::Gga(g) => format!(
            "GGA fix quality {} sats {} hdop {} lat {} lon {} alt {} m",
            g.quality,
            g.satellites.map_or("-".into(), |n| n.to_string()),
            opt(g.hdop),
            opt(g.latitude),
            opt(g.longitude),
            opt(g.altitude)
        ),
        Sentence::Rmc(r) => format!(
            "RMC {} lat {} lon {} speed {} km/h course {} date {}",
            if r.valid { "valid" } else { "NO FIX (V)" },
            opt(r.latitude),
            opt(r.longitude),
            opt(r.speed_kmh),
            opt(r.course),
            r.date.map_or("-".into(), |d| format!(
                "{}-{:02}-{:02}",
                d.year, d.month, d.day
            ))
        ),
        Sentence::Vtg(v) => format!(
            "VTG course {} speed {} km/h{}",
            opt(v.course),
            opt(v.speed_kmh),
            if v.not_valid { " (not valid)" } else { "" }
        ),
        Sentence::Other(t) => format!("{t} (not used by the agent)"),
    }
}

async fn listen<R: AsyncRead + Unpin>(
    mut r: R,
    duration: Duration,
) -> Result<(u64, u64), CliError> {
    let mut split = LineSplitter::new(nmea::MAX_SENTENCE * 2);
    let (mut good, mut bad) = (0u64, 0u64);
    let deadline = Instant::now() + duration;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let n = match tokio::time::timeout(left, r.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(CliError::Io(e)),
        };
        let mut out = String::new();
        bad += split.push(&buf[..n], |line| {
            for piece in nmea::pieces(line) {
                let raw = String::from_utf8_lossy(piece);
                match nmea::parse(piece) {
                    Ok(s) => {
                        good += 1;
                        let _ = writeln!(out, "{}\n    {}", raw.trim_end(), describe_sentence(&s));
                    }
                    Err(e) => {
                        bad += 1;
                        let _ = writeln!(out, "{}\n    DROPPED: {e}", raw.trim_end());
                    }
                }
            }
        });
        print!("{out}");
    }
    Ok((good, bad))
}

/// `probe nmea`.
pub async fn nmea(
    serial: &str,
    baud: u32,
    parity_name: &str,
    seconds: Duration,
) -> Result<ExitCode, CliError> {
    let s = SerialSettings {
        path: serial.to_owned(),
        baud,
        parity: parity(parity_name),
        data_bits: 8,
        stop_bits: 1,
    };
    let port = crate::drivers::serial::open_serial(&s)
        .map_err(|e| CliError::Device(format!("cannot open {serial}: {e}")))?;
    println!(
        "listening to {serial} at {baud} baud for {}…",
        crate::settings::duration::format(seconds)
    );
    let (good, bad) = listen(port, seconds).await?;
    println!("{good} sentence(s) decoded, {bad} dropped");
    Ok(if good == 0 {
        println!(
            "no valid sentence: check the port, the baud rate (4800, 9600, 38400…) and the wiring"
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `probe gpsd`: watch gpsd's reports and print what the agent takes from each.
pub async fn gpsd(host: &str, port: u16, seconds: Duration) -> Result<ExitCode, CliError> {
    use crate::drivers::gps::gpsd as g;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| {
        CliError::Device(format!(
            "cannot connect to gpsd at {host}:{port}: no answer within 5s"
        ))
    })?
    .map_err(|e| CliError::Device(format!("cannot connect to gpsd at {host}:{port}: {e}")))?;
    conn.write_all(g::WATCH.as_bytes()).await?;
    println!(
        "watching gpsd at {host}:{port} for {}…",
        crate::settings::duration::format(seconds)
    );
    let mut split = LineSplitter::new(64 * 1024);
    let (mut used, mut bad) = (0u64, 0u64);
    let deadline = Instant::now() + seconds;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(CliError::Io(e)),
        };
        let mut out = String::new();
        bad += split.push(&buf[..n], |line| {
            let text = String::from_utf8_lossy(line);
            let short: String = text.chars().take(160).collect();
            match g::parse_line(&text) {
                Ok(Some(u)) => {
                    used += 1;
                    let vals: Vec<String> = u
                        .values
                        .iter()
                        .map(|(f, v)| format!("{} {v}", f.as_str()))
                        .collect();
                    let _ = writeln!(
                        out,
                        "{short}\n    {}{}",
                        u.no_fix
                            .as_deref()
                            .map_or(String::new(), |r| format!("{r}; ")),
                        vals.join(", ")
                    );
                }
                Ok(None) => {
                    let _ = writeln!(out, "{short}\n    (not used by the agent)");
                }
                Err(e) => {
                    bad += 1;
                    let _ = writeln!(out, "{short}\n    DROPPED: {e}");
                }
            }
        });
        print!("{out}");
    }
    println!("{used} report(s) used, {bad} dropped");
    Ok(if used == 0 {
        println!("no TPV/SKY report: is gpsd reading the receiver (gpsmon, cgps)?");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `<SOH>`/`<ETX>` and other control bytes made visible.
pub fn visible(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            0x01 => "<SOH>".to_owned(),
            0x03 => "<ETX>".to_owned(),
            0x20..=0x7e => char::from(b).to_string(),
            _ => format!("<{b:02X}>"),
        })
        .collect()
}

/// `probe tls350`.
#[allow(clippy::too_many_arguments)]
pub async fn tls350(
    serial: Option<String>,
    host: Option<String>,
    port: u16,
    baud: u32,
    parity_name: &str,
    data_bits: u8,
    command: &str,
    security_code: &str,
    timeout: Duration,
) -> Result<ExitCode, CliError> {
    let link = match (serial, host) {
        (Some(path), _) => TlsLink::Serial(SerialSettings {
            path,
            baud,
            parity: parity(parity_name),
            data_bits,
            stop_bits: 1,
        }),
        (None, Some(host)) => TlsLink::Tcp { host, port },
        (None, None) => return Err(CliError::Usage("give --serial PATH or --host HOST".into())),
    };
    if command.len() != 6 || !command.is_ascii() {
        return Err(CliError::Usage(format!(
            "--command {command:?}: expected a function and tank, e.g. i20100 (inventory, all tanks) or i20201"
        )));
    }
    let dev = TlsDevice {
        link,
        timeout,
        security_code: (!security_code.is_empty()).then(|| {
            flowsquare_service::secret::SecretSource::Inline(
                flowsquare_service::secret::Secret::new(security_code),
            )
        }),
        delivery_interval: Duration::ZERO,
        utc_offset_minutes: 0,
    };
    let mut l = connect(&dev)
        .await
        .map_err(|e| CliError::Device(e.to_string()))?;
    let mut cmd = vec![frame::SOH];
    cmd.extend_from_slice(security_code.as_bytes());
    cmd.extend_from_slice(command.as_bytes());
    let t0 = Instant::now();
    let reply = transact(&mut l, &cmd, timeout)
        .await
        .map_err(|e| CliError::Device(e.to_string()))?;
    let _ = l.shutdown().await;
    println!(
        "sent {} to {}, {} byte(s) back in {:.1} ms:\n{}",
        visible(&cmd),
        dev.describe(),
        reply.len(),
        t0.elapsed().as_secs_f64() * 1000.0,
        visible(&reply)
    );
    let data = match frame::open_reply(&reply, command) {
        Ok(d) => {
            println!("checksum ok");
            d
        }
        Err(e) => {
            println!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match &command[..4] {
        "i201" => match frame::parse_inventory(data) {
            Ok(inv) => {
                println!("console time {}", inv.time.code());
                let names = crate::drivers::tls350::config::TankField::ALL;
                for t in &inv.tanks {
                    let vals: Vec<String> = t
                        .values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let n = names.get(i).map_or("extra", |f| f.as_str());
                            format!("{n} {}", widen(*v))
                        })
                        .collect();
                    println!(
                        "tank {} product {} status {:04X}: {}",
                        t.tank,
                        t.product,
                        t.status,
                        vals.join(", ")
                    );
                }
            }
            Err(e) => println!("cannot decode the inventory: {e}"),
        },
        "i202" => match frame::parse_deliveries(data) {
            Ok(r) => {
                println!(
                    "console time {}, {} deliveries",
                    r.time.code(),
                    r.deliveries.len()
                );
                for d in &r.deliveries {
                    let vals: Vec<String> = frame::DELIVERY_FIELDS
                        .iter()
                        .filter_map(|n| d.get(n).map(|v| format!("{n} {}", widen(v))))
                        .collect();
                    println!(
                        "tank {} {}–{}: {}",
                        d.tank,
                        d.start.code(),
                        d.end.code(),
                        vals.join(", ")
                    );
                }
            }
            Err(e) => println!("cannot decode the delivery report: {e}"),
        },
        _ => println!("(no decoder for {command}; raw reply above)"),
    }
    Ok(ExitCode::SUCCESS)
}
