//! Pure link/unit health bookkeeping: capped, jittered exponential backoff and the "skip a unit
//! that keeps failing" rule. No I/O and no clock reads: callers pass `Instant`s, so this is
//! unit-tested without sockets.

use std::time::{Duration, Instant};

/// Failures in a row after which a unit is skipped.
pub const FAILURES_BEFORE_SKIP: u32 = 3;

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Next delay; `jitter` in [0, 1) spreads it over [d/2, d) so reconnects of many agents
    /// after a site-wide outage do not arrive at once.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let d = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Back to the base delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Health of one unit (or one TCP link).
#[derive(Debug, Clone)]
pub struct Health {
    /// Failed cycles in a row (every request failed on the link).
    pub consecutive_failures: u32,
    /// While set and in the future, the unit is skipped.
    pub skip_until: Option<Instant>,
    backoff: Backoff,
}

impl Health {
    /// New, healthy.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Health {
            consecutive_failures: 0,
            skip_until: None,
            backoff: Backoff::new(base, cap),
        }
    }

    /// Should the unit be skipped at `now`?
    pub fn skipping(&self, now: Instant) -> bool {
        self.skip_until.is_some_and(|t| now < t)
    }

    /// Record a cycle in which the device answered at least once.
    pub fn success(&mut self) {
        self.consecutive_failures = 0;
        self.skip_until = None;
        self.backoff.reset();
    }

    /// Record a cycle in which the link failed for every request; returns the skip deadline if
    /// the unit is now skipped.
    pub fn failure(&mut self, now: Instant, jitter: f64) -> Option<Instant> {
        self.consecutive_failures += 1;
        if self.consecutive_failures >= FAILURES_BEFORE_SKIP {
            let until = now + self.backoff.next_delay(jitter);
            self.skip_until = Some(until);
            Some(until)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let d: Vec<u64> = (0..6).map(|_| b.next_delay(0.999_999).as_secs()).collect();
        assert_eq!(d, vec![0, 1, 3, 7, 9, 9]); // ~1,2,4,8,10,10 less a hair of jitter
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
    }

    #[test]
    fn a_unit_is_skipped_after_three_failed_cycles_and_back_after_a_success() {
        let t0 = Instant::now();
        let mut h = Health::new(Duration::from_secs(2), Duration::from_secs(60));
        assert_eq!(h.failure(t0, 0.0), None);
        assert_eq!(h.failure(t0, 0.0), None);
        let until = h.failure(t0, 0.0).expect("skipped after 3 failures");
        assert!(h.skipping(t0));
        assert!(!h.skipping(until));
        h.success();
        assert!(!h.skipping(t0));
        assert_eq!(h.consecutive_failures, 0);
    }
}
