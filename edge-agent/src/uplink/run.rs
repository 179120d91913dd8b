//! The uplink event loop: rumqttc I/O around the pure `UplinkState`.
//!
//! On every connection: retained birth (tag catalog, config hash), retained status online (the
//! Last Will says offline), subscribe to our ack topic, re-send everything in flight. Then, every
//! tick: publish what the state machine asks for (re-sends, live batches, rate-limited backlog);
//! on each acknowledgement from the cloud, delete the batch from the buffer. Malformed messages on
//! our topics are logged and counted, never acted on; so are acks for another buffer epoch and,
//! with `[uplink] ack_key_*`, acks without a valid signature (`AckGate`). Connection errors are logged once per
//! distinct cause and retried with capped exponential backoff (no log flood).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::link::{Client, LinkEvent, Poller};
use tokio::sync::watch;

use flowsquare_wire as wire;

use super::config::UplinkConfig;
use super::error::UplinkError;
use super::state::{Next, UplinkState};
use super::Catalog;
use crate::buffer::{Buffer, LeaseOrder, LeaseRequest};
use crate::metrics::Telemetry;
use crate::model::now_ms;

/// Tick of the send loop (re-sends, the backlog's rate). New batches do not wait for it: the
/// buffer wakes the loop after each commit (`Buffer::data_ready`).
const TICK: Duration = Duration::from_millis(250);
/// How often both kinds of lease are asked again even when nothing new was committed (live
/// readings age into the backlog; a gap may have been recorded).
const RESCAN: Duration = Duration::from_secs(1);

/// Run the uplink for as long as the process lives: a failed uplink task (an error or a panic)
/// is logged, counted (`flowsquare_uplink_restarts_total`) and started again with backoff
/// (1 s doubling to 30 s, back to 1 s after a minute of running). While it is down,
/// `flowsquare_uplink_running` and `flowsquare_mqtt_connected` are 0 and the uplink feeds no
/// watchdog progress. Returns after `shutdown` (the uplink drained as in [`run`]).
pub async fn supervise<C: Catalog>(
    cfg: UplinkConfig,
    maps: watch::Receiver<Arc<C>>,
    buffer: Buffer,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let up = telemetry.uplink.clone();
    let mut backoff =
        crate::drivers::health::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        up.running.store(true, Relaxed);
        let task = tokio::spawn(run(
            cfg.clone(),
            maps.clone(),
            buffer.clone(),
            telemetry.clone(),
            shutdown.clone(),
        ));
        let res = task.await;
        up.running.store(false, Relaxed);
        up.connected.store(false, Relaxed);
        let why = match res {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the uplink task failed: {e}"),
        };
        if *shutdown.borrow() {
            tracing::error!(error = %why, "uplink stopped during shutdown");
            return;
        }
        if started.elapsed() >= Duration::from_secs(60) {
            backoff.reset();
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        let n = up.restarts.fetch_add(1, Relaxed) + 1;
        tracing::error!(error = %why, retry_in_ms = delay.as_millis() as u64, restarts = n,
            "uplink stopped; restarting it (readings keep being buffered)");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

pub(super) fn tls_config(cfg: &UplinkConfig) -> Result<rustls::ClientConfig, UplinkError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| UplinkError::Tls(format!("{}: {e}", p.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(p) => {
            for c in rustls_pemfile::certs(&mut read(p)?.as_slice()) {
                let c = c.map_err(|e| UplinkError::Tls(format!("{}: {e}", p.display())))?;
                roots
                    .add(c)
                    .map_err(|e| UplinkError::Tls(format!("{}: {e}", p.display())))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => {
            let certs: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut read(c)?.as_slice())
                    .collect::<Result<_, _>>()
                    .map_err(|e| UplinkError::Tls(format!("{}: {e}", c.display())))?;
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(k)?.as_slice())
                .map_err(|e| UplinkError::Tls(format!("{}: {e}", k.display())))?
                .ok_or_else(|| {
                    UplinkError::Tls(format!("{}: no private key found", k.display()))
                })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| UplinkError::Tls(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Run the uplink until `shutdown`; then drain (send what the buffer still holds and wait for
/// the acknowledgements, up to `drain_timeout`) and disconnect with a retained offline status.
pub async fn run<C: Catalog>(
    cfg: UplinkConfig,
    mut maps: watch::Receiver<Arc<C>>,
    buffer: Buffer,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), UplinkError> {
    let map = maps.borrow_and_update().clone();
    let topics = wire::Topics::new(
        cfg.topic_root.clone(),
        map.site().to_owned(),
        map.agent().to_owned(),
    )?;
    let (client, events) = super::link::open(&cfg, &*map, &topics)?;
    // Polled through a `Poller`: the select below must never cut a connection handshake.
    let mut eventloop = Poller::new(events);
    let mut state = UplinkState::new(
        usize::from(cfg.inflight),
        u64::from(cfg.batch_readings),
        cfg.ack_timeout,
        cfg.backlog_rate,
    );
    let mut payloads: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
    for b in buffer.leased().await? {
        state.restore(b.batch_id, b.readings);
        payloads.insert(b.batch_id, b.payload);
    }
    if !payloads.is_empty() {
        tracing::info!(
            batches = payloads.len(),
            "re-sending batches leased before the restart (same batch ids)"
        );
    }
    let identity = buffer.identity().clone();
    let mut gate = AckGate {
        site: map.site().to_owned(),
        agent: map.agent().to_owned(),
        key: cfg.read_ack_key().map_err(UplinkError::Config)?,
        epoch: identity.epoch,
        warned: None,
        unwarned: 0,
    };
    // The map and time of the birth to publish on every connection.
    let mut birth = (map.clone(), now_ms());
    let data_topic = topics.data();
    let ack_topic = topics.ack();
    let live_window = i64::try_from(cfg.live_window.as_millis()).unwrap_or(10_000);
    let up = &telemetry.uplink;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(cfg.heartbeat.max(Duration::from_secs(1)));
    let mut last_error: Option<String> = None;
    let mut backoff = crate::drivers::health::Backoff::new(
        Duration::from_millis(500),
        cfg.reconnect_max.max(Duration::from_millis(500)),
    );
    // A restart (by `supervise`) after shutdown was asked for: drain and stop.
    let mut draining: Option<Instant> = shutdown.borrow_and_update().then(Instant::now);
    // The buffer's store count when leases were last asked for, and when both kinds were.
    let (mut seen_changes, mut last_rescan) = (buffer.changes(), Instant::now());

    loop {
        republish_birth(
            &mut maps,
            &mut birth,
            &identity,
            &client,
            &topics,
            state.connected(),
        );
        let deadline_passed = draining.is_some_and(|t| t.elapsed() >= cfg.drain_timeout);
        if draining.is_some()
            && ((state.in_flight() == 0 && state.exhausted())
                || deadline_passed
                || !state.connected())
        {
            break;
        }
        tokio::select! {
            ev = eventloop.next() => match ev {
                LinkEvent::Connected => {
                    if last_error.take().is_some() {
                        tracing::info!(broker = %cfg.broker, "connected to the broker again");
                    } else {
                        tracing::info!(broker = %cfg.broker, "connected to the broker");
                    }
                    backoff.reset();
                    state.on_connected();
                    state.tick();
                    tick.reset_immediately();
                    up.connected.store(true, Relaxed);
                    client.subscribe(ack_topic.clone());
                    client.publish(topics.birth(), true, true, birth.0.birth_json(birth.1, &identity));
                    client.publish(topics.status(), true, true, wire::Status::online(now_ms(), env!("CARGO_PKG_VERSION")).encode());
                }
                LinkEvent::Message { topic, payload } => {
                    if topic != ack_topic {
                        up.malformed_messages.fetch_add(1, Relaxed);
                        tracing::warn!(topic = %topic, "message on an unexpected topic ignored");
                        continue;
                    }
                    match wire::Ack::decode(&payload) {
                        Ok(ack) if !gate.accepts(&ack, up) => {}
                        Ok(ack) => {
                            for id in ack.batch_ids {
                                if ack.status == wire::AckStatus::Rejected {
                                    up.rejected_batches.fetch_add(1, Relaxed);
                                    tracing::error!(batch_id = id, reason = ack.reason.as_deref().unwrap_or(""),
                                        "the cloud rejected a batch (kept in its dead-letter table)");
                                }
                                if state.on_ack(id).is_some() {
                                    up.acked_batches.fetch_add(1, Relaxed);
                                } else {
                                    up.unknown_acks.fetch_add(1, Relaxed);
                                }
                                payloads.remove(&id);
                                match buffer.ack(id).await {
                                    Ok(n) => { up.acked_readings.fetch_add(n, Relaxed); }
                                    Err(e) => tracing::error!(error = %e, batch_id = id, "cannot delete an acknowledged batch"),
                                }
                            }
                            // Window space freed: send more now rather than at the next tick.
                            tick.reset_immediately();
                        }
                        Err(e) => {
                            up.malformed_messages.fetch_add(1, Relaxed);
                            tracing::warn!(topic = %topic, error = %e, "malformed acknowledgement ignored");
                        }
                    }
                }
                LinkEvent::Other | LinkEvent::DisconnectSent => {}
                LinkEvent::Failed(msg) => {
                    state.on_disconnected();
                    up.connected.store(false, Relaxed);
                    up.connect_errors.fetch_add(1, Relaxed);
                    let delay = backoff.next_delay(rand::random::<f64>());
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::error!(broker = %cfg.broker, error = %msg, retry_in_ms = delay.as_millis() as u64, "broker connection failed; retrying with backoff");
                        last_error = Some(msg);
                    }
                    if draining.is_some() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {
                            draining.get_or_insert_with(Instant::now);
                            state.tick();
                        }
                    }
                }
            },
            _ = tick.tick() => {
                up.loop_ticks.fetch_add(1, Relaxed);
                // A reload may have switched the map since the top of the loop: announce it
                // before leasing batches written under it.
                republish_birth(&mut maps, &mut birth, &identity, &client, &topics, state.connected());
                // Ask the buffer again only when it may hold something new: readings committed
                // since (live), or a second passed (both kinds), or draining.
                let changes = buffer.changes();
                if draining.is_none() || !state.exhausted() || state.in_flight() > 0 {
                    if draining.is_some() || last_rescan.elapsed() >= RESCAN {
                        state.tick();
                        last_rescan = Instant::now();
                    } else if changes != seen_changes {
                        state.tick_live();
                    }
                }
                seen_changes = changes;
                let now = Instant::now();
                for _ in 0..64 {
                    match state.next(now) {
                        Next::Wait => break,
                        Next::Resend(id) => {
                            let payload = match payloads.get(&id) {
                                Some(p) => p.clone(),
                                None => continue,
                            };
                            if !client.publish(data_topic.clone(), true, false, payload) {
                                state.nack(id);
                                break;
                            }
                        }
                        Next::LeaseLive { max } => {
                            let cutoff = now_ms() - live_window;
                            let req = LeaseRequest { max_readings: max, order: LeaseOrder::NewestFirst, range: cutoff..i64::MAX, with_gaps: true };
                            let got = buffer.lease(req).await?;
                            publish_new(&client, &data_topic, &mut state, &mut payloads, got, false, now);
                        }
                        Next::LeaseBacklog { max } => {
                            let cutoff = now_ms() - live_window;
                            let req = LeaseRequest { max_readings: max, order: LeaseOrder::OldestFirst, range: i64::MIN..cutoff, with_gaps: true };
                            let got = buffer.lease(req).await?;
                            publish_new(&client, &data_topic, &mut state, &mut payloads, got, true, now);
                        }
                    }
                }
                let c = &state.counters;
                up.sent_batches.store(c.sent_batches, Relaxed);
                up.sent_readings.store(c.sent_readings, Relaxed);
                up.resent_batches.store(c.resent_batches, Relaxed);
                up.in_flight_batches.store(state.in_flight() as u64, Relaxed);
                up.in_flight_readings.store(state.in_flight_readings(), Relaxed);
            }
            _ = buffer.data_ready() => {
                // Something leasable was stored: lease now rather than at the next tick.
                tick.reset_immediately();
            }
            _ = heartbeat.tick(), if state.connected() => {
                let hb = telemetry.heartbeat(&buffer).await;
                client.publish(topics.heartbeat(), false, false, hb.encode());
            }
            _ = shutdown.changed(), if draining.is_none() => {
                tracing::info!(in_flight = state.in_flight(), "uplink draining before shutdown");
                draining = Some(Instant::now());
                // One more round of leases: the last readings were committed just before.
                state.tick();
            }
        }
    }
    if state.in_flight() > 0 {
        tracing::warn!(in_flight = state.in_flight(), "stopping with batches not yet acknowledged: they stay in the buffer and are re-sent on the next start");
    }
    if state.connected() {
        client.publish(
            topics.status(),
            true,
            true,
            wire::Status::offline(now_ms(), "agent stopped").encode(),
        );
        client.disconnect();
        // Let the event loop flush the offline status and the disconnect.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if matches!(
                    eventloop.next().await,
                    LinkEvent::DisconnectSent | LinkEvent::Failed(_)
                ) {
                    break;
                }
            }
        })
        .await;
    }
    up.connected.store(false, Relaxed);
    Ok(())
}

/// How often a forged acknowledgement is logged at most (each one is counted).
const FORGED_LOG_EVERY: Duration = Duration::from_secs(60);

/// Which acknowledgements the agent acts on: with an ack key, only those signed with it for
/// this site and agent; and only those for this buffer's epoch.
struct AckGate {
    site: String,
    agent: String,
    key: Option<flowsquare_service::secret::Secret>,
    epoch: u64,
    /// When a forged ack was last logged, and how many were counted since without a log line.
    warned: Option<Instant>,
    unwarned: u64,
}

impl AckGate {
    /// Whether to act on `ack`; one that is refused is counted (and logged, rate-limited).
    fn accepts(&mut self, ack: &wire::Ack, up: &crate::metrics::UplinkShared) -> bool {
        if let Some(key) = &self.key {
            if !ack.verify(&self.site, &self.agent, key.expose().as_bytes()) {
                // Not from the ingest (or not for us): acting on it could delete data the
                // cloud never stored. The batches stay in flight and are re-sent.
                up.forged_acks.fetch_add(1, Relaxed);
                self.unwarned += 1;
                if self.warned.is_none_or(|t| t.elapsed() >= FORGED_LOG_EVERY) {
                    tracing::warn!(status = ?ack.status, batch_ids = ?ack.batch_ids, signed = ack.sig.is_some(),
                        ignored_since_last_warning = self.unwarned,
                        "acknowledgement without a valid signature ignored (nothing deleted; is the cloud's ack key for this site the agent's ack key?)");
                    self.warned = Some(Instant::now());
                    self.unwarned = 0;
                }
                return false;
            }
        }
        if !ack.is_for_epoch(self.epoch) {
            // Meant for another buffer database (batch ids restart in a new one): acting on it
            // could delete data the cloud never stored.
            up.foreign_epoch_acks.fetch_add(1, Relaxed);
            tracing::debug!(ack_epoch = ack.buffer_epoch, buffer_epoch = self.epoch, batch_ids = ?ack.batch_ids,
                "acknowledgement for another buffer epoch ignored");
            return false;
        }
        true
    }
}

/// After a live reload: a new birth (new catalog and config hash), retained, published before
/// any batch written under the new map (those carry its hash; older batches keep theirs).
fn republish_birth<C: Catalog>(
    maps: &mut watch::Receiver<Arc<C>>,
    birth: &mut (Arc<C>, i64),
    identity: &wire::messages::BufferIdentity,
    client: &Client,
    topics: &wire::Topics,
    connected: bool,
) {
    if !maps.has_changed().unwrap_or(false) {
        return;
    }
    let map = maps.borrow_and_update().clone();
    *birth = (map.clone(), now_ms());
    tracing::info!(config_hash = %map.config_hash(), tags = map.tag_count(), "tag map reloaded: publishing a new birth");
    if connected {
        client.publish(
            topics.birth(),
            true,
            true,
            map.birth_json(birth.1, identity),
        );
    }
}

fn publish_new(
    client: &Client,
    topic: &str,
    state: &mut UplinkState,
    payloads: &mut std::collections::HashMap<u64, Vec<u8>>,
    got: Option<crate::buffer::OutBatch>,
    backlog: bool,
    now: Instant,
) {
    match got {
        None => state.leased(backlog, None, now),
        Some(b) => {
            state.leased(backlog, Some((b.batch_id, b.readings)), now);
            if !b.more {
                state.drained(backlog);
            }
            if !client.publish(topic.to_owned(), true, false, b.payload.clone()) {
                state.nack(b.batch_id);
            }
            payloads.insert(b.batch_id, b.payload);
        }
    }
}
