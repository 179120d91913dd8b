//! Pure uplink bookkeeping: which batches are in flight, what to send next, when to re-send.
//!
//! Design: methods only change this struct; the event loop (`run.rs`) does the I/O and feeds
//! events in. So the delivery rules are unit-tested without sockets:
//! - at most `window` batches are in flight (sent, not acknowledged by the cloud);
//! - a batch not acknowledged within `ack_timeout`, or in flight when the connection dropped, is
//!   re-sent with the same id (the buffer persisted it; the cloud de-duplicates);
//! - batches leased before a restart are re-sent first;
//! - live data go first (newest first); backlog drains oldest first, limited by a token bucket
//!   so a long outage never starves live values;
//! - an acknowledgement for an unknown batch id is counted and otherwise ignored (idempotent).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A batch sent and not yet acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct InFlight {
    /// Readings (and events) in it.
    pub readings: u64,
    /// When it was last published; `None` = must be (re-)published.
    pub sent_at: Option<Instant>,
    /// Publications so far.
    pub attempts: u32,
}

/// What the event loop should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Publish batch `id` again (same payload, same id).
    Resend(u64),
    /// Lease up to `max` live readings (newest first).
    LeaseLive {
        /// Most readings.
        max: u64,
    },
    /// Lease up to `max` backlog readings (oldest first).
    LeaseBacklog {
        /// Most readings.
        max: u64,
    },
    /// Nothing to do until the next tick or event.
    Wait,
}

/// Token bucket for the backlog drain rate.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    /// `rate` tokens per second (0 = unlimited), holding at most `capacity`.
    pub fn new(rate: u32, capacity: u64) -> Self {
        let capacity = capacity.max(1) as f64;
        TokenBucket {
            rate: f64::from(rate),
            capacity,
            tokens: capacity,
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            self.tokens = (self.tokens
                + now.saturating_duration_since(at).as_secs_f64() * self.rate)
                .min(self.capacity);
        }
        self.at = Some(now);
    }

    /// Whole tokens available at `now` (`u64::MAX` when unlimited).
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.rate == 0.0 {
            return u64::MAX;
        }
        self.refill(now);
        self.tokens.max(0.0) as u64
    }

    /// Spend `n` tokens (may go negative after a batch larger than asked, which then waits).
    pub fn take(&mut self, n: u64, now: Instant) {
        if self.rate == 0.0 {
            return;
        }
        self.refill(now);
        self.tokens -= n as f64;
    }
}

/// Counters of the uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    /// Batches published for the first time.
    pub sent_batches: u64,
    /// Readings in them.
    pub sent_readings: u64,
    /// Re-publications (timeouts, reconnects, restarts).
    pub resent_batches: u64,
    /// Batches acknowledged.
    pub acked_batches: u64,
    /// Readings in them.
    pub acked_readings: u64,
    /// Acknowledgements naming a batch not in flight (duplicates, or acks of a previous run).
    pub unknown_acks: u64,
}

/// The uplink state machine.
#[derive(Debug, Clone)]
pub struct UplinkState {
    window: usize,
    batch: u64,
    ack_timeout: Duration,
    inflight: BTreeMap<u64, InFlight>,
    restored: VecDeque<(u64, u64)>,
    connected: bool,
    live_exhausted: bool,
    backlog_exhausted: bool,
    bucket: TokenBucket,
    /// Counters.
    pub counters: UplinkCounters,
}

impl UplinkState {
    /// New state: `window` batches in flight, `batch` readings per batch, re-send after
    /// `ack_timeout`, backlog at `backlog_rate` readings/s (0 = unlimited).
    pub fn new(window: usize, batch: u64, ack_timeout: Duration, backlog_rate: u32) -> Self {
        UplinkState {
            window: window.max(1),
            batch: batch.max(1),
            ack_timeout,
            inflight: BTreeMap::new(),
            restored: VecDeque::new(),
            connected: false,
            live_exhausted: false,
            backlog_exhausted: false,
            bucket: TokenBucket::new(backlog_rate, batch.max(u64::from(backlog_rate))),
            counters: UplinkCounters::default(),
        }
    }

    /// A batch leased before a restart: send it first, same id.
    pub fn restore(&mut self, id: u64, readings: u64) {
        self.restored.push_back((id, readings));
    }

    /// The broker accepted our connection: everything in flight must be published again.
    pub fn on_connected(&mut self) {
        self.connected = true;
        for f in self.inflight.values_mut() {
            f.sent_at = None;
        }
    }

    /// The connection dropped.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// Connected?
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// A new tick: new data may have been committed since the buffer last had none, and live
    /// readings may have aged into the backlog.
    pub fn tick(&mut self) {
        self.live_exhausted = false;
        self.backlog_exhausted = false;
    }

    /// New readings were committed since the buffer last had no live ones (the backlog, which
    /// only grows as readings age, is asked again at the next [`UplinkState::tick`]).
    pub fn tick_live(&mut self) {
        self.live_exhausted = false;
    }

    /// The last lease of this kind (`backlog` or live) took everything of its range: nothing of
    /// that kind waits until new data is committed (saves asking the buffer for nothing).
    pub fn drained(&mut self, backlog: bool) {
        if backlog {
            self.backlog_exhausted = true;
        } else {
            self.live_exhausted = true;
        }
    }

    /// What to do next at `now`.
    pub fn next(&mut self, now: Instant) -> Next {
        if !self.connected {
            return Next::Wait;
        }
        let due = self
            .inflight
            .iter()
            .find(|(_, f)| {
                f.sent_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.ack_timeout)
            })
            .map(|(id, _)| *id);
        if let Some(id) = due {
            if let Some(f) = self.inflight.get_mut(&id) {
                if f.attempts > 0 {
                    self.counters.resent_batches += 1;
                }
                f.sent_at = Some(now);
                f.attempts += 1;
            }
            return Next::Resend(id);
        }
        if self.inflight.len() >= self.window {
            return Next::Wait;
        }
        if let Some((id, readings)) = self.restored.pop_front() {
            self.inflight.insert(
                id,
                InFlight {
                    readings,
                    sent_at: Some(now),
                    attempts: 1,
                },
            );
            self.counters.resent_batches += 1;
            return Next::Resend(id);
        }
        if !self.live_exhausted {
            return Next::LeaseLive { max: self.batch };
        }
        if !self.backlog_exhausted {
            let tokens = self.bucket.available(now);
            if tokens > 0 {
                return Next::LeaseBacklog {
                    max: self.batch.min(tokens),
                };
            }
        }
        Next::Wait
    }

    /// The result of a `LeaseLive`/`LeaseBacklog`: `Some((id, readings))` was leased and is being
    /// published now; `None` = nothing of that kind is waiting.
    pub fn leased(&mut self, backlog: bool, result: Option<(u64, u64)>, now: Instant) {
        match result {
            None if backlog => self.backlog_exhausted = true,
            None => self.live_exhausted = true,
            Some((id, readings)) => {
                if backlog {
                    self.bucket.take(readings, now);
                }
                self.counters.sent_batches += 1;
                self.counters.sent_readings += readings;
                self.inflight.insert(
                    id,
                    InFlight {
                        readings,
                        sent_at: Some(now),
                        attempts: 1,
                    },
                );
            }
        }
    }

    /// Negative acknowledgement: batch `id` could not be published (client queue full) or must go
    /// out again; it keeps its id and lease and is re-sent on the next round.
    pub fn nack(&mut self, id: u64) {
        if let Some(f) = self.inflight.get_mut(&id) {
            f.sent_at = None;
        }
    }

    /// The cloud acknowledged `id`: returns its in-flight record (`None` = unknown id, counted).
    pub fn on_ack(&mut self, id: u64) -> Option<InFlight> {
        match self.inflight.remove(&id) {
            Some(f) => {
                self.counters.acked_batches += 1;
                self.counters.acked_readings += f.readings;
                Some(f)
            }
            None => {
                self.restored.retain(|(r, _)| *r != id);
                self.counters.unknown_acks += 1;
                None
            }
        }
    }

    /// Did the last leases of both kinds find nothing waiting?
    pub fn exhausted(&self) -> bool {
        self.live_exhausted && self.backlog_exhausted
    }

    /// Batches in flight (incl. restored ones not yet re-sent).
    pub fn in_flight(&self) -> usize {
        self.inflight.len() + self.restored.len()
    }

    /// Readings in flight.
    pub fn in_flight_readings(&self) -> u64 {
        self.inflight.values().map(|f| f.readings).sum::<u64>()
            + self.restored.iter().map(|(_, r)| r).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st() -> UplinkState {
        let mut s = UplinkState::new(2, 100, Duration::from_secs(30), 0);
        s.on_connected();
        s
    }

    #[test]
    fn a_drained_live_lease_waits_for_new_data_and_the_backlog_for_the_next_tick() {
        let t = Instant::now();
        let mut s = UplinkState::new(4, 100, Duration::from_secs(30), 0);
        s.on_connected();
        assert_eq!(s.next(t), Next::LeaseLive { max: 100 });
        s.leased(false, Some((1, 40)), t);
        s.drained(false);
        assert_eq!(s.next(t), Next::LeaseBacklog { max: 100 });
        s.leased(true, None, t);
        assert_eq!(s.next(t), Next::Wait);
        assert!(s.exhausted());
        // New readings committed: only live is asked again.
        s.tick_live();
        assert_eq!(s.next(t), Next::LeaseLive { max: 100 });
        s.leased(false, None, t);
        assert_eq!(s.next(t), Next::Wait);
        // The periodic tick asks both again.
        s.tick();
        assert_eq!(s.next(t), Next::LeaseLive { max: 100 });
    }

    #[test]
    fn nothing_is_sent_while_disconnected() {
        let mut s = UplinkState::new(2, 100, Duration::from_secs(30), 0);
        assert_eq!(s.next(Instant::now()), Next::Wait);
    }

    #[test]
    fn live_first_then_backlog_then_wait_when_the_window_is_full() {
        let mut s = st();
        let t = Instant::now();
        assert_eq!(s.next(t), Next::LeaseLive { max: 100 });
        s.leased(false, None, t);
        assert_eq!(s.next(t), Next::LeaseBacklog { max: 100 });
        s.leased(true, Some((1, 100)), t);
        assert_eq!(s.next(t), Next::LeaseBacklog { max: 100 });
        s.leased(true, Some((2, 100)), t);
        assert_eq!(s.next(t), Next::Wait, "window of 2 full");
        assert!(s.on_ack(1).is_some());
        assert_eq!(s.next(t), Next::LeaseBacklog { max: 100 });
    }

    #[test]
    fn an_unacknowledged_batch_is_resent_with_the_same_id_after_the_timeout() {
        let mut s = st();
        let t = Instant::now();
        s.leased(false, Some((7, 10)), t);
        s.leased(false, None, t);
        s.leased(true, None, t);
        assert_eq!(s.next(t + Duration::from_secs(29)), Next::Wait);
        assert_eq!(s.next(t + Duration::from_secs(30)), Next::Resend(7));
        assert_eq!(s.counters.resent_batches, 1);
        assert_eq!(
            s.next(t + Duration::from_secs(31)),
            Next::Wait,
            "re-sent just now"
        );
    }

    #[test]
    fn a_reconnect_resends_everything_in_flight() {
        let mut s = st();
        let t = Instant::now();
        s.leased(false, Some((1, 10)), t);
        s.leased(false, Some((2, 10)), t);
        s.on_disconnected();
        assert_eq!(s.next(t), Next::Wait);
        s.on_connected();
        assert_eq!(s.next(t), Next::Resend(1));
        assert_eq!(s.next(t), Next::Resend(2));
        assert_eq!(s.next(t), Next::Wait);
    }

    #[test]
    fn batches_leased_before_a_restart_go_first() {
        let mut s = UplinkState::new(4, 100, Duration::from_secs(30), 0);
        s.restore(41, 50);
        s.restore(42, 50);
        s.on_connected();
        let t = Instant::now();
        assert_eq!(s.next(t), Next::Resend(41));
        assert_eq!(s.next(t), Next::Resend(42));
        assert_eq!(s.next(t), Next::LeaseLive { max: 100 });
        assert_eq!(s.in_flight_readings(), 100);
    }

    #[test]
    fn duplicate_acks_are_counted_and_ignored() {
        let mut s = st();
        let t = Instant::now();
        s.leased(false, Some((1, 10)), t);
        assert!(s.on_ack(1).is_some());
        assert!(s.on_ack(1).is_none());
        assert_eq!(s.counters.unknown_acks, 1);
        assert_eq!(s.counters.acked_readings, 10);
    }

    #[test]
    fn backlog_drains_at_the_configured_rate() {
        let mut s = UplinkState::new(100, 1000, Duration::from_secs(30), 500);
        s.on_connected();
        let t = Instant::now();
        s.leased(false, None, t);
        assert_eq!(
            s.next(t),
            Next::LeaseBacklog { max: 1000 },
            "bucket starts full"
        );
        s.leased(true, Some((1, 1000)), t);
        assert_eq!(s.next(t), Next::Wait, "bucket empty");
        s.tick();
        s.leased(false, None, t);
        assert_eq!(
            s.next(t + Duration::from_secs(1)),
            Next::LeaseBacklog { max: 500 }
        );
    }
}
