//! The stage between the drivers and the buffer: driver outputs of older tag-map generations
//! translated to the current tag ids (readings left without a tag become a gap), the deadband
//! filter, counting, optional printing; events and their gaps go to the buffer untouched.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::buffer::{Buffer, BufferError};
use crate::config::TagMap;
use crate::drivers::filter::TagFilter;
use crate::drivers::{Output, Tagged};
use crate::metrics::Telemetry;
use crate::model::{GapRow, Reading, TagId};
use crate::sink;

/// The stage between the drivers and the buffer: tag ids of older map generations translated,
/// the deadband filter, counting, optional printing.
pub struct Pipeline {
    /// The current tag map.
    pub map: Arc<TagMap>,
    /// Its generation (see `drivers::Tagged`).
    pub generation: u64,
    filter: TagFilter,
    /// Units still running from older generations: their tag ids → ids of the current map.
    pub translate: BTreeMap<u64, Vec<Option<TagId>>>,
    telemetry: Arc<Telemetry>,
    print: bool,
    /// Driver outputs handled (watchdog progress).
    pub outputs: u64,
}

impl Pipeline {
    /// The stage for `map` (generation `generation`), printing JSON lines when `print`.
    pub fn new(map: Arc<TagMap>, generation: u64, telemetry: Arc<Telemetry>, print: bool) -> Self {
        Pipeline {
            filter: TagFilter::new(map.tags.len()),
            map,
            generation,
            translate: BTreeMap::new(),
            telemetry,
            print,
            outputs: 0,
        }
    }

    fn consume(&mut self, batch: Vec<Reading>) -> Vec<Reading> {
        self.telemetry.polled.fetch_add(batch.len() as u64, Relaxed);
        let (map, filter) = (&self.map, &mut self.filter);
        let kept: Vec<Reading> = batch
            .into_iter()
            .filter_map(|r| {
                map.tags
                    .get(r.tag as usize)
                    .and_then(|t| filter.process(t, r))
            })
            .collect();
        self.telemetry
            .reported
            .fetch_add(kept.len() as u64, Relaxed);
        if self.print && !kept.is_empty() {
            let out: String = kept
                .iter()
                .map(|r| sink::json_line(map, r) + "\n")
                .collect();
            print!("{out}");
        }
        kept
    }

    /// Hand one driver output to the buffer: readings through the deadband filter, events and
    /// their gaps as they are (never filtered, never dropped).
    pub async fn hand_over(&mut self, t: Tagged, buffer: &Buffer) -> Result<(), BufferError> {
        self.outputs += 1;
        let out = if t.generation == self.generation {
            t.output
        } else {
            let (out, lost) = translate_output(self.translate.get(&t.generation), t.output);
            if let Some(gap) = lost {
                tracing::error!(readings = gap.count, generation = t.generation,
                    "readings of a unit from an older tag map have no tag in the current one; reported as a gap");
                buffer.add_gap(gap).await?;
            }
            out
        };
        match out {
            Output::Readings(b) => {
                let kept = self.consume(b);
                buffer.append(kept).await
            }
            Output::Events { events, gaps } => {
                for e in &events {
                    tracing::info!(event = %e.source, kind = %e.kind, seq = e.seq, "event captured");
                    if self.print {
                        println!("{}", sink::event_line(e));
                    }
                }
                if self.print {
                    for g in &gaps {
                        println!("{}", sink::gap_line(g));
                    }
                }
                // One transaction with the definitions' cursors (see `buffer/store.rs`).
                buffer.append_events_with_gaps(events, gaps).await
            }
        }
    }

    /// Switch to the reloaded map (generation `generation`).
    pub fn switch(&mut self, new: Arc<TagMap>, generation: u64) {
        let t = crate::drivers::translate_ids(&self.map, &new);
        for older in self.translate.values_mut() {
            for id in older.iter_mut() {
                *id = id.and_then(|i| t.get(i as usize).copied().flatten());
            }
        }
        self.filter = self.filter.remap(&t, new.tags.len());
        self.translate.insert(self.generation, t);
        self.map = new;
        self.generation = generation;
    }
}

/// Translate the tag ids of an output from an older generation; readings without a tag in the
/// current map come back as a gap (counted, reported), never silently dropped.
fn translate_output(table: Option<&Vec<Option<TagId>>>, out: Output) -> (Output, Option<GapRow>) {
    let map_id = |id: TagId| table.and_then(|t| t.get(id as usize).copied().flatten());
    match out {
        Output::Readings(rs) => {
            let (mut kept, mut lost) = (Vec::with_capacity(rs.len()), Vec::new());
            for mut r in rs {
                match map_id(r.tag) {
                    Some(id) => {
                        r.tag = id;
                        kept.push(r);
                    }
                    None => lost.push(r.ts_ms),
                }
            }
            let gap = (!lost.is_empty()).then(|| GapRow {
                tags: Vec::new(),
                range: lost.iter().copied().min().unwrap_or(0)
                    ..lost.iter().copied().max().unwrap_or(0) + 1,
                count: lost.len() as u64,
                reason: crate::model::GapReason::ReloadUnmapped,
            });
            (Output::Readings(kept), gap)
        }
        Output::Events { events, gaps } => {
            let gaps = gaps
                .into_iter()
                .map(|mut g| {
                    g.tags = g.tags.iter().filter_map(|&t| map_id(t)).collect();
                    g
                })
                .collect();
            (Output::Events { events, gaps }, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quality, Value};

    #[test]
    fn older_generation_ids_are_translated_and_untranslatable_readings_become_a_gap() {
        let table = vec![Some(5), None, Some(0)];
        let out = Output::Readings(vec![
            Reading::good(0, 100, Value::UInt(1), 0),
            Reading::bad(1, 110, Quality::BadCommunication, "x"),
            Reading::good(2, 120, Value::UInt(3), 0),
        ]);
        let (out, gap) = translate_output(Some(&table), out);
        let Output::Readings(rs) = out else {
            panic!("readings")
        };
        assert_eq!(rs.iter().map(|r| r.tag).collect::<Vec<_>>(), vec![5, 0]);
        let gap = gap.expect("one reading had no tag in the new map");
        assert_eq!((gap.count, gap.range.clone()), (1, 110..111));
        assert_eq!(gap.reason, crate::model::GapReason::ReloadUnmapped);
        // Gaps of events keep only the tags that still exist.
        let ev = Output::Events {
            events: Vec::new(),
            gaps: vec![GapRow {
                tags: vec![0, 1],
                range: 0..1,
                count: 2,
                reason: crate::model::GapReason::MissedEvent,
            }],
        };
        let (ev, none) = translate_output(Some(&table), ev);
        assert!(none.is_none());
        assert!(matches!(ev, Output::Events { gaps, .. } if gaps[0].tags == vec![5]));
    }
}
