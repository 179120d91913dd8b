//! `GET /api/v1/kpis`: the terminal's stock and endurance now.
//!
//! - **Gross stock** (GOV) and **net stock** (NSV at the tank's base temperature) per tank: the
//!   latest good reading of each gauge tag (level, temperature, density, water …) through the
//!   tank's strapping table and API MPMS 11.1 — the same computation as the reconciliation's
//!   stocks ([`crate::reconcile::Reconciler`]); readings older than `gauge_max_age_s` are used
//!   but the tank is marked stale.
//! - **Ready stock**: the NSV above the tank's `min_operating_level_mm` (NSV at the gauged level
//!   minus NSV at that level with the same temperature and density), 0 for a tank receiving a
//!   discharge now (an open discharge names it).
//! - **Endurance** per product: ready stock ÷ the average daily loaded NSV of the product over
//!   the last 7 days (gantry batch records, `batch_event_kind`); none when nothing was loaded.
//!
//! `compute` is pure; the handler loads its inputs.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::Serialize;

use crate::api::params::Query;
use crate::api::problem::Problem;
use crate::api::routes::{call, data};
use crate::api::ApiState;
use crate::reconcile::model::{Stock, DAY_MS};
use crate::reconcile::run::{batch_of, Registry};
use flowsquare_service::clock::now_ms;

/// Days of loading the endurance rate averages.
pub const RATE_DAYS: i64 = 7;
/// How far back the latest gauge readings are looked for (ten years).
const LOOKBACK_MS: i64 = 3_650 * DAY_MS;

/// A tank's figures (inputs of [`compute`] already measured).
#[derive(Debug, Clone, PartialEq)]
pub struct TankInput {
    /// Tank id.
    pub tank: String,
    /// Site.
    pub site: String,
    /// Product.
    pub product: String,
    /// Gauged level, mm (None: no reading).
    pub level_mm: Option<f64>,
    /// Oldest of the readings the stock used, ms.
    pub reading_ms: Option<i64>,
    /// The stock at the gauged level (None: a reading is missing or was rejected).
    pub stock: Option<Stock>,
    /// The stock at the minimum operating level (same temperature and density).
    pub floor: Option<Stock>,
    /// Minimum operating level, mm.
    pub min_operating_level_mm: f64,
    /// Is a discharge into it open now?
    pub receiving: bool,
}

/// A tank's KPIs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TankKpi {
    /// Tank id.
    pub tank: String,
    /// Site.
    pub site: String,
    /// Product.
    pub product: String,
    /// Gauged level, mm.
    pub level_mm: Option<f64>,
    /// Oldest gauge reading used, ms.
    pub reading_ms: Option<i64>,
    /// The readings are older than `gauge_max_age_s`.
    pub stale: bool,
    /// Gross observed volume, litres.
    pub gov_l: Option<f64>,
    /// Net standard volume, litres.
    pub nsv_l: Option<f64>,
    /// Minimum operating level, mm.
    pub min_operating_level_mm: f64,
    /// NSV above the minimum operating level (0 while receiving), litres.
    pub ready_l: Option<f64>,
    /// A discharge into the tank is open.
    pub receiving: bool,
    /// `ok`, `stale`, `receiving` or `no-data`.
    pub status: &'static str,
}

/// A product's KPIs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductKpi {
    /// Product.
    pub product: String,
    /// Its tanks.
    pub tanks: Vec<String>,
    /// Sum of the tanks' GOV (tanks with data), litres.
    pub gov_l: f64,
    /// Sum of the tanks' NSV, litres.
    pub nsv_l: f64,
    /// Sum of the tanks' ready stock, litres.
    pub ready_l: f64,
    /// Tanks without a usable stock (their figures are missing from the sums).
    pub tanks_without_data: usize,
    /// NSV loaded at the gantry over the last `rate_days` days, litres.
    pub loaded_l: f64,
    /// `loaded_l / rate_days`, litres per day.
    pub daily_rate_l: f64,
    /// `ready_l / daily_rate_l`, days (None when nothing was loaded).
    pub endurance_days: Option<f64>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kpis {
    /// The server's time the figures are for, ms.
    pub now_ms: i64,
    /// Days the loading rate averages.
    pub rate_days: i64,
    /// Readings older than this are stale, s.
    pub gauge_max_age_s: u64,
    /// Per tank.
    pub tanks: Vec<TankKpi>,
    /// Per product.
    pub products: Vec<ProductKpi>,
}

/// The KPIs from measured tanks and the loaded NSV per product over the rate window.
pub fn compute(
    now_ms: i64,
    gauge_max_age_s: u64,
    tanks: &[TankInput],
    loaded: &BTreeMap<String, f64>,
) -> Kpis {
    let max_age = i64::try_from(gauge_max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut out = Kpis {
        now_ms,
        rate_days: RATE_DAYS,
        gauge_max_age_s,
        tanks: Vec::new(),
        products: Vec::new(),
    };
    let mut by_product: BTreeMap<String, ProductKpi> = BTreeMap::new();
    for t in tanks {
        let stale = t.reading_ms.is_some_and(|ts| now_ms - ts > max_age);
        let ready = t.stock.map(|s| {
            if t.receiving {
                0.0
            } else if t.min_operating_level_mm <= 0.0 {
                s.nsv_l.max(0.0)
            } else {
                // Below the floor (or the floor not measurable): nothing is ready.
                t.floor.map_or(0.0, |f| (s.nsv_l - f.nsv_l).max(0.0))
            }
        });
        let status = match (t.stock, t.receiving, stale) {
            (None, _, _) => "no-data",
            (Some(_), true, _) => "receiving",
            (Some(_), false, true) => "stale",
            (Some(_), false, false) => "ok",
        };
        let p = by_product
            .entry(t.product.clone())
            .or_insert_with(|| ProductKpi {
                product: t.product.clone(),
                tanks: Vec::new(),
                gov_l: 0.0,
                nsv_l: 0.0,
                ready_l: 0.0,
                tanks_without_data: 0,
                loaded_l: 0.0,
                daily_rate_l: 0.0,
                endurance_days: None,
            });
        p.tanks.push(t.tank.clone());
        match t.stock {
            Some(s) => {
                p.gov_l += s.gov_l;
                p.nsv_l += s.nsv_l;
                p.ready_l += ready.unwrap_or(0.0);
            }
            None => p.tanks_without_data += 1,
        }
        out.tanks.push(TankKpi {
            tank: t.tank.clone(),
            site: t.site.clone(),
            product: t.product.clone(),
            level_mm: t.level_mm,
            reading_ms: t.reading_ms,
            stale,
            gov_l: t.stock.map(|s| s.gov_l),
            nsv_l: t.stock.map(|s| s.nsv_l),
            min_operating_level_mm: t.min_operating_level_mm,
            ready_l: ready,
            receiving: t.receiving,
            status,
        });
    }
    for (product, l) in loaded {
        if let Some(p) = by_product.get_mut(product) {
            p.loaded_l = *l;
        }
    }
    for p in by_product.values_mut() {
        p.daily_rate_l = p.loaded_l / RATE_DAYS as f64;
        p.endurance_days = (p.daily_rate_l > 0.0).then(|| p.ready_l / p.daily_rate_l);
    }
    out.products = by_product.into_values().collect();
    out
}

/// `GET /api/v1/kpis`: `{"data": [report]}`, or `{"data": []}` without a `[reconcile]` model.
pub(crate) async fn kpis(
    State(s): State<ApiState>,
    axum::Extension(who): axum::Extension<crate::api::auth::Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let Some(r) = s.reconciler.clone() else {
        return Ok(data::<Kpis>(&[]));
    };
    let now = now_ms();
    let reg = Registry::new(call(s.store.tags(None, None)).await?);
    let ledger = s.store.ledger();
    // The latest good reading of every gauge tag of every tank, in one call.
    let mut probes = Vec::new();
    // The tanks of the token's sites only.
    let tanks: Vec<_> = r
        .tanks
        .iter()
        .filter(|t| who.scope.allows(&t.cfg.site))
        .collect();
    let tags: Vec<[Option<i64>; 6]> = tanks.iter().map(|t| r.tank_tags(&reg, &t.cfg)).collect();
    for tt in &tags {
        probes.extend(tt.iter().flatten().map(|id| (*id, now)));
    }
    let mut found = call(ledger.values_at(&probes, LOOKBACK_MS))
        .await?
        .into_iter();
    let open = call(ledger.discharges(now, now + 1)).await?;
    let mut inputs = Vec::new();
    for (t, tt) in tanks.iter().copied().zip(&tags) {
        let mut values: Vec<Option<f64>> = Vec::with_capacity(6);
        let mut oldest: Option<i64> = None;
        for tag in tt {
            let v = match tag {
                Some(_) => found.next().flatten(),
                None => None,
            };
            if let Some((ts, _)) = v {
                oldest = Some(oldest.map_or(ts, |o: i64| o.min(ts)));
            }
            values.push(v.map(|x| x.1));
        }
        let stock = r.stock(t, &values);
        let floor = if t.cfg.min_operating_level_mm > 0.0 && stock.is_some() {
            let mut at_floor = values.clone();
            at_floor[0] = Some(t.cfg.min_operating_level_mm);
            r.stock(t, &at_floor)
        } else {
            None
        };
        let receiving = open.iter().any(|d| {
            d.d.tanks.contains(&t.cfg.id)
                && d.d.site == t.cfg.site
                && d.d.opened_ms <= now
                && d.closed_ms.is_none_or(|c| c > now)
        });
        inputs.push(TankInput {
            tank: t.cfg.id.clone(),
            site: t.cfg.site.clone(),
            product: t.cfg.product.clone(),
            level_mm: values[0],
            reading_ms: if stock.is_some() { oldest } else { None },
            stock,
            floor,
            min_operating_level_mm: t.cfg.min_operating_level_mm,
            receiving,
        });
    }
    let mut loaded: BTreeMap<String, f64> = BTreeMap::new();
    for site in r.cfg.sites().into_iter().filter(|s| who.scope.allows(s)) {
        let events = call(ledger.events(
            &site,
            &r.cfg.batch_event_kind,
            now - RATE_DAYS * DAY_MS,
            now,
        ))
        .await?;
        for b in events.iter().filter_map(batch_of) {
            *loaded.entry(b.product).or_default() += b.nsv_l;
        }
    }
    Ok(data(&[compute(
        now,
        r.cfg.gauge_max_age_s,
        &inputs,
        &loaded,
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tank(id: &str, product: &str, nsv: Option<f64>) -> TankInput {
        TankInput {
            tank: id.into(),
            site: "s".into(),
            product: product.into(),
            level_mm: nsv.map(|_| 5000.0),
            reading_ms: nsv.map(|_| 1_000_000),
            stock: nsv.map(|n| Stock {
                nsv_l: n,
                gov_l: n * 1.01,
            }),
            floor: Some(Stock {
                nsv_l: 100_000.0,
                gov_l: 101_000.0,
            }),
            min_operating_level_mm: 600.0,
            receiving: false,
        }
    }

    #[test]
    fn ready_stock_and_endurance() {
        let mut t2 = tank("T2", "PMS", Some(2_000_000.0));
        t2.receiving = true;
        let mut t3 = tank("T3", "PMS", Some(50_000.0));
        t3.reading_ms = Some(0);
        let tanks = [
            tank("T1", "PMS", Some(1_100_000.0)),
            t2,
            t3,
            tank("T4", "AGO", None),
        ];
        let loaded = BTreeMap::from([("PMS".to_owned(), 700_000.0)]);
        let k = compute(1_000_000 + 60_000, 900, &tanks, &loaded);
        let by = |id: &str| k.tanks.iter().find(|t| t.tank == id).expect("tank");
        assert_eq!(by("T1").ready_l, Some(1_000_000.0));
        assert_eq!(by("T1").status, "ok");
        assert_eq!(by("T2").ready_l, Some(0.0), "receiving: not ready");
        assert_eq!(by("T2").status, "receiving");
        assert_eq!(by("T3").ready_l, Some(0.0), "below the floor");
        assert!(by("T3").stale);
        assert_eq!(by("T4").status, "no-data");
        let pms = &k.products[1];
        assert_eq!(pms.product, "PMS");
        assert_eq!(pms.nsv_l, 3_150_000.0);
        assert_eq!(pms.ready_l, 1_000_000.0);
        assert_eq!(pms.daily_rate_l, 100_000.0);
        assert_eq!(pms.endurance_days, Some(10.0));
        let ago = &k.products[0];
        assert_eq!(ago.tanks_without_data, 1);
        assert_eq!(ago.endurance_days, None, "nothing loaded: no endurance");
    }

    #[test]
    fn no_floor_means_the_whole_stock_is_ready() {
        let mut t = tank("T1", "AGO", Some(500.0));
        t.min_operating_level_mm = 0.0;
        t.floor = None;
        let k = compute(1_000_000, 900, &[t], &BTreeMap::new());
        assert_eq!(k.tanks[0].ready_l, Some(500.0));
    }
}
