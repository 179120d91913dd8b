//! # The SQLite segment store: design note
//!
//! ## On-disk format
//! One SQLite database (`buffer.db` in the agent's state directory) in WAL mode. Readings are
//! not stored as rows: the writer group-commits them as **segments**, each a compressed blob of
//! one priority class (instead of ≈ 30 bytes per reading as rows): ≈ 0.5–0.7 bytes per reading
//! in the blobs once merged (≈ 1 byte for the file), ≈ 7–8 bytes in the small segments of the
//! last 30 s before they are merged (see Compaction; benches/README.md, store_forward).
//!
//! ```sql
//! segment(id INTEGER PRIMARY KEY,   -- append order, never reused (AUTOINCREMENT)
//!         class INTEGER,             -- 0 event (never dropped), 1 high, 2 normal, 3 low
//!         first_ts, last_ts,         -- time range of the readings inside (UTC ms)
//!         count INTEGER,             -- readings (or events) inside
//!         bytes INTEGER,             -- blob size
//!         created_ms INTEGER,        -- when committed (age bound)
//!         tags BLOB,                 -- tag ids inside, u32 LE (for gap records on eviction)
//!         config TEXT,               -- hash of the tag map the tag ids refer to
//!         batch_id INTEGER NULL,     -- NULL = unleased; set once at lease, never changed
//!         blob BLOB)
//! gap(id, tags BLOB, from_ms, to_ms, count, reason TEXT, batch_id NULL)  -- known losses to report
//! meta(key TEXT PRIMARY KEY, value INTEGER)  -- next_batch_id, drop counters, quarantines
//! event_cursor(source TEXT PRIMARY KEY, seq, digest, ts_ms, acked)  -- last committed record
//!                                            -- of each event definition (u64 bit-cast)
//! ```
//!
//! ## Invariants
//! 1. A reading the writer reported as committed is in exactly one segment until the cloud
//!    acknowledges the batch holding it, or it is evicted for space/age and counted in a gap row
//!    (reported to the cloud like data). Nothing else deletes segments.
//! 2. A batch id is assigned to a segment in the same transaction that advances `next_batch_id`,
//!    and is never changed afterwards: a re-send (after a timeout, reconnect or restart) carries
//!    the same id, so the cloud de-duplicates it. Batch ids are never reused.
//! 3. Events (class 0) are never evicted for space or age.
//! 4. Only unleased segments are evicted: a leased batch may already be committed in the cloud,
//!    and evicting it would count its readings twice (stored and lost). The buffer can therefore
//!    exceed its byte bound by at most the in-flight window.
//!
//! 5. An event definition's cursor is written in the same transaction as its events (and the
//!    missed-event gaps found with them): after a crash, the cursor names exactly the last
//!    record in the database, so the driver re-reads what was not committed and never commits
//!    a record twice. `acked` is set after the handshake was written to the PLC (a separate,
//!    later transaction: a crash in between only means the handshake is written again).
//!
//! ## Compaction
//! A lightly loaded agent commits small segments (≈ 20 readings per 100 ms), which compress
//! about 10× worse than large ones. Every 30 s the buffer thread merges runs of small unleased
//! segments of one class and tag map into one (`small_runs` + `replace`): in one transaction the
//! old rows are deleted and the merged segment takes the first one's id, so order, counts and
//! the invariants above are unchanged; a crash leaves either the old segments or the new one.

//! ## Ack and delete rules
//! `ack(batch_id)` deletes the segments and gap rows leased under that id, in one transaction.
//! `nack` is not a store operation: the batch keeps its id and stays leased; the uplink re-sends
//! it. On start, `leased()` lists batches leased before a crash so they are re-sent first.
//!
//! ## Identity
//! `meta.epoch` (random, 1..2^53) and `meta.created_ms` are made when the database is created
//! (an existing database without them gets them at its next open: it is new to the cloud's
//! ledger only in that the batches it sent before were epoch 0; `meta.epoch0_below` keeps
//! the batches leased then on epoch 0 when they are re-sent, so the cloud stores them once). Every batch carries the epoch
//! (`Leased::epoch` → `wire::Batch::buffer_epoch`); the cloud's ledger keys on (site, agent,
//! epoch, batch id), so a fresh database, whose batch ids start at 1 again, is never taken for
//! a duplicate. The birth names the buffer (`wire::BufferIdentity`: epoch, created, origin
//! `new` | `existing` | `replaced-corrupt` | `replaced-empty`, a note); the agent ignores (and
//! counts) acks that name another epoch.
//!
//! ## Crash behaviour
//! Every operation is one SQLite transaction. `synchronous=NORMAL` (default) survives a process
//! crash (SIGKILL) with every committed transaction intact; `synchronous=FULL` also survives
//! power loss. A crash between lease and ack leaves the segments leased under their id (re-sent
//! on restart); a crash after ack leaves nothing to re-send. Readings handed to the writer but
//! not yet committed (at most one group-commit interval) die with the process: `meta.clean` is 0
//! while the agent runs and 1 after an orderly close, so on the next start after a crash a gap
//! row (`reason = "unclean-shutdown"`, all tags) tells the cloud which window is missing: from
//! `meta.last_commit_ms` — the last commit's time, or earlier, the oldest timestamp a reading
//! handed over after it can carry (readings are stamped at the poll, GPS readings with the fix
//! time, and arrive later; `writer.rs` `CrashFloor`) — to the restart. Its count is known from
//! the in-flight side file (`buffer.db.inflight`, `inflight.rs`): the run loop `pwrite`s the
//! running total of readings handed to the writer (no fsync: the page cache survives a process
//! crash), the writer adds what it commits to `meta.committed_total` in each commit
//! transaction; lost = handed − committed. A missing, damaged or stale side file (power loss,
//! another epoch, behind the committed total) gives a gap of unknown count (-1 in the `count`
//! column, `GapRow::UNKNOWN_COUNT`, `wire::Gap::uncounted`), never a wrong number.
//!
//! ## Damage
//! The agent never refuses to start, and its uplink never stops, because of its buffer:
//! - a database that fails to open or `quick_check` is salvaged (`salvage.rs`): read-only,
//!   piece by piece, into a fresh database that keeps the epoch and the batch ids when the old
//!   meta is readable; segments whose blob does not decode become counted `buffer-damaged` gaps
//!   (tags, range, count); unreadable rows one gap of unknown count over the known range. The
//!   old file is moved aside (`buffer.db.corrupt-<ms>`), the salvage is logged in one line,
//!   counted in `meta` (`quarantined`, `salvaged_readings`, `damaged_readings`,
//!   `damaged_uncounted`) and told in the birth (`replaced-corrupt`, note);
//! - a zero-byte file is moved aside and logged (`replaced-empty`); a missing database whose
//!   side file remains was deleted (birth note);
//! - a stored record that does not decode (SQLite sees nothing wrong) is moved alone to
//!   `bad_segment` when a lease, a compaction or an export meets it, and reported as a
//!   `buffer-damaged` gap under the same batch id (`quarantine_segment`,
//!   `writer::build_checked`); the batch goes on without it.
//!
//! Tests: crash windows — `crash_after_append_commit_keeps_every_committed_segment`,
//! `crash_between_lease_and_ack_resends_the_same_batch_id`, `crash_after_ack_does_not_resend`,
//! `an_orderly_close_reports_no_gap_and_a_crash_reports_its_window`,
//! `a_crash_window_counts_the_readings_handed_over_and_not_committed` (here);
//! `sigkill_mid_stream_then_restart_resends_the_same_ids_and_reports_the_crash_window` and
//! `sigkill_in_a_long_commit_window_counts_exactly_the_readings_lost` (the count equals the
//! readings lost; stored + counted = polled) and
//! `sigkill_without_the_side_file_reports_a_crash_window_of_unknown_count`
//! (`tests/store_and_forward.rs`). Damage — `salvage_keeps_the_epoch_and_batch_ids_and_reports_an_unreadable_blob_as_a_counted_gap`,
//! `a_truncated_database_is_salvaged_as_far_as_it_can_be_read`,
//! `a_zero_byte_file_is_replaced_and_reported`,
//! `an_interrupted_salvage_is_finished_at_the_next_start`,
//! `an_undecodable_segment_is_quarantined_alone_and_its_batch_goes_on` (here); one end-to-end
//! test per damage case in `tests/store_and_forward.rs` (deleted, zero bytes, garbage,
//! truncated, one flipped record).

use std::ops::Range;
use std::path::{Path, PathBuf};

use flowsquare_wire::messages::BufferIdentity;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::error::BufferError;
use super::inflight::{self, Inflight};
use crate::model::{GapReason, GapRow};

/// Priority class of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Business events (gantry batch records, deliveries): never dropped.
    Event = 0,
    /// High priority readings (custody totalizers).
    High = 1,
    /// Normal readings.
    Normal = 2,
    /// Low priority readings (diagnostics): dropped first.
    Low = 3,
}

impl Class {
    fn from_i64(v: i64) -> Class {
        match v {
            0 => Class::Event,
            1 => Class::High,
            3 => Class::Low,
            _ => Class::Normal,
        }
    }
}

/// How hard commits are pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL + synchronous=NORMAL: committed data survives a process crash.
    #[default]
    CrashSafe,
    /// WAL + synchronous=FULL: committed data also survives power loss.
    PowerLossSafe,
}

/// Size and age bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most blob bytes kept (unleased segments beyond are evicted, lowest class and oldest first).
    pub max_bytes: u64,
    /// Oldest reading kept, ms (0 = no age bound).
    pub max_age_ms: i64,
}

/// A segment to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSegment {
    /// Priority class.
    pub class: Class,
    /// Time range of its readings.
    pub first_ts: i64,
    /// See `first_ts`.
    pub last_ts: i64,
    /// Readings (events) inside.
    pub count: u32,
    /// Tag ids inside.
    pub tags: Vec<u32>,
    /// Hash of the tag map the tag ids refer to (a batch never mixes two).
    pub config: String,
    /// Encoded content.
    pub blob: Vec<u8>,
}

/// A stored segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Row id.
    pub id: i64,
    /// Priority class.
    pub class: Class,
    /// Readings (events) inside.
    pub count: u32,
    /// Encoded content.
    pub blob: Vec<u8>,
}

/// Why readings were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The byte bound was reached.
    BufferFull,
    /// Older than the age bound.
    BufferAge,
}

impl DropReason {
    /// Spelling in gap rows, metrics and the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BufferFull => "buffer-full",
            DropReason::BufferAge => "buffer-age",
        }
    }
}

/// A leased batch: segments and gap rows under one batch id.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    /// The batch id (persisted).
    pub batch_id: u64,
    /// The buffer epoch the id belongs to (the database's identity).
    pub epoch: u64,
    /// Its segments, in append order.
    pub segments: Vec<Segment>,
    /// Its gap rows.
    pub gaps: Vec<GapRow>,
    /// Unleased segments of the lease's range were left behind (it stopped at `max_readings`
    /// or at another tag map's segment); false = the range held no more when this was leased.
    pub more: bool,
}

impl Leased {
    /// Readings and events in the batch.
    pub fn count(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.count)).sum()
    }
}

/// What to lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Most readings in the batch (a single larger segment is still leased whole).
    pub max_readings: u64,
    /// Newest or oldest first.
    pub order: LeaseOrder,
    /// Only segments whose readings reach into this time range (UTC ms).
    pub range: Range<i64>,
    /// Also take the pending gap rows.
    pub with_gaps: bool,
}

/// Which unleased segments a lease takes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOrder {
    /// Newest first (live data ahead of backlog).
    NewestFirst,
    /// Oldest first (backlog drain).
    OldestFirst,
}

/// Figures for `buffer status`, metrics and the heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreFigures {
    /// Segments stored.
    pub segments: u64,
    /// Readings and events stored.
    pub readings: u64,
    /// Blob bytes stored.
    pub bytes: u64,
    /// Readings in leased, unacknowledged batches.
    pub leased_readings: u64,
    /// Oldest reading not yet acknowledged (UTC ms).
    pub oldest_ts: Option<i64>,
    /// Gap rows waiting to be reported.
    pub pending_gaps: u64,
    /// Readings dropped for space since the database was created.
    pub dropped_full: u64,
    /// Readings dropped for age.
    pub dropped_age: u64,
    /// Corrupt databases quarantined on this gateway.
    pub quarantined: u64,
    /// Next batch id.
    pub next_batch_id: u64,
    /// The buffer's identity (random, made when the database was created).
    pub epoch: u64,
    /// Readings recovered from damaged databases into this one.
    pub salvaged_readings: u64,
    /// Readings of damaged databases or records reported as lost (`buffer-damaged` gaps).
    pub damaged_readings: u64,
    /// Parts of damaged databases whose readings could not be counted (rows or whole tables
    /// unreadable), reported as gaps of unknown count.
    pub damaged_uncounted: u64,
    /// Stored records that could not be decoded, moved to `bad_segment`.
    pub bad_segments: u64,
}

/// What eviction removed (for counters and logs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evicted {
    /// Readings evicted for space.
    pub full: u64,
    /// Readings evicted for age.
    pub age: u64,
}

/// The segment store. Not `Sync`: one thread owns it (the buffer actor).
pub struct Store {
    pub(super) conn: Connection,
    path: PathBuf,
    bounds: Bounds,
    pub(super) bytes: u64,
    pub(super) segments: u64,
    pub(super) readings: u64,
    age_checked_ms: i64,
    identity: BufferIdentity,
    /// An epoch was assigned at this open (the database had none).
    epoch_assigned: bool,
    /// Batch ids below this were leased before the database had an epoch: they were sent as
    /// epoch 0 and are re-sent as epoch 0 (`meta.epoch0_below`; 0 = none).
    epoch0_below: u64,
    inflight: Option<std::sync::Arc<Inflight>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS segment(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    class INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    tags BLOB NOT NULL,
    config TEXT NOT NULL,
    batch_id INTEGER,
    blob BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS segment_batch ON segment(batch_id);
CREATE INDEX IF NOT EXISTS segment_evict ON segment(class, id) WHERE batch_id IS NULL;
CREATE INDEX IF NOT EXISTS segment_unleased_ts ON segment(last_ts) WHERE batch_id IS NULL;
CREATE INDEX IF NOT EXISTS segment_first ON segment(first_ts);
CREATE TABLE IF NOT EXISTS gap(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tags BLOB NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    batch_id INTEGER);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bad_segment(
    id INTEGER PRIMARY KEY,
    class INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    tags BLOB NOT NULL,
    config TEXT NOT NULL,
    batch_id INTEGER,
    blob BLOB NOT NULL,
    reason TEXT NOT NULL,
    moved_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS event_cursor(
    source TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    digest INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    acked INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_batch_id', 1), ('dropped_full', 0), ('dropped_age', 0), ('quarantined', 0),
    ('last_commit_ms', 0), ('clean', 1), ('committed_total', 0), ('salvaged_readings', 0),
    ('damaged_readings', 0), ('damaged_uncounted', 0), ('bad_segments', 0);
";

pub(super) fn tags_blob(tags: &[u32]) -> Vec<u8> {
    tags.iter().flat_map(|t| t.to_le_bytes()).collect()
}

/// A gap count in SQLite: -1 for an unknown count.
pub(super) fn count_sql(count: u64) -> i64 {
    if count == GapRow::UNKNOWN_COUNT {
        -1
    } else {
        i64::try_from(count).unwrap_or(i64::MAX)
    }
}

pub(super) fn count_from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(GapRow::UNKNOWN_COUNT)
}

pub(super) fn tags_from_blob(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn now_ms() -> i64 {
    crate::model::now_ms()
}

/// A new buffer epoch: random in 1..2^53 (exact in JSON and JavaScript).
fn new_epoch() -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(1..(1u64 << 53))
}

/// What was at the database path before opening.
enum Prior {
    Missing,
    /// A zero-byte file (and no write-ahead log with content).
    Empty,
    Present,
}

fn probe(path: &Path) -> Prior {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len());
    match len(path) {
        Err(_) => Prior::Missing,
        Ok(0) if len(Path::new(&format!("{}-wal", path.display()))).unwrap_or(0) == 0 => {
            Prior::Empty
        }
        Ok(_) => Prior::Present,
    }
}

/// The gap of a crash: from `last` (where the window of readings a crash can lose starts, see
/// `writer.rs` `CrashFloor`) to `now`, counted when the in-flight side file can tell.
pub(super) fn crash_gap(
    last: i64,
    now: i64,
    side: Option<(u64, u64)>,
    epoch: u64,
    committed: u64,
) -> GapRow {
    let range = last..now.max(last);
    match inflight::lost(side, epoch, committed) {
        Some(n) => GapRow {
            tags: Vec::new(),
            range,
            count: n,
            reason: crate::model::GapReason::UncleanShutdown,
        },
        None => GapRow::uncounted(Vec::new(), range, crate::model::GapReason::UncleanShutdown),
    }
}

/// Make a buffer file 0600 (the readings are the site's data; nobody else needs them).
fn restrict(path: &Path) -> Result<(), BufferError> {
    flowsquare_service::private::restrict_file(path).map_err(|e| BufferError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

impl Store {
    /// Open (or create) the store at `path`. The agent never refuses to start because of its
    /// buffer: a damaged database is salvaged into a fresh one (what can be read is kept, what
    /// cannot is reported as gaps) and moved aside; a zero-byte file is moved aside and replaced.
    /// The returned path says where a replaced file went; [`Store::identity`] says what happened.
    pub fn open(
        path: &Path,
        durability: Durability,
        bounds: Bounds,
    ) -> Result<(Store, Option<PathBuf>), BufferError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                flowsquare_service::private::create_dir_all(dir).map_err(|e| BufferError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                })?;
            }
        }
        let side_path = inflight::side_path(path);
        let side = inflight::read(&side_path);
        let tmp = super::salvage::tmp_path(path);
        super::salvage::finish_interrupted(path, &tmp)?;
        let (mut s, moved) = match probe(path) {
            Prior::Missing => {
                let mut s = Self::try_open(path, durability, bounds, side)?;
                s.identity.origin = "new".into();
                if side_path.exists() {
                    let note = "no buffer database was found, but the in-flight counter of an earlier one was: the earlier database was deleted (its unsent readings, if any, are lost; count unknown)";
                    tracing::error!(path = %path.display(), "{note}");
                    s.identity.note = Some(note.into());
                }
                (s, None)
            }
            Prior::Empty => {
                let moved = quarantine(path)?;
                let note = "the buffer database file was empty (zero bytes): moved aside, a fresh one started (whatever it held is lost; count unknown)";
                tracing::error!(path = %path.display(), moved_to = %moved.display(), "{note}");
                let mut s = Self::try_open(path, durability, bounds, None)?;
                s.bump("quarantined", 1)?;
                s.identity.origin = "replaced-empty".into();
                s.identity.note = Some(note.into());
                (s, Some(moved))
            }
            Prior::Present => match Self::try_open(path, durability, bounds, side) {
                Ok(mut s) => {
                    s.identity.origin = "existing".into();
                    if s.epoch_assigned {
                        s.identity.note = Some(format!(
                            "an existing buffer database without an identity was given epoch {}; the batches it sent before were epoch 0",
                            s.identity.epoch
                        ));
                    }
                    (s, None)
                }
                Err(e) if e.is_corruption() => {
                    let report = super::salvage::salvage(path, &tmp, durability, bounds, side)?;
                    let moved = quarantine(path)?;
                    std::fs::rename(&tmp, path).map_err(|e| BufferError::Io {
                        path: tmp.clone(),
                        source: e,
                    })?;
                    tracing::error!(path = %path.display(), moved_to = %moved.display(), error = %e,
                        salvaged_segments = report.salvaged_segments, salvaged_readings = report.salvaged_readings,
                        damaged_readings = report.damaged_readings, unreadable_rows = report.unreadable_rows,
                        "buffer database is corrupt: moved aside, starting a fresh one; {}", report.note());
                    let mut s = Self::try_open(path, durability, bounds, None)?;
                    s.identity.origin = "replaced-corrupt".into();
                    s.identity.note = Some(report.note());
                    (s, Some(moved))
                }
                Err(e) => return Err(e),
            },
        };
        let committed = s.meta("committed_total")? as u64;
        match Inflight::create(&side_path, s.identity.epoch, committed) {
            Ok(f) => s.inflight = Some(std::sync::Arc::new(f)),
            Err(e) => tracing::error!(path = %side_path.display(), error = %e,
                "cannot write the buffer's in-flight counter; a crash window will be reported with an unknown count"),
        }
        Ok((s, moved))
    }

    /// The epoch batch `batch_id` is sent under (0 for batches leased before the database had
    /// an epoch).
    fn epoch_of(&self, batch_id: u64) -> u64 {
        if batch_id < self.epoch0_below {
            0
        } else {
            self.identity.epoch
        }
    }

    /// The buffer's identity: epoch, creation time, and how this open found it.
    pub fn identity(&self) -> &BufferIdentity {
        &self.identity
    }

    /// The in-flight counter the run loop writes (see `inflight.rs`).
    pub fn inflight(&self) -> Option<std::sync::Arc<Inflight>> {
        self.inflight.clone()
    }

    pub(super) fn try_open(
        path: &Path,
        durability: Durability,
        bounds: Bounds,
        side: Option<(u64, u64)>,
    ) -> Result<Store, BufferError> {
        let conn = Connection::open(path)?;
        // 0600 before the first write: SQLite gives the -wal and -shm files the database's
        // mode (both are made 0600 again below, for files left by an older version).
        restrict(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every repeated statement goes through `prepare_cached` (commit, lease, ack, eviction,
        // compaction: about 40 distinct texts); rusqlite's default cache holds 16.
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // 512 KiB of page cache instead of SQLite's default 2 MiB: the steady work (append a
        // segment, lease it, delete it) touches a few dozen pages, and a long backlog is read
        // once, in order, through the OS page cache anyway (issue 14: resident memory).
        conn.pragma_update(None, "cache_size", -512)?;
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::CrashSafe => "NORMAL",
                Durability::PowerLossSafe => "FULL",
            },
        )?;
        let check: String = conn
            .prepare_cached("PRAGMA quick_check")?
            .query_row([], |r| r.get(0))?;
        if check != "ok" {
            return Err(BufferError::Corrupt(check));
        }
        conn.execute_batch(SCHEMA)?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            restrict(Path::new(&p))?;
        }
        // Running totals, kept in memory from here on (figures() must not scan the table).
        let (segments, readings, bytes): (i64, i64, i64) = conn
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0) FROM segment",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let mut s = Store {
            conn,
            path: path.to_path_buf(),
            bounds,
            bytes: bytes as u64,
            segments: segments as u64,
            readings: readings as u64,
            age_checked_ms: 0,
            identity: BufferIdentity {
                epoch: 0,
                created_ms: 0,
                origin: "existing".into(),
                note: None,
            },
            epoch_assigned: false,
            epoch0_below: 0,
            inflight: None,
        };
        s.ensure_epoch()?;
        let (clean, last) = (s.meta("clean")?, s.meta("last_commit_ms")?);
        if clean == 0 && last > 0 {
            let committed = s.meta("committed_total")? as u64;
            let gap = crash_gap(last, now_ms(), side, s.identity.epoch, committed);
            tracing::warn!(
                since_ms = last,
                lost = gap.known_count().map_or("unknown".to_string(), |n| n.to_string()),
                "the agent did not stop cleanly: readings handed over after the last commit are missing; reporting the window as a gap"
            );
            s.add_gap(&gap)?;
        }
        s.conn
            .prepare_cached("UPDATE meta SET value = 0 WHERE key = 'clean'")?
            .execute([])?;
        Ok(s)
    }

    /// Read the epoch from `meta`, or make one (a new database, or one from before epochs).
    fn ensure_epoch(&mut self) -> Result<(), BufferError> {
        let epoch = self.meta("epoch")?;
        if epoch > 0 {
            self.identity.epoch = epoch as u64;
            self.identity.created_ms = self.meta("created_ms")?;
            self.epoch0_below = self.meta("epoch0_below")?.max(0) as u64;
            return Ok(());
        }
        let epoch = new_epoch();
        let now = now_ms();
        // Batches leased before (an older agent's database) were sent as epoch 0: their
        // re-sends keep it, so the cloud stores them once.
        let below = self.meta("next_batch_id")?.max(1);
        self.conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES ('epoch', ?1), ('created_ms', ?2), ('epoch0_below', ?3)")?.execute(
            params![epoch as i64, now, below],
        )?;
        self.epoch0_below = below as u64;
        self.identity.epoch = epoch;
        self.identity.created_ms = now;
        self.epoch_assigned = true;
        Ok(())
    }

    /// Take over an older database's identity (salvage: the same logical buffer).
    pub(super) fn adopt_identity(
        &mut self,
        epoch: u64,
        created_ms: i64,
        next_batch_id: i64,
    ) -> Result<(), BufferError> {
        self.conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES ('epoch', ?1), ('created_ms', ?2), ('next_batch_id', ?3)")?.execute(
            params![epoch as i64, created_ms, next_batch_id],
        )?;
        self.identity.epoch = epoch;
        self.identity.created_ms = created_ms;
        Ok(())
    }

    /// Figures of the database at `path`, opened read-only (safe while the agent runs; changes
    /// nothing, so no crash bookkeeping happens).
    pub fn inspect(path: &Path) -> Result<StoreFigures, BufferError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let s = Store {
            conn,
            path: path.to_path_buf(),
            bounds: Bounds {
                max_bytes: u64::MAX,
                max_age_ms: 0,
            },
            bytes: 0,
            segments: 0,
            readings: 0,
            age_checked_ms: 0,
            identity: BufferIdentity {
                epoch: 0,
                created_ms: 0,
                origin: "existing".into(),
                note: None,
            },
            epoch_assigned: false,
            epoch0_below: 0,
            inflight: None,
        };
        s.figures_scan()
    }

    /// Orderly close: everything handed over is committed; the next start is not a crash.
    pub fn close(self) -> Result<(), BufferError> {
        self.conn
            .prepare_cached("UPDATE meta SET value = 1 WHERE key = 'clean'")?
            .execute([])?;
        self.conn.close().map_err(|(_, e)| BufferError::Sqlite(e))
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn meta(&self, key: &str) -> Result<i64, BufferError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    pub(super) fn bump(&mut self, key: &str, by: i64) -> Result<(), BufferError> {
        self.conn.prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = value + ?2")?.execute(
            params![key, by],
        )?;
        Ok(())
    }

    /// Append segments in one transaction, then enforce the bounds.
    pub fn append(&mut self, segs: &[NewSegment]) -> Result<Evicted, BufferError> {
        self.append_with_floor(segs, None)
    }

    /// [`Store::append`], recording `floor` (the oldest timestamp a reading handed over after
    /// this commit can have; see `writer.rs` `CrashFloor`) as where the window of a crash
    /// starts; the commit time when it is later or absent.
    pub fn append_with_floor(
        &mut self,
        segs: &[NewSegment],
        floor: Option<i64>,
    ) -> Result<Evicted, BufferError> {
        let now = now_ms();
        let since = floor.map_or(now, |f| f.min(now));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut added = 0u64;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO segment(class, first_ts, last_ts, count, bytes, created_ms, tags, config, blob)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for s in segs {
                st.execute(params![
                    s.class as i64,
                    s.first_ts,
                    s.last_ts,
                    s.count,
                    s.blob.len() as i64,
                    now,
                    tags_blob(&s.tags),
                    s.config,
                    s.blob
                ])?;
                added += s.blob.len() as u64;
            }
        }
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'last_commit_ms'")?
            .execute([since])?;
        // The committed total, in the counter space of the in-flight side file (see
        // `inflight.rs`): after a crash, handed − committed readings were lost.
        let n: i64 = segs.iter().map(|s| i64::from(s.count)).sum();
        tx.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = 'committed_total'")?
            .execute([n])?;
        tx.commit()?;
        self.bytes += added;
        self.segments += segs.len() as u64;
        self.readings += segs.iter().map(|s| u64::from(s.count)).sum::<u64>();
        self.enforce_bounds(now)
    }

    /// Evict for age and space (unleased, non-event segments only), recording gap rows.
    pub fn enforce_bounds(&mut self, now: i64) -> Result<Evicted, BufferError> {
        let mut ev = Evicted::default();
        // The age bound is checked at most every 10 s (it is measured in days; each check is an
        // index range scan that finds nothing most of the time).
        if self.bounds.max_age_ms > 0 && now - self.age_checked_ms >= 10_000 {
            self.age_checked_ms = now;
            let cutoff = now - self.bounds.max_age_ms;
            ev.age = self.evict_where("last_ts < ?1", cutoff, DropReason::BufferAge, u64::MAX)?;
        }
        while self.bytes > self.bounds.max_bytes {
            let n = self.evict_where(
                "1 = ?1",
                1,
                DropReason::BufferFull,
                self.bytes - self.bounds.max_bytes,
            )?;
            if n == 0 {
                break; // only leased or event segments left
            }
            ev.full += n;
        }
        Ok(ev)
    }

    /// Evict unleased, non-event segments matching `cond` (lowest class first, then oldest) until
    /// `want_bytes` are freed; returns readings evicted.
    fn evict_where(
        &mut self,
        cond: &str,
        arg: i64,
        reason: DropReason,
        want_bytes: u64,
    ) -> Result<u64, BufferError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut freed = 0u64;
        let mut readings = 0u64;
        let mut segments = 0u64;
        let victims: Vec<(i64, i64, i64, i64, i64, Vec<u8>)> = {
            let sql = format!(
                "SELECT id, first_ts, last_ts, count, bytes, tags FROM segment
                 WHERE batch_id IS NULL AND class > 0 AND {cond} ORDER BY class DESC, id ASC LIMIT 64"
            );
            let mut st = tx.prepare(&sql)?;
            let rows = st.query_map([arg], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, first, last, count, bytes, tags) in victims {
            if freed >= want_bytes {
                break;
            }
            tx.prepare_cached("DELETE FROM segment WHERE id = ?1")?
                .execute([id])?;
            tx.prepare_cached(
                "INSERT INTO gap(tags, from_ms, to_ms, count, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![tags, first, last, count, reason.as_str()])?;
            freed += bytes as u64;
            readings += count as u64;
            segments += 1;
        }
        let key = match reason {
            DropReason::BufferFull => "dropped_full",
            DropReason::BufferAge => "dropped_age",
        };
        tx.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = ?2")?
            .execute(params![readings as i64, key])?;
        tx.commit()?;
        self.bytes = self.bytes.saturating_sub(freed);
        self.segments = self.segments.saturating_sub(segments);
        self.readings = self.readings.saturating_sub(readings);
        if readings > 0 {
            tracing::warn!(
                readings,
                reason = reason.as_str(),
                "buffer bound reached: oldest low-priority readings dropped, gap recorded"
            );
        }
        Ok(readings)
    }

    /// Runs of small unleased segments worth merging: per class and tag map, in append order,
    /// each under `small` readings, up to `target` readings per run; only runs of two or more
    /// segments are returned (at most `max_runs`). A merged segment takes the place of its first
    /// segment, so a class's readings keep their order.
    pub fn small_runs(
        &self,
        small: u32,
        target: u32,
        max_runs: usize,
    ) -> Result<Vec<Vec<Segment>>, BufferError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, class, count, blob, config FROM segment WHERE batch_id IS NULL AND count < ?1 ORDER BY id LIMIT 200000",
        )?;
        let mut rows = st.query([small])?;
        let mut open: std::collections::HashMap<(i64, String), (Vec<Segment>, u32)> =
            std::collections::HashMap::new();
        let mut runs: Vec<Vec<Segment>> = Vec::new();
        while let Some(r) = rows.next()? {
            if runs.len() >= max_runs {
                break;
            }
            let count: u32 = r.get(2)?;
            let class: i64 = r.get(1)?;
            let key = (class, r.get::<_, String>(4)?);
            let entry = open.entry(key).or_default();
            if entry.1 + count > target {
                let done = std::mem::take(&mut entry.0);
                entry.1 = 0;
                if done.len() >= 2 {
                    runs.push(done);
                }
            }
            entry.1 += count;
            entry.0.push(Segment {
                id: r.get(0)?,
                class: Class::from_i64(class),
                count,
                blob: r.get(3)?,
            });
        }
        runs.extend(open.into_values().map(|(v, _)| v).filter(|v| v.len() >= 2));
        runs.truncate(max_runs);
        Ok(runs)
    }

    /// Replace unleased segments `ids` by one merged segment that takes the first id's place in
    /// the append order, in one transaction (a crash leaves either the old segments or the new
    /// one). Segments leased meanwhile are left alone: then nothing is replaced (`false`).
    pub fn replace(&mut self, ids: &[i64], merged: &NewSegment) -> Result<bool, BufferError> {
        let Some(&first) = ids.iter().min() else {
            return Ok(false);
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut old_bytes = 0i64;
        let mut old_count = 0i64;
        let mut created = i64::MAX;
        for id in ids {
            let row: Option<(i64, i64, i64)> = tx.prepare_cached("SELECT bytes, count, created_ms FROM segment WHERE id = ?1 AND batch_id IS NULL")?.query_row(
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((b, c, t)) = row else {
                return Ok(false);
            };
            old_bytes += b;
            old_count += c;
            created = created.min(t);
        }
        if old_count != i64::from(merged.count) {
            return Err(BufferError::Segment {
                id: first,
                reason: format!(
                    "merge would change the reading count ({old_count} -> {})",
                    merged.count
                ),
            });
        }
        for id in ids {
            tx.prepare_cached("DELETE FROM segment WHERE id = ?1")?
                .execute([id])?;
        }
        tx.prepare_cached("INSERT INTO segment(id, class, first_ts, last_ts, count, bytes, created_ms, tags, config, blob)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")?.execute(
            params![
                first,
                merged.class as i64,
                merged.first_ts,
                merged.last_ts,
                merged.count,
                merged.blob.len() as i64,
                created,
                tags_blob(&merged.tags),
                merged.config,
                merged.blob
            ],
        )?;
        tx.commit()?;
        self.bytes = (self.bytes + merged.blob.len() as u64).saturating_sub(old_bytes as u64);
        self.segments = self.segments.saturating_sub(ids.len() as u64 - 1);
        Ok(true)
    }

    /// Append business events with the gaps found with them and the new cursors of their
    /// definitions, in one transaction.
    pub fn append_events(
        &mut self,
        seg: Option<&NewSegment>,
        gaps: &[GapRow],
        cursors: &[(String, crate::model::Cursor)],
    ) -> Result<(), BufferError> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(s) = seg {
            tx.prepare_cached("INSERT INTO segment(class, first_ts, last_ts, count, bytes, created_ms, tags, config, blob)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?.execute(
                params![
                    s.class as i64,
                    s.first_ts,
                    s.last_ts,
                    s.count,
                    s.blob.len() as i64,
                    now,
                    tags_blob(&s.tags),
                    s.config,
                    s.blob
                ],
            )?;
        }
        for gap in gaps {
            tx.prepare_cached(
                "INSERT INTO gap(tags, from_ms, to_ms, count, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                tags_blob(&gap.tags),
                gap.range.start,
                gap.range.end,
                count_sql(gap.count),
                gap.reason.as_str()
            ])?;
        }
        for (source, c) in cursors {
            tx.prepare_cached("INSERT INTO event_cursor(source, seq, digest, ts_ms, acked) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(source) DO UPDATE SET seq = ?2, digest = ?3, ts_ms = ?4, acked = ?5")?.execute(
                params![source, c.seq as i64, c.digest as i64, c.ts_ms, c.acked],
            )?;
        }
        tx.commit()?;
        if let Some(s) = seg {
            self.bytes += s.blob.len() as u64;
            self.segments += 1;
            self.readings += u64::from(s.count);
        }
        Ok(())
    }

    /// The handshake of `source`'s record `seq` was written.
    pub fn mark_acked(&mut self, source: &str, seq: u64) -> Result<(), BufferError> {
        self.conn
            .prepare_cached("UPDATE event_cursor SET acked = 1 WHERE source = ?1 AND seq = ?2")?
            .execute(params![source, seq as i64])?;
        Ok(())
    }

    /// The cursor of every event definition that committed a record.
    pub fn event_cursors(&self) -> Result<Vec<(String, crate::model::Cursor)>, BufferError> {
        let mut st = self.conn.prepare(
            "SELECT source, seq, digest, ts_ms, acked FROM event_cursor ORDER BY source",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                crate::model::Cursor {
                    seq: r.get::<_, i64>(1)? as u64,
                    digest: r.get::<_, i64>(2)? as u64,
                    ts_ms: r.get(3)?,
                    acked: r.get(4)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Record a known loss (e.g. a skipped event sequence number) to report to the cloud.
    pub fn add_gap(&mut self, gap: &GapRow) -> Result<(), BufferError> {
        self.conn
            .prepare_cached(
                "INSERT INTO gap(tags, from_ms, to_ms, count, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                tags_blob(&gap.tags),
                gap.range.start,
                gap.range.end,
                count_sql(gap.count),
                gap.reason.as_str()
            ])?;
        Ok(())
    }

    /// Lease up to `req.max_readings` (at least one segment) of unleased segments whose readings
    /// reach into `req.range`, plus pending gap rows when `req.with_gaps`, under a new persisted
    /// batch id. `None` when nothing matches.
    pub fn lease(&mut self, req: &LeaseRequest) -> Result<Option<Leased>, BufferError> {
        self.lease_where(
            req.max_readings,
            req.order,
            Some(req.range.clone()),
            req.with_gaps,
        )
    }

    fn lease_where(
        &mut self,
        max_readings: u64,
        order: LeaseOrder,
        range: Option<Range<i64>>,
        with_gaps: bool,
    ) -> Result<Option<Leased>, BufferError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let dir = match order {
            LeaseOrder::NewestFirst => "DESC",
            LeaseOrder::OldestFirst => "ASC",
        };
        let (lo, hi) = range
            .map(|r| (r.start, r.end))
            .unwrap_or((i64::MIN, i64::MAX));
        let mut segments = Vec::new();
        let mut more = false;
        {
            let sql = format!(
                "SELECT id, class, count, blob, config FROM segment WHERE batch_id IS NULL AND last_ts >= ?1 AND first_ts <= ?2
                 ORDER BY id {dir}"
            );
            let mut st = tx.prepare_cached(&sql)?;
            let mut rows = st.query(params![lo, hi])?;
            let mut total = 0u64;
            let mut config: Option<String> = None;
            while let Some(r) = rows.next()? {
                let count: u32 = r.get(2)?;
                let seg_config: String = r.get(4)?;
                if !segments.is_empty() && total + u64::from(count) > max_readings {
                    more = true;
                    break;
                }
                // A batch refers to one tag map: stop at a segment written under another one.
                if config.as_ref().is_some_and(|c| *c != seg_config) {
                    more = true;
                    break;
                }
                config = Some(seg_config);
                total += u64::from(count);
                segments.push(Segment {
                    id: r.get(0)?,
                    class: Class::from_i64(r.get(1)?),
                    count,
                    blob: r.get(3)?,
                });
            }
        }
        let pending_gaps: i64 = if with_gaps {
            tx.prepare_cached("SELECT COUNT(*) FROM gap WHERE batch_id IS NULL")?
                .query_row([], |r| r.get(0))?
        } else {
            0
        };
        if segments.is_empty() && pending_gaps == 0 {
            return Ok(None);
        }
        let batch_id: i64 = tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'next_batch_id'")?
            .query_row([], |r| r.get(0))?;
        tx.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'next_batch_id'")?
            .execute([])?;
        {
            let mut st = tx.prepare_cached("UPDATE segment SET batch_id = ?1 WHERE id = ?2")?;
            for s in &segments {
                st.execute(params![batch_id, s.id])?;
            }
        }
        let gaps = if pending_gaps > 0 {
            tx.prepare_cached("UPDATE gap SET batch_id = ?1 WHERE batch_id IS NULL")?
                .execute([batch_id])?;
            Self::gaps_of(&tx, batch_id)?
        } else {
            Vec::new()
        };
        tx.commit()?;
        segments.sort_by_key(|s| s.id);
        Ok(Some(Leased {
            batch_id: batch_id as u64,
            epoch: self.epoch_of(batch_id as u64),
            segments,
            gaps,
            more,
        }))
    }

    fn gaps_of(conn: &Connection, batch_id: i64) -> Result<Vec<GapRow>, BufferError> {
        let mut st = conn.prepare_cached(
            "SELECT tags, from_ms, to_ms, count, reason FROM gap WHERE batch_id = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([batch_id], |r| {
            let tags: Vec<u8> = r.get(0)?;
            Ok(GapRow {
                tags: tags_from_blob(&tags),
                range: r.get(1)?..r.get(2)?,
                count: count_from_sql(r.get(3)?),
                reason: GapReason::parse(&r.get::<_, String>(4)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Batches leased but not acknowledged (after a restart: re-send these first, same ids).
    pub fn leased(&self) -> Result<Vec<Leased>, BufferError> {
        let mut ids: Vec<i64> = {
            let mut st = self.conn.prepare(
                "SELECT DISTINCT batch_id FROM segment WHERE batch_id IS NOT NULL
                 UNION SELECT DISTINCT batch_id FROM gap WHERE batch_id IS NOT NULL",
            )?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        ids.sort_unstable();
        let mut out = Vec::new();
        for id in ids {
            let mut st = self.conn.prepare_cached(
                "SELECT id, class, count, blob FROM segment WHERE batch_id = ?1 ORDER BY id",
            )?;
            let segments = st
                .query_map([id], |r| {
                    Ok(Segment {
                        id: r.get(0)?,
                        class: Class::from_i64(r.get(1)?),
                        count: r.get(2)?,
                        blob: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            out.push(Leased {
                batch_id: id as u64,
                epoch: self.epoch_of(id as u64),
                segments,
                gaps: Self::gaps_of(&self.conn, id)?,
                // Unknown here: the uplink asks again.
                more: true,
            });
        }
        Ok(out)
    }

    /// One leased batch, as it stands now (after [`Store::quarantine_segment`] changed it).
    pub fn leased_batch(&self, batch_id: u64) -> Result<Leased, BufferError> {
        let id = batch_id as i64;
        let mut st = self.conn.prepare_cached(
            "SELECT id, class, count, blob FROM segment WHERE batch_id = ?1 ORDER BY id",
        )?;
        let segments = st
            .query_map([id], |r| {
                Ok(Segment {
                    id: r.get(0)?,
                    class: Class::from_i64(r.get(1)?),
                    count: r.get(2)?,
                    blob: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Leased {
            batch_id,
            epoch: self.epoch_of(batch_id),
            segments,
            gaps: Self::gaps_of(&self.conn, id)?,
            // Unknown here: the uplink asks again.
            more: true,
        })
    }

    /// A stored segment cannot be decoded: move it alone to `bad_segment` (kept for the
    /// post-mortem) and report its readings as a `buffer-damaged` gap with its tags, time range
    /// and count, under the batch id it was leased under (if any), in one transaction. The
    /// batch goes on without it. Returns the readings reported lost (0 if the row is gone).
    pub fn quarantine_segment(&mut self, id: i64, why: &str) -> Result<u64, BufferError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        type Row = (i64, i64, i64, i64, Vec<u8>, Option<i64>);
        let row: Option<Row> = tx
            .prepare_cached(
                "SELECT first_ts, last_ts, count, bytes, tags, batch_id FROM segment WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()?;
        let Some((first, last, count, bytes, tags, batch_id)) = row else {
            return Ok(0);
        };
        tx.prepare_cached("INSERT OR REPLACE INTO bad_segment SELECT id, class, first_ts, last_ts, count, bytes, created_ms, tags, config, batch_id, blob, ?2, ?3 FROM segment WHERE id = ?1")?.execute(
            params![id, why, now_ms()],
        )?;
        tx.prepare_cached("DELETE FROM segment WHERE id = ?1")?
            .execute([id])?;
        tx.prepare_cached("INSERT INTO gap(tags, from_ms, to_ms, count, reason, batch_id) VALUES (?1, ?2, ?3, ?4, 'buffer-damaged', ?5)")?.execute(
            params![tags, first, last, count, batch_id],
        )?;
        tx.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = 'damaged_readings'")?
            .execute([count])?;
        tx.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'bad_segments'")?
            .execute([])?;
        tx.commit()?;
        self.bytes = self.bytes.saturating_sub(bytes as u64);
        self.segments = self.segments.saturating_sub(1);
        self.readings = self.readings.saturating_sub(count as u64);
        tracing::error!(segment = id, readings = count, from_ms = first, to_ms = last, batch_id, reason = why,
            "a stored record cannot be read: moved to bad_segment and reported as a buffer-damaged gap; the uplink goes on");
        Ok(count as u64)
    }

    /// The cloud committed `batch_id`: delete what was leased under it. Returns the readings
    /// deleted (0 for an unknown or already acknowledged id: acks are idempotent).
    pub fn ack(&mut self, batch_id: u64) -> Result<u64, BufferError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (n, count, bytes): (i64, i64, i64) = tx.prepare_cached("SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0) FROM segment WHERE batch_id = ?1")?.query_row(
            [batch_id as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        tx.prepare_cached("DELETE FROM segment WHERE batch_id = ?1")?
            .execute([batch_id as i64])?;
        tx.prepare_cached("DELETE FROM gap WHERE batch_id = ?1")?
            .execute([batch_id as i64])?;
        tx.commit()?;
        self.bytes = self.bytes.saturating_sub(bytes as u64);
        self.segments = self.segments.saturating_sub(n as u64);
        self.readings = self.readings.saturating_sub(count as u64);
        Ok(count as u64)
    }

    /// Current figures, from the running totals and indexed queries (cheap at any size).
    pub fn figures(&self) -> Result<StoreFigures, BufferError> {
        let oldest: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(first_ts) FROM segment")?
            .query_row([], |r| r.get(0))?;
        self.figures_with(self.segments, self.readings, self.bytes, oldest)
    }

    /// Figures computed by scanning the table (for read-only inspection).
    fn figures_scan(&self) -> Result<StoreFigures, BufferError> {
        let (segments, readings, bytes, oldest): (i64, i64, i64, Option<i64>) = self.conn.prepare_cached("SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0), MIN(first_ts) FROM segment")?.query_row(
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        self.figures_with(segments as u64, readings as u64, bytes as u64, oldest)
    }

    fn figures_with(
        &self,
        segments: u64,
        readings: u64,
        bytes: u64,
        oldest: Option<i64>,
    ) -> Result<StoreFigures, BufferError> {
        let leased: i64 = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(count), 0) FROM segment WHERE batch_id IS NOT NULL",
            )?
            .query_row([], |r| r.get(0))?;
        let gaps: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM gap WHERE batch_id IS NULL")?
            .query_row([], |r| r.get(0))?;
        Ok(StoreFigures {
            segments,
            readings,
            bytes,
            leased_readings: leased as u64,
            oldest_ts: oldest,
            pending_gaps: gaps as u64,
            dropped_full: self.meta("dropped_full")? as u64,
            dropped_age: self.meta("dropped_age")? as u64,
            quarantined: self.meta("quarantined")? as u64,
            next_batch_id: self.meta("next_batch_id")? as u64,
            epoch: self.meta("epoch")? as u64,
            salvaged_readings: self.meta("salvaged_readings")? as u64,
            damaged_readings: self.meta("damaged_readings")? as u64,
            damaged_uncounted: self.meta("damaged_uncounted")? as u64,
            bad_segments: self.meta("bad_segments")? as u64,
        })
    }
}

/// Move a corrupt database (and its WAL/SHM files) aside; returns the new path.
fn quarantine(path: &Path) -> Result<PathBuf, BufferError> {
    let stamp = now_ms();
    let moved = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    std::fs::rename(path, &moved).map_err(|e| BufferError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    for ext in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{ext}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, format!("{}{ext}", moved.display()));
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(class: Class, ts: i64, count: u32, bytes: usize) -> NewSegment {
        NewSegment {
            class,
            first_ts: ts,
            last_ts: ts + 999,
            count,
            tags: vec![1, 2],
            config: "c1".into(),
            blob: vec![7u8; bytes],
        }
    }

    fn open(dir: &Path, max_bytes: u64) -> Store {
        Store::open(
            &dir.join("buffer.db"),
            Durability::CrashSafe,
            Bounds {
                max_bytes,
                max_age_ms: 0,
            },
        )
        .expect("open")
        .0
    }

    fn all(max: u64) -> LeaseRequest {
        LeaseRequest {
            max_readings: max,
            order: LeaseOrder::OldestFirst,
            range: i64::MIN..i64::MAX,
            with_gaps: true,
        }
    }

    #[test]
    fn event_cursors_are_committed_with_their_events_and_survive_a_reopen() {
        use crate::model::Cursor;
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        assert!(s.event_cursors().expect("cursors").is_empty());
        let c = Cursor {
            seq: 10_002,
            digest: 42,
            ts_ms: 5,
            acked: false,
        };
        let gap = GapRow {
            tags: vec![],
            range: 1..5,
            count: 1,
            reason: crate::model::GapReason::MissedEvent,
        };
        s.append_events(
            Some(&seg(Class::Event, 0, 1, 10)),
            &[gap],
            &[("bay1-batch".into(), c)],
        )
        .expect("append");
        s.mark_acked("bay1-batch", 10_001)
            .expect("ack of an older seq");
        assert_eq!(
            s.event_cursors().expect("cursors"),
            vec![("bay1-batch".to_string(), c)],
            "acked only for the cursor's own seq"
        );
        s.mark_acked("bay1-batch", 10_002).expect("ack");
        drop(s);
        let s = open(d.path(), u64::MAX);
        assert_eq!(
            s.event_cursors().expect("cursors"),
            vec![("bay1-batch".to_string(), Cursor { acked: true, ..c })]
        );
        let f = s.figures().expect("figures");
        assert_eq!((f.readings, f.pending_gaps), (1, 1));
    }

    #[test]
    fn append_lease_ack_removes_exactly_the_batch() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        s.append(&[
            seg(Class::Normal, 0, 10, 50),
            seg(Class::Normal, 1000, 10, 50),
            seg(Class::Normal, 2000, 10, 50),
        ])
        .expect("append");
        let l = s.lease(&all(20)).expect("lease").expect("some");
        assert_eq!(l.count(), 20);
        assert_eq!(l.batch_id, 1);
        let l2 = s.lease(&all(20)).expect("lease").expect("some");
        assert_eq!((l2.batch_id, l2.count()), (2, 10));
        assert!(
            s.lease(&all(20)).expect("lease").is_none(),
            "everything leased"
        );
        assert_eq!(s.ack(1).expect("ack"), 20);
        assert_eq!(s.ack(1).expect("ack again"), 0, "acks are idempotent");
        let f = s.figures().expect("figures");
        assert_eq!((f.readings, f.leased_readings, f.bytes), (10, 10, 50));
    }

    #[test]
    fn live_leases_take_the_newest_and_backlog_the_oldest() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        for i in 0..5 {
            s.append(&[seg(Class::Normal, i * 1000, 1, 10)])
                .expect("append");
        }
        let live = LeaseRequest {
            max_readings: 1,
            order: LeaseOrder::NewestFirst,
            range: 3000..i64::MAX,
            with_gaps: false,
        };
        let l = s.lease(&live).expect("lease").expect("some");
        assert_eq!(l.segments[0].id, 5);
        let backlog = LeaseRequest {
            max_readings: 1,
            order: LeaseOrder::OldestFirst,
            range: i64::MIN..2000,
            with_gaps: false,
        };
        let l = s.lease(&backlog).expect("lease").expect("some");
        assert_eq!(l.segments[0].id, 1);
    }

    #[test]
    fn a_batch_never_mixes_two_tag_maps() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        let mut other = seg(Class::Normal, 1000, 5, 10);
        other.config = "c2".into();
        s.append(&[seg(Class::Normal, 0, 5, 10), other])
            .expect("append");
        assert_eq!(s.lease(&all(100)).expect("lease").expect("some").count(), 5);
        assert_eq!(s.lease(&all(100)).expect("lease").expect("some").count(), 5);
    }

    #[test]
    fn when_full_the_oldest_lowest_class_goes_first_with_a_gap_and_events_stay() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), 400);
        s.append(&[
            seg(Class::Event, 0, 1, 100),
            seg(Class::High, 0, 10, 100),
            seg(Class::Normal, 0, 10, 100),
            seg(Class::Low, 0, 10, 100),
        ])
        .expect("append");
        assert_eq!(
            s.figures().expect("figures").dropped_full,
            0,
            "exactly at the bound"
        );
        // One more segment: the low one goes first…
        assert_eq!(
            s.append(&[seg(Class::Normal, 5000, 10, 100)])
                .expect("append")
                .full,
            10
        );
        // …then the oldest normal one, then high ones; never the event.
        assert_eq!(
            s.append(&[seg(Class::Normal, 6000, 7, 100)])
                .expect("append")
                .full,
            10
        );
        s.append(&[seg(Class::Event, 9000, 1, 300)])
            .expect("append");
        let f = s.figures().expect("figures");
        assert_eq!(f.dropped_full, 10 + 10 + 10 + 10 + 7, "{f:?}");
        let l = s.lease(&all(1000)).expect("lease").expect("some");
        assert_eq!(
            l.segments
                .iter()
                .filter(|x| x.class == Class::Event)
                .count(),
            2,
            "events kept over the bound"
        );
        assert_eq!(l.gaps.len(), 5);
        assert!(l
            .gaps
            .iter()
            .all(|g| g.reason == crate::model::GapReason::BufferFull && g.tags == vec![1, 2]));
        assert_eq!(l.gaps.iter().map(|g| g.count).sum::<u64>(), f.dropped_full);
    }

    #[test]
    fn leased_batches_are_not_evicted() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), 100);
        s.append(&[seg(Class::Low, 0, 10, 100)]).expect("append");
        let l = s.lease(&all(100)).expect("lease").expect("some");
        s.append(&[seg(Class::Normal, 1000, 10, 100)])
            .expect("append");
        let f = s.figures().expect("figures");
        assert_eq!(
            f.leased_readings, 10,
            "the leased low segment is still there"
        );
        assert_eq!(s.ack(l.batch_id).expect("ack"), 10);
    }

    #[test]
    fn age_bound_drops_old_unleased_readings_with_a_gap() {
        let d = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Store::open(
            &d.path().join("b.db"),
            Durability::CrashSafe,
            Bounds {
                max_bytes: u64::MAX,
                max_age_ms: 60_000,
            },
        )
        .expect("open");
        let now = now_ms();
        s.append(&[
            seg(Class::Normal, now - 120_000, 3, 10),
            seg(Class::Normal, now, 4, 10),
        ])
        .expect("append");
        let f = s.figures().expect("figures");
        assert_eq!((f.readings, f.dropped_age, f.pending_gaps), (4, 3, 1));
    }

    #[test]
    fn crash_after_append_commit_keeps_every_committed_segment() {
        let d = tempfile::tempdir().expect("tmp");
        {
            let mut s = open(d.path(), u64::MAX);
            s.append(&[seg(Class::Normal, 0, 10, 10)]).expect("append");
            // Dropped without any orderly close, like a killed process.
            std::mem::forget(s);
        }
        let s = open(d.path(), u64::MAX);
        assert_eq!(s.figures().expect("figures").readings, 10);
    }

    #[test]
    fn crash_between_lease_and_ack_resends_the_same_batch_id() {
        let d = tempfile::tempdir().expect("tmp");
        let id = {
            let mut s = open(d.path(), u64::MAX);
            s.append(&[seg(Class::Normal, 0, 10, 10), seg(Class::Normal, 10, 5, 10)])
                .expect("append");
            let id = s.lease(&all(10)).expect("lease").expect("some").batch_id;
            std::mem::forget(s);
            id
        };
        let mut s = open(d.path(), u64::MAX);
        let leased = s.leased().expect("leased");
        assert_eq!(
            s.figures().expect("figures").pending_gaps,
            1,
            "the crash window is reported"
        );
        assert_eq!(leased.len(), 1);
        assert_eq!((leased[0].batch_id, leased[0].count()), (id, 10));
        // New leases never reuse the id.
        assert_eq!(
            s.lease(&all(10)).expect("lease").expect("some").batch_id,
            id + 1
        );
    }

    #[test]
    fn an_orderly_close_reports_no_gap_and_a_crash_reports_its_window() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        s.append(&[seg(Class::Normal, 0, 10, 10)]).expect("append");
        s.close().expect("close");
        let mut s = open(d.path(), u64::MAX);
        assert_eq!(s.figures().expect("figures").pending_gaps, 0);
        s.append(&[seg(Class::Normal, 0, 10, 10)]).expect("append");
        std::mem::forget(s);
        let mut s = open(d.path(), u64::MAX);
        let l = s.lease(&all(100)).expect("lease").expect("some");
        assert_eq!(l.gaps.len(), 1);
        assert_eq!(l.gaps[0].reason, crate::model::GapReason::UncleanShutdown);
        assert!(l.gaps[0].tags.is_empty(), "all tags");
    }

    #[test]
    fn crash_after_ack_does_not_resend() {
        let d = tempfile::tempdir().expect("tmp");
        {
            let mut s = open(d.path(), u64::MAX);
            s.append(&[seg(Class::Normal, 0, 10, 10)]).expect("append");
            let id = s.lease(&all(10)).expect("lease").expect("some").batch_id;
            s.ack(id).expect("ack");
            std::mem::forget(s);
        }
        let s = open(d.path(), u64::MAX);
        assert!(s.leased().expect("leased").is_empty());
        assert_eq!(s.figures().expect("figures").readings, 0);
    }

    #[test]
    fn a_corrupt_database_is_quarantined_and_a_fresh_one_started() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("buffer.db");
        std::fs::write(&path, b"this is not a sqlite database, it is garbage....................................................................").expect("write");
        let (s, moved) = Store::open(
            &path,
            Durability::CrashSafe,
            Bounds {
                max_bytes: u64::MAX,
                max_age_ms: 0,
            },
        )
        .expect("open");
        let moved = moved.expect("quarantined");
        assert!(moved.exists());
        assert!(moved.display().to_string().contains("buffer.db.corrupt-"));
        let f = s.figures().expect("figures");
        assert_eq!((f.readings, f.quarantined), (0, 1));
    }

    fn real_seg(ts: i64, n: usize) -> NewSegment {
        use crate::model::{Reading, Value};
        let id = super::super::codec::Identity {
            site: "s".into(),
            agent: "a".into(),
            config_hash: "c1".into(),
        };
        // Noisy values: blobs of a few KiB, spread over several pages.
        let rs: Vec<Reading> = (0..n)
            .map(|i| {
                let v = ((ts as u64 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64;
                Reading::good((i % 3) as u32, ts + i as i64, Value::Float(v), 0)
            })
            .collect();
        super::super::codec::encode_segment(Class::Normal, &id, &rs).expect("encode")
    }

    fn bounds() -> Bounds {
        Bounds {
            max_bytes: u64::MAX,
            max_age_ms: 0,
        }
    }

    #[test]
    fn the_epoch_is_made_once_kept_across_reopens_and_carried_by_leases() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        let id = s.identity().clone();
        assert_eq!(id.origin, "new");
        assert!(id.epoch >= 1 && id.epoch < 1 << 53);
        s.append(&[seg(Class::Normal, 0, 1, 10)]).expect("append");
        assert_eq!(
            s.lease(&all(10)).expect("lease").expect("some").epoch,
            id.epoch
        );
        s.close().expect("close");
        let s = open(d.path(), u64::MAX);
        assert_eq!(s.identity().epoch, id.epoch);
        assert_eq!(s.identity().created_ms, id.created_ms);
        assert_eq!(s.identity().origin, "existing");
        assert_eq!(s.figures().expect("figures").epoch, id.epoch);
        // Another database gets another epoch.
        let other = tempfile::tempdir().expect("tmp");
        assert_ne!(open(other.path(), u64::MAX).identity().epoch, id.epoch);
    }

    #[test]
    fn an_existing_database_without_an_epoch_gets_one_and_says_so() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        s.append(&[seg(Class::Normal, 0, 1, 10)]).expect("append");
        s.lease(&all(10)).expect("lease").expect("some");
        s.conn
            .execute(
                "DELETE FROM meta WHERE key IN ('epoch', 'created_ms', 'epoch0_below')",
                [],
            )
            .expect("forget");
        s.close().expect("close");
        let mut s = open(d.path(), u64::MAX);
        assert_eq!(s.identity().origin, "existing");
        assert!(s
            .identity()
            .note
            .as_deref()
            .unwrap_or("")
            .contains("epoch 0"));
        // A batch leased before the epoch existed is re-sent as epoch 0, new ones are not.
        let old = s.leased().expect("leased");
        assert_eq!((old.len(), old[0].epoch), (1, 0));
        s.append(&[seg(Class::Normal, 0, 1, 10)]).expect("append");
        let new = s.lease(&all(10)).expect("lease").expect("some");
        assert_eq!(new.epoch, s.identity().epoch);
        s.close().expect("close");
        let s = open(d.path(), u64::MAX);
        assert_eq!(s.leased().expect("leased")[0].epoch, 0, "kept across opens");
    }

    #[test]
    fn a_crash_window_counts_the_readings_handed_over_and_not_committed() {
        let d = tempfile::tempdir().expect("tmp");
        {
            let mut s = open(d.path(), u64::MAX);
            let f = s.inflight().expect("side file");
            f.add(30);
            s.append(&[seg(Class::Normal, 0, 10, 10)]).expect("append");
            std::mem::forget(s);
        }
        let mut s = open(d.path(), u64::MAX);
        let l = s.lease(&all(100)).expect("lease").expect("some");
        assert_eq!(l.gaps.len(), 1);
        assert_eq!(l.gaps[0].reason, crate::model::GapReason::UncleanShutdown);
        assert_eq!(l.gaps[0].known_count(), Some(20), "handed 30, committed 10");
        // Without the side file the count is unknown.
        let side = inflight::side_path(&d.path().join("buffer.db"));
        s.inflight().expect("side file").add(5);
        std::mem::forget(s);
        std::fs::remove_file(&side).expect("rm");
        let mut s = open(d.path(), u64::MAX);
        let l = s.lease(&all(100)).expect("lease").expect("some");
        assert_eq!(l.gaps.len(), 1);
        assert_eq!(l.gaps[0].known_count(), None);
        // An orderly close: no gap, the counter goes on.
        s.inflight().expect("side file").add(3);
        s.append(&[seg(Class::Normal, 0, 3, 10)]).expect("append");
        s.close().expect("close");
        let s = open(d.path(), u64::MAX);
        assert_eq!(s.figures().expect("figures").pending_gaps, 0);
    }

    #[test]
    fn salvage_keeps_the_epoch_and_batch_ids_and_reports_an_unreadable_blob_as_a_counted_gap() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("buffer.db");
        let (epoch, leased_id) = {
            let mut s = open(d.path(), u64::MAX);
            s.append(&[real_seg(0, 50), real_seg(1000, 60), real_seg(2000, 70)])
                .expect("append");
            let l = s.lease(&all(50)).expect("lease").expect("some");
            s.conn
                .execute("UPDATE segment SET blob = x'00112233' WHERE id = 2", [])
                .expect("damage");
            let e = s.identity().epoch;
            s.close().expect("close");
            (e, l.batch_id)
        };
        let tmp = super::super::salvage::tmp_path(&path);
        let r = super::super::salvage::salvage(&path, &tmp, Durability::CrashSafe, bounds(), None)
            .expect("salvage");
        assert_eq!((r.salvaged_segments, r.salvaged_readings), (2, 120));
        assert_eq!((r.damaged_segments, r.damaged_readings), (1, 60));
        assert!(
            r.epoch_kept && !r.incomplete && r.unreadable_rows == 0,
            "{r:?}"
        );
        let mut s = Store::try_open(&tmp, Durability::CrashSafe, bounds(), None).expect("open");
        assert_eq!(s.identity().epoch, epoch, "the same logical buffer");
        let leased = s.leased().expect("leased");
        assert_eq!(leased.len(), 1);
        assert_eq!((leased[0].batch_id, leased[0].count()), (leased_id, 50));
        let l = s.lease(&all(1000)).expect("lease").expect("some");
        assert_eq!(l.batch_id, leased_id + 1, "batch ids continue");
        assert_eq!(l.count(), 70);
        let damaged: Vec<_> = l
            .gaps
            .iter()
            .filter(|g| g.reason == crate::model::GapReason::BufferDamaged)
            .collect();
        assert_eq!(damaged.len(), 1);
        assert_eq!(
            (damaged[0].known_count(), damaged[0].range.clone()),
            (Some(60), 1000..1059)
        );
        assert_eq!(damaged[0].tags, vec![0, 1, 2]);
        let f = s.figures().expect("figures");
        assert_eq!(
            (f.salvaged_readings, f.damaged_readings, f.quarantined),
            (120, 60, 1)
        );
    }

    #[test]
    fn a_truncated_database_is_salvaged_as_far_as_it_can_be_read() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("buffer.db");
        let total: u64 = {
            let mut s = open(d.path(), u64::MAX);
            for i in 0..200 {
                s.append(&[real_seg(i * 1000, 300)]).expect("append");
            }
            s.close().expect("close");
            200 * 300
        };
        let len = std::fs::metadata(&path).expect("meta").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(len * 6 / 10).expect("truncate");
        drop(f);
        let (mut s, moved) = Store::open(&path, Durability::CrashSafe, bounds()).expect("open");
        assert!(moved.is_some());
        assert_eq!(s.identity().origin, "replaced-corrupt");
        let note = s.identity().note.clone().unwrap_or_default();
        let f = s.figures().expect("figures");
        assert!(f.salvaged_readings > 0, "{note}");
        assert!(f.salvaged_readings + f.damaged_readings <= total, "{f:?}");
        assert_eq!(f.readings, f.salvaged_readings);
        let l = s.lease(&all(u64::MAX)).expect("lease").expect("some");
        if f.salvaged_readings + f.damaged_readings < total {
            assert!(
                l.gaps.iter().any(|g| g.known_count().is_none()
                    && g.reason == crate::model::GapReason::BufferDamaged),
                "what could not be read is a gap of unknown count: {:?} {note}",
                l.gaps
            );
        }
    }

    #[test]
    fn a_zero_byte_file_is_replaced_and_reported() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("buffer.db");
        std::fs::write(&path, b"").expect("write");
        let (s, moved) = Store::open(&path, Durability::CrashSafe, bounds()).expect("open");
        assert!(moved.is_some());
        assert_eq!(s.identity().origin, "replaced-empty");
        assert!(s.identity().note.is_some());
        assert_eq!(s.figures().expect("figures").quarantined, 1);
    }

    #[test]
    fn an_interrupted_salvage_is_finished_at_the_next_start() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("buffer.db");
        {
            let mut s = open(d.path(), u64::MAX);
            s.append(&[real_seg(0, 10)]).expect("append");
            s.close().expect("close");
        }
        let tmp = super::super::salvage::tmp_path(&path);
        super::super::salvage::salvage(&path, &tmp, Durability::CrashSafe, bounds(), None)
            .expect("salvage");
        // Crash after the damaged file was moved aside, before the fresh one took its place.
        std::fs::rename(&path, d.path().join("buffer.db.corrupt-1")).expect("mv");
        let s = open(d.path(), u64::MAX);
        assert_eq!(s.figures().expect("figures").readings, 10);
        assert!(!tmp.exists());
    }

    #[test]
    fn an_undecodable_segment_is_quarantined_alone_and_its_batch_goes_on() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        s.append(&[real_seg(0, 50), real_seg(1000, 60), real_seg(2000, 70)])
            .expect("append");
        // Eight flipped bytes inside one stored blob: SQLite's quick_check still says ok.
        let mut blob: Vec<u8> = s
            .conn
            .query_row("SELECT blob FROM segment WHERE id = 2", [], |r| r.get(0))
            .expect("blob");
        let mid = blob.len() / 2;
        for b in &mut blob[mid..mid + 8] {
            *b ^= 0xff;
        }
        s.conn
            .execute("UPDATE segment SET blob = ?1 WHERE id = 2", [blob])
            .expect("flip");
        let check: String = s
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(check, "ok");
        let id = super::super::codec::Identity {
            site: "s".into(),
            agent: "a".into(),
            config_hash: "c1".into(),
        };
        let l = s.lease(&all(1000)).expect("lease").expect("some");
        let (b, lost) = super::super::writer::build_checked(&mut s, &id, l).expect("built");
        assert_eq!(lost, 60);
        let batch = flowsquare_wire::decode(&b.payload).expect("decode");
        assert_eq!(batch.readings.len(), 120);
        assert_eq!(batch.buffer_epoch, s.identity().epoch);
        assert_eq!(batch.gaps.len(), 1);
        assert_eq!((batch.gaps[0].count, batch.gaps[0].count_known), (60, true));
        let f = s.figures().expect("figures");
        assert_eq!(
            (f.bad_segments, f.damaged_readings, f.readings),
            (1, 60, 120)
        );
        let kept: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM bad_segment", [], |r| r.get(0))
            .expect("bad");
        assert_eq!(kept, 1, "kept for the post-mortem");
        // The acknowledgement deletes the rest of the batch and its gap.
        assert_eq!(s.ack(b.batch_id).expect("ack"), 120);
        assert_eq!(s.figures().expect("figures").pending_gaps, 0);
    }

    /// Cost of counting crash losses (run: `cargo test -p edge-agent --lib -- --ignored
    /// crash_counter_cost --nocapture`): the `pwrite` per hand-over and the extra `UPDATE` per
    /// commit, against a live agent's commit (one 20-reading segment).
    #[test]
    #[ignore = "a micro-benchmark, run on request (benches/README.md), not a check"]
    fn crash_counter_cost() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = open(d.path(), u64::MAX);
        let f = s.inflight().expect("side file");
        let n = 200_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            f.add(20);
        }
        let pwrite_ns = t.elapsed().as_nanos() as f64 / n as f64;
        let segs: Vec<NewSegment> = (0..2000).map(|i| real_seg(i * 20, 20)).collect();
        let t = std::time::Instant::now();
        for sg in &segs {
            s.append(std::slice::from_ref(sg)).expect("append");
        }
        let commit_us = t.elapsed().as_secs_f64() * 1e6 / segs.len() as f64;
        let tx = s.conn.transaction().expect("tx");
        let t = std::time::Instant::now();
        for _ in 0..n {
            tx.execute(
                "UPDATE meta SET value = value + ?1 WHERE key = 'committed_total'",
                [20],
            )
            .expect("update");
        }
        let update_ns = t.elapsed().as_nanos() as f64 / n as f64;
        tx.commit().expect("commit");
        println!(
            "in-flight pwrite {pwrite_ns:.0} ns per hand-over; committed_total UPDATE {update_ns:.0} ns per commit; a 20-reading commit {commit_us:.0} us"
        );
    }
}
