//! Event capture (gantry batch records and other transaction tables), protocol-generic.
//!
//! - `def.rs`: a loaded event definition (trigger, fields, handshake at the device's own
//!   locations), read from the tag map by `config/events.rs`;
//! - `state.rs`: the pure bookkeeping (sequence deltas across rollover, missed counts, flag
//!   edges, handshake state), unit-tested without sockets;
//! - `run.rs`: the run loop of one event definition over an [`EventIo`] binding;
//! - `error.rs`: the binding's two-level error (link broken vs device refused).
//!
//! A protocol provides an [`EventIo`] (read the trigger, read the field block, write the
//! handshake); `drivers/modbus/events.rs` is the Modbus one. The order of one capture is
//! **read → commit → handshake**: the record goes to the buffer (`Output::Events`), the loop
//! waits for the buffer's confirmation that it is committed together with the definition's
//! cursor, and only then acknowledges it to the PLC. A crash before the commit re-reads the
//! record at restart; a crash after it writes the handshake again (the cursor says it was not
//! written).

pub mod def;
pub mod error;
pub mod run;
pub mod state;

pub use def::{EventDef, EventField, Handshake, Trigger};
pub use error::IoError;
pub use run::{run, EventIo, EventOptions, Record, Runner, Stopped};
pub use state::{digest, Cursor, Missed, Step, Tracker};
