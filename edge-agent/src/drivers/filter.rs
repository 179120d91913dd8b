//! Per-tag processing between a driver and the next stage: totalizer rollover/reset detection and
//! report-by-exception (deadband with a heartbeat). Pure: it sees readings, not sockets.

use crate::drivers::Tag;
use crate::model::TagKind;
use crate::model::{CounterEvent, Quality, Reading, Value};

#[derive(Debug, Clone, Default)]
struct TagState {
    last_reported: Option<(i64, Quality, Option<Value>)>,
    last_total: Option<f64>,
}

/// Filter state for all tags of a tag map.
#[derive(Debug, Clone)]
pub struct TagFilter {
    states: Vec<TagState>,
}

impl TagFilter {
    /// State for `n` tags.
    pub fn new(n: usize) -> Self {
        TagFilter {
            states: vec![TagState::default(); n],
        }
    }

    /// The state for a reloaded tag map with `n` tags: `translate[old id]` is the tag's id in
    /// the new map; tags that kept their id mapping keep their state (no spurious report after a
    /// reload), new and changed tags start fresh.
    pub fn remap(&self, translate: &[Option<crate::model::TagId>], n: usize) -> TagFilter {
        let mut states = vec![TagState::default(); n];
        for (old, new) in translate.iter().enumerate() {
            if let (Some(st), Some(slot)) = (
                self.states.get(old),
                new.and_then(|t| states.get_mut(t as usize)),
            ) {
                *slot = st.clone();
            }
        }
        TagFilter { states }
    }

    /// Process one reading of `tag`: annotate counter events, and return it if it must be
    /// reported (quality changed, value left the deadband, heartbeat due, counter event).
    pub fn process(&mut self, tag: &Tag, mut r: Reading) -> Option<Reading> {
        let Some(st) = self.states.get_mut(tag.id as usize) else {
            return Some(r);
        };
        if tag.kind == TagKind::Totalizer && r.quality.has_value() {
            if let Some(v) = r.value.as_ref().and_then(Value::as_f64) {
                if let Some(prev) = st.last_total {
                    if v < prev {
                        r.counter = Some(match tag.rollover {
                            // A drop of more than half the range is a wrap, not a reset.
                            Some(range) if prev - v > range / 2.0 => CounterEvent::Rollover {
                                delta: range - prev + v,
                            },
                            _ => CounterEvent::Reset { previous: prev },
                        });
                    }
                }
                st.last_total = Some(v);
            }
        }
        let report = match &st.last_reported {
            None => true,
            Some((ts, q, last)) => {
                r.counter.is_some()
                    || *q != r.quality
                    || r.ts_ms.saturating_sub(*ts) >= tag.max_silence.as_millis() as i64
                    || match (
                        tag.deadband,
                        last.as_ref().and_then(Value::as_f64),
                        r.value.as_ref().and_then(Value::as_f64),
                    ) {
                        (Some(db), Some(a), Some(b)) => db.exceeded(a, b),
                        (None, _, _) => true,
                        _ => last.as_ref() != r.value.as_ref(),
                    }
            }
        };
        if report {
            st.last_reported = Some((r.ts_ms, r.quality, r.value.clone()));
            Some(r)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::modbus::config::{DataType, ModbusTag, Order, RegisterKind};
    use crate::drivers::TagSource;
    use crate::model::Deadband;
    use std::time::Duration;

    fn tag(kind: TagKind, deadband: Option<Deadband>, rollover: Option<f64>) -> Tag {
        Tag {
            id: 0,
            device: 0,
            name: "t".into(),
            unit: None,
            description: None,
            kind,
            deadband,
            max_silence: Duration::from_secs(10),
            rollover,
            priority: crate::model::Priority::Normal,
            source: TagSource::Modbus(ModbusTag {
                register: RegisterKind::Holding,
                address: 0,
                data_type: DataType::U32,
                bit: 0,
                length: 0,
                order: Order::ABCD,
                scale: 1.0,
                offset: 0.0,
            }),
        }
    }

    fn good(ts: i64, v: f64) -> Reading {
        Reading::good(0, ts, Value::Float(v), 0)
    }

    #[test]
    fn totalizer_rollover_and_reset_are_reported_not_negative_jumps() {
        let t = tag(TagKind::Totalizer, None, Some(10_000.0));
        let mut f = TagFilter::new(1);
        assert!(f.process(&t, good(0, 9_990.0)).is_some());
        let r = f.process(&t, good(1000, 5.0)).expect("reported");
        assert_eq!(r.counter, Some(CounterEvent::Rollover { delta: 15.0 }));
        let r = f.process(&t, good(2000, 2.0)).expect("reported");
        assert_eq!(r.counter, Some(CounterEvent::Reset { previous: 5.0 }));
    }

    #[test]
    fn deadband_suppresses_small_moves_until_the_heartbeat() {
        let t = tag(TagKind::Gauge, Some(Deadband::Absolute(0.5)), None);
        let mut f = TagFilter::new(1);
        assert!(f.process(&t, good(0, 10.0)).is_some());
        assert!(f.process(&t, good(1000, 10.4)).is_none());
        assert!(f.process(&t, good(2000, 10.6)).is_some());
        assert!(f.process(&t, good(3000, 10.6)).is_none());
        assert!(
            f.process(&t, good(12_000, 10.6)).is_some(),
            "heartbeat after max_silence"
        );
    }

    #[test]
    fn remap_keeps_the_state_of_translated_tags_only() {
        let t = tag(TagKind::Gauge, Some(Deadband::Absolute(0.5)), None);
        let mut f = TagFilter::new(2);
        assert!(f.process(&t, good(0, 10.0)).is_some());
        // Old tag 0 is new tag 1; new tag 0 is new.
        let mut g = f.remap(&[Some(1), None], 2);
        let t1 = Tag { id: 1, ..t.clone() };
        assert!(
            g.process(&t1, good(1000, 10.1)).is_none(),
            "state carried over"
        );
        assert!(g.process(&t, good(1000, 10.1)).is_some(), "fresh state");
    }

    #[test]
    fn quality_changes_are_always_reported() {
        let t = tag(TagKind::Gauge, Some(Deadband::Percent(50.0)), None);
        let mut f = TagFilter::new(1);
        assert!(f.process(&t, good(0, 10.0)).is_some());
        assert!(f
            .process(&t, Reading::bad(0, 1, Quality::BadCommunication, "x"))
            .is_some());
        assert!(f
            .process(&t, Reading::bad(0, 2, Quality::BadCommunication, "x"))
            .is_none());
        assert!(f.process(&t, good(3, 10.0)).is_some());
    }
}
