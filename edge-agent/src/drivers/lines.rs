//! Shared by the serial drivers: a bounded line splitter for byte streams (NMEA, gpsd JSON) and
//! a rate limiter for "bad input" log lines, so a babbling device cannot flood the journal.

use std::time::{Duration, Instant};

/// Splits a byte stream into `\n`-terminated lines, dropping (and counting) any line longer than
/// its limit, so garbage without newlines cannot grow memory.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    limit: usize,
    overflowing: bool,
}

impl LineSplitter {
    /// Lines up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            limit,
            overflowing: false,
        }
    }

    /// Feed bytes; complete lines go to `line` (without `\n`), and the number of over-long
    /// lines dropped is returned.
    pub fn push(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) -> u64 {
        let mut dropped = 0;
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let complete = chunk.last() == Some(&b'\n');
            let body = if complete {
                &chunk[..chunk.len() - 1]
            } else {
                chunk
            };
            if !self.overflowing {
                if self.buf.len() + body.len() > self.limit {
                    self.overflowing = true;
                    self.buf.clear();
                    dropped += 1;
                } else {
                    self.buf.extend_from_slice(body);
                }
            }
            if complete {
                if !self.overflowing {
                    line(&self.buf);
                }
                self.buf.clear();
                self.overflowing = false;
            }
        }
        dropped
    }
}

/// Allows one log line per `every`, counting what it held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogLimiter {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` if a line may be logged now (`n` = lines held back since the last one).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks_and_drops_long_lines() {
        let mut s = LineSplitter::new(8);
        let mut got: Vec<Vec<u8>> = Vec::new();
        assert_eq!(s.push(b"ab", |l| got.push(l.to_vec())), 0);
        assert_eq!(s.push(b"c\nde", |l| got.push(l.to_vec())), 0);
        assert_eq!(s.push(b"f\n0123456789abc", |l| got.push(l.to_vec())), 1);
        assert_eq!(s.push(b"def\nok\n", |l| got.push(l.to_vec())), 0);
        assert_eq!(got, vec![b"abc".to_vec(), b"def".to_vec(), b"ok".to_vec()]);
    }

    #[test]
    fn limiter_holds_back_and_counts() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), Some(2));
    }
}
