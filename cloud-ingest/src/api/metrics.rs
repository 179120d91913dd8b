//! `GET /metrics`: the consumer's counters and the API's own (connections, rate limits) in the
//! Prometheus text exposition format (0.0.4), as `flowsquare_ingest_*`, each with its `# HELP`
//! and `# TYPE` lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use super::limit::ApiStats;
use crate::consume::run::ConsumerStats;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Render the exposition.
pub fn render(stats: &ConsumerStats, ready: &AtomicBool, api: &ApiStats) -> String {
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
        (
            "flowsquare_ingest_out_of_window_total",
            "Readings and events refused for a time outside the accepted window ([ingest] accept_past_days / accept_future_days): kept as dead letters, the rest of their batches stored.",
            &stats.out_of_window,
        ),
        ("flowsquare_ingest_refused_births_total", "Births refused (tag registry limit or bad content): kept as dead letters.", &stats.refused_births),
        (
            "flowsquare_ingest_refused_birth_batches_total",
            "Batches of agents whose birth the tag registry limit refused: not acknowledged (the agent keeps them), logged at most once a minute per agent.",
            &stats.refused_batches,
        ),
        ("flowsquare_ingest_commit_errors_total", "Failed database commits (retried).", &stats.commit_errors),
        ("flowsquare_ingest_acked_batches_total", "End-to-end acknowledgements published to the agents (batch ids).", &stats.acked_batches),
        ("flowsquare_ingest_broker_refused_total", "Embedded broker: connections refused or closed (bad login or client certificate, a client id not the identity's or one the broker cannot take, a topic not the agent's own).", &stats.broker_refused),
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
    metric(
        "flowsquare_ingest_rollup_pending_minutes",
        "gauge",
        "Rollup minutes (agent x minute) written but not rolled up yet, at the roller's last pass.",
        stats.rollup_pending_minutes.load(Relaxed),
    );
    metric(
        "flowsquare_ingest_rollup_lag_seconds",
        "gauge",
        "Seconds since the oldest minute not rolled up yet closed, at the roller's last pass ([database] rollup_settle_ms + rollup_interval_ms in live flow).",
        stats.rollup_lag_seconds.load(Relaxed),
    );
    stats.poll_to_commit.render(&mut s);
    render_api(&mut s, api);
    s
}

/// The API's counters.
fn render_api(s: &mut String, api: &ApiStats) {
    let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    metric(
        "flowsquare_ingest_api_connections",
        "gauge",
        "HTTP API connections open now.",
        api.connections_open.load(Relaxed),
    );
    let counters = [
        ("flowsquare_ingest_api_connections_evicted_total", "Connections waiting for a request head closed at [api] max_connections to make room for a new one.", &api.connections_evicted),
        ("flowsquare_ingest_api_connections_refused_total", "Connections refused at [api] max_connections (every connection busy).", &api.connections_refused),
        ("flowsquare_ingest_api_header_timeouts_total", "Request heads not complete within [api] header_timeout_ms (408, closed).", &api.header_timeouts),
        ("flowsquare_ingest_api_bad_requests_total", "Request heads refused before routing: malformed (400), URI too long (414), too large (431).", &api.bad_requests),
    ];
    for (name, help, c) in counters {
        metric(name, "counter", help, c.load(Relaxed));
    }
    let name = "flowsquare_ingest_api_rate_limited_total";
    let _ = writeln!(
        s,
        "# HELP {name} Requests answered 429 by a rate limit (scope: ip = per client address, token = per bearer token).\n# TYPE {name} counter\n{name}{{scope=\"ip\"}} {}\n{name}{{scope=\"token\"}} {}",
        api.rate_limited_ip.load(Relaxed),
        api.rate_limited_token.load(Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_help_and_type() {
        let stats = ConsumerStats::default();
        stats.stored_readings.fetch_add(1234, Relaxed);
        let api = ApiStats::default();
        api.rate_limited_token.fetch_add(3, Relaxed);
        let text = render(&stats, &AtomicBool::new(true), &api);
        assert!(text.contains("\nflowsquare_ingest_stored_readings_total 1234\n"));
        assert!(text.contains("\nflowsquare_ingest_consumer_connected 1\n"));
        assert!(text.contains("\nflowsquare_ingest_api_rate_limited_total{scope=\"token\"} 3\n"));
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        // 16 counters and gauges, the latency histogram's buckets (+Inf), sum and count; the
        // API's 5 counters and gauges and its rate-limit counter's 2 scopes.
        let buckets = crate::consume::latency::BUCKETS_S.len() + 1;
        assert_eq!(samples.len(), 16 + buckets + 2 + 5 + 2);
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
