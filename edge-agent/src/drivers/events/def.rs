//! A loaded event definition (`[[device.event]]`, read by `config/events.rs`): its trigger, the
//! fields read when it fires and the optional handshake, each at a location of the device's own
//! protocol (`TagSource`).

use std::time::Duration;

use crate::drivers::TagSource;
use crate::model::{HandshakeValue, TriggerMode};

/// The trigger of an event definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// Sequence or flag.
    pub mode: TriggerMode,
    /// Where it is read.
    pub source: TagSource,
}

/// One named field of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct EventField {
    /// Field name (e.g. `bol`, `gross_volume`).
    pub name: String,
    /// Engineering unit.
    pub unit: Option<String>,
    /// Where it is read.
    pub source: TagSource,
}

/// The optional acknowledgement written back to the PLC once a record is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Handshake {
    /// Where it is written.
    pub target: TagSource,
    /// What.
    pub value: HandshakeValue,
}

/// A loaded event definition.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDef {
    /// Unique name (across the tag map); the `source` of its events and the key of its
    /// persisted cursor.
    pub name: String,
    /// Event kind, e.g. `gantry-batch`.
    pub kind: String,
    /// Free text.
    pub description: Option<String>,
    /// How often the trigger is read.
    pub poll_interval: Duration,
    /// The trigger.
    pub trigger: Trigger,
    /// Sequence numbers count `0..=seq_rollover` then wrap to 0 (sequence mode).
    pub seq_rollover: u64,
    /// The fields read when it fires, in order.
    pub fields: Vec<EventField>,
    /// The acknowledgement, if any.
    pub handshake: Option<Handshake>,
}

impl EventDef {
    /// Sequence numbers per wrap (`seq_rollover + 1`).
    pub fn modulus(&self) -> u64 {
        self.seq_rollover.saturating_add(1)
    }
}
