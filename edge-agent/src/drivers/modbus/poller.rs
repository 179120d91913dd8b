//! The Modbus run loops: one task per TCP device, one task per RTU bus serializing its units.
//! The request/decode logic of one cycle (`poll_cycle`) is shared by both and by `read --once`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::Slave;

use super::config::{ModbusDevice, ModbusTag, SerialSettings};
use super::decode;
use super::error::LinkError;
use super::plan::ReadRequest;
use super::transport::{self, Words};
use crate::drivers::health::Health;
use crate::drivers::stats::DeviceStats;
use crate::drivers::{DeviceView, Output};
use crate::model::{now_ms, Quality, Reading, TagId, Value};

/// First reconnect delay / unit skip after repeated failures.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest reconnect delay / unit skip.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Everything a run loop needs about one device.
#[derive(Debug, Clone)]
pub struct DeviceRuntime {
    /// Index in the tag map.
    pub index: usize,
    /// Device name.
    pub name: String,
    /// Protocol settings.
    pub dev: ModbusDevice,
    /// Poll interval.
    pub poll_interval: Duration,
    /// The planned requests of one cycle.
    pub requests: Vec<ReadRequest>,
    /// Modbus tags of the device.
    pub tags: TagTable,
}

/// The Modbus tags of a device by id: sorted by id and found by binary search (cheaper than
/// hashing for every decoded value, and without a hash table's spare room).
#[derive(Debug, Clone, Default)]
pub struct TagTable(Vec<(TagId, ModbusTag)>);

impl TagTable {
    /// The tag with id `id`.
    pub fn get(&self, id: &TagId) -> Option<&ModbusTag> {
        self.0
            .binary_search_by_key(id, |(t, _)| *t)
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// No tags?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every tag, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&TagId, &ModbusTag)> {
        self.0.iter().map(|(t, m)| (t, m))
    }
}

impl FromIterator<(TagId, ModbusTag)> for TagTable {
    fn from_iter<I: IntoIterator<Item = (TagId, ModbusTag)>>(iter: I) -> Self {
        let mut v: Vec<(TagId, ModbusTag)> = iter.into_iter().collect();
        v.sort_by_key(|(t, _)| *t);
        // Like a map: one entry per id (the last one given).
        v.reverse();
        v.dedup_by_key(|(t, _)| *t);
        v.reverse();
        v.shrink_to_fit();
        TagTable(v)
    }
}

impl DeviceRuntime {
    /// Build the runtime of `unit`'s device (`only`: restrict to these tags, for `read --tag`).
    /// `None` when the device is not a Modbus device.
    pub fn new(unit: &DeviceView<'_>, only: Option<&[TagId]>) -> Option<Self> {
        let d = unit.device;
        let dev = d.driver.modbus()?;
        let tags: TagTable = unit
            .tags_in(only)
            .filter_map(|t| Some((t.id, t.source.modbus()?.clone())))
            .collect();
        let items = super::items_of(tags.iter().map(|(id, m)| (*id, m)));
        let requests = super::plan::plan(&items, &super::plan::Limits::from(dev));
        Some(DeviceRuntime {
            index: unit.index,
            name: d.name.clone(),
            dev: dev.clone(),
            poll_interval: d.poll_interval,
            requests,
            tags,
        })
    }

    /// Tag ids served, in request order.
    pub fn tag_ids(&self) -> impl Iterator<Item = TagId> + '_ {
        self.requests.iter().flat_map(|r| r.tags.iter().copied())
    }

    fn all_bad(&self, quality: Quality, error: &str) -> Vec<Reading> {
        let ts = now_ms();
        self.tag_ids()
            .map(|t| Reading::bad(t, ts, quality, error))
            .collect()
    }
}

/// What one cycle produced.
#[derive(Debug, Default)]
pub struct CycleOutcome {
    /// One reading per tag of the device.
    pub readings: Vec<Reading>,
    /// Requests the device answered (with data or an exception).
    pub answered: usize,
    /// The last link error, if any.
    pub last_error: Option<String>,
}

fn decode_request(
    rt: &DeviceRuntime,
    req: &ReadRequest,
    words: &Words,
    ts: i64,
    rtt_us: u32,
    stats: &DeviceStats,
    out: &mut Vec<Reading>,
) {
    for &tid in &req.tags {
        let Some(tag) = rt.tags.get(&tid) else {
            continue;
        };
        let off = usize::from(tag.address - req.start);
        let res = match words {
            Words::Bits(bits) => {
                bits.get(off)
                    .map(|b| Value::Bool(*b))
                    .ok_or(decode::DecodeError::Short {
                        needed: off + 1,
                        got: bits.len(),
                    })
            }
            Words::Registers(regs) => decode::decode_tag(regs.get(off..).unwrap_or(&[]), tag),
        };
        out.push(match res {
            Ok(v) => Reading::good(tid, ts, v, rtt_us),
            Err(e) => {
                DeviceStats::inc(&stats.decode_errors);
                let mut r = Reading::bad(tid, ts, Quality::BadDecode, e.to_string());
                r.rtt_us = rtt_us;
                r
            }
        });
    }
}

/// Run one poll cycle of `rt` on `link`, opening it with `open` when needed. A failed request
/// marks only the tags it serves; the rest of the cycle goes on, except after a timeout or a
/// failed connect (the device is not answering: the remaining requests are marked without
/// waiting for more timeouts, so one dead unit costs at most one timeout per cycle).
pub async fn poll_cycle<F, Fut>(
    rt: &DeviceRuntime,
    link: &mut Option<Context>,
    mut open: F,
    stats: &DeviceStats,
) -> CycleOutcome
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Context, LinkError>>,
{
    let mut out = CycleOutcome::default();
    let mut abort: Option<String> = None;
    DeviceStats::inc(&stats.cycles);
    for (i, req) in rt.requests.iter().enumerate() {
        if let Some(reason) = &abort {
            let ts = now_ms();
            out.readings.extend(
                req.tags
                    .iter()
                    .map(|&t| Reading::bad(t, ts, Quality::BadCommunication, reason.clone())),
            );
            continue;
        }
        if i > 0 && !rt.dev.pause.is_zero() {
            tokio::time::sleep(rt.dev.pause).await;
        }
        if link.is_none() {
            match open().await {
                Ok(c) => *link = Some(c),
                Err(e) => {
                    DeviceStats::inc(&stats.link_errors);
                    let msg = e.to_string();
                    let ts = now_ms();
                    out.readings.extend(
                        req.tags
                            .iter()
                            .map(|&t| Reading::bad(t, ts, Quality::BadCommunication, msg.clone())),
                    );
                    out.last_error = Some(msg.clone());
                    abort = Some(msg);
                    continue;
                }
            }
        }
        let Some(ctx) = link.as_mut() else { continue };
        ctx.set_slave(Slave(rt.dev.unit));
        let ts = now_ms();
        let t0 = Instant::now();
        let res = transport::read(ctx, req, rt.dev.timeout).await;
        let rtt_us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        match res {
            Ok(Ok(words)) => {
                out.answered += 1;
                DeviceStats::inc(&stats.requests_ok);
                stats
                    .rtt_us_sum
                    .fetch_add(u64::from(rtt_us), std::sync::atomic::Ordering::Relaxed);
                decode_request(rt, req, &words, ts, rtt_us, stats, &mut out.readings);
            }
            Ok(Err(exc)) => {
                out.answered += 1;
                DeviceStats::inc(&stats.exceptions);
                stats
                    .rtt_us_sum
                    .fetch_add(u64::from(rtt_us), std::sync::atomic::Ordering::Relaxed);
                let msg = format!(
                    "device answered {exc} to FC{} {}+{}",
                    req.kind.function_code(),
                    req.start,
                    req.count
                );
                out.readings.extend(req.tags.iter().map(|&t| {
                    let mut r = Reading::bad(t, ts, Quality::BadDevice, msg.clone());
                    r.status = Some(u32::from(exc.0));
                    r.rtt_us = rtt_us;
                    r
                }));
            }
            Err(e) => {
                let quality = if e.is_decode() {
                    Quality::BadDecode
                } else {
                    Quality::BadCommunication
                };
                let counter = match &e {
                    LinkError::Timeout(_) => &stats.timeouts,
                    LinkError::Protocol(_) => &stats.decode_errors,
                    _ => &stats.link_errors,
                };
                DeviceStats::inc(counter);
                let msg = e.to_string();
                out.readings.extend(
                    req.tags
                        .iter()
                        .map(|&t| Reading::bad(t, ts, quality, msg.clone())),
                );
                out.last_error = Some(msg.clone());
                // Drop the link: a late or garbled answer must not be taken for the next one.
                *link = None;
                if matches!(e, LinkError::Timeout(_)) {
                    abort = Some(format!(
                        "not asked: the device did not answer the previous request ({msg})"
                    ));
                }
            }
        }
    }
    stats.readings.fetch_add(
        out.readings.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    out
}

/// Record a cycle's outcome in `health`, logging transitions.
fn update_health(rt: &DeviceRuntime, health: &mut Health, o: &CycleOutcome) {
    if o.answered > 0 || rt.requests.is_empty() {
        if health.consecutive_failures > 0 {
            tracing::info!(device = %rt.name, "device answers again");
        }
        health.success();
    } else if let Some(until) = health.failure(Instant::now(), rand::random::<f64>()) {
        let secs = until
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        tracing::warn!(
            device = %rt.name,
            failures = health.consecutive_failures,
            error = o.last_error.as_deref().unwrap_or(""),
            "device not answering; skipping it for {secs:.1}s"
        );
    } else {
        tracing::warn!(device = %rt.name, error = o.last_error.as_deref().unwrap_or(""), "poll cycle failed");
    }
}

fn skipped(rt: &DeviceRuntime, health: &Health, stats: &DeviceStats) -> Vec<Reading> {
    DeviceStats::inc(&stats.skipped_cycles);
    let out = rt.all_bad(
        Quality::Stale,
        &format!(
            "not polled: {} failed cycles in a row, retrying with backoff",
            health.consecutive_failures
        ),
    );
    stats
        .readings
        .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
    out
}

/// Advance a schedule by one interval; if the cycle overran, restart from now (counted).
fn advance(next: &mut Instant, interval: Duration, stats: &DeviceStats) {
    *next += interval;
    let now = Instant::now();
    if *next < now {
        DeviceStats::inc(&stats.overruns);
        *next = now;
    }
}

/// Run loop of one Modbus TCP device until `shutdown` turns true.
pub async fn run_tcp(
    rt: DeviceRuntime,
    out: mpsc::Sender<Output>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<DeviceStats>,
) {
    let super::config::Link::Tcp { host, port } = rt.dev.link.clone() else {
        return;
    };
    let mut link: Option<Context> = None;
    let mut health = Health::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let readings = if health.skipping(Instant::now()) {
            skipped(&rt, &health, &stats)
        } else {
            let o = poll_cycle(
                &rt,
                &mut link,
                || transport::connect_tcp(&host, port, rt.dev.unit, rt.dev.timeout),
                &stats,
            )
            .await;
            update_health(&rt, &mut health, &o);
            o.readings
        };
        if out.send(Output::Readings(readings)).await.is_err() {
            break;
        }
        advance(&mut next, rt.poll_interval, &stats);
    }
    if let Some(mut c) = link {
        let _ = c.disconnect().await;
    }
}

/// An event definition on a unit of an RTU bus: polled by the bus loop on the bus's link.
pub struct BusEvent {
    /// Index of its device in the tag map.
    pub device: usize,
    /// What to read and write.
    pub ev: super::events::ModbusEvent,
    /// Its capture state.
    pub runner: crate::drivers::events::Runner,
}

/// Run loop of one RTU bus: its units are polled one at a time, each on its own interval, and
/// so are the event definitions of its units (between two cycles, on the same link). A unit
/// that keeps failing is skipped with backoff so it never stalls the others; its event
/// definitions are not polled while it is skipped.
pub async fn run_rtu_bus(
    serial: SerialSettings,
    units: Vec<(DeviceRuntime, Arc<DeviceStats>)>,
    mut events: Vec<BusEvent>,
    out: mpsc::Sender<Output>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut link: Option<Context> = None;
    let mut health: Vec<Health> = units
        .iter()
        .map(|_| Health::new(BACKOFF_BASE, BACKOFF_CAP))
        .collect();
    let start = Instant::now();
    let mut next: Vec<Instant> = units.iter().map(|_| start).collect();
    let mut ev_next: Vec<Instant> = events.iter().map(|_| start).collect();
    // The unit (index in `units`) of each event definition.
    let ev_unit: Vec<Option<usize>> = events
        .iter()
        .map(|e| units.iter().position(|(rt, _)| rt.index == e.device))
        .collect();
    while !units.is_empty() {
        let Some((i, due)) = next.iter().copied().enumerate().min_by_key(|(_, t)| *t) else {
            break;
        };
        let ev_due = ev_next.iter().copied().enumerate().min_by_key(|(_, t)| *t);
        let (event, due) = match ev_due {
            Some((k, t)) if t < due => (Some(k), t),
            _ => (None, due),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        if let Some(k) = event {
            let e = &mut events[k];
            let skipping = ev_unit[k].is_some_and(|u| health[u].skipping(Instant::now()));
            let again = if skipping {
                false
            } else {
                let mut io = e.ev.bind(&mut link);
                match e.runner.poll(&mut io).await {
                    Ok(again) => again,
                    Err(crate::drivers::events::Stopped) => break,
                }
            };
            if !again {
                let interval = e.runner.def().poll_interval;
                ev_next[k] += interval;
                let now = Instant::now();
                if ev_next[k] < now {
                    ev_next[k] = now;
                }
            }
            continue;
        }
        let (rt, stats) = &units[i];
        let readings = if health[i].skipping(Instant::now()) {
            skipped(rt, &health[i], stats)
        } else {
            let unit = rt.dev.unit;
            let o = poll_cycle(
                rt,
                &mut link,
                || std::future::ready(transport::open_rtu(&serial, unit)),
                stats,
            )
            .await;
            update_health(rt, &mut health[i], &o);
            o.readings
        };
        if out.send(Output::Readings(readings)).await.is_err() {
            break;
        }
        advance(&mut next[i], rt.poll_interval, stats);
    }
}
