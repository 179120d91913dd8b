//! Meter drift: control limits over a meter-vs-tank trend.
//!
//! Each clean transfer day gives a point `(meter − tank) / tank` in %. The baseline is the
//! usable (in-control, clean) points of the `window_days` before the day; the limits are
//! `mean ± max(sigma · sd, min_shift_pct)` once there are `min_points`. A point outside is
//! out of control: the meter has drifted (or its tank's gauging has), and the point is left out
//! of later baselines so a sustained drift stays visible.

use crate::reconcile::config::DriftConfig;
use crate::reconcile::model::TrendPoint;

/// Control limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Baseline mean, %.
    pub mean: f64,
    /// Baseline sample standard deviation, %.
    pub sd: f64,
    /// Lower control limit, %.
    pub lcl: f64,
    /// Upper control limit, %.
    pub ucl: f64,
    /// Points in the baseline.
    pub points: usize,
}

impl Limits {
    /// Is `pct` inside the limits?
    pub fn contains(&self, pct: f64) -> bool {
        pct >= self.lcl && pct <= self.ucl
    }
}

/// The limits for `day` from `history` (any order), or `None` while the baseline is too short.
pub fn limits(history: &[TrendPoint], day: i64, cfg: &DriftConfig) -> Option<Limits> {
    let from = day - i64::from(cfg.window_days);
    let pts: Vec<f64> = history
        .iter()
        .filter(|p| p.usable && p.day >= from && p.day < day && p.pct.is_finite())
        .map(|p| p.pct)
        .collect();
    if pts.len() < cfg.min_points.max(2) {
        return None;
    }
    let n = pts.len() as f64;
    let mean = pts.iter().sum::<f64>() / n;
    let var = pts.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let sd = var.sqrt();
    let half = (cfg.sigma * sd).max(cfg.min_shift_pct);
    Some(Limits {
        mean,
        sd,
        lcl: mean - half,
        ucl: mean + half,
        points: pts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[f64]) -> Vec<TrendPoint> {
        v.iter()
            .enumerate()
            .map(|(i, &pct)| TrendPoint {
                day: i as i64,
                pct,
                usable: true,
            })
            .collect()
    }

    #[test]
    fn a_short_baseline_draws_no_limits() {
        let cfg = DriftConfig::default();
        assert!(limits(&pts(&[0.0, 0.01, -0.01]), 3, &cfg).is_none());
    }

    #[test]
    fn a_step_of_three_tenths_is_out_of_control_and_noise_is_not() {
        let cfg = DriftConfig::default();
        let h = pts(&[0.01, -0.02, 0.0, 0.015, -0.01, 0.005, -0.005]);
        let l = limits(&h, 7, &cfg).expect("limits");
        // sd ≈ 0.012: 3σ < 0.15, so the floor applies.
        assert!((l.ucl - l.mean - 0.15).abs() < 1e-12, "{l:?}");
        assert!(l.contains(0.05));
        assert!(!l.contains(0.3));
        assert!(!l.contains(-0.3));
    }

    #[test]
    fn unusable_and_out_of_window_points_are_left_out() {
        let cfg = DriftConfig {
            window_days: 5,
            min_points: 3,
            ..DriftConfig::default()
        };
        let mut h = pts(&[5.0, 5.0, 0.0, 0.0, 0.0, 0.0, 9.0]);
        h[6].usable = false;
        let l = limits(&h, 7, &cfg).expect("limits");
        assert_eq!(l.points, 4); // days 2..=5; day 6 unusable, days 0-1 outside the window
        assert!(l.mean.abs() < 1e-12);
    }
}
