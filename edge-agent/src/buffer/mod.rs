//! The store-and-forward buffer: every reading is committed to SQLite before anything else
//! happens to it, and leaves only when the cloud says it is committed (or as a counted gap).
//!
//! - `store.rs`: the SQLite segment store and its design note (format, invariants, crash
//!   behaviour);
//! - `config.rs`: `[buffer]`;
//! - `error.rs`: `BufferError`.

pub mod config;
pub mod error;
pub mod store;

pub use config::BufferConfig;
pub use error::BufferError;
pub use store::{Class, LeaseOrder, LeaseRequest, Leased, Store, StoreFigures};
