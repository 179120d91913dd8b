//! Settings primitives every stage reads its part of the tag map with, below every folder that
//! has settings (drivers, buffer, uplink) and below the `config/` assembler:
//!
//! - `diag.rs`: diagnostics and their file:line:column locations;
//! - `parse.rs`: deserializing parts of spanned TOML tables one struct at a time, key spans,
//!   unknown-key reports with suggestions;
//! - `duration.rs`: `"500ms"`-style durations.

pub mod diag;
pub mod duration;
pub mod parse;

pub use diag::{Diagnostic, Diagnostics, Severity};
