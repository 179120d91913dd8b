//! Opening links (TCP connection or serial port) and executing one read request on them.

use std::time::Duration;

use tokio_modbus::client::{Context, Reader};
use tokio_modbus::Slave;

use super::config::{RegisterKind, SerialSettings};
use super::error::{Exception, LinkError, ModbusResult};
use super::plan::ReadRequest;

/// Words or bits read by one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Words {
    /// Register values.
    Registers(Vec<u16>),
    /// Coil / discrete input values.
    Bits(Vec<bool>),
}

/// Connect to a Modbus TCP device (name resolution + connect, bounded by `timeout`).
pub async fn connect_tcp(
    host: &str,
    port: u16,
    unit: u8,
    timeout: Duration,
) -> Result<Context, LinkError> {
    let target = format!("{host}:{port}");
    let fut = async {
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address for host")
            })?;
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)).await
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) => Err(LinkError::Connect {
            target,
            reason: e.to_string(),
        }),
        Err(_) => Err(LinkError::Connect {
            target,
            reason: format!("no answer within {}ms", timeout.as_millis()),
        }),
    }
}

/// Open a serial port for Modbus RTU.
pub fn open_rtu(s: &SerialSettings, unit: u8) -> Result<Context, LinkError> {
    let port = crate::drivers::serial::open_serial(s).map_err(|e| LinkError::Connect {
        target: s.path.clone(),
        reason: e.to_string(),
    })?;
    Ok(tokio_modbus::client::rtu::attach_slave(port, Slave(unit)))
}

fn flatten<T>(r: tokio_modbus::Result<T>) -> ModbusResult<T> {
    match r {
        Ok(Ok(v)) => Ok(Ok(v)),
        Ok(Err(code)) => Ok(Err(Exception(u8::from(code)))),
        Err(tokio_modbus::Error::Transport(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(LinkError::Protocol(e.to_string()))
        }
        Err(tokio_modbus::Error::Transport(e)) => Err(LinkError::Io(e)),
        Err(tokio_modbus::Error::Protocol(e)) => Err(LinkError::Protocol(e.to_string())),
    }
}

/// Execute one read request, bounded by `timeout`.
pub async fn read(ctx: &mut Context, req: &ReadRequest, timeout: Duration) -> ModbusResult<Words> {
    let (a, n) = (req.start, req.count);
    let fut = async {
        match req.kind {
            RegisterKind::Coil => flatten(ctx.read_coils(a, n).await).map(|r| r.map(Words::Bits)),
            RegisterKind::Discrete => {
                flatten(ctx.read_discrete_inputs(a, n).await).map(|r| r.map(Words::Bits))
            }
            RegisterKind::Holding => {
                flatten(ctx.read_holding_registers(a, n).await).map(|r| r.map(Words::Registers))
            }
            RegisterKind::Input => {
                flatten(ctx.read_input_registers(a, n).await).map(|r| r.map(Words::Registers))
            }
        }
    };
    let out = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| LinkError::Timeout(timeout))??;
    // A well-framed answer with fewer values than asked for is a decode problem, not a partial
    // success: tokio-modbus pads bit answers to a multiple of 8, so compare with >=.
    match &out {
        Ok(Words::Registers(w)) if w.len() != usize::from(n) => Err(LinkError::Protocol(format!(
            "asked for {n} registers, got {}",
            w.len()
        ))),
        Ok(Words::Bits(b)) if b.len() < usize::from(n) => Err(LinkError::Protocol(format!(
            "asked for {n} bits, got {}",
            b.len()
        ))),
        _ => Ok(out),
    }
}

/// A write request (event handshakes).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// FC5: one coil.
    Coil {
        /// Address.
        address: u16,
        /// Value.
        value: bool,
    },
    /// FC6 (one register) or FC16 (several).
    Registers {
        /// First address.
        address: u16,
        /// Values.
        words: Vec<u16>,
    },
}

impl Write {
    /// Modbus function code.
    pub fn function_code(&self) -> u8 {
        match self {
            Write::Coil { .. } => 5,
            Write::Registers { words, .. } if words.len() == 1 => 6,
            Write::Registers { .. } => 16,
        }
    }
}

/// Execute one write request, bounded by `timeout`.
pub async fn write(ctx: &mut Context, w: &Write, timeout: Duration) -> ModbusResult<()> {
    use tokio_modbus::client::Writer;
    let fut = async {
        match w {
            Write::Coil { address, value } => {
                flatten(ctx.write_single_coil(*address, *value).await)
            }
            Write::Registers { address, words } if words.len() == 1 => {
                flatten(ctx.write_single_register(*address, words[0]).await)
            }
            Write::Registers { address, words } => {
                flatten(ctx.write_multiple_registers(*address, words).await)
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| LinkError::Timeout(timeout))?
}
