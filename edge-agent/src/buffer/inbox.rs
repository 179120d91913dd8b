//! Readings handed to the buffer thread without waking it for every hand-over.
//!
//! Design (issue 14): each driver output used to be a command on the buffer thread's channel,
//! so the thread woke for every device poll (100 times a second at 10,000 tags, 1,000 at
//! 100,000) only to move readings into its pending list. Now the pipeline appends them here,
//! under a mutex, and wakes the thread only when it has to act:
//!
//! - the first readings after a commit (the thread then schedules the next group commit,
//!   `commit_interval` later): [`Inbox::push`] returns `true` once, and the inbox is *armed*;
//! - as soon as `commit_readings` are waiting (a commit is due now);
//! - while armed, further readings wait here without a wake-up.
//!
//! The buffer thread takes everything waiting ([`Inbox::take`]) before it handles any command
//! (so a flush, an event commit, a reload or a lease sees every reading handed over before it,
//! in order) and, disarming, right before each group commit. A reading is therefore committed at
//! most `commit_interval` after the wake that armed the inbox, as before.
//!
//! Nothing here can lose a reading: the mutex only moves vectors; a poisoned mutex (a panic
//! while holding it, which the code inside cannot do) still yields its contents.
//! Tests: `buffer::inbox::tests` (wake rules), `tests/buffer.rs` (commit, flush, crash window).

use std::sync::{Mutex, MutexGuard};

use crate::model::Reading;

/// What waits for the buffer thread.
#[derive(Debug, Default)]
struct Waiting {
    batches: Vec<Vec<Reading>>,
    readings: usize,
    /// The buffer thread knows readings are waiting and will commit them in time.
    armed: bool,
}

/// Readings handed over and not yet taken by the buffer thread.
#[derive(Debug)]
pub(crate) struct Inbox {
    waiting: Mutex<Waiting>,
    /// Readings waiting that make a commit due at once (`commit_readings`).
    due_at: usize,
}

impl Inbox {
    /// An empty inbox; a commit is due at once when `due_at` readings wait.
    pub(crate) fn new(due_at: usize) -> Self {
        Inbox {
            waiting: Mutex::new(Waiting::default()),
            due_at: due_at.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add readings; `true` when the buffer thread must be woken.
    pub(crate) fn push(&self, readings: Vec<Reading>) -> bool {
        if readings.is_empty() {
            return false;
        }
        let mut w = self.lock();
        w.readings += readings.len();
        w.batches.push(readings);
        let wake = !w.armed || w.readings >= self.due_at;
        w.armed = true;
        wake
    }

    /// Take everything waiting (in hand-over order). `disarm`: a group commit follows, so the
    /// next reading handed over must wake the thread again.
    pub(crate) fn take(&self, disarm: bool) -> Vec<Vec<Reading>> {
        let mut w = self.lock();
        w.readings = 0;
        if disarm {
            w.armed = false;
        }
        std::mem::take(&mut w.batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;

    fn rs(n: u32) -> Vec<Reading> {
        (0..n)
            .map(|i| Reading::good(i, 1_000 + i64::from(i), Value::UInt(1), 0))
            .collect()
    }

    #[test]
    fn wakes_once_per_commit_cycle_and_when_a_commit_is_due() {
        let inbox = Inbox::new(10);
        assert!(inbox.push(rs(3)), "the first readings arm the commit timer");
        assert!(!inbox.push(rs(3)), "armed: no wake-up");
        assert!(!inbox.push(Vec::new()), "nothing handed over: no wake-up");
        assert!(inbox.push(rs(4)), "10 waiting: a commit is due now");
        // Taken without disarming (a command came first): still armed, counts restart.
        let got = inbox.take(false);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 4]);
        assert!(!inbox.push(rs(2)));
        // Taken for a group commit: the next hand-over wakes the thread again.
        assert_eq!(inbox.take(true).len(), 1);
        assert!(inbox.take(true).is_empty());
        assert!(inbox.push(rs(1)));
    }
}
