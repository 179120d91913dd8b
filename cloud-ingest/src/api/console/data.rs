//! `GET /api/v1/whoami`, `GET /api/v1/site-model`, `GET /api/v1/track`: what the console needs
//! besides the data routes.

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::Extension;
use serde::Serialize;

use crate::analytics::stops;
use crate::api::auth::Principal;
use crate::api::config::Role;
use crate::api::params::{self, Query};
use crate::api::problem::Problem;
use crate::api::routes::{call, data};
use crate::api::ApiState;
use crate::reconcile::model::Fix;
use crate::reconcile::run::Registry;
use flowsquare_service::clock::now_ms;

/// Longest range of one track request (two days).
pub const MAX_TRACK_MS: i64 = 2 * 86_400_000;

/// Who the token belongs to, what it may see, and the server's clock.
#[derive(Debug, Clone, Serialize)]
pub struct WhoAmI {
    /// The token's configured name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The sites it may see (null: every site).
    pub sites: Option<Vec<String>>,
    /// When it stops being accepted, epoch ms (null: never).
    pub expires_ms: Option<i64>,
    /// May it read the auditor routes (dead letters, audit log; tokens of every site only)?
    pub can_audit: bool,
    /// May it post movements and start runs?
    pub can_operate: bool,
    /// The server's data clock (UTC ms): the console computes every age from it.
    pub now_ms: i64,
    /// `real`, or `simulated` when `FLOWSQUARE_CLOCK` runs sim time (the demo).
    pub clock: &'static str,
    /// Data-clock seconds per real second (1 for the real clock).
    pub clock_speed: f64,
}

/// `GET /api/v1/whoami`.
pub(crate) async fn whoami(
    Extension(p): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let clock = flowsquare_service::clock::clock();
    Ok(data(&[WhoAmI {
        // The auditor routes cover every site: not for a token of some sites.
        can_audit: p.role.grants(Role::Auditor) && p.scope.is_all(),
        can_operate: p.role.grants(Role::Operator),
        sites: p.scope.list(),
        expires_ms: p.expires_ms,
        name: p.name,
        role: p.role,
        now_ms: now_ms(),
        clock: if clock.is_sim() { "simulated" } else { "real" },
        clock_speed: clock.speed(),
    }]))
}

/// A tank as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SiteTank {
    /// Tank id.
    pub id: String,
    /// Terminal site.
    pub site: String,
    /// Agent of its gauge tags.
    pub agent: String,
    /// Product.
    pub product: String,
    /// Level tag name.
    pub level_tag: String,
    /// Minimum operating level, mm.
    pub min_operating_level_mm: f64,
}

/// A meter.
#[derive(Debug, Clone, Serialize)]
pub struct SiteMeter {
    /// Meter id.
    pub id: String,
    /// Site.
    pub site: String,
    /// `jetty` or `gantry`.
    pub role: crate::reconcile::model::MeterRole,
    /// Product.
    pub product: String,
    /// Tank it draws from (gantry meters).
    pub tank: Option<String>,
}

/// A station or known place.
#[derive(Debug, Clone, Serialize)]
pub struct SitePlace {
    /// Id.
    pub id: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Radius, metres.
    pub radius_m: f64,
    /// `station` or `place`.
    pub kind: &'static str,
}

/// A truck with GPS.
#[derive(Debug, Clone, Serialize)]
pub struct SiteTruck {
    /// Truck id.
    pub id: String,
    /// Site of its agent.
    pub site: String,
    /// Its agent.
    pub agent: String,
}

/// The `[reconcile]` site model, without file paths.
#[derive(Debug, Clone, Serialize)]
pub struct SiteModel {
    /// Terminal sites.
    pub sites: Vec<String>,
    /// Tanks.
    pub tanks: Vec<SiteTank>,
    /// Meters.
    pub meters: Vec<SiteMeter>,
    /// Stations and known places.
    pub places: Vec<SitePlace>,
    /// Trucks.
    pub trucks: Vec<SiteTruck>,
    /// Default tolerance, ± %.
    pub default_tolerance_pct: f64,
    /// A tank stock uses gauge readings at most this old, s.
    pub gauge_max_age_s: u64,
    /// Stale tags: older than this many poll intervals …
    pub stale_factor: f64,
    /// … and than this many seconds.
    pub stale_min_age_s: u64,
}

/// `GET /api/v1/site-model`: `{"data": [model]}`, or `{"data": []}` without `[reconcile]`; the
/// tanks, meters, trucks and stations of the token's sites (a station by its gauge's site; the
/// other known places, which belong to no site, only to tokens of every site or of a terminal or
/// fleet site: `SiteScope::sees_places` in `scope.rs`).
pub(crate) async fn site_model(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let Some(r) = &s.reconciler else {
        return Ok(data::<SiteModel>(&[]));
    };
    let c = &r.cfg;
    let place = |p: &crate::reconcile::config::PlaceConfig, kind| SitePlace {
        id: p.id.clone(),
        lat: p.lat,
        lon: p.lon,
        radius_m: p.radius_m,
        kind,
    };
    Ok(data(&[SiteModel {
        sites: who.scope.keep(c.sites(), |s| s),
        tanks: c
            .tanks
            .iter()
            .filter(|t| who.scope.allows(&t.site))
            .map(|t| SiteTank {
                id: t.id.clone(),
                site: t.site.clone(),
                agent: t.agent.clone(),
                product: t.product.clone(),
                level_tag: t.level_tag.clone(),
                min_operating_level_mm: t.min_operating_level_mm,
            })
            .collect(),
        meters: c
            .meters
            .iter()
            .filter(|m| who.scope.allows(&m.site))
            .map(|m| SiteMeter {
                id: m.id.clone(),
                site: m.site.clone(),
                role: m.role,
                product: m.product.clone(),
                tank: m.tank.clone(),
            })
            .collect(),
        places: c
            .stations
            .iter()
            .filter(|p| {
                who.scope.is_all() || p.gauge_site.as_deref().is_some_and(|g| who.scope.allows(g))
            })
            .map(|p| place(p, "station"))
            .chain(
                c.places
                    .iter()
                    .filter(|_| who.scope.sees_places(c))
                    .map(|p| place(p, "place")),
            )
            .collect(),
        trucks: c
            .trucks
            .iter()
            .filter(|t| who.scope.allows(&t.site))
            .map(|t| SiteTruck {
                id: t.id.clone(),
                site: t.site.clone(),
                agent: t.agent.clone(),
            })
            .collect(),
        default_tolerance_pct: c.tolerances.default_pct,
        gauge_max_age_s: c.gauge_max_age_s,
        stale_factor: c.stale.factor,
        stale_min_age_s: c.stale.min_age_s,
    }]))
}

/// A stop on a track.
#[derive(Debug, Clone, Serialize)]
pub struct TrackStop {
    /// First fix, ms.
    pub from_ms: i64,
    /// Last fix, ms.
    pub to_ms: i64,
    /// Mean latitude.
    pub lat: f64,
    /// Mean longitude.
    pub lon: f64,
    /// The known place it is at; null = outside every known place (an unscheduled stop).
    pub place: Option<String>,
    /// Minutes.
    pub minutes: f64,
}

/// A truck's GPS track over a range.
#[derive(Debug, Clone, Serialize)]
pub struct TruckTrack {
    /// Truck id.
    pub truck: String,
    /// Fixes `[ts_ms, lat, lon]` (good readings of both tags at the same instant), by time.
    pub fixes: Vec<(i64, f64, f64)>,
    /// Stops found with `[reconcile.stops]` (the same rule as the reconciliation).
    pub stops: Vec<TrackStop>,
}

/// `GET /api/v1/track?truck=&from=&to=`: a truck's fixes and stops (at most two days).
pub(crate) async fn track(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["truck", "from", "to"])?;
    let truck = q.req("truck")?;
    let (from, to) = params::range(&q)?;
    if to - from > MAX_TRACK_MS {
        return Err(Problem::bad_parameter(
            "to",
            "a track spans at most 2 days; ask for a shorter range",
        ));
    }
    let Some(r) = &s.reconciler else {
        return Err(Problem::not_found(
            "no [reconcile] site model is configured, so there are no trucks",
        ));
    };
    let Some(t) = r.cfg.trucks.iter().find(|t| t.id == truck) else {
        return Err(Problem::not_found(format!(
            "no truck {truck:?} in the site model"
        )));
    };
    if !who.scope.allows(&t.site) {
        return Err(who
            .scope
            .hidden(format!("no truck {truck:?} in the site model")));
    }
    let reg = Registry::new(call(s.store.tags(Some(&t.site), None)).await?);
    let mut out = TruckTrack {
        truck: t.id.clone(),
        fixes: Vec::new(),
        stops: Vec::new(),
    };
    if let (Some(lat), Some(lon)) = (
        reg.id(&t.site, &t.agent, &t.lat_tag),
        reg.id(&t.site, &t.agent, &t.lon_tag),
    ) {
        let ledger = s.store.ledger();
        let la = call(ledger.track(lat, from, to)).await?;
        let lo: HashMap<i64, f64> = call(ledger.track(lon, from, to))
            .await?
            .into_iter()
            .collect();
        out.fixes = la
            .into_iter()
            .filter_map(|(ts, a)| lo.get(&ts).map(|&o| (ts, a, o)))
            .collect();
    }
    let fixes: Vec<Fix> = out
        .fixes
        .iter()
        .map(|&(ts_ms, lat, lon)| Fix { ts_ms, lat, lon })
        .collect();
    let places = r.cfg.known_places();
    out.stops = stops::stops(&fixes, &places, &r.cfg.stops)
        .into_iter()
        .map(|s| TrackStop {
            minutes: s.minutes(),
            from_ms: s.from_ms,
            to_ms: s.to_ms,
            lat: s.lat,
            lon: s.lon,
            place: s.place,
        })
        .collect();
    Ok(data(&[out]))
}
