//! Writing sentences to a port: one epoch every `interval` (or the replay file's lines).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::config::FeederConfig;
use super::generator::Truck;
use crate::modbus::{open_serial, SerialConfig, SimError};

fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Feed `port` until `shutdown` resolves (or the replay file ends without `repeat`).
pub async fn feed<W, F>(mut port: W, cfg: FeederConfig, shutdown: F) -> Result<(), SimError>
where
    W: AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let interval = cfg.interval.0;
    let io = |e| SimError::io("writing NMEA sentences", e);
    if let Some(path) = cfg.replay.clone() {
        // Recorded files may hold bytes that are not UTF-8 (line noise): written as recorded.
        let raw = std::fs::read(&path)
            .map_err(|e| SimError::io(format!("reading {}", path.display()), e))?;
        loop {
            for line in raw.split(|&b| b == b'\n') {
                let l = line.strip_suffix(b"\r").unwrap_or(line);
                if l.starts_with(b"#") || l.is_empty() {
                    continue; // comments in recorded files
                }
                port.write_all(l).await.map_err(io)?;
                port.write_all(b"\r\n").await.map_err(io)?;
                if l.windows(3).any(|w| w == b"RMC") {
                    port.flush().await.map_err(io)?;
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = &mut shutdown => return Ok(()),
                    }
                }
            }
            port.flush().await.map_err(io)?;
            if !cfg.repeat {
                return Ok(());
            }
        }
    }
    let offset = cfg.time_offset_ms;
    let mut truck = Truck::new(cfg);
    let start = Instant::now();
    let mut last = start;
    let mut next = start;
    loop {
        let now = Instant::now();
        truck.advance(now - last);
        last = now;
        let text = truck.epoch(system_ms() + offset, now - start);
        port.write_all(text.as_bytes()).await.map_err(io)?;
        port.flush().await.map_err(io)?;
        next += interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = &mut shutdown => return Ok(()),
        }
        if next + Duration::from_secs(1) < Instant::now() {
            next = Instant::now();
        }
    }
}

/// Open the serial port (or pty) of `serial` and [`feed`] it.
pub async fn feed_path<F>(
    serial: &SerialConfig,
    cfg: FeederConfig,
    shutdown: F,
) -> Result<(), SimError>
where
    F: Future<Output = ()>,
{
    let port = open_serial(serial)?;
    feed(port, cfg, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_a_recorded_file_without_its_comments() {
        let dir = std::env::temp_dir().join(format!("nmea-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("r.nmea");
        std::fs::write(&file, b"# comment\n$GPRMC,1*00\r\n\xff$GPGGA,2*00\n\n").expect("write");
        let cfg = FeederConfig::from_toml_str(&format!(
            "interval = \"1ms\"\nreplay = \"{}\"\n",
            file.display()
        ))
        .expect("cfg");
        let (w, mut r) = tokio::io::duplex(4096);
        feed(w, cfg, std::future::pending::<()>())
            .await
            .expect("feed");
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, b"$GPRMC,1*00\r\n\xff$GPGGA,2*00\r\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
