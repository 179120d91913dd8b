//! Segment and batch encoding: readings are stored as wire-format batch bodies (columnar,
//! zstd-compressed), so a lease only merges segments and adds the batch identity.

use flowsquare_wire as wire;

use super::error::BufferError;
use super::store::{Class, Leased, NewSegment};
use crate::model::{CounterEvent, GapReason, GapRow, Quality, Reading, Value};

/// Who the batches are from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Site id.
    pub site: String,
    /// Agent id.
    pub agent: String,
    /// Hash of the tag map the tag ids refer to.
    pub config_hash: String,
}

/// A reading in wire form.
pub fn to_wire(r: &Reading) -> wire::WireReading {
    wire::WireReading {
        tag: r.tag,
        ts_ms: r.ts_ms,
        value: r.value.as_ref().map(|v| match v {
            Value::Bool(b) => wire::WireValue::Bool(*b),
            Value::Int(i) => wire::WireValue::Int(*i),
            Value::UInt(u) => wire::WireValue::UInt(*u),
            Value::Float(f) => wire::WireValue::Float(*f),
            Value::Text(t) => wire::WireValue::Text(t.clone()),
        }),
        quality: match r.quality {
            Quality::Good => wire::Quality::Good,
            Quality::BadCommunication => wire::Quality::BadCommunication,
            Quality::BadDevice => wire::Quality::BadDevice,
            Quality::BadDecode => wire::Quality::BadDecode,
            Quality::Stale => wire::Quality::Stale,
            Quality::TimeSubstituted => wire::Quality::TimeSubstituted,
        },
        status: r.status,
        error: r.error.clone(),
        counter: r.counter.map(|c| match c {
            CounterEvent::Rollover { delta } => wire::Counter::Rollover { delta },
            CounterEvent::Reset { previous } => wire::Counter::Reset { previous },
        }),
    }
}

/// The zstd level of segments and batches. Every reading is compressed twice on its way out
/// (into its segment at commit, then into the batch a lease merges, plus once more if
/// compaction merges small segments), so this is on the hot path: level 3 (zstd's default)
/// costs a fraction of level 9 (`wire::DEFAULT_ZSTD_LEVEL`) for output a few percent larger.
/// Readers are unaffected: a zstd frame decodes whatever the level it was written at.
const ZSTD_LEVEL: i32 = 3;

fn encode(b: &wire::Batch) -> Result<Vec<u8>, BufferError> {
    wire::encode_with(b, wire::Compression::Zstd(ZSTD_LEVEL)).map_err(wire_err)
}

fn wire_err(e: wire::WireError) -> BufferError {
    BufferError::Segment {
        id: 0,
        reason: e.to_string(),
    }
}

/// Encode readings of one class into a segment.
pub fn encode_segment(
    class: Class,
    id: &Identity,
    readings: &[Reading],
) -> Result<NewSegment, BufferError> {
    let config_hash = id.config_hash.as_str();
    let mut b = wire::Batch::new(&id.site, &id.agent, 0, config_hash, crate::model::now_ms());
    // Sorted once by (tag, ts), stable, the order the encoder writes: the encoder then finds
    // them in order (one pass instead of its own sort), and the segment's tag list is a single
    // pass (sorting the readings, then the tag ids again, was ~8 % of a 10,000-tag agent's
    // instructions; issue 14).
    let mut order: Vec<&Reading> = readings.iter().collect();
    if !order.is_sorted_by_key(|r| (r.tag, r.ts_ms)) {
        order.sort_by_key(|r| (r.tag, r.ts_ms));
    }
    b.readings = order.iter().map(|r| to_wire(r)).collect();
    let mut tags: Vec<u32> = Vec::new();
    for r in &order {
        if tags.last() != Some(&r.tag) {
            tags.push(r.tag);
        }
    }
    Ok(NewSegment {
        class,
        first_ts: readings.iter().map(|r| r.ts_ms).min().unwrap_or(0),
        last_ts: readings.iter().map(|r| r.ts_ms).max().unwrap_or(0),
        count: readings.len() as u32,
        tags,
        config: config_hash.to_owned(),
        blob: encode(&b)?,
    })
}

/// Encode business events into a segment (class `Event`: never dropped).
pub fn encode_events(id: &Identity, events: Vec<wire::Event>) -> Result<NewSegment, BufferError> {
    let first = events.iter().map(|e| e.ts_ms).min().unwrap_or(0);
    let last = events.iter().map(|e| e.ts_ms).max().unwrap_or(0);
    let count = events.len() as u32;
    let config_hash = id.config_hash.as_str();
    let mut b = wire::Batch::new(&id.site, &id.agent, 0, config_hash, crate::model::now_ms());
    b.events = events;
    Ok(NewSegment {
        class: Class::Event,
        first_ts: first,
        last_ts: last,
        count,
        tags: Vec::new(),
        config: config_hash.to_owned(),
        blob: encode(&b)?,
    })
}

fn gap_to_wire(g: &GapRow) -> wire::Gap {
    let reason = match &g.reason {
        GapReason::BufferFull => wire::GapReason::BufferFull,
        GapReason::BufferAge => wire::GapReason::BufferAge,
        GapReason::MissedEvent => wire::GapReason::MissedEvent,
        other => wire::GapReason::Other(other.as_str().to_owned()),
    };
    match g.known_count() {
        Some(n) => wire::Gap::counted(g.tags.clone(), g.range.start, g.range.end, n, reason),
        None => wire::Gap::uncounted(g.tags.clone(), g.range.start, g.range.end, reason),
    }
}

/// Build the wire batch of a lease: its segments merged, its gap rows, the batch identity
/// (site, agent, buffer epoch, batch id). A segment that does not decode fails the build with
/// `BufferError::Segment { id }` (the caller quarantines it and builds again).
pub fn build_batch(id: &Identity, leased: &Leased) -> Result<Vec<u8>, BufferError> {
    // One segment and no gaps (a live lease after each commit): the segment's own frame under
    // the batch's identity, its compressed body as stored (its `created_ms` is when the
    // segment was written). The frame's checksum is verified; a damaged one goes the long way
    // below and is quarantined there.
    if let ([s], []) = (leased.segments.as_slice(), leased.gaps.as_slice()) {
        if let Ok(b) = wire::reframe(
            &s.blob,
            (&id.site, &id.agent),
            leased.batch_id,
            leased.epoch,
        ) {
            return Ok(b);
        }
    }
    let mut out = wire::Batch::new(
        &id.site,
        &id.agent,
        leased.batch_id,
        &id.config_hash,
        crate::model::now_ms(),
    );
    out.buffer_epoch = leased.epoch;
    for s in &leased.segments {
        let b = wire::decode(&s.blob).map_err(|e| BufferError::Segment {
            id: s.id,
            reason: e.to_string(),
        })?;
        if (b.readings.len() + b.events.len()) as u64 != u64::from(s.count) {
            return Err(BufferError::Segment {
                id: s.id,
                reason: format!(
                    "holds {} readings and events, its row says {}",
                    b.readings.len() + b.events.len(),
                    s.count
                ),
            });
        }
        // Segments carry the hash of the tag map they were written under (one per batch).
        out.config_hash = b.config_hash;
        out.readings.extend(b.readings);
        out.events.extend(b.events);
    }
    out.gaps = leased.gaps.iter().map(gap_to_wire).collect();
    encode(&out)
}

/// Merge stored segments (same class and tag map) into one, readings and events unchanged.
pub fn merge_segments(
    id: &Identity,
    class: Class,
    segs: &[super::store::Segment],
) -> Result<NewSegment, BufferError> {
    let mut out = wire::Batch::new(
        &id.site,
        &id.agent,
        0,
        &id.config_hash,
        crate::model::now_ms(),
    );
    for s in segs {
        let b = wire::decode(&s.blob).map_err(|e| BufferError::Segment {
            id: s.id,
            reason: e.to_string(),
        })?;
        out.config_hash = b.config_hash;
        out.readings.extend(b.readings);
        out.events.extend(b.events);
    }
    let ts = out
        .readings
        .iter()
        .map(|r| r.ts_ms)
        .chain(out.events.iter().map(|e| e.ts_ms));
    let (first, last) = ts.fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    let mut tags: Vec<u32> = out.readings.iter().map(|r| r.tag).collect();
    tags.sort_unstable();
    tags.dedup();
    Ok(NewSegment {
        class,
        first_ts: if first == i64::MAX { 0 } else { first },
        last_ts: if last == i64::MIN { 0 } else { last },
        count: (out.readings.len() + out.events.len()) as u32,
        tags,
        config: out.config_hash.clone(),
        blob: encode(&out)?,
    })
}
