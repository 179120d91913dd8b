//! The MQTT uplink: forwards leased buffer batches to the cloud and deletes them from the buffer
//! only when the cloud's end-to-end acknowledgement arrives.
//!
//! - `state.rs`: pure bookkeeping (in-flight window, re-sends, live first, backlog rate);
//! - `run.rs`: the event loop around it (birth, status/Last Will, acks, heartbeat);
//! - `link.rs`: MQTT 3.1.1 and 5 (rumqttc) behind one interface;
//! - `config.rs`: `[uplink]`;
//! - [`Catalog`]: what the uplink needs of a tag map (implemented in `config/birth.rs`);
//! - `error.rs`: `UplinkError`.

pub mod config;
pub mod error;
pub mod link;
pub mod run;
pub mod state;

pub use config::UplinkConfig;
pub use error::UplinkError;
pub use run::{run, supervise};

use flowsquare_wire as wire;

/// What the uplink needs of a tag map: the identity it connects and publishes as, and the birth
/// catalog it announces. `config/` implements it for `TagMap`, so the uplink never imports the
/// tag map.
pub trait Catalog: Send + Sync + 'static {
    /// Site id.
    fn site(&self) -> &str;
    /// Agent id.
    fn agent(&self) -> &str;
    /// Hash of the tag map.
    fn config_hash(&self) -> &str;
    /// Number of tags.
    fn tag_count(&self) -> usize;
    /// The encoded birth message (catalog of devices, tags and event definitions), made at
    /// `started_ms` and naming the buffer it sends from; written as it is encoded, not kept.
    fn birth_json(&self, started_ms: i64, identity: &wire::messages::BufferIdentity) -> Vec<u8>;
}
