//! The behaviour every store backend must show. Each backend's tests instantiate it with
//! `store_suite!(async { make_store().await })`, so PostgreSQL and SQLite are held to the same
//! semantics.

use flowsquare_wire as wire;

use async_trait::async_trait;

use super::{
    AgentRow, Bucket, CommitOutcome, DeadLetter, DeadLetterRow, GapRow, LatestRow, Store,
    StoreError, TagRow,
};

/// A store that keeps `guard` (a temporary directory, a test database) alive as long as itself;
/// the store is dropped first.
pub struct Guarded<G> {
    /// The store under test.
    pub store: Box<dyn Store>,
    /// What must outlive it.
    pub guard: G,
}

#[async_trait]
impl<G: Send + Sync> Store for Guarded<G> {
    async fn migrate(&self) -> Result<String, StoreError> {
        self.store.migrate().await
    }
    async fn commit(&self, batches: &[wire::Batch]) -> Result<Vec<CommitOutcome>, StoreError> {
        self.store.commit(batches).await
    }
    async fn dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        self.store.dead_letter(dl).await
    }
    async fn prune_dead_letters(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.store.prune_dead_letters(now_ms).await
    }
    async fn birth(&self, b: &wire::Birth, received_ms: i64) -> Result<(), StoreError> {
        self.store.birth(b, received_ms).await
    }
    async fn status(
        &self,
        site: &str,
        agent: &str,
        s: &wire::Status,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        self.store.status(site, agent, s, received_ms).await
    }
    async fn heartbeat(
        &self,
        site: &str,
        agent: &str,
        h: &wire::Heartbeat,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        self.store.heartbeat(site, agent, h, received_ms).await
    }
    fn ledger(&self) -> &dyn super::Ledger {
        self.store.ledger()
    }
    async fn agents_page(
        &self,
        sites: Option<&[String]>,
        after: Option<&crate::store::AgentKey>,
        limit: i64,
    ) -> Result<Vec<AgentRow>, StoreError> {
        self.store.agents_page(sites, after, limit).await
    }
    async fn tags_page(
        &self,
        f: &crate::store::TagFilter,
        after: Option<&crate::store::TagKey>,
        limit: i64,
    ) -> Result<Vec<TagRow>, StoreError> {
        self.store.tags_page(f, after, limit).await
    }
    async fn latest(&self, tag_ids: &[i64]) -> Result<Vec<LatestRow>, StoreError> {
        self.store.latest(tag_ids).await
    }
    async fn series(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        self.store.series(tag_id, from_ms, to_ms, step_ms).await
    }
    async fn count_readings(
        &self,
        tag_id: Option<i64>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError> {
        self.store.count_readings(tag_id, from_ms, to_ms).await
    }
    async fn gaps_page(
        &self,
        f: &crate::store::GapFilter,
        after: Option<crate::store::GapKey>,
        limit: i64,
    ) -> Result<Vec<GapRow>, StoreError> {
        self.store.gaps_page(f, after, limit).await
    }
    async fn dead_letters_page(
        &self,
        before: Option<crate::store::DeadLetterKey>,
        limit: i64,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.store.dead_letters_page(before, limit).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
    async fn maintain(&self) -> Result<String, StoreError> {
        self.store.maintain().await
    }
}

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;

/// A birth for `site`/`agent` with tags `names` under `hash`.
pub fn birth(site: &str, agent: &str, hash: &str, names: &[&str]) -> wire::Birth {
    wire::Birth {
        v: 1,
        site: site.into(),
        agent: agent.into(),
        agent_version: "0.1.0".into(),
        config_hash: hash.into(),
        started_ms: T0,
        devices: vec![wire::DeviceInfo {
            name: "plc".into(),
            protocol: "modbus-tcp".into(),
            description: None,
        }],
        tags: names
            .iter()
            .enumerate()
            .map(|(i, n)| wire::TagInfo {
                id: i as u32,
                name: (*n).into(),
                unit: Some("m".into()),
                kind: "gauge".into(),
                device: "plc".into(),
                description: None,
                data_type: "f32".into(),
                poll_interval_ms: 1000,
            })
            .collect(),
        events: Vec::new(),
        buffer: None,
    }
}

/// A batch of `n` good readings per tag (1 s apart from `t0`), values `base + i`.
#[allow(clippy::too_many_arguments)] // test data builder: every knob is used by some test
pub fn batch(
    site: &str,
    agent: &str,
    hash: &str,
    id: u64,
    tags: u32,
    n: i64,
    t0: i64,
    base: f64,
) -> wire::Batch {
    let mut b = wire::Batch::new(site, agent, id, hash, t0);
    for tag in 0..tags {
        for i in 0..n {
            b.readings.push(wire::WireReading {
                tag,
                ts_ms: t0 + i * 1000,
                value: Some(wire::WireValue::Float(base + i as f64)),
                quality: wire::Quality::Good,
                status: None,
                error: None,
                counter: None,
            });
        }
    }
    b
}

async fn tag_id(s: &dyn Store, name: &str) -> i64 {
    s.tags(None, Some(name))
        .await
        .expect("tags")
        .into_iter()
        .find(|t| t.name == name)
        .expect("tag registered")
        .id
}

/// Migrating twice is harmless.
pub async fn migrate_is_idempotent(s: &dyn Store) {
    s.migrate().await.expect("migrate again");
    s.ping().await.expect("ping");
}

/// A birth registers the agent and its tags; a later birth with another config keeps old ids.
pub async fn birth_registers_agent_and_tags(s: &dyn Store) {
    s.birth(
        &birth(
            "s1",
            "a1",
            "h1",
            &["tank/level", "tank/temp", "meter/total"],
        ),
        T0,
    )
    .await
    .expect("birth");
    let tags = s.tags(Some("s1"), None).await.expect("tags");
    assert_eq!(tags.len(), 3);
    assert!(tags.iter().any(|t| t.name == "tank/level"
        && t.unit.as_deref() == Some("m")
        && t.interval_ms == 1000));
    let level = tag_id(s, "tank/level").await;
    s.birth(
        &birth(
            "s1",
            "a1",
            "h2",
            &["meter/total", "tank/level", "tank/water"],
        ),
        T0 + 1,
    )
    .await
    .expect("birth 2");
    assert_eq!(s.tags(Some("s1"), None).await.expect("tags").len(), 4);
    assert_eq!(
        tag_id(s, "tank/level").await,
        level,
        "ids are stable across configs"
    );
    assert_eq!(
        s.tags(Some("s1"), Some("tank/"))
            .await
            .expect("prefix")
            .len(),
        3
    );
    assert!(s
        .tags(Some("other-site"), None)
        .await
        .expect("tags")
        .is_empty());
    let agents = s.agents().await.expect("agents");
    let a = agents
        .iter()
        .find(|a| a.site == "s1" && a.agent == "a1")
        .expect("agent");
    assert_eq!(a.config_hash.as_deref(), Some("h2"));
    assert_eq!(a.version.as_deref(), Some("0.1.0"));
}

/// A batch is stored once however often it is delivered, and tag indexes resolve per config.
pub async fn a_batch_is_stored_once(s: &dyn Store) {
    s.birth(&birth("s2", "a1", "h1", &["x/a", "x/b"]), T0)
        .await
        .expect("birth");
    let b = batch("s2", "a1", "h1", 7, 2, 100, T0, 10.0);
    let out = s.commit(std::slice::from_ref(&b)).await.expect("commit");
    assert_eq!(
        out,
        vec![CommitOutcome::Stored {
            readings: 200,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        }]
    );
    assert_eq!(
        s.commit(std::slice::from_ref(&b)).await.expect("again"),
        vec![CommitOutcome::Duplicate]
    );
    let a = tag_id(s, "x/a").await;
    assert_eq!(
        s.count_readings(Some(a), T0, T0 + 1_000_000)
            .await
            .expect("count"),
        100
    );
    assert_eq!(
        s.count_readings(None, T0, T0 + 1_000_000)
            .await
            .expect("count"),
        200
    );
    // The same batch id from another agent is another batch.
    s.birth(&birth("s2", "a2", "h1", &["y/a"]), T0)
        .await
        .expect("birth");
    let other = batch("s2", "a2", "h1", 7, 1, 5, T0, 1.0);
    assert_eq!(
        s.commit(&[other]).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 5,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        }]
    );
}

/// A batch whose catalog is unknown is not stored (and not acknowledged) until the birth arrives.
pub async fn an_unknown_catalog_is_not_stored(s: &dyn Store) {
    let b = batch("s3", "a1", "h9", 1, 1, 10, T0, 1.0);
    assert_eq!(
        s.commit(std::slice::from_ref(&b)).await.expect("commit"),
        vec![CommitOutcome::UnknownCatalog]
    );
    assert_eq!(
        s.count_readings(None, T0, T0 + 100_000)
            .await
            .expect("count"),
        0
    );
    s.birth(&birth("s3", "a1", "h9", &["z/a"]), T0)
        .await
        .expect("birth");
    assert_eq!(
        s.commit(&[b]).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 10,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        }]
    );
}

/// Mixed outcomes in one call, in input order.
pub async fn one_commit_call_reports_each_batch(s: &dyn Store) {
    s.birth(&birth("s4", "a1", "h1", &["q/a"]), T0)
        .await
        .expect("birth");
    let b1 = batch("s4", "a1", "h1", 1, 1, 3, T0, 1.0);
    let b2 = batch("s4", "a1", "h1", 2, 1, 3, T0 + 3000, 1.0);
    let unknown = batch("s4", "a1", "nope", 3, 1, 3, T0, 1.0);
    s.commit(std::slice::from_ref(&b1)).await.expect("commit");
    let out = s.commit(&[b1, b2, unknown]).await.expect("commit");
    assert_eq!(
        out,
        vec![
            CommitOutcome::Duplicate,
            CommitOutcome::Stored {
                readings: 3,
                events: 0,
                gaps: 0,
                out_of_window: 0,
            },
            CommitOutcome::UnknownCatalog
        ]
    );
}

/// Gaps (for some tags or all) and events are stored with the batch.
pub async fn gaps_and_events_are_stored(s: &dyn Store) {
    s.birth(&birth("s5", "a1", "h1", &["g/a", "g/b"]), T0)
        .await
        .expect("birth");
    let mut b = wire::Batch::new("s5", "a1", 1, "h1", T0);
    b.gaps.push(wire::Gap {
        tags: vec![1],
        from_ms: T0,
        to_ms: T0 + 60_000,
        count: 60,
        count_known: true,
        reason: wire::GapReason::BufferFull,
    });
    b.gaps.push(wire::Gap {
        tags: vec![],
        from_ms: T0 + 100_000,
        to_ms: T0 + 101_000,
        count: 0,
        count_known: false,
        reason: wire::GapReason::Other("unclean-shutdown".into()),
    });
    b.events.push(wire::Event {
        source: "bay-1".into(),
        kind: "gantry-batch".into(),
        seq: 42,
        ts_ms: T0 + 5000,
        fields: vec![
            ("bol".into(), wire::WireValue::Text("BOL-1".into())),
            ("gross_l".into(), wire::WireValue::Float(30000.0)),
        ],
    });
    assert_eq!(
        s.commit(&[b]).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 0,
            events: 1,
            gaps: 2,
            out_of_window: 0,
        }]
    );
    let gaps = s.gaps(Some("s5"), T0, T0 + 200_000).await.expect("gaps");
    assert_eq!(gaps.len(), 2);
    let g_b = tag_id(s, "g/b").await;
    let full = gaps
        .iter()
        .find(|g| g.reason == "buffer-full")
        .expect("buffer-full gap");
    assert_eq!((full.tag_ids.clone(), full.count), (vec![g_b], 60));
    assert!(full.count_known);
    assert!(gaps.iter().any(|g| g.reason == "unclean-shutdown"
        && g.tag_ids.is_empty()
        && !g.count_known
        && g.count == 0));
    assert!(s
        .gaps(Some("s5"), T0 + 500_000, T0 + 600_000)
        .await
        .expect("gaps")
        .is_empty());
}

/// Series are bucketed with min/max/avg/last of good values; bad readings are counted apart.
pub async fn series_are_bucketed(s: &dyn Store) {
    s.birth(&birth("s6", "a1", "h1", &["t/level"]), T0)
        .await
        .expect("birth");
    // Two hours of 1 s data, value = seconds since T0; one bad reading in the second hour.
    let mut b = batch("s6", "a1", "h1", 1, 1, 7200, T0, 0.0);
    b.readings[5000].quality = wire::Quality::BadCommunication;
    b.readings[5000].value = None;
    s.commit(&[b]).await.expect("commit");
    let id = tag_id(s, "t/level").await;
    let buckets = s
        .series(id, T0, T0 + 7_200_000, 3_600_000)
        .await
        .expect("series");
    assert_eq!(buckets.len(), 2);
    assert_eq!(buckets[0].ts_ms, T0);
    assert_eq!((buckets[0].count, buckets[0].bad), (3600, 0));
    assert_eq!(
        (buckets[0].min, buckets[0].max, buckets[0].last),
        (Some(0.0), Some(3599.0), Some(3599.0))
    );
    assert!((buckets[0].avg.expect("avg") - 1799.5).abs() < 1e-6);
    assert_eq!((buckets[1].count, buckets[1].bad), (3600, 1));
    assert_eq!(buckets[1].last, Some(7199.0));
    let latest = s.latest(&[id]).await.expect("latest");
    assert_eq!(latest.len(), 1);
    assert_eq!(
        (latest[0].ts_ms, latest[0].value, latest[0].quality.as_str()),
        (T0 + 7_199_000, Some(7199.0), "good")
    );
}

/// Every value kind is kept: numbers, booleans as 0/1, text.
pub async fn every_value_kind_is_kept(s: &dyn Store) {
    s.birth(&birth("s7", "a1", "h1", &["v/int", "v/bool", "v/text"]), T0)
        .await
        .expect("birth");
    let mut b = wire::Batch::new("s7", "a1", 1, "h1", T0);
    let r = |tag, value| wire::WireReading {
        tag,
        ts_ms: T0,
        value: Some(value),
        quality: wire::Quality::Good,
        status: None,
        error: None,
        counter: None,
    };
    b.readings.push(r(0, wire::WireValue::Int(-5)));
    b.readings.push(r(1, wire::WireValue::Bool(true)));
    b.readings
        .push(r(2, wire::WireValue::Text("DIESEL".into())));
    s.commit(&[b]).await.expect("commit");
    let ids = [
        tag_id(s, "v/int").await,
        tag_id(s, "v/bool").await,
        tag_id(s, "v/text").await,
    ];
    let mut latest = s.latest(&ids).await.expect("latest");
    latest.sort_by_key(|l| ids.iter().position(|i| *i == l.tag_id));
    assert_eq!(latest[0].value, Some(-5.0));
    assert_eq!(latest[1].value, Some(1.0));
    assert_eq!(latest[2].text.as_deref(), Some("DIESEL"));
}

/// Status and heartbeat messages show in the agent list.
pub async fn status_and_heartbeat_update_the_agent(s: &dyn Store) {
    s.birth(&birth("s8", "a1", "h1", &["k/a"]), T0)
        .await
        .expect("birth");
    s.status("s8", "a1", &wire::Status::online(T0, "0.1.0"), T0)
        .await
        .expect("status");
    let hb = wire::Heartbeat {
        v: 1,
        ts_ms: T0 + 10,
        uptime_s: 5,
        buffer: wire::BufferFigures {
            rows: 3,
            bytes: 300,
            readings: 1234,
            oldest_unsent_ms: Some(T0 - 5000),
            drain_rate_per_s: 10.0,
            eta_s: Some(123.4),
        },
        counters: Default::default(),
        devices: vec![],
    };
    s.heartbeat("s8", "a1", &hb, T0 + 10)
        .await
        .expect("heartbeat");
    let a = s
        .agents()
        .await
        .expect("agents")
        .into_iter()
        .find(|a| a.site == "s8")
        .expect("agent");
    assert!(a.online);
    assert_eq!(
        (a.backlog_readings, a.oldest_unsent_ms, a.last_seen_ms),
        (Some(1234), Some(T0 - 5000), Some(T0 + 10))
    );
    s.status("s8", "a1", &wire::Status::last_will(T0), T0 + 20)
        .await
        .expect("will");
    let a = s
        .agents()
        .await
        .expect("agents")
        .into_iter()
        .find(|a| a.site == "s8")
        .expect("agent");
    assert!(!a.online);
}

/// Dead letters keep topic, reason and size; newest first.
pub async fn dead_letters_are_kept(s: &dyn Store) {
    for i in 0..3 {
        s.dead_letter(&DeadLetter {
            topic: format!("fs/v1/s/a/data#{i}"),
            payload: vec![0xde; 10 + i],
            reason: format!("bad {i}"),
            received_ms: T0 + i as i64,
        })
        .await
        .expect("dead letter");
    }
    let dl = s.dead_letters(2).await.expect("list");
    assert_eq!(dl.len(), 2);
    assert_eq!((dl[0].reason.as_str(), dl[0].bytes), ("bad 2", 12));
}

/// `b` with the buffer epoch `epoch`.
fn in_epoch(mut b: wire::Batch, epoch: u64) -> wire::Batch {
    b.buffer_epoch = epoch;
    b
}

/// The open `batch-conflict` alerts.
async fn conflict_alerts(s: &dyn Store) -> Vec<super::ledger::AlertRow> {
    let all: Vec<_> = s
        .ledger()
        .alerts(Some("open"), None, 100)
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.a.kind == super::BATCH_CONFLICT)
        .collect();
    // The site filter is in the query: the same rows for their own site, none for another.
    let sites: Vec<String> = all.iter().map(|a| a.a.site.clone()).collect();
    if !sites.is_empty() {
        let mine = s
            .ledger()
            .alerts(Some("open"), Some(&sites), 100)
            .await
            .expect("alerts of the sites");
        assert!(all.iter().all(|a| mine.contains(a)));
        let other = s
            .ledger()
            .alerts(Some("open"), Some(&["no-such-site".to_owned()]), 100)
            .await
            .expect("alerts of another site");
        assert!(other.is_empty(), "{other:?}");
    }
    all
}

/// A re-sent batch (same key, same content, framed later) is stored once and is a duplicate; the
/// same key with other content is a conflict: nothing stored, one open `batch-conflict` alert
/// (however often it comes), never a duplicate — also within one commit call.
pub async fn a_conflicting_batch_is_never_a_duplicate(s: &dyn Store) {
    s.birth(&birth("c1", "a1", "h1", &["c/x"]), T0)
        .await
        .expect("birth");
    let b = in_epoch(batch("c1", "a1", "h1", 1, 1, 10, T0, 1.0), 7);
    let mut resent = b.clone();
    resent.created_ms += 5_000;
    let other = in_epoch(batch("c1", "a1", "h1", 1, 1, 10, T0 + 60_000, 1.0), 7);
    let stored = CommitOutcome::Stored {
        readings: 10,
        events: 0,
        gaps: 0,
        out_of_window: 0,
    };
    assert_eq!(s.commit(&[b]).await.expect("commit"), vec![stored]);
    assert_eq!(
        s.commit(&[resent]).await.expect("re-send"),
        vec![CommitOutcome::Duplicate]
    );
    for _ in 0..2 {
        let out = s
            .commit(std::slice::from_ref(&other))
            .await
            .expect("conflict");
        match &out[..] {
            [CommitOutcome::Conflict { reason }] => {
                assert!(reason.contains("other content"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
    }
    let x = tag_id(s, "c/x").await;
    assert_eq!(
        s.count_readings(Some(x), 0, i64::MAX / 2)
            .await
            .expect("count"),
        10
    );
    let alerts = conflict_alerts(s).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].a.site.as_str(), alerts[0].a.place.as_str()),
        ("c1", "a1")
    );
    // In one call: a new batch and a conflicting copy of it.
    let fresh = in_epoch(batch("c1", "a1", "h1", 2, 1, 5, T0 + 100_000, 1.0), 7);
    let clash = in_epoch(batch("c1", "a1", "h1", 2, 1, 5, T0 + 200_000, 1.0), 7);
    let out = s
        .commit(&[fresh.clone(), clash, fresh])
        .await
        .expect("slice");
    assert!(
        matches!(out[0], CommitOutcome::Stored { readings: 5, .. }),
        "{out:?}"
    );
    assert!(matches!(out[1], CommitOutcome::Conflict { .. }), "{out:?}");
    assert_eq!(out[2], CommitOutcome::Duplicate, "{out:?}");
    assert_eq!(
        s.count_readings(Some(x), 0, i64::MAX / 2)
            .await
            .expect("count"),
        15
    );
}

/// A version 1 frame (epoch 0) and frames of two buffers with the same batch id are three
/// batches: all stored.
pub async fn epochs_keep_batch_ids_apart(s: &dyn Store) {
    s.birth(&birth("c2", "a1", "h1", &["e/x"]), T0)
        .await
        .expect("birth");
    let v1 = batch("c2", "a1", "h1", 1, 1, 10, T0, 1.0);
    let e1 = in_epoch(batch("c2", "a1", "h1", 1, 1, 10, T0 + 60_000, 1.0), 11);
    let e2 = in_epoch(batch("c2", "a1", "h1", 1, 1, 10, T0 + 120_000, 1.0), 12);
    let out = s.commit(&[v1, e1.clone(), e2]).await.expect("commit");
    assert!(
        out.iter()
            .all(|o| matches!(o, CommitOutcome::Stored { .. })),
        "{out:?}"
    );
    assert_eq!(
        s.commit(&[e1]).await.expect("again"),
        vec![CommitOutcome::Duplicate]
    );
    let x = tag_id(s, "e/x").await;
    assert_eq!(
        s.count_readings(Some(x), 0, i64::MAX / 2)
            .await
            .expect("count"),
        30
    );
    assert!(conflict_alerts(s).await.is_empty());
}

fn buffer(
    epoch: u64,
    created_ms: i64,
    origin: &str,
    note: Option<&str>,
) -> wire::messages::BufferIdentity {
    wire::messages::BufferIdentity {
        epoch,
        created_ms,
        origin: origin.into(),
        note: note.map(Into::into),
    }
}

/// A birth with a new buffer epoch for an agent that had another records a `buffer-replaced`
/// gap of unknown count from its last stored reading to the new buffer's creation, once; the
/// agent list shows the current buffer and when it was replaced. An agent's first buffer, and
/// an `existing` database first named by an upgraded agent, record none.
pub async fn a_replaced_buffer_is_a_gap_of_unknown_count(s: &dyn Store) {
    let mut b = birth("c3", "a1", "h1", &["r/x", "r/y"]);
    b.buffer = Some(buffer(1, T0 - 1_000, "new", None));
    s.birth(&b, T0).await.expect("first birth");
    let data = in_epoch(batch("c3", "a1", "h1", 1, 2, 10, T0, 1.0), 1);
    s.commit(&[data]).await.expect("commit");
    s.birth(&b, T0 + 20_000).await.expect("same buffer again");
    assert!(s
        .gaps(Some("c3"), 0, i64::MAX / 2)
        .await
        .expect("gaps")
        .is_empty());
    let created = T0 + 60_000;
    b.buffer = Some(buffer(
        2,
        created,
        "replaced-corrupt",
        Some("12 batches salvaged"),
    ));
    for at in [created + 1_000, created + 2_000] {
        s.birth(&b, at).await.expect("new buffer");
    }
    let gaps = s.gaps(Some("c3"), 0, i64::MAX / 2).await.expect("gaps");
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let g = &gaps[0];
    assert_eq!(g.reason, super::BUFFER_REPLACED);
    assert_eq!((g.from_ms, g.to_ms), (T0 + 9_001, created));
    assert!(!g.count_known);
    assert_eq!(g.count, 0);
    assert!(g.tag_ids.is_empty());
    let detail = g.detail.clone().expect("detail");
    assert!(
        detail.contains("replaced-corrupt") && detail.contains("12 batches salvaged"),
        "{detail}"
    );
    let agents = s.agents().await.expect("agents");
    let a = agents
        .iter()
        .find(|a| a.agent == "a1" && a.site == "c3")
        .expect("agent");
    let buf = a.buffer.clone().expect("buffer");
    assert_eq!(
        (buf.epoch, buf.created_ms, buf.origin.as_str()),
        (2, created, "replaced-corrupt")
    );
    assert_eq!(a.buffer_replaced_ms, Some(created + 1_000));

    // An upgraded agent names its existing database for the first time: not a replacement.
    let mut u = birth("c3", "a2", "h2", &["u/x"]);
    s.birth(&u, T0).await.expect("v1 birth");
    s.commit(&[batch("c3", "a2", "h2", 1, 1, 10, T0, 1.0)])
        .await
        .expect("v1 data");
    u.buffer = Some(buffer(5, T0 + 30_000, "existing", None));
    s.birth(&u, T0 + 40_000).await.expect("upgrade");
    // A fresh install without data: nothing either.
    let mut f = birth("c3", "a3", "h3", &["f/x"]);
    f.buffer = Some(buffer(6, T0, "new", None));
    s.birth(&f, T0).await.expect("fresh");
    let gaps = s.gaps(Some("c3"), 0, i64::MAX / 2).await.expect("gaps");
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let agents = s.agents().await.expect("agents");
    let a2 = agents.iter().find(|a| a.agent == "a2").expect("a2");
    assert_eq!(a2.buffer.as_ref().map(|b| b.epoch), Some(5));
    assert_eq!(a2.buffer_replaced_ms, None);
}

/// Gap records that make no sense fail the commit with an error naming the gap (the consumer
/// then keeps the batch as a dead letter); nothing of the batch is stored.
pub async fn nonsense_gaps_are_refused(s: &dyn Store) {
    s.birth(&birth("c4", "a1", "h1", &["n/x", "n/y"]), T0)
        .await
        .expect("birth");
    let gap = |from_ms, to_ms, count| wire::Gap {
        tags: vec![],
        from_ms,
        to_ms,
        count,
        count_known: true,
        reason: wire::GapReason::BufferFull,
    };
    let y1994 = 757_382_400_000;
    for (g, why) in [
        (gap(T0 + 1_000, T0, 1), "ends before it starts"),
        (gap(T0, T0 + 1_000, u64::MAX), "more than its span can hold"),
        (
            gap(T0, T0 + 10, 2 * 11 * 1000 + 1),
            "more than its span can hold",
        ),
        (gap(y1994, y1994 + 1_000, 5), "before 2000-01-01"),
        (gap(T0, T0 + 3_650 * 86_400_000, 5), "more than a day after"),
    ] {
        let mut b = batch("c4", "a1", "h1", 1, 2, 5, T0, 1.0);
        b.gaps.push(gap(T0, T0 + 5_000, 3));
        b.gaps.push(g);
        match s.commit(&[b]).await {
            Err(StoreError::Invalid(m)) => {
                assert!(m.contains("gap 1") && m.contains(why), "{m}")
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    let mut edge = batch("c4", "a1", "h1", 1, 2, 5, T0, 1.0);
    edge.gaps.push(gap(T0, T0 + 10, 2 * 11 * 1000));
    edge.gaps.push(wire::Gap::uncounted(
        vec![],
        T0,
        T0,
        wire::GapReason::Other("unclean-shutdown".into()),
    ));
    assert!(matches!(
        s.commit(&[edge])
            .await
            .expect("the largest possible count is taken")[..],
        [CommitOutcome::Stored { gaps: 2, .. }]
    ));
    assert_eq!(
        s.count_readings(None, 0, i64::MAX / 2)
            .await
            .expect("count"),
        10
    );
}

/// The reconciliation's coverage inputs: dead letters of an agent's data topic in a window, the
/// first reading of each tag, the totalizer markers (good readings only), and the coverage of a
/// variance record kept as it was saved.
pub async fn coverage_inputs_are_read(s: &dyn Store) {
    use crate::reconcile::model::{Coverage, RecordKind, TagCoverage, Variance, Verdict};
    use crate::store::ledger::NewRun;
    for (i, topic) in [
        "fs/v1/s/a/data",
        "fs/v1/s/a/status",
        "fs/v1/s/ab/data",
        "fs/v1/s/a/data",
    ]
    .iter()
    .enumerate()
    {
        s.dead_letter(&DeadLetter {
            topic: (*topic).into(),
            payload: vec![1],
            reason: "bad".into(),
            received_ms: T0 + i as i64 * 1000,
        })
        .await
        .expect("dead letter");
    }
    let l = s.ledger();
    assert_eq!(
        l.dead_letter_count("s", "a", T0, T0 + 10_000)
            .await
            .expect("count"),
        2
    );
    assert_eq!(
        l.dead_letter_count("s", "a", T0 + 1, T0 + 10_000)
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        l.dead_letter_count("s", "ab", T0, T0 + 10_000)
            .await
            .expect("count"),
        1
    );

    s.birth(&birth("s", "a", "h", &["m/total", "m/other"]), T0)
        .await
        .expect("birth");
    let mut b = batch("s", "a", "h", 1, 1, 10, T0, 100.0);
    b.readings[4].counter = Some(wire::Counter::Rollover { delta: 7.5 });
    b.readings[6].counter = Some(wire::Counter::Reset { previous: 105.0 });
    b.readings[8].counter = Some(wire::Counter::Reset { previous: 1.0 });
    b.readings[8].quality = wire::Quality::BadDevice;
    b.readings[8].value = None;
    s.commit(&[b]).await.expect("commit");
    let (total, other) = (tag_id(s, "m/total").await, tag_id(s, "m/other").await);
    assert_eq!(
        l.first_readings(&[total, other, 999]).await.expect("first"),
        vec![Some(T0), None, None]
    );
    assert!(l.first_readings(&[]).await.expect("first").is_empty());
    let marks = l.counter_marks(total, T0, T0 + 9_000).await.expect("marks");
    assert_eq!(
        marks,
        vec![(T0 + 4_000, 104.0, 0, 7.5), (T0 + 6_000, 106.0, 1, 105.0)]
    );
    assert_eq!(
        l.counter_marks(total, T0 + 4_000, T0 + 5_000)
            .await
            .expect("marks"),
        vec![]
    );

    let coverage = Coverage {
        ratio: 0.5,
        complete: false,
        inputs: vec![TagCoverage {
            tag: "a/m/total".into(),
            from_ms: T0,
            to_ms: T0 + 20_000,
            expected: 20,
            present: 10,
            gaps: vec![],
            stale: vec![],
            boundaries_missing: vec![T0 + 20_000],
        }],
        dead_letters: 2,
        missing: vec!["data missing for a/m/total".into()],
    };
    let v = |coverage: Option<Coverage>| Variance {
        date: "2026-01-01".into(),
        site: "s".into(),
        kind: RecordKind::MeterCheck,
        place: "M1".into(),
        stage: "totalizer".into(),
        product: "AGO".into(),
        reference_l: None,
        measured_l: Some(1.0),
        variance_l: None,
        variance_pct: None,
        tolerance_pct: 0.2,
        verdict: Verdict::Incomplete,
        detail: serde_json::json!({}),
        coverage,
    };
    let run = NewRun {
        date: "2026-01-01".into(),
        trigger: "test".into(),
        started_ms: T0,
        finished_ms: T0,
        as_of_ms: T0,
    };
    l.save_run(&run, &[v(Some(coverage.clone())), v(None)], &[], T0)
        .await
        .expect("save");
    let rows = l.variances("2026-01-01", None).await.expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].v.coverage.as_ref(), Some(&coverage));
    assert_eq!(rows[0].v.verdict, Verdict::Incomplete);
    assert_eq!(rows[1].v.coverage, None);
}

/// A variance record for the history test.
fn variance(date: &str, measured: f64) -> crate::reconcile::model::Variance {
    use crate::reconcile::model::{RecordKind, Variance, Verdict};
    Variance {
        date: date.into(),
        kind: RecordKind::Tank,
        site: "s".into(),
        place: "T1".into(),
        stage: "balance".into(),
        product: "AGO".into(),
        reference_l: Some(1000.0),
        measured_l: Some(measured),
        variance_l: Some(measured - 1000.0),
        variance_pct: Some((measured - 1000.0) / 10.0),
        tolerance_pct: 0.5,
        verdict: Verdict::Ok,
        detail: serde_json::json!({}),
        coverage: None,
    }
}

/// Run history (a re-run supersedes; both runs' records stay), amendments with versions, the
/// audit log and the last good reading per tag.
pub async fn ledger_history_amendments_and_audit(s: &dyn Store) {
    use crate::reconcile::model::{Epod, EpodCompartment};
    use crate::store::ledger::*;
    let l = s.ledger();
    let run = |finished_ms| NewRun {
        date: "2026-01-02".into(),
        trigger: "api".into(),
        started_ms: finished_ms - 10,
        finished_ms,
        as_of_ms: finished_ms,
    };
    let r1 = l
        .save_run(&run(T0 + 1_000), &[variance("2026-01-02", 1001.0)], &[], T0)
        .await
        .expect("run 1");
    let r2 = l
        .save_run(&run(T0 + 2_000), &[variance("2026-01-02", 1002.0)], &[], T0)
        .await
        .expect("run 2");
    assert_eq!(r2.supersedes, Some(r1.id));
    let cur = l.variances("2026-01-02", None).await.expect("current");
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].v.measured_l, Some(1002.0));
    let old = l.run_variances(r1.id, None).await.expect("run 1 records");
    assert_eq!(old[0].v.measured_l, Some(1001.0));
    let pick = |p| l.run_of("2026-01-02", p);
    assert_eq!(
        pick(RunPick::Latest).await.expect("latest").map(|r| r.id),
        Some(r2.id)
    );
    assert_eq!(
        pick(RunPick::Id(r1.id))
            .await
            .expect("id")
            .map(|r| r.superseded_by),
        Some(Some(r2.id))
    );
    assert_eq!(
        pick(RunPick::AsOf(T0 + 1_500))
            .await
            .expect("as of")
            .map(|r| r.id),
        Some(r1.id)
    );
    assert_eq!(pick(RunPick::AsOf(T0)).await.expect("before"), None);
    assert_eq!(
        l.run_of("2026-01-03", RunPick::Id(r1.id))
            .await
            .expect("other date"),
        None
    );

    // Amendments: the original is version 1, the correction version 2.
    let e = Epod {
        id: 0,
        trip: "t".into(),
        bol: "B1".into(),
        truck: "k".into(),
        station: "st".into(),
        delivered_ms: T0,
        receiver: "r".into(),
        lat: None,
        lon: None,
        compartments: vec![EpodCompartment {
            compartment: 1,
            product: "AGO".into(),
            gross_l: 100.0,
            net_l: None,
        }],
    };
    let EpodOutcome::Created(id) = l.post_epod(&e, T0).await.expect("post") else {
        panic!("not created")
    };
    let by = Amendment {
        actor: "ops".into(),
        role: "operator".into(),
        at_ms: T0 + 5,
        reason: "typo".into(),
    };
    let mut fixed = e.clone();
    fixed.compartments[0].gross_l = 99.0;
    let AmendOutcome::Amended(new, 2) = l.amend_epod(id, &fixed, &by).await.expect("amend") else {
        panic!("not amended to version 2")
    };
    assert_eq!(new.id, id);
    assert_eq!(
        l.epod(id)
            .await
            .expect("epod")
            .map(|e| e.compartments[0].gross_l),
        Some(99.0)
    );
    let v = l.versions("epod", id).await.expect("versions");
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0].version, v[0].by.actor.as_str(), v[0].by.at_ms),
        (1, ORIGINAL_ACTOR, T0)
    );
    assert_eq!(v[0].record["compartments"][0]["gross_l"], 100.0);
    assert_eq!(
        (
            v[1].by.reason.as_str(),
            v[1].record["compartments"][0]["gross_l"].as_f64()
        ),
        ("typo", Some(99.0))
    );
    assert_eq!(
        l.amend_epod(id + 100, &fixed, &by).await.expect("missing"),
        AmendOutcome::NotFound
    );
    let mut other = e.clone();
    other.bol = "B2".into();
    let EpodOutcome::Created(id2) = l.post_epod(&other, T0).await.expect("post 2") else {
        panic!("not created")
    };
    assert_eq!(
        l.amend_epod(id2, &fixed, &by).await.expect("taken"),
        AmendOutcome::BolTaken(id)
    );
    let d = l
        .open_discharge(&NewDischarge {
            site: "s".into(),
            vessel: "v".into(),
            parcel: "p".into(),
            product: "AGO".into(),
            bl_l: 10.0,
            tanks: vec!["T1".into()],
            meters: vec![],
            opened_ms: T0,
        })
        .await
        .expect("discharge");
    let mut d2 = d.clone();
    d2.d.bl_l = 11.0;
    d2.closed_ms = Some(T0 + 10);
    assert!(matches!(
        l.amend_discharge(d.id, &d2, &by).await.expect("amend"),
        AmendOutcome::Amended(_, 2)
    ));
    assert_eq!(l.discharge(d.id).await.expect("get"), Some(d2));
    assert_eq!(l.versions("discharge", d.id).await.expect("v").len(), 2);

    // The audit log, newest first, filtered.
    for (i, action) in ["epod.post", "epod.amend", "discharge.open"]
        .iter()
        .enumerate()
    {
        l.audit(&NewAudit {
            actor: if i == 2 {
                "cli:ops".into()
            } else {
                "ops".into()
            },
            role: "operator".into(),
            at_ms: T0 + i as i64,
            action: (*action).into(),
            target: format!("x/{i}"),
            before: serde_json::Value::Null,
            after: serde_json::json!({ "i": i }),
        })
        .await
        .expect("audit");
    }
    let all = l
        .audit_log(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("log");
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].e.action, "discharge.open");
    assert_eq!(all[2].e.after["i"], 0);
    let f = |f: AuditFilter| async move {
        l.audit_log(&AuditFilter { limit: 10, ..f })
            .await
            .expect("log")
            .len()
    };
    assert_eq!(
        f(AuditFilter {
            actor: Some("ops".into()),
            ..Default::default()
        })
        .await,
        2
    );
    assert_eq!(
        f(AuditFilter {
            action: Some("epod.amend".into()),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        f(AuditFilter {
            target: Some("x/2".into()),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        f(AuditFilter {
            from_ms: Some(T0 + 1),
            to_ms: Some(T0 + 2),
            ..Default::default()
        })
        .await,
        1
    );

    // Last good reading: a tag whose later readings are bad.
    s.birth(&birth("g", "a", "h", &["x"]), T0)
        .await
        .expect("birth");
    let mut b = batch("g", "a", "h", 1, 1, 10, T0, 0.0);
    for r in &mut b.readings[5..] {
        r.quality = wire::Quality::BadCommunication;
    }
    s.commit(&[b]).await.expect("commit");
    let tag = tag_id(s, "x").await;
    let g = l.last_good(&[tag], T0 - 1).await.expect("last good");
    assert_eq!(
        g,
        vec![GoodSince {
            last_good_ms: Some(T0 + 4_000),
            first_ms: Some(T0)
        }]
    );
    let g = l.last_good(&[tag], T0 + 4_500).await.expect("last good");
    assert_eq!(
        g,
        vec![GoodSince {
            last_good_ms: None,
            first_ms: Some(T0 + 5_000)
        }]
    );
}

/// Instantiate the whole suite for a backend: `store_suite!(async { make().await });`
#[macro_export]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store_suite!(@t $make; migrate_is_idempotent, birth_registers_agent_and_tags, a_batch_is_stored_once,
            an_unknown_catalog_is_not_stored, one_commit_call_reports_each_batch, gaps_and_events_are_stored,
            series_are_bucketed, every_value_kind_is_kept, status_and_heartbeat_update_the_agent, dead_letters_are_kept,
            a_conflicting_batch_is_never_a_duplicate, epochs_keep_batch_ids_apart,
            a_replaced_buffer_is_a_gap_of_unknown_count, nonsense_gaps_are_refused, coverage_inputs_are_read,
            ledger_history_amendments_and_audit, lists_are_paged_in_the_query);
    };
    (@t $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(store) = $make.await else { return };
                $crate::store::suite::$name(&*store).await;
            }
        )*
    };
}

/// A record captured again by an agent that lost its event cursors (a new buffer database:
/// another epoch, batch ids from 1, a new extended sequence number) is stored once; a record
/// with other fields from the same source is stored.
pub async fn a_recaptured_event_is_stored_once(s: &dyn Store, l: &dyn crate::store::Ledger) {
    s.birth(&birth("s9", "a1", "h1", &["g/a"]), T0)
        .await
        .expect("birth");
    let record = |seq: u64, ts_ms: i64, plc_seq: i64, gross: f64| wire::Event {
        source: "bay-1".into(),
        kind: "gantry-batch".into(),
        seq,
        ts_ms,
        fields: vec![
            ("bol".into(), wire::WireValue::Text("BOL-9".into())),
            ("gross_l".into(), wire::WireValue::Float(gross)),
            ("plc_seq".into(), wire::WireValue::Int(plc_seq)),
        ],
    };
    let mut first = wire::Batch::new("s9", "a1", 1, "h1", T0);
    first.buffer_epoch = 11;
    first.events.push(record(10_005, T0 + 1000, 5, 30_000.0));
    s.commit(&[first]).await.expect("commit");
    // The new buffer (epoch 12), the record on display captured again as seq 5. (Batch id 2:
    // this is about events, not about the batch ledger's key.)
    let mut again = wire::Batch::new("s9", "a1", 2, "h1", T0 + 3_600_000);
    again.buffer_epoch = 12;
    again.events.push(record(5, T0 + 3_600_000, 5, 30_000.0));
    again.events.push(record(6, T0 + 3_700_000, 6, 28_000.0));
    s.commit(&[again]).await.expect("commit");
    let ev = l
        .events("s9", "gantry-batch", T0, T0 + 10_000_000)
        .await
        .expect("events");
    let seqs: Vec<i64> = ev.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![10_005, 6],
        "the re-captured record once, the new one stored"
    );
}

/// The bounds the `bounded` tests run under (`store::bounds`): 30 days back, 1 day ahead,
/// 50,000 tags per agent, dead letters capped at 1 KiB, kept 30 days and 3,000 bytes in all.
pub fn bounded_limits() -> super::Limits {
    super::Limits {
        accept_past_ms: Some(30 * 86_400_000),
        accept_future_ms: Some(86_400_000),
        max_tags_per_agent: Some(50_000),
        dead_letter_keep_bytes: Some(1024),
        dead_letter_retention_ms: Some(30 * 86_400_000),
        dead_letter_max_total_bytes: Some(3000),
    }
}

/// The times of [`out_of_window_readings_are_dead_lettered`]'s batch around `now`: two inside
/// the window, then 40 days back, 3 days ahead and 999 days ahead (refused).
pub fn window_times(now: i64) -> [i64; 5] {
    const DAY: i64 = 86_400_000;
    [
        now - DAY,
        now,
        now - 40 * DAY,
        now + 3 * DAY,
        now + 999 * DAY,
    ]
}

/// Under [`bounded_limits`]: readings outside the accepted window are not stored but kept as
/// one dead letter naming them (on the agent's data topic suffix, so coverage counts it); the
/// batch's other readings are stored and the outcome says how many were refused; the batch
/// sent again is a duplicate (the ledger keeps the whole batch's digest), not a conflict.
pub async fn out_of_window_readings_are_dead_lettered(s: &dyn Store) {
    let now = flowsquare_service::clock::now_ms();
    s.birth(&birth("sw", "a1", "h1", &["w/level"]), now)
        .await
        .expect("birth");
    let mut b = batch("sw", "a1", "h1", 1, 1, 0, now, 0.0);
    for (i, ts) in window_times(now).into_iter().enumerate() {
        b.readings.push(wire::WireReading {
            tag: 0,
            ts_ms: ts,
            value: Some(wire::WireValue::Float(i as f64)),
            quality: wire::Quality::Good,
            status: None,
            error: None,
            counter: None,
        });
    }
    b.sort_readings();
    let out = s.commit(std::slice::from_ref(&b)).await.expect("commit");
    assert_eq!(
        out,
        vec![CommitOutcome::Stored {
            readings: 2,
            events: 0,
            gaps: 0,
            out_of_window: 3,
        }]
    );
    assert_eq!(
        s.count_readings(None, i64::MIN / 2, i64::MAX / 2)
            .await
            .expect("count"),
        2
    );
    let dls = s.dead_letters(10).await.expect("dead letters");
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert!(
        dls[0].topic.ends_with("/sw/a1/data") && dls[0].topic.starts_with("out-of-window/"),
        "{}",
        dls[0].topic
    );
    assert!(
        dls[0].reason.contains("3 reading(s)")
            && dls[0].reason.contains("outside the accepted window")
            && dls[0].reason.contains("other 2 reading(s)"),
        "{}",
        dls[0].reason
    );
    assert_eq!(
        s.ledger()
            .dead_letter_count("sw", "a1", now - 1, now + 600_000)
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        s.commit(std::slice::from_ref(&b)).await.expect("again"),
        vec![CommitOutcome::Duplicate]
    );
    assert_eq!(s.dead_letters(10).await.expect("dead letters").len(), 1);
}

/// Under [`bounded_limits`] (50,000 tags per agent): a birth of 100,000 tags is refused with an
/// error naming the agent and the counts, and registers nothing; the limit counts the names
/// already registered, so a second config adding too many new names is refused too, while a
/// birth re-using names passes.
pub async fn a_birth_beyond_the_tag_limit_is_refused(s: &dyn Store) {
    let names: Vec<String> = (0..100_000).map(|i| format!("t/{i:06}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let e = s
        .birth(&birth("sl", "big", "h1", &refs), T0)
        .await
        .expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("sl/big")
            && msg.contains("100000 tag(s)")
            && msg.contains("max_tags_per_agent = 50000"),
        "{msg}"
    );
    assert!(s.tags(Some("sl"), None).await.expect("tags").is_empty());
    s.birth(&birth("sl", "big", "h2", &refs[..30_000]), T0)
        .await
        .expect("30,000 tags fit");
    let e = s
        .birth(&birth("sl", "big", "h3", &refs[20_000..50_001]), T0)
        .await
        .expect_err("50,001 in all");
    assert!(e.to_string().contains("would have 50001"), "{e}");
    s.birth(&birth("sl", "big", "h4", &refs[10_000..50_000]), T0)
        .await
        .expect("50,000 in all");
    assert_eq!(s.tags(Some("sl"), None).await.expect("tags").len(), 50_000);
}

/// Under [`bounded_limits`]: a dead letter's payload is cut to its first KiB, its reason names
/// the original length and SHA-256; the retention drops those older than 30 days, then the
/// oldest while the payloads add up to more than 3,000 bytes.
pub async fn dead_letters_are_capped_and_pruned(s: &dyn Store) {
    use sha2::Digest;
    let now = flowsquare_service::clock::now_ms();
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let letter = |payload: Vec<u8>, received_ms: i64| DeadLetter {
        topic: "fs/v1/s/a/data".into(),
        payload,
        reason: "undecodable".into(),
        received_ms,
    };
    s.dead_letter(&letter(big.clone(), now - 40 * 86_400_000))
        .await
        .expect("old and big");
    let rows = s.dead_letters(10).await.expect("rows");
    assert_eq!(rows[0].bytes, 1024);
    let digest = hex::encode(sha2::Sha256::digest(&big));
    assert!(
        rows[0].reason.starts_with("undecodable")
            && rows[0].reason.contains(&format!("{} bytes", big.len()))
            && rows[0].reason.contains(&digest),
        "{}",
        rows[0].reason
    );
    for i in 0..4 {
        s.dead_letter(&letter(vec![1; 1000], now - 1000 + i))
            .await
            .expect("small");
    }
    // The old one by age, then the oldest small one (4,000 bytes > 3,000).
    assert_eq!(s.prune_dead_letters(now).await.expect("prune"), 2);
    let rows = s.dead_letters(10).await.expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.received_ms > now - 1000), "{rows:?}");
    assert_eq!(s.prune_dead_letters(now).await.expect("again"), 0);
}

/// A tag's key in its list.
fn tag_key(t: &TagRow) -> (String, String, String) {
    (t.site.clone(), t.agent.clone(), t.name.clone())
}

/// Walk a keyset-paged list to its end: `page(after, limit)` with pages of `size` (+1 fetched,
/// as the API does), the next key from the last row; returns every row and the page count.
async fn walk<T, K, F, Fut>(size: i64, key: impl Fn(&T) -> K, mut page: F) -> (Vec<T>, usize)
where
    K: Clone,
    F: FnMut(Option<K>, i64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, StoreError>>,
{
    let (mut all, mut pages, mut after) = (Vec::new(), 0, None);
    loop {
        let mut rows = page(after.clone(), size + 1).await.expect("page");
        pages += 1;
        assert!(pages < 10_000, "the walk does not end");
        let more = rows.len() as i64 > size;
        rows.truncate(size as usize);
        after = rows.last().map(&key);
        all.extend(rows);
        if !more {
            return (all, pages);
        }
    }
}

/// Lists are paged in the query (issue 16): 2,500 tags of two sites walked in pages of 100 come
/// each exactly once, in the list's order (site, agent, name), the same as unpaged; a site
/// filter (a token's scope) is applied before the limit, so its pages are full; agents, gaps,
/// dead letters, discharges, ePODs, runs, alerts and the audit log page the same way.
pub async fn lists_are_paged_in_the_query(s: &dyn Store) {
    use super::{GapFilter, TagFilter};
    let names =
        |n: usize, p: &str| -> Vec<String> { (0..n).map(|i| format!("{p}/{i:04}")).collect() };
    for (site, agent, n) in [("pa", "b", 1_000), ("pa", "a", 1_000), ("pb", "a", 500)] {
        let ns = names(n, "t");
        let refs: Vec<&str> = ns.iter().map(String::as_str).collect();
        s.birth(&birth(site, agent, "h1", &refs), T0)
            .await
            .expect("birth");
    }
    let all = TagFilter::default();
    let (rows, pages) = walk(100, tag_key, |after, limit| {
        let f = all.clone();
        async move { s.tags_page(&f, after.as_ref(), limit).await }
    })
    .await;
    assert_eq!((rows.len(), pages), (2_500, 25));
    let keys: Vec<(String, String, String)> = rows.iter().map(tag_key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "each tag once, in (site, agent, name) order");
    let unpaged: Vec<i64> = s
        .tags(None, None)
        .await
        .expect("tags")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(rows.iter().map(|t| t.id).collect::<Vec<_>>(), unpaged);
    // The scope in the query: pages of 100 of site pb only, all full but the last.
    let scoped = TagFilter {
        sites: Some(vec!["pb".into()]),
        ..TagFilter::default()
    };
    let first = s.tags_page(&scoped, None, 101).await.expect("scoped");
    assert_eq!(first.len(), 101);
    assert!(first.iter().all(|t| t.site == "pb"));
    let (rows, pages) = walk(100, tag_key, |after, limit| {
        let f = scoped.clone();
        async move { s.tags_page(&f, after.as_ref(), limit).await }
    })
    .await;
    assert_eq!((rows.len(), pages), (500, 5));
    // A prefix and a site together, from a key in the middle.
    let f = TagFilter {
        site: Some("pa".into()),
        prefix: Some("t/09".into()),
        ..TagFilter::default()
    };
    let after = ("pa".to_owned(), "a".to_owned(), "t/0950".to_owned());
    let rows = s.tags_page(&f, Some(&after), 1_000).await.expect("prefix");
    assert_eq!(rows.len(), 49 + 100);
    assert_eq!(rows[0].name, "t/0951");
    // By ids (the API's check that tags exist), within a scope.
    let ids: Vec<i64> = rows.iter().take(3).map(|t| t.id).collect();
    let by_id = TagFilter {
        ids: Some(ids.clone()),
        sites: Some(vec!["pa".into()]),
        ..TagFilter::default()
    };
    let found: Vec<i64> = s
        .tags_page(&by_id, None, 10)
        .await
        .expect("ids")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(found, ids);
    let other = TagFilter {
        sites: Some(vec!["pb".into()]),
        ..by_id
    };
    assert!(s.tags_page(&other, None, 10).await.expect("ids").is_empty());

    // Agents, scoped.
    let (agents, _) = walk(
        1,
        |a: &AgentRow| (a.site.clone(), a.agent.clone()),
        |after, limit| async move { s.agents_page(None, after.as_ref(), limit).await },
    )
    .await;
    let ids: Vec<(String, String)> = agents
        .iter()
        .map(|a| (a.site.clone(), a.agent.clone()))
        .collect();
    assert_eq!(
        ids,
        [
            ("pa".into(), "a".into()),
            ("pa".into(), "b".into()),
            ("pb".into(), "a".into())
        ]
    );
    let pb = ["pb".to_owned()];
    assert_eq!(
        s.agents_page(Some(&pb), None, 10)
            .await
            .expect("scoped")
            .len(),
        1
    );

    // Gaps, by start and id, also with equal starts.
    let mut b = batch("pa", "a", "h1", 1, 1, 1, T0, 0.0);
    for i in 0..5 {
        b.gaps.push(wire::Gap::counted(
            vec![],
            T0 - 10_000 + (i / 2) * 1000,
            T0 - 5_000,
            1,
            wire::GapReason::BufferFull,
        ));
    }
    s.commit(&[b]).await.expect("commit");
    let gf = GapFilter {
        site: None,
        sites: Some(vec!["pa".into()]),
        from_ms: 0,
        to_ms: T0 * 2,
    };
    let (gaps, pages) = walk(
        2,
        |g: &GapRow| (g.from_ms, g.id),
        |after, limit| {
            let f = gf.clone();
            async move { s.gaps_page(&f, after, limit).await }
        },
    )
    .await;
    assert_eq!((gaps.len(), pages), (5, 3));
    assert!(gaps
        .windows(2)
        .all(|w| (w[0].from_ms, w[0].id) < (w[1].from_ms, w[1].id)));
    let none = GapFilter {
        sites: Some(vec!["pb".into()]),
        ..gf.clone()
    };
    assert!(s
        .gaps_page(&none, None, 10)
        .await
        .expect("pb gaps")
        .is_empty());

    // Dead letters, newest first, equal receive times told apart by id.
    for i in 0..5 {
        let dl = DeadLetter {
            topic: format!("x/{i}"),
            payload: vec![1],
            reason: "r".into(),
            received_ms: T0 + i / 2,
        };
        s.dead_letter(&dl).await.expect("dead letter");
    }
    let (dls, _) = walk(
        2,
        |d: &DeadLetterRow| (d.received_ms, d.id),
        |after, limit| async move { s.dead_letters_page(after, limit).await },
    )
    .await;
    let topics: Vec<&str> = dls.iter().map(|d| d.topic.as_str()).collect();
    assert_eq!(topics, ["x/4", "x/3", "x/2", "x/1", "x/0"]);

    ledger_lists_are_paged(s.ledger()).await;
}

/// The ledger's lists, paged: discharges (by open time, scoped), ePODs (by delivery, scoped by
/// truck or station), runs, alerts and audit entries (newest first).
async fn ledger_lists_are_paged(l: &dyn super::Ledger) {
    use crate::reconcile::model::{Epod, EpodCompartment, NewAlert};
    use crate::store::ledger::{AuditFilter, EpodScope, NewAudit, NewDischarge, NewRun};
    for (i, site) in ["pa", "pb", "pa", "pa"].iter().enumerate() {
        let d = NewDischarge {
            site: (*site).into(),
            vessel: "MT".into(),
            parcel: format!("P{i}"),
            product: "PMS".into(),
            bl_l: 1.0,
            tanks: vec!["T1".into()],
            meters: vec![],
            opened_ms: T0 + (i as i64 / 2) * 1000,
        };
        l.open_discharge(&d).await.expect("discharge");
    }
    let pa_sites = ["pa".to_owned()];
    let pa: &[String] = &pa_sites;
    let (ds, pages) = walk(
        1,
        |d: &crate::store::ledger::DischargeRow| (d.d.opened_ms, d.id),
        |after, limit| async move { l.discharges_page(0, T0 * 2, Some(pa), after, limit).await },
    )
    .await;
    assert_eq!((ds.len(), pages), (3, 3));
    assert!(ds.iter().all(|d| d.d.site == "pa"));
    for (i, (truck, station)) in [("K1", "S1"), ("K2", "S2"), ("K2", "S1"), ("K3", "S3")]
        .iter()
        .enumerate()
    {
        let e = Epod {
            id: 0,
            trip: format!("TR{i}"),
            bol: format!("B{i}"),
            truck: (*truck).into(),
            station: (*station).into(),
            delivered_ms: T0 + (i as i64 / 2) * 1000,
            receiver: "r".into(),
            lat: None,
            lon: None,
            compartments: vec![EpodCompartment {
                compartment: 1,
                product: "PMS".into(),
                gross_l: 1.0,
                net_l: None,
            }],
        };
        l.post_epod(&e, T0).await.expect("epod");
    }
    let scope = EpodScope {
        trucks: vec!["K1".into()],
        stations: vec!["S1".into(), "S3".into()],
    };
    let (es, _) = walk(
        1,
        |e: &Epod| (e.delivered_ms, e.id),
        |after, limit| {
            let sc = scope.clone();
            async move { l.epods_page(0, T0 * 2, Some(&sc), after, limit).await }
        },
    )
    .await;
    let bols: Vec<&str> = es.iter().map(|e| e.bol.as_str()).collect();
    assert_eq!(bols, ["B0", "B2", "B3"]);
    assert_eq!(es[0].compartments.len(), 1, "compartments come with a page");
    for day in ["2026-01-01", "2026-01-02", "2026-01-03"] {
        let run = NewRun {
            date: day.into(),
            trigger: "cli".into(),
            started_ms: T0,
            finished_ms: T0,
            as_of_ms: T0,
        };
        let alert = NewAlert {
            kind: "tank-balance".into(),
            site: "pa".into(),
            place: "T1".into(),
            date: day.into(),
            message: "m".into(),
            detail: serde_json::Value::Null,
        };
        l.save_run(&run, &[], &[alert], T0).await.expect("run");
    }
    let (runs, pages) = walk(
        2,
        |r: &crate::store::ledger::RunRow| r.id,
        |after, limit| async move { l.runs_page(after, limit).await },
    )
    .await;
    assert_eq!((runs.len(), pages), (3, 2));
    assert!(runs.windows(2).all(|w| w[0].id > w[1].id));
    let (alerts, _) = walk(
        1,
        |a: &crate::store::ledger::AlertRow| a.id,
        |after, limit| async move { l.alerts_page(None, Some(pa), after, limit).await },
    )
    .await;
    assert_eq!(alerts.len(), 3);
    let pb = ["pb".to_owned()];
    assert!(l
        .alerts_page(None, Some(&pb), None, 10)
        .await
        .expect("pb")
        .is_empty());
    for i in 0..3 {
        let e = NewAudit {
            actor: "t".into(),
            role: "admin".into(),
            at_ms: T0 + i,
            action: "x.y".into(),
            target: format!("x/{i}"),
            before: serde_json::Value::Null,
            after: serde_json::Value::Null,
        };
        l.audit(&e).await.expect("audit");
    }
    let (entries, _) = walk(
        1,
        |a: &crate::store::ledger::AuditRow| a.id,
        |after, limit| async move {
            l.audit_log(&AuditFilter {
                action: Some("x.y".into()),
                limit,
                before_id: after,
                ..Default::default()
            })
            .await
        },
    )
    .await;
    let targets: Vec<&str> = entries.iter().map(|e| e.e.target.as_str()).collect();
    assert_eq!(targets, ["x/2", "x/1", "x/0"]);
}
