//! The buffer task: one thread owns the SQLite store. Drivers hand it readings; it group-commits
//! them (every `commit_interval` or `commit_readings`, whichever comes first) as segments per
//! priority class. The uplink leases and acknowledges batches through the same handle.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{self, Identity};
use super::config::BufferConfig;
use super::error::BufferError;
use super::inbox::Inbox;
use super::inflight::Inflight;
use super::store::{Class, LeaseRequest, Leased, NewSegment, Store, StoreFigures};
use crate::model::{digest, Cursor, EventLedger, GapRow, LedgerFuture, Reading, SharedLedger};

/// Most readings in one segment.
const SEGMENT_READINGS: usize = 10_000;
/// How often small segments are merged (a lightly loaded agent commits ~20 readings per 100 ms;
/// merged, they compress about 10× better, which matters during long outages).
const COMPACT_EVERY: Duration = Duration::from_secs(30);
/// Segments under this many readings are merged…
const SMALL_SEGMENT: u32 = 2_000;
/// …into segments of up to this many.
const MERGED_SEGMENT: u32 = 10_000;

/// A leased batch ready to publish.
#[derive(Debug, Clone)]
pub struct OutBatch {
    /// Persisted batch id.
    pub batch_id: u64,
    /// Encoded wire batch.
    pub payload: Vec<u8>,
    /// Readings and events inside.
    pub readings: u64,
    /// The lease left unleased data of its range behind (see [`Leased::more`]).
    pub more: bool,
}

/// Counters of the buffer stage.
#[derive(Debug, Default)]
pub struct BufferStats {
    /// Readings handed to the buffer.
    pub received: AtomicU64,
    /// Readings committed to disk.
    pub committed: AtomicU64,
    /// Group commits.
    pub commits: AtomicU64,
    /// Readings dropped for space.
    pub dropped_full: AtomicU64,
    /// Readings dropped for age.
    pub dropped_age: AtomicU64,
    /// Readings deleted after the cloud's acknowledgement.
    pub acked: AtomicU64,
    /// Errors writing the database (each one is logged).
    pub write_errors: AtomicU64,
    /// Corrupt databases quarantined at start.
    pub quarantined: AtomicU64,
    /// Readings of stored records found undecodable in this run (reported as gaps).
    pub damaged: AtomicU64,
}

enum Cmd {
    /// Readings wait in the inbox (see `inbox.rs`): arm the group commit, or commit now.
    Wake,
    Events(Vec<flowsquare_wire::Event>, Vec<GapRow>),
    Acked(String, u64),
    Gap(GapRow),
    Flush(oneshot::Sender<Result<(), BufferError>>),
    Lease(
        LeaseRequest,
        oneshot::Sender<Result<Option<OutBatch>, BufferError>>,
    ),
    Leased(oneshot::Sender<Result<Vec<OutBatch>, BufferError>>),
    Ack(u64, oneshot::Sender<Result<u64, BufferError>>),
    Figures(oneshot::Sender<Result<StoreFigures, BufferError>>),
    Compact(oneshot::Sender<usize>),
    Reconfigure(
        Identity,
        Vec<Class>,
        oneshot::Sender<Result<(), BufferError>>,
    ),
}

/// What the buffer needs of a tag map: the identity its segments carry and each tag's class
/// (indexed by tag id). `config/` builds it from a `TagMap` (`From<&TagMap>`), so
/// `Buffer::start(&map, ..)` reads as before while the buffer never imports the tag map.
#[derive(Debug, Clone, PartialEq)]
pub struct TagClasses {
    /// Site, agent and tag-map hash.
    pub identity: Identity,
    /// Priority class of every tag, by tag id.
    pub classes: Vec<Class>,
}

/// Handle to the buffer task (cheap to clone).
#[derive(Clone)]
pub struct Buffer {
    tx: mpsc::Sender<Cmd>,
    /// Counters.
    pub stats: Arc<BufferStats>,
    board: Arc<CursorBoard>,
    identity: Arc<flowsquare_wire::messages::BufferIdentity>,
    inflight: Option<Arc<Inflight>>,
    inbox: Arc<Inbox>,
    ready: Arc<DataReady>,
}

/// Tells the uplink that something it may lease was stored (readings committed, events, a gap),
/// so it leases right after a commit instead of asking the buffer thread on every tick.
#[derive(Debug, Default)]
struct DataReady {
    /// Stores of leasable data so far.
    changes: AtomicU64,
    notify: tokio::sync::Notify,
}

impl DataReady {
    fn stored(&self) {
        self.changes.fetch_add(1, Relaxed);
        self.notify.notify_one();
    }
}

/// Build the wire batch of a lease. A stored segment that cannot be decoded is quarantined
/// alone (`Store::quarantine_segment`: moved to `bad_segment`, reported as a `buffer-damaged`
/// gap under the same batch id) and the batch is built again without it, so a bad record never
/// blocks the uplink or an export. Returns the batch and the readings reported lost.
pub fn build_checked(
    store: &mut Store,
    id: &Identity,
    mut leased: Leased,
) -> Result<(OutBatch, u64), BufferError> {
    let mut lost = 0;
    let more = leased.more;
    loop {
        match codec::build_batch(id, &leased) {
            Ok(payload) => {
                return Ok((
                    OutBatch {
                        batch_id: leased.batch_id,
                        readings: leased.count(),
                        payload,
                        more,
                    },
                    lost,
                ))
            }
            Err(BufferError::Segment { id: seg, reason })
                if leased.segments.iter().any(|s| s.id == seg) =>
            {
                lost += store.quarantine_segment(seg, &reason)?;
                leased = store.leased_batch(leased.batch_id)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The committed cursor of every event definition: loaded from the database at start, updated
/// by the buffer thread right after each event transaction commits.
#[derive(Debug)]
struct CursorBoard {
    cursors: Mutex<HashMap<String, Cursor>>,
    version: watch::Sender<u64>,
}

impl CursorBoard {
    fn get(&self, source: &str) -> Option<Cursor> {
        self.cursors.lock().ok()?.get(source).copied()
    }

    fn update(&self, changes: &[(String, Cursor)]) {
        if let Ok(mut m) = self.cursors.lock() {
            for (s, c) in changes {
                m.insert(s.clone(), *c);
            }
        }
        self.version.send_modify(|v| *v += 1);
    }
}

/// What an event driver needs from the buffer: the cursor it resumes after, a confirmation
/// that its records are committed (only then is the handshake written to the PLC), and a
/// place to note the handshake.
#[derive(Clone)]
pub struct BufferLedger {
    buffer: Buffer,
}

impl EventLedger for BufferLedger {
    /// The last committed record of `source`.
    fn cursor(&self, source: &str) -> Option<Cursor> {
        self.buffer.board.get(source)
    }

    /// Wait until `source`'s record `seq` is committed; false after `timeout` (the commit
    /// failed or the buffer is stuck: the driver re-reads the record).
    fn wait_committed<'a>(
        &'a self,
        source: &'a str,
        seq: u64,
        timeout: Duration,
    ) -> LedgerFuture<'a, bool> {
        Box::pin(async move {
            let mut rx = self.buffer.board.version.subscribe();
            let board = self.buffer.board.clone();
            let done = move || board.get(source).is_some_and(|c| c.seq >= seq);
            tokio::time::timeout(timeout, rx.wait_for(|_| done()))
                .await
                .is_ok_and(|r| r.is_ok())
        })
    }

    /// Note that the handshake of `source`'s record `seq` was written.
    fn mark_acked<'a>(&'a self, source: &'a str, seq: u64) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            let _ = self
                .buffer
                .tx
                .send(Cmd::Acked(source.to_owned(), seq))
                .await;
        })
    }
}

/// The running buffer thread; `join` after every handle is dropped (or after `Buffer::close`).
pub struct BufferThread(std::thread::JoinHandle<()>);

impl BufferThread {
    /// Wait for the thread to commit what it holds and close the database.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("buffer thread panicked");
        }
    }
}

impl Buffer {
    /// Open the store and start the buffer thread.
    pub fn start(
        map: impl Into<TagClasses>,
        cfg: &BufferConfig,
    ) -> Result<(Buffer, BufferThread), BufferError> {
        let TagClasses {
            identity: id,
            classes,
        } = map.into();
        let path = cfg.effective_path();
        let (store, quarantined) = Store::open(&path, cfg.durability(), cfg.bounds())?;
        let stats = Arc::new(BufferStats::default());
        let board = Arc::new(CursorBoard {
            cursors: Mutex::new(store.event_cursors()?.into_iter().collect()),
            version: watch::channel(0).0,
        });
        if quarantined.is_some() {
            stats.quarantined.fetch_add(1, Relaxed);
        }
        let identity = Arc::new(store.identity().clone());
        let inflight = store.inflight();
        tracing::info!(epoch = identity.epoch, created_ms = identity.created_ms, origin = %identity.origin,
            note = identity.note.as_deref().unwrap_or(""), "buffer open");
        let (tx, rx) = mpsc::channel(1024);
        let rt = tokio::runtime::Handle::current();
        let st = stats.clone();
        let bd = board.clone();
        let (interval, max_pending) = (cfg.commit_interval, cfg.commit_readings as usize);
        let inbox = Arc::new(Inbox::new(max_pending));
        let ready = Arc::new(DataReady::default());
        let (ib, rd) = (inbox.clone(), ready.clone());
        let th = std::thread::Builder::new()
            .name("buffer".into())
            .spawn(move || {
                Worker {
                    store,
                    id,
                    classes,
                    stats: st,
                    board: bd,
                    inbox: ib,
                    ready: rd,
                    pending: BTreeMap::new(),
                    pending_n: 0,
                    sealed: Vec::new(),
                    sealed_n: 0,
                    floor: CrashFloor::default(),
                }
                .run(rt, rx, interval, max_pending)
            })
            .map_err(|e| BufferError::Io { path, source: e })?;
        Ok((
            Buffer {
                tx,
                stats,
                board,
                identity,
                inflight,
                inbox,
                ready,
            },
            BufferThread(th),
        ))
    }

    /// The buffer database's identity (epoch, creation, how it was found at start).
    pub fn identity(&self) -> &flowsquare_wire::messages::BufferIdentity {
        &self.identity
    }

    /// Hand readings over; they are committed within the group-commit interval.
    pub async fn append(&self, readings: Vec<Reading>) -> Result<(), BufferError> {
        self.stats
            .received
            .fetch_add(readings.len() as u64, Relaxed);
        // Before the writer can commit them: the side file is never behind the committed total.
        if let Some(f) = &self.inflight {
            f.add(readings.len() as u64);
        }
        if self.tx.is_closed() {
            return Err(BufferError::Stopped);
        }
        // Most hand-overs only queue (see `inbox.rs`); the thread is woken when it must act.
        if self.inbox.push(readings) {
            self.tx
                .send(Cmd::Wake)
                .await
                .map_err(|_| BufferError::Stopped)?;
        }
        Ok(())
    }

    /// Stores of leasable data (readings committed, events, gaps) so far: unchanged since a
    /// lease found nothing means nothing new was stored.
    pub fn changes(&self) -> u64 {
        self.ready.changes.load(Relaxed)
    }

    /// Wait until leasable data is stored (returns at once if some was stored since the last
    /// call returned).
    pub async fn data_ready(&self) {
        self.ready.notify.notified().await;
    }

    /// Hand business events over (never dropped for space).
    pub async fn append_events(
        &self,
        events: Vec<flowsquare_wire::Event>,
    ) -> Result<(), BufferError> {
        self.append_events_with_gaps(events, Vec::new()).await
    }

    /// Hand business events over with the missed-event gaps found with them: committed at
    /// once, in one transaction with the cursor of each event's definition (`source`).
    /// Events at or before their source's committed cursor are dropped as duplicates (a
    /// driver re-sends when a confirmation came too late).
    pub async fn append_events_with_gaps(
        &self,
        events: Vec<flowsquare_wire::Event>,
        gaps: Vec<GapRow>,
    ) -> Result<(), BufferError> {
        self.tx
            .send(Cmd::Events(events, gaps))
            .await
            .map_err(|_| BufferError::Stopped)
    }

    /// The view of the buffer the event drivers use.
    pub fn event_ledger(&self) -> SharedLedger {
        std::sync::Arc::new(BufferLedger {
            buffer: self.clone(),
        })
    }

    /// Record a known loss to report.
    pub async fn add_gap(&self, gap: GapRow) -> Result<(), BufferError> {
        self.tx
            .send(Cmd::Gap(gap))
            .await
            .map_err(|_| BufferError::Stopped)
    }

    async fn call<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<Result<T, BufferError>>) -> Cmd,
    ) -> Result<T, BufferError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(f(tx))
            .await
            .map_err(|_| BufferError::Stopped)?;
        rx.await.map_err(|_| BufferError::Stopped)?
    }

    /// Commit everything handed over so far, now.
    pub async fn flush(&self) -> Result<(), BufferError> {
        self.call(Cmd::Flush).await
    }

    /// Lease a batch (encoded, with a persisted id).
    pub async fn lease(&self, req: LeaseRequest) -> Result<Option<OutBatch>, BufferError> {
        self.call(|tx| Cmd::Lease(req, tx)).await
    }

    /// Batches leased and not acknowledged (to re-send after a restart).
    pub async fn leased(&self) -> Result<Vec<OutBatch>, BufferError> {
        self.call(Cmd::Leased).await
    }

    /// The cloud committed `batch_id`: delete it. Returns readings deleted.
    pub async fn ack(&self, batch_id: u64) -> Result<u64, BufferError> {
        self.call(|tx| Cmd::Ack(batch_id, tx)).await
    }

    /// Store figures.
    pub async fn figures(&self) -> Result<StoreFigures, BufferError> {
        self.call(Cmd::Figures).await
    }

    /// Switch to a reloaded tag map: what was handed over before is committed under the old
    /// map's hash (its segments keep it and travel in batches of their own), what comes after
    /// under the new one.
    pub async fn reconfigure(&self, map: impl Into<TagClasses>) -> Result<(), BufferError> {
        let TagClasses {
            identity: id,
            classes,
        } = map.into();
        self.call(|tx| Cmd::Reconfigure(id, classes, tx)).await
    }

    /// Merge small segments now (the buffer thread also does it every 30 s); returns the
    /// number of segments merged away.
    pub async fn compact(&self) -> Result<usize, BufferError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Compact(tx))
            .await
            .map_err(|_| BufferError::Stopped)?;
        rx.await.map_err(|_| BufferError::Stopped)
    }
}

struct Worker {
    store: Store,
    id: Identity,
    classes: Vec<Class>,
    stats: Arc<BufferStats>,
    board: Arc<CursorBoard>,
    inbox: Arc<Inbox>,
    ready: Arc<DataReady>,
    pending: BTreeMap<Class, Vec<Reading>>,
    pending_n: usize,
    /// Readings of a previous tag map, already encoded, waiting for the next commit.
    sealed: Vec<NewSegment>,
    sealed_n: usize,
    /// Where the window a crash can lose starts (persisted with every commit).
    floor: CrashFloor,
}

/// The oldest timestamp a reading that is not committed yet can have — where the
/// `unclean-shutdown` gap of a crash must start (pure bookkeeping).
///
/// A tag's readings reach the buffer in timestamp order, so a reading of tag X lost in a crash
/// is no older than X's last committed reading (or, before any commit of X, its first reading
/// handed over). Readings are stamped when polled — GPS readings with the receiver's fix time —
/// and handed over later, so the time of the last commit alone is not a bound: a reading
/// stamped before that commit may have arrived just after it. The floor is the minimum over the
/// tags seen; a map with slowly polled tags gets a wider (still true) window.
#[derive(Debug, Default)]
pub(crate) struct CrashFloor {
    /// Per tag id: its last committed reading's ts, or its first handed-over one's.
    floor: Vec<Option<i64>>,
    /// Per tag id: the newest ts handed over and not yet committed.
    pending: Vec<Option<i64>>,
}

impl CrashFloor {
    /// A reading of `tag` stamped `ts` was handed over.
    pub(crate) fn handed(&mut self, tag: u32, ts: i64) {
        let t = tag as usize;
        if self.floor.len() <= t {
            self.floor.resize(t + 1, None);
            self.pending.resize(t + 1, None);
        }
        self.floor[t].get_or_insert(ts);
        self.pending[t] = Some(self.pending[t].map_or(ts, |p| p.max(ts)));
    }

    /// Everything handed over is committed.
    pub(crate) fn committed(&mut self) {
        for (f, p) in self.floor.iter_mut().zip(self.pending.iter_mut()) {
            if let Some(p) = p.take() {
                *f = Some(f.map_or(p, |f| f.max(p)));
            }
        }
    }

    /// The tag ids changed (live reload), after the old map's readings were committed: start
    /// again from the new map's readings.
    pub(crate) fn reset(&mut self) {
        self.floor.clear();
        self.pending.clear();
    }

    /// The floor once what is pending is committed (None: nothing seen).
    pub(crate) fn after_commit(&self) -> Option<i64> {
        self.floor
            .iter()
            .zip(&self.pending)
            .filter_map(|(f, p)| match (f, p) {
                (Some(f), Some(p)) => Some((*f).max(*p)),
                (f, p) => f.or(*p),
            })
            .min()
    }
}

impl Worker {
    fn run(
        mut self,
        rt: tokio::runtime::Handle,
        mut rx: mpsc::Receiver<Cmd>,
        interval: Duration,
        max_pending: usize,
    ) {
        let mut first_pending: Option<Instant> = None;
        let mut last_compact = Instant::now();
        loop {
            if last_compact.elapsed() >= COMPACT_EVERY {
                last_compact = Instant::now();
                self.compact();
            }

            let wait = first_pending
                .map(|t| interval.saturating_sub(t.elapsed()))
                .unwrap_or(Duration::from_secs(3600));
            let cmd = rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await });
            // Readings handed over before this command come first (see `inbox.rs`).
            if self.take_inbox(false) {
                first_pending.get_or_insert_with(Instant::now);
            }
            match cmd {
                Ok(Some(Cmd::Wake)) => {
                    if self.pending_n >= max_pending && self.commit_all().is_ok() {
                        first_pending = None;
                    }
                }
                Ok(Some(Cmd::Events(evs, gaps))) => {
                    // Events are committed at once: they are rare and must never wait.
                    let res = self.commit_events(evs, gaps);
                    if res.is_ok() {
                        self.ready.stored();
                    }
                    self.note(res);
                }
                Ok(Some(Cmd::Acked(source, seq))) => {
                    let res = self.store.mark_acked(&source, seq);
                    if res.is_ok() {
                        if let Some(mut c) = self.board.get(&source).filter(|c| c.seq == seq) {
                            c.acked = true;
                            self.board.update(&[(source, c)]);
                        }
                    }
                    self.note(res);
                }
                Ok(Some(Cmd::Gap(g))) => {
                    let res = self.store.add_gap(&g);
                    if res.is_ok() {
                        self.ready.stored();
                    }
                    self.note(res);
                }
                Ok(Some(Cmd::Flush(reply))) => {
                    let res = self.commit_all();
                    first_pending = None;
                    let _ = reply.send(res);
                }
                Ok(Some(Cmd::Lease(req, reply))) => {
                    let res = self.store.lease(&req).and_then(|l| match l {
                        Some(l) => self.build(l).map(Some),
                        None => Ok(None),
                    });
                    let _ = reply.send(res);
                }
                Ok(Some(Cmd::Leased(reply))) => {
                    let res = self
                        .store
                        .leased()
                        .and_then(|ls| ls.into_iter().map(|l| self.build(l)).collect());
                    let _ = reply.send(res);
                }
                Ok(Some(Cmd::Ack(id, reply))) => {
                    let res = self.store.ack(id);
                    if let Ok(n) = &res {
                        self.stats.acked.fetch_add(*n, Relaxed);
                    }
                    let _ = reply.send(res);
                }
                Ok(Some(Cmd::Reconfigure(id, classes, reply))) => {
                    // Pending readings are encoded under the old map now (they carry its tag
                    // ids) and committed with the next group, or right here.
                    // (A failed commit keeps them sealed in memory and retries like any commit.)
                    let res = self.seal();
                    if res.is_ok() {
                        self.id = id;
                        self.classes = classes;
                        // (The inbox was emptied above: the pipeline waits for this reply
                        // before it hands over readings of the new map. Disarmed with it.)
                        if self.commit_all().is_ok() {
                            self.floor.reset();
                            first_pending = None;
                        } else {
                            first_pending = Some(Instant::now());
                        }
                    }
                    let _ = reply.send(res);
                }
                Ok(Some(Cmd::Compact(reply))) => {
                    let _ = reply.send(self.compact());
                }
                Ok(Some(Cmd::Figures(reply))) => {
                    let _ = reply.send(self.store.figures());
                }
                Ok(None) => {
                    // Every handle dropped: commit what is pending, close cleanly, stop.
                    if self.commit_all().is_ok() {
                        if let Err(e) = self.store.close() {
                            tracing::error!(error = %e, "closing the buffer failed");
                        }
                    }
                    return;
                }
                Err(_) => {
                    // Group-commit interval elapsed. On failure the readings stay pending and
                    // the next interval retries.
                    if self.commit_all().is_ok() {
                        first_pending = None;
                    } else {
                        first_pending = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Build a leased batch, quarantining undecodable segments (see [`build_checked`]).
    fn build(&mut self, l: Leased) -> Result<OutBatch, BufferError> {
        let (b, lost) = build_checked(&mut self.store, &self.id, l)?;
        if lost > 0 {
            self.stats.damaged.fetch_add(lost, Relaxed);
        }
        Ok(b)
    }

    /// Merge runs of small unleased segments (bounded work per call; errors are logged, the
    /// segments stay as they are).
    fn compact(&mut self) -> usize {
        let runs = match self.store.small_runs(SMALL_SEGMENT, MERGED_SEGMENT, 50) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "buffer compaction skipped");
                return 0;
            }
        };
        let (mut merged, mut before, mut after) = (0usize, 0u64, 0u64);
        for run in runs {
            let ids: Vec<i64> = run.iter().map(|s| s.id).collect();
            let res = codec::merge_segments(&self.id, run[0].class, &run).and_then(|seg| {
                let b: u64 = run.iter().map(|s| s.blob.len() as u64).sum();
                let a = seg.blob.len() as u64;
                self.store.replace(&ids, &seg).map(|done| (done, b, a))
            });
            match res {
                Ok((true, b, a)) => {
                    merged += ids.len();
                    before += b;
                    after += a;
                }
                Ok((false, _, _)) => {}
                Err(BufferError::Segment { id, reason }) if ids.contains(&id) => {
                    // An undecodable segment: quarantined alone; the rest merges next time.
                    match self.store.quarantine_segment(id, &reason) {
                        Ok(n) => {
                            self.stats.damaged.fetch_add(n, Relaxed);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, segment = id, "cannot quarantine a damaged segment")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "buffer compaction of a run failed; left as is")
                }
            }
        }
        if merged > 0 {
            tracing::debug!(
                segments = merged,
                bytes_before = before,
                bytes_after = after,
                "buffer compacted"
            );
        }
        merged
    }

    /// Commit events, their gaps and their definitions' cursors in one transaction; then
    /// publish the cursors (drivers waiting to write a handshake go on).
    fn commit_events(
        &mut self,
        evs: Vec<flowsquare_wire::Event>,
        gaps: Vec<GapRow>,
    ) -> Result<(), BufferError> {
        if evs.is_empty() {
            return self.store.append_events(None, &gaps, &[]);
        }
        let fresh: Vec<flowsquare_wire::Event> = evs
            .into_iter()
            .filter(|e| self.board.get(&e.source).is_none_or(|c| e.seq > c.seq))
            .collect();
        if fresh.is_empty() {
            // Duplicates of committed records: their gaps were committed with them.
            return Ok(());
        }
        let mut cursors: Vec<(String, Cursor)> = Vec::new();
        for e in &fresh {
            let c = Cursor {
                seq: e.seq,
                digest: digest(&e.fields),
                ts_ms: e.ts_ms,
                acked: false,
            };
            match cursors.iter_mut().find(|(s, _)| *s == e.source) {
                Some((_, old)) if old.seq < e.seq => *old = c,
                Some(_) => {}
                None => cursors.push((e.source.clone(), c)),
            }
        }
        let seg = codec::encode_events(&self.id, fresh)?;
        self.store.append_events(Some(&seg), &gaps, &cursors)?;
        self.board.update(&cursors);
        Ok(())
    }

    fn note(&self, res: Result<(), BufferError>) {
        if let Err(e) = res {
            self.stats.write_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "buffer write failed");
        }
    }

    /// Encode the pending readings under the current identity and set them aside for the next
    /// commit (before the identity changes).
    fn seal(&mut self) -> Result<(), BufferError> {
        let mut segs = Vec::new();
        for (class, rs) in &self.pending {
            for chunk in rs.chunks(SEGMENT_READINGS) {
                segs.push(codec::encode_segment(*class, &self.id, chunk)?);
            }
        }
        self.clear_pending();
        self.sealed.extend(segs);
        self.sealed_n += self.pending_n;
        self.pending_n = 0;
        Ok(())
    }

    /// Move the readings waiting in the inbox to `pending`; true when there were any.
    /// `disarm`: a group commit follows (the next hand-over wakes the thread again).
    fn take_inbox(&mut self, disarm: bool) -> bool {
        let batches = self.inbox.take(disarm);
        let any = !batches.is_empty();
        for r in batches.into_iter().flatten() {
            let class = self
                .classes
                .get(r.tag as usize)
                .copied()
                .unwrap_or(Class::Normal);
            self.floor.handed(r.tag, r.ts_ms);
            self.pending.entry(class).or_default().push(r);
            self.pending_n += 1;
        }
        any
    }

    /// Empty the pending lists, keeping their capacity: at 100,000 tags each holds ~1 MB
    /// between commits, and growing it again by doubling after every commit cost page faults
    /// (issue 14).
    fn clear_pending(&mut self) {
        self.pending.values_mut().for_each(Vec::clear);
    }

    /// Group commit: everything handed over so far (inbox included).
    fn commit_all(&mut self) -> Result<(), BufferError> {
        self.take_inbox(true);
        self.commit()
    }

    /// Commit pending readings: one segment per class (split at SEGMENT_READINGS), one
    /// transaction. On failure the readings stay pending and are retried at the next commit.
    fn commit(&mut self) -> Result<(), BufferError> {
        if self.pending_n == 0 && self.sealed.is_empty() {
            return Ok(());
        }
        let mut segs = self.sealed.clone();
        for (class, rs) in &self.pending {
            for chunk in rs.chunks(SEGMENT_READINGS) {
                segs.push(codec::encode_segment(*class, &self.id, chunk)?);
            }
        }
        // A crash after this commit loses only readings handed over later: none older than the
        // floor as it stands once these are committed.
        let res = self
            .store
            .append_with_floor(&segs, self.floor.after_commit());
        if res.is_ok() {
            self.floor.committed();
        }
        match res {
            Ok(ev) => {
                self.stats
                    .committed
                    .fetch_add((self.pending_n + self.sealed_n) as u64, Relaxed);
                self.sealed.clear();
                self.sealed_n = 0;
                self.stats.commits.fetch_add(1, Relaxed);
                self.ready.stored();
                self.stats.dropped_full.fetch_add(ev.full, Relaxed);
                self.stats.dropped_age.fetch_add(ev.age, Relaxed);
                self.clear_pending();
                self.pending_n = 0;
                Ok(())
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, pending = self.pending_n, "buffer commit failed; readings kept in memory and retried");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod crash_floor_tests {
    use super::CrashFloor;

    #[test]
    fn the_floor_is_the_oldest_last_committed_reading_of_any_tag() {
        let mut f = CrashFloor::default();
        assert_eq!(f.after_commit(), None);
        // A GPS reading stamped with a fix 400 ms old and a Modbus reading, both committed.
        f.handed(0, 1_000);
        f.handed(1, 1_350);
        assert_eq!(f.after_commit(), Some(1_000));
        f.committed();
        // Later readings of tag 1 only: tag 0's next reading (not handed over yet) can still be
        // stamped just after 1_000, so the floor stays there.
        f.handed(1, 1_450);
        f.handed(1, 1_550);
        assert_eq!(f.after_commit(), Some(1_000));
        f.committed();
        f.handed(0, 1_500);
        assert_eq!(f.after_commit(), Some(1_500), "tag 0 committed up to 1_500");
        // Two hand-overs before one commit: the newest pending reading of each tag counts.
        f.handed(0, 1_600);
        f.handed(1, 1_650);
        assert_eq!(f.after_commit(), Some(1_600));
        f.committed();
        f.reset();
        assert_eq!(f.after_commit(), None);
    }
}
