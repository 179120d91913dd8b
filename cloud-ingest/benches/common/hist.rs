//! A Prometheus histogram read from a text exposition twice, and quantiles of the difference
//! the way Prometheus' `histogram_quantile` computes them (linear within a bucket; a quantile in
//! the `+Inf` bucket is the last finite bound) — `scripts/bench-e2e`'s logic, in Rust.

/// Cumulative buckets `(le, count)` of histogram `name` (`+Inf` as infinity), in exposition order.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, tail) = rest.split_once('"')?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, tail.split_whitespace().last()?.parse().ok()?))
        })
        .collect()
}

/// The window's buckets: `after − before`, bound by bound (None: the two do not match).
pub fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<Vec<(f64, f64)>> {
    if before.len() != after.len() || after.is_empty() {
        return None;
    }
    before
        .iter()
        .zip(after)
        .map(|((l0, n0), (l1, n1))| (l0 == l1).then_some((*l1, n1 - n0)))
        .collect()
}

/// Quantile `q` (0..1) of cumulative buckets; NaN when they hold nothing.
pub fn quantile(q: f64, cum: &[(f64, f64)]) -> f64 {
    let total = cum.last().map(|b| b.1).unwrap_or(0.0);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut prev_le, mut prev_n) = (0.0, 0.0);
    for &(le, n) in cum {
        if n >= rank {
            if le.is_infinite() {
                return prev_le;
            }
            let frac = if n > prev_n {
                (rank - prev_n) / (n - prev_n)
            } else {
                0.0
            };
            return prev_le + (le - prev_le) * frac;
        }
        (prev_le, prev_n) = (le, n);
    }
    f64::NAN
}

/// A check of the arithmetic above on a known histogram, run at start (a bench target with
/// `harness = false` has no test harness).
pub fn self_check() -> Result<(), String> {
    let text = "x_bucket{le=\"0.1\"} 10\nx_bucket{le=\"0.5\"} 60\nx_bucket{le=\"1\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_sum 1\n";
    let b = buckets(text, "x");
    let zero: Vec<(f64, f64)> = b.iter().map(|(l, _)| (*l, 0.0)).collect();
    let d = delta(&zero, &b).ok_or("delta")?;
    let ok = (quantile(0.5, &d) - 0.42).abs() < 1e-9
        && (quantile(0.05, &d) - 0.05).abs() < 1e-9
        && (quantile(0.99, &d) - 0.9875).abs() < 1e-9
        && quantile(0.5, &zero).is_nan();
    ok.then_some(())
        .ok_or_else(|| format!("histogram quantiles wrong: {d:?}"))
}
