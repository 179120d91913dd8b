//! The MQTT uplink: forwards leased buffer batches to the cloud and deletes them from the buffer
//! only when the cloud's end-to-end acknowledgement arrives.
//!
//! - `state.rs`: pure bookkeeping (in-flight window, re-sends, live first, backlog rate);
//! - `run.rs`: the event loop around it (birth, status/Last Will, acks, heartbeat);
//! - `link.rs`: MQTT 3.1.1 and 5 (rumqttc) behind one interface;
//! - `config.rs`: `[uplink]`;
//! - `error.rs`: `UplinkError`.

pub mod config;
pub mod error;
pub mod link;
pub mod run;
pub mod state;

pub use config::UplinkConfig;
pub use error::UplinkError;
pub use run::{birth, run, supervise};
