//! Salvage of a damaged buffer database (see the design note in `store.rs`, "Damage").
//!
//! The old file is opened read-only and read piece by piece — meta keys one by one, then every
//! segment and gap row by its row id, metadata and blob separately — skipping what errors, so a
//! truncated or garbage-filled file never makes us give up on the rest. What is read goes into a
//! fresh database built beside it (`buffer.db.salvage`), which replaces the old file only when
//! complete (`meta.salvage_complete`): a crash during the salvage leaves the damaged file in
//! place and the salvage is done again at the next start.
//!
//! - The old meta readable (epoch, next batch id): the fresh database keeps the epoch and
//!   continues the batch ids; leased batches keep their ids, so a re-send stays idempotent.
//!   Otherwise it gets a new epoch and the salvaged segments are leased afresh.
//! - A segment whose blob decodes is copied as it is; one whose metadata is readable but whose
//!   blob is not becomes a `buffer-damaged` gap with its tags, time range and count.
//! - What cannot be read at all (rows, or the rest of a table after a broken page) becomes one
//!   `buffer-damaged` gap of unknown count over the time range that is known: from the
//!   database's creation (`meta.created_ms`; unreadable rows may be older than every readable
//!   one), or the oldest readable reading, but not before the age bound, to the last commit or
//!   the file's mtime.
//! - The old database's own crash window (`clean` = 0) is reported like any unclean shutdown.

use std::ops::Range;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use super::error::BufferError;
use super::store::{count_from_sql, count_sql, crash_gap, Bounds, Durability, Store};

/// Row ids probed one by one after a table scan broke off.
const MAX_PROBES: i64 = 1_000_000;

/// What a salvage recovered and lost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The old file could be opened and its schema read at all.
    pub readable: bool,
    /// Segments copied intact.
    pub salvaged_segments: u64,
    /// Readings (and events) in them.
    pub salvaged_readings: u64,
    /// Segments whose content could not be read (reported as counted gaps).
    pub damaged_segments: u64,
    /// Readings in them.
    pub damaged_readings: u64,
    /// Rows (segments or gaps) whose metadata could not be read.
    pub unreadable_rows: u64,
    /// A table could not be read to its end (an unknown number of rows may be missing).
    pub incomplete: bool,
    /// Gap rows copied.
    pub gaps_copied: u64,
    /// The old epoch and batch ids were kept.
    pub epoch_kept: bool,
    /// The gap of unknown count reported for what could not be read, if any.
    pub lost_range: Option<Range<i64>>,
}

impl Report {
    /// The salvage in one line (log, birth note, `buffer status`).
    pub fn note(&self) -> String {
        if !self.readable {
            return "the damaged buffer could not be read at all: its unsent readings are lost (count unknown)".into();
        }
        let mut s = format!(
            "salvaged {} readings in {} segments and {} gap records from the damaged buffer; {} readings in {} unreadable segments reported as buffer-damaged gaps",
            self.salvaged_readings,
            self.salvaged_segments,
            self.gaps_copied,
            self.damaged_readings,
            self.damaged_segments
        );
        if self.unreadable_rows > 0 || self.incomplete {
            match &self.lost_range {
                Some(r) => s.push_str(&format!(
                    "; {} unreadable rows{} reported as a gap of unknown count from {} to {}",
                    self.unreadable_rows,
                    if self.incomplete {
                        " and unreadable table parts"
                    } else {
                        ""
                    },
                    crate::model::rfc3339_ms(r.start),
                    crate::model::rfc3339_ms(r.end)
                )),
                None => s.push_str(
                    "; parts could not be read and no time range is known for them (count unknown)",
                ),
            }
        }
        s.push_str(if self.epoch_kept {
            "; same buffer epoch, batch ids continue"
        } else {
            "; the old buffer's identity was unreadable: new epoch"
        });
        s
    }
}

/// Where the fresh database is built.
pub fn tmp_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.salvage", db.display()))
}

fn remove_db(p: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
    }
}

/// A salvage interrupted after the damaged file was moved aside and before the fresh one took
/// its place: finish it (the fresh one is complete) or clear a partial one.
pub fn finish_interrupted(db: &Path, tmp: &Path) -> Result<(), BufferError> {
    if !tmp.exists() {
        return Ok(());
    }
    let complete = !db.exists()
        && open_ro(tmp)
            .ok()
            .and_then(|c| meta_of(&c, "salvage_complete"))
            == Some(1);
    if complete {
        tracing::warn!(path = %db.display(), "finishing a buffer salvage interrupted by a crash");
        std::fs::rename(tmp, db).map_err(|e| BufferError::Io {
            path: tmp.to_path_buf(),
            source: e,
        })?;
    } else {
        remove_db(tmp);
    }
    Ok(())
}

fn open_ro(p: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        p,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(std::time::Duration::from_secs(1))?;
    // A truncated file is shorter than its header says: SQLite refuses it as corrupt unless
    // the schema is "writable", when it reads what the file holds (the connection stays
    // read-only).
    let _ = c.pragma_update(None, "writable_schema", "ON");
    Ok(c)
}

fn meta_of(c: &Connection, key: &str) -> Option<i64> {
    c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .ok()
}

/// Row ids of `table` in order, and whether the scan reached the end. After a broken page the
/// ids up to the table's sequence are probed one by one (interior pages may still lead there).
fn row_ids(c: &Connection, table: &str) -> (Vec<i64>, bool) {
    let mut ids: Vec<i64> = Vec::new();
    let complete = {
        let mut scan = || -> rusqlite::Result<()> {
            let mut st = c.prepare(&format!("SELECT id FROM {table} ORDER BY id"))?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                ids.push(r.get(0)?);
            }
            Ok(())
        };
        scan().is_ok()
    };
    if !complete {
        let max: Option<i64> = c
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .ok();
        let start = ids.last().copied().unwrap_or(0) + 1;
        if let Some(max) = max {
            let sql = format!("SELECT id FROM {table} WHERE id = ?1");
            for id in start..=max.min(start + MAX_PROBES) {
                if let Ok(Some(x)) = c.query_row(&sql, [id], |r| r.get(0)).optional() {
                    ids.push(x);
                }
            }
        }
    }
    (ids, complete)
}

/// Does a stored blob decode to `count` readings and events?
fn decodes(blob: &[u8], count: i64) -> bool {
    flowsquare_wire::decode(blob).is_ok_and(|b| (b.readings.len() + b.events.len()) as i64 == count)
}

/// Known time range of what was read (for the gap of unknown count).
#[derive(Default)]
struct Span(Option<(i64, i64)>);

impl Span {
    fn add(&mut self, lo: i64, hi: i64) {
        self.0 = Some(match self.0 {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
    }
}

struct Copier<'a> {
    old: &'a Connection,
    tx: &'a Transaction<'a>,
    keep_batches: bool,
    report: Report,
    span: Span,
}

impl Copier<'_> {
    fn segments(&mut self) -> Result<(), BufferError> {
        let (ids, complete) = row_ids(self.old, "segment");
        self.report.incomplete |= !complete;
        type Meta = (i64, i64, i64, i64, i64, Vec<u8>, String, Option<i64>);
        for id in ids {
            let row: rusqlite::Result<Meta> = self.old.query_row(
                "SELECT class, first_ts, last_ts, count, created_ms, tags, config, batch_id FROM segment WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
            );
            let Ok((class, first, last, count, created, tags, config, batch_id)) = row else {
                self.report.unreadable_rows += 1;
                continue;
            };
            self.span.add(first, last);
            let batch_id = batch_id.filter(|_| self.keep_batches);
            let blob: Option<Vec<u8>> = self
                .old
                .query_row("SELECT blob FROM segment WHERE id = ?1", [id], |r| r.get(0))
                .ok()
                .filter(|b: &Vec<u8>| decodes(b, count));
            match blob {
                Some(blob) => {
                    self.tx.execute(
                        "INSERT INTO segment(id, class, first_ts, last_ts, count, bytes, created_ms, tags, config, batch_id, blob)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        params![id, class, first, last, count, blob.len() as i64, created, tags, config, batch_id, blob],
                    )?;
                    self.report.salvaged_segments += 1;
                    self.report.salvaged_readings += count.max(0) as u64;
                }
                None => {
                    self.tx.execute(
                        "INSERT INTO gap(tags, from_ms, to_ms, count, reason, batch_id) VALUES (?1, ?2, ?3, ?4, 'buffer-damaged', ?5)",
                        params![tags, first, last, count, batch_id],
                    )?;
                    self.report.damaged_segments += 1;
                    self.report.damaged_readings += count.max(0) as u64;
                }
            }
        }
        Ok(())
    }

    fn gaps(&mut self) -> Result<(), BufferError> {
        let (ids, complete) = row_ids(self.old, "gap");
        self.report.incomplete |= !complete;
        type Row = (Vec<u8>, i64, i64, i64, String, Option<i64>);
        for id in ids {
            let row: rusqlite::Result<Row> = self.old.query_row(
                "SELECT tags, from_ms, to_ms, count, reason, batch_id FROM gap WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            );
            let Ok((tags, from, to, count, reason, batch_id)) = row else {
                self.report.unreadable_rows += 1;
                continue;
            };
            self.tx.execute(
                "INSERT INTO gap(tags, from_ms, to_ms, count, reason, batch_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![tags, from, to, count_sql(count_from_sql(count)), reason, batch_id.filter(|_| self.keep_batches)],
            )?;
            self.report.gaps_copied += 1;
        }
        Ok(())
    }

    fn cursors(&mut self) -> Result<(), BufferError> {
        type Row = (String, i64, i64, i64, bool);
        let mut read: Vec<Row> = Vec::new();
        let mut scan = || -> rusqlite::Result<()> {
            let mut st = self
                .old
                .prepare("SELECT source, seq, digest, ts_ms, acked FROM event_cursor")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                read.push((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
            }
            Ok(())
        };
        if scan().is_err() {
            tracing::warn!("event cursors of the damaged buffer are partly unreadable");
        }
        for (source, seq, digest, ts, acked) in read {
            self.tx.execute(
                "INSERT OR REPLACE INTO event_cursor(source, seq, digest, ts_ms, acked) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![source, seq, digest, ts, acked],
            )?;
        }
        Ok(())
    }
}

fn mtime_ms(p: &Path) -> Option<i64> {
    let t = std::fs::metadata(p).ok()?.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Salvage the damaged database `old` into a fresh one at `tmp` (closed, complete, ready to
/// be renamed into place). `side` is the in-flight side file read before anything else.
pub fn salvage(
    old: &Path,
    tmp: &Path,
    durability: Durability,
    bounds: Bounds,
    side: Option<(u64, u64)>,
) -> Result<Report, BufferError> {
    remove_db(tmp);
    let mut fresh = Store::try_open(tmp, durability, bounds, None)?;
    let conn = open_ro(old).ok();
    let m = |k: &str| conn.as_ref().and_then(|c| meta_of(c, k));
    let (epoch, next) = (m("epoch").filter(|e| *e > 0), m("next_batch_id"));
    let keep = epoch.is_some() && next.is_some();
    let mut report = Report {
        epoch_kept: keep,
        ..Report::default()
    };
    let now = crate::model::now_ms();
    let tx = fresh
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut span = Span::default();
    if let Some(c) = &conn {
        report.readable = c
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .is_ok();
        let mut cp = Copier {
            old: c,
            tx: &tx,
            keep_batches: keep,
            report,
            span,
        };
        if cp.report.readable {
            cp.segments()?;
            cp.gaps()?;
            cp.cursors()?;
        }
        (report, span) = (cp.report, cp.span);
    }
    let last_commit = m("last_commit_ms").filter(|t| *t > 0);
    let mtime = mtime_ms(old);
    // The old database's crash window.
    if let (Some(0), Some(last)) = (m("clean"), last_commit) {
        let committed = m("committed_total").unwrap_or(0).max(0) as u64;
        let g = crash_gap(
            last,
            mtime.unwrap_or(now),
            side,
            epoch.unwrap_or(0) as u64,
            committed,
        );
        insert_gap(&tx, &g)?;
    }
    // What could not be read at all: one gap of unknown count over the known range.
    if report.unreadable_rows > 0 || report.incomplete || !report.readable {
        // Unreadable rows may be older than every readable one: the range starts at the
        // database's creation (nothing in it was committed earlier), or at the age bound.
        for t in [last_commit, m("created_ms").filter(|t| *t > 0)]
            .into_iter()
            .flatten()
        {
            span.add(t, t);
        }
        if let (Some((lo, hi)), Some(mt)) = (span.0, mtime) {
            span.add(lo, hi.max(mt));
        }
        if let (Some((lo, hi)), true) = (span.0, bounds.max_age_ms > 0) {
            span.0 = Some((lo.max(now - bounds.max_age_ms).min(hi), hi));
        }
        if let Some((lo, hi)) = span.0 {
            let g = super::GapRow::uncounted(
                Vec::new(),
                lo..hi.max(lo),
                crate::model::GapReason::BufferDamaged,
            );
            insert_gap(&tx, &g)?;
            report.lost_range = Some(g.range);
        }
    }
    finish_meta(&tx, &report, &m, keep)?;
    tx.commit()?;
    if let (true, Some(e), Some(n)) = (keep, epoch, next) {
        let max_batch: i64 = fresh.conn.query_row(
            "SELECT COALESCE(MAX(b), 0) FROM (SELECT MAX(batch_id) AS b FROM segment UNION ALL SELECT MAX(batch_id) FROM gap)",
            [],
            |r| r.get(0),
        )?;
        fresh.adopt_identity(
            e as u64,
            m("created_ms").unwrap_or(now),
            n.max(max_batch + 1),
        )?;
    }
    fresh.conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('salvage_complete', 1)",
        [],
    )?;
    fresh.close()?;
    Ok(report)
}

fn insert_gap(tx: &Transaction<'_>, g: &super::GapRow) -> Result<(), BufferError> {
    tx.execute(
        "INSERT INTO gap(tags, from_ms, to_ms, count, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            super::store::tags_blob(&g.tags),
            g.range.start,
            g.range.end,
            count_sql(g.count),
            g.reason.as_str()
        ],
    )?;
    Ok(())
}

/// Carry the old counters over and count the salvage.
fn finish_meta(
    tx: &Transaction<'_>,
    r: &Report,
    m: &dyn Fn(&str) -> Option<i64>,
    keep: bool,
) -> Result<(), BufferError> {
    let old = |k: &str| m(k).unwrap_or(0).max(0);
    let uncounted = i64::from(r.unreadable_rows > 0 || r.incomplete || !r.readable);
    let values: [(&str, i64); 9] = [
        ("dropped_full", old("dropped_full")),
        ("dropped_age", old("dropped_age")),
        ("quarantined", old("quarantined") + 1),
        (
            "salvaged_readings",
            old("salvaged_readings") + r.salvaged_readings as i64,
        ),
        (
            "damaged_readings",
            old("damaged_readings") + r.damaged_readings as i64,
        ),
        ("damaged_uncounted", old("damaged_uncounted") + uncounted),
        ("bad_segments", old("bad_segments")),
        ("epoch0_below", if keep { old("epoch0_below") } else { 0 }),
        (
            "committed_total",
            if keep { old("committed_total") } else { 0 },
        ),
    ];
    for (k, v) in values {
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
            params![k, v],
        )?;
    }
    Ok(())
}
