//! The GPS run loop: a reader task keeps the [`FixState`] current from the link (serial NMEA or
//! gpsd, reopened with backoff when it fails); every poll interval the loop reports one reading
//! per tag from it. Dropped sentences are counted per device (`nmea_checksum_errors`,
//! `nmea_bad_sentences`, `decode_errors`) and logged with the device name, at most once a minute.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};

use super::config::{GpsDevice, GpsField, GpsLink};
use super::error::{GpsLinkError, NmeaError};
use super::fix::FixState;
use super::{gpsd, nmea};
use crate::drivers::health::Backoff;
use crate::drivers::lines::{LineSplitter, LogLimiter};
use crate::drivers::stats::DeviceStats;
use crate::drivers::{DeviceView, Output, TagSource};
use crate::model::{now_ms, Reading, TagId};

/// Longest gpsd JSON line accepted (SKY reports with many satellites reach a few KiB).
const MAX_GPSD_LINE: usize = 64 * 1024;
/// How long opening the link may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the loop needs about one receiver.
#[derive(Debug, Clone)]
pub struct GpsRuntime {
    /// Device name.
    pub name: String,
    /// Settings.
    pub dev: GpsDevice,
    /// Poll interval.
    pub poll_interval: Duration,
    /// Its tags.
    pub tags: Vec<(TagId, GpsField)>,
}

impl GpsRuntime {
    /// The runtime of `unit`'s device (`only`: these tags), `None` if it is not a GPS device.
    pub fn new(unit: &DeviceView<'_>, only: Option<&[TagId]>) -> Option<Self> {
        let d = unit.device;
        let dev = d.driver.gps()?.clone();
        let tags = unit
            .tags_in(only)
            .filter_map(|t| match &t.source {
                TagSource::Gps(g) => Some((t.id, g.field)),
                _ => None,
            })
            .collect();
        Some(GpsRuntime {
            name: d.name.clone(),
            dev,
            poll_interval: d.poll_interval,
            tags,
        })
    }
}

struct Shared {
    fix: Mutex<FixState>,
    changed: Notify,
}

/// Handle one line from the link: decode, merge, count.
fn on_line(
    name: &str,
    gpsd: bool,
    line: &[u8],
    shared: &Shared,
    stats: &DeviceStats,
    limiter: &mut LogLimiter,
) {
    let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
    if trimmed.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    let now = Instant::now();
    let sys = now_ms();
    let res: Result<(), NmeaError> = if gpsd {
        match std::str::from_utf8(trimmed) {
            Ok(text) => gpsd::parse_line(text).map(|u| {
                if let Some(u) = u {
                    if let Ok(mut f) = shared.fix.lock() {
                        f.apply_update(&u, now, sys);
                    }
                }
            }),
            Err(_) => Err(NmeaError::NotAscii),
        }
    } else {
        for piece in nmea::pieces(trimmed) {
            let res = nmea::parse(piece).map(|s| {
                if let Ok(mut f) = shared.fix.lock() {
                    f.apply(&s, now, sys);
                }
            });
            account(name, piece, res, shared, stats, limiter, now);
        }
        return;
    };
    account(name, trimmed, res, shared, stats, limiter, now);
}

fn account(
    name: &str,
    text: &[u8],
    res: Result<(), NmeaError>,
    shared: &Shared,
    stats: &DeviceStats,
    limiter: &mut LogLimiter,
    now: Instant,
) {
    let trimmed = text;
    match res {
        Ok(()) => {
            if let Ok(mut f) = shared.fix.lock() {
                f.link_error = None;
            }
            DeviceStats::inc(&stats.requests_ok);
            shared.changed.notify_waiters();
        }
        Err(e) => {
            DeviceStats::inc(&stats.decode_errors);
            stats.add(
                e.counter(),
                if e.counter() == "nmea_checksum_errors" {
                    "NMEA sentences dropped for a checksum mismatch"
                } else {
                    "NMEA sentences / gpsd reports dropped as malformed"
                },
                1.0,
            );
            if let Some(held) = limiter.allow(now) {
                let text: String = String::from_utf8_lossy(trimmed).chars().take(100).collect();
                tracing::warn!(device = %name, error = %e, line = %text, similar_held_back = held, "dropped a bad sentence");
            }
        }
    }
}

async fn pump<R: AsyncRead + Unpin>(
    mut r: R,
    name: &str,
    gpsd: bool,
    shared: &Shared,
    stats: &DeviceStats,
    limiter: &mut LogLimiter,
) -> Result<(), GpsLinkError> {
    let limit = if gpsd {
        MAX_GPSD_LINE
    } else {
        nmea::MAX_SENTENCE * 2
    };
    let mut split = LineSplitter::new(limit);
    let mut buf = vec![0u8; 4096];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Err(GpsLinkError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed by the peer",
            )));
        }
        let dropped = split.push(&buf[..n], |l| {
            on_line(name, gpsd, l, shared, stats, limiter)
        });
        if dropped > 0 {
            DeviceStats::inc(&stats.decode_errors);
            stats.add(
                "nmea_bad_sentences",
                "NMEA sentences / gpsd reports dropped as malformed",
                dropped as f64,
            );
        }
    }
}

/// Read from the link until it fails.
async fn read_link(
    dev: &GpsDevice,
    name: &str,
    shared: &Shared,
    stats: &DeviceStats,
    limiter: &mut LogLimiter,
) -> Result<(), GpsLinkError> {
    match &dev.link {
        GpsLink::Nmea(s) => {
            let port = crate::drivers::serial::open_serial(s).map_err(|e| GpsLinkError::Open {
                target: s.path.clone(),
                reason: e.to_string(),
            })?;
            pump(port, name, false, shared, stats, limiter).await
        }
        GpsLink::Gpsd { host, port } => {
            let target = format!("{host}:{port}");
            let mut conn = tokio::time::timeout(
                OPEN_TIMEOUT,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            .map_err(|_| GpsLinkError::Open {
                target: target.clone(),
                reason: "no answer within 5s".into(),
            })?
            .map_err(|e| GpsLinkError::Open {
                target: target.clone(),
                reason: e.to_string(),
            })?;
            conn.write_all(gpsd::WATCH.as_bytes()).await?;
            pump(conn, name, true, shared, stats, limiter).await
        }
    }
}

/// Keep reading, reopening the link with backoff, until `shutdown`.
async fn reader(
    dev: GpsDevice,
    name: String,
    shared: Arc<Shared>,
    stats: Arc<DeviceStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut limiter = LogLimiter::new(Duration::from_secs(60));
    let mut last_error = String::new();
    loop {
        let started = Instant::now();
        let res = tokio::select! {
            r = read_link(&dev, &name, &shared, &stats, &mut limiter) => r,
            _ = shutdown.changed() => return,
        };
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = res {
            DeviceStats::inc(&stats.link_errors);
            let msg = e.to_string();
            if let Ok(mut f) = shared.fix.lock() {
                f.link_error = Some(msg.clone());
            }
            if msg != last_error {
                tracing::warn!(device = %name, error = %msg, "GPS link failed; retrying with backoff");
                last_error = msg;
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            // The link worked for a while: the next failure is news again.
            backoff.reset();
            last_error.clear();
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

fn poll(rt: &GpsRuntime, shared: &Shared, stats: &DeviceStats) -> Vec<Reading> {
    DeviceStats::inc(&stats.cycles);
    let now = Instant::now();
    let sys = now_ms();
    let Ok(f) = shared.fix.lock() else {
        return Vec::new();
    };
    if let Some(off) = f.clock_offset_ms {
        stats.set(
            "gps_clock_offset_ms",
            "gateway clock minus GPS time at the last timed sentence, ms",
            off as f64,
        );
    }
    let (rs, substituted) = f.stamped_readings(&rt.tags, now, sys, rt.dev.max_age, &rt.dev.time);
    if substituted > 0 {
        stats.add(
            crate::model::M_TIME_SUBSTITUTED,
            crate::model::M_TIME_SUBSTITUTED_HELP,
            substituted as f64,
        );
    }
    stats
        .readings
        .fetch_add(rs.len() as u64, std::sync::atomic::Ordering::Relaxed);
    rs
}

/// Run loop of one receiver until `shutdown` turns true.
pub async fn run(
    rt: GpsRuntime,
    out: mpsc::Sender<Output>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<DeviceStats>,
) {
    let shared = Arc::new(Shared {
        fix: Mutex::new(FixState::default()),
        changed: Notify::new(),
    });
    let reader = tokio::spawn(reader(
        rt.dev.clone(),
        rt.name.clone(),
        shared.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    // The first report waits one interval, so a receiver that is talking is not reported
    // "silent" just because the agent started a moment ago.
    let mut next = Instant::now() + rt.poll_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let rs = poll(&rt, &shared, &stats);
        if !rs.is_empty() && out.send(Output::Readings(rs)).await.is_err() {
            break;
        }
        next += rt.poll_interval;
        let now = Instant::now();
        if next < now {
            DeviceStats::inc(&stats.overruns);
            next = now;
        }
    }
    let _ = reader.await;
}

/// `read --once`: listen until every tag has a good reading or `max_age` passes, then report.
pub async fn read_once(rt: GpsRuntime) -> Vec<Reading> {
    let shared = Arc::new(Shared {
        fix: Mutex::new(FixState::default()),
        changed: Notify::new(),
    });
    let stats = Arc::new(DeviceStats::default());
    let (stop, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(reader(
        rt.dev.clone(),
        rt.name.clone(),
        shared.clone(),
        stats.clone(),
        stop_rx,
    ));
    let deadline = Instant::now() + rt.dev.max_age;
    loop {
        let notified = shared.changed.notified();
        let all_good = shared.fix.lock().is_ok_and(|f| {
            f.readings(&rt.tags, Instant::now(), now_ms(), rt.dev.max_age)
                .iter()
                .all(|r| r.quality.has_value())
        });
        if all_good {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
            break;
        }
    }
    let _ = stop.send(true);
    let _ = reader.await;
    poll(&rt, &shared, &stats)
}
