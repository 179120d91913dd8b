//! The MQTT uplink: forwards leased buffer batches to the cloud and deletes them from the buffer
//! only when the cloud's end-to-end acknowledgement arrives.

pub mod config;
pub mod state;

pub use config::UplinkConfig;
