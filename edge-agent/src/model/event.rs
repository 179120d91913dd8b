//! Event capture vocabulary shared by the event drivers and the buffer: the cursor of a
//! definition's last committed record, the digest that recognises a record, and the ledger
//! (implemented by the buffer) that persists cursors and confirms commits; what makes a
//! definition fire (`TriggerMode`) and what its handshake writes (`HandshakeValue`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flowsquare_wire::WireValue;

/// The last committed record of a definition (persisted in the buffer's database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Extended sequence number.
    pub seq: u64,
    /// Digest of its fields ([`digest`]): recognises the same record after a restart when the
    /// trigger cannot (a flag still high).
    pub digest: u64,
    /// When it was read, UTC ms.
    pub ts_ms: i64,
    /// Was its handshake written?
    pub acked: bool,
}

/// A stable digest of a record's fields (64-bit FNV-1a over names, type tags and values).
pub fn digest(fields: &[(String, WireValue)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, v) in fields {
        eat(name.as_bytes());
        eat(&[0]);
        match v {
            WireValue::Bool(b) => eat(&[1, u8::from(*b)]),
            WireValue::Int(i) => {
                eat(&[2]);
                eat(&i.to_be_bytes())
            }
            WireValue::UInt(u) => {
                eat(&[3]);
                eat(&u.to_be_bytes())
            }
            WireValue::Float(f) => {
                eat(&[4]);
                eat(&f.to_bits().to_be_bytes())
            }
            WireValue::Text(s) => {
                eat(&[5]);
                eat(s.as_bytes());
                eat(&[0]);
            }
        }
    }
    // Never 0, so 0 can mean "unknown" in the database.
    h.max(1)
}

/// A boxed future borrowed from a ledger (the trait is used as `dyn EventLedger`).
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an event driver needs from the buffer: the last committed record of a definition, a
/// confirmation that its records are committed (only then is the handshake written to the PLC),
/// and a place to note the handshake. The buffer implements it (`Buffer::event_ledger`).
pub trait EventLedger: Send + Sync {
    /// The last committed record of `source`.
    fn cursor(&self, source: &str) -> Option<Cursor>;

    /// Wait until `source`'s record `seq` is committed; false after `timeout` (the commit
    /// failed or the buffer is stuck: the driver re-reads the record).
    fn wait_committed<'a>(
        &'a self,
        source: &'a str,
        seq: u64,
        timeout: Duration,
    ) -> LedgerFuture<'a, bool>;

    /// Note that the handshake of `source`'s record `seq` was written.
    fn mark_acked<'a>(&'a self, source: &'a str, seq: u64) -> LedgerFuture<'a, ()>;
}

/// A shared ledger, as the event drivers hold it.
pub type SharedLedger = Arc<dyn EventLedger>;

/// What makes an event definition fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TriggerMode {
    /// A sequence-number register: a new record whenever it changes (skipped numbers are
    /// reported as missed events; it wraps at `seq_rollover`).
    #[default]
    Sequence,
    /// A flag (bit/coil/register ≠ 0): a new record on each rising edge.
    Flag,
}

impl TriggerMode {
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerMode::Sequence => "sequence",
            TriggerMode::Flag => "flag",
        }
    }
}

/// What the handshake writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HandshakeValue {
    /// The record's own sequence number (as the PLC counts it).
    Seq,
    /// A constant bit (coil).
    Bool(bool),
    /// A constant register value.
    Int(i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_tells_records_apart() {
        let a = vec![("bol".to_string(), WireValue::Text("B1".into()))];
        let b = vec![("bol".to_string(), WireValue::Text("B2".into()))];
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&b));
    }
}
