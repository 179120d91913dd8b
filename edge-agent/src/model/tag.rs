//! The protocol-independent vocabulary of a tag: what its value means over time (`TagKind`),
//! when a new value is worth reporting (`Deadband`) and what the buffer drops first
//! (`Priority`). The tag map spells them (`config/schema.rs` reads them); the drivers' filter and
//! the buffer's classes act on them.

use serde::Deserialize;

/// What a tag's value means over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TagKind {
    /// An instantaneous measurement (level, temperature, flow rate).
    #[default]
    Gauge,
    /// A monotonic counter (meter totalizer): rollovers and resets are detected and reported.
    Totalizer,
    /// A discrete state (pump running, valve position, alarm).
    State,
}

impl TagKind {
    /// Spelling used in the tag map and the birth catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            TagKind::Gauge => "gauge",
            TagKind::Totalizer => "totalizer",
            TagKind::State => "state",
        }
    }
}

/// Buffer priority of a tag's readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Dropped last (custody totalizers).
    High,
    /// The default.
    Normal,
    /// Dropped first (diagnostics).
    Low,
}

/// Report-by-exception threshold (read from the tag map by `config/schema.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// Report when the value moves by more than this many engineering units.
    Absolute(f64),
    /// Report when the value moves by more than this percentage of the last reported value.
    Percent(f64),
}

impl Deadband {
    /// Does moving from `last` to `new` exceed the deadband?
    pub fn exceeded(self, last: f64, new: f64) -> bool {
        let d = (new - last).abs();
        match self {
            Deadband::Absolute(a) => d > a,
            Deadband::Percent(p) => d > last.abs() * p / 100.0,
        }
    }
}
