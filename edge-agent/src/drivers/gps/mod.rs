//! GPS acquisition: NMEA 0183 receivers on a serial port and gpsd over TCP.
//!
//! - `config.rs`: the `nmea` / `gpsd` device keys and the `field` tag key;
//! - `nmea.rs`: sentence framing, checksum, GGA / RMC / VTG decoding (pure);
//! - `gpsd.rs`: gpsd's JSON TPV / SKY reports (pure);
//! - `fix.rs`: the merged fix and the readings of one poll, stamped with GPS time (pure);
//! - `run.rs`: the run loop (a reader feeding the fix, a poll tick reporting it), `read --once`;
//! - `error.rs`: dropped sentences vs a broken link.

pub mod config;
pub mod error;
pub mod fix;
pub mod gpsd;
pub mod nmea;
pub mod run;

pub use run::{read_once, run, GpsRuntime};
