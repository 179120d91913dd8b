//! The data batch (`{root}/v1/{site}/{agent}/data`): readings, business events and reported
//! gaps, in a compact columnar binary format.
//!
//! # Frame (version 2; version 1 is still read)
//!
//! Integers are unsigned LEB128 varints (`varint`) or zigzag varints (`zz`); strings are a varint
//! byte length then UTF-8; fixed-width numbers are big-endian.
//!
//! ```text
//! "FSB"            3 bytes magic
//! version          u8 = 1          (unknown → WireError::UnsupportedVersion)
//! flags            u8              bit 0: payload is zstd-compressed; other bits must be 0
//! site             string (1-64 id chars)
//! agent            string (1-64 id chars)
//! batch_id         varint
//! buffer_epoch     varint          version 2 only: the identity of the agent's buffer database
//!                                  (random, 1..2^53, made when the database is created); version 1
//!                                  frames read as epoch 0
//! body_len         varint          uncompressed body length, ≤ MAX_BODY_BYTES (16 MiB)
//! payload_len      varint
//! payload          payload_len bytes: the body, zstd-compressed if flag bit 0
//! crc32c           u32 BE          CRC-32C of every byte before it
//! ```
//!
//! The identity (site, agent, buffer epoch, batch id) is outside the compressed body, so the
//! ingest can de-duplicate or dead-letter a batch with [`peek_header`] without decompressing it.
//! Batch ids restart at 1 in a new buffer database (reinstall, quarantined buffer, a spare
//! gateway with the same ids); the epoch tells such batches apart from the old ones, so the
//! cloud never takes a new batch for a re-send of an old one.
//!
//! # Body (columnar)
//!
//! ```text
//! config_hash      string
//! created_ms       zz
//! READINGS (sorted by (tag, ts_ms), stable)
//!   n              varint ≤ MAX_READINGS
//!   tag runs       varint n_runs, then per run: varint tag delta (first run: the tag; then
//!                  ≥ 1 vs the previous run), varint count (≥ 1); counts sum to n
//!   timestamps     per run: zz (first ts − previous run's first ts; first run: − created_ms),
//!                  then per further reading zz delta-of-delta (previous delta starts at 0)
//!   quality        RLE pairs (u8 code, varint run) covering n
//!   value type     RLE pairs (u8 code, varint run) covering n; codes:
//!                    0 none, 1 false, 2 true, 3 int, 4 uint, 5 float (XOR), 6 text,
//!                    16+k (k = 0..=9) float as decimal m / 10^k
//!   values         per reading, by type code, with per-tag state reset at each tag run:
//!                    int: zz (v − previous int of the tag), wrapping
//!                    uint: zz of (v − previous uint of the tag) wrapping, as i64
//!                    float XOR: 8 bytes BE of bits XOR previous float bits of the tag
//!                    float decimal k: zz (m − previous m of the tag if it had the same k, else 0)
//!                    text: string;  none/bool: nothing
//!   optional       u8 flags: bit 0 status, bit 1 error, bit 2 counter; for each set, in that
//!                  order: presence bitmap (ceil(n/8) bytes, LSB first, padding 0), then per
//!                  present reading: status varint | error string |
//!                  counter (u8 0 rollover / 1 reset, then f64 8 bytes BE)
//! EVENTS  varint count; each: source string, kind string, seq varint,
//!         ts zz (vs previous event ts; first vs created_ms), varint n_fields,
//!         fields: name string, value (u8 type code 1-6, then: int zz, uint varint,
//!         float 8 bytes BE, text string)
//! GAPS    varint count; each: varint n_tags, tags varint each, from zz (vs created_ms),
//!         to zz (vs from), count varint, reason u8 (0 buffer-full, 1 buffer-age,
//!         2 missed-event, 3 other + string; version 2: bit 7 set = the count is unknown,
//!         `count` is then 0 — version 1 frames read count 0 of `unclean-shutdown` as unknown)
//! ```
//!
//! The body must be consumed exactly. Floats are carried bit-exactly (NaN payloads and −0.0
//! included): the decimal form is used only when `m as f64 / 10^k` gives the very same bits.
//! It is what makes scaled register values (`raw / 1000`) cost about one byte; floats that are
//! not short decimals (e.g. widened `f32`) use the XOR form, whose zero high bytes zstd
//! removes.

use crate::codec::{crc32c, put_str, put_varint, put_zigzag, Reader};
use crate::error::WireError;
use crate::topics::{validate_id, MAX_ID_LEN};

/// The 3-byte magic that starts every batch.
pub const MAGIC: [u8; 3] = *b"FSB";
/// The batch format version this build writes.
pub const FORMAT_VERSION: u8 = 2;
/// The oldest format version this build reads (version 1: no buffer epoch).
pub const MIN_FORMAT_VERSION: u8 = 1;
/// Gap reason byte, version 2: the count is unknown.
const GAP_COUNT_UNKNOWN: u8 = 0x80;
/// Header flag: the payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 0x01;
/// Largest uncompressed body, on encode and decode (16 MiB).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Most readings in one batch. A decoded [`WireReading`] takes about 100 bytes of memory, so a
/// maximal batch decodes into about 100 MB; agents should send far smaller batches.
pub const MAX_READINGS: usize = 1_000_000;
/// Longest string anywhere in a batch (config hash, text value, error, event strings).
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// The zstd level [`encode`] uses.
pub const DEFAULT_ZSTD_LEVEL: i32 = 9;

const MAX_EVENTS: usize = 1_000_000;
const MAX_GAPS: usize = 1_000_000;
const MAX_FIELDS: usize = 65_536;

const T_NONE: u8 = 0;
const T_FALSE: u8 = 1;
const T_TRUE: u8 = 2;
const T_INT: u8 = 3;
const T_UINT: u8 = 4;
const T_FLOAT: u8 = 5;
const T_TEXT: u8 = 6;
const T_DECIMAL: u8 = 16;
const MAX_DECIMALS: u8 = 9;

const OPT_STATUS: u8 = 0x01;
const OPT_ERROR: u8 = 0x02;
const OPT_COUNTER: u8 = 0x04;

/// Powers of ten that are exact in `f64`.
const POW10: [f64; MAX_DECIMALS as usize + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// 2^53: integers below it in magnitude are exact in `f64`.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Per-reading quality, by wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// 0: the device answered and the value decoded.
    Good = 0,
    /// 1: no answer (timeout, connection refused or lost).
    BadCommunication = 1,
    /// 2: the device answered with an exception (code in [`WireReading::status`]).
    BadDevice = 2,
    /// 3: the answer could not be decoded.
    BadDecode = 3,
    /// 4: the tag was not read this cycle (its unit is being skipped).
    Stale = 4,
    /// 5: the value is the device's, but the source's own timestamp (GPS, OPC UA source time)
    /// was further from the gateway clock than the configured bound, so the reading carries the
    /// gateway's time instead; the source time is kept in [`WireReading::error`]. Not `good`:
    /// aggregates and freshness leave it out, and it shows.
    TimeSubstituted = 5,
}

impl Quality {
    /// Every quality, by code.
    pub const ALL: [Quality; 6] = [
        Quality::Good,
        Quality::BadCommunication,
        Quality::BadDevice,
        Quality::BadDecode,
        Quality::Stale,
        Quality::TimeSubstituted,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The quality for a wire code.
    pub fn from_code(code: u8) -> Option<Quality> {
        Quality::ALL.get(usize::from(code)).copied()
    }

    /// The spelling shared with the agent's CLI and the database (`good`, `bad-communication`,
    /// `bad-device`, `bad-decode`, `stale`, `time-substituted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::BadCommunication => "bad-communication",
            Quality::BadDevice => "bad-device",
            Quality::BadDecode => "bad-decode",
            Quality::Stale => "stale",
            Quality::TimeSubstituted => "time-substituted",
        }
    }

    /// The quality for its spelling.
    pub fn from_name(name: &str) -> Option<Quality> {
        Quality::ALL.into_iter().find(|q| q.as_str() == name)
    }
}

/// A value on the wire (the agent's `Value`).
#[derive(Debug, Clone, PartialEq)]
pub enum WireValue {
    /// Coils, discrete inputs, bits, bool tags.
    Bool(bool),
    /// Signed integers.
    Int(i64),
    /// Unsigned integers that do not fit an `i64`.
    UInt(u64),
    /// Floats; carried bit-exactly.
    Float(f64),
    /// Strings (at most [`MAX_STRING_BYTES`]).
    Text(String),
}

/// What a totalizer did at a reading, instead of a negative jump.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Counter {
    /// The counter wrapped; `delta` is the quantity counted across the wrap.
    Rollover {
        /// Quantity counted since the previous reading.
        delta: f64,
    },
    /// The counter went back (reset or replaced); `previous` is the total before.
    Reset {
        /// The total before the reset.
        previous: f64,
    },
}

/// One reading of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct WireReading {
    /// Tag id: the index of the tag in the birth catalog of the batch's `config_hash`.
    pub tag: u32,
    /// When the request was sent, UTC milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The value (the agent sends one only with good quality, but the format does not care).
    pub value: Option<WireValue>,
    /// Quality.
    pub quality: Quality,
    /// Protocol status, e.g. the Modbus exception code for [`Quality::BadDevice`].
    pub status: Option<u32>,
    /// Why the quality is not good (human readable, at most [`MAX_STRING_BYTES`]).
    pub error: Option<String>,
    /// Totalizer rollover or reset detected at this reading.
    pub counter: Option<Counter>,
}

/// A business record (gantry batch record, delivery, …) that must never be dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Where it comes from: a device or record name.
    pub source: String,
    /// What it is, e.g. `gantry-batch`, `delivery`.
    pub kind: String,
    /// Per-source sequence number; a skipped number is reported as a [`Gap`] with
    /// [`GapReason::MissedEvent`].
    pub seq: u64,
    /// When it was read (or its own timestamp), UTC ms.
    pub ts_ms: i64,
    /// Its fields, in order.
    pub fields: Vec<(String, WireValue)>,
}

/// Why readings were lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapReason {
    /// The agent's buffer was full and the oldest data was dropped.
    BufferFull,
    /// Data older than the buffer's maximum age was dropped.
    BufferAge,
    /// A device's record sequence skipped numbers (events the agent never saw).
    MissedEvent,
    /// Anything else, explained.
    Other(String),
}

/// Readings the agent knows it lost, reported so the cloud can count them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The tags concerned; empty means every tag.
    pub tags: Vec<u32>,
    /// Start of the lost interval, UTC ms.
    pub from_ms: i64,
    /// End of the lost interval, UTC ms.
    pub to_ms: i64,
    /// How many readings (or events) were lost (0 when [`Gap::count_known`] is false).
    pub count: u64,
    /// Whether `count` is known. A crash window whose readings the agent could not count, or
    /// a buffer that vanished, is reported with an unknown count: a span to look at, not a
    /// number to add.
    pub count_known: bool,
    /// Why.
    pub reason: GapReason,
}

impl Gap {
    /// A gap of `count` known readings.
    pub fn counted(tags: Vec<u32>, from_ms: i64, to_ms: i64, count: u64, reason: GapReason) -> Gap {
        Gap {
            tags,
            from_ms,
            to_ms,
            count,
            count_known: true,
            reason,
        }
    }

    /// A gap whose count is unknown.
    pub fn uncounted(tags: Vec<u32>, from_ms: i64, to_ms: i64, reason: GapReason) -> Gap {
        Gap {
            tags,
            from_ms,
            to_ms,
            count: 0,
            count_known: false,
            reason,
        }
    }
}

/// One data batch: what one `data` message carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Site id (topic rules).
    pub site: String,
    /// Agent id (topic rules).
    pub agent: String,
    /// Per buffer database, persistent, never reused: a re-send carries the same id, and the
    /// cloud de-duplicates on (site, agent, buffer_epoch, batch_id).
    pub batch_id: u64,
    /// The identity of the buffer database the batch comes from (0: a version 1 frame, or a
    /// sender without one). [`Batch::new`] leaves it 0.
    pub buffer_epoch: u64,
    /// Hash of the configuration whose birth catalog gives the tag ids.
    pub config_hash: String,
    /// When the batch was made, UTC ms.
    pub created_ms: i64,
    /// The readings. [`decode`] returns them sorted by (tag, ts_ms), readings with equal keys in
    /// the order they were encoded in ([`Batch::sort_readings`] gives the same order).
    pub readings: Vec<WireReading>,
    /// Business records, in order.
    pub events: Vec<Event>,
    /// Reported losses, in order.
    pub gaps: Vec<Gap>,
}

impl Batch {
    /// An empty batch.
    pub fn new(
        site: impl Into<String>,
        agent: impl Into<String>,
        batch_id: u64,
        config_hash: impl Into<String>,
        created_ms: i64,
    ) -> Batch {
        Batch {
            site: site.into(),
            agent: agent.into(),
            batch_id,
            buffer_epoch: 0,
            config_hash: config_hash.into(),
            created_ms,
            readings: Vec::new(),
            events: Vec::new(),
            gaps: Vec::new(),
        }
    }

    /// Sort the readings the way [`decode`] returns them: by (tag, ts_ms), stable.
    pub fn sort_readings(&mut self) {
        self.readings.sort_by_key(|r| (r.tag, r.ts_ms));
    }

    /// A digest of what the batch carries (tag map hash, readings, events, gaps), not of how or
    /// when it was framed (identity, created time, compression): a re-send of the same lease has
    /// the same digest, a different batch under a reused identity almost surely not. The cloud
    /// keeps it in its ledger and never acknowledges a batch as a duplicate when it differs.
    /// FNV-1a 64 over a canonical byte form, readings taken in (tag, ts_ms) order (stable), as
    /// [`decode`] returns them.
    pub fn content_digest(&self) -> u64 {
        let mut h = Fnv64::new();
        h.str(&self.config_hash);
        let mut order: Vec<&WireReading> = self.readings.iter().collect();
        order.sort_by_key(|r| (r.tag, r.ts_ms));
        h.u64(order.len() as u64);
        for r in order {
            h.u64(u64::from(r.tag));
            h.u64(r.ts_ms as u64);
            h.bytes(&[r.quality.code()]);
            h.value(r.value.as_ref());
            h.u64(r.status.map_or(u64::MAX, u64::from));
            match &r.error {
                Some(e) => h.str(e),
                None => h.bytes(&[0xff]),
            }
            match r.counter {
                None => h.bytes(&[0]),
                Some(Counter::Rollover { delta }) => {
                    h.bytes(&[1]);
                    h.u64(delta.to_bits());
                }
                Some(Counter::Reset { previous }) => {
                    h.bytes(&[2]);
                    h.u64(previous.to_bits());
                }
            }
        }
        h.u64(self.events.len() as u64);
        for e in &self.events {
            h.str(&e.source);
            h.str(&e.kind);
            h.u64(e.seq);
            h.u64(e.ts_ms as u64);
            h.u64(e.fields.len() as u64);
            for (name, v) in &e.fields {
                h.str(name);
                h.value(Some(v));
            }
        }
        h.u64(self.gaps.len() as u64);
        for g in &self.gaps {
            h.u64(g.tags.len() as u64);
            for t in &g.tags {
                h.u64(u64::from(*t));
            }
            h.u64(g.from_ms as u64);
            h.u64(g.to_ms as u64);
            h.u64(g.count);
            h.bytes(&[u8::from(g.count_known)]);
            match &g.reason {
                GapReason::BufferFull => h.bytes(&[0]),
                GapReason::BufferAge => h.bytes(&[1]),
                GapReason::MissedEvent => h.bytes(&[2]),
                GapReason::Other(s) => {
                    h.bytes(&[3]);
                    h.str(s);
                }
            }
        }
        h.0
    }
}

/// FNV-1a, 64 bits (for [`Batch::content_digest`]; not a defence against a forger).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
    fn value(&mut self, v: Option<&WireValue>) {
        match v {
            None => self.bytes(&[0]),
            Some(WireValue::Bool(b)) => self.bytes(&[1, u8::from(*b)]),
            Some(WireValue::Int(i)) => {
                self.bytes(&[3]);
                self.u64(*i as u64);
            }
            Some(WireValue::UInt(u)) => {
                self.bytes(&[4]);
                self.u64(*u);
            }
            Some(WireValue::Float(f)) => {
                self.bytes(&[5]);
                self.u64(f.to_bits());
            }
            Some(WireValue::Text(t)) => {
                self.bytes(&[6]);
                self.str(t);
            }
        }
    }
}

/// How [`encode_with`] treats the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store the body as is.
    None,
    /// Compress with zstd at this level, unless that does not make it smaller.
    Zstd(i32),
}

/// The uncompressed frame header of a batch, read without decompressing the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    /// Format version.
    pub version: u8,
    /// Flags ([`FLAG_ZSTD`]).
    pub flags: u8,
    /// Site id.
    pub site: String,
    /// Agent id.
    pub agent: String,
    /// Batch id.
    pub batch_id: u64,
    /// Buffer epoch (0 for version 1 frames).
    pub buffer_epoch: u64,
    /// Uncompressed body length.
    pub body_len: usize,
    /// Payload length on the wire.
    pub payload_len: usize,
}

/// Encode a batch with zstd at [`DEFAULT_ZSTD_LEVEL`].
///
/// Fails (rather than writing something the cloud could not decode) when an id is invalid or a
/// limit is exceeded: [`MAX_READINGS`], [`MAX_STRING_BYTES`], [`MAX_BODY_BYTES`].
pub fn encode(batch: &Batch) -> Result<Vec<u8>, WireError> {
    encode_with(batch, Compression::Zstd(DEFAULT_ZSTD_LEVEL))
}

/// Encode a batch with the given compression.
pub fn encode_with(batch: &Batch, compression: Compression) -> Result<Vec<u8>, WireError> {
    validate_id(&batch.site)?;
    validate_id(&batch.agent)?;
    let body = encode_body(batch)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(WireError::TooLarge {
            what: "batch body",
            len: body.len() as u64,
            max: MAX_BODY_BYTES as u64,
        });
    }
    let mut flags = 0;
    let mut compressed = None;
    if let Compression::Zstd(level) = compression {
        let z = zstd_compress(&body, level)?;
        if z.len() < body.len() {
            flags |= FLAG_ZSTD;
            compressed = Some(z);
        }
    }
    let payload = compressed.as_deref().unwrap_or(&body);
    Ok(frame(
        flags,
        &batch.site,
        &batch.agent,
        (batch.buffer_epoch, batch.batch_id),
        body.len(),
        payload,
    ))
}

thread_local! {
    /// One zstd compression context per thread, reused: creating one per batch (and zeroing its
    /// tables) was a visible share of the agent's buffer thread (issue 14, perf).
    static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// One zstd decompression context per thread, reused.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `zstd::bulk::compress` with this thread's reused context.
fn zstd_compress(body: &[u8], level: i32) -> Result<Vec<u8>, WireError> {
    let err = |e: std::io::Error| WireError::Compress(e.to_string());
    CCTX.with(|c| {
        // Never re-entered (no callback runs inside), so the borrow cannot fail; if it ever
        // did, a fresh context does the same work.
        let Ok(mut slot) = c.try_borrow_mut() else {
            return zstd::bulk::compress(body, level).map_err(err);
        };
        match slot.as_mut() {
            Some((l, z)) if *l == level => z.compress(body).map_err(err),
            _ => {
                let mut z = zstd::bulk::Compressor::new(level).map_err(err)?;
                let out = z.compress(body).map_err(err)?;
                *slot = Some((level, z));
                Ok(out)
            }
        }
    })
}

/// `zstd::bulk::decompress` (at most `capacity` bytes) with this thread's reused context.
fn zstd_decompress(payload: &[u8], capacity: usize) -> Result<Vec<u8>, WireError> {
    let err = |e: std::io::Error| WireError::Decompress(e.to_string());
    DCTX.with(|c| {
        let Ok(mut slot) = c.try_borrow_mut() else {
            return zstd::bulk::decompress(payload, capacity).map_err(err);
        };
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(err)?);
        }
        match slot.as_mut() {
            Some(z) => z.decompress(payload, capacity).map_err(err),
            None => zstd::bulk::decompress(payload, capacity).map_err(err),
        }
    })
}

/// Wrap a payload in the frame (header and checksum); no checks.
fn frame(
    flags: u8,
    site: &str,
    agent: &str,
    (buffer_epoch, batch_id): (u64, u64),
    body_len: usize,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + site.len() + agent.len() + 40);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(flags);
    put_str(&mut out, site);
    put_str(&mut out, agent);
    put_varint(&mut out, batch_id);
    put_varint(&mut out, buffer_epoch);
    put_varint(&mut out, body_len as u64);
    put_varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Read and check the frame: magic, version, header fields, checksum.
fn parse_frame(bytes: &[u8]) -> Result<(BatchHeader, &[u8]), WireError> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(WireError::BadMagic);
    }
    let mut r = Reader::new(bytes);
    r.bytes(MAGIC.len(), "magic")?;
    let version = r.u8("format version")?;
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(WireError::UnsupportedVersion(version));
    }
    let flags = r.u8("flags")?;
    let site_len = r.len("site", MAX_ID_LEN)?;
    let site = r.bytes(site_len, "site")?;
    let agent_len = r.len("agent", MAX_ID_LEN)?;
    let agent = r.bytes(agent_len, "agent")?;
    let batch_id = r.varint("batch id")?;
    let buffer_epoch = if version >= 2 {
        r.varint("buffer epoch")?
    } else {
        0
    };
    let body_len = r.len("batch body", MAX_BODY_BYTES)?;
    let payload_len = r.len("payload", MAX_BODY_BYTES)?;
    let payload = r.bytes(payload_len, "payload")?;
    let covered = r.pos();
    let crc = r.bytes(4, "checksum")?;
    if r.remaining() != 0 {
        return Err(WireError::Corrupt(format!(
            "{} bytes after the checksum",
            r.remaining()
        )));
    }
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c(&bytes[..covered]) != stored {
        return Err(WireError::Corrupt("checksum mismatch".into()));
    }
    if flags & !FLAG_ZSTD != 0 {
        return Err(WireError::Corrupt(format!("unknown flags {flags:#04x}")));
    }
    if flags & FLAG_ZSTD == 0 && payload_len != body_len {
        return Err(WireError::Corrupt(format!(
            "uncompressed payload of {payload_len} bytes, body length says {body_len}"
        )));
    }
    let id = |b: &[u8], what: &str| -> Result<String, WireError> {
        let s = std::str::from_utf8(b)
            .map_err(|_| WireError::BadId(format!("{what}: not valid UTF-8")))?;
        validate_id(s)?;
        Ok(s.to_string())
    };
    let header = BatchHeader {
        version,
        flags,
        site: id(site, "site")?,
        agent: id(agent, "agent")?,
        batch_id,
        buffer_epoch,
        body_len,
        payload_len,
    };
    Ok((header, payload))
}

/// The same batch under another identity: the frame of `bytes` (checksum verified) with `site`,
/// `agent`, `batch_id` and `buffer_epoch` in its header, the (compressed) body untouched, so nothing is decoded or
/// compressed again. The agent's buffer uses it to send a stored segment as a batch of its own.
/// Frames of an older format version are refused ([`WireError::UnsupportedVersion`]): the caller
/// decodes and encodes those.
pub fn reframe(
    bytes: &[u8],
    (site, agent): (&str, &str),
    batch_id: u64,
    buffer_epoch: u64,
) -> Result<Vec<u8>, WireError> {
    validate_id(site)?;
    validate_id(agent)?;
    let (h, payload) = parse_frame(bytes)?;
    if h.version != FORMAT_VERSION {
        return Err(WireError::UnsupportedVersion(h.version));
    }
    Ok(frame(
        h.flags,
        site,
        agent,
        (buffer_epoch, batch_id),
        h.body_len,
        payload,
    ))
}

/// Read the header of a batch (and verify its checksum) without decompressing the body.
pub fn peek_header(bytes: &[u8]) -> Result<BatchHeader, WireError> {
    parse_frame(bytes).map(|(h, _)| h)
}

/// (site, agent, batch id) of a batch, checksum verified, without decompressing the body. The
/// de-duplication key also needs the buffer epoch: [`peek_header`] has it.
pub fn decode_identity(bytes: &[u8]) -> Result<(String, String, u64), WireError> {
    let h = peek_header(bytes)?;
    Ok((h.site, h.agent, h.batch_id))
}

/// Decode a batch. Never panics; any defect is a [`WireError`]. Readings come back sorted by
/// (tag, ts_ms) (see [`Batch::readings`]).
pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
    let (h, payload) = parse_frame(bytes)?;
    if h.flags & FLAG_ZSTD != 0 {
        // Bounded: zstd fails rather than write past `body_len`, itself ≤ MAX_BODY_BYTES.
        let body = zstd_decompress(payload, h.body_len)?;
        if body.len() != h.body_len {
            return Err(WireError::Corrupt(format!(
                "body decompressed to {} bytes, header says {}",
                body.len(),
                h.body_len
            )));
        }
        decode_body(&body, h)
    } else {
        decode_body(payload, h)
    }
}

// ---------------------------------------------------------------------------------------------
// Body encoding

fn check_str(s: &str, what: &'static str) -> Result<(), WireError> {
    if s.len() > MAX_STRING_BYTES {
        return Err(WireError::TooLarge {
            what,
            len: s.len() as u64,
            max: MAX_STRING_BYTES as u64,
        });
    }
    Ok(())
}

fn check_count(n: usize, what: &'static str, max: usize) -> Result<(), WireError> {
    if n > max {
        return Err(WireError::TooLarge {
            what,
            len: n as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// How a decimal-coded float is rebuilt; the encoder uses the same function to check.
fn decimal_value(m: i64, k: u8) -> f64 {
    m as f64 / POW10[usize::from(k)]
}

fn decimal_with(f: f64, k: u8) -> Option<i64> {
    let s = f * POW10[usize::from(k)];
    if s.is_nan() || s.abs() >= EXACT_INT {
        return None; // also infinities
    }
    let m = s.round() as i64;
    (decimal_value(m, k).to_bits() == f.to_bits()).then_some(m)
}

/// The decimal form of `f` (`m / 10^k` giving the same bits), trying the tag's previous `k`
/// first so the mantissa deltas stay small.
fn decimal_form(f: f64, prev_k: Option<u8>) -> Option<(u8, i64)> {
    if let Some(k) = prev_k {
        if let Some(m) = decimal_with(f, k) {
            return Some((k, m));
        }
    }
    (0..=MAX_DECIMALS).find_map(|k| decimal_with(f, k).map(|m| (k, m)))
}

/// Per-tag predictor state for values; reset at each tag run.
#[derive(Default)]
struct TagState {
    int: i64,
    uint: u64,
    bits: u64,
    dec: Option<(u8, i64)>,
}

fn put_rle(out: &mut Vec<u8>, codes: impl Iterator<Item = u8>) {
    let mut run: Option<(u8, u64)> = None;
    for c in codes {
        match &mut run {
            Some((rc, n)) if *rc == c => *n += 1,
            _ => {
                if let Some((rc, n)) = run {
                    out.push(rc);
                    put_varint(out, n);
                }
                run = Some((c, 1));
            }
        }
    }
    if let Some((rc, n)) = run {
        out.push(rc);
        put_varint(out, n);
    }
}

fn put_bitmap(out: &mut Vec<u8>, bits: impl Iterator<Item = bool>, n: usize) {
    let start = out.len();
    out.resize(start + n.div_ceil(8), 0);
    for (i, b) in bits.enumerate() {
        if b {
            out[start + i / 8] |= 1 << (i % 8);
        }
    }
}

fn put_field_value(out: &mut Vec<u8>, v: &WireValue) -> Result<(), WireError> {
    match v {
        WireValue::Bool(false) => out.push(T_FALSE),
        WireValue::Bool(true) => out.push(T_TRUE),
        WireValue::Int(i) => {
            out.push(T_INT);
            put_zigzag(out, *i);
        }
        WireValue::UInt(u) => {
            out.push(T_UINT);
            put_varint(out, *u);
        }
        WireValue::Float(f) => {
            out.push(T_FLOAT);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        WireValue::Text(s) => {
            check_str(s, "event text field")?;
            out.push(T_TEXT);
            put_str(out, s);
        }
    }
    Ok(())
}

fn encode_body(b: &Batch) -> Result<Vec<u8>, WireError> {
    let n = b.readings.len();
    check_count(n, "reading count", MAX_READINGS)?;
    check_count(b.events.len(), "event count", MAX_EVENTS)?;
    check_count(b.gaps.len(), "gap count", MAX_GAPS)?;
    check_str(&b.config_hash, "config hash")?;

    let mut out = Vec::with_capacity(64 + n * 6);
    put_str(&mut out, &b.config_hash);
    put_zigzag(&mut out, b.created_ms);

    // Readings in (tag, ts) order, stable.
    let mut order: Vec<&WireReading> = b.readings.iter().collect();
    // Merged batches are usually in order already: one pass instead of a sort then.
    if !order.is_sorted_by_key(|r| (r.tag, r.ts_ms)) {
        order.sort_by_key(|r| (r.tag, r.ts_ms));
    }
    put_varint(&mut out, n as u64);

    // Tag runs: (first index, length).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, r) in order.iter().enumerate() {
        match runs.last_mut() {
            Some((start, len)) if order[*start].tag == r.tag => *len += 1,
            _ => runs.push((i, 1)),
        }
    }
    put_varint(&mut out, runs.len() as u64);
    let mut prev_tag = 0u32;
    for &(start, len) in &runs {
        let tag = order[start].tag;
        put_varint(&mut out, u64::from(tag - prev_tag));
        put_varint(&mut out, len as u64);
        prev_tag = tag;
    }

    // Timestamps.
    let mut base = b.created_ms;
    for &(start, len) in &runs {
        let first = order[start].ts_ms;
        put_zigzag(&mut out, first.wrapping_sub(base));
        base = first;
        let (mut prev_ts, mut prev_d) = (first, 0i64);
        for r in &order[start + 1..start + len] {
            let d = r.ts_ms.wrapping_sub(prev_ts);
            put_zigzag(&mut out, d.wrapping_sub(prev_d));
            prev_ts = r.ts_ms;
            prev_d = d;
        }
    }

    put_rle(&mut out, order.iter().map(|r| r.quality.code()));

    // Values go to their own buffer first: the type codes (which depend on the per-tag
    // predictor state) precede them.
    let mut types = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n * 2);
    for &(start, len) in &runs {
        let mut st = TagState::default();
        for r in &order[start..start + len] {
            let code = match &r.value {
                None => T_NONE,
                Some(WireValue::Bool(false)) => T_FALSE,
                Some(WireValue::Bool(true)) => T_TRUE,
                Some(WireValue::Int(i)) => {
                    put_zigzag(&mut values, i.wrapping_sub(st.int));
                    st.int = *i;
                    T_INT
                }
                Some(WireValue::UInt(u)) => {
                    put_zigzag(&mut values, u.wrapping_sub(st.uint) as i64);
                    st.uint = *u;
                    T_UINT
                }
                Some(WireValue::Float(f)) => {
                    let bits = f.to_bits();
                    let code = match decimal_form(*f, st.dec.map(|(k, _)| k)) {
                        Some((k, m)) => {
                            let base = match st.dec {
                                Some((pk, pm)) if pk == k => pm,
                                _ => 0,
                            };
                            put_zigzag(&mut values, m.wrapping_sub(base));
                            st.dec = Some((k, m));
                            T_DECIMAL + k
                        }
                        None => {
                            values.extend_from_slice(&(bits ^ st.bits).to_be_bytes());
                            T_FLOAT
                        }
                    };
                    st.bits = bits;
                    code
                }
                Some(WireValue::Text(s)) => {
                    check_str(s, "text value")?;
                    put_str(&mut values, s);
                    T_TEXT
                }
            };
            types.push(code);
        }
    }
    put_rle(&mut out, types.into_iter());
    out.extend_from_slice(&values);

    // Optional columns.
    let has_status = order.iter().any(|r| r.status.is_some());
    let has_error = order.iter().any(|r| r.error.is_some());
    let has_counter = order.iter().any(|r| r.counter.is_some());
    let mut opt = 0u8;
    if has_status {
        opt |= OPT_STATUS;
    }
    if has_error {
        opt |= OPT_ERROR;
    }
    if has_counter {
        opt |= OPT_COUNTER;
    }
    out.push(opt);
    if has_status {
        put_bitmap(&mut out, order.iter().map(|r| r.status.is_some()), n);
        for s in order.iter().filter_map(|r| r.status) {
            put_varint(&mut out, u64::from(s));
        }
    }
    if has_error {
        put_bitmap(&mut out, order.iter().map(|r| r.error.is_some()), n);
        for e in order.iter().filter_map(|r| r.error.as_deref()) {
            check_str(e, "error")?;
            put_str(&mut out, e);
        }
    }
    if has_counter {
        put_bitmap(&mut out, order.iter().map(|r| r.counter.is_some()), n);
        for c in order.iter().filter_map(|r| r.counter) {
            let (code, x) = match c {
                Counter::Rollover { delta } => (0u8, delta),
                Counter::Reset { previous } => (1u8, previous),
            };
            out.push(code);
            out.extend_from_slice(&x.to_bits().to_be_bytes());
        }
    }

    // Events.
    put_varint(&mut out, b.events.len() as u64);
    let mut prev_ts = b.created_ms;
    for e in &b.events {
        check_str(&e.source, "event source")?;
        check_str(&e.kind, "event kind")?;
        put_str(&mut out, &e.source);
        put_str(&mut out, &e.kind);
        put_varint(&mut out, e.seq);
        put_zigzag(&mut out, e.ts_ms.wrapping_sub(prev_ts));
        prev_ts = e.ts_ms;
        check_count(e.fields.len(), "event field count", MAX_FIELDS)?;
        put_varint(&mut out, e.fields.len() as u64);
        for (name, v) in &e.fields {
            check_str(name, "event field name")?;
            put_str(&mut out, name);
            put_field_value(&mut out, v)?;
        }
    }

    // Gaps.
    put_varint(&mut out, b.gaps.len() as u64);
    for g in &b.gaps {
        check_count(g.tags.len(), "gap tag count", MAX_READINGS)?;
        put_varint(&mut out, g.tags.len() as u64);
        for &t in &g.tags {
            put_varint(&mut out, u64::from(t));
        }
        put_zigzag(&mut out, g.from_ms.wrapping_sub(b.created_ms));
        put_zigzag(&mut out, g.to_ms.wrapping_sub(g.from_ms));
        let unknown = if g.count_known { 0 } else { GAP_COUNT_UNKNOWN };
        put_varint(&mut out, if g.count_known { g.count } else { 0 });
        match &g.reason {
            GapReason::BufferFull => out.push(unknown),
            GapReason::BufferAge => out.push(1 | unknown),
            GapReason::MissedEvent => out.push(2 | unknown),
            GapReason::Other(s) => {
                check_str(s, "gap reason")?;
                out.push(3 | unknown);
                put_str(&mut out, s);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Body decoding

fn corrupt(msg: impl Into<String>) -> WireError {
    WireError::Corrupt(msg.into())
}

/// Read RLE pairs covering exactly `n` items, calling `each(code, run)`.
fn read_rle(
    r: &mut Reader<'_>,
    n: usize,
    what: &'static str,
    mut each: impl FnMut(u8, usize) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut filled = 0usize;
    while filled < n {
        let code = r.u8(what)?;
        let run = r.varint(what)?;
        if run == 0 || run > (n - filled) as u64 {
            return Err(corrupt(format!(
                "{what}: run of {run} with {} left",
                n - filled
            )));
        }
        each(code, run as usize)?;
        filled += run as usize;
    }
    Ok(())
}

/// Read a presence bitmap of `n` bits (padding must be zero).
fn read_bitmap(r: &mut Reader<'_>, n: usize, what: &'static str) -> Result<Vec<bool>, WireError> {
    let bytes = r.bytes(n.div_ceil(8), what)?;
    if n % 8 != 0 {
        if let Some(&last) = bytes.last() {
            if last >> (n % 8) != 0 {
                return Err(corrupt(format!("{what}: padding bits set")));
            }
        }
    }
    Ok((0..n).map(|i| bytes[i / 8] & (1 << (i % 8)) != 0).collect())
}

fn read_field_value(r: &mut Reader<'_>) -> Result<WireValue, WireError> {
    Ok(match r.u8("event field type")? {
        T_FALSE => WireValue::Bool(false),
        T_TRUE => WireValue::Bool(true),
        T_INT => WireValue::Int(r.zigzag("event int field")?),
        T_UINT => WireValue::UInt(r.varint("event uint field")?),
        T_FLOAT => WireValue::Float(f64::from_bits(r.u64_be("event float field")?)),
        T_TEXT => WireValue::Text(r.str("event text field", MAX_STRING_BYTES)?),
        other => return Err(corrupt(format!("event field type code {other}"))),
    })
}

fn decode_body(body: &[u8], h: BatchHeader) -> Result<Batch, WireError> {
    let mut r = Reader::new(body);
    let config_hash = r.str("config hash", MAX_STRING_BYTES)?;
    let created_ms = r.zigzag("created time")?;

    // Every reading takes at least one byte (its timestamp), so `count` caps n by the input.
    let n = r.count("reading count", MAX_READINGS)?;
    let n_runs = r.count("tag run count", n)?;
    let mut runs: Vec<(u32, usize)> = Vec::with_capacity(n_runs);
    let mut total = 0usize;
    for i in 0..n_runs {
        let delta = r.varint("tag run")?;
        if i > 0 && delta == 0 {
            return Err(corrupt("tag runs not strictly increasing"));
        }
        let prev = runs.last().map_or(0, |&(t, _)| u64::from(t));
        let tag = prev
            .checked_add(delta)
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| corrupt("tag id beyond u32"))?;
        let len = r.varint("tag run")?;
        if len == 0 || len > (n - total) as u64 {
            return Err(corrupt(format!(
                "tag run of {len} readings with {} left",
                n - total
            )));
        }
        total += len as usize;
        runs.push((tag, len as usize));
    }
    if total != n {
        return Err(corrupt(format!("tag runs cover {total} of {n} readings")));
    }

    let mut readings: Vec<WireReading> = Vec::with_capacity(n);
    let mut base = created_ms;
    for &(tag, len) in &runs {
        let first = base.wrapping_add(r.zigzag("timestamps")?);
        base = first;
        let (mut prev_ts, mut prev_d) = (first, 0i64);
        for i in 0..len {
            let ts = if i == 0 {
                first
            } else {
                let d = prev_d.wrapping_add(r.zigzag("timestamps")?);
                let ts = prev_ts.wrapping_add(d);
                if ts < prev_ts {
                    return Err(corrupt(format!("timestamps of tag {tag} not sorted")));
                }
                prev_d = d;
                ts
            };
            prev_ts = ts;
            readings.push(WireReading {
                tag,
                ts_ms: ts,
                value: None,
                quality: Quality::Good,
                status: None,
                error: None,
                counter: None,
            });
        }
    }

    let mut at = 0usize;
    read_rle(&mut r, n, "quality", |code, run| {
        let q = Quality::from_code(code).ok_or_else(|| corrupt(format!("quality code {code}")))?;
        for rd in &mut readings[at..at + run] {
            rd.quality = q;
        }
        at += run;
        Ok(())
    })?;

    let mut types: Vec<u8> = Vec::with_capacity(n);
    read_rle(&mut r, n, "value type", |code, run| {
        if !(code <= T_TEXT || (T_DECIMAL..=T_DECIMAL + MAX_DECIMALS).contains(&code)) {
            return Err(corrupt(format!("value type code {code}")));
        }
        types.extend(std::iter::repeat_n(code, run));
        Ok(())
    })?;

    let mut i = 0usize;
    for &(_, len) in &runs {
        let mut st = TagState::default();
        for _ in 0..len {
            let code = types[i];
            let value = match code {
                T_NONE => None,
                T_FALSE => Some(WireValue::Bool(false)),
                T_TRUE => Some(WireValue::Bool(true)),
                T_INT => {
                    st.int = st.int.wrapping_add(r.zigzag("int value")?);
                    Some(WireValue::Int(st.int))
                }
                T_UINT => {
                    st.uint = st.uint.wrapping_add(r.zigzag("uint value")? as u64);
                    Some(WireValue::UInt(st.uint))
                }
                T_FLOAT => {
                    st.bits ^= r.u64_be("float value")?;
                    Some(WireValue::Float(f64::from_bits(st.bits)))
                }
                T_TEXT => Some(WireValue::Text(r.str("text value", MAX_STRING_BYTES)?)),
                _ => {
                    let k = code - T_DECIMAL;
                    let base = match st.dec {
                        Some((pk, pm)) if pk == k => pm,
                        _ => 0,
                    };
                    let m = base.wrapping_add(r.zigzag("decimal value")?);
                    st.dec = Some((k, m));
                    let f = decimal_value(m, k);
                    st.bits = f.to_bits();
                    Some(WireValue::Float(f))
                }
            };
            readings[i].value = value;
            i += 1;
        }
    }

    let opt = r.u8("optional columns")?;
    if opt & !(OPT_STATUS | OPT_ERROR | OPT_COUNTER) != 0 {
        return Err(corrupt(format!("unknown optional columns {opt:#04x}")));
    }
    if opt & OPT_STATUS != 0 {
        let present = read_bitmap(&mut r, n, "status bitmap")?;
        for (rd, _) in readings.iter_mut().zip(present).filter(|(_, p)| *p) {
            let s = r.varint("status")?;
            rd.status = Some(u32::try_from(s).map_err(|_| corrupt("status beyond u32"))?);
        }
    }
    if opt & OPT_ERROR != 0 {
        let present = read_bitmap(&mut r, n, "error bitmap")?;
        for (rd, _) in readings.iter_mut().zip(present).filter(|(_, p)| *p) {
            rd.error = Some(r.str("error", MAX_STRING_BYTES)?);
        }
    }
    if opt & OPT_COUNTER != 0 {
        let present = read_bitmap(&mut r, n, "counter bitmap")?;
        for (rd, _) in readings.iter_mut().zip(present).filter(|(_, p)| *p) {
            let code = r.u8("counter")?;
            let x = f64::from_bits(r.u64_be("counter")?);
            rd.counter = Some(match code {
                0 => Counter::Rollover { delta: x },
                1 => Counter::Reset { previous: x },
                other => return Err(corrupt(format!("counter code {other}"))),
            });
        }
    }

    let n_events = r.count("event count", MAX_EVENTS)?;
    let mut events = Vec::with_capacity(n_events);
    let mut prev_ts = created_ms;
    for _ in 0..n_events {
        let source = r.str("event source", MAX_STRING_BYTES)?;
        let kind = r.str("event kind", MAX_STRING_BYTES)?;
        let seq = r.varint("event seq")?;
        let ts_ms = prev_ts.wrapping_add(r.zigzag("event time")?);
        prev_ts = ts_ms;
        let n_fields = r.count("event field count", MAX_FIELDS)?;
        let mut fields = Vec::with_capacity(n_fields);
        for _ in 0..n_fields {
            let name = r.str("event field name", MAX_STRING_BYTES)?;
            fields.push((name, read_field_value(&mut r)?));
        }
        events.push(Event {
            source,
            kind,
            seq,
            ts_ms,
            fields,
        });
    }

    let n_gaps = r.count("gap count", MAX_GAPS)?;
    let mut gaps = Vec::with_capacity(n_gaps);
    for _ in 0..n_gaps {
        let n_tags = r.count("gap tag count", MAX_READINGS)?;
        let mut tags = Vec::with_capacity(n_tags);
        for _ in 0..n_tags {
            let t = r.varint("gap tag")?;
            tags.push(u32::try_from(t).map_err(|_| corrupt("gap tag beyond u32"))?);
        }
        let from_ms = created_ms.wrapping_add(r.zigzag("gap from")?);
        let to_ms = from_ms.wrapping_add(r.zigzag("gap to")?);
        let count = r.varint("gap count")?;
        let code = r.u8("gap reason")?;
        let (code, unknown) = if h.version >= 2 {
            (code & !GAP_COUNT_UNKNOWN, code & GAP_COUNT_UNKNOWN != 0)
        } else {
            (code, false)
        };
        let reason = match code {
            0 => GapReason::BufferFull,
            1 => GapReason::BufferAge,
            2 => GapReason::MissedEvent,
            3 => GapReason::Other(r.str("gap reason", MAX_STRING_BYTES)?),
            other => return Err(corrupt(format!("gap reason code {other}"))),
        };
        if unknown && count != 0 {
            return Err(corrupt(format!("gap of unknown count with count {count}")));
        }
        // Version 1 agents reported a crash window's unknown count as 0.
        let legacy_unknown = h.version < 2
            && count == 0
            && matches!(&reason, GapReason::Other(s) if s == "unclean-shutdown");
        gaps.push(Gap {
            tags,
            from_ms,
            to_ms,
            count,
            count_known: !(unknown || legacy_unknown),
            reason,
        });
    }

    if r.remaining() != 0 {
        return Err(corrupt(format!(
            "{} bytes left after the body",
            r.remaining()
        )));
    }
    Ok(Batch {
        site: h.site,
        agent: h.agent,
        batch_id: h.batch_id,
        buffer_epoch: h.buffer_epoch,
        config_hash,
        created_ms,
        readings,
        events,
        gaps,
    })
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
