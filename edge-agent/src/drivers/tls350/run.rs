//! The TLS-350 run loop: every poll interval one `i20100` (all tanks) gives one reading per
//! tag; every `delivery_interval` one `i20200` gives the new deliveries as `delivery` events.
//! The link (serial or TCP) is reopened with backoff after it fails; a late or garbled answer
//! drops it, so it is never taken for the next one. Bad frames are counted per device
//! (`decode_errors`, `tls350_bad_frames`, `tls350_checksum_errors`) and logged with the device
//! name at most once a minute.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::config::{TlsDevice, TlsLink, TlsTag};
use super::error::{FrameError, TlsLinkError};
use super::frame::{self, Delivery};
use super::tracker::TrackerState;
use crate::drivers::health::Health;
use crate::drivers::lines::LogLimiter;
use crate::drivers::serial::open_serial;
use crate::drivers::stats::DeviceStats;
use crate::drivers::{DeviceView, Output, TagSource};
use crate::model::{now_ms, rfc3339_ms, GapRow, Quality, Reading, TagId, Value};
use flowsquare_service::secret::Secret;
use flowsquare_wire::{Event, WireValue};

/// A byte stream to the console.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}
/// An open link.
pub type Link = Box<dyn Duplex>;

/// Status of readings when the console answers 9999FF1B.
pub const UNSUPPORTED_STATUS: u32 = 0x9999;

/// Open the console link.
pub async fn connect(dev: &TlsDevice) -> Result<Link, TlsLinkError> {
    match &dev.link {
        TlsLink::Serial(s) => {
            open_serial(s)
                .map(|p| Box::new(p) as Link)
                .map_err(|e| TlsLinkError::Connect {
                    target: s.path.clone(),
                    reason: e.to_string(),
                })
        }
        TlsLink::Tcp { host, port } => {
            let target = format!("{host}:{port}");
            match tokio::time::timeout(
                dev.timeout,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Box::new(s) as Link)
                }
                Ok(Err(e)) => Err(TlsLinkError::Connect {
                    target,
                    reason: e.to_string(),
                }),
                Err(_) => Err(TlsLinkError::Connect {
                    target,
                    reason: format!("no answer within {}ms", dev.timeout.as_millis()),
                }),
            }
        }
    }
}

/// Send `cmd` and read one reply frame (SOH … ETX), bounded by `timeout`.
pub async fn transact(
    link: &mut Link,
    cmd: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, TlsLinkError> {
    let fut = async {
        link.write_all(cmd).await?;
        link.flush().await?;
        let mut frame = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = link.read(&mut buf).await?;
            if n == 0 {
                return Err(TlsLinkError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed by the console",
                )));
            }
            for &b in &buf[..n] {
                if frame.is_empty() && b != frame::SOH {
                    continue; // noise before the reply
                }
                frame.push(b);
                if b == frame::ETX || frame.len() >= frame::MAX_FRAME {
                    return Ok(frame);
                }
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| TlsLinkError::Timeout(timeout))?
}

/// Everything the loop needs about one console.
#[derive(Debug, Clone)]
pub struct TlsRuntime {
    /// Device name.
    pub name: String,
    /// Settings.
    pub dev: TlsDevice,
    /// Poll interval.
    pub poll_interval: Duration,
    /// Its tags.
    pub tags: Vec<(TagId, TlsTag)>,
    /// Where the delivery tracker's state is kept (`None`: not persisted, e.g. `read`).
    pub state_path: Option<PathBuf>,
    /// The security code, read when the runtime is made (a reload reads it again), or why it
    /// could not be read (every poll then fails with that message).
    pub code: Result<Secret, String>,
}

impl TlsRuntime {
    /// The runtime of `unit`'s device (`only`: these tags), `None` if it is not a TLS-350.
    pub fn new(unit: &DeviceView<'_>, only: Option<&[TagId]>) -> Option<Self> {
        let d = unit.device;
        let dev = d.driver.tls350()?.clone();
        let tags = unit
            .tags_in(only)
            .filter_map(|t| match &t.source {
                TagSource::Tls350(s) => Some((t.id, *s)),
                _ => None,
            })
            .collect();
        let code = dev.read_security_code();
        if let Err(e) = &code {
            tracing::error!(device = %d.name, error = %e, "cannot read the console's security code; the device is not polled");
        }
        Some(TlsRuntime {
            name: d.name.clone(),
            code,
            dev,
            poll_interval: d.poll_interval,
            tags,
            state_path: Some(state_path(&unit.agent.buffer_path, &d.name)),
        })
    }
}

/// The delivery state file of device `name`, next to the buffer database.
pub fn state_path(buffer: &std::path::Path, name: &str) -> PathBuf {
    let mut p = buffer.as_os_str().to_owned();
    p.push(format!(".{name}.deliveries.json"));
    PathBuf::from(p)
}

/// Shortest decimal of an f32, as f64 (so `-99.99` stays `-99.99`, not `-99.98999786`).
pub fn widen(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(f64::from(v))
}

/// Per-device bookkeeping of bad frames.
struct Faults {
    limiter: LogLimiter,
}

impl Faults {
    fn bad_frame(&mut self, name: &str, what: &str, e: &FrameError, stats: &DeviceStats) {
        DeviceStats::inc(&stats.decode_errors);
        stats.add(
            "tls350_bad_frames",
            "TLS-350 replies dropped (bad checksum, malformed data)",
            1.0,
        );
        if matches!(e, FrameError::Checksum { .. }) {
            stats.add(
                "tls350_checksum_errors",
                "TLS-350 replies dropped for a checksum mismatch",
                1.0,
            );
        }
        if let Some(held) = self.limiter.allow(Instant::now()) {
            tracing::warn!(device = %name, command = %what, error = %e, similar_held_back = held, "dropped a bad TLS-350 reply");
        }
    }
}

/// The readings of one inventory reply (or failure).
fn inventory_readings(
    rt: &TlsRuntime,
    ts: i64,
    rtt_us: u32,
    res: &Result<frame::Inventory, FrameError>,
) -> Vec<Reading> {
    rt.tags
        .iter()
        .map(|&(id, t)| match res {
            Ok(inv) => match inv.tanks.iter().find(|k| k.tank == t.tank) {
                Some(k) => match k.values.get(t.field.index()) {
                    Some(v) if v.is_finite() => {
                        Reading::good(id, ts, Value::Float(widen(*v)), rtt_us)
                    }
                    Some(v) => Reading::bad(
                        id,
                        ts,
                        Quality::BadDecode,
                        format!("tank {} {} is {v}", t.tank, t.field.as_str()),
                    ),
                    None => Reading::bad(
                        id,
                        ts,
                        Quality::BadDevice,
                        format!(
                            "the console sent {} inventory fields for tank {}, no {}",
                            k.values.len(),
                            t.tank,
                            t.field.as_str()
                        ),
                    ),
                },
                None => Reading::bad(
                    id,
                    ts,
                    Quality::BadDevice,
                    format!("tank {} is not in the console's inventory report", t.tank),
                ),
            },
            Err(e) if e.is_unsupported() => {
                let mut r = Reading::bad(id, ts, Quality::BadDevice, format!("i20100: {e}"));
                r.status = Some(UNSUPPORTED_STATUS);
                r
            }
            Err(e) => Reading::bad(id, ts, Quality::BadDecode, format!("i20100: {e}")),
        })
        .collect()
}

/// One inventory poll on `link` (opened when needed). Returns the readings and whether the
/// console answered.
async fn poll_inventory(
    rt: &TlsRuntime,
    link: &mut Option<Link>,
    stats: &DeviceStats,
    faults: &mut Faults,
) -> (Vec<Reading>, Option<String>) {
    DeviceStats::inc(&stats.cycles);
    let ts = now_ms();
    let bad_all = |q: Quality, msg: &str| -> Vec<Reading> {
        rt.tags
            .iter()
            .map(|&(id, _)| Reading::bad(id, ts, q, msg))
            .collect()
    };
    let code = match &rt.code {
        Ok(c) => c.expose(),
        Err(e) => return (bad_all(Quality::BadCommunication, e), Some(e.clone())),
    };
    let cmd = frame::command(code, "i201", 0);
    let t0 = Instant::now();
    let res = match exchange(rt, link, &cmd, stats).await {
        Ok(f) => f,
        Err(e) => {
            let msg = e.to_string();
            return (bad_all(Quality::BadCommunication, &msg), Some(msg));
        }
    };
    let rtt_us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
    stats
        .rtt_us_sum
        .fetch_add(u64::from(rtt_us), std::sync::atomic::Ordering::Relaxed);
    let parsed = frame::open_reply(&res, "i20100").and_then(frame::parse_inventory);
    match &parsed {
        Ok(_) => DeviceStats::inc(&stats.requests_ok),
        Err(e) if e.is_unsupported() => DeviceStats::inc(&stats.exceptions),
        Err(e) => {
            faults.bad_frame(&rt.name, "i20100", e, stats);
            *link = None;
        }
    }
    (inventory_readings(rt, ts, rtt_us, &parsed), None)
}

/// Send `cmd`, opening the link if needed; a link failure drops the link.
async fn exchange(
    rt: &TlsRuntime,
    link: &mut Option<Link>,
    cmd: &[u8],
    stats: &DeviceStats,
) -> Result<Vec<u8>, TlsLinkError> {
    if link.is_none() {
        match connect(&rt.dev).await {
            Ok(l) => *link = Some(l),
            Err(e) => {
                DeviceStats::inc(&stats.link_errors);
                return Err(e);
            }
        }
    }
    let Some(l) = link.as_mut() else {
        return Err(TlsLinkError::Io(std::io::Error::other("no link")));
    };
    match transact(l, cmd, rt.dev.timeout).await {
        Ok(f) => Ok(f),
        Err(e) => {
            DeviceStats::inc(if matches!(e, TlsLinkError::Timeout(_)) {
                &stats.timeouts
            } else {
                &stats.link_errors
            });
            *link = None;
            Err(e)
        }
    }
}

/// The `delivery` event of a new delivery.
pub fn delivery_event(source: &str, seq: u64, d: &Delivery, utc_offset_minutes: i32) -> Event {
    let start = d.start.epoch_ms(utc_offset_minutes).unwrap_or(0);
    let end = d.end.epoch_ms(utc_offset_minutes).unwrap_or(0);
    let mut fields = vec![
        (
            "delivery_id".to_owned(),
            WireValue::Text(format!(
                "T{:02}-{}-{}",
                d.tank,
                d.start.code(),
                d.end.code()
            )),
        ),
        ("tank".to_owned(), WireValue::Int(i64::from(d.tank))),
        ("product".to_owned(), WireValue::Text(d.product.to_string())),
        ("start".to_owned(), WireValue::Text(rfc3339_ms(start))),
        ("end".to_owned(), WireValue::Text(rfc3339_ms(end))),
    ];
    for name in frame::DELIVERY_FIELDS {
        if let Some(v) = d.get(name) {
            fields.push((name.to_owned(), WireValue::Float(widen(v))));
        }
    }
    for (name, a, b) in [
        ("volume", "start_volume", "end_volume"),
        ("tc_volume", "start_tc_volume", "end_tc_volume"),
    ] {
        if let (Some(a), Some(b)) = (d.get(a), d.get(b)) {
            let delta = widen(b) - widen(a);
            fields.push((
                name.to_owned(),
                WireValue::Float((delta * 1e4).round() / 1e4),
            ));
        }
    }
    Event {
        source: source.to_owned(),
        kind: "delivery".into(),
        seq,
        ts_ms: end,
        fields,
    }
}

/// Load the tracker state (a missing file is a fresh start; an unreadable one is logged and
/// kept aside, never silently overwritten).
pub fn load_state(path: &std::path::Path, name: &str) -> TrackerState {
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                let aside = path.with_extension("json.bad");
                let _ = std::fs::rename(path, &aside);
                tracing::error!(device = %name, path = %path.display(), error = %e, "delivery state unreadable; moved aside, deliveries in the console's memory will be reported again");
                TrackerState::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TrackerState::default(),
        Err(e) => {
            tracing::error!(device = %name, path = %path.display(), error = %e, "cannot read the delivery state; starting fresh");
            TrackerState::default()
        }
    }
}

/// Save the tracker state atomically (write a temporary file, fsync, rename).
pub fn save_state(path: &std::path::Path, s: &TrackerState) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        flowsquare_service::private::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = flowsquare_service::private::create_file(&tmp)?;
    f.write_all(
        serde_json::to_string_pretty(s)
            .map_err(std::io::Error::other)?
            .as_bytes(),
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Deliveries poll: events for new deliveries (and a gap if some may have been missed).
async fn poll_deliveries(
    rt: &TlsRuntime,
    link: &mut Option<Link>,
    stats: &DeviceStats,
    faults: &mut Faults,
    tracker: &mut TrackerState,
) -> Option<Output> {
    let cmd = frame::command(rt.code.as_ref().ok()?.expose(), "i202", 0);
    let reply = match exchange(rt, link, &cmd, stats).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(device = %rt.name, error = %e, "delivery report (i20200) failed; retrying at the next delivery poll");
            return None;
        }
    };
    let report = match frame::open_reply(&reply, "i20200").and_then(frame::parse_deliveries) {
        Ok(r) => r,
        Err(e) if e.is_unsupported() => {
            DeviceStats::inc(&stats.exceptions);
            tracing::warn!(device = %rt.name, "the console does not support the delivery report (i20200); set delivery_interval = \"0s\" to stop asking");
            return None;
        }
        Err(e) => {
            faults.bad_frame(&rt.name, "i20200", &e, stats);
            *link = None;
            return None;
        }
    };
    DeviceStats::inc(&stats.requests_ok);
    let o = tracker.process(&report.deliveries);
    let off = rt.dev.utc_offset_minutes;
    let gaps: Vec<GapRow> = o
        .possibly_missed
        .iter()
        .map(|m| {
            let to = m.before.epoch_ms(off).unwrap_or(0);
            let from = m.after.and_then(|a| a.epoch_ms(off)).unwrap_or(to).min(to);
            tracing::warn!(device = %rt.name, tank = m.tank, "every delivery the console holds for this tank is new: older ones may have been overwritten while the agent was away");
            // How many were missed is unknown (count 0); the window says when.
            GapRow {
                tags: Vec::new(),
                range: from..to,
                count: 0,
                reason: crate::model::GapReason::MissedEvent,
            }
        })
        .collect();
    if o.new.is_empty() && gaps.is_empty() {
        return None;
    }
    stats.add(
        "tls350_deliveries",
        "deliveries captured from the i202 report",
        o.new.len() as f64,
    );
    for n in &o.new {
        tracing::info!(device = %rt.name, tank = n.delivery.tank, seq = n.seq, start = %n.delivery.start.code(), end = %n.delivery.end.code(), "delivery captured");
    }
    let gateway = now_ms();
    let events = o
        .new
        .iter()
        .map(|n| {
            let mut e = delivery_event(&rt.name, n.seq, &n.delivery, off);
            if bound_event_time(&mut e, gateway, crate::model::DEFAULT_MAX_CLOCK_SKEW) {
                stats.add(
                    crate::model::M_TIME_SUBSTITUTED,
                    crate::model::M_TIME_SUBSTITUTED_HELP,
                    1.0,
                );
            }
            e
        })
        .collect();
    Some(Output::Events { events, gaps })
}

/// A delivery's time is the console's end time. One that is unreadable or ahead of the
/// gateway clock by more than `max_skew` (a console clock set wrong: a delivery cannot end in
/// the future) gets the gateway's time and a `time_substituted` field naming the console's
/// (its `end` field keeps it too). An old end time is normal (deliveries are reported after
/// they end, or after an outage). Returns true when the time was replaced.
pub fn bound_event_time(e: &mut Event, gateway_ms: i64, max_skew: Duration) -> bool {
    let bound = crate::model::data_clock_bound_ms(max_skew);
    let skew = e.ts_ms.saturating_sub(gateway_ms);
    if e.ts_ms > 0 && skew <= bound {
        return false;
    }
    let note = if e.ts_ms > 0 {
        format!(
            "console end time {} (skew {})",
            rfc3339_ms(e.ts_ms),
            crate::model::format_skew(skew)
        )
    } else {
        "console end time unreadable".to_owned()
    };
    e.fields
        .push(("time_substituted".to_owned(), WireValue::Text(note)));
    e.ts_ms = gateway_ms;
    true
}

/// Run loop of one console until `shutdown` turns true.
pub async fn run(
    rt: TlsRuntime,
    out: mpsc::Sender<Output>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<DeviceStats>,
) {
    let mut link: Option<Link> = None;
    let mut faults = Faults {
        limiter: LogLimiter::new(Duration::from_secs(60)),
    };
    let mut health = Health::new(Duration::from_secs(1), Duration::from_secs(60));
    let deliveries_on = !rt.dev.delivery_interval.is_zero();
    let mut tracker = match (&rt.state_path, deliveries_on) {
        (Some(p), true) => load_state(p, &rt.name),
        _ => TrackerState::default(),
    };
    // What was handed over at the previous delivery poll, saved at the next one.
    let mut unsaved: Option<TrackerState> = None;
    let start = Instant::now();
    let mut next = start;
    let mut next_delivery = start;
    loop {
        let due = if deliveries_on {
            next.min(next_delivery)
        } else {
            next
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let now = Instant::now();
        if deliveries_on && now >= next_delivery {
            if let (Some(s), Some(p)) = (unsaved.take(), &rt.state_path) {
                if let Err(e) = save_state(p, &s) {
                    tracing::error!(device = %rt.name, path = %p.display(), error = %e, "cannot save the delivery state; deliveries may be reported again after a restart");
                }
            }
            if !health.skipping(now) {
                if let Some(o) =
                    poll_deliveries(&rt, &mut link, &stats, &mut faults, &mut tracker).await
                {
                    if out.send(o).await.is_err() {
                        break;
                    }
                    unsaved = Some(tracker.clone());
                }
            }
            next_delivery += rt.dev.delivery_interval;
            if next_delivery < Instant::now() {
                next_delivery = Instant::now() + rt.dev.delivery_interval;
            }
            continue;
        }
        let readings = if rt.tags.is_empty() {
            Vec::new()
        } else if health.skipping(now) {
            DeviceStats::inc(&stats.skipped_cycles);
            let ts = now_ms();
            rt.tags
                .iter()
                .map(|&(id, _)| {
                    Reading::bad(
                        id,
                        ts,
                        Quality::Stale,
                        format!(
                            "not polled: {} failed cycles in a row, retrying with backoff",
                            health.consecutive_failures
                        ),
                    )
                })
                .collect()
        } else {
            let (rs, link_error) = poll_inventory(&rt, &mut link, &stats, &mut faults).await;
            match link_error {
                None => {
                    if health.consecutive_failures > 0 {
                        tracing::info!(device = %rt.name, "console answers again");
                    }
                    health.success();
                }
                Some(e) => {
                    if health
                        .failure(Instant::now(), rand::random::<f64>())
                        .is_some()
                    {
                        tracing::warn!(device = %rt.name, error = %e, failures = health.consecutive_failures, "console not answering; backing off");
                    } else {
                        tracing::warn!(device = %rt.name, error = %e, "inventory poll failed");
                    }
                }
            }
            rs
        };
        if !readings.is_empty() {
            stats
                .readings
                .fetch_add(readings.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if out.send(Output::Readings(readings)).await.is_err() {
                break;
            }
        }
        next += rt.poll_interval;
        let now = Instant::now();
        if next < now {
            DeviceStats::inc(&stats.overruns);
            next = now;
        }
    }
    // At shutdown the driver's output is drained into the buffer before it closes.
    if let (Some(s), Some(p)) = (unsaved, &rt.state_path) {
        if let Err(e) = save_state(p, &s) {
            tracing::error!(device = %rt.name, path = %p.display(), error = %e, "cannot save the delivery state");
        }
    }
}

/// `read --once`: one inventory poll.
pub async fn read_once(rt: TlsRuntime) -> Vec<Reading> {
    let stats = DeviceStats::default();
    let mut faults = Faults {
        limiter: LogLimiter::new(Duration::from_secs(60)),
    };
    let mut link = None;
    poll_inventory(&rt, &mut link, &stats, &mut faults).await.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_ending_in_the_future_gets_the_gateway_time() {
        let ev = |ts_ms| Event {
            source: "atg".into(),
            kind: "delivery".into(),
            seq: 1,
            ts_ms,
            fields: Vec::new(),
        };
        let now = 1_796_000_000_000;
        let bound = Duration::from_secs(300);
        // Ended an hour ago (reported late): kept.
        let mut e = ev(now - 3_600_000);
        assert!(!bound_event_time(&mut e, now, bound));
        assert_eq!(e.ts_ms, now - 3_600_000);
        // Ends tomorrow: the console's clock is wrong.
        let mut e = ev(now + 86_400_000);
        assert!(bound_event_time(&mut e, now, bound));
        assert_eq!(e.ts_ms, now);
        assert!(
            matches!(&e.fields[0], (n, WireValue::Text(t)) if n == "time_substituted" && t.ends_with("(skew +1.0 d)"))
        );
        let mut e = ev(0);
        assert!(bound_event_time(&mut e, now, bound));
        assert_eq!(e.ts_ms, now);
    }

    #[test]
    fn widen_keeps_the_decimal() {
        assert_eq!(widen(-99.99), -99.99);
        assert_eq!(widen(1.0), 1.0);
        assert!(widen(f32::NAN).is_nan());
    }

    #[test]
    fn state_file_sits_next_to_the_buffer() {
        assert_eq!(
            state_path(std::path::Path::new("/var/lib/fs/buffer.db"), "tls-1"),
            PathBuf::from("/var/lib/fs/buffer.db.tls-1.deliveries.json")
        );
    }

    #[test]
    fn state_saves_and_loads() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("sub/x.json");
        let s = TrackerState {
            next_seq: 7,
            ..TrackerState::default()
        };
        save_state(&p, &s).expect("save");
        assert_eq!(load_state(&p, "d"), s);
        std::fs::write(&p, "garbage").expect("write");
        assert_eq!(load_state(&p, "d"), TrackerState::default());
        assert!(p.with_extension("json.bad").exists());
    }
}
