//! Rate limits (token buckets) per client address and per bearer token, and the API's own
//! counters for `/metrics`.
//!
//! A bucket holds up to `burst` requests and refills at `rate` per second; a request takes one,
//! or is answered 429 (problem+json, `Retry-After` = seconds until one is back). Per address
//! (IPv6 addresses per /64, IPv4-mapped ones as IPv4) the check runs before routing; `/healthz`
//! and `/readyz` are exempt. Per token it runs after authentication (the token's configured
//! name is the key, so unknown tokens never create buckets; they are limited per address).
//! Memory is bounded: at [`MAX_BUCKETS`] addresses the buckets that have refilled (idle ones,
//! indistinguishable from new) are dropped, and if that is not enough the least recently used
//! half.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::config::ApiConfig;
use super::problem::Problem;

/// Most client-address buckets kept.
pub const MAX_BUCKETS: usize = 16_384;

/// The API's counters (connection layer and rate limits), shown on `/metrics`.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections closed at the connection limit to make room (idle or slow ones).
    pub connections_evicted: AtomicU64,
    /// Connections refused at the limit (every connection busy).
    pub connections_refused: AtomicU64,
    /// Request heads that did not arrive within `header_timeout_ms` (408).
    pub header_timeouts: AtomicU64,
    /// Requests refused before routing: malformed (400), URI too long (414), head too large (431).
    pub bad_requests: AtomicU64,
    /// 429s per client address.
    pub rate_limited_ip: AtomicU64,
    /// 429s per token.
    pub rate_limited_token: AtomicU64,
}

/// One bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    rate: f64,
    burst: f64,
    cap: usize,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// `rate` per second (0 = no limit), `burst` at most, at most `cap` keys.
    pub(crate) fn new(rate: f64, burst: u32, cap: usize) -> Buckets<K> {
        Buckets {
            rate,
            burst: f64::from(burst.max(1)),
            cap: cap.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request for `key` at `now`: Ok, or how long until one is available.
    pub(crate) fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        // A poisoned lock only means another request panicked mid-update: the map is still usable.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(key) && map.len() >= self.cap {
            self.evict(&mut map, now);
        }
        let b = map.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// Drop refilled buckets; if still full, the least recently used half.
    fn evict(&self, map: &mut HashMap<K, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if map.len() >= self.cap {
            let mut times: Vec<Instant> = map.values().map(|b| b.at).collect();
            let mid = times.len() / 2;
            let (_, cut, _) = times.select_nth_unstable(mid);
            let cut = *cut;
            map.retain(|_, b| b.at > cut);
        }
    }

    /// Keys held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Both limiters and the counters.
#[derive(Debug)]
pub(crate) struct Limits {
    ip: Buckets<IpAddr>,
    token: Buckets<String>,
    pub(crate) stats: Arc<ApiStats>,
}

impl Limits {
    pub(crate) fn new(cfg: &ApiConfig, stats: Arc<ApiStats>) -> Limits {
        Limits {
            ip: Buckets::new(
                cfg.rate_limit_per_ip,
                cfg.rate_limit_per_ip_burst,
                MAX_BUCKETS,
            ),
            // One bucket per configured token; the cap only guards against surprises.
            token: Buckets::new(
                cfg.rate_limit_per_token,
                cfg.rate_limit_per_token_burst,
                cfg.tokens.len().max(1) * 2,
            ),
            stats,
        }
    }

    /// The per-token check (called by authentication once the token is known).
    pub(crate) fn check_token(&self, name: &str) -> Result<(), Problem> {
        self.token
            .take(&name.to_owned(), Instant::now())
            .map_err(|wait| {
                self.stats.rate_limited_token.fetch_add(1, Relaxed);
                Problem::too_many_requests(
                    format!(
                        "token {name:?} is over its rate limit ([api] rate_limit_per_token); retry in {} s",
                        retry_s(wait)
                    ),
                    retry_s(wait),
                )
            })
    }
}

/// Whole seconds to wait (at least 1).
fn retry_s(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// The bucket key of a client address: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Middleware: the per-address limit (requests without a peer address, e.g. in-process tests,
/// and the probes are not limited).
pub(crate) async fn per_ip(State(l): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let exempt = matches!(req.uri().path(), "/healthz" | "/readyz");
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_key(c.0.ip()));
    if let (false, Some(ip)) = (exempt, peer) {
        if let Err(wait) = l.ip.take(&ip, Instant::now()) {
            l.stats.rate_limited_ip.fetch_add(1, Relaxed);
            tracing::debug!(client = %ip, "api: rate limited (per address)");
            return Problem::too_many_requests(
                format!(
                    "too many requests from {ip} ([api] rate_limit_per_ip); retry in {} s",
                    retry_s(wait)
                ),
                retry_s(wait),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let b: Buckets<u8> = Buckets::new(2.0, 3, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.take(&1, t0).expect("burst");
        }
        let wait = b.take(&1, t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        b.take(&2, t0).expect("other keys have their own bucket");
        b.take(&1, t0 + Duration::from_millis(500))
            .expect("refilled one");
        assert!(b.take(&1, t0 + Duration::from_millis(500)).is_err());
        for _ in 0..3 {
            b.take(&1, t0 + Duration::from_secs(60))
                .expect("never more than the burst");
        }
        assert!(b.take(&1, t0 + Duration::from_secs(60)).is_err());
        let off: Buckets<u8> = Buckets::new(0.0, 0, 1);
        for _ in 0..1000 {
            off.take(&1, t0).expect("0 = no limit");
        }
        assert_eq!(off.len(), 0);
    }

    #[test]
    fn memory_is_bounded_and_idle_buckets_go_first() {
        let b: Buckets<u32> = Buckets::new(1.0, 10, 100);
        let t0 = Instant::now();
        for k in 0..100 {
            b.take(&k, t0).expect("first");
        }
        assert_eq!(b.len(), 100);
        // 10 s later every bucket has refilled: all are idle and dropped for the new key.
        b.take(&1000, t0 + Duration::from_secs(10)).expect("new");
        assert_eq!(b.len(), 1);
        // A flood of busy keys: the least recently used half goes, the map never exceeds the cap.
        for k in 0..1000u32 {
            let now = t0 + Duration::from_secs(20) + Duration::from_millis(u64::from(k));
            for _ in 0..10 {
                let _ = b.take(&k, now);
            }
            assert!(b.len() <= 100);
        }
        let last = t0 + Duration::from_secs(20) + Duration::from_millis(999);
        assert!(
            b.take(&999, last).is_err(),
            "the newest key is kept (still empty)"
        );
    }

    #[test]
    fn client_keys() {
        let k = |s: &str| client_key(s.parse().expect("ip")).to_string();
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:ffff::1"), "2001:db8:1:2::");
    }
}
