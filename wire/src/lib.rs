//! # flowsquare-wire: the MQTT wire contract
//!
//! What the edge agent and cloud-ingest say to each other over MQTT: topic names, the binary
//! data batch and the JSON control messages, with their encodings. Pure encode/decode, no I/O;
//! both sides depend on this crate and convert to and from their own types.
//!
//! # Layout
//!
//! | module       | what                                                                 |
//! |--------------|----------------------------------------------------------------------|
//! | [`topics`]   | `{root}/v1/{site}/{agent}/{kind}`, ids, parse, subscription filters  |
//! | [`batch`]    | [`Batch`] of readings, events and gaps; compact columnar binary format |
//! | [`messages`] | JSON [`Ack`], [`Birth`], [`Status`], [`Heartbeat`]                   |
//! | [`error`]    | [`WireError`], returned by every decoder instead of panicking        |
//! | [`synth`]    | deterministic synthetic tank-farm data for tests and benchmarks      |
//!
//! # Topics
//!
//! `root` defaults to `fs` and may contain `/` (a test can use `test-7f3a/fs`).
//!
//! | topic                               | direction     | QoS | retained | payload              |
//! |-------------------------------------|---------------|-----|----------|----------------------|
//! | `{root}/v1/{site}/{agent}/data`      | agent → cloud | 1   | no       | binary [`Batch`]     |
//! | `{root}/v1/{site}/{agent}/ack`       | cloud → agent | 1   | no       | JSON [`Ack`]         |
//! | `{root}/v1/{site}/{agent}/birth`     | agent → cloud | 1   | yes      | JSON [`Birth`]       |
//! | `{root}/v1/{site}/{agent}/status`    | agent → cloud | 1   | yes      | JSON [`Status`]; Last Will = [`Status::last_will`] |
//! | `{root}/v1/{site}/{agent}/heartbeat` | agent → cloud | 0   | no       | JSON [`Heartbeat`]   |
//! | `{root}/v1/{site}/{agent}/cmd`       | cloud → agent | 1   | no       | reserved             |
//!
//! The ingest subscribes to [`Topics::filter`]`(root, Kind::Data)` = `{root}/v1/+/+/data`, or
//! with several instances to [`Topics::shared_filter`] = `$share/{group}/{root}/v1/+/+/data`.
//!
//! # The acknowledgement rule (custody transfer: nothing lost, nothing invented)
//!
//! - The agent deletes a buffered batch **only** after an [`Ack`] naming its batch id arrives
//!   on its `ack` topic. Until then it re-sends it (after a reconnect, or a timeout).
//! - The cloud sends an ack **only after** the batch is committed to the database
//!   ([`AckStatus::Committed`]), or committed to the dead-letter table when it cannot be stored
//!   as data ([`AckStatus::Rejected`]; the agent deletes it too, and counts it).
//! - Batch ids are per agent, persistent across restarts and never reused, so a re-send carries
//!   the same id and the cloud de-duplicates on (site, agent, batch_id) — acking a duplicate
//!   again without storing it twice. [`batch::decode_identity`] reads that key without
//!   decompressing the batch.
//! - Losses the agent knows about (buffer full or too old, skipped event sequence numbers) are
//!   sent as [`Gap`]s, so every polled reading is either committed or counted.
//! - A batch names the `config_hash` of the [`Birth`] whose tag catalog its tag ids index.
//! - Anyone who may publish on an agent's `ack` topic could otherwise make it delete data the
//!   cloud never stored: with a key shared by the ingest and the agent, every ack carries an
//!   HMAC-SHA256 `sig` ([`Ack::sign`], [`Ack::verify`]) and the agent ignores acks without a
//!   valid one.
//!
//! # Versions
//!
//! The topic scheme carries `v1`; the batch frame a format version byte (an unknown one is
//! [`WireError::UnsupportedVersion`]); each JSON message a `v` field (see [`messages`]).

#![deny(missing_docs)]

pub mod batch;
mod codec;
pub mod error;
pub mod messages;
pub mod synth;
pub mod topics;

pub use batch::{
    decode, decode_identity, encode, encode_with, peek_header, reframe, Batch, BatchHeader,
    Compression, Counter, Event, Gap, GapReason, Quality, WireReading, WireValue,
};
pub use error::WireError;
pub use messages::{
    Ack, AckStatus, Birth, BufferFigures, DeviceHealth, DeviceInfo, EventFieldInfo, EventInfo,
    Heartbeat, Status, TagInfo,
};
pub use topics::{Kind, Topics};
