//! The store-and-forward buffer: every reading is committed to SQLite before anything else
//! happens to it, and leaves only when the cloud says it is committed (or as a counted gap).
//!
//! - `store.rs`: the SQLite segment store and its design note (format, invariants, crash
//!   behaviour);
//! - `codec.rs`: readings ↔ segments ↔ wire batches;
//! - `writer.rs`: the buffer thread (group commit, lease, ack) and its async handle;
//! - `salvage.rs`: recovery of a damaged database into a fresh one;
//! - `inflight.rs`: the in-flight counter side file (how many readings a crash lost);
//! - `config.rs`: `[buffer]`;
//! - `error.rs`: `BufferError`.

pub mod codec;
pub mod config;
pub mod error;
mod inbox;
pub mod inflight;
pub mod salvage;
pub mod store;
pub mod writer;

pub use crate::model::GapRow;
pub use codec::Identity;
pub use config::BufferConfig;
pub use error::BufferError;
pub use store::{Class, LeaseOrder, LeaseRequest, Leased, Store, StoreFigures};
pub use writer::{Buffer, BufferLedger, BufferStats, BufferThread, OutBatch, TagClasses};
