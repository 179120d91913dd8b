//! The I/O around the pure engine: load a day's inputs from the store (tank NSV from the gauge
//! tags and strapping tables through [`crate::measure`], meter totalizer deltas, batch records,
//! ePODs, discharges, GPS tracks, past trend points), run [`reconcile_day`] per terminal site,
//! save the results ([`Ledger::save_run`]); the daily schedule and the 5-minute stale-tag check.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::analytics::stale::{stale_tags, TagAge};
use crate::measure::{self, StrappingTable, TankGauge, TankSpec};
use crate::store::ledger::{DischargeRow, EventRow, NewRun, RunRow};
use crate::store::{Store, TagRow};

use super::config::{ReconcileConfig, TankConfig};
use super::engine::{reconcile_day, DayResult, Params};
use super::error::ReconcileError;
use super::model::*;

mod inputs;

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

/// Now, UTC ms, on the data clock (`flowsquare_service::clock`: the real clock, or the shared
/// simulated one of `FLOWSQUARE_CLOCK`), so the daily run and the stale check follow sim time.
pub fn now_ms() -> i64 {
    flowsquare_service::clock::now_ms()
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

    /// Load one site's inputs for `day`.
    pub async fn load_day(
        &self,
        store: &dyn Store,
        reg: &Registry,
        site: &str,
        day: i64,
        as_of_ms: i64,
    ) -> Result<DayInputs, ReconcileError> {
        let ledger = store.ledger();
        let (t0, t1) = (day_start_ms(day), day_start_ms(day + 1));
        let max_age =
            i64::try_from(self.cfg.gauge_max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let discharges: Vec<DischargeRow> = ledger
            .discharges(t0, t1)
            .await?
            .into_iter()
            .filter(|d| d.d.site == site)
            .collect();
        let tanks: Vec<&TankModel> = self.tanks.iter().filter(|t| t.cfg.site == site).collect();
        let meters: Vec<_> = self.cfg.meters.iter().filter(|m| m.site == site).collect();

        // Every instant a stock or a totalizer is needed at, probed in one call.
        let mut probes: Vec<(i64, i64)> = Vec::new();
        let mut probe = |tags: &[Option<i64>], at: i64| -> usize {
            let first = probes.len();
            for t in tags {
                probes.push((t.unwrap_or(-1), at));
            }
            first
        };
        let mut tank_probes = Vec::new();
        for t in &tanks {
            let tags = self.tank_tags(reg, &t.cfg);
            let opening = probe(&tags, t0);
            let closing = probe(&tags, t1);
            let mut windows = Vec::new();
            for d in discharges.iter().filter(|d| d.d.tanks.contains(&t.cfg.id)) {
                let s = d.d.opened_ms.max(t0);
                let e = d.closed_ms.unwrap_or(t1).min(t1).min(as_of_ms.max(s));
                windows.push((d.id, probe(&tags, s), probe(&tags, e)));
            }
            tank_probes.push((tags, opening, closing, windows));
        }
        let mut meter_probes = Vec::new();
        for m in &meters {
            let tag = reg.id(&m.site, &m.agent, &m.totalizer_tag);
            meter_probes.push((probe(&[tag], t0), probe(&[tag], t1)));
        }
        // Parcels closed today: jetty totalizers and receiving tanks over the whole window.
        let closing_today: Vec<&DischargeRow> = discharges
            .iter()
            .filter(|d| d.closed_ms.is_some_and(|c| c >= t0 && c < t1))
            .collect();
        let mut parcel_probes = Vec::new();
        for d in &closing_today {
            let (s, e) = (d.d.opened_ms, d.closed_ms.unwrap_or(t1));
            let jetty: Vec<_> = meters
                .iter()
                .filter(|m| {
                    m.role == MeterRole::Jetty
                        && (d.d.meters.is_empty() || d.d.meters.contains(&m.id))
                })
                .map(|m| {
                    let tag = reg.id(&m.site, &m.agent, &m.totalizer_tag);
                    (
                        m.unit_l * m.meter_factor,
                        probe(&[tag], s),
                        probe(&[tag], e),
                        tag,
                    )
                })
                .collect();
            let tks: Vec<_> = tanks
                .iter()
                .filter(|t| d.d.tanks.contains(&t.cfg.id))
                .map(|t| {
                    let tags = self.tank_tags(reg, &t.cfg);
                    (*t, probe(&tags, s), probe(&tags, e))
                })
                .collect();
            parcel_probes.push((jetty, tks));
        }
        let t_values = std::time::Instant::now();
        // Only real tags are probed (absent optional tags are -1); the batch records are read
        // at the same time on another connection.
        let real: Vec<(i64, i64)> = probes.iter().copied().filter(|p| p.0 >= 0).collect();
        let (found, events) = tokio::join!(
            ledger.values_at(&real, max_age),
            ledger.events(site, &self.cfg.batch_event_kind, t0, t1)
        );
        let (mut found, events) = (found?.into_iter(), events?);
        // (time, value) of each probe.
        let readings: Vec<Option<(i64, f64)>> = probes
            .iter()
            .map(|(tag, _)| {
                if *tag < 0 {
                    None
                } else {
                    found.next().flatten()
                }
            })
            .collect();
        let values: Vec<Option<f64>> = readings.iter().map(|r| r.map(|x| x.1)).collect();
        let stock_at = |t: &TankModel, i: usize| self.stock(t, &values[i..i + 6]);

        let mut inputs = DayInputs {
            site: site.to_owned(),
            day,
            as_of_ms,
            ..DayInputs::default()
        };
        for (t, (_, opening, closing, windows)) in tanks.iter().zip(&tank_probes) {
            inputs.tanks.push(TankDay {
                id: t.cfg.id.clone(),
                product: t.cfg.product.clone(),
                opening: stock_at(t, *opening),
                closing: stock_at(t, *closing),
                receipts: windows
                    .iter()
                    .map(|(id, s, e)| ReceiptWindow {
                        discharge: *id,
                        start: stock_at(t, *s),
                        end: stock_at(t, *e),
                    })
                    .collect(),
                coverage: None,
            });
        }
        for (m, (a, b)) in meters.iter().zip(&meter_probes) {
            let tag = reg.id(&m.site, &m.agent, &m.totalizer_tag);
            let q = self
                .totalizer_quantity(store, tag, readings[*a], readings[*b])
                .await?;
            inputs.meters.push(MeterDay {
                id: m.id.clone(),
                role: m.role,
                product: m.product.clone(),
                tank: m.tank.clone(),
                gross: m.gross_totalizer,
                delta_l: q.map(|q| q * m.unit_l * m.meter_factor),
                coverage: None,
            });
        }
        for (d, (jetty, tks)) in closing_today.iter().zip(&parcel_probes) {
            let mut jetty_l: Option<f64> = (!jetty.is_empty()).then_some(0.0);
            for (k, a, b, tag) in jetty {
                let q = self
                    .totalizer_quantity(store, *tag, readings[*a], readings[*b])
                    .await?;
                jetty_l = match (jetty_l, q) {
                    (Some(sum), Some(q)) => Some(sum + q * k),
                    _ => None,
                };
            }
            let tanks_l: Option<f64> = tks
                .iter()
                .map(|(t, a, b)| Some(stock_at(t, *b)?.nsv_l - stock_at(t, *a)?.nsv_l))
                .sum();
            inputs.discharges.push(DischargeDay {
                id: d.id,
                vessel: d.d.vessel.clone(),
                parcel: d.d.parcel.clone(),
                product: d.d.product.clone(),
                bl_l: d.d.bl_l,
                ship_l: d.ship_l,
                jetty_l,
                tanks_l: if tks.is_empty() { None } else { tanks_l },
                jetty_coverage: None,
                tanks_coverage: None,
            });
        }
        self.attach_coverage(store, reg, &mut inputs, &discharges, as_of_ms)
            .await?;

        let values_ms = t_values.elapsed().as_secs_f64() * 1000.0;
        // Batch records.
        let t_events = std::time::Instant::now();
        let mut bad = 0usize;
        for e in &events {
            match batch_of(e) {
                Some(b) => inputs.batches.push(b),
                None => bad += 1,
            }
        }
        if bad > 0 {
            tracing::warn!(
                site,
                bad,
                "batch records without the fields bol, meter, product, gross_l, nsv_l left out"
            );
        }
        let mut bols: Vec<String> = inputs.batches.iter().map(|b| b.bol.clone()).collect();
        bols.sort();
        bols.dedup();
        let events_ms = t_events.elapsed().as_secs_f64() * 1000.0;
        let t_epods = std::time::Instant::now();
        inputs.epods = ledger.epods_for(&bols).await?;
        let epods_ms = t_epods.elapsed().as_secs_f64() * 1000.0;

        // GPS tracks of the confirmed trips of trucks with GPS tags.
        let trucks: HashMap<&str, _> = self.cfg.trucks.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut last: BTreeMap<&str, (&str, i64)> = BTreeMap::new();
        for b in &inputs.batches {
            let e = last.entry(&b.bol).or_insert((&b.truck, b.ts_ms));
            e.1 = e.1.max(b.ts_ms);
        }
        // One track query pair per truck and day (not per trip): trips of a truck are sliced
        // from it in memory.
        let mut per_truck: BTreeMap<&str, Vec<(&str, i64, i64)>> = BTreeMap::new();
        for e in &inputs.epods {
            let Some((truck, from)) = last.get(e.bol.as_str()) else {
                continue;
            };
            if trucks.contains_key(truck) {
                per_truck
                    .entry(truck)
                    .or_default()
                    .push((&e.bol, *from, e.delivered_ms));
            }
        }
        for (truck, trips) in per_truck {
            let Some(t) = trucks.get(truck) else { continue };
            let (Some(lat), Some(lon)) = (
                reg.id(&t.site, &t.agent, &t.lat_tag),
                reg.id(&t.site, &t.agent, &t.lon_tag),
            ) else {
                continue;
            };
            let from = trips.iter().map(|x| x.1).min().unwrap_or(t0);
            let to = trips.iter().map(|x| x.2).max().unwrap_or(t1);
            let la = ledger.track(lat, from, to).await?;
            let lo: HashMap<i64, f64> = ledger.track(lon, from, to).await?.into_iter().collect();
            let fixes: Vec<Fix> = la
                .into_iter()
                .filter_map(|(ts, lat)| {
                    lo.get(&ts).map(|&lon| Fix {
                        ts_ms: ts,
                        lat,
                        lon,
                    })
                })
                .collect();
            for (bol, a, b) in trips {
                inputs.tracks.push(Track {
                    bol: bol.to_owned(),
                    fixes: fixes
                        .iter()
                        .copied()
                        .filter(|f| f.ts_ms >= a && f.ts_ms <= b)
                        .collect(),
                });
            }
        }
        inputs.places = self.cfg.known_places();

        // Delivery reports of the stations with a tank gauge (TLS-350).
        let grace = (self.cfg.epod_grace_hours * 3_600_000.0) as i64;
        for st in &self.cfg.stations {
            let Some(gsite) = &st.gauge_site else {
                continue;
            };
            inputs.gauged_stations.push(st.id.clone());
            for ev in ledger
                .events(
                    gsite,
                    &self.cfg.tls_event_kind,
                    t0 - 3 * 3_600_000,
                    t1 + grace + 3 * 3_600_000,
                )
                .await?
            {
                if let Some(g) = gauge_delivery_of(&ev, &st.id, &self.cfg.tanks) {
                    inputs.gauge_deliveries.push(g);
                }
            }
        }
        // Past trend points of each meter group.
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for m in &meters {
            if let (MeterRole::Gantry, Some(t)) = (m.role, m.tank.as_deref()) {
                groups.entry(t).or_default().push(&m.id);
            }
        }
        let from = day_name(day - i64::from(self.cfg.drift.window_days));
        let places: Vec<String> = groups.values().map(|ids| ids.join("+")).collect();
        let mut by_place: HashMap<String, Vec<TrendPoint>> = HashMap::new();
        for (place, p) in ledger.trends(site, &places, &from, &day_name(day)).await? {
            by_place.entry(place).or_default().push(p);
        }
        for place in places {
            let h = by_place.remove(&place).unwrap_or_default();
            inputs.trends.push((place, h));
        }
        tracing::debug!(
            site,
            probes = probes.len(),
            values_ms,
            parse_ms = events_ms,
            epods_ms,
            "reconciliation inputs"
        );
        Ok(inputs)
    }

    /// The coverage of the day's figures: tanks over the day (read at 00:00, 24:00 and the
    /// receipt windows' ends), gantry totalizers over the day, and each parcel's jetty
    /// totalizers and receiving tanks over the discharge window.
    async fn attach_coverage(
        &self,
        store: &dyn Store,
        reg: &Registry,
        inputs: &mut DayInputs,
        discharges: &[DischargeRow],
        as_of_ms: i64,
    ) -> Result<(), ReconcileError> {
        let (t0, t1) = (day_start_ms(inputs.day), day_start_ms(inputs.day + 1));
        let site = inputs.site.clone();
        let tank_ids = |id: &str| -> Vec<i64> {
            self.tanks
                .iter()
                .filter(|t| t.cfg.site == site && t.cfg.id == id)
                .flat_map(|t| self.tank_tags(reg, &t.cfg).into_iter().flatten())
                .collect()
        };
        let meter_tag = |id: &str| -> Vec<i64> {
            self.cfg
                .meters
                .iter()
                .filter(|m| m.site == site && m.id == id)
                .filter_map(|m| reg.id(&m.site, &m.agent, &m.totalizer_tag))
                .collect()
        };
        let mut all: Vec<i64> = Vec::new();
        for t in &inputs.tanks {
            all.extend(tank_ids(&t.id));
        }
        for m in &self.cfg.meters {
            all.extend(meter_tag(&m.id));
        }
        let from = discharges.iter().map(|d| d.d.opened_ms).fold(t0, i64::min);
        let cx = self
            .coverage_ctx(store, &site, &all, from, t1, as_of_ms)
            .await?;
        for t in &mut inputs.tanks {
            let mut boundaries = vec![t0, t1];
            for d in discharges.iter().filter(|d| d.d.tanks.contains(&t.id)) {
                let s = d.d.opened_ms.max(t0);
                boundaries.push(s);
                boundaries.push(d.closed_ms.unwrap_or(t1).min(t1).min(as_of_ms.max(s)));
            }
            let need = inputs::Need {
                tags: tank_ids(&t.id),
                from_ms: t0,
                to_ms: t1,
                boundaries,
            };
            t.coverage = self.coverage(store, reg, &cx, need).await?;
        }
        for m in inputs
            .meters
            .iter_mut()
            .filter(|m| m.role == MeterRole::Gantry)
        {
            let need = inputs::Need {
                tags: meter_tag(&m.id),
                from_ms: t0,
                to_ms: t1,
                boundaries: vec![t0, t1],
            };
            m.coverage = self.coverage(store, reg, &cx, need).await?;
        }
        for dd in &mut inputs.discharges {
            let Some(d) = discharges.iter().find(|d| d.id == dd.id) else {
                continue;
            };
            let (s, e) = (d.d.opened_ms, d.closed_ms.unwrap_or(t1));
            let jetty: Vec<i64> = self
                .cfg
                .meters
                .iter()
                .filter(|m| {
                    m.site == site
                        && m.role == MeterRole::Jetty
                        && (d.d.meters.is_empty() || d.d.meters.contains(&m.id))
                })
                .flat_map(|m| meter_tag(&m.id))
                .collect();
            let tanks: Vec<i64> = d.d.tanks.iter().flat_map(|id| tank_ids(id)).collect();
            let need = |tags: Vec<i64>| inputs::Need {
                tags,
                from_ms: s,
                to_ms: e,
                boundaries: vec![s, e],
            };
            dd.jetty_coverage = self.coverage(store, reg, &cx, need(jetty)).await?;
            dd.tanks_coverage = self.coverage(store, reg, &cx, need(tanks)).await?;
        }
        Ok(())
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
