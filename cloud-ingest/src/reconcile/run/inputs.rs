//! Loading what each figure's data is worth: the coverage of its input tags (minute buckets of
//! good readings through [`Store::series`], which the stores serve from their minute rollups;
//! gap records; dead letters) and a totalizer's quantity across the rollover and reset markers
//! of its readings.

use std::collections::{BTreeSet, HashMap};

use super::{Reconciler, Registry};
use crate::analytics::stale;
use crate::reconcile::engine::coverage::{good_in, judge, tag_coverage, TagWindow, MINUTE_MS};
use crate::reconcile::engine::totalizer::{window_quantity, CounterMark};
use crate::reconcile::error::ReconcileError;
use crate::reconcile::model::{Coverage, GapSpan, TagCoverage, DAY_MS};
use crate::store::{GapRow, Store};

/// One figure's input tags over its window `[from_ms, to_ms)`, and the instants it reads them at.
#[derive(Debug, Clone, Default)]
pub(crate) struct Need {
    /// Tag ids (unregistered tags are left out by the caller).
    pub tags: Vec<i64>,
    /// Window start, ms.
    pub from_ms: i64,
    /// Window end, ms.
    pub to_ms: i64,
    /// Instants read (opening, closing, window ends).
    pub boundaries: Vec<i64>,
}

/// What the coverage of one site's day reads once: the tags' first readings and the gap records.
#[derive(Debug, Default)]
pub(crate) struct CoverageCtx {
    first: HashMap<i64, Option<i64>>,
    gaps: Vec<GapRow>,
    as_of_ms: i64,
}

impl Reconciler {
    /// Read the first readings of `tags` and the site's gap records over `[from_ms, to_ms)`.
    pub(crate) async fn coverage_ctx(
        &self,
        store: &dyn Store,
        site: &str,
        tags: &[i64],
        from_ms: i64,
        to_ms: i64,
        as_of_ms: i64,
    ) -> Result<CoverageCtx, ReconcileError> {
        let ids: Vec<i64> = tags
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let first = store.ledger().first_readings(&ids).await?;
        let gaps = store.gaps(Some(site), from_ms, to_ms).await?;
        Ok(CoverageCtx {
            first: ids.into_iter().zip(first).collect(),
            gaps,
            as_of_ms,
        })
    }

    /// The coverage of one figure (None: none of its tags is registered).
    pub(crate) async fn coverage(
        &self,
        store: &dyn Store,
        reg: &Registry,
        cx: &CoverageCtx,
        need: Need,
    ) -> Result<Option<Coverage>, ReconcileError> {
        let rule = self.cfg.coverage_rule();
        let (from, to) = (need.from_ms, need.to_ms.min(cx.as_of_ms));
        let ids: BTreeSet<i64> = need.tags.iter().copied().collect();
        let mut inputs = Vec::new();
        let mut agents: BTreeSet<(String, String)> = BTreeSet::new();
        for id in ids {
            let Some(tag) = reg.tag(id) else { continue };
            agents.insert((tag.site.clone(), tag.agent.clone()));
            let limit = stale::limit_ms(tag.interval_ms, &self.cfg.stale);
            let minutes: Vec<(i64, i64)> = if to > from {
                store
                    .series(id, from - limit, to, MINUTE_MS)
                    .await?
                    .into_iter()
                    .map(|b| (b.ts_ms, b.count - b.bad))
                    .collect()
            } else {
                Vec::new()
            };
            let gaps = cx
                .gaps
                .iter()
                .filter(|g| g.site == tag.site && g.agent == tag.agent)
                .filter(|g| g.tag_ids.is_empty() || g.tag_ids.contains(&id))
                .filter(|g| g.from_ms < to && g.to_ms >= from)
                .map(|g| GapSpan {
                    from_ms: g.from_ms,
                    to_ms: g.to_ms,
                    count: (g.count > 0).then_some(g.count),
                    reason: g.reason.clone(),
                    filled: false,
                })
                .collect();
            let floor_ms = i64::try_from(self.cfg.expected_interval_min_s.saturating_mul(1000))
                .unwrap_or(i64::MAX);
            let w = TagWindow {
                tag: format!("{}/{}", tag.agent, tag.name),
                interval_ms: tag.interval_ms.max(floor_ms),
                stale_limit_ms: limit,
                from_ms: from,
                to_ms: to,
                first_ms: cx.first.get(&id).copied().flatten(),
                minutes: &minutes,
                gaps,
                boundaries: need
                    .boundaries
                    .iter()
                    .copied()
                    .filter(|b| *b <= to)
                    .collect(),
            };
            inputs.push(tag_coverage(&w, &rule));
        }
        if inputs.is_empty() {
            return Ok(None);
        }
        let mut dead = 0;
        for (site, agent) in &agents {
            dead += store
                .ledger()
                .dead_letter_count(site, agent, from, to.max(from))
                .await?;
        }
        Ok(Some(judge(inputs, dead, &rule)))
    }

    /// A totalizer's quantity between the readings `a` and `b` (`(ts, value)`), across the
    /// rollover and reset markers stored between them (in the totalizer's unit). None without
    /// both readings, or when a rollover's previous value is unknown.
    pub(crate) async fn totalizer_quantity(
        &self,
        store: &dyn Store,
        tag: Option<i64>,
        a: Option<(i64, f64)>,
        b: Option<(i64, f64)>,
    ) -> Result<Option<f64>, ReconcileError> {
        let (Some(tag), Some((ta, x)), Some((tb, y))) = (tag, a, b) else {
            return Ok(None);
        };
        let raw = store.ledger().counter_marks(tag, ta, tb).await?;
        if raw.is_empty() {
            return Ok(Some(y - x));
        }
        // The value before each marked reading (the rise up to a wrap).
        let probes: Vec<(i64, i64)> = raw.iter().map(|m| (tag, m.0 - 1)).collect();
        let before = store.ledger().values_at(&probes, 7 * DAY_MS).await?;
        let marks: Vec<CounterMark> = raw
            .iter()
            .zip(before)
            .filter_map(|(&(ts, v, kind, c), b)| {
                CounterMark::from_columns(ts, v, kind, c, b.map(|p| p.1))
            })
            .collect();
        Ok(window_quantity(x, y, &marks))
    }

    /// Has data of an incomplete input arrived since its run counted it (more good readings
    /// in its window than it had)? `site` is the record's; inputs are `agent/name`.
    pub(crate) async fn data_arrived(
        &self,
        store: &dyn Store,
        reg: &Registry,
        site: &str,
        input: &TagCoverage,
    ) -> Result<bool, ReconcileError> {
        let complete = input.gaps.iter().all(|g| g.filled)
            && input.stale.is_empty()
            && input.present >= input.expected;
        if complete || input.to_ms <= input.from_ms {
            return Ok(false);
        }
        let Some((agent, name)) = input.tag.split_once('/') else {
            return Ok(false);
        };
        let Some(id) = reg.id(site, agent, name) else {
            return Ok(false);
        };
        let minutes: Vec<(i64, i64)> = store
            .series(id, input.from_ms, input.to_ms, MINUTE_MS)
            .await?
            .into_iter()
            .map(|b| (b.ts_ms, b.count - b.bad))
            .collect();
        Ok(good_in(&minutes, input.from_ms, input.to_ms) > input.present)
    }
}
