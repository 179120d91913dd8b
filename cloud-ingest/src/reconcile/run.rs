//! The I/O around the pure engine: load a day's inputs from the store (tank NSV from the gauge
//! tags and strapping tables through [`crate::measure`], meter totalizer deltas, batch records,
//! ePODs, discharges, GPS tracks, past trend points), run [`reconcile_day`] per terminal site,
//! save the results ([`Ledger::save_run`]); the daily schedule and the 5-minute stale-tag check.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use flowsquare_service::clock::now_ms;

use crate::analytics::stale::{stale_tags, TagAge};
use crate::measure::{self, StrappingTable, TankGauge, TankSpec};
use crate::store::ledger::{EventRow, NewRun, RunRow};
use crate::store::{Store, TagRow};

use super::config::{ReconcileConfig, TankConfig};
use super::engine::{reconcile_day, DayResult, Params};
use super::error::ReconcileError;
use super::model::*;

mod inputs;
mod load;

/// A tank with its parsed table and spec.
#[derive(Debug, Clone)]
pub struct TankModel {
    /// Its configuration.
    pub cfg: TankConfig,
    /// Capacity table.
    pub table: StrappingTable,
    /// Shell and product.
    pub spec: TankSpec,
}

/// The site model, ready to reconcile.
#[derive(Debug, Clone)]
pub struct Reconciler {
    /// `[reconcile]`.
    pub cfg: ReconcileConfig,
    /// Tanks in config order.
    pub tanks: Vec<TankModel>,
}

/// What a run of one date did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The stored run.
    pub run: RunRow,
    /// Its records and alerts.
    pub result: DayResult,
}

fn spec_of(t: &TankConfig) -> Result<TankSpec, String> {
    let group = match t.group.as_str() {
        "special" => measure::Group::Special {
            alpha60_per_f: t.alpha60_per_f.unwrap_or(0.0),
        },
        g => measure::Group::parse(g).ok_or_else(|| format!("group {g:?}"))?,
    };
    let base = match t.base.as_str() {
        "15C" => measure::Base::C15,
        "20C" => measure::Base::C20,
        "60F" => measure::Base::F60,
        b => return Err(format!("base {b:?}")),
    };
    Ok(TankSpec {
        group,
        base,
        shell_alpha_per_c: t.shell_alpha_per_c,
        shell_ref_temp_c: t.shell_ref_temp_c,
        insulated: t.insulated,
        floating_roof_adjust_m3: -t.floating_roof_adjust_m3,
    })
}

impl Reconciler {
    /// Validate `cfg` and read the strapping tables (paths relative to `base_dir`); every
    /// problem is reported at once.
    pub fn load(cfg: ReconcileConfig, base_dir: &Path) -> Result<Reconciler, ReconcileError> {
        let mut problems: Vec<String> = cfg.validate().err().into_iter().collect();
        let mut tables = Vec::new();
        for t in &cfg.tanks {
            let path = cfg.table_path(t, base_dir);
            match std::fs::read_to_string(&path) {
                Ok(text) => tables.push((t.id.clone(), text)),
                Err(e) => problems.push(format!(
                    "tanks {:?}: strapping table {}: {e}",
                    t.id,
                    path.display()
                )),
            }
        }
        if !problems.is_empty() {
            return Err(ReconcileError::Config(problems.join("\n")));
        }
        Reconciler::with_tables(cfg, &tables)
    }

    /// Like [`Reconciler::load`] with the tables' CSV text given per tank id (tests, the demo).
    pub fn with_tables(
        cfg: ReconcileConfig,
        tables: &[(String, String)],
    ) -> Result<Reconciler, ReconcileError> {
        let mut problems: Vec<String> = cfg.validate().err().into_iter().collect();
        let mut tanks = Vec::new();
        for t in &cfg.tanks {
            let Some((_, text)) = tables.iter().find(|(id, _)| id == &t.id) else {
                problems.push(format!("tanks {:?}: no strapping table", t.id));
                continue;
            };
            let table = match StrappingTable::from_csv(text) {
                Ok(x) => x,
                Err(e) => {
                    problems.push(format!(
                        "tanks {:?}: strapping table {}: {e}",
                        t.id,
                        t.strapping_table.display()
                    ));
                    continue;
                }
            };
            match spec_of(t) {
                Ok(spec) => tanks.push(TankModel {
                    cfg: t.clone(),
                    table,
                    spec,
                }),
                Err(e) => problems.push(format!("tanks {:?}: {e}", t.id)),
            }
        }
        if !problems.is_empty() {
            return Err(ReconcileError::Config(problems.join("\n")));
        }
        Ok(Reconciler { cfg, tanks })
    }

    fn params(&self) -> Params<'_> {
        Params {
            tolerances: &self.cfg.tolerances,
            grace_ms: (self.cfg.epod_grace_hours * 3_600_000.0) as i64,
            drift: &self.cfg.drift,
            stops: &self.cfg.stops,
        }
    }

    /// Reconcile `day` (all terminal sites of the model), store the results as the date's new
    /// current run (the earlier runs and their records stay) and synchronise the date's alerts.
    pub async fn run_day(
        &self,
        store: &dyn Store,
        day: i64,
        as_of_ms: i64,
        trigger: &str,
    ) -> Result<RunReport, ReconcileError> {
        let started_ms = now_ms();
        let clock = std::time::Instant::now();
        let registry = Registry::new(store.tags(None, None).await?);
        let mut all = DayResult::default();
        let (mut load_s, mut compute_s) = (0.0, 0.0);
        for site in self.cfg.sites() {
            let t = std::time::Instant::now();
            let inputs = self
                .load_day(store, &registry, &site, day, as_of_ms)
                .await?;
            load_s += t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let r = reconcile_day(&inputs, &self.params());
            compute_s += t.elapsed().as_secs_f64();
            all.variances.extend(r.variances);
            all.alerts.extend(r.alerts);
        }
        self.drop_before_first_data(store, &registry, day, &mut all.alerts)
            .await?;
        let save = std::time::Instant::now();
        let run = NewRun {
            date: day_name(day),
            trigger: trigger.to_owned(),
            started_ms,
            finished_ms: now_ms(),
            as_of_ms,
        };
        let run = store
            .ledger()
            .save_run(&run, &all.variances, &all.alerts, now_ms())
            .await?;
        tracing::debug!(
            date = %run.date,
            load_ms = load_s * 1000.0,
            compute_ms = compute_s * 1000.0,
            save_ms = save.elapsed().as_secs_f64() * 1000.0,
            total_ms = clock.elapsed().as_secs_f64() * 1000.0,
            "reconciliation run phases"
        );
        Ok(RunReport { run, result: all })
    }

    /// No "no-data" alert for a day that began before the tank's agent first reported: the day
    /// before a site came online, and the day it came online on (its opening stock predates
    /// the first reading: not missing data, but data that never existed). The records keep
    /// their `no-data` verdict. Returns how many alerts were left out (logged).
    async fn drop_before_first_data(
        &self,
        store: &dyn Store,
        registry: &Registry,
        day: i64,
        alerts: &mut Vec<NewAlert>,
    ) -> Result<usize, ReconcileError> {
        let day_start = day_start_ms(day);
        let mut before: Vec<String> = Vec::new();
        for t in &self.cfg.tanks {
            if !alerts
                .iter()
                .any(|a| a.kind == "no-data" && a.place == t.id && a.site == t.site)
            {
                continue;
            }
            let ids: Vec<i64> = self.tank_tags(registry, t).into_iter().flatten().collect();
            let first = store
                .ledger()
                .last_good(&ids, i64::MIN)
                .await?
                .into_iter()
                .filter_map(|g| g.first_ms)
                .min();
            if first.is_none_or(|f| f > day_start) {
                before.push(t.id.clone());
            }
        }
        let n = alerts.len();
        alerts.retain(|a| !(a.kind == "no-data" && before.contains(&a.place)));
        let dropped = n - alerts.len();
        if dropped > 0 {
            tracing::info!(date = %day_name(day), tanks = ?before, "no-data alerts left out: the day began before the first data of these tanks' agents");
        }
        Ok(dropped)
    }

    /// Stock of a tank at `at` from the probed values (level, temp, density, [density temp],
    /// [water], [ambient]); `None` if a required tag has no good reading or the measurement
    /// rejects the inputs.
    pub(crate) fn stock(&self, t: &TankModel, v: &[Option<f64>]) -> Option<Stock> {
        let (level, temp, dens) = (v[0]?, v[1]?, v[2]?);
        let g = TankGauge {
            level_mm: level,
            water_level_mm: if t.cfg.water_tag.is_some() {
                v[4]?
            } else {
                0.0
            },
            temp_c: temp,
            ambient_c: if t.cfg.ambient_tag.is_some() {
                Some(v[5]?)
            } else {
                None
            },
            density_obs_kgm3: dens,
            density_obs_temp_c: if t.cfg.density_temp_tag.is_some() {
                v[3]?
            } else {
                temp
            },
            sw_pct: t.cfg.sw_pct,
        };
        match measure::tank_quantities(&t.table, &t.spec, &g) {
            Ok(q) => Some(Stock {
                nsv_l: q.nsv * t.cfg.table_unit_l,
                gov_l: q.gov * t.cfg.table_unit_l,
            }),
            Err(e) => {
                tracing::warn!(tank = %t.cfg.id, error = %e, "tank gauging rejected");
                None
            }
        }
    }

    /// The tags of a tank, in the order [`Reconciler::stock`] reads them (absent ones: None).
    pub(crate) fn tank_tags(&self, reg: &Registry, t: &TankConfig) -> [Option<i64>; 6] {
        let id = |n: &str| reg.id(&t.site, &t.agent, n);
        let opt = |n: &Option<String>| n.as_deref().and_then(id);
        [
            id(&t.level_tag),
            id(&t.temperature_tag),
            id(&t.density_tag),
            opt(&t.density_temp_tag),
            opt(&t.water_tag),
            opt(&t.ambient_tag),
        ]
    }

    /// Run again each of the last `recheck_days` days (before `now`'s) whose last run left
    /// incomplete records, once more of their missing data has arrived (a backfill, an import,
    /// a late batch). Cheap when nothing arrived: a minute-bucket count per incomplete input.
    pub async fn recheck_incomplete(
        &self,
        store: &dyn Store,
        now: i64,
    ) -> Result<Vec<RunReport>, ReconcileError> {
        let today = day_of(now);
        let back = i64::from(self.cfg.recheck_days);
        let mut reg: Option<Registry> = None;
        let mut out = Vec::new();
        for day in (today - back).max(0)..today {
            let records = store.ledger().variances(&day_name(day), None).await?;
            let mut seen = std::collections::BTreeSet::new();
            let mut arrived = false;
            'records: for r in records
                .iter()
                .filter(|r| r.v.verdict == Verdict::Incomplete)
            {
                for i in r.v.coverage.iter().flat_map(|c| &c.inputs) {
                    if !seen.insert((r.v.site.clone(), i.tag.clone(), i.from_ms, i.to_ms)) {
                        continue;
                    }
                    if reg.is_none() {
                        reg = Some(Registry::new(store.tags(None, None).await?));
                    }
                    let Some(reg) = reg.as_ref() else { continue };
                    if self.data_arrived(store, reg, &r.v.site, i).await? {
                        arrived = true;
                        break 'records;
                    }
                }
            }
            if arrived {
                out.push(self.run_day(store, day, now, "late-data").await?);
            }
        }
        Ok(out)
    }

    /// Reconcile the days `from..=to` in order (trends need the earlier days), reporting each.
    pub async fn run_range(
        &self,
        store: &dyn Store,
        from: i64,
        to: i64,
        as_of_ms: i64,
        trigger: &str,
        mut progress: impl FnMut(&RunReport),
    ) -> Result<Vec<RunReport>, ReconcileError> {
        let mut out = Vec::new();
        for day in from..=to {
            let r = self.run_day(store, day, as_of_ms, trigger).await?;
            progress(&r);
            out.push(r);
        }
        Ok(out)
    }

    /// The stale-tag check: open an alert per stale tag, close those that report again.
    /// Returns (stale tags, opened, closed).
    pub async fn check_stale(
        &self,
        store: &dyn Store,
        now: i64,
    ) -> Result<(usize, i64, i64), ReconcileError> {
        let tags = store.tags(None, None).await?;
        let reg = Registry::new(tags.clone());
        let wanted: Vec<&TagRow> = if self.cfg.stale.all_tags {
            tags.iter().collect()
        } else {
            let mut ids: Vec<i64> = Vec::new();
            for t in &self.cfg.tanks {
                ids.extend(self.tank_tags(&reg, t).into_iter().flatten());
            }
            for m in &self.cfg.meters {
                ids.extend(reg.id(&m.site, &m.agent, &m.totalizer_tag));
            }
            tags.iter().filter(|t| ids.contains(&t.id)).collect()
        };
        let ids: Vec<i64> = wanted.iter().map(|t| t.id).collect();
        // Fresh means a *good* reading within the limit: bad-quality spans count as silent.
        let good = store
            .ledger()
            .last_good(&ids, now - crate::analytics::stale::LOOKBACK_MS)
            .await?;
        let latest: HashMap<i64, i64> = store
            .latest(&ids)
            .await?
            .into_iter()
            .map(|l| (l.tag_id, l.ts_ms))
            .collect();
        let ages: Vec<TagAge> = wanted
            .iter()
            .zip(good)
            .map(|(t, g)| {
                crate::analytics::stale::age_of(
                    (
                        t.id,
                        &t.site,
                        format!("{}/{}", t.agent, t.name),
                        t.interval_ms,
                    ),
                    g,
                    latest.get(&t.id).copied(),
                    now,
                )
            })
            .collect();
        let stale = stale_tags(&ages, now, &self.cfg.stale);
        let found: Vec<NewAlert> = stale
            .iter()
            .map(|s| NewAlert {
                kind: "stale-tag".into(),
                site: s.tag.site.clone(),
                place: s.tag.name.clone(),
                date: day_name(day_of(s.silent_since_ms)),
                message: format!(
                    "tag {} at {} has had no good reading for {:.0} s (expected every {} ms; limit {} s)",
                    s.tag.name,
                    s.tag.site,
                    (now - s.silent_since_ms) as f64 / 1000.0,
                    s.tag.interval_ms,
                    s.limit_ms / 1000
                ),
                detail: serde_json::json!({ "tag_id": s.tag.id, "silent_since_ms": s.silent_since_ms }),
            })
            .collect();
        let (o, c) = store
            .ledger()
            .sync_alerts(&["stale-tag"], &found, now)
            .await?;
        Ok((stale.len(), o, c))
    }

    /// Inside `serve`: the daily run at `run_at` (the `lookback_days` days before today) and the
    /// stale-tag check every `stale.interval_s`, until `stop` changes.
    pub async fn schedule(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let run_at = self.cfg.run_at_minutes().unwrap_or(120);
        // Sleeps are in data-clock time: under a simulated clock they are scaled by its speed.
        let clock = flowsquare_service::clock::clock();
        let mut stale = tokio::time::interval(clock.real_duration(std::time::Duration::from_secs(
            self.cfg.stale.interval_s.max(1),
        )));
        loop {
            let now = now_ms();
            let today = day_of(now);
            let mut next = day_start_ms(today) + i64::from(run_at) * 60_000;
            if next <= now {
                next += DAY_MS;
            }
            let wait = clock.real_duration(std::time::Duration::from_millis(
                u64::try_from(next - now).unwrap_or(0),
            ));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    // The day of the run time itself (a scaled sleep may end a few ms early).
                    let today = day_of(next.max(now_ms()));
                    let back = i64::from(self.cfg.lookback_days.max(1));
                    match self.run_range(&*store, today - back, today - 1, now_ms(), "schedule", |r| {
                        tracing::info!(date = %r.run.date, records = r.run.records, exceptions = r.run.exceptions,
                            opened = r.run.alerts_opened, closed = r.run.alerts_closed, "reconciliation run");
                    }).await {
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "daily reconciliation failed; next attempt at the next run time"),
                    }
                }
                _ = stale.tick() => {
                    match self.check_stale(&*store, now_ms()).await {
                        Ok((n, o, c)) if o > 0 || c > 0 => tracing::info!(stale = n, opened = o, closed = c, "stale-tag check"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "stale-tag check failed"),
                    }
                    // Days left incomplete are run again once their missing data has arrived.
                    match self.recheck_incomplete(&*store, now_ms()).await {
                        Ok(runs) => for r in runs {
                            tracing::info!(date = %r.run.date, records = r.run.records, exceptions = r.run.exceptions,
                                opened = r.run.alerts_opened, closed = r.run.alerts_closed, "reconciliation run again: late data arrived");
                        },
                        Err(e) => tracing::warn!(error = %e, "re-check of incomplete days failed"),
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// Parse a gantry batch record's fields (`bol`, `truck`, `meter`, `compartment`, `product`,
/// `gross_l`, `nsv_l`); its time is the event's. None without them — a blank text counts as
/// absent, so a blank record (read at agent start) is no trip and no "unknown meter" (the
/// caller counts and logs what it leaves out).
pub fn batch_of(e: &EventRow) -> Option<BatchRecord> {
    let s = |k: &str| {
        e.fields
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.trim().is_empty())
            .map(str::to_owned)
    };
    let f = |k: &str| e.fields.get(k).and_then(serde_json::Value::as_f64);
    Some(BatchRecord {
        bol: s("bol")?,
        truck: s("truck").unwrap_or_default(),
        meter: s("meter")?,
        compartment: e
            .fields
            .get("compartment")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0),
        product: s("product")?,
        gross_l: f("gross_l")?,
        nsv_l: f("nsv_l")?,
        // The batch end: the record's own `end_time` (Unix s) when the map captures it, else
        // the capture time (a record waiting for its handshake is captured late).
        ts_ms: e
            .fields
            .get("end_time")
            .and_then(serde_json::Value::as_i64)
            .filter(|s| *s > 0)
            .map_or(e.ts_ms, |s| s.saturating_mul(1000)),
    })
}

/// A station gauge's delivery report from a TLS-350 `delivery` event: the edge-agent's fields
/// `tc_volume` (temperature compensated) or `volume`, the older `volume_tc_l`/`volume_l` as a
/// fallback. A console reports its own product code ("1"), not the site's product name: only a
/// product name of `tanks` narrows the match. None without a volume.
pub fn gauge_delivery_of(
    ev: &EventRow,
    station: &str,
    tanks: &[TankConfig],
) -> Option<GaugeDelivery> {
    let f = |k: &str| ev.fields.get(k).and_then(serde_json::Value::as_f64);
    let litres = f("tc_volume")
        .or_else(|| f("volume_tc_l"))
        .or_else(|| f("volume"))
        .or_else(|| f("volume_l"))?;
    let product = ev
        .fields
        .get("product")
        .and_then(|v| v.as_str())
        .filter(|p| tanks.iter().any(|t| t.product == *p))
        .map(str::to_owned);
    Some(GaugeDelivery {
        station: station.to_owned(),
        product,
        ts_ms: ev.ts_ms,
        delivered_l: litres,
    })
}

/// The tag registry by (site, agent, name), and by id.
#[derive(Debug, Default)]
pub struct Registry {
    by_name: HashMap<(String, String, String), i64>,
    by_id: HashMap<i64, TagRow>,
}

impl Registry {
    /// Index the tags.
    pub fn new(tags: Vec<TagRow>) -> Registry {
        Registry {
            by_name: tags
                .iter()
                .map(|t| ((t.site.clone(), t.agent.clone(), t.name.clone()), t.id))
                .collect(),
            by_id: tags.into_iter().map(|t| (t.id, t)).collect(),
        }
    }

    /// A tag by id.
    pub fn tag(&self, id: i64) -> Option<&TagRow> {
        self.by_id.get(&id)
    }

    /// A tag's id.
    pub fn id(&self, site: &str, agent: &str, name: &str) -> Option<i64> {
        self.by_name
            .get(&(site.to_owned(), agent.to_owned(), name.to_owned()))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, fields: serde_json::Value) -> EventRow {
        EventRow {
            site: "s".into(),
            agent: "a".into(),
            source: "src".into(),
            kind: kind.into(),
            seq: 1,
            ts_ms: 5_000_000,
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn tls_delivery_events_of_the_agent_and_the_old_names() {
        let tanks: Vec<TankConfig> = Vec::new();
        // The edge-agent's TLS-350 event: tc_volume wins over volume; the console's product
        // code is not a product name.
        let ev = event(
            "delivery",
            serde_json::json!({"volume": 36000.5, "tc_volume": 35500.25, "product": "1"}),
        );
        let g = gauge_delivery_of(&ev, "ST", &tanks).expect("delivery");
        assert_eq!(
            (g.delivered_l, g.product, g.ts_ms),
            (35500.25, None, 5_000_000)
        );
        let ev = event("delivery", serde_json::json!({"volume": 36000.5}));
        assert_eq!(
            gauge_delivery_of(&ev, "ST", &tanks).map(|g| g.delivered_l),
            Some(36000.5)
        );
        let ev = event(
            "tls-delivery",
            serde_json::json!({"volume_tc_l": 10.0, "volume_l": 11.0}),
        );
        assert_eq!(
            gauge_delivery_of(&ev, "ST", &tanks).map(|g| g.delivered_l),
            Some(10.0)
        );
        let ev = event("delivery", serde_json::json!({"volume_l": 11.0}));
        assert_eq!(
            gauge_delivery_of(&ev, "ST", &tanks).map(|g| g.delivered_l),
            Some(11.0)
        );
        assert!(
            gauge_delivery_of(&event("delivery", serde_json::json!({})), "ST", &tanks).is_none()
        );
    }

    #[test]
    fn a_blank_batch_record_is_no_trip() {
        let blank = serde_json::json!({ "bol": "", "truck": "", "meter": " ", "compartment": 0, "product": "", "gross_l": 0.0, "nsv_l": 0.0 });
        assert_eq!(batch_of(&event("gantry-batch", blank)), None);
        let no_bol = serde_json::json!({ "bol": "", "meter": "M1", "product": "AGO", "gross_l": 10.0, "nsv_l": 10.0 });
        assert_eq!(batch_of(&event("gantry-batch", no_bol)), None);
    }

    #[test]
    fn a_batch_ends_at_its_own_end_time_when_captured() {
        let f = serde_json::json!({"bol": "B1", "truck": "T", "meter": "M1", "compartment": 2,
            "product": "AGO", "gross_l": 9000.0, "nsv_l": 8880.5});
        let b = batch_of(&event("gantry-batch", f.clone())).expect("batch");
        assert_eq!((b.ts_ms, b.compartment, b.nsv_l), (5_000_000, 2, 8880.5));
        let mut g = f.clone();
        g["end_time"] = serde_json::json!(4_000);
        assert_eq!(
            batch_of(&event("gantry-batch", g)).map(|b| b.ts_ms),
            Some(4_000_000)
        );
        let mut h = f;
        h["end_time"] = serde_json::json!(0);
        assert_eq!(
            batch_of(&event("gantry-batch", h)).map(|b| b.ts_ms),
            Some(5_000_000)
        );
    }
}
