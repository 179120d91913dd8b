//! A totalizer's quantity over a window, across the rollover and reset markers the agent puts
//! on readings (`wire::Counter`, stored as `counter_kind` 0 = rollover with the delta counted
//! across the wrap, 1 = reset with the total before it). Pure; unit-tested below.
//!
//! Without markers the quantity is closing − opening. A rollover adds the delta the agent
//! counted across the wrap (the rise to the reading before it, then the delta, then on from the
//! wrapped value). A reset splits the window: previous − opening before it, and on from the
//! value at the reset after it.

/// A marker on a totalizer reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Marker {
    /// The counter wrapped; the quantity counted since the previous reading.
    Rollover {
        /// Quantity since the previous reading (across the wrap).
        delta: f64,
    },
    /// The counter was reset (or replaced); the total before the reset.
    Reset {
        /// Total before.
        previous: f64,
    },
}

/// A marked reading inside the window (after the opening reading, at or before the closing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterMark {
    /// Time, ms.
    pub ts_ms: i64,
    /// The reading's value (after the wrap or the reset).
    pub value: f64,
    /// The marker.
    pub marker: Marker,
    /// The last good value before this reading (needed for a rollover: the rise up to it).
    pub before: Option<f64>,
}

impl CounterMark {
    /// From the stored columns (`counter_kind` 0 = rollover, 1 = reset; `counter_value`).
    pub fn from_columns(
        ts_ms: i64,
        value: f64,
        kind: i64,
        counter_value: f64,
        before: Option<f64>,
    ) -> Option<CounterMark> {
        let marker = match kind {
            0 => Marker::Rollover {
                delta: counter_value,
            },
            1 => Marker::Reset {
                previous: counter_value,
            },
            _ => return None,
        };
        Some(CounterMark {
            ts_ms,
            value,
            marker,
            before,
        })
    }
}

/// The quantity counted from `opening` to `closing` across `marks` (in time order), in the
/// totalizer's unit; None when a rollover's previous value is unknown (the rise before the wrap
/// cannot be known).
pub fn window_quantity(opening: f64, closing: f64, marks: &[CounterMark]) -> Option<f64> {
    let mut current = opening;
    let mut total = 0.0;
    for m in marks {
        match m.marker {
            Marker::Rollover { delta } => {
                total += (m.before? - current) + delta;
            }
            Marker::Reset { previous } => {
                total += previous - current;
            }
        }
        current = m.value;
    }
    Some(total + (closing - current))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(ts_ms: i64, value: f64, marker: Marker, before: Option<f64>) -> CounterMark {
        CounterMark {
            ts_ms,
            value,
            marker,
            before,
        }
    }

    #[test]
    fn without_markers_closing_minus_opening() {
        assert_eq!(window_quantity(1_000.0, 3_500.0, &[]), Some(2_500.0));
    }

    #[test]
    fn a_rollover_adds_its_delta() {
        // A 1,000,000 counter: 999,000 at the opening, 999,900 before the wrap, 400 counted
        // across it (value 300), 1,300 at the closing: 900 + 400 + 1,000.
        let m = [mark(
            10,
            300.0,
            Marker::Rollover { delta: 400.0 },
            Some(999_900.0),
        )];
        assert_eq!(window_quantity(999_000.0, 1_300.0, &m), Some(2_300.0));
        // A rollover, then a reset in the same window: 100 + 150, then 400 − 50, then 100.
        let m = [
            mark(10, 50.0, Marker::Rollover { delta: 150.0 }, Some(999_900.0)),
            mark(20, 0.0, Marker::Reset { previous: 400.0 }, Some(400.0)),
        ];
        assert_eq!(window_quantity(999_800.0, 100.0, &m), Some(700.0));
    }

    #[test]
    fn a_rollover_without_the_value_before_it_is_unknown() {
        let m = [mark(10, 300.0, Marker::Rollover { delta: 400.0 }, None)];
        assert_eq!(window_quantity(999_000.0, 1_300.0, &m), None);
    }

    #[test]
    fn a_reset_splits_the_window() {
        // 5,000 at the opening, 7,000 before the reset, 0 after, 500 at the closing.
        let m = [mark(
            10,
            0.0,
            Marker::Reset { previous: 7_000.0 },
            Some(6_990.0),
        )];
        assert_eq!(window_quantity(5_000.0, 500.0, &m), Some(2_500.0));
        // A replaced meter starting at 120.
        let m = [mark(10, 120.0, Marker::Reset { previous: 7_000.0 }, None)];
        assert_eq!(window_quantity(5_000.0, 620.0, &m), Some(2_500.0));
    }

    #[test]
    fn stored_columns() {
        assert_eq!(
            CounterMark::from_columns(1, 2.0, 0, 3.0, None).map(|m| m.marker),
            Some(Marker::Rollover { delta: 3.0 })
        );
        assert_eq!(
            CounterMark::from_columns(1, 2.0, 1, 3.0, None).map(|m| m.marker),
            Some(Marker::Reset { previous: 3.0 })
        );
        assert!(CounterMark::from_columns(1, 2.0, 7, 3.0, None).is_none());
    }
}
