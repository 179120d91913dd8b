//! Progress-based watchdog bookkeeping (pure). Each loop the service depends on is a *source*
//! with a counter that must advance within its window (or be idle with nothing to do). The
//! service pings systemd's watchdog only while no source is stalled, so a wedged loop leads to a
//! restart, while a dead field device (whose failed cycles still advance the counter) does not.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Source {
    name: String,
    window: Duration,
    last: u64,
    since: Instant,
}

/// A stalled source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Source name.
    pub name: String,
    /// Time since it last advanced.
    pub for_: Duration,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no progress from {} for {} s",
            self.name,
            self.for_.as_secs()
        )
    }
}

/// The progress of every watched loop.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    sources: Vec<Source>,
}

impl Progress {
    /// No sources yet.
    pub fn new() -> Progress {
        Progress::default()
    }

    /// Watch a source that must advance at least every `window`; returns its index.
    pub fn add(&mut self, name: &str, window: Duration, now: Instant) -> usize {
        self.sources.push(Source {
            name: name.to_owned(),
            window,
            last: 0,
            since: now,
        });
        self.sources.len() - 1
    }

    /// Change a source's window (after a reload changed the poll intervals).
    pub fn set_window(&mut self, i: usize, window: Duration) {
        if let Some(s) = self.sources.get_mut(i) {
            s.window = window;
        }
    }

    /// Record the current counter of source `i`; `idle` (nothing to do) counts as progress.
    pub fn observe(&mut self, i: usize, value: u64, idle: bool, now: Instant) {
        if let Some(s) = self.sources.get_mut(i) {
            if value != s.last || idle {
                s.last = value;
                s.since = now;
            }
        }
    }

    /// The first source that has not advanced within its window, if any.
    pub fn stalled(&self, now: Instant) -> Option<Stall> {
        self.sources.iter().find_map(|s| {
            let for_ = now.saturating_duration_since(s.since);
            (for_ > s.window).then(|| Stall {
                name: s.name.clone(),
                for_,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_that_stops_advancing_stalls_after_its_window_and_recovers() {
        let t0 = Instant::now();
        let mut p = Progress::new();
        let a = p.add("drivers", Duration::from_secs(10), t0);
        let b = p.add("uplink", Duration::from_secs(5), t0);
        p.observe(a, 1, false, t0 + Duration::from_secs(4));
        p.observe(b, 1, false, t0 + Duration::from_secs(4));
        assert_eq!(p.stalled(t0 + Duration::from_secs(9)), None);
        // The uplink counter stays at 1: stalled 5 s after its last change.
        p.observe(a, 2, false, t0 + Duration::from_secs(9));
        p.observe(b, 1, false, t0 + Duration::from_secs(9));
        let s = p.stalled(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(s.name, "uplink");
        assert_eq!(s.to_string(), "no progress from uplink for 6 s");
        p.observe(b, 2, false, t0 + Duration::from_secs(11));
        assert_eq!(p.stalled(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn an_idle_source_is_not_stalled() {
        let t0 = Instant::now();
        let mut p = Progress::new();
        let c = p.add("commit", Duration::from_secs(5), t0);
        p.observe(c, 0, true, t0 + Duration::from_secs(30));
        assert_eq!(p.stalled(t0 + Duration::from_secs(31)), None);
        p.set_window(c, Duration::from_secs(60));
        assert_eq!(p.stalled(t0 + Duration::from_secs(80)), None);
    }
}
