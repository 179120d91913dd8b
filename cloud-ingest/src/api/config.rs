//! The `[api]` configuration: where the HTTP API listens and which bearer tokens it accepts.
//!
//! ```toml
//! [api]
//! listen = "127.0.0.1:8080"
//!
//! [[api.tokens]]
//! name = "grafana"
//! role = "viewer"
//! # `cloud-ingest` never stores a token itself, only the hex SHA-256 of it:
//! # printf %s "$TOKEN" | sha256sum
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```
//!
//! Robustness keys (defaults shown; `config/cloud-ingest.example.toml` documents them too):
//!
//! ```toml
//! [api]
//! header_timeout_ms = 10000     # a request head must arrive within this (else 408, closed)
//! idle_timeout_ms = 60000       # a keep-alive connection without a request is closed after this
//! max_connections = 1024        # open connections; more: the oldest idle one is closed
//! cors_origins = []             # browser origins allowed cross-origin (none: CORS off)
//! rate_limit_per_ip = 50.0      # requests per second per client address (0 = no limit)
//! rate_limit_per_ip_burst = 200
//! rate_limit_per_token = 25.0   # requests per second per bearer token (0 = no limit)
//! rate_limit_per_token_burst = 200
//! ```

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

/// `[api]`: the HTTP API for cloud operations.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on, `host:port`. Default `127.0.0.1:8080` (local only: put a TLS
    /// reverse proxy in front to expose it).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer tokens accepted under `/api/v1`, each with a role. None = every authenticated
    /// route answers 401 (the open probes `/healthz`, `/readyz`, `/metrics` still work).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// A file of more tokens (`[[tokens]]` tables, the same keys as `[[api.tokens]]`), read at
    /// start and again on SIGHUP or `POST /api/v1/admin/tokens/reload`: tokens are added,
    /// rotated and revoked without a restart. A file that does not load keeps the tokens in
    /// use (the error is logged with its line and column). None: only `[[api.tokens]]`.
    #[serde(default)]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Milliseconds a client has to send a whole request head once the server waits for one
    /// (slow-header clients get a 408 problem and are closed). Default 10,000.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Milliseconds a keep-alive connection may wait for its next request (and a request body
    /// may stall) before it is closed. Default 60,000.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Most open connections. At the limit a new connection closes the oldest one that is
    /// waiting for a request head (idle or slow), so `/healthz` always gets through; when every
    /// connection is busy with a request the new one waits up to 1 s, then is closed. Default 1,024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Browser origins (`https://ops.example.com`) allowed to call the API cross-origin: their
    /// preflights are answered and their responses carry `Access-Control-Allow-Origin`. Empty
    /// (default): CORS off, every preflight is refused (403).
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Requests per second per client address (IPv6: per /64), token bucket; 0 = no limit.
    /// `/healthz` and `/readyz` are exempt. Default 50.
    #[serde(default = "default_rate_ip")]
    pub rate_limit_per_ip: f64,
    /// Bucket size per client address (requests that may come at once). Default 200.
    #[serde(default = "default_burst")]
    pub rate_limit_per_ip_burst: u32,
    /// Requests per second per bearer token (after authentication); 0 = no limit. Default 25.
    #[serde(default = "default_rate_token")]
    pub rate_limit_per_token: f64,
    /// Bucket size per bearer token. Default 200.
    #[serde(default = "default_burst")]
    pub rate_limit_per_token_burst: u32,
    /// `[api.jwt]`: also accept JWTs signed by this issuer (keys from a JWKS file; `jwt.rs`).
    /// None (default): bearer tokens are the static ones only.
    #[serde(default)]
    pub jwt: Option<super::jwt::JwtConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            tokens: Vec::new(),
            tokens_file: None,
            header_timeout_ms: default_header_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
            cors_origins: Vec::new(),
            rate_limit_per_ip: default_rate_ip(),
            rate_limit_per_ip_burst: default_burst(),
            rate_limit_per_token: default_rate_token(),
            rate_limit_per_token_burst: default_burst(),
            jwt: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    1024
}
fn default_rate_ip() -> f64 {
    50.0
}
fn default_rate_token() -> f64 {
    25.0
}
fn default_burst() -> u32 {
    200
}

/// Shortest and longest `header_timeout_ms` / `idle_timeout_ms`.
const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// Largest `max_connections`.
const MAX_CONNECTIONS: usize = 1_000_000;
/// Largest burst.
const MAX_BURST: u32 = 1_000_000;

/// `[[api.tokens]]`: one accepted bearer token.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (shown in logs and error details, never the token).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token (64 hex digits, either case), as printed by
    /// [`hash_token`](super::hash_token) or `printf %s "$TOKEN" | sha256sum`.
    pub sha256: String,
    /// The sites it may see (`sites = ["dar-terminal"]`); absent: every site. A transport
    /// company is scoped by its trucks' site, a station by its gauge's site (see `scope.rs`).
    #[serde(default)]
    pub sites: Option<Vec<String>>,
    /// When it stops being accepted (RFC 3339, e.g. `"2027-01-31T00:00:00Z"`); absent: never.
    #[serde(default)]
    pub expires: Option<String>,
}

impl TokenConfig {
    /// A token of every site that never expires.
    pub fn new(name: impl Into<String>, role: Role, sha256: impl Into<String>) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            role,
            sha256: sha256.into(),
            sites: None,
            expires: None,
        }
    }

    /// `expires` as epoch ms (None: never), or what is wrong with it.
    pub fn expires_ms(&self) -> Result<Option<i64>, String> {
        let Some(e) = &self.expires else {
            return Ok(None);
        };
        let t = time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
            .map_err(|err| {
                format!(
                    "api.tokens {:?}: expires {e:?} is not an RFC 3339 time ({err})",
                    self.name
                )
            })?;
        Ok(Some(
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
        ))
    }
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not a secret, but there is no reason to spread it through logs either.
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("sites", &self.sites)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// What a token may do. The matrix (a role grants the roles listed after it):
///
/// | role       | grants                                  |
/// |------------|-----------------------------------------|
/// | `viewer`   | viewer                                  |
/// | `operator` | operator, viewer                        |
/// | `auditor`  | auditor, viewer                         |
/// | `admin`    | admin, operator, auditor, viewer        |
///
/// Today every `/api/v1` data route needs `viewer`, and `/api/v1/dead-letters` needs `auditor`
/// (so an auditor or an admin). `operator` is reserved for the actions to come (acknowledging
/// alarms, re-requesting data); `admin` for managing the service itself.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read data: agents, tags, latest values, series, gaps.
    Viewer,
    /// Viewer, plus (to come) operational actions.
    Operator,
    /// Viewer, plus the read-only audit routes (dead letters).
    Auditor,
    /// Everything.
    Admin,
}

impl Role {
    /// Does a token with this role satisfy a route that needs `needed`?
    pub fn grants(self, needed: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Operator => matches!(needed, Role::Operator | Role::Viewer),
            Role::Auditor => matches!(needed, Role::Auditor | Role::Viewer),
            Role::Viewer => needed == Role::Viewer,
        }
    }

    /// The configuration spelling (`viewer`, `operator`, `auditor`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ApiConfig {
    /// Check what serde cannot: `listen` looks like `host:port`, every `sha256` is 64 hex digits,
    /// token names and hashes are unique, timeouts, limits and origins are sane. Call at
    /// startup; a token whose hash is malformed is otherwise never accepted (and logged once
    /// when the router is built).
    pub fn validate(&self) -> Result<(), String> {
        match self.listen.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(format!("api.listen {:?} must be host:port", self.listen)),
        }
        self.validate_tokens()?;
        self.validate_limits()?;
        if let Some(j) = &self.jwt {
            j.validate()?;
        }
        let mut seen = HashSet::new();
        for o in &self.cors_origins {
            check_origin(o)?;
            if !seen.insert(o.as_str()) {
                return Err(format!("api.cors_origins: {o:?} is listed twice"));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), String> {
        for (key, v) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !TIMEOUT_MS.contains(&v) {
                return Err(format!(
                    "api.{key} = {v}: must be {} ..= {} (milliseconds)",
                    TIMEOUT_MS.start(),
                    TIMEOUT_MS.end()
                ));
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(format!(
                "api.max_connections = {}: must be 1 ..= {MAX_CONNECTIONS}",
                self.max_connections
            ));
        }
        for (key, rate, burst) in [
            (
                "per_ip",
                self.rate_limit_per_ip,
                self.rate_limit_per_ip_burst,
            ),
            (
                "per_token",
                self.rate_limit_per_token,
                self.rate_limit_per_token_burst,
            ),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return Err(format!(
                    "api.rate_limit_{key} = {rate}: requests per second, 0 (no limit) or more"
                ));
            }
            if rate > 0.0 && !(1..=MAX_BURST).contains(&burst) {
                return Err(format!(
                    "api.rate_limit_{key}_burst = {burst}: must be 1 ..= {MAX_BURST}"
                ));
            }
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), String> {
        validate_tokens(&self.tokens)
    }
}

/// The checks of a token list (`[[api.tokens]]`, or the tokens file joined to it): names and
/// hashes unique and well formed, `sites` not empty, `expires` RFC 3339.
pub(crate) fn validate_tokens(tokens: &[TokenConfig]) -> Result<(), String> {
    {
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for t in tokens {
            if t.name.trim().is_empty() {
                return Err("api.tokens: a token has an empty name".into());
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("api.tokens: the name {:?} is used twice", t.name));
            }
            if super::auth::decode_hash(&t.sha256).is_none() {
                return Err(format!(
                    "api.tokens {:?}: sha256 must be 64 hex digits (the SHA-256 of the token)",
                    t.name
                ));
            }
            if !hashes.insert(t.sha256.to_ascii_lowercase()) {
                return Err(format!(
                    "api.tokens {:?}: the same token is configured twice",
                    t.name
                ));
            }
            if let Some(sites) = &t.sites {
                if sites.is_empty() || sites.iter().any(|s| s.trim().is_empty()) {
                    return Err(format!(
                        "api.tokens {:?}: sites must name at least one site, none empty \
                         (leave the key out for every site)",
                        t.name
                    ));
                }
            }
            t.expires_ms()?;
        }
        Ok(())
    }
}

/// A CORS origin as browsers send it: `http(s)://host[:port]`, no path, no wildcard.
fn check_origin(o: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "api.cors_origins: {o:?} {why} (an origin is scheme://host[:port], e.g. \"https://ops.example.com\")"
        ))
    };
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return bad("must start with https:// or http://");
    };
    // `[v6]:port`, `host:port` or a bare host.
    let split = match rest.find(']') {
        Some(end) if rest.starts_with('[') => {
            let (h, tail) = rest.split_at(end + 1);
            (tail.is_empty() || tail.starts_with(':')).then(|| (h, tail.strip_prefix(':')))
        }
        _ => Some(match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }),
    };
    let Some((host, port)) = split else {
        return bad("has an invalid host");
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
    {
        return bad("has no valid host (no path, wildcard or trailing slash)");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("must be lower case (browsers send origins lower case)");
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return bad("has an invalid port");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        api: ApiConfig,
    }

    #[test]
    fn parses_with_defaults_and_rejects_unknown_keys() {
        let f: File = toml::from_str("[api]\n").expect("empty table");
        assert_eq!(f.api, ApiConfig::default());
        assert_eq!(f.api.listen, "127.0.0.1:8080");
        let text = format!(
            "[api]\nlisten = \"0.0.0.0:9000\"\n[[api.tokens]]\nname = \"ops\"\nrole = \"auditor\"\nsha256 = \"{}\"\n",
            super::super::hash_token("secret")
        );
        let f: File = toml::from_str(&text).expect("tokens");
        assert_eq!(f.api.tokens[0].role, Role::Auditor);
        f.api.validate().expect("valid");
        assert!(toml::from_str::<File>("[api]\nlisten2 = \"x\"\n").is_err());
        assert!(toml::from_str::<File>(
            "[api]\n[[api.tokens]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"00\"\n"
        )
        .is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let tok = |name: &str, sha: &str| TokenConfig::new(name, Role::Viewer, sha);
        let h = super::super::hash_token("t");
        let mut c = ApiConfig {
            listen: "localhost".into(),
            ..ApiConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("listen"));
        c.listen = "localhost:8080".into();
        c.tokens = vec![tok("a", "abc")];
        assert!(c.validate().unwrap_err().contains("64 hex"));
        c.tokens = vec![tok("a", &h), tok("a", &super::super::hash_token("u"))];
        assert!(c.validate().unwrap_err().contains("twice"));
        c.tokens = vec![tok("a", &h), tok("b", &h.to_uppercase())];
        assert!(c.validate().unwrap_err().contains("same token"));
        c.tokens = vec![TokenConfig {
            sites: Some(vec![]),
            ..tok("a", &h)
        }];
        assert!(c.validate().unwrap_err().contains("sites"));
        c.tokens = vec![TokenConfig {
            expires: Some("tomorrow".into()),
            ..tok("a", &h)
        }];
        assert!(c.validate().unwrap_err().contains("RFC 3339"));
        c.tokens = vec![TokenConfig {
            sites: Some(vec!["s1".into()]),
            expires: Some("2030-01-01T00:00:00Z".into()),
            ..tok("a", &h)
        }];
        assert_eq!(c.tokens[0].expires_ms(), Ok(Some(1_893_456_000_000)));
        c.tokens = vec![tok("a", &h)];
        c.validate().expect("valid");
        assert!(
            !format!("{:?}", c.tokens[0]).contains(&h),
            "Debug leaves the hash out"
        );
    }

    #[test]
    fn robustness_keys_parse_and_are_validated() {
        let f: File = toml::from_str(
            "[api]\nheader_timeout_ms = 500\nidle_timeout_ms = 1000\nmax_connections = 8\n\
             cors_origins = [\"https://ops.example.com\", \"http://[::1]:8080\"]\n\
             rate_limit_per_ip = 1\nrate_limit_per_ip_burst = 3\nrate_limit_per_token = 0.5\n",
        )
        .expect("parses (an integer rate is a number)");
        assert_eq!(f.api.rate_limit_per_ip, 1.0);
        assert_eq!(f.api.rate_limit_per_token, 0.5);
        assert_eq!(f.api.rate_limit_per_token_burst, 200);
        f.api.validate().expect("valid");
        let bad = |edit: &dyn Fn(&mut ApiConfig), needle: &str| {
            let mut c = ApiConfig::default();
            edit(&mut c);
            let e = c.validate().expect_err(needle);
            assert!(e.contains(needle), "{e}");
        };
        bad(&|c| c.header_timeout_ms = 0, "header_timeout_ms");
        bad(&|c| c.idle_timeout_ms = 10_000_000, "idle_timeout_ms");
        bad(&|c| c.max_connections = 0, "max_connections");
        bad(&|c| c.rate_limit_per_ip = -1.0, "rate_limit_per_ip");
        bad(
            &|c| c.rate_limit_per_token = f64::NAN,
            "rate_limit_per_token",
        );
        bad(
            &|c| c.rate_limit_per_ip_burst = 0,
            "rate_limit_per_ip_burst",
        );
        for o in [
            "*",
            "ops.example.com",
            "https://ops.example.com/",
            "https://ops.example.com/console",
            "https://OPS.example.com",
            "https://ops.example.com:0",
            "https://",
        ] {
            bad(&|c| c.cors_origins = vec![o.into()], "cors_origins");
        }
        bad(
            &|c| c.cors_origins = vec!["https://a.example".into(), "https://a.example".into()],
            "twice",
        );
        let off = ApiConfig {
            rate_limit_per_ip: 0.0,
            rate_limit_per_ip_burst: 0,
            ..ApiConfig::default()
        };
        off.validate().expect("no limit needs no burst");
    }

    #[test]
    fn role_matrix() {
        use Role::*;
        let all = [Viewer, Operator, Auditor, Admin];
        let grants = |r: Role| {
            all.iter()
                .copied()
                .filter(|n| r.grants(*n))
                .collect::<Vec<_>>()
        };
        assert_eq!(grants(Viewer), vec![Viewer]);
        assert_eq!(grants(Operator), vec![Viewer, Operator]);
        assert_eq!(grants(Auditor), vec![Viewer, Auditor]);
        assert_eq!(grants(Admin), all.to_vec());
    }
}
