//! Bearer-token authentication and role checks.
//!
//! The configuration holds only the SHA-256 of each token. A request's token is hashed and
//! compared with every configured hash in constant time ([`subtle`]), without stopping at the
//! first match, so neither the comparison nor the loop tells an attacker how close a guess was
//! or which entry it matched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{ApiConfig, Role};
use super::limit::Limits;
use super::problem::Problem;

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
}

/// The configured tokens, decoded once.
#[derive(Debug, Default)]
pub(crate) struct TokenTable {
    entries: Vec<([u8; 32], Principal)>,
}

impl TokenTable {
    /// Decode the configured hashes; malformed ones are left out (and logged).
    pub(crate) fn new(cfg: &ApiConfig) -> TokenTable {
        let mut entries = Vec::new();
        for t in &cfg.tokens {
            match decode_hash(&t.sha256) {
                Some(h) => entries.push((
                    h,
                    Principal {
                        name: t.name.clone(),
                        role: t.role,
                    },
                )),
                None => {
                    tracing::warn!(token = %t.name, "api token ignored: sha256 is not 64 hex digits")
                }
            }
        }
        TokenTable { entries }
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
}

/// The state of one route's authentication layer: the tokens and the role the route needs.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) tokens: Arc<TokenTable>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) needs: Role,
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
    let principal = match bearer(&req) {
        None => {
            return Problem::unauthorized(
                "missing bearer token: send `Authorization: Bearer <token>`",
                false,
            )
            .into_response()
        }
        Some(Err(())) => {
            return Problem::unauthorized(
                "malformed Authorization header: expected `Bearer <token>`",
                true,
            )
            .into_response();
        }
        Some(Ok(token)) => match g.tokens.lookup(token) {
            Some(p) => p.clone(),
            None => return Problem::unauthorized("unknown bearer token", true).into_response(),
        },
    };
    if let Err(p) = g.limits.check_token(&principal.name) {
        return p.into_response();
    }
    if !principal.role.grants(g.needs) {
        let also = if g.needs == Role::Admin {
            String::new()
        } else {
            " (or admin)".to_owned()
        };
        return Problem::forbidden(format!(
            "this route needs the {} role{also}; token {:?} has the {} role",
            g.needs, principal.name, principal.role
        ))
        .into_response();
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
        let tok = |name: &str, role, sha256: String| TokenConfig {
            name: name.into(),
            role,
            sha256,
        };
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
