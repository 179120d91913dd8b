//! `GET /metrics`: the consumer's counters in the Prometheus text exposition format (0.0.4),
//! as `flowsquare_ingest_*`, each with its `# HELP` and `# TYPE` lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::consume::run::ConsumerStats;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Render the exposition.
pub fn render(stats: &ConsumerStats, ready: &AtomicBool) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    let counters = [
        ("flowsquare_ingest_received_total", "Publications received from the broker (all topics).", &stats.received),
        ("flowsquare_ingest_stored_batches_total", "Batches committed to the database.", &stats.stored_batches),
        ("flowsquare_ingest_stored_readings_total", "Readings committed to the database.", &stats.stored_readings),
        ("flowsquare_ingest_duplicate_batches_total", "Batches delivered again and not stored again (acknowledged again).", &stats.duplicates),
        (
            "flowsquare_ingest_unknown_catalog_batches_total",
            "Batches held back because the birth of their tag catalog had not arrived (not acknowledged; the agent re-sends).",
            &stats.unknown_catalog,
        ),
        ("flowsquare_ingest_dead_letters_total", "Messages kept in the dead-letter table.", &stats.dead_letters),
        ("flowsquare_ingest_batch_conflicts_total", "Batches whose (site, agent, buffer epoch, batch id) was already stored with other content: dead-lettered, rejected, alerted.", &stats.conflicts),
        ("flowsquare_ingest_commit_errors_total", "Failed database commits (retried).", &stats.commit_errors),
        ("flowsquare_ingest_acked_batches_total", "End-to-end acknowledgements published to the agents (batch ids).", &stats.acked_batches),
    ];
    for (name, help, c) in counters {
        metric(name, "counter", help, c.load(Relaxed));
    }
    metric(
        "flowsquare_ingest_consumer_connected",
        "gauge",
        "1 when the consumer is connected to the broker.",
        u64::from(ready.load(Relaxed)),
    );
    stats.poll_to_commit.render(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_help_and_type() {
        let stats = ConsumerStats::default();
        stats.stored_readings.fetch_add(1234, Relaxed);
        let text = render(&stats, &AtomicBool::new(true));
        assert!(text.contains("\nflowsquare_ingest_stored_readings_total 1234\n"));
        assert!(text.contains("\nflowsquare_ingest_consumer_connected 1\n"));
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        // 10 counters and gauges, the latency histogram's buckets (+Inf), sum and count.
        let buckets = crate::consume::latency::BUCKETS_S.len() + 1;
        assert_eq!(samples.len(), 10 + buckets + 2);
        for l in samples {
            let name = l.split([' ', '{']).next().unwrap_or_default();
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|n| n.ends_with("_seconds")))
                .unwrap_or(name);
            assert!(name.starts_with("flowsquare_ingest_"), "{l}");
            assert!(
                text.contains(&format!("# HELP {name} "))
                    && text.contains(&format!("# TYPE {name} ")),
                "{name}"
            );
        }
    }
}
