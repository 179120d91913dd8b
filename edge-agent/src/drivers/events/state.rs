//! The bookkeeping of one event definition, without I/O: given the last committed record and
//! the trigger value just read, decide whether a new record is on display, which sequence
//! number it gets and how many records were skipped before it (across rollover), when a flag
//! rose, and whether a committed record still waits for its handshake.
//!
//! Sequence numbers on the wire are *extended*: the PLC's counter wraps (9999 → 0), the agent's
//! does not (`…, 9999, 10000, …`), so `(source, seq)` identifies a record for ever. The extended
//! number is always congruent to the PLC's modulo `seq_rollover + 1`, so the PLC's number is
//! `seq % modulus` and nothing else needs to be persisted.

use flowsquare_wire::WireValue;

pub use crate::model::event::{digest, Cursor};
use crate::model::TriggerMode;

/// How many records were skipped before a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// None (or nothing is known before it: first start without history).
    None,
    /// This many sequence numbers were skipped.
    Count(u64),
    /// The sequence jumped by more than half its range (a PLC counter reset or reload): an
    /// unknown number of records may be missing.
    Unknown,
}

/// What to do after reading the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No new record. `unacked`: the committed record with this sequence number is still on
    /// display and its handshake was not written (write it).
    Unchanged {
        /// See above.
        unacked: Option<u64>,
    },
    /// A new record is on display: read it and commit it under `seq`.
    Capture {
        /// Extended sequence number of the new record.
        seq: u64,
        /// Records skipped before it.
        missed: Missed,
    },
    /// The flag is high at start and a record was committed before: read the record; if its
    /// digest equals `digest` it is the committed one ([`Tracker::matched`]), otherwise capture
    /// it under `seq`.
    Verify {
        /// Sequence number if it is a new record.
        seq: u64,
        /// Digest of the committed record.
        digest: u64,
    },
}

/// The state of one event definition.
#[derive(Debug, Clone)]
pub struct Tracker {
    mode: TriggerMode,
    modulus: u128,
    last: Option<Cursor>,
    /// Last flag level known to be handled (None: not read yet since start).
    flag: Option<bool>,
}

impl Tracker {
    /// A tracker for `mode` (sequence numbers `0..modulus`), resuming after `last`.
    pub fn new(mode: TriggerMode, seq_rollover: u64, last: Option<Cursor>) -> Self {
        Tracker {
            mode,
            modulus: u128::from(seq_rollover) + 1,
            last,
            flag: None,
        }
    }

    /// The last committed record.
    pub fn last(&self) -> Option<Cursor> {
        self.last
    }

    /// The PLC's number for extended sequence `seq`.
    pub fn plc_seq(&self, seq: u64) -> u64 {
        match self.mode {
            TriggerMode::Sequence => (u128::from(seq) % self.modulus) as u64,
            TriggerMode::Flag => seq,
        }
    }

    /// Decide what the trigger value `value` means. Only a low flag is recorded here; a new
    /// record changes the state only once it is committed ([`Tracker::committed`]), so a failed
    /// read of the record is retried at the next poll.
    pub fn observe(&mut self, value: u64) -> Step {
        match self.mode {
            TriggerMode::Sequence => self.observe_seq(value),
            TriggerMode::Flag => self.observe_flag(value != 0),
        }
    }

    fn unacked(&self) -> Option<u64> {
        self.last.filter(|c| !c.acked).map(|c| c.seq)
    }

    fn observe_seq(&mut self, value: u64) -> Step {
        let m = self.modulus;
        let raw = u128::from(value) % m;
        let Some(c) = self.last else {
            // First start without history: take the record on display, report no gap.
            return Step::Capture {
                seq: raw as u64,
                missed: Missed::None,
            };
        };
        let last_raw = u128::from(c.seq) % m;
        let delta = (raw + m - last_raw) % m;
        if delta == 0 {
            return Step::Unchanged {
                unacked: self.unacked(),
            };
        }
        let seq = (u128::from(c.seq) + delta).min(u128::from(u64::MAX)) as u64;
        let missed = if delta > m / 2 {
            Missed::Unknown
        } else if delta > 1 {
            Missed::Count((delta - 1) as u64)
        } else {
            Missed::None
        };
        Step::Capture { seq, missed }
    }

    fn observe_flag(&mut self, high: bool) -> Step {
        let next = self.last.map_or(1, |c| c.seq.saturating_add(1));
        if !high {
            self.flag = Some(false);
            return Step::Unchanged { unacked: None };
        }
        match (self.flag, self.last) {
            (Some(true), _) => Step::Unchanged {
                unacked: self.unacked(),
            },
            (Some(false), _) | (None, None) => Step::Capture {
                seq: next,
                missed: Missed::None,
            },
            (None, Some(c)) => Step::Verify {
                seq: next,
                digest: c.digest,
            },
        }
    }

    /// The record with `cursor.seq` is committed.
    pub fn committed(&mut self, cursor: Cursor) {
        self.last = Some(cursor);
        if self.mode == TriggerMode::Flag {
            self.flag = Some(true);
        }
    }

    /// After [`Step::Verify`]: the record on display is the committed one. Until it is
    /// acknowledged the flag is taken as handled; once acknowledged, a high flag keeps being
    /// verified (see [`Tracker::acked`]).
    pub fn matched(&mut self) {
        if !self.last.is_some_and(|c| c.acked) {
            self.flag = Some(true);
        }
    }

    /// The handshake of the last committed record was written. For a flag, the level is then
    /// unknown again: the handshake may have reset it and the PLC raised it for the next record
    /// before the next poll, so while it stays high the record is compared with the committed
    /// one ([`Step::Verify`]) instead of waiting for an edge that may never be seen.
    pub fn acked(&mut self) {
        if let Some(c) = &mut self.last {
            c.acked = true;
        }
        if self.mode == TriggerMode::Flag {
            self.flag = None;
        }
    }
}

/// Is the record on display a blank one: sequence mode, the PLC's sequence number 0 and every
/// field zero, false or empty (no field undecodable)? A PLC shows such a record after a
/// power-up or a program download, before its first batch; it is not an event (capturing it
/// gave an "unknown meter" alert and a "/" trip in the cloud), and skipping it is no gap.
pub fn is_blank(
    mode: TriggerMode,
    trigger: u64,
    fields: &[(String, WireValue)],
    bad: bool,
) -> bool {
    mode == TriggerMode::Sequence
        && trigger == 0
        && !bad
        && fields.iter().all(|(_, v)| match v {
            WireValue::Bool(b) => !b,
            WireValue::Int(i) => *i == 0,
            WireValue::UInt(u) => *u == 0,
            WireValue::Float(f) => *f == 0.0,
            WireValue::Text(t) => t
                .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .is_empty(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(seq: u64) -> Cursor {
        Cursor {
            seq,
            digest: 7,
            ts_ms: 0,
            acked: true,
        }
    }

    fn seq_tracker(last: Option<u64>) -> Tracker {
        Tracker::new(TriggerMode::Sequence, 9999, last.map(cur))
    }

    #[test]
    fn a_blank_record_with_sequence_zero_is_not_an_event() {
        let blank = vec![
            ("truck".to_owned(), WireValue::Text("  \0\0".into())),
            ("meter".to_owned(), WireValue::Int(0)),
            ("gross_l".to_owned(), WireValue::Float(0.0)),
            ("net_l".to_owned(), WireValue::Float(-0.0)),
            ("end_time".to_owned(), WireValue::UInt(0)),
            ("ok".to_owned(), WireValue::Bool(false)),
        ];
        assert!(is_blank(TriggerMode::Sequence, 0, &blank, false));
        // Any field set, a sequence number, an undecodable field, or a flag trigger: an event.
        let mut one = blank.clone();
        one[1].1 = WireValue::Int(3);
        assert!(!is_blank(TriggerMode::Sequence, 0, &one, false));
        let mut named = blank.clone();
        named[0].1 = WireValue::Text("T-17".into());
        assert!(!is_blank(TriggerMode::Sequence, 0, &named, false));
        assert!(!is_blank(TriggerMode::Sequence, 1, &blank, false));
        assert!(!is_blank(TriggerMode::Sequence, 0, &blank, true));
        assert!(!is_blank(TriggerMode::Flag, 0, &blank, false));
        // After the blank one is skipped (no state change), the first real record is captured
        // without a gap.
        let mut t = seq_tracker(None);
        assert!(matches!(t.observe(0), Step::Capture { seq: 0, .. }));
        assert_eq!(
            t.observe(1),
            Step::Capture {
                seq: 1,
                missed: Missed::None
            }
        );
    }

    #[test]
    fn first_start_without_history_takes_the_record_on_display_without_a_gap() {
        let mut t = seq_tracker(None);
        assert_eq!(
            t.observe(4711),
            Step::Capture {
                seq: 4711,
                missed: Missed::None
            }
        );
    }

    #[test]
    fn next_number_is_captured_and_unchanged_is_idle() {
        let mut t = seq_tracker(Some(5));
        assert_eq!(t.observe(5), Step::Unchanged { unacked: None });
        assert_eq!(
            t.observe(6),
            Step::Capture {
                seq: 6,
                missed: Missed::None
            }
        );
        // Not committed yet: the same step again (the record is re-read).
        assert_eq!(
            t.observe(6),
            Step::Capture {
                seq: 6,
                missed: Missed::None
            }
        );
        t.committed(Cursor {
            seq: 6,
            digest: 1,
            ts_ms: 0,
            acked: false,
        });
        assert_eq!(t.observe(6), Step::Unchanged { unacked: Some(6) });
        t.acked();
        assert_eq!(t.observe(6), Step::Unchanged { unacked: None });
    }

    #[test]
    fn rollover_9999_to_0_is_no_gap_and_the_extended_number_keeps_counting() {
        let mut t = seq_tracker(Some(9999));
        assert_eq!(
            t.observe(0),
            Step::Capture {
                seq: 10_000,
                missed: Missed::None
            }
        );
        assert_eq!(t.plc_seq(10_000), 0);
        t.committed(cur(10_000));
        assert_eq!(
            t.observe(1),
            Step::Capture {
                seq: 10_001,
                missed: Missed::None
            }
        );
    }

    #[test]
    fn skip_of_one_and_of_several_across_rollover() {
        let mut t = seq_tracker(Some(41));
        assert_eq!(
            t.observe(43),
            Step::Capture {
                seq: 43,
                missed: Missed::Count(1)
            }
        );
        let mut t = seq_tracker(Some(9997));
        assert_eq!(
            t.observe(2),
            Step::Capture {
                seq: 10_002,
                missed: Missed::Count(4)
            }
        );
    }

    #[test]
    fn restart_with_persisted_cursor_resumes_after_it() {
        // Extended 20_005 = PLC 5 after two wraps.
        let mut t = seq_tracker(Some(20_005));
        assert_eq!(t.observe(5), Step::Unchanged { unacked: None });
        assert_eq!(
            t.observe(8),
            Step::Capture {
                seq: 20_008,
                missed: Missed::Count(2)
            }
        );
    }

    #[test]
    fn a_backwards_jump_is_an_unknown_loss_not_thousands_of_missed_records() {
        let mut t = seq_tracker(Some(500));
        assert_eq!(
            t.observe(3),
            Step::Capture {
                seq: 10_003,
                missed: Missed::Unknown
            }
        );
    }

    #[test]
    fn u16_counter_without_configured_rollover_wraps_at_65535() {
        let mut t = Tracker::new(TriggerMode::Sequence, 65_535, Some(cur(65_535)));
        assert_eq!(
            t.observe(0),
            Step::Capture {
                seq: 65_536,
                missed: Missed::None
            }
        );
        let mut t = Tracker::new(TriggerMode::Sequence, u64::MAX, Some(cur(u64::MAX - 1)));
        assert_eq!(
            t.observe(u64::MAX),
            Step::Capture {
                seq: u64::MAX,
                missed: Missed::None
            }
        );
    }

    #[test]
    fn flag_fires_on_rising_edge_only_once_committed() {
        let mut t = Tracker::new(TriggerMode::Flag, 0, None);
        assert_eq!(t.observe(0), Step::Unchanged { unacked: None });
        assert_eq!(
            t.observe(1),
            Step::Capture {
                seq: 1,
                missed: Missed::None
            }
        );
        // The read failed: still a capture at the next poll.
        assert_eq!(
            t.observe(1),
            Step::Capture {
                seq: 1,
                missed: Missed::None
            }
        );
        t.committed(Cursor {
            seq: 1,
            digest: 3,
            ts_ms: 0,
            acked: false,
        });
        assert_eq!(t.observe(1), Step::Unchanged { unacked: Some(1) });
        t.acked();
        // Still high after the handshake: the same record (verified) or already the next one.
        assert_eq!(t.observe(1), Step::Verify { seq: 2, digest: 3 });
        t.matched();
        assert_eq!(t.observe(1), Step::Verify { seq: 2, digest: 3 });
        assert_eq!(t.observe(0), Step::Unchanged { unacked: None });
        assert_eq!(
            t.observe(1),
            Step::Capture {
                seq: 2,
                missed: Missed::None
            }
        );
    }

    #[test]
    fn flag_high_at_restart_is_verified_against_the_committed_record() {
        let mut t = Tracker::new(TriggerMode::Flag, 0, Some(cur(9)));
        assert_eq!(t.observe(1), Step::Verify { seq: 10, digest: 7 });
        t.matched();
        // The committed record was acknowledged before: keep verifying while high.
        assert_eq!(t.observe(1), Step::Verify { seq: 10, digest: 7 });
        let mut t = Tracker::new(
            TriggerMode::Flag,
            0,
            Some(Cursor {
                acked: false,
                ..cur(9)
            }),
        );
        assert_eq!(t.observe(1), Step::Verify { seq: 10, digest: 7 });
        t.matched();
        assert_eq!(t.observe(1), Step::Unchanged { unacked: Some(9) });
        // Low at restart: the next rise is a new record.
        let mut t = Tracker::new(TriggerMode::Flag, 0, Some(cur(9)));
        assert_eq!(t.observe(0), Step::Unchanged { unacked: None });
        assert_eq!(
            t.observe(1),
            Step::Capture {
                seq: 10,
                missed: Missed::None
            }
        );
    }
}
