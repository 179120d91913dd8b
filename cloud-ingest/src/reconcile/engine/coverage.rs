//! Coverage of a figure's inputs: for each input tag over the figure's window, the readings
//! expected (window over poll interval, from the tag's first reading on) against the good
//! readings present (minute buckets: the stores' minute rollups), the reported gaps and the
//! stale spans (no good reading for longer than the tag's stale limit; bad quality counts as
//! missing) overlapping it, and the dead-lettered batches of its agent. Pure; unit-tested below.
//!
//! The rule ([`CoverageRule`], `[reconcile] min_coverage`, `dead_letters_incomplete`): a figure
//! is complete when every input has `present / expected ≥ min_coverage`, no unfilled gap or stale
//! span touches an instant the figure reads a tag at (opening/closing gauge, totalizer at the
//! window ends), and (by default) no data batch of its agents was dead-lettered in the window.
//! A gap counts until the data of its span arrives (a backfill or an import): then it is kept,
//! marked `filled`. Resolution: one minute.

use super::super::model::{day_name, day_of, Coverage, GapSpan, Span, TagCoverage};

/// One minute, ms.
pub const MINUTE_MS: i64 = 60_000;

/// When a figure's data counts as complete.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoverageRule {
    /// Minimum present / expected of every input, 0…1.
    pub min_coverage: f64,
    /// A dead-lettered data batch of an input's agent in the window makes the figure incomplete.
    pub dead_letters_incomplete: bool,
}

impl Default for CoverageRule {
    fn default() -> Self {
        CoverageRule {
            min_coverage: 0.98,
            dead_letters_incomplete: true,
        }
    }
}

/// One input tag over one window, as loaded from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct TagWindow<'a> {
    /// `agent/name`.
    pub tag: String,
    /// Poll interval, ms.
    pub interval_ms: i64,
    /// Stale limit, ms (see [`crate::analytics::stale`]).
    pub stale_limit_ms: i64,
    /// Window start, ms.
    pub from_ms: i64,
    /// Window end, ms (exclusive).
    pub to_ms: i64,
    /// The tag's first stored reading (None: never reported: nothing is expected).
    pub first_ms: Option<i64>,
    /// Good readings per minute (bucket start, count) over `[from − stale limit, to)`, by time;
    /// minutes without a good reading may be absent.
    pub minutes: &'a [(i64, i64)],
    /// Gap records of the tag's agent concerning the tag, overlapping the window (`filled` is
    /// computed here).
    pub gaps: Vec<GapSpan>,
    /// Instants the figure reads the tag at.
    pub boundaries: Vec<i64>,
}

/// Good readings of the minute buckets overlapping `[from, to)` (how `present` is counted).
pub fn good_in(minutes: &[(i64, i64)], from: i64, to: i64) -> i64 {
    minutes
        .iter()
        .filter(|(b, n)| *n > 0 && b + MINUTE_MS > from && *b < to)
        .map(|(_, n)| n)
        .sum()
}

/// Spans inside `[start, to]` without a good reading for longer than `limit`.
fn stale_spans(
    minutes: &[(i64, i64)],
    start: i64,
    to: i64,
    limit: i64,
    seen_from: i64,
) -> Vec<Span> {
    // The last instant known good: the end of the last good minute before the window, else
    // (nothing good within the limit before it) the tag is stale from the window start on.
    let mut prev = minutes
        .iter()
        .filter(|(b, n)| *n > 0 && *b < start)
        .map(|(b, _)| b + MINUTE_MS - 1)
        .next_back()
        .unwrap_or(seen_from - limit);
    let mut out: Vec<Span> = Vec::new();
    let mut push = |from: i64, until: i64| {
        let (a, b) = (from.max(start), until.min(to));
        if a <= b {
            out.push(Span {
                from_ms: a,
                to_ms: b,
            });
        }
    };
    for (b, n) in minutes
        .iter()
        .filter(|(b, n)| *n > 0 && *b >= start && *b < to)
    {
        let _ = n;
        if b - prev > limit {
            push(prev + limit, *b);
        }
        prev = b + MINUTE_MS - 1;
    }
    if to - prev > limit {
        push(prev + limit, to);
    }
    out
}

/// The coverage of one input over its window.
pub fn tag_coverage(w: &TagWindow<'_>, rule: &CoverageRule) -> TagCoverage {
    let interval = w.interval_ms.max(1);
    let Some(first) = w.first_ms.filter(|f| *f < w.to_ms) else {
        // Never reported (before the agent's first data): nothing expected, nothing missing.
        return TagCoverage {
            tag: w.tag.clone(),
            from_ms: w.from_ms,
            to_ms: w.to_ms,
            expected: 0,
            present: 0,
            gaps: w.gaps.clone(),
            stale: Vec::new(),
            boundaries_missing: Vec::new(),
        };
    };
    let start = w.from_ms.max(first);
    let expected = (w.to_ms - start).max(0) / interval;
    let present = good_in(w.minutes, start, w.to_ms);
    // Before the first reading there is nothing to be stale about.
    let seen_from = if first > w.from_ms - w.stale_limit_ms {
        first + w.stale_limit_ms
    } else {
        w.from_ms
    };
    let stale = stale_spans(w.minutes, start, w.to_ms, w.stale_limit_ms, seen_from);
    let gaps: Vec<GapSpan> = w
        .gaps
        .iter()
        .map(|g| {
            let (a, b) = (g.from_ms.max(start), g.to_ms.min(w.to_ms));
            let want = (b - a).max(0) / interval;
            let got = good_in(w.minutes, a, b.saturating_add(1));
            let filled = if want > 0 {
                got as f64 >= want as f64 * rule.min_coverage
            } else {
                got > 0
            };
            GapSpan {
                filled,
                ..g.clone()
            }
        })
        .collect();
    let boundaries_missing = w
        .boundaries
        .iter()
        .copied()
        .filter(|t| {
            *t >= start
                && (stale.iter().any(|s| s.contains(*t))
                    || gaps
                        .iter()
                        .any(|g| !g.filled && g.from_ms <= *t && *t <= g.to_ms))
        })
        .collect();
    TagCoverage {
        tag: w.tag.clone(),
        from_ms: w.from_ms,
        to_ms: w.to_ms,
        expected,
        present,
        gaps,
        stale,
        boundaries_missing,
    }
}

/// `YYYY-MM-DD HH:MM` (UTC).
pub fn when(ms: i64) -> String {
    let m = ms.rem_euclid(86_400_000) / 60_000;
    format!("{} {:02}:{:02}", day_name(day_of(ms)), m / 60, m % 60)
}

/// `from–to`, the end's date left out when it is the start's.
fn range(from: i64, to: i64) -> String {
    let (a, b) = (when(from), when(to));
    match (a.split_once(' '), b.split_once(' ')) {
        (Some((da, _)), Some((db, tb))) if da == db => format!("{a}–{tb}"),
        _ => format!("{a}–{b}"),
    }
}

/// Judge the inputs of one figure.
pub fn judge(inputs: Vec<TagCoverage>, dead_letters: i64, rule: &CoverageRule) -> Coverage {
    let ratio = inputs.iter().map(TagCoverage::ratio).fold(1.0, f64::min);
    let mut missing = Vec::new();
    let mut complete = true;
    for i in &inputs {
        let mut said = false;
        for g in i.gaps.iter().filter(|g| !g.filled) {
            let count = g
                .count
                .map_or("unknown count".to_owned(), |n| format!("{n} readings"));
            missing.push(format!(
                "data missing for {} {} (gap: {}, {count})",
                i.tag,
                range(g.from_ms.max(i.from_ms), g.to_ms.min(i.to_ms)),
                g.reason
            ));
            said = true;
        }
        for s in &i.stale {
            missing.push(format!(
                "data missing for {} {} (no good reading)",
                i.tag,
                range(s.from_ms, s.to_ms)
            ));
            said = true;
        }
        let short = i.ratio() < rule.min_coverage;
        if short && !said {
            missing.push(format!(
                "data missing for {} {}: {} of {} readings",
                i.tag,
                range(i.from_ms, i.to_ms),
                i.present,
                i.expected
            ));
        }
        complete &= !short && i.boundaries_missing.is_empty();
    }
    if dead_letters > 0 {
        missing.push(format!(
            "{dead_letters} data batch(es) of the agent dead-lettered in the window"
        ));
        complete &= !rule.dead_letters_incomplete;
    }
    Coverage {
        ratio,
        complete,
        inputs,
        dead_letters,
        missing,
    }
}

/// The coverage of a figure made of others (a chain stage over tanks or parcels): every input,
/// complete when all are. None when none has a coverage.
pub fn merge<'a>(parts: impl IntoIterator<Item = Option<&'a Coverage>>) -> Option<Coverage> {
    let mut out: Option<Coverage> = None;
    for c in parts.into_iter().flatten() {
        let o = out.get_or_insert_with(|| Coverage {
            ratio: 1.0,
            complete: true,
            inputs: Vec::new(),
            dead_letters: 0,
            missing: Vec::new(),
        });
        o.ratio = o.ratio.min(c.ratio);
        o.complete &= c.complete;
        o.dead_letters = o.dead_letters.max(c.dead_letters);
        for i in &c.inputs {
            if !o.inputs.contains(i) {
                o.inputs.push(i.clone());
            }
        }
        for m in &c.missing {
            if !o.missing.contains(m) {
                o.missing.push(m.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 20_517 * 86_400_000; // 2026-03-05
    const H: i64 = 3_600_000;

    /// One good reading every 5 minutes over `[from, to)` (minute buckets), except in `holes`.
    fn minutes(from: i64, to: i64, holes: &[(i64, i64)]) -> Vec<(i64, i64)> {
        (0..)
            .map(|k| from + k * 300_000)
            .take_while(|t| *t < to)
            .filter(|t| !holes.iter().any(|(a, b)| t >= a && t < b))
            .map(|t| (t - t.rem_euclid(MINUTE_MS), 1))
            .collect()
    }

    fn window<'a>(m: &'a [(i64, i64)], gaps: Vec<GapSpan>, boundaries: Vec<i64>) -> TagWindow<'a> {
        TagWindow {
            tag: "gw-1/JM1.total".into(),
            interval_ms: 300_000,
            stale_limit_ms: 900_000,
            from_ms: DAY,
            to_ms: DAY + 24 * H,
            first_ms: Some(DAY - 30 * 86_400_000),
            minutes: m,
            gaps,
            boundaries,
        }
    }

    fn gap(from: i64, to: i64, count: Option<i64>) -> GapSpan {
        GapSpan {
            from_ms: from,
            to_ms: to,
            count,
            reason: "buffer-full".into(),
            filled: false,
        }
    }

    #[test]
    fn a_full_day_is_complete() {
        let m = minutes(DAY - H, DAY + 24 * H, &[]);
        let rule = CoverageRule::default();
        let c = tag_coverage(&window(&m, vec![], vec![DAY, DAY + 24 * H]), &rule);
        assert_eq!((c.expected, c.present), (288, 288));
        assert!(
            c.stale.is_empty() && c.boundaries_missing.is_empty(),
            "{c:?}"
        );
        let j = judge(vec![c], 0, &rule);
        assert!(j.complete && j.missing.is_empty());
        assert_eq!(j.ratio, 1.0);
    }

    #[test]
    fn a_two_hour_outage_with_a_gap_record_is_incomplete_until_filled() {
        let rule = CoverageRule::default();
        let hole = (DAY + 10 * H, DAY + 12 * H);
        let m = minutes(DAY - H, DAY + 24 * H, &[hole]);
        let c = tag_coverage(
            &window(&m, vec![gap(hole.0, hole.1, None)], vec![DAY, DAY + 24 * H]),
            &rule,
        );
        assert_eq!((c.expected, c.present), (288, 264));
        assert_eq!(c.stale.len(), 1);
        assert!(!c.gaps[0].filled);
        let j = judge(vec![c], 0, &rule);
        assert!(!j.complete);
        assert!(
            j.missing[0].starts_with("data missing for gw-1/JM1.total 2026-03-05 10:00–12:00"),
            "{:?}",
            j.missing
        );
        assert!(j.missing[0].contains("unknown count"));
        // Backfilled: the gap record stays, marked filled; the figure is complete.
        let m = minutes(DAY - H, DAY + 24 * H, &[]);
        let c = tag_coverage(
            &window(
                &m,
                vec![gap(hole.0, hole.1, Some(24))],
                vec![DAY, DAY + 24 * H],
            ),
            &rule,
        );
        assert!(c.gaps[0].filled);
        assert!(judge(vec![c], 0, &rule).complete);
    }

    #[test]
    fn a_short_hole_at_a_boundary_makes_it_incomplete() {
        // 99 % present, but the closing reading is stale: the last 20 minutes of the day missing.
        let rule = CoverageRule {
            min_coverage: 0.9,
            ..CoverageRule::default()
        };
        let m = minutes(
            DAY - H,
            DAY + 24 * H,
            &[(DAY + 24 * H - 20 * 60_000, DAY + 24 * H)],
        );
        let c = tag_coverage(&window(&m, vec![], vec![DAY, DAY + 24 * H]), &rule);
        assert!(c.ratio() > 0.9);
        assert_eq!(c.boundaries_missing, vec![DAY + 24 * H]);
        assert!(!judge(vec![c.clone()], 0, &rule).complete);
        // The same hole mid-day touches no boundary.
        let m = minutes(
            DAY - H,
            DAY + 24 * H,
            &[(DAY + 5 * H, DAY + 5 * H + 20 * 60_000)],
        );
        let c = tag_coverage(&window(&m, vec![], vec![DAY, DAY + 24 * H]), &rule);
        assert_eq!(c.stale.len(), 1);
        assert!(c.boundaries_missing.is_empty());
        assert!(judge(vec![c], 0, &rule).complete);
        // A gap record at the opening instant, even a short one.
        let m = minutes(DAY - H, DAY + 24 * H, &[]);
        let g = gap(DAY - 1000, DAY + 1000, Some(1));
        let c = tag_coverage(&window(&m, vec![g], vec![DAY]), &rule);
        // (its minutes hold readings of the neighbours: filled by the minute resolution)
        assert!(c.gaps[0].filled);
    }

    #[test]
    fn bad_quality_counts_as_missing_and_the_stale_span_is_named() {
        let rule = CoverageRule::default();
        // Six hours of bad-quality readings: the stores' good counts are 0 there.
        let m = minutes(DAY - H, DAY + 24 * H, &[(DAY + 6 * H, DAY + 12 * H)]);
        let c = tag_coverage(&window(&m, vec![], vec![DAY, DAY + 24 * H]), &rule);
        assert_eq!(c.present, 288 - 72);
        assert_eq!(c.stale.len(), 1);
        let j = judge(vec![c], 0, &rule);
        assert!(!j.complete);
        assert!(
            j.missing[0].contains("(no good reading)"),
            "{:?}",
            j.missing
        );
        assert!((j.ratio - 0.75).abs() < 1e-9);
    }

    #[test]
    fn nothing_is_expected_before_the_first_reading() {
        let rule = CoverageRule::default();
        let mut w = window(&[], vec![], vec![DAY, DAY + 24 * H]);
        w.first_ms = None;
        let c = tag_coverage(&w, &rule);
        assert_eq!(c.expected, 0);
        assert!(judge(vec![c], 0, &rule).complete);
        // First data at noon: expected from then on, not stale before it.
        let m = minutes(DAY + 12 * H, DAY + 24 * H, &[]);
        let mut w = window(&m, vec![], vec![DAY, DAY + 24 * H]);
        w.first_ms = Some(DAY + 12 * H);
        let c = tag_coverage(&w, &rule);
        assert_eq!((c.expected, c.present), (144, 144));
        assert!(c.stale.is_empty(), "{c:?}");
    }

    #[test]
    fn dead_letters_and_merging() {
        let rule = CoverageRule::default();
        let m = minutes(DAY - H, DAY + 24 * H, &[]);
        let c = tag_coverage(&window(&m, vec![], vec![DAY]), &rule);
        let j = judge(vec![c.clone()], 2, &rule);
        assert!(!j.complete);
        let lenient = CoverageRule {
            dead_letters_incomplete: false,
            ..rule
        };
        let k = judge(vec![c], 2, &lenient);
        assert!(k.complete);
        assert_eq!(k.missing.len(), 1);
        let all = merge([Some(&j), None, Some(&k)]).expect("merged");
        assert!(!all.complete);
        assert_eq!(all.inputs.len(), 1);
        assert!(merge([None, None]).is_none());
    }
}
