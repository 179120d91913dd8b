//! The consume stage: MQTT in, database commit, then acknowledgements out.
//!
//! - `latency.rs`: the poll-to-commit latency histogram (per stored reading, for `/metrics`);
//! - `state.rs`: pure classification of incoming messages and ack bookkeeping;
//! - `probe.rs`: the start-up delivery probe (refuses to start on a broker that accepts the
//!   subscription and delivers nothing, e.g. shared subscriptions on NATS 2.9);
//! - `run.rs`: the rumqttc loop (manual MQTT acks, in arrival order, only after the commit) and
//!   the commit task (group commit, retries while the database is down, end-to-end acks).

pub mod latency;
pub mod probe;
pub mod run;
pub mod state;

pub use run::{run, ConsumerStats};
