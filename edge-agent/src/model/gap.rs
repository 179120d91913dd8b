//! Known losses: a gap row names the tags, time range and count of readings (or event
//! records) that were lost, and why. Drivers detect some (skipped event sequence numbers), the
//! buffer others (drops, unclean shutdown, damage), the service one (tags unmapped by a
//! reload); all are reported to the cloud like data.

use std::ops::Range;

/// Why readings or records were lost. Stored as its spelling in the buffer's `gap.reason`
/// column and mapped to `wire::GapReason` when sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapReason {
    /// Dropped by the buffer: full.
    BufferFull,
    /// Dropped by the buffer: older than its age limit.
    BufferAge,
    /// Event records skipped by the device's sequence number.
    MissedEvent,
    /// The agent stopped without committing what it held.
    UncleanShutdown,
    /// A damaged buffer segment that could not be read.
    BufferDamaged,
    /// Readings of tags that a live reload left without a tag.
    ReloadUnmapped,
    /// Any other spelling found in a buffer database (kept as read, never lost).
    Other(String),
}

impl GapReason {
    /// The spelling in gap rows, logs and (for the `Other` ones) on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            GapReason::BufferFull => "buffer-full",
            GapReason::BufferAge => "buffer-age",
            GapReason::MissedEvent => "missed-event",
            GapReason::UncleanShutdown => "unclean-shutdown",
            GapReason::BufferDamaged => "buffer-damaged",
            GapReason::ReloadUnmapped => "reload-unmapped",
            GapReason::Other(s) => s,
        }
    }

    /// The reason spelled `s` (unknown spellings are kept as `Other`).
    pub fn parse(s: &str) -> GapReason {
        match s {
            "buffer-full" => GapReason::BufferFull,
            "buffer-age" => GapReason::BufferAge,
            "missed-event" => GapReason::MissedEvent,
            "unclean-shutdown" => GapReason::UncleanShutdown,
            "buffer-damaged" => GapReason::BufferDamaged,
            "reload-unmapped" => GapReason::ReloadUnmapped,
            other => GapReason::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for GapReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A known loss, to be reported to the cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct GapRow {
    /// Tag ids concerned.
    pub tags: Vec<u32>,
    /// Time range of the lost readings.
    pub range: Range<i64>,
    /// Readings lost ([`GapRow::UNKNOWN_COUNT`]: not known, see [`GapRow::uncounted`]).
    pub count: u64,
    /// Why.
    pub reason: GapReason,
}

impl GapRow {
    /// `count` of a gap whose number of readings is not known (stored as -1; sent as a gap of
    /// unknown count, `wire::Gap::uncounted`). Never add it up: use [`GapRow::known_count`].
    pub const UNKNOWN_COUNT: u64 = u64::MAX;

    /// A loss over `range` whose count is not known.
    pub fn uncounted(tags: Vec<u32>, range: Range<i64>, reason: GapReason) -> GapRow {
        GapRow {
            tags,
            range,
            count: Self::UNKNOWN_COUNT,
            reason,
        }
    }

    /// The count, when known.
    pub fn known_count(&self) -> Option<u64> {
        (self.count != Self::UNKNOWN_COUNT).then_some(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_their_spelling() {
        for r in [
            GapReason::BufferFull,
            GapReason::BufferAge,
            GapReason::MissedEvent,
            GapReason::UncleanShutdown,
            GapReason::BufferDamaged,
            GapReason::ReloadUnmapped,
            GapReason::Other("something-else".into()),
        ] {
            assert_eq!(GapReason::parse(r.as_str()), r);
        }
    }
}
