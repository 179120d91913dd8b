//! Veeder-Root TLS-350 tank gauge consoles (serial or TCP, computer format).
//!
//! - `config.rs`: the `tls-350` device keys and the `tank` / `field` tag keys;
//! - `frame.rs`: commands, reply framing and checksum, `i201` / `i202` decoding (pure);
//! - `tracker.rs`: which deliveries are new, their sequence numbers (pure);
//! - `run.rs`: link, run loop (inventory readings, delivery events), `read --once`;
//! - `error.rs`: unusable replies vs a broken link.

pub mod config;
pub mod error;
pub mod frame;
pub mod run;
pub mod tracker;

pub use run::{read_once, run, TlsRuntime};
