//! Serve loops: Modbus TCP on a [`TcpListener`], Modbus RTU on a serial port (or anything
//! byte-stream-like: a pseudo-terminal, an in-memory duplex pipe).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_serial::SerialStream;

use super::error::SimError;
use super::faults::{garbage_pdu, noise, nth};
use super::frame::{
    crc16, decode_request, encode_response, rtu_adu, scan_rtu_request, tcp_adu, RtuScan,
    MAX_RTU_FRAME,
};
use super::service::{Outcome, Reply, SimService, Transport};
use super::simulator::Simulator;

/// On RTU, a partial frame followed by this much silence is discarded (resynchronisation after
/// noise). Far longer than the 3.5-character gap of any real baud rate, so that a slow writer
/// (or a pseudo-terminal) never has a frame cut in two.
pub const RTU_RESYNC_TIMEOUT: Duration = Duration::from_millis(100);

/// Back-off after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serve Modbus TCP on `listener` until `shutdown` completes, then close every connection.
///
/// Each connection is served in its own task, one request at a time. The MBAP unit id selects
/// the unit; an unknown unit id is answered with exception 0x0B (GatewayTargetDevice). A
/// connection sending a malformed MBAP header (protocol id ≠ 0, length < 2 or > 254) is closed.
pub async fn serve_tcp<F>(
    listener: TcpListener,
    sim: Arc<Simulator>,
    shutdown: F,
) -> Result<(), SimError>
where
    F: Future<Output = ()>,
{
    let service = SimService::new(sim, Transport::Tcp);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "modbus tcp connection accepted");
                    let service = service.clone();
                    connections.spawn(async move {
                        match serve_tcp_connection(stream, service).await {
                            Ok(()) => tracing::debug!(%peer, "modbus tcp connection closed"),
                            Err(e) => tracing::debug!(%peer, error = %e, "modbus tcp connection ended"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a modbus tcp connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

async fn serve_tcp_connection(mut stream: TcpStream, service: SimService) -> io::Result<()> {
    // Answers are small and latency matters more than throughput.
    let _ = stream.set_nodelay(true);
    let sim = Arc::clone(service.simulator());
    let mut per_unit_requests: HashMap<u8, u64> = HashMap::new();
    loop {
        let mut header = [0u8; 7];
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let transaction = u16::from_be_bytes([header[0], header[1]]);
        let protocol = u16::from_be_bytes([header[2], header[3]]);
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let unit_id = header[6];
        if protocol != 0 || !(2..=254).contains(&length) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad MBAP header: protocol id {protocol}, length {length}"),
            ));
        }
        let mut pdu = vec![0u8; length - 1];
        stream.read_exact(&mut pdu).await?;

        if let Some(unit) = sim.unit(unit_id) {
            let every = unit.faults().read(|f| f.drop_connection_every);
            let count = per_unit_requests.entry(unit_id).or_default();
            *count += 1;
            if nth(every, *count) {
                unit.note_request();
                unit.counters
                    .dropped_connections
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(unit = unit_id, "fault: dropping the connection");
                return Ok(());
            }
        }

        let function = pdu.first().copied().unwrap_or(0);
        let outcome = service
            .handle_decoded(unit_id, function, decode_request(&pdu))
            .await;
        let Outcome::Reply(reply) = outcome else {
            continue;
        };
        let body = tcp_reply_pdu(&reply);
        stream
            .write_all(&tcp_adu(transaction, reply.unit_id, &body))
            .await?;
    }
}

fn tcp_reply_pdu(reply: &Reply) -> Vec<u8> {
    let pdu = encode_response(reply.function, &reply.result);
    match reply.garbage {
        Some(seed) => garbage_pdu(pdu.len(), seed),
        None => pdu,
    }
}

fn rtu_reply_adu(reply: &Reply) -> Vec<u8> {
    let pdu = encode_response(reply.function, &reply.result);
    match reply.garbage {
        None => rtu_adu(reply.unit_id, &pdu),
        Some(seed) => {
            // Unit id kept, the rest noise, and a CRC that is wrong by construction.
            let mut adu = vec![reply.unit_id];
            adu.extend(noise(pdu.len(), seed));
            let bad_crc = crc16(&adu) ^ 0xA5A5;
            adu.extend(bad_crc.to_le_bytes());
            adu
        }
    }
}

/// Serve Modbus RTU on `port` (a [`SerialStream`], a pseudo-terminal, or any byte stream) until
/// `shutdown` completes or the stream ends (Ok) or fails (Err).
///
/// Requests are served one at a time, as on a real bus. Frames are delimited by the length
/// their function code implies and checked by CRC; noise is skipped byte by byte, and a partial
/// frame followed by [`RTU_RESYNC_TIMEOUT`] of silence is discarded. Only configured units
/// answer (each honouring its own faults); unit 0 is broadcast.
pub async fn serve_rtu<T, F>(port: T, sim: Arc<Simulator>, shutdown: F) -> Result<(), SimError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let service = SimService::new(sim, Transport::Rtu);
    tokio::select! {
        r = rtu_loop(port, service) => r,
        () = shutdown => Ok(()),
    }
}

async fn rtu_loop<T>(mut port: T, service: SimService) -> Result<(), SimError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(2 * MAX_RTU_FRAME);
    let mut chunk = [0u8; 512];
    loop {
        // Serve every complete frame already buffered.
        loop {
            match scan_rtu_request(&buf) {
                RtuScan::Frame(n) => {
                    // `Frame(n)` guarantees n >= 4 (unit id, function code, CRC).
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    let unit_id = frame[0];
                    let pdu = &frame[1..n - 2];
                    let function = pdu.first().copied().unwrap_or(0);
                    let outcome = service
                        .handle_decoded(unit_id, function, decode_request(pdu))
                        .await;
                    if let Outcome::Reply(reply) = outcome {
                        let adu = rtu_reply_adu(&reply);
                        port.write_all(&adu)
                            .await
                            .map_err(|e| SimError::io("writing to the serial port", e))?;
                        port.flush()
                            .await
                            .map_err(|e| SimError::io("writing to the serial port", e))?;
                    }
                }
                RtuScan::Skip => {
                    buf.remove(0);
                }
                RtuScan::Incomplete => break,
            }
        }
        let read = if buf.is_empty() {
            port.read(&mut chunk).await
        } else {
            match tokio::time::timeout(RTU_RESYNC_TIMEOUT, port.read(&mut chunk)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(bytes = buf.len(), "rtu: discarding an incomplete frame");
                    buf.clear();
                    continue;
                }
            }
        };
        match read {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SimError::io("reading from the serial port", e)),
        }
        // Noise without any frame must not grow the buffer without bound.
        if buf.len() > 4 * MAX_RTU_FRAME {
            let excess = buf.len() - 2 * MAX_RTU_FRAME;
            buf.drain(..excess);
        }
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Serial line settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// Device path (`/dev/ttyUSB0`, or a pseudo-terminal such as one made by socat).
    pub path: String,
    /// Baud rate.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Data bits, 5–8.
    pub data_bits: u8,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl SerialConfig {
    /// 8N1 at `baud` on `path`.
    pub fn new(path: impl Into<String>, baud: u32) -> Self {
        SerialConfig {
            path: path.into(),
            baud,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        }
    }
}

/// Open a serial port (or pseudo-terminal) by path; no udev needed.
pub fn open_serial(cfg: &SerialConfig) -> Result<SerialStream, SimError> {
    let bad = |msg: String| SimError::Serial {
        path: cfg.path.clone(),
        source: tokio_serial::Error::new(tokio_serial::ErrorKind::InvalidInput, msg),
    };
    let data_bits = match cfg.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        8 => tokio_serial::DataBits::Eight,
        n => return Err(bad(format!("data bits must be 5–8, not {n}"))),
    };
    let stop_bits = match cfg.stop_bits {
        1 => tokio_serial::StopBits::One,
        2 => tokio_serial::StopBits::Two,
        n => return Err(bad(format!("stop bits must be 1 or 2, not {n}"))),
    };
    let parity = match cfg.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let builder = tokio_serial::new(cfg.path.as_str(), cfg.baud)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .parity(parity)
        .flow_control(tokio_serial::FlowControl::None);
    SerialStream::open(&builder).map_err(|source| SimError::Serial {
        path: cfg.path.clone(),
        source,
    })
}

/// Open the serial port of `cfg` and [`serve_rtu`] on it.
pub async fn serve_rtu_path<F>(
    cfg: &SerialConfig,
    sim: Arc<Simulator>,
    shutdown: F,
) -> Result<(), SimError>
where
    F: Future<Output = ()>,
{
    let port = open_serial(cfg)?;
    serve_rtu(port, sim, shutdown).await
}
