//! Stops of a loaded truck: runs of GPS fixes that stay within `radius_m` of the run's first
//! fix for at least `min_minutes`; a stop farther than every known place's radius is flagged.

use crate::reconcile::config::StopConfig;
use crate::reconcile::model::{Fix, Place};

/// Mean Earth radius, metres.
const EARTH_M: f64 = 6_371_008.8;

/// Great-circle distance, metres.
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_M * a.sqrt().min(1.0).asin()
}

/// A stop.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stop {
    /// First fix, ms.
    pub from_ms: i64,
    /// Last fix, ms.
    pub to_ms: i64,
    /// Mean latitude.
    pub lat: f64,
    /// Mean longitude.
    pub lon: f64,
    /// The known place it is at, if any.
    pub place: Option<String>,
}

impl Stop {
    /// Minutes.
    pub fn minutes(&self) -> f64 {
        (self.to_ms - self.from_ms) as f64 / 60_000.0
    }
}

/// Every stop of a track (fixes in time order).
pub fn stops(fixes: &[Fix], places: &[Place], cfg: &StopConfig) -> Vec<Stop> {
    let min_ms = (cfg.min_minutes * 60_000.0) as i64;
    let mut out = Vec::new();
    let mut i = 0;
    while i < fixes.len() {
        let a = fixes[i];
        let mut j = i;
        while j + 1 < fixes.len()
            && distance_m(a.lat, a.lon, fixes[j + 1].lat, fixes[j + 1].lon) <= cfg.radius_m
        {
            j += 1;
        }
        if fixes[j].ts_ms - a.ts_ms >= min_ms {
            let run = &fixes[i..=j];
            let n = run.len() as f64;
            let lat = run.iter().map(|f| f.lat).sum::<f64>() / n;
            let lon = run.iter().map(|f| f.lon).sum::<f64>() / n;
            let place = places
                .iter()
                .find(|p| distance_m(lat, lon, p.lat, p.lon) <= p.radius_m)
                .map(|p| p.id.clone());
            out.push(Stop {
                from_ms: a.ts_ms,
                to_ms: fixes[j].ts_ms,
                lat,
                lon,
                place,
            });
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(min: i64, lat: f64, lon: f64) -> Fix {
        Fix {
            ts_ms: min * 60_000,
            lat,
            lon,
        }
    }

    #[test]
    fn distance_of_a_degree_of_latitude() {
        let d = distance_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
    }

    #[test]
    fn a_long_stop_away_from_known_places_is_found_and_driving_is_not() {
        let station = Place {
            id: "ST-1".into(),
            lat: -6.9,
            lon: 39.3,
            radius_m: 300.0,
        };
        let mut track = Vec::new();
        // driving 0.01° (≈ 1.1 km) per minute
        for m in 0..10 {
            track.push(fix(m, -6.80 - 0.01 * m as f64, 39.2));
        }
        // 20 minutes at one spot (small jitter)
        for m in 10..30 {
            track.push(fix(m, -6.90 + 0.0001 * (m % 3) as f64, 39.2));
        }
        // 15 minutes at the station
        for m in 30..45 {
            track.push(fix(m, -6.9, 39.3));
        }
        let s = stops(&track, &[station], &StopConfig::default());
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].place, None);
        assert!((s[0].minutes() - 19.0).abs() < 1e-9);
        assert_eq!(s[1].place.as_deref(), Some("ST-1"));
    }
}
