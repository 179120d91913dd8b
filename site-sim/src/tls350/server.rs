//! Serving a console on a serial port / pty or on TCP: read `<SOH>` + command, answer.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::console::Console;
use crate::modbus::{open_serial, SerialConfig, SimError};

/// A console shared by its connections and the test or CLI that changes it.
pub type SharedConsole = Arc<Mutex<Console>>;

/// Console time (`YYMMDDHHmm`) of the Unix ms instant `ms` at `offset_minutes` from UTC.
pub fn console_time(ms: i64, offset_minutes: i32) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        + time::Duration::minutes(i64::from(offset_minutes));
    format!(
        "{:02}{:02}{:02}{:02}{:02}",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// Console time (`YYMMDDHHmm`) now on the data clock (`flowsquare_service::clock`: real, or the
/// shared simulated clock), at `offset_minutes` from UTC.
pub fn console_now(offset_minutes: i32) -> String {
    let now = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(flowsquare_service::clock::now_ms()) * 1_000_000,
    )
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let t = now + time::Duration::minutes(i64::from(offset_minutes));
    format!(
        "{:02}{:02}{:02}{:02}{:02}",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// Serve one byte stream until it closes or `shutdown` resolves.
pub async fn serve_stream<S, F>(
    mut s: S,
    console: SharedConsole,
    shutdown: F,
) -> Result<(), SimError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let mut cmd: Vec<u8> = Vec::new();
    let mut in_cmd = false;
    let mut buf = [0u8; 256];
    loop {
        let n = tokio::select! {
            r = s.read(&mut buf) => r.map_err(|e| SimError::io("reading a TLS-350 command", e))?,
            _ = &mut shutdown => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        for &b in &buf[..n] {
            if b == 0x01 {
                in_cmd = true;
                cmd.clear();
                continue;
            }
            if !in_cmd {
                continue;
            }
            cmd.push(b);
            let (need, reply) = {
                let mut c = console
                    .lock()
                    .map_err(|_| SimError::io("console", std::io::Error::other("poisoned")))?;
                let need = c.command_len();
                if cmd.len() < need {
                    (need, None)
                } else {
                    let now = console_now(c.config().utc_offset_minutes);
                    (need, c.answer(&cmd, &now))
                }
            };
            if cmd.len() >= need {
                in_cmd = false;
                if let Some(r) = reply {
                    s.write_all(&r)
                        .await
                        .map_err(|e| SimError::io("writing a TLS-350 reply", e))?;
                    s.flush()
                        .await
                        .map_err(|e| SimError::io("writing a TLS-350 reply", e))?;
                }
            }
        }
    }
}

/// Serve on a serial port / pty until `shutdown`.
pub async fn serve_serial<F>(
    cfg: &SerialConfig,
    console: SharedConsole,
    shutdown: F,
) -> Result<(), SimError>
where
    F: Future<Output = ()>,
{
    let port = open_serial(cfg)?;
    serve_stream(port, console, shutdown).await
}

/// Serve every TCP connection of `listener` until `shutdown`.
pub async fn serve_tcp<F>(
    listener: TcpListener,
    console: SharedConsole,
    shutdown: F,
) -> Result<(), SimError>
where
    F: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    loop {
        tokio::select! {
            a = listener.accept() => {
                let (sock, _) = a.map_err(|e| SimError::io("accepting a TLS-350 connection", e))?;
                let c = console.clone();
                let mut rx = stop_rx.clone();
                tokio::spawn(async move {
                    let _ = serve_stream(sock, c, async move { let _ = rx.changed().await; }).await;
                });
            }
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                tokio::time::sleep(Duration::from_millis(0)).await;
                return Ok(());
            }
        }
    }
}
