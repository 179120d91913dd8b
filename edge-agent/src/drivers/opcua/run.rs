//! The run loop of one OPC UA device: connect → resolve nodes → subscribe (or poll) → on loss,
//! every tag gets a bad-communication reading, then a fresh session with backoff. The per-tag
//! bookkeeping ([`TagBook`]) is pure and unit-tested without a server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore};
use opcua::types::{
    match_extension_object_owned, DataChangeFilter, DataChangeNotification, DataChangeTrigger,
    DataValue, DeadbandType, ExtensionObject, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, NotificationMessage, ReadValueId, StatusChangeNotification,
    StatusCode, TimestampsToReturn,
};
use tokio::sync::{mpsc, watch};

use super::config::{Mode, OpcUaDevice, OpcUaTag};
use super::error::{OpcUaError, OpcUaResult};
use super::session::OpcUaSession;
use super::status::{reading_of, source_ms, status_name, Outcome};
use crate::drivers::health::Backoff;
use crate::drivers::stats::DeviceStats;
use crate::drivers::{DeviceView, Output};
use crate::model::Deadband;
use crate::model::{
    now_ms, Quality, Reading, Stamped, TagId, TimePolicy, TimestampMode, M_TIME_SUBSTITUTED,
    M_TIME_SUBSTITUTED_HELP,
};

/// Metric: sessions re-established after a loss.
pub const M_RECONNECTS: &str = "opcua_reconnects";
/// Metric: node values with a non-good OPC UA status.
pub const M_BAD_STATUS: &str = "opcua_bad_status";
/// Metric: good-status values that could not be used (type mismatch, NaN, arrays…).
pub const M_BAD_VALUES: &str = "opcua_bad_values";
/// Metric: 1 while the session is up.
pub const M_CONNECTED: &str = "opcua_connected";
/// Metric: monitored items created on the server.
pub const M_ITEMS: &str = "opcua_monitored_items";

/// One tag of an OPC UA device.
#[derive(Debug, Clone)]
pub struct RtTag {
    /// Tag id.
    pub id: TagId,
    /// Tag name (logs).
    pub name: String,
    /// Its node.
    pub source: OpcUaTag,
    /// Absolute deadband, passed to the server as a DataChangeFilter.
    pub abs_deadband: Option<f64>,
    /// Heartbeat: re-emit an unchanged value after this long.
    pub max_silence: Duration,
}

/// What a device task runs from.
#[derive(Debug, Clone)]
pub struct DeviceRuntime {
    /// Device name.
    pub name: String,
    /// Settings.
    pub dev: OpcUaDevice,
    /// Polling interval (polling mode).
    pub poll_interval: Duration,
    /// Its tags.
    pub tags: Vec<RtTag>,
    /// PKI directory.
    pub pki: PathBuf,
    /// Who the agent is (its certificate's subject and URI).
    pub identity: super::pki::Identity,
}

impl DeviceRuntime {
    /// The runtime of `unit`'s device (`only`: restrict to these tags); `None` if not OPC UA.
    pub fn new(unit: &DeviceView<'_>, only: Option<&[TagId]>) -> Option<Self> {
        let d = unit.device;
        let dev = d.driver.opcua()?.clone();
        let tags = unit
            .tags_in(only)
            .filter_map(|t| {
                Some(RtTag {
                    id: t.id,
                    name: t.name.clone(),
                    source: t.source.opcua()?.clone(),
                    abs_deadband: match t.deadband {
                        Some(Deadband::Absolute(a)) if a > 0.0 => Some(a),
                        _ => None,
                    },
                    max_silence: t.max_silence,
                })
            })
            .collect();
        Some(DeviceRuntime {
            name: d.name.clone(),
            dev,
            poll_interval: d.poll_interval,
            tags,
            pki: super::pki::dir_for(d, unit.agent),
            identity: super::pki::Identity::of(unit.agent),
        })
    }

    /// Bad readings for every tag (link down).
    pub fn all_bad(&self, quality: Quality, why: &str, status: Option<StatusCode>) -> Vec<Reading> {
        let ts = now_ms();
        self.tags
            .iter()
            .map(|t| {
                let mut r = Reading::bad(t.id, ts, quality, why);
                r.status = status.map(|s| s.bits());
                r
            })
            .collect()
    }
}

/// Per-tag bookkeeping of one device: last reading emitted (for heartbeats in subscription mode)
/// and last outcome (so a bad value is logged when it starts, not on every sample).
#[derive(Debug, Clone)]
pub struct TagBook {
    last: Vec<Option<Reading>>,
    last_emit_ms: Vec<i64>,
    bad: Vec<bool>,
}

impl TagBook {
    /// Book for `n` tags.
    pub fn new(n: usize) -> Self {
        TagBook {
            last: vec![None; n],
            last_emit_ms: vec![0; n],
            bad: vec![false; n],
        }
    }

    /// Record a reading of tag index `i` emitted at `now`; returns true when the tag just went
    /// from usable to a refused value (log it).
    pub fn emitted(&mut self, i: usize, r: &Reading, outcome: &Outcome, now: i64) -> bool {
        let (Some(last), Some(at), Some(bad)) = (
            self.last.get_mut(i),
            self.last_emit_ms.get_mut(i),
            self.bad.get_mut(i),
        ) else {
            return false;
        };
        *last = Some(r.clone());
        *at = now;
        let is_bad = *outcome == Outcome::BadValue;
        let started = is_bad && !*bad;
        *bad = is_bad;
        started
    }

    /// Readings to repeat at `now`: tags whose last reading is older than their max silence
    /// (the subscription says the value did not change). Their emit time is updated.
    pub fn heartbeats(&mut self, tags: &[RtTag], now: i64) -> Vec<Reading> {
        let mut out = Vec::new();
        for (i, t) in tags.iter().enumerate() {
            let (Some(Some(last)), Some(at)) = (self.last.get(i), self.last_emit_ms.get_mut(i))
            else {
                continue;
            };
            let silence = i64::try_from(t.max_silence.as_millis()).unwrap_or(i64::MAX);
            if now.saturating_sub(*at) >= silence {
                let mut r = last.clone();
                r.ts_ms = now;
                r.counter = None;
                *at = now;
                out.push(r);
            }
        }
        out
    }

    /// Has tag index `i` had a reading in this session? (Its first one is the initial value of
    /// its monitored item, whose source time may be old: the value has not changed since.)
    pub fn seen(&self, i: usize) -> bool {
        self.last.get(i).is_some_and(Option::is_some)
    }

    /// Forget everything (new session: the server sends initial values again).
    pub fn clear(&mut self) {
        self.last.iter_mut().for_each(|l| *l = None);
    }
}

enum End {
    Shutdown,
    Lost(String),
}

/// Run loop of one OPC UA device until `shutdown`.
pub async fn run(
    rt: DeviceRuntime,
    out: mpsc::Sender<Output>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<DeviceStats>,
) {
    let mut backoff = Backoff::new(rt.dev.reconnect_min, rt.dev.reconnect_max);
    let mut book = TagBook::new(rt.tags.len());
    let mut was_up = false;
    stats.set(M_CONNECTED, "1 while the OPC UA session is up", 0.0);
    let session_name = format!("flowsquare {}", rt.name);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let connect = OpcUaSession::connect(&rt.dev, &rt.pki, &rt.identity, &session_name);
        let result = tokio::select! {
            r = connect => r,
            _ = shutdown.changed() => break,
        };
        let end = match result {
            Ok(session) => {
                backoff.reset();
                if was_up {
                    stats.add(
                        M_RECONNECTS,
                        "OPC UA sessions re-established after a loss",
                        1.0,
                    );
                }
                was_up = true;
                stats.set(M_CONNECTED, "1 while the OPC UA session is up", 1.0);
                tracing::info!(device = %rt.name, endpoint = %rt.dev.endpoint, mode = rt.dev.mode.as_str(), "OPC UA session up");
                book.clear();
                let end = match rt.dev.mode {
                    Mode::Polling => {
                        poll_session(&rt, &session, &out, &mut shutdown, &stats, &mut book).await
                    }
                    Mode::Subscription => {
                        subscribe_session(&rt, &session, &out, &mut shutdown, &stats, &mut book)
                            .await
                    }
                };
                stats.set(M_CONNECTED, "1 while the OPC UA session is up", 0.0);
                match end {
                    End::Shutdown => {
                        session.close().await;
                        break;
                    }
                    End::Lost(why) => {
                        tracing::warn!(device = %rt.name, reason = %why, "OPC UA session lost; reconnecting");
                        drop(session);
                        why
                    }
                }
            }
            Err(e) => {
                DeviceStats::inc(&stats.link_errors);
                tracing::warn!(device = %rt.name, error = %e, "OPC UA connect failed");
                e.to_string()
            }
        };
        let status = StatusCode::BadCommunicationError;
        let bad = rt.all_bad(Quality::BadCommunication, &end, Some(status));
        DeviceStats::inc(&stats.cycles);
        stats
            .readings
            .fetch_add(bad.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !bad.is_empty() && out.send(Output::Readings(bad)).await.is_err() {
            break;
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Resolve every tag's node on this session; unresolvable ones become bad-device readings.
fn resolve_all(rt: &DeviceRuntime, s: &OpcUaSession) -> (Vec<(usize, NodeId)>, Vec<Reading>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let ts = now_ms();
    for (i, t) in rt.tags.iter().enumerate() {
        match s.resolve(&t.source.node) {
            Ok(n) => ok.push((i, n)),
            Err(why) => {
                let mut r = Reading::bad(t.id, ts, Quality::BadDevice, why);
                r.status = Some(StatusCode::BadNodeIdUnknown.bits());
                bad.push(r);
            }
        }
    }
    (ok, bad)
}

fn account(
    rt: &DeviceRuntime,
    stats: &DeviceStats,
    book: &mut TagBook,
    i: usize,
    r: &Reading,
    outcome: &Outcome,
    now: i64,
) {
    match outcome {
        Outcome::Good => {}
        Outcome::BadStatus => stats.add(M_BAD_STATUS, "OPC UA values with a non-good status", 1.0),
        Outcome::BadValue => {
            DeviceStats::inc(&stats.decode_errors);
            stats.add(
                M_BAD_VALUES,
                "OPC UA values that could not be used (type, NaN, array)",
                1.0,
            );
        }
    }
    if book.emitted(i, r, outcome, now) {
        if let Some(t) = rt.tags.get(i) {
            tracing::warn!(device = %rt.name, tag = %t.name, node = %t.source.node.text,
                error = r.error.as_deref().unwrap_or(""), "OPC UA value refused");
        }
    }
}

async fn poll_session(
    rt: &DeviceRuntime,
    s: &OpcUaSession,
    out: &mpsc::Sender<Output>,
    shutdown: &mut watch::Receiver<bool>,
    stats: &DeviceStats,
    book: &mut TagBook,
) -> End {
    let (nodes, unresolved) = resolve_all(rt, s);
    let ids: Vec<NodeId> = nodes.iter().map(|(_, n)| n.clone()).collect();
    let mut lost = s.lost();
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = shutdown.changed() => return End::Shutdown,
            _ = lost.changed() => {
                return End::Lost(lost.borrow().clone().unwrap_or_else(|| "connection lost".into()));
            }
        }
        if *shutdown.borrow() {
            return End::Shutdown;
        }
        let started = Instant::now();
        let ts = now_ms();
        let values = match s.read_nodes(&ids).await {
            Ok(v) => v,
            Err(e) => {
                DeviceStats::inc(&stats.link_errors);
                return End::Lost(e.to_string());
            }
        };
        let rtt = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        DeviceStats::inc(&stats.cycles);
        DeviceStats::inc(&stats.requests_ok);
        stats
            .rtt_us_sum
            .fetch_add(u64::from(rtt), std::sync::atomic::Ordering::Relaxed);
        let mut readings = unresolved.clone();
        for ((i, _), dv) in nodes.iter().zip(values.iter()) {
            let t = &rt.tags[*i];
            let (mut r, outcome) = reading_of(t.id, dv, t.source.data_type, ts);
            // Polling: the reading's time is the request's, like every other driver. A source
            // time far ahead of it is a clock error worth noting (an old one only says the value
            // has not changed).
            r.ts_ms = ts;
            if let Some(src) = source_ms(dv).filter(|src| *src > ts) {
                let gateway = TimePolicy {
                    mode: TimestampMode::Gateway,
                    ..rt.dev.time
                };
                gateway.stamp(&mut r, src, ts, true);
            }
            r.rtt_us = rtt;
            account(rt, stats, book, *i, &r, &outcome, ts);
            readings.push(r);
        }
        readings.sort_by_key(|r| r.tag);
        stats
            .readings
            .fetch_add(readings.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if out.send(Output::Readings(readings)).await.is_err() {
            return End::Shutdown;
        }
        next += rt.poll_interval;
        let now = Instant::now();
        if next < now {
            DeviceStats::inc(&stats.overruns);
            next = now;
        }
    }
}

/// What the subscription callback hands to the run loop.
enum Note {
    Message(NotificationMessage),
}

struct Forward(mpsc::UnboundedSender<Note>);

impl OnSubscriptionNotificationCore for Forward {
    fn on_subscription_notification(
        &mut self,
        n: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let _ = self.0.send(Note::Message(n));
    }
}

fn monitored_item(
    i: usize,
    node: &NodeId,
    t: &RtTag,
    dev: &OpcUaDevice,
) -> MonitoredItemCreateRequest {
    let filter = match t.abs_deadband {
        Some(db) => ExtensionObject::from_message(DataChangeFilter {
            trigger: DataChangeTrigger::StatusValue,
            deadband_type: DeadbandType::Absolute as u32,
            deadband_value: db,
        }),
        None => ExtensionObject::null(),
    };
    MonitoredItemCreateRequest {
        item_to_monitor: ReadValueId {
            node_id: node.clone(),
            attribute_id: opcua::types::AttributeId::Value as u32,
            ..Default::default()
        },
        monitoring_mode: MonitoringMode::Reporting,
        requested_parameters: MonitoringParameters {
            // Client handle = tag index + 1 (0 asks the library to pick one).
            client_handle: u32::try_from(i + 1).unwrap_or(u32::MAX),
            sampling_interval: t.source.sampling(dev).as_secs_f64() * 1000.0,
            filter,
            queue_size: t.source.queue(dev),
            discard_oldest: true,
        },
    }
}

async fn subscribe_session(
    rt: &DeviceRuntime,
    s: &OpcUaSession,
    out: &mpsc::Sender<Output>,
    shutdown: &mut watch::Receiver<bool>,
    stats: &DeviceStats,
    book: &mut TagBook,
) -> End {
    match subscribe(rt, s, out, shutdown, stats, book).await {
        Ok(end) => end,
        Err(e) => {
            DeviceStats::inc(&stats.link_errors);
            End::Lost(e.to_string())
        }
    }
}

async fn subscribe(
    rt: &DeviceRuntime,
    s: &OpcUaSession,
    out: &mpsc::Sender<Output>,
    shutdown: &mut watch::Receiver<bool>,
    stats: &DeviceStats,
    book: &mut TagBook,
) -> OpcUaResult<End> {
    let dev = &rt.dev;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pi = dev.publishing_interval;
    // A keep-alive about every 5 s; the server drops the subscription after 6 missed ones.
    let keep_alive = u32::try_from((5_000 / pi.as_millis().max(1)).max(1)).unwrap_or(1);
    let lifetime = keep_alive.saturating_mul(6);
    let sub_id = s
        .inner()
        .create_subscription(pi, lifetime, keep_alive, 0, 0, true, Forward(tx))
        .await
        .map_err(|e| OpcUaError::service("CreateSubscription", e))?;
    // If neither data nor a keep-alive comes for this long, the session is wedged.
    let watchdog = (pi * keep_alive * 3).max(Duration::from_secs(10));

    let (nodes, unresolved) = resolve_all(rt, s);
    let mut initial = unresolved;
    let mut created = 0usize;
    let mut refused = 0usize;
    let ts = now_ms();
    for chunk in nodes.chunks(dev.max_nodes_per_request.max(1)) {
        let reqs: Vec<MonitoredItemCreateRequest> = chunk
            .iter()
            .map(|(i, n)| monitored_item(*i, n, &rt.tags[*i], dev))
            .collect();
        let results = s
            .inner()
            .create_monitored_items(sub_id, TimestampsToReturn::Both, reqs)
            .await
            .map_err(|e| OpcUaError::service("CreateMonitoredItems", e))?;
        for ((i, _), res) in chunk.iter().zip(results.iter()) {
            let status = res.result.status_code;
            if status.is_good() {
                created += 1;
            } else {
                let t = &rt.tags[*i];
                let mut r = Reading::bad(
                    t.id,
                    ts,
                    super::status::quality_of(status),
                    status_name(status),
                );
                r.status = Some(status.bits());
                stats.add(M_BAD_STATUS, "OPC UA values with a non-good status", 1.0);
                refused += 1;
                // The first few by name; the rest in the summary below (no log flood).
                if refused <= 10 {
                    tracing::warn!(device = %rt.name, tag = %t.name, node = %t.source.node.text, status = %status, "monitored item refused");
                }
                initial.push(r);
            }
        }
    }
    stats.set(
        M_ITEMS,
        "OPC UA monitored items on the server",
        created as f64,
    );
    if !initial.is_empty() {
        for r in &initial {
            if let Some(i) = rt.tags.iter().position(|t| t.id == r.tag) {
                book.emitted(i, r, &Outcome::BadStatus, ts);
            }
        }
        if out.send(Output::Readings(initial)).await.is_err() {
            return Ok(End::Shutdown);
        }
    }

    let mut lost = s.lost();
    let mut last_note = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv() => {
                let Some(Note::Message(msg)) = n else {
                    return Ok(End::Lost("subscription callback dropped".into()));
                };
                last_note = Instant::now();
                DeviceStats::inc(&stats.requests_ok);
                match handle_message(rt, msg, stats, book) {
                    Ok(readings) if readings.is_empty() => {}
                    Ok(readings) => {
                        DeviceStats::inc(&stats.cycles);
                        stats.readings.fetch_add(readings.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        if out.send(Output::Readings(readings)).await.is_err() {
                            return Ok(End::Shutdown);
                        }
                    }
                    Err(why) => return Ok(End::Lost(why)),
                }
            }
            _ = tick.tick() => {
                if last_note.elapsed() > watchdog {
                    DeviceStats::inc(&stats.timeouts);
                    return Ok(End::Lost(format!("no publish response for {}s", last_note.elapsed().as_secs())));
                }
                let hb = book.heartbeats(&rt.tags, now_ms());
                if !hb.is_empty() {
                    stats.readings.fetch_add(hb.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if out.send(Output::Readings(hb)).await.is_err() {
                        return Ok(End::Shutdown);
                    }
                }
            }
            _ = shutdown.changed() => return Ok(End::Shutdown),
            _ = lost.changed() => {
                return Ok(End::Lost(lost.borrow().clone().unwrap_or_else(|| "connection lost".into())));
            }
        }
    }
}

/// Readings of one notification message; `Err` when the server reports the subscription gone.
fn handle_message(
    rt: &DeviceRuntime,
    msg: NotificationMessage,
    stats: &DeviceStats,
    book: &mut TagBook,
) -> Result<Vec<Reading>, String> {
    let mut readings = Vec::new();
    let now = now_ms();
    let mut gone = None;
    for obj in msg.notification_data.into_iter().flatten() {
        match_extension_object_owned!(obj,
            v: DataChangeNotification => {
                for item in v.monitored_items.into_iter().flatten() {
                    let Some(i) = (item.client_handle as usize).checked_sub(1) else {
                        continue;
                    };
                    let Some(t) = rt.tags.get(i) else {
                        continue;
                    };
                    let dv: DataValue = item.value;
                    let (mut r, outcome) = reading_of(t.id, &dv, t.source.data_type, now);
                    if let Some(src) = source_ms(&dv) {
                        if rt.dev.time.stamp(&mut r, src, now, !book.seen(i)) == Stamped::Substituted {
                            stats.add(M_TIME_SUBSTITUTED, M_TIME_SUBSTITUTED_HELP, 1.0);
                        }
                    }
                    account(rt, stats, book, i, &r, &outcome, now);
                    readings.push(r);
                }
            },
            v: StatusChangeNotification => {
                if !v.status.is_good() {
                    gone = Some(format!("subscription status {}", v.status));
                }
            }
        );
    }
    match gone {
        Some(why) => Err(why),
        None => Ok(readings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::opcua::config::{NodeRef, OpcType};
    use crate::model::Value;

    fn tag(i: u32, silence_ms: u64) -> RtTag {
        RtTag {
            id: i,
            name: format!("t{i}"),
            source: OpcUaTag {
                node: NodeRef::parse("ns=2;s=x").unwrap(),
                data_type: OpcType::Auto,
                unsigned_max: None,
                sampling_interval: None,
                queue_size: None,
            },
            abs_deadband: None,
            max_silence: Duration::from_millis(silence_ms),
        }
    }

    #[test]
    fn unchanged_values_are_repeated_after_max_silence_only() {
        let tags = vec![tag(0, 1000), tag(1, 5000)];
        let mut b = TagBook::new(2);
        let r0 = Reading::good(0, 100, Value::Float(1.0), 0);
        let r1 = Reading::good(1, 100, Value::Float(2.0), 0);
        b.emitted(0, &r0, &Outcome::Good, 100);
        b.emitted(1, &r1, &Outcome::Good, 100);
        assert!(b.heartbeats(&tags, 900).is_empty());
        let hb = b.heartbeats(&tags, 1100);
        assert_eq!(hb.len(), 1);
        assert_eq!(
            (hb[0].tag, hb[0].ts_ms, hb[0].value.clone()),
            (0, 1100, Some(Value::Float(1.0)))
        );
        assert!(b.heartbeats(&tags, 1200).is_empty());
        b.clear();
        assert!(b.heartbeats(&tags, 99_999).is_empty());
    }

    #[test]
    fn a_refused_value_is_logged_when_it_starts() {
        let mut b = TagBook::new(1);
        let r = Reading::bad(0, 1, Quality::BadDecode, "type mismatch");
        assert!(b.emitted(0, &r, &Outcome::BadValue, 1));
        assert!(!b.emitted(0, &r, &Outcome::BadValue, 2));
        let g = Reading::good(0, 3, Value::Int(1), 0);
        assert!(!b.emitted(0, &g, &Outcome::Good, 3));
        assert!(b.emitted(0, &r, &Outcome::BadValue, 4));
    }
}
