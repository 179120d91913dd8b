//! Loading one site's day: every stock and totalizer instant probed in one call, the measured
//! inputs (tank stocks through [`crate::measure`], totalizer quantities, parcels), their
//! coverage, the batch records and ePODs, the GPS tracks of the confirmed trips, the stations'
//! gauge delivery reports and the meter groups' past trend points.

use std::collections::{BTreeMap, HashMap};

use super::{batch_of, gauge_delivery_of, inputs, Reconciler, Registry, TankModel};
use crate::reconcile::config::MeterConfig;
use crate::reconcile::error::ReconcileError;
use crate::reconcile::model::*;
use crate::store::ledger::{DischargeRow, EventRow};
use crate::store::Store;

/// Every instant a stock or a totalizer is needed at, probed in one call: (tag id or -1 for an
/// absent optional tag, at), and where each figure's probes are.
#[derive(Default)]
struct ProbePlan<'a> {
    probes: Vec<(i64, i64)>,
    /// Per tank: its first opening and closing probe, and (discharge id, start, end) per
    /// receipt window (six probes each, in [`Reconciler::tank_tags`] order).
    tanks: Vec<TankProbes<'a>>,
    /// Per meter: its opening and closing probe.
    meters: Vec<(&'a MeterConfig, usize, usize)>,
    /// Per parcel closed today: its jetty meters (litres per unit × factor, start and end
    /// probe, tag) and its receiving tanks (start and end probes).
    parcels: Vec<ParcelProbes<'a>>,
}

/// A tank: its first opening and closing probe, (discharge id, start, end) per receipt window.
type TankProbes<'a> = (&'a TankModel, usize, usize, Vec<(i64, usize, usize)>);

/// A parcel closed today: the discharge, its jetty meters, its receiving tanks.
type ParcelProbes<'a> = (
    &'a DischargeRow,
    Vec<(f64, usize, usize, Option<i64>)>,
    Vec<(&'a TankModel, usize, usize)>,
);

impl ProbePlan<'_> {
    /// Probe `tags` at `at`; the index of the first.
    fn probe(&mut self, tags: &[Option<i64>], at: i64) -> usize {
        let first = self.probes.len();
        for t in tags {
            self.probes.push((t.unwrap_or(-1), at));
        }
        first
    }

    /// (time, value) of each probe, from the answers to the real ones (in order).
    fn readings(&self, found: Vec<Option<(i64, f64)>>) -> Vec<Option<(i64, f64)>> {
        let mut found = found.into_iter();
        self.probes
            .iter()
            .map(|(tag, _)| {
                if *tag < 0 {
                    None
                } else {
                    found.next().flatten()
                }
            })
            .collect()
    }
}

/// The day's window and the instant the run looks from.
#[derive(Debug, Clone, Copy)]
struct Window {
    t0: i64,
    t1: i64,
    as_of_ms: i64,
}

impl Reconciler {
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
        let w = Window {
            t0: day_start_ms(day),
            t1: day_start_ms(day + 1),
            as_of_ms,
        };
        let max_age =
            i64::try_from(self.cfg.gauge_max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let discharges: Vec<DischargeRow> = ledger
            .discharges(w.t0, w.t1)
            .await?
            .into_iter()
            .filter(|d| d.d.site == site)
            .collect();

        // Every instant a stock or a totalizer is needed at, probed in one call.
        let plan = self.plan_probes(reg, site, &discharges, w);
        let t_values = std::time::Instant::now();
        // Only real tags are probed (absent optional tags are -1); the batch records are read
        // at the same time on another connection.
        let real: Vec<(i64, i64)> = plan.probes.iter().copied().filter(|p| p.0 >= 0).collect();
        let (found, events) = tokio::join!(
            ledger.values_at(&real, max_age),
            ledger.events(site, &self.cfg.batch_event_kind, w.t0, w.t1)
        );
        let (found, events) = (found?, events?);
        // (time, value) of each probe.
        let readings = plan.readings(found);
        let mut inputs = DayInputs {
            site: site.to_owned(),
            day,
            as_of_ms,
            ..DayInputs::default()
        };
        self.measured_inputs(store, reg, &plan, &readings, &mut inputs)
            .await?;
        self.attach_coverage(store, reg, &mut inputs, &discharges, as_of_ms)
            .await?;
        let values_ms = t_values.elapsed().as_secs_f64() * 1000.0;

        // Batch records.
        let t_events = std::time::Instant::now();
        let bols = batch_records(site, &events, &mut inputs);
        let events_ms = t_events.elapsed().as_secs_f64() * 1000.0;
        let t_epods = std::time::Instant::now();
        inputs.epods = ledger.epods_for(&bols).await?;
        let epods_ms = t_epods.elapsed().as_secs_f64() * 1000.0;

        // GPS tracks of the confirmed trips of trucks with GPS tags.
        self.load_tracks(store, reg, &mut inputs, w).await?;
        inputs.places = self.cfg.known_places();
        // Delivery reports of the stations with a tank gauge (TLS-350).
        self.load_gauge_deliveries(store, &mut inputs, w).await?;
        // Past trend points of each meter group.
        self.load_trends(store, &mut inputs).await?;
        tracing::debug!(
            site,
            probes = plan.probes.len(),
            values_ms,
            parse_ms = events_ms,
            epods_ms,
            "reconciliation inputs"
        );
        Ok(inputs)
    }

    /// The probes of the site's tanks (opening, closing, receipt windows), meters (opening,
    /// closing) and parcels closed today (jetty totalizers and receiving tanks over the whole
    /// discharge window).
    fn plan_probes<'a>(
        &'a self,
        reg: &Registry,
        site: &str,
        discharges: &'a [DischargeRow],
        w: Window,
    ) -> ProbePlan<'a> {
        let Window { t0, t1, as_of_ms } = w;
        let tanks: Vec<&TankModel> = self.tanks.iter().filter(|t| t.cfg.site == site).collect();
        let meters: Vec<&MeterConfig> = self.cfg.meters.iter().filter(|m| m.site == site).collect();
        let mut plan = ProbePlan::default();
        for t in &tanks {
            let tags = self.tank_tags(reg, &t.cfg);
            let opening = plan.probe(&tags, t0);
            let closing = plan.probe(&tags, t1);
            let mut windows = Vec::new();
            for d in discharges.iter().filter(|d| d.d.tanks.contains(&t.cfg.id)) {
                let s = d.d.opened_ms.max(t0);
                let e = d.closed_ms.unwrap_or(t1).min(t1).min(as_of_ms.max(s));
                windows.push((d.id, plan.probe(&tags, s), plan.probe(&tags, e)));
            }
            plan.tanks.push((t, opening, closing, windows));
        }
        for m in &meters {
            let tag = reg.id(&m.site, &m.agent, &m.totalizer_tag);
            let (a, b) = (plan.probe(&[tag], t0), plan.probe(&[tag], t1));
            plan.meters.push((m, a, b));
        }
        // Parcels closed today: jetty totalizers and receiving tanks over the whole window.
        for d in discharges
            .iter()
            .filter(|d| d.closed_ms.is_some_and(|c| c >= t0 && c < t1))
        {
            let (s, e) = (d.d.opened_ms, d.closed_ms.unwrap_or(t1));
            let mut jetty = Vec::new();
            for m in meters.iter().filter(|m| {
                m.role == MeterRole::Jetty && (d.d.meters.is_empty() || d.d.meters.contains(&m.id))
            }) {
                let tag = reg.id(&m.site, &m.agent, &m.totalizer_tag);
                let (a, b) = (plan.probe(&[tag], s), plan.probe(&[tag], e));
                jetty.push((m.unit_l * m.meter_factor, a, b, tag));
            }
            let mut tks = Vec::new();
            for t in tanks.iter().filter(|t| d.d.tanks.contains(&t.cfg.id)) {
                let tags = self.tank_tags(reg, &t.cfg);
                let (a, b) = (plan.probe(&tags, s), plan.probe(&tags, e));
                tks.push((*t, a, b));
            }
            plan.parcels.push((d, jetty, tks));
        }
        plan
    }

    /// The measured figures from the probed readings: tank stocks (opening, closing, receipt
    /// windows), meter totalizer deltas, and the parcels closed today.
    async fn measured_inputs(
        &self,
        store: &dyn Store,
        reg: &Registry,
        plan: &ProbePlan<'_>,
        readings: &[Option<(i64, f64)>],
        inputs: &mut DayInputs,
    ) -> Result<(), ReconcileError> {
        let values: Vec<Option<f64>> = readings.iter().map(|r| r.map(|x| x.1)).collect();
        let stock_at = |t: &TankModel, i: usize| self.stock(t, &values[i..i + 6]);
        for (t, opening, closing, windows) in &plan.tanks {
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
        for (m, a, b) in &plan.meters {
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
        for (d, jetty, tks) in &plan.parcels {
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
        Ok(())
    }

    /// GPS tracks of the confirmed trips of trucks with GPS tags: one track query pair per
    /// truck and day (not per trip); the trips of a truck are sliced from it in memory.
    async fn load_tracks(
        &self,
        store: &dyn Store,
        reg: &Registry,
        inputs: &mut DayInputs,
        w: Window,
    ) -> Result<(), ReconcileError> {
        let ledger = store.ledger();
        let trucks: HashMap<&str, _> = self.cfg.trucks.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut last: BTreeMap<&str, (&str, i64)> = BTreeMap::new();
        for b in &inputs.batches {
            let e = last.entry(&b.bol).or_insert((&b.truck, b.ts_ms));
            e.1 = e.1.max(b.ts_ms);
        }
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
        let mut tracks = Vec::new();
        for (truck, trips) in per_truck {
            let Some(t) = trucks.get(truck) else { continue };
            let (Some(lat), Some(lon)) = (
                reg.id(&t.site, &t.agent, &t.lat_tag),
                reg.id(&t.site, &t.agent, &t.lon_tag),
            ) else {
                continue;
            };
            let from = trips.iter().map(|x| x.1).min().unwrap_or(w.t0);
            let to = trips.iter().map(|x| x.2).max().unwrap_or(w.t1);
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
                tracks.push(Track {
                    bol: bol.to_owned(),
                    fixes: fixes
                        .iter()
                        .copied()
                        .filter(|f| f.ts_ms >= a && f.ts_ms <= b)
                        .collect(),
                });
            }
        }
        inputs.tracks.extend(tracks);
        Ok(())
    }

    /// Delivery reports of the stations with a tank gauge (TLS-350), from 3 h before the day
    /// to 3 h after its ePOD grace period.
    async fn load_gauge_deliveries(
        &self,
        store: &dyn Store,
        inputs: &mut DayInputs,
        w: Window,
    ) -> Result<(), ReconcileError> {
        let grace = (self.cfg.epod_grace_hours * 3_600_000.0) as i64;
        for st in &self.cfg.stations {
            let Some(gsite) = &st.gauge_site else {
                continue;
            };
            inputs.gauged_stations.push(st.id.clone());
            for ev in store
                .ledger()
                .events(
                    gsite,
                    &self.cfg.tls_event_kind,
                    w.t0 - 3 * 3_600_000,
                    w.t1 + grace + 3 * 3_600_000,
                )
                .await?
            {
                if let Some(g) = gauge_delivery_of(&ev, &st.id, &self.cfg.tanks) {
                    inputs.gauge_deliveries.push(g);
                }
            }
        }
        Ok(())
    }

    /// Past trend points of each meter group (a tank's gantry meters) over the drift window.
    async fn load_trends(
        &self,
        store: &dyn Store,
        inputs: &mut DayInputs,
    ) -> Result<(), ReconcileError> {
        let (site, day) = (inputs.site.as_str(), inputs.day);
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for m in self.cfg.meters.iter().filter(|m| m.site == site) {
            if let (MeterRole::Gantry, Some(t)) = (m.role, m.tank.as_deref()) {
                groups.entry(t).or_default().push(&m.id);
            }
        }
        let from = day_name(day - i64::from(self.cfg.drift.window_days));
        let places: Vec<String> = groups.values().map(|ids| ids.join("+")).collect();
        let mut by_place: HashMap<String, Vec<TrendPoint>> = HashMap::new();
        for (place, p) in store
            .ledger()
            .trends(site, &places, &from, &day_name(day))
            .await?
        {
            by_place.entry(place).or_default().push(p);
        }
        for place in places {
            let h = by_place.remove(&place).unwrap_or_default();
            inputs.trends.push((place, h));
        }
        Ok(())
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
}

/// The batch records of the day's events into `inputs` (records missing a required field are
/// left out, logged); the BOLs they name, sorted, once each.
fn batch_records(site: &str, events: &[EventRow], inputs: &mut DayInputs) -> Vec<String> {
    let mut bad = 0usize;
    for e in events {
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
    bols
}
