//! Simulation time: every generated value is a function of the time elapsed since the
//! simulator started, read from a [`Clock`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Source of "time since start". Cheap to clone; clones share the same time.
#[derive(Debug, Clone)]
pub struct Clock(Inner);

#[derive(Debug, Clone)]
enum Inner {
    System(Instant),
    Manual(Arc<Mutex<Duration>>),
}

impl Clock {
    /// Real time, starting now.
    pub fn system() -> Self {
        Clock(Inner::System(Instant::now()))
    }

    /// A clock that stands still at zero until [`Clock::set`] or [`Clock::advance`] moves it
    /// (deterministic tests).
    pub fn manual() -> Self {
        Clock(Inner::Manual(Arc::new(Mutex::new(Duration::ZERO))))
    }

    /// Time elapsed since start.
    pub fn elapsed(&self) -> Duration {
        match &self.0 {
            Inner::System(start) => start.elapsed(),
            Inner::Manual(t) => *t.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Is this a manual clock?
    pub fn is_manual(&self) -> bool {
        matches!(self.0, Inner::Manual(_))
    }

    /// Set a manual clock to `t`. Returns false (and does nothing) on a system clock.
    pub fn set(&self, t: Duration) -> bool {
        match &self.0 {
            Inner::System(_) => false,
            Inner::Manual(m) => {
                *m.lock().unwrap_or_else(PoisonError::into_inner) = t;
                true
            }
        }
    }

    /// Move a manual clock forward by `d`. Returns false (and does nothing) on a system clock.
    pub fn advance(&self, d: Duration) -> bool {
        match &self.0 {
            Inner::System(_) => false,
            Inner::Manual(m) => {
                let mut t = m.lock().unwrap_or_else(PoisonError::into_inner);
                *t = t.saturating_add(d);
                true
            }
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual();
        let c2 = c.clone();
        assert_eq!(c.elapsed(), Duration::ZERO);
        assert!(c.advance(Duration::from_secs(2)));
        assert_eq!(c2.elapsed(), Duration::from_secs(2));
        assert!(c2.set(Duration::from_millis(1500)));
        assert_eq!(c.elapsed(), Duration::from_millis(1500));
        assert!(!Clock::system().set(Duration::ZERO));
    }
}
