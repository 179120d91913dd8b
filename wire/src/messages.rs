//! The JSON control messages: [`Ack`], [`Birth`], [`Status`], [`Heartbeat`].
//!
//! Each carries `v`, its schema version. Decoding is tolerant so that either side can be
//! upgraded first: unknown fields are ignored and optional fields may be missing. A new
//! optional field does not bump `v`; `v` is bumped only for a change an older reader would
//! misread, and a reader rejects a `v` newer than it knows
//! ([`WireError::UnsupportedMessageVersion`]), e.g. an agent never deletes data on an ack it
//! cannot fully understand. Required fields and the rules of each message are checked on
//! decode (`validate`).
//!
//! JSON numbers: ids and counters are `u64`; consumers in languages with 53-bit numbers must
//! parse them as big integers.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::error::WireError;
use crate::topics::validate_id;

/// The schema version of every control message this build writes (and the newest it reads).
pub const MESSAGE_VERSION: u32 = 1;

/// Largest JSON control message accepted (a birth with thousands of tags fits easily).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Bytes of hex text (either case); `None` if it is not hex.
fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// What all control messages share.
trait Message: Serialize + DeserializeOwned {
    const NAME: &'static str;
    fn validate(&self) -> Result<(), WireError>;
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u32,
}

fn decode_message<M: Message>(bytes: &[u8]) -> Result<M, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            what: M::NAME,
            len: bytes.len() as u64,
            max: MAX_MESSAGE_BYTES as u64,
        });
    }
    // The version first, so that a newer message is reported as such rather than as whatever
    // field it changed.
    let probe: VersionProbe = serde_json::from_slice(bytes)?;
    if probe.v == 0 {
        return Err(WireError::Invalid(format!("{}: v must be ≥ 1", M::NAME)));
    }
    if probe.v > MESSAGE_VERSION {
        return Err(WireError::UnsupportedMessageVersion {
            message: M::NAME,
            v: probe.v,
        });
    }
    let m: M = serde_json::from_slice(bytes)?;
    m.validate()?;
    Ok(m)
}

fn encode_message<M: Message>(m: &M) -> Vec<u8> {
    // Cannot fail: every message is plain structs, strings, numbers, vectors and string-keyed
    // maps, whose derived `Serialize` never errors and which serde_json always accepts
    // (non-finite floats are written as `null`).
    serde_json::to_vec(m).expect("control messages always serialize")
}

fn invalid(message: &str, why: impl std::fmt::Display) -> WireError {
    WireError::Invalid(format!("{message}: {why}"))
}

/// A float that was written as `null` (serde_json's rendering of NaN and infinities) reads
/// back as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(d).map(|o| o.unwrap_or(f64::NAN))
}

/// The outcome an [`Ack`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Committed to the database.
    Committed,
    /// Could not be stored as data and went to the dead-letter table. The agent deletes it all
    /// the same (re-sending would not help) but counts it.
    Rejected,
}

/// Cloud → agent, on `…/ack`, sent only after the database commit of the batches it names.
/// The agent deletes a buffered batch only when an ack names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Schema version.
    pub v: u32,
    /// The batches concerned (at least one).
    pub batch_ids: Vec<u64>,
    /// What happened to them.
    pub status: AckStatus,
    /// Why, for `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The buffer epoch of the batches (from their frames; absent for version 1 frames and
    /// from older clouds). An agent ignores an ack that names another epoch than its buffer's:
    /// batch ids restart in a new buffer database, and an ack meant for the old one must not
    /// delete the new one's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_epoch: Option<u64>,
    /// Authentication tag: lowercase hex HMAC-SHA256, with the key the ingest and the agent
    /// share, of [`Ack::signed_bytes`] (see [`Ack::sign`]). Absent from an ingest without ack
    /// keys; an agent with a key ignores an ack without a valid one ([`Ack::verify`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Message for Ack {
    const NAME: &'static str = "ack";
    fn validate(&self) -> Result<(), WireError> {
        if self.batch_ids.is_empty() {
            return Err(invalid(Self::NAME, "no batch ids"));
        }
        Ok(())
    }
}

impl Ack {
    /// Batches committed.
    pub fn committed(batch_ids: Vec<u64>) -> Ack {
        Ack {
            v: MESSAGE_VERSION,
            batch_ids,
            status: AckStatus::Committed,
            reason: None,
            buffer_epoch: None,
            sig: None,
        }
    }

    /// Batches dead-lettered, and why.
    pub fn rejected(batch_ids: Vec<u64>, reason: impl Into<String>) -> Ack {
        Ack {
            v: MESSAGE_VERSION,
            batch_ids,
            status: AckStatus::Rejected,
            reason: Some(reason.into()),
            buffer_epoch: None,
            sig: None,
        }
    }

    /// The same ack, naming the buffer epoch of its batches (0 = none: version 1 frames).
    pub fn for_epoch(mut self, epoch: u64) -> Ack {
        self.buffer_epoch = (epoch != 0).then_some(epoch);
        self
    }

    /// Whether this ack is meant for a buffer of `epoch` (an ack without an epoch is taken as
    /// meant for any: it comes from an older cloud).
    pub fn is_for_epoch(&self, epoch: u64) -> bool {
        self.buffer_epoch.is_none_or(|e| e == epoch)
    }

    /// The bytes [`Ack::sign`] authenticates: the ack's meaning for agent `agent` of `site`,
    /// every field length-prefixed (8-byte big-endian length, then the bytes) so that no two
    /// different acks give the same bytes:
    /// `"flowsquare-ack-v1"`, site, agent, buffer epoch (decimal; empty when absent), status
    /// (`committed` or `rejected`), batch ids sorted ascending (8 bytes big-endian each),
    /// reason (`"-"` when absent, else `"+"` followed by the reason).
    /// `v`, `sig` and unknown fields are not covered; the order of `batch_ids` does not matter.
    pub fn signed_bytes(&self, site: &str, agent: &str) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u64).to_be_bytes());
            out.extend_from_slice(b);
        }
        let mut ids = self.batch_ids.clone();
        ids.sort_unstable();
        let ids: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
        let epoch = self.buffer_epoch.map(|e| e.to_string()).unwrap_or_default();
        let status = match self.status {
            AckStatus::Committed => "committed",
            AckStatus::Rejected => "rejected",
        };
        let reason = match &self.reason {
            None => "-".to_owned(),
            Some(r) => format!("+{r}"),
        };
        let mut out = Vec::with_capacity(128 + ids.len() + reason.len());
        for f in [
            &b"flowsquare-ack-v1"[..],
            site.as_bytes(),
            agent.as_bytes(),
            epoch.as_bytes(),
            status.as_bytes(),
            &ids,
            reason.as_bytes(),
        ] {
            field(&mut out, f);
        }
        out
    }

    fn mac(&self, site: &str, agent: &str, key: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts a key of any length (a long one is hashed first): `new_from_slice`
        // cannot fail for it.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&self.signed_bytes(site, agent));
        mac
    }

    /// Sign this ack for agent `agent` of `site` with `key` (sets [`Ack::sig`]). Sign last:
    /// any later change to the ack makes the signature invalid.
    pub fn sign(&mut self, site: &str, agent: &str, key: &[u8]) {
        let tag = self.mac(site, agent, key).finalize().into_bytes();
        self.sig = Some(hex(&tag));
    }

    /// The same ack, signed ([`Ack::sign`]).
    pub fn signed(mut self, site: &str, agent: &str, key: &[u8]) -> Ack {
        self.sign(site, agent, key);
        self
    }

    /// Whether [`Ack::sig`] is a valid signature of this ack for agent `agent` of `site`
    /// under `key` (the comparison takes the same time wherever the tags differ). `false`
    /// without a signature.
    pub fn verify(&self, site: &str, agent: &str, key: &[u8]) -> bool {
        let Some(tag) = self.sig.as_deref().and_then(unhex) else {
            return false;
        };
        self.mac(site, agent, key).verify_slice(&tag).is_ok()
    }

    /// Check the rules [`Ack::decode`] enforces (at least one batch id).
    pub fn validate(&self) -> Result<(), WireError> {
        Message::validate(self)
    }

    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode_message(self)
    }

    /// Parse and validate (tolerant of unknown fields; rejects a newer `v`).
    pub fn decode(bytes: &[u8]) -> Result<Ack, WireError> {
        decode_message(bytes)
    }
}

/// A device in the birth catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device name (unique in the config).
    pub name: String,
    /// Protocol, e.g. `modbus-tcp`, `modbus-rtu`.
    pub protocol: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A tag in the birth catalog; its `id` is the `tag` of the readings of batches with the same
/// config hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagInfo {
    /// Tag id: equal to the tag's index in [`Birth::tags`].
    pub id: u32,
    /// Tag name.
    pub name: String,
    /// Engineering unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `gauge`, `totalizer` or `state` (others may be added; readers keep them as text).
    pub kind: String,
    /// Name of its device (one of [`Birth::devices`]).
    pub device: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The configured data type, e.g. `f32`, `u32`, `bool`, `string`.
    pub data_type: String,
    /// Poll interval, ms.
    pub poll_interval_ms: u64,
}

/// An event definition in the birth catalog: the `source` and `kind` of the events it
/// produces, and their fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// Definition name: the `source` of its events (unique in the config).
    pub name: String,
    /// Event kind, e.g. `gantry-batch`.
    pub kind: String,
    /// Name of its device (one of [`Birth::devices`]).
    pub device: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `sequence` or `flag`.
    pub trigger: String,
    /// Sequence numbers wrap after this (sequence triggers); events carry an extended,
    /// never-wrapping `seq` and the device's own number in the `plc_seq` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_rollover: Option<u64>,
    /// Its fields, in order.
    #[serde(default)]
    pub fields: Vec<EventFieldInfo>,
}

/// A field of an event definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFieldInfo {
    /// Field name.
    pub name: String,
    /// The configured data type, e.g. `f32`, `string`.
    pub data_type: String,
    /// Engineering unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Agent → cloud, retained on `…/birth`, published on every connect: who the agent is and the
/// tag catalog of its current config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Birth {
    /// Schema version.
    pub v: u32,
    /// Site id.
    pub site: String,
    /// Agent id.
    pub agent: String,
    /// The agent's software version.
    pub agent_version: String,
    /// Hash of the loaded config; batches name it.
    pub config_hash: String,
    /// When the agent process started, UTC ms.
    pub started_ms: i64,
    /// Devices.
    #[serde(default)]
    pub devices: Vec<DeviceInfo>,
    /// Tags, `tags[i].id == i`.
    #[serde(default)]
    pub tags: Vec<TagInfo>,
    /// Event definitions (absent in births of agents without event capture).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventInfo>,
    /// The agent's buffer database (absent from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<BufferIdentity>,
}

/// Which buffer database an agent sends from: a new epoch means batch ids started again, and
/// whatever the old buffer held and had not delivered is gone unless `salvaged` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferIdentity {
    /// Random, 1..2^53 (exact in JSON and JavaScript), made when the database was created.
    pub epoch: u64,
    /// When the database was created, UTC ms.
    pub created_ms: i64,
    /// Why this database was created: `new` (no database was there: first start, reinstall,
    /// deleted state, a spare gateway), `replaced-corrupt` (the previous one was damaged and
    /// moved aside), `replaced-empty` (a zero-byte or unreadable file was found), or `existing`
    /// for a database that was already there at this start.
    pub origin: String,
    /// For a replaced database: what was recovered from the old one and what was reported as
    /// lost, in words (for the console and the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Message for Birth {
    const NAME: &'static str = "birth";
    fn validate(&self) -> Result<(), WireError> {
        validate_id(&self.site)?;
        validate_id(&self.agent)?;
        if self.config_hash.is_empty() {
            return Err(invalid(Self::NAME, "empty config hash"));
        }
        for (i, t) in self.tags.iter().enumerate() {
            if u64::from(t.id) != i as u64 {
                return Err(invalid(
                    Self::NAME,
                    format!("tag {:?} has id {} at index {i}", t.name, t.id),
                ));
            }
            if !self.devices.iter().any(|d| d.name == t.device) {
                return Err(invalid(
                    Self::NAME,
                    format!("tag {:?} names unknown device {:?}", t.name, t.device),
                ));
            }
        }
        for e in &self.events {
            if !self.devices.iter().any(|d| d.name == e.device) {
                return Err(invalid(
                    Self::NAME,
                    format!("event {:?} names unknown device {:?}", e.name, e.device),
                ));
            }
        }
        Ok(())
    }
}

impl Birth {
    /// Check the rules [`Birth::decode`] enforces: valid ids, non-empty config hash, tag ids
    /// equal to their index, every tag's device listed.
    pub fn validate(&self) -> Result<(), WireError> {
        Message::validate(self)
    }

    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode_message(self)
    }

    /// Parse and validate (tolerant of unknown fields; rejects a newer `v`).
    pub fn decode(bytes: &[u8]) -> Result<Birth, WireError> {
        decode_message(bytes)
    }
}

/// Agent → cloud, retained on `…/status`. Online on connect; offline on a clean shutdown, or
/// published by the broker as the Last Will ([`Status::last_will`]) when the connection is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Schema version.
    pub v: u32,
    /// Whether the agent is connected.
    pub online: bool,
    /// When it was said, UTC ms (for the Last Will: when the lost connection was made, since
    /// the broker cannot stamp it; use the receive time as the time it went offline).
    pub ts_ms: i64,
    /// The agent's software version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Why offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Message for Status {
    const NAME: &'static str = "status";
    fn validate(&self) -> Result<(), WireError> {
        Ok(())
    }
}

impl Status {
    /// The reason the Last Will gives.
    pub const CONNECTION_LOST: &'static str = "connection lost";

    /// Online, published (retained) right after connecting.
    pub fn online(ts_ms: i64, agent_version: impl Into<String>) -> Status {
        Status {
            v: MESSAGE_VERSION,
            online: true,
            ts_ms,
            agent_version: Some(agent_version.into()),
            reason: None,
        }
    }

    /// Offline, published (retained) before a clean disconnect.
    pub fn offline(ts_ms: i64, reason: impl Into<String>) -> Status {
        Status {
            v: MESSAGE_VERSION,
            online: false,
            ts_ms,
            agent_version: None,
            reason: Some(reason.into()),
        }
    }

    /// The Last Will registered with the connection made at `connected_ms`:
    /// `{online: false, reason: "connection lost"}`, retained, on the status topic.
    pub fn last_will(connected_ms: i64) -> Status {
        Status::offline(connected_ms, Status::CONNECTION_LOST)
    }

    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode_message(self)
    }

    /// Parse (tolerant of unknown fields; rejects a newer `v`).
    pub fn decode(bytes: &[u8]) -> Result<Status, WireError> {
        decode_message(bytes)
    }
}

/// The agent's store-and-forward buffer, as reported in a [`Heartbeat`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferFigures {
    /// Rows (batches or records) buffered.
    pub rows: u64,
    /// Bytes buffered.
    pub bytes: u64,
    /// Readings buffered.
    pub readings: u64,
    /// Time of the oldest reading not yet acknowledged, UTC ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_unsent_ms: Option<i64>,
    /// Readings acknowledged per second recently (NaN when unknown; sent as `null`).
    #[serde(deserialize_with = "f64_or_nan")]
    pub drain_rate_per_s: f64,
    /// Estimated seconds to drain the backlog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
}

/// One device's health, in a [`Heartbeat`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceHealth {
    /// Device name.
    pub name: String,
    /// Share of successful requests, 0-1 (NaN when there were none; sent as `null`).
    #[serde(deserialize_with = "f64_or_nan")]
    pub success_rate: f64,
    /// Mean round-trip time, ms (NaN when unknown; sent as `null`).
    #[serde(deserialize_with = "f64_or_nan")]
    pub rtt_ms: f64,
    /// Failed requests since start.
    pub errors: u64,
}

/// Agent → cloud on `…/heartbeat` (QoS 0): periodic health figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Schema version.
    pub v: u32,
    /// When, UTC ms.
    pub ts_ms: i64,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// Buffer figures.
    pub buffer: BufferFigures,
    /// Counters since start by name: `polled`, `buffered`, `sent`, `acked`, `rejected`,
    /// `dropped_buffer_full`, … (names may be added freely).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Per-device health.
    #[serde(default)]
    pub devices: Vec<DeviceHealth>,
}

impl Message for Heartbeat {
    const NAME: &'static str = "heartbeat";
    fn validate(&self) -> Result<(), WireError> {
        Ok(())
    }
}

impl Heartbeat {
    /// JSON bytes. Non-finite floats are written as `null`, which decode reads back as NaN
    /// (as `None` for `eta_s`).
    pub fn encode(&self) -> Vec<u8> {
        encode_message(self)
    }

    /// Parse (tolerant of unknown fields; rejects a newer `v`).
    pub fn decode(bytes: &[u8]) -> Result<Heartbeat, WireError> {
        decode_message(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_golden_json() {
        let a = Ack::committed(vec![41, 42]);
        assert_eq!(
            String::from_utf8(a.encode()).unwrap(),
            r#"{"v":1,"batch_ids":[41,42],"status":"committed"}"#
        );
        let r = Ack::rejected(vec![7], "unknown config hash");
        assert_eq!(
            String::from_utf8(r.encode()).unwrap(),
            r#"{"v":1,"batch_ids":[7],"status":"rejected","reason":"unknown config hash"}"#
        );
        assert_eq!(Ack::decode(&a.encode()).unwrap(), a);
        assert_eq!(Ack::decode(&r.encode()).unwrap(), r);
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// A signed ack verifies for its site and agent under its key, survives encoding, and
    /// fails when any covered field, the key, the site or the agent differ, or without `sig`.
    #[test]
    fn signed_acks_verify_and_every_change_breaks_them() {
        let a = Ack::committed(vec![42, 7, 9])
            .for_epoch(1234)
            .signed("terminal-01", "gw-1", KEY);
        let sig = a.sig.clone().expect("signed");
        assert_eq!(sig.len(), 64);
        assert!(a.verify("terminal-01", "gw-1", KEY));
        let back = Ack::decode(&a.encode()).expect("decodes");
        assert!(back.verify("terminal-01", "gw-1", KEY));
        // The order of the ids is not covered; upper-case hex is accepted.
        let mut reordered = a.clone();
        reordered.batch_ids = vec![9, 42, 7];
        assert!(reordered.verify("terminal-01", "gw-1", KEY));
        let mut upper = a.clone();
        upper.sig = Some(sig.to_uppercase());
        assert!(upper.verify("terminal-01", "gw-1", KEY));

        type Tamper = Box<dyn Fn(&mut Ack)>;
        let tampered: Vec<(&str, Tamper)> = vec![
            ("batch id changed", Box::new(|a| a.batch_ids[0] = 43)),
            ("batch id added", Box::new(|a| a.batch_ids.push(8))),
            ("batch id dropped", Box::new(|a| a.batch_ids.truncate(2))),
            ("batch id duplicated", Box::new(|a| a.batch_ids.push(42))),
            ("status", Box::new(|a| a.status = AckStatus::Rejected)),
            ("epoch changed", Box::new(|a| a.buffer_epoch = Some(1235))),
            ("epoch removed", Box::new(|a| a.buffer_epoch = None)),
            ("reason added", Box::new(|a| a.reason = Some(String::new()))),
            ("sig removed", Box::new(|a| a.sig = None)),
            ("sig empty", Box::new(|a| a.sig = Some(String::new()))),
            ("sig not hex", Box::new(|a| a.sig = Some("zz".repeat(32)))),
            (
                "sig odd length",
                Box::new(|a| a.sig = a.sig.as_ref().map(|s| s[1..].to_owned())),
            ),
            (
                "sig truncated",
                Box::new(|a| a.sig = a.sig.as_ref().map(|s| s[..62].to_owned())),
            ),
            (
                "sig bit flipped",
                Box::new(|a| {
                    let mut s = a.sig.clone().unwrap_or_default().into_bytes();
                    s[10] = if s[10] == b'0' { b'1' } else { b'0' };
                    a.sig = String::from_utf8(s).ok();
                }),
            ),
        ];
        for (what, change) in &tampered {
            let mut t = a.clone();
            change(&mut t);
            assert!(!t.verify("terminal-01", "gw-1", KEY), "{what}");
        }
        assert!(!a.verify("terminal-02", "gw-1", KEY), "other site");
        assert!(!a.verify("terminal-01", "gw-2", KEY), "other agent");
        assert!(
            !a.verify("terminal-01", "gw-1", b"another key"),
            "wrong key"
        );
        assert!(!a.verify("terminal-0", "1gw-1", KEY), "site/agent boundary");
        assert!(
            !Ack::committed(vec![1]).verify("terminal-01", "gw-1", KEY),
            "unsigned"
        );

        // Rejections: the reason is covered.
        let r = Ack::rejected(vec![5], "bad frame").signed("s", "a", KEY);
        assert!(r.verify("s", "a", KEY));
        let mut t = r.clone();
        t.reason = Some("bad frame!".into());
        assert!(!t.verify("s", "a", KEY));
        t.reason = None;
        assert!(!t.verify("s", "a", KEY));
    }

    /// The signature is a documented function of the canonical bytes (another implementation
    /// can reproduce it): a fixed vector.
    #[test]
    fn the_signature_is_reproducible() {
        let a = Ack::committed(vec![2, 1])
            .for_epoch(7)
            .signed("s", "a", b"k");
        let b = Ack::committed(vec![1, 2])
            .for_epoch(7)
            .signed("s", "a", b"k");
        assert_eq!(a.sig, b.sig);
        let bytes = a.signed_bytes("s", "a");
        assert_eq!(&bytes[..8], &17u64.to_be_bytes());
        assert_eq!(&bytes[8..25], b"flowsquare-ack-v1");
        assert!(bytes.ends_with(&[0, 0, 0, 0, 0, 0, 0, 1, b'-']));
        assert_eq!(
            String::from_utf8(a.encode()).expect("utf-8"),
            format!(
                r#"{{"v":1,"batch_ids":[2,1],"status":"committed","buffer_epoch":7,"sig":"{}"}}"#,
                a.sig.as_deref().unwrap_or("")
            )
        );
    }

    #[test]
    fn status_golden_json() {
        let w = Status::last_will(1_700_000_000_000);
        assert_eq!(
            String::from_utf8(w.encode()).unwrap(),
            r#"{"v":1,"online":false,"ts_ms":1700000000000,"reason":"connection lost"}"#
        );
        let on = Status::online(1_700_000_000_123, "0.1.0");
        assert_eq!(
            String::from_utf8(on.encode()).unwrap(),
            r#"{"v":1,"online":true,"ts_ms":1700000000123,"agent_version":"0.1.0"}"#
        );
        assert_eq!(Status::decode(&w.encode()).unwrap(), w);
        assert_eq!(Status::decode(&on.encode()).unwrap(), on);
    }

    #[test]
    fn decoding_is_tolerant_but_checks_required_fields() {
        // Unknown fields and a future optional field are ignored.
        let a = Ack::decode(br#"{"v":1,"batch_ids":[1],"status":"committed","db_ms":12,"x":{}}"#)
            .unwrap();
        assert_eq!(a, Ack::committed(vec![1]));
        // Missing required field, wrong type, unknown status, empty ids, bad JSON.
        for bad in [
            &br#"{"v":1,"status":"committed"}"#[..],
            br#"{"v":1,"batch_ids":["1"],"status":"committed"}"#,
            br#"{"v":1,"batch_ids":[1],"status":"maybe"}"#,
            br#"{"batch_ids":[1],"status":"committed"}"#,
            br#"{"v":1,"batch_ids":[-1],"status":"committed"}"#,
            b"not json",
            b"",
        ] {
            assert!(
                matches!(Ack::decode(bad), Err(WireError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            Ack::decode(br#"{"v":1,"batch_ids":[],"status":"committed"}"#),
            Err(WireError::Invalid(_))
        ));
        assert!(matches!(
            Ack::decode(br#"{"v":0,"batch_ids":[1],"status":"committed"}"#),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn newer_versions_are_refused() {
        // Even when the rest of the message has changed shape.
        assert_eq!(
            Ack::decode(br#"{"v":2,"acks":[{"id":1}]}"#),
            Err(WireError::UnsupportedMessageVersion {
                message: "ack",
                v: 2
            })
        );
        assert_eq!(
            Status::decode(br#"{"v":3,"online":true,"ts_ms":1}"#),
            Err(WireError::UnsupportedMessageVersion {
                message: "status",
                v: 3
            })
        );
    }

    fn birth() -> Birth {
        Birth {
            v: MESSAGE_VERSION,
            site: "terminal-01".into(),
            agent: "gw-1".into(),
            agent_version: "0.1.0".into(),
            config_hash: "sha256:abcd".into(),
            started_ms: 1_700_000_000_000,
            devices: vec![DeviceInfo {
                name: "tankgauge".into(),
                protocol: "modbus-tcp".into(),
                description: None,
            }],
            tags: vec![
                TagInfo {
                    id: 0,
                    name: "T101.level".into(),
                    unit: Some("m".into()),
                    kind: "gauge".into(),
                    device: "tankgauge".into(),
                    description: Some("Tank 101 product level".into()),
                    data_type: "u32".into(),
                    poll_interval_ms: 1000,
                },
                TagInfo {
                    id: 1,
                    name: "T101.alarm".into(),
                    unit: None,
                    kind: "state".into(),
                    device: "tankgauge".into(),
                    description: None,
                    data_type: "bool".into(),
                    poll_interval_ms: 1000,
                },
            ],
            events: Vec::new(),
            buffer: None,
        }
    }

    #[test]
    fn birth_round_trips_and_is_validated() {
        let b = birth();
        assert_eq!(Birth::decode(&b.encode()).unwrap(), b);

        let mut wrong_id = birth();
        wrong_id.tags[1].id = 5;
        assert!(matches!(
            Birth::decode(&wrong_id.encode()),
            Err(WireError::Invalid(_))
        ));
        let mut unknown_device = birth();
        unknown_device.tags[0].device = "flowcomp".into();
        assert!(unknown_device.validate().is_err());
        let mut bad_site = birth();
        bad_site.site = "a/b".into();
        assert!(matches!(
            Birth::decode(&bad_site.encode()),
            Err(WireError::BadId(_))
        ));
    }

    #[test]
    fn birth_event_catalog_is_optional_and_round_trips() {
        // A birth of an agent without event capture has no `events` key and still parses.
        let plain = birth();
        let json = String::from_utf8(plain.encode()).unwrap();
        assert!(!json.contains("\"events\""));
        assert_eq!(Birth::decode(json.as_bytes()).unwrap().events, vec![]);
        let mut b = birth();
        let device = b.devices[0].name.clone();
        b.events.push(EventInfo {
            name: "bay1-batch".into(),
            kind: "gantry-batch".into(),
            device,
            description: None,
            trigger: "sequence".into(),
            seq_rollover: Some(9999),
            fields: vec![EventFieldInfo {
                name: "gross_volume".into(),
                data_type: "f32".into(),
                unit: Some("L".into()),
            }],
        });
        assert_eq!(Birth::decode(&b.encode()).unwrap(), b);
        b.events[0].device = "nowhere".into();
        assert!(b.validate().is_err(), "an event names a listed device");
    }

    #[test]
    fn heartbeat_round_trips_including_non_finite() {
        let mut hb = Heartbeat {
            v: MESSAGE_VERSION,
            ts_ms: 1_700_000_000_000,
            uptime_s: 3600,
            buffer: BufferFigures {
                rows: 12,
                bytes: 34_567,
                readings: 120_000,
                oldest_unsent_ms: Some(1_699_999_000_000),
                drain_rate_per_s: 2500.5,
                eta_s: Some(48.0),
            },
            counters: [
                ("polled", 1_000_000u64),
                ("acked", 990_000),
                ("dropped_buffer_full", 0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            devices: vec![DeviceHealth {
                name: "tankgauge".into(),
                success_rate: 0.998,
                rtt_ms: 12.5,
                errors: 3,
            }],
        };
        assert_eq!(Heartbeat::decode(&hb.encode()).unwrap(), hb);

        hb.buffer.drain_rate_per_s = f64::NAN;
        hb.buffer.eta_s = Some(f64::INFINITY);
        hb.devices[0].success_rate = f64::NAN;
        let back = Heartbeat::decode(&hb.encode()).unwrap();
        assert!(back.buffer.drain_rate_per_s.is_nan());
        assert_eq!(back.buffer.eta_s, None);
        assert!(back.devices[0].success_rate.is_nan());
        assert_eq!(back.devices[0].rtt_ms, 12.5);
    }

    #[test]
    fn oversized_messages_are_refused() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            Status::decode(&big),
            Err(WireError::TooLarge { .. })
        ));
    }
}
