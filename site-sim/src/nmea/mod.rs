//! The NMEA 0183 feeder: a GPS receiver on a serial port (or pseudo-terminal) for the edge
//! agent's `nmea` driver — a truck driving a route with optional fix loss, corrupted checksums
//! and partial sentences, or a recorded file replayed.
//!
//! - `config.rs`: the feeder file (TOML);
//! - `generator.rs`: the truck and its sentences (pure);
//! - `feeder.rs`: writing epochs (or the replay file) to a port, on the simulation clock.

pub mod config;
pub mod feeder;
pub mod generator;

pub use config::FeederConfig;
pub use feeder::{feed, feed_path};
pub use generator::Truck;
