//! Which deliveries of an `i202` report are new, and their event sequence numbers. Pure; the run
//! loop persists [`TrackerState`] as JSON next to the buffer database.
//!
//! The console keeps the last deliveries of each tank and reports them all every time; a
//! delivery is new when it ended after the last one reported for its tank (ties broken by start
//! time). New deliveries are numbered from `next_seq` in (end, tank, start) order, so the same
//! console content always gives the same numbers. The run loop saves the state of a poll only at
//! the next poll (or at shutdown), when the events are long committed to the buffer: after a
//! crash the last poll's deliveries are reported again with the same `seq` and `delivery_id`
//! (the cloud keeps one), never lost. If every delivery a tank reports is new and the list is
//! full, older ones may have been overwritten while the agent was away: that is reported as a
//! gap (`missed-event`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::frame::{ConsoleTime, Delivery};

/// Deliveries a TLS-350 keeps per tank (assumed: not confirmed from the manual; see
/// `frame.rs`). Only the missed-delivery gap depends on it.
pub const CONSOLE_DELIVERIES_PER_TANK: usize = 10;

/// What has been reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerState {
    /// Sequence number of the next event.
    pub next_seq: u64,
    /// Per tank: `(end, start)` codes (`YYMMDDHHmm`) of the last delivery reported.
    pub last: BTreeMap<u8, (String, String)>,
}

/// One new delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// Its event sequence number.
    pub seq: u64,
    /// The delivery.
    pub delivery: Delivery,
}

/// A window in which deliveries of a tank may have been overwritten unreported.
#[derive(Debug, Clone, PartialEq)]
pub struct PossiblyMissed {
    /// Tank.
    pub tank: u8,
    /// End of the last delivery reported.
    pub after: Option<ConsoleTime>,
    /// Start of the oldest delivery the console holds.
    pub before: ConsoleTime,
}

/// The outcome of one report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// New deliveries, in seq order.
    pub new: Vec<NewDelivery>,
    /// Tanks whose whole (full) list was new: deliveries may have been missed between the last
    /// one reported (its end) and the oldest one now held (its start).
    pub possibly_missed: Vec<PossiblyMissed>,
}

fn key(d: &Delivery) -> (String, String) {
    (d.end.code(), d.start.code())
}

impl TrackerState {
    /// The new deliveries of `deliveries`, advancing the state.
    pub fn process(&mut self, deliveries: &[Delivery]) -> Outcome {
        let mut out = Outcome::default();
        let mut fresh: Vec<&Delivery> = deliveries
            .iter()
            .filter(|d| self.last.get(&d.tank).is_none_or(|l| key(d) > *l))
            .collect();
        fresh.sort_by_key(|d| (d.end, d.tank, d.start));
        fresh.dedup_by_key(|d| (d.tank, d.start, d.end));
        let mut per_tank: BTreeMap<u8, (usize, usize)> = BTreeMap::new();
        for d in deliveries {
            per_tank.entry(d.tank).or_default().0 += 1;
        }
        for d in &fresh {
            per_tank.entry(d.tank).or_default().1 += 1;
        }
        for (tank, (all, new)) in per_tank {
            if self.last.contains_key(&tank) && all >= CONSOLE_DELIVERIES_PER_TANK && new == all {
                if let Some(oldest) = fresh
                    .iter()
                    .filter(|d| d.tank == tank)
                    .map(|d| d.start)
                    .min()
                {
                    out.possibly_missed.push(PossiblyMissed {
                        tank,
                        after: self
                            .last
                            .get(&tank)
                            .and_then(|(end, _)| ConsoleTime::from_code(end)),
                        before: oldest,
                    });
                }
            }
        }
        for d in fresh {
            self.last.insert(d.tank, key(d));
            out.new.push(NewDelivery {
                seq: self.next_seq,
                delivery: d.clone(),
            });
            self.next_seq += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(day: u8, hour: u8) -> ConsoleTime {
        ConsoleTime {
            year: 2024,
            month: 3,
            day,
            hour,
            minute: 0,
        }
    }

    fn d(tank: u8, day: u8, hour: u8) -> Delivery {
        Delivery {
            tank,
            product: '1',
            start: t(day, hour),
            end: t(day, hour + 1),
            values: vec![1.0; 10],
        }
    }

    #[test]
    fn only_new_deliveries_are_reported_with_stable_seqs() {
        let mut s = TrackerState::default();
        let report = vec![d(1, 1, 8), d(2, 1, 6), d(1, 2, 8)];
        let o = s.process(&report);
        let got: Vec<(u64, u8, u8)> = o
            .new
            .iter()
            .map(|n| (n.seq, n.delivery.tank, n.delivery.start.day))
            .collect();
        assert_eq!(got, vec![(0, 2, 1), (1, 1, 1), (2, 1, 2)]);
        // The same report again: nothing new.
        let before = s.clone();
        assert!(s.process(&report).new.is_empty());
        assert_eq!(s, before);
        // A restart from the state saved before the last poll gives the same numbers.
        let mut replay = TrackerState::default();
        assert_eq!(replay.process(&report).new, o.new);
        let mut more = report.clone();
        more.push(d(2, 3, 10));
        let o = s.process(&more);
        assert_eq!(o.new.len(), 1);
        assert_eq!((o.new[0].seq, o.new[0].delivery.tank), (3, 2));
    }

    #[test]
    fn a_full_list_of_new_deliveries_is_a_possible_gap() {
        let mut s = TrackerState::default();
        s.process(&[d(1, 1, 1)]);
        let many: Vec<Delivery> = (0..10).map(|i| d(1, 2 + i, 5)).collect();
        let o = s.process(&many);
        assert_eq!(o.new.len(), 10);
        assert_eq!(
            o.possibly_missed,
            vec![PossiblyMissed {
                tank: 1,
                after: Some(t(1, 2)),
                before: t(2, 5)
            }]
        );
    }

    #[test]
    fn state_round_trips_as_json() {
        let mut s = TrackerState::default();
        s.process(&[d(1, 1, 1)]);
        let text = serde_json::to_string(&s).expect("json");
        assert_eq!(
            serde_json::from_str::<TrackerState>(&text).expect("back"),
            s
        );
    }
}
