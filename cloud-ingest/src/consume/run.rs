//! The consumer loop. Two tasks:
//! - the MQTT task polls rumqttc (manual acknowledgements) and forwards every publication, in
//!   arrival order, to the commit task;
//! - the commit task takes what has arrived (up to `max_batches_per_commit`), stores it (births
//!   first, then status/heartbeats, dead letters, then the batches in one transaction), publishes
//!   the end-to-end acknowledgements, and only then acknowledges the MQTT messages, in arrival
//!   order. While the database is down nothing is acknowledged at either level: the commit is
//!   retried with backoff, the broker's in-flight window stops delivery, and the agents keep
//!   their data until it is committed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use flowsquare_service::clock;
use flowsquare_wire as wire;

use super::state::{acks_for, classify, conflicts, BatchKey, Incoming};
use crate::config::{AckKeys, IngestConfig};
use crate::store::{CommitOutcome, DeadLetter, Store, StoreError};

/// Counters of the consumer.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Publications received.
    pub received: AtomicU64,
    /// Embedded broker: connections refused or closed by the gate (bad login, client id not
    /// the identity's, a topic not the agent's own).
    pub broker_refused: AtomicU64,
    /// Batches stored.
    pub stored_batches: AtomicU64,
    /// Readings stored.
    pub stored_readings: AtomicU64,
    /// Batches delivered again and not stored again.
    pub duplicates: AtomicU64,
    /// Batches held back because their birth had not arrived.
    pub unknown_catalog: AtomicU64,
    /// Messages kept in the dead-letter table.
    pub dead_letters: AtomicU64,
    /// Batches whose key was stored with other content (dead-lettered, rejected, alerted).
    pub conflicts: AtomicU64,
    /// Readings and events refused for a time outside the accepted window (`[ingest]
    /// accept_past_days` / `accept_future_days`): kept as dead letters, their batches acked.
    pub out_of_window: AtomicU64,
    /// Births refused (the tag registry limit, or another permanent error): kept as dead letters.
    pub refused_births: AtomicU64,
    /// Batches of an agent whose birth was refused by the tag registry limit (their catalog is
    /// not registered): not acknowledged (the agent keeps them), counted, logged at most once a
    /// minute per agent.
    pub refused_batches: AtomicU64,
    /// The agents whose latest birth the tag registry limit refused, by (site, agent); cleared
    /// by a birth of the agent that is registered. Shown in `/api/v1/agents`.
    pub refused_agents: std::sync::Mutex<std::collections::HashMap<(String, String), RefusedBirth>>,
    /// Failed commits (retried).
    pub commit_errors: AtomicU64,
    /// End-to-end acknowledgements published (batch ids).
    pub acked_batches: AtomicU64,
    /// Turns of the broker event loop (watchdog progress: events, keep-alives, retries).
    pub loop_events: AtomicU64,
    /// Database operations attempted by the commit task, successful or retried (watchdog).
    pub db_attempts: AtomicU64,
    /// Is the commit task working on a group (not waiting for messages)?
    pub committing: std::sync::atomic::AtomicBool,
    /// Poll-to-commit latency of every reading stored (`latency.rs`).
    pub poll_to_commit: super::latency::LatencyHistogram,
    /// The roller (`serve`): minute marks (agent × minute) not rolled yet, at its last pass.
    pub rollup_pending_minutes: AtomicU64,
    /// The roller: seconds since the oldest pending minute closed, at its last pass.
    pub rollup_lag_seconds: AtomicU64,
}

/// An agent's birth refused by the tag registry limit, as the consumer remembers it (the birth
/// is retained on the broker: after a restart it is refused, and remembered, again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedBirth {
    /// The refused birth's config hash: batches of this catalog wait.
    pub config_hash: String,
    /// Tags the agent would have had.
    pub total: usize,
    /// The limit.
    pub limit: usize,
    /// Its batches refused since (not acknowledged).
    pub batches: u64,
    /// When a refused batch of it was last logged (data clock, ms).
    pub logged_ms: Option<i64>,
}

impl RefusedBirth {
    /// The agent's status line: `birth refused: N tags > limit M`.
    pub fn status(&self) -> String {
        format!("birth refused: {} tags > limit {}", self.total, self.limit)
    }
}

impl ConsumerStats {
    /// The status line of an agent whose birth is refused (None: not refused).
    pub fn birth_refused(&self, site: &str, agent: &str) -> Option<String> {
        let map = self.refused_agents.lock().ok()?;
        map.get(&(site.to_owned(), agent.to_owned()))
            .map(RefusedBirth::status)
    }

    /// Remember (or forget, `None`) an agent's refused birth.
    fn set_refused(&self, site: &str, agent: &str, r: Option<RefusedBirth>) {
        // A poisoned lock only means another thread panicked while holding it: the map is
        // still usable.
        let mut map = self
            .refused_agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (site.to_owned(), agent.to_owned());
        match r {
            Some(r) => {
                map.insert(key, r);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// A batch that waits for its catalog: if the agent's birth of that catalog was refused,
    /// count it and log it (at most once a minute per agent). Returns whether it was such a
    /// batch.
    fn refused_batch(&self, b: &wire::Batch, now_ms: i64) -> bool {
        let mut map = self
            .refused_agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(r) = map.get_mut(&(b.site.clone(), b.agent.clone())) else {
            return false;
        };
        if r.config_hash != b.config_hash {
            return false;
        }
        r.batches += 1;
        self.refused_batches.fetch_add(1, Relaxed);
        if r.logged_ms
            .is_none_or(|t| now_ms - t >= REFUSED_LOG_EVERY_MS)
        {
            r.logged_ms = Some(now_ms);
            tracing::warn!(site = %b.site, agent = %b.agent, config_hash = %b.config_hash, batch_id = b.batch_id,
                refused_batches = r.batches, reason = %r.status(),
                "batch of an agent whose birth was refused: not acknowledged, the agent keeps its data until its tags fit max_tags_per_agent");
        }
        true
    }
}

/// How often the refused batches of one agent are logged.
const REFUSED_LOG_EVERY_MS: i64 = 60_000;

/// Run an operation until it succeeds, retrying transient failures with backoff (and giving up
/// on permanent ones, which are returned). Returns `None` if shutdown came first.
async fn retry<T, F, Fut>(
    what: &str,
    stats: &ConsumerStats,
    shutdown: &mut watch::Receiver<bool>,
    mut op: F,
) -> Option<Result<T, StoreError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut logged = false;
    loop {
        stats.db_attempts.fetch_add(1, Relaxed);
        match op().await {
            Ok(v) => {
                if logged {
                    tracing::info!(what, "database available again");
                }
                return Some(Ok(v));
            }
            Err(e) if e.is_transient() => {
                stats.commit_errors.fetch_add(1, Relaxed);
                if !logged {
                    tracing::error!(what, error = %e, "database unavailable: nothing is acknowledged until it is back; retrying");
                    logged = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return None,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Consume until `shutdown`; `connected` follows the broker connection (for `/readyz`).
pub async fn run(
    cfg: IngestConfig,
    store: Arc<dyn Store>,
    stats: Arc<ConsumerStats>,
    connected: Arc<std::sync::atomic::AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let (host, port) = cfg.broker_addr()?;
    let keys = Arc::new(cfg.ack_keys()?);
    // The broker must deliver what we subscribe to, the way we subscribe (`probe.rs`).
    if !super::probe::check(&cfg, &mut shutdown)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(());
    }
    if !keys.is_empty() {
        tracing::info!(sites = ?keys.sites.keys().collect::<Vec<_>>(), every_other_site = keys.all.is_some(),
            "end-to-end acks are signed ([mqtt] ack_keys)");
    }
    let client_id = cfg
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("cloud-ingest-{}", std::process::id()));
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_manual_acks(true);
    o.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
    if let Some((u, p)) = cfg.mqtt_credentials()? {
        o.set_credentials(u, p.expose());
    }
    let (client, mut events) = AsyncClient::new(o, 4096);
    let root = cfg.mqtt.topic_root.clone();
    let data_filter = if cfg.mqtt.group.is_empty() {
        wire::Topics::filter(&root, wire::Kind::Data)
    } else {
        wire::Topics::shared_filter(&cfg.mqtt.group, &root, wire::Kind::Data)
    }
    .map_err(|e| e.to_string())?;
    // Births and statuses are retained, and retained messages are not delivered to shared
    // subscriptions: every replica subscribes to them directly (storing them is idempotent).
    let mut others = Vec::new();
    for k in [wire::Kind::Birth, wire::Kind::Status, wire::Kind::Heartbeat] {
        others.push(wire::Topics::filter(&root, k).map_err(|e| e.to_string())?);
    }
    let (tx, rx) = mpsc::channel::<Publish>(4096);
    let committer = tokio::spawn(commit_task(
        rx,
        client.clone(),
        store,
        stats.clone(),
        cfg.clone(),
        keys,
        shutdown.clone(),
    ));
    let mut last_error: Option<String> = None;
    loop {
        stats.loop_events.fetch_add(1, Relaxed);
        tokio::select! {
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(broker = %cfg.mqtt.broker, filter = %data_filter, "connected; subscribing");
                    last_error = None;
                    let _ = client.subscribe(data_filter.clone(), QoS::AtLeastOnce).await;
                    for f in &others {
                        let _ = client.subscribe(f.clone(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    // Ready once the broker has confirmed the subscriptions (not merely the
                    // connection): from here on nothing published is missed.
                    connected.store(true, Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    stats.received.fetch_add(1, Relaxed);
                    if tx.send(p).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    connected.store(false, Relaxed);
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::error!(broker = %cfg.mqtt.broker, error = %msg, "broker connection failed; retrying");
                        last_error = Some(msg);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    connected.store(false, Relaxed);
    drop(tx);
    let _ = committer.await;
    let _ = client.try_disconnect();
    Ok(())
}

async fn commit_task(
    mut rx: mpsc::Receiver<Publish>,
    client: AsyncClient,
    store: Arc<dyn Store>,
    stats: Arc<ConsumerStats>,
    cfg: IngestConfig,
    keys: Arc<AckKeys>,
    mut shutdown: watch::Receiver<bool>,
) {
    let root = cfg.mqtt.topic_root.clone();
    let max = cfg.ingest.max_batches_per_commit.max(1);
    loop {
        stats.committing.store(false, Relaxed);
        let Some(first) = rx.recv().await else {
            break;
        };
        stats.committing.store(true, Relaxed);
        let mut group = vec![first];
        while group.len() < max {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        // Receive times, last-seen times and the poll-to-commit latency are on the data clock
        // (the simulator's when simulated): they compare with the data's own times.
        let now = clock::now_ms();
        let classified: Vec<Incoming> = group
            .iter()
            .map(|p| classify(&root, &p.topic, &p.payload, now))
            .collect();
        let mut batches = Vec::new();
        // The topic and raw payload of each batch, for a dead letter.
        let mut sources: Vec<(String, Vec<u8>)> = Vec::new();
        let mut rejects: Vec<(BatchKey, String)> = Vec::new();
        let mut ok = true;
        // Births first: a batch in this group may need the catalog a birth in it brings.
        for (inc, p) in classified.iter().zip(&group) {
            if let Incoming::Birth(b) = inc {
                ok &= match retry("birth", &stats, &mut shutdown, || store.birth(b, now)).await {
                    None => false,
                    Some(Ok(())) => {
                        stats.set_refused(&b.site, &b.agent, None);
                        true
                    }
                    Some(Err(e)) => refuse_birth(&store, &stats, &mut shutdown, p, e, now).await,
                };
            }
        }
        for (inc, p) in classified.into_iter().zip(&group) {
            let r = match inc {
                Incoming::Batch(b) => {
                    batches.push(*b);
                    sources.push((p.topic.clone(), p.payload.to_vec()));
                    continue;
                }
                Incoming::Status {
                    site,
                    agent,
                    status,
                } => {
                    retry("status", &stats, &mut shutdown, || {
                        store.status(&site, &agent, &status, now)
                    })
                    .await
                }
                Incoming::Heartbeat {
                    site,
                    agent,
                    heartbeat,
                } => {
                    retry("heartbeat", &stats, &mut shutdown, || {
                        store.heartbeat(&site, &agent, &heartbeat, now)
                    })
                    .await
                }
                Incoming::Dead { letter, reject } => {
                    stats.dead_letters.fetch_add(1, Relaxed);
                    tracing::warn!(topic = %letter.topic, reason = %letter.reason, bytes = letter.payload.len(), "message kept in the dead-letter table");
                    let r = retry("dead letter", &stats, &mut shutdown, || {
                        store.dead_letter(&letter)
                    })
                    .await;
                    // Reject (the agent then deletes its copy) only once the payload is kept.
                    if let (Some(Ok(())), Some(id)) = (&r, reject) {
                        rejects.push((id, letter.reason.clone()));
                    }
                    r
                }
                Incoming::Birth(_) | Incoming::Ignore => continue,
            };
            match r {
                None => ok = false,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "message could not be stored and is dropped")
                }
                Some(Ok(())) => {}
            }
        }
        let Some(outcomes) = commit_batches(
            &store,
            &stats,
            &mut shutdown,
            &batches,
            &sources,
            now,
            &mut rejects,
        )
        .await
        else {
            return;
        };
        if !ok {
            return;
        }
        count_outcomes(&stats, &batches, &outcomes);
        let acks = Acks {
            client: &client,
            root: &root,
            keys: &keys,
        };
        acks.publish(&stats, &batches, &outcomes, rejects).await;
        // MQTT acknowledgements, in arrival order, only now.
        for p in &group {
            let _ = client.ack(p).await;
        }
    }
}

/// Commit the batches of a group (one call; after a permanent failure, one batch at a time, a
/// batch that still fails kept as a dead letter). Conflicting batches are kept as dead letters.
/// Every batch kept as a dead letter is added to `rejects` (and counts as not acknowledged).
/// `None`: shutdown came first, nothing may be acknowledged.
async fn commit_batches(
    store: &Arc<dyn Store>,
    stats: &ConsumerStats,
    shutdown: &mut watch::Receiver<bool>,
    batches: &[wire::Batch],
    sources: &[(String, Vec<u8>)],
    now: i64,
    rejects: &mut Vec<(BatchKey, String)>,
) -> Option<Vec<CommitOutcome>> {
    let outcomes = if batches.is_empty() {
        Some(Ok(Vec::new()))
    } else {
        retry("commit", stats, shutdown, || store.commit(batches)).await
    };
    let outcomes = match outcomes? {
        Ok(o) => o,
        Err(e) => {
            // A permanent error for the group: find the batch(es) that cause it by committing
            // one at a time. A batch that still fails is kept whole in the dead-letter table
            // and only then rejected; if even that cannot be written, nothing is acknowledged
            // and the agent keeps its copy.
            tracing::error!(error = %e, batches = batches.len(), "group commit failed; committing batch by batch");
            let mut outs = Vec::with_capacity(batches.len());
            for (b, (topic, payload)) in batches.iter().zip(sources) {
                match retry("commit", stats, shutdown, || {
                    store.commit(std::slice::from_ref(b))
                })
                .await?
                {
                    Ok(mut o) => outs.push(o.pop().unwrap_or(CommitOutcome::UnknownCatalog)),
                    Err(e) => {
                        let letter = DeadLetter {
                            topic: topic.clone(),
                            payload: payload.clone(),
                            reason: format!("commit failed: {e}"),
                            received_ms: now,
                        };
                        keep_and_reject(store, stats, shutdown, letter, BatchKey::of(b), rejects)
                            .await?;
                        // Neither stored nor acknowledged as committed.
                        outs.push(CommitOutcome::UnknownCatalog);
                    }
                }
            }
            outs
        }
    };
    // Same key, other content: never a duplicate; kept, then rejected.
    for (i, key, reason) in conflicts(batches, &outcomes) {
        tracing::error!(site = %key.site, agent = %key.agent, epoch = key.epoch, batch_id = key.batch_id,
            "batch conflict: its key is stored with other content; dead-lettered and rejected");
        let (topic, payload) = &sources[i];
        let letter = DeadLetter {
            topic: topic.clone(),
            payload: payload.clone(),
            reason,
            received_ms: now,
        };
        keep_and_reject(store, stats, shutdown, letter, key, rejects).await?;
        stats.conflicts.fetch_add(1, Relaxed);
    }
    Some(outcomes)
}

/// A birth the store refused for good (the tag registry limit, bad content): kept as a dead
/// letter with the reason, counted and logged; its batches stay unknown (not acknowledged).
/// `false`: shutdown came first.
async fn refuse_birth(
    store: &Arc<dyn Store>,
    stats: &ConsumerStats,
    shutdown: &mut watch::Receiver<bool>,
    p: &Publish,
    e: StoreError,
    now: i64,
) -> bool {
    let letter = DeadLetter {
        topic: p.topic.clone(),
        payload: p.payload.to_vec(),
        reason: format!("birth refused: {e}"),
        received_ms: now,
    };
    tracing::error!(topic = %letter.topic, reason = %letter.reason, "birth refused; kept in the dead-letter table");
    stats.refused_births.fetch_add(1, Relaxed);
    if let StoreError::TagLimit(r) = &e {
        stats.set_refused(
            &r.site,
            &r.agent,
            Some(RefusedBirth {
                config_hash: r.config_hash.clone(),
                total: r.total,
                limit: r.limit,
                batches: 0,
                logged_ms: None,
            }),
        );
    }
    match retry("dead letter", stats, shutdown, || {
        store.dead_letter(&letter)
    })
    .await
    {
        None => false,
        Some(Ok(())) => {
            stats.dead_letters.fetch_add(1, Relaxed);
            true
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "the refused birth could not be kept as a dead letter");
            true
        }
    }
}

/// Keep a batch as a dead letter; once kept, reject it (the agent then deletes its copy); if it
/// cannot be kept, nothing is acknowledged and the agent re-sends. `None`: shutdown.
async fn keep_and_reject(
    store: &Arc<dyn Store>,
    stats: &ConsumerStats,
    shutdown: &mut watch::Receiver<bool>,
    letter: DeadLetter,
    key: BatchKey,
    rejects: &mut Vec<(BatchKey, String)>,
) -> Option<()> {
    match retry("dead letter", stats, shutdown, || {
        store.dead_letter(&letter)
    })
    .await?
    {
        Ok(()) => {
            stats.dead_letters.fetch_add(1, Relaxed);
            rejects.push((key, letter.reason));
        }
        Err(e) => {
            tracing::error!(error = %e, batch_id = key.batch_id, "cannot keep the batch as a dead letter; not acknowledged")
        }
    }
    Some(())
}

/// Count what a commit did (and each stored reading's poll-to-commit latency).
fn count_outcomes(stats: &ConsumerStats, batches: &[wire::Batch], outcomes: &[CommitOutcome]) {
    let committed_ms = clock::now_ms();
    for (b, o) in batches.iter().zip(outcomes) {
        match o {
            CommitOutcome::Stored {
                readings,
                out_of_window,
                ..
            } => {
                if *out_of_window > 0 {
                    // Kept as a dead letter in the commit's transaction.
                    stats.out_of_window.fetch_add(*out_of_window, Relaxed);
                    stats.dead_letters.fetch_add(1, Relaxed);
                    tracing::warn!(site = %b.site, agent = %b.agent, batch_id = b.batch_id, refused = out_of_window,
                        "readings/events outside the accepted time window kept as a dead letter; the rest stored");
                }
                stats.stored_batches.fetch_add(1, Relaxed);
                stats.stored_readings.fetch_add(*readings, Relaxed);
                // A batch with refused readings is left out: their times are not latencies.
                if *out_of_window == 0 {
                    stats
                        .poll_to_commit
                        .observe(committed_ms, b.readings.iter().map(|r| r.ts_ms));
                }
            }
            CommitOutcome::Duplicate => {
                stats.duplicates.fetch_add(1, Relaxed);
            }
            CommitOutcome::UnknownCatalog => {
                stats.unknown_catalog.fetch_add(1, Relaxed);
                if stats.refused_batch(b, committed_ms) {
                    continue;
                }
                tracing::debug!(site = %b.site, agent = %b.agent, config_hash = %b.config_hash, "batch before its birth: not acknowledged, the agent re-sends");
            }
            // Kept as a dead letter and rejected by `commit_batches`.
            CommitOutcome::Conflict { .. } => {}
        }
    }
}

/// Where the end-to-end acknowledgements go, and how they are signed.
struct Acks<'a> {
    client: &'a AsyncClient,
    root: &'a str,
    keys: &'a AckKeys,
}

impl Acks<'_> {
    /// The end-to-end acknowledgements, after the commit: committed per (site, agent, epoch),
    /// and each rejection, every one naming the buffer epoch of its batches and signed with
    /// its site's key when `[mqtt] ack_keys` gives one.
    async fn publish(
        &self,
        stats: &ConsumerStats,
        batches: &[wire::Batch],
        outcomes: &[CommitOutcome],
        rejects: Vec<(BatchKey, String)>,
    ) {
        for g in acks_for(batches, outcomes) {
            if self.send(&g.site, &g.agent, g.committed()).await {
                stats.acked_batches.fetch_add(g.ids.len() as u64, Relaxed);
            }
        }
        for (key, reason) in rejects {
            let ack = wire::Ack::rejected(vec![key.batch_id], reason).for_epoch(key.epoch);
            self.send(&key.site, &key.agent, ack).await;
        }
    }

    /// Sign and publish one ack; `false` when the ids make no topic.
    async fn send(&self, site: &str, agent: &str, mut ack: wire::Ack) -> bool {
        let Ok(t) = wire::Topics::new(self.root.to_owned(), site.to_owned(), agent.to_owned())
        else {
            return false;
        };
        if let Some(key) = self.keys.for_site(site) {
            ack.sign(site, agent, key);
        }
        let _ = self
            .client
            .publish(t.ack(), QoS::AtLeastOnce, false, ack.encode())
            .await;
        true
    }
}
