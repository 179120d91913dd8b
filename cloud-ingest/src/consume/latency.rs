//! End-to-end latency: from the poll (the reading's own timestamp, taken by the agent when it
//! sent the request) to the commit of its row in the cloud database, per reading, as a
//! Prometheus histogram (`flowsquare_ingest_poll_to_commit_seconds`).
//!
//! The figure includes everything on the way: the agent's group commit and batching, the broker,
//! the ingest's group commit, and any backlog after an outage (a reading replayed an hour late
//! counts an hour). It compares two clocks (the agent's and the ingest's); a reading stamped
//! *after* its commit (a gateway clock ahead) counts as 0 s, so the histogram stays valid and
//! the skew shows as a pile-up in the lowest bucket.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the buckets, seconds (`le`): fine around the 300 ms / 1 s targets, coarse
/// beyond for backlogs after outages. `+Inf` follows.
pub const BUCKETS_S: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];

/// Metric name.
pub const NAME: &str = "flowsquare_ingest_poll_to_commit_seconds";

/// A fixed-bucket histogram updated lock-free by the commit task and read by `/metrics`.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS_S.len() + 1],
    /// Sum of the observations, milliseconds.
    sum_ms: AtomicU64,
}

/// Bucket index of a latency in milliseconds (negative: 0).
fn bucket(ms: i64) -> usize {
    let s = ms.max(0) as f64 / 1000.0;
    BUCKETS_S.partition_point(|le| *le < s)
}

impl LatencyHistogram {
    /// Record the readings stamped `ts_ms` as committed at `commit_ms` (one pass, then one atomic
    /// add per bucket touched).
    pub fn observe(&self, commit_ms: i64, ts_ms: impl IntoIterator<Item = i64>) {
        let mut local = [0u64; BUCKETS_S.len() + 1];
        let mut sum = 0u64;
        for ts in ts_ms {
            let ms = commit_ms.saturating_sub(ts).max(0);
            local[bucket(ms)] += 1;
            sum = sum.saturating_add(ms as u64);
        }
        for (c, n) in self.counts.iter().zip(local) {
            if n > 0 {
                c.fetch_add(n, Relaxed);
            }
        }
        if sum > 0 {
            self.sum_ms.fetch_add(sum, Relaxed);
        }
    }

    /// Cumulative counts per bucket (the last is `+Inf`, i.e. the total), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Relaxed);
                acc
            })
            .collect();
        (cumulative, self.sum_ms.load(Relaxed) as f64 / 1000.0)
    }

    /// Append the Prometheus text exposition (HELP, TYPE, `_bucket`s, `_sum`, `_count`).
    pub fn render(&self, out: &mut String) {
        let (cum, sum) = self.snapshot();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {NAME} Time from the poll (the reading's timestamp) to the commit of its row, per reading.\n# TYPE {NAME} histogram"
        );
        for (le, n) in BUCKETS_S.iter().zip(&cum) {
            let _ = writeln!(out, "{NAME}_bucket{{le=\"{le}\"}} {n}");
        }
        let total = cum.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{NAME}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{NAME}_sum {sum}");
        let _ = writeln!(out, "{NAME}_count {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds_inclusive_and_skew_counts_as_zero() {
        assert_eq!(bucket(-50), 0);
        assert_eq!(bucket(5), 0, "5 ms ≤ 0.005 s");
        assert_eq!(bucket(6), 1);
        assert_eq!(bucket(300), 7, "300 ms is in le=0.3");
        assert_eq!(bucket(301), 8);
        assert_eq!(bucket(10_000_000), BUCKETS_S.len(), "+Inf");
    }

    #[test]
    fn the_exposition_is_cumulative_with_sum_and_count() {
        let h = LatencyHistogram::default();
        h.observe(10_000, [9_990, 9_800, 9_000, 11_000]);
        h.observe(10_000, [10_000 - 400_000]);
        let mut s = String::new();
        h.render(&mut s);
        assert!(s.contains("# TYPE flowsquare_ingest_poll_to_commit_seconds histogram\n"));
        for line in [
            "_bucket{le=\"0.005\"} 1\n", // the reading from the future
            "_bucket{le=\"0.01\"} 2\n",
            "_bucket{le=\"0.2\"} 3\n",
            "_bucket{le=\"1\"} 4\n",
            "_bucket{le=\"300\"} 4\n",
            "_bucket{le=\"3600\"} 5\n",
            "_bucket{le=\"+Inf\"} 5\n",
            "_sum 401.21\n",
            "_count 5\n",
        ] {
            assert!(s.contains(&format!("{NAME}{line}")), "{line} in\n{s}");
        }
        let (cum, _) = h.snapshot();
        assert!(cum.windows(2).all(|w| w[0] <= w[1]));
    }
}
