//! Bearer-token authentication and role checks.
//!
//! The configuration holds only the SHA-256 of each token. A request's token is hashed and
//! compared with every configured hash in constant time ([`subtle`]), without stopping at the
//! first match, so neither the comparison nor the loop tells an attacker how close a guess was
//! or which entry it matched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{ApiConfig, Role, TokenConfig};
use super::jwt::{self, JwtConfig, JwtError, JwtKeys};
use super::limit::Limits;
use super::problem::Problem;
use super::scope::SiteScope;

/// Hex (lowercase) SHA-256 of a token: the value to put in `[[api.tokens]] sha256`.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A configured hash as bytes, or `None` if it is not 64 hex digits.
pub(crate) fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash.trim(), &mut out).ok()?;
    Some(out)
}

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The sites it may see.
    pub scope: SiteScope,
    /// When it stops being accepted, epoch ms (None: never).
    pub expires_ms: Option<i64>,
}

/// The accepted tokens at one moment, decoded once.
#[derive(Debug, Default)]
pub(crate) struct TokenTable {
    entries: Vec<([u8; 32], Principal)>,
}

impl TokenTable {
    /// Decode the configured hashes; malformed ones (or a malformed `expires`) are left out
    /// (and logged).
    pub(crate) fn from_tokens(tokens: &[TokenConfig]) -> TokenTable {
        let mut entries = Vec::new();
        for t in tokens {
            match (decode_hash(&t.sha256), t.expires_ms()) {
                (Some(h), Ok(expires_ms)) => entries.push((
                    h,
                    Principal {
                        name: t.name.clone(),
                        role: t.role,
                        scope: SiteScope::from_config(t.sites.as_deref()),
                        expires_ms,
                    },
                )),
                (None, _) => {
                    tracing::warn!(token = %t.name, "api token ignored: sha256 is not 64 hex digits")
                }
                (_, Err(e)) => tracing::warn!(token = %t.name, "api token ignored: {e}"),
            }
        }
        TokenTable { entries }
    }

    /// The tokens of `[[api.tokens]]` alone.
    #[cfg(test)]
    pub(crate) fn new(cfg: &ApiConfig) -> TokenTable {
        TokenTable::from_tokens(&cfg.tokens)
    }

    /// The principal holding this token, if any.
    pub(crate) fn lookup(&self, token: &str) -> Option<&Principal> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (want, p) in &self.entries {
            // Compare with every entry (no early exit): the time taken does not depend on which
            // one matched. Hashes are unique (`ApiConfig::validate`), so at most one matches.
            if bool::from(h.ct_eq(want)) {
                found = Some(p);
            }
        }
        found
    }

    /// How many tokens.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The `[[tokens]]` of a tokens file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenConfig>,
}

/// Read a tokens file: its tokens, or an error naming the file (and, for a syntax or schema
/// error, the line and column).
pub(crate) fn read_tokens_file(path: &Path) -> Result<Vec<TokenConfig>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
    let f: TokensFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|sp| {
                let before = &text[..sp.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{col}")
            })
            .unwrap_or_default();
        let msg = flowsquare_service::secret::redact_value_error(&text, e.span(), e.message());
        format!("tokens file {}{at}: {msg}", path.display())
    })?;
    Ok(f.tokens)
}

/// The token table in use: `[[api.tokens]]` and the tokens file, swapped whole when the file is
/// reloaded (SIGHUP, `POST /api/v1/admin/tokens/reload`), so tokens are added, rotated and
/// revoked without a restart. A file that does not load leaves the table as it was.
pub struct Tokens {
    config: Vec<TokenConfig>,
    file: Option<PathBuf>,
    table: RwLock<Arc<TokenTable>>,
    /// `[api.jwt]` and the keys of its JWKS file (reloaded with the tokens file).
    jwt: Option<(JwtConfig, RwLock<Arc<JwtKeys>>)>,
}

/// Swap what a lock holds (a poisoned lock is taken over: the value is replaced whole).
fn swap<T>(lock: &RwLock<Arc<T>>, value: Arc<T>) {
    match lock.write() {
        Ok(mut g) => *g = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

/// What a lock holds now.
fn read<T>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl Tokens {
    /// The tokens of `cfg`, with its tokens file when it loads (else logged, and only
    /// `[[api.tokens]]` until a reload succeeds).
    pub fn load(cfg: &ApiConfig) -> Tokens {
        let t = Tokens {
            config: cfg.tokens.clone(),
            file: cfg.tokens_file.clone(),
            table: RwLock::new(Arc::new(TokenTable::from_tokens(&cfg.tokens))),
            jwt: cfg
                .jwt
                .clone()
                .map(|j| (j, RwLock::new(Arc::new(JwtKeys::default())))),
        };
        if t.file.is_some() {
            if let Err(e) = t.reload_file() {
                tracing::error!(
                    "api tokens: {e}; only the [[api.tokens]] of the configuration are accepted"
                );
            }
        }
        if let Err(e) = t.reload_jwks() {
            tracing::error!("api jwt: {e}; no JWT is accepted until a reload succeeds");
        }
        t
    }

    /// Read the JWKS file of `[api.jwt]` again and swap the keys; how many, or why the keys in
    /// use were kept. Without `[api.jwt]`: `Ok(0)`.
    fn reload_jwks(&self) -> Result<usize, String> {
        let Some((cfg, keys)) = &self.jwt else {
            return Ok(0);
        };
        let new = JwtKeys::read(&cfg.jwks_file).map_err(|e| e.to_string())?;
        let n = new.len();
        swap(keys, Arc::new(new));
        Ok(n)
    }

    /// Validate a JWT bearer: `None` when `[api.jwt]` is not configured (the token then goes to
    /// the static table).
    pub(crate) fn validate_jwt(&self, token: &str) -> Option<Result<Principal, JwtError>> {
        let (cfg, keys) = self.jwt.as_ref()?;
        Some(read(keys).validate(cfg, token))
    }

    /// Read the tokens file and the JWKS file again and swap what loads; the number of tokens
    /// now accepted, or why the tokens or the keys were kept (logged by the caller). The two
    /// are independent: a bad JWKS file does not stop a good tokens file, and the other way.
    pub fn reload(&self) -> Result<usize, String> {
        let tokens = self.reload_file();
        let jwks = self.reload_jwks();
        match (tokens, jwks) {
            (Ok(n), Ok(_)) => Ok(n),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }

    /// How many JWKS keys are in use (0 without `[api.jwt]`).
    pub fn jwt_keys(&self) -> usize {
        self.jwt.as_ref().map_or(0, |(_, k)| read(k).len())
    }

    /// The tokens file part of [`Tokens::reload`].
    fn reload_file(&self) -> Result<usize, String> {
        let mut all = self.config.clone();
        if let Some(path) = &self.file {
            all.extend(read_tokens_file(path)?);
        }
        super::config::validate_tokens(&all).map_err(|e| match &self.file {
            Some(p) => format!("tokens file {}: {e}", p.display()),
            None => e,
        })?;
        let table = Arc::new(TokenTable::from_tokens(&all));
        let n = table.len();
        swap(&self.table, table);
        Ok(n)
    }

    /// Reload and log the outcome (the SIGHUP handler and the admin route).
    pub fn reload_logged(&self, why: &str) -> Result<usize, String> {
        let r = self.reload();
        match &r {
            Ok(n) => tracing::info!(
                tokens = n,
                jwt_keys = self.jwt_keys(),
                trigger = why,
                "api tokens reloaded"
            ),
            Err(e) => tracing::error!(
                trigger = why,
                "api tokens not reloaded, the previous ones stay: {e}"
            ),
        }
        r
    }

    /// The table now.
    pub(crate) fn current(&self) -> Arc<TokenTable> {
        read(&self.table)
    }
}

/// The state of one route's authentication layer: the tokens and the role the route needs.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) needs: Role,
}

/// Now, wall clock, epoch ms (token expiry is judged on the wall clock, never a simulated one).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The bearer token of a request: `Some(Ok(token))`, `Some(Err(()))` for an `Authorization`
/// header that is not `Bearer <token>`, `None` without the header.
fn bearer(req: &Request) -> Option<Result<&str, ()>> {
    let v = req.headers().get(AUTHORIZATION)?;
    let parsed = v.to_str().ok().and_then(|s| {
        let (scheme, token) = s.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    });
    Some(parsed.ok_or(()))
}

/// Middleware: 401 without a known bearer token, 429 when the token is over its rate limit,
/// 403 when its role does not grant the route's; otherwise the request goes on with its
/// [`Principal`] in the extensions.
pub(crate) async fn require(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let refuse = |why: &str, token: Option<&str>, p: Problem| {
        // Never the token itself: its configured name at most (the request's span names the
        // path and the request id).
        tracing::warn!(token = %token.unwrap_or("-"), "api request refused: {why}");
        p.into_response()
    };
    let principal = match bearer(&req) {
        None => {
            return refuse(
                "no bearer token",
                None,
                Problem::unauthorized(
                    "missing bearer token: send `Authorization: Bearer <token>`",
                    false,
                ),
            )
        }
        Some(Err(())) => {
            return refuse(
                "malformed Authorization header",
                None,
                Problem::unauthorized(
                    "malformed Authorization header: expected `Bearer <token>`",
                    true,
                ),
            );
        }
        Some(Ok(token)) => match jwt::looks_like_jwt(token)
            .then(|| g.tokens.validate_jwt(token))
            .flatten()
        {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                let why = e.to_string();
                return refuse(&why, None, Problem::unauthorized(why.clone(), true));
            }
            None => match g.tokens.current().lookup(token) {
                Some(p) => p.clone(),
                None => {
                    return refuse(
                        "unknown bearer token",
                        None,
                        Problem::unauthorized("unknown bearer token", true),
                    )
                }
            },
        },
    };
    if principal.expires_ms.is_some_and(|e| e <= wall_ms()) {
        return refuse(
            "token expired",
            Some(&principal.name),
            Problem::unauthorized("token expired", true),
        );
    }
    if let Err(p) = g.limits.check_token(&principal.name) {
        return p.into_response();
    }
    if !principal.role.grants(g.needs) {
        let also = if g.needs == Role::Admin {
            String::new()
        } else {
            " (or admin)".to_owned()
        };
        return refuse(
            "role too low",
            Some(&principal.name),
            Problem::forbidden(format!(
                "this route needs the {} role{also}; token {:?} has the {} role",
                g.needs, principal.name, principal.role
            )),
        );
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::config::TokenConfig;

    #[test]
    fn hash_is_hex_sha256() {
        // printf %s test | sha256sum
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(decode_hash(&hash_token("x").to_uppercase()).is_some());
        assert!(decode_hash("abc").is_none());
        assert!(decode_hash(&"g".repeat(64)).is_none());
    }

    #[test]
    fn lookup_finds_the_holder() {
        let tok = |name: &str, role, sha256: String| TokenConfig::new(name, role, sha256);
        let cfg = ApiConfig {
            tokens: vec![
                tok("v", Role::Viewer, hash_token("tv")),
                tok("bad", Role::Admin, "nothex".into()),
                tok("a", Role::Admin, hash_token("ta").to_uppercase()),
            ],
            ..ApiConfig::default()
        };
        let t = TokenTable::new(&cfg);
        assert_eq!(t.lookup("tv").map(|p| p.role), Some(Role::Viewer));
        assert_eq!(t.lookup("ta").map(|p| p.name.as_str()), Some("a"));
        assert!(t.lookup("nothex").is_none());
        assert!(t.lookup("").is_none());
    }
}
