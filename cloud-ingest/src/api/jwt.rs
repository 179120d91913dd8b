//! Optional OIDC/JWT bearer tokens (`[api.jwt]`): tokens signed by a configured issuer, checked
//! against the public keys of a JWKS file, mapped to the same [`Principal`] as a static token.
//!
//! - Algorithms: RS256, ES256 (P-256) and EdDSA (Ed25519), each key with the one its JWKS entry
//!   implies (`alg`, else its key type). `none`, HS* (a shared secret, or the old trick of an
//!   HMAC keyed with the public key) and every other algorithm are refused, as is a key type
//!   the file holds that is not one of these (the file does not load).
//! - The token's header must name a `kid` of the file, with the algorithm of that key.
//! - Claims: `iss` = `issuer`, `aud` contains `audience`, `exp` required and not past, `nbf`
//!   (when present) not in the future, each with `leeway_s` of slack; `sub` required.
//! - Mapping: name = `sub`; role = the string claim `role_claim` (`viewer`, `operator`,
//!   `auditor`, `admin`; anything else is refused); sites = the string array `sites_claim`, or
//!   `"*"` alone for every site. An absent (or empty) sites claim is an empty scope: the token
//!   sees no site's rows and gets 403 on the all-sites routes; it never means every site, so a
//!   forgotten claim cannot widen access. Expiry = `exp` (+ leeway).
//!
//! The JWKS file is read at start and again with the tokens file (SIGHUP, `POST
//! /api/v1/admin/tokens/reload`); a file that does not load keeps the keys in use (logged with
//! the file's name).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::auth::Principal;
use super::config::Role;
use super::scope::SiteScope;

/// `[api.jwt]`: accept JWTs of one issuer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` a token must carry (the OIDC issuer URL).
    pub issuer: String,
    /// A value the token's `aud` must contain (the client id of this API).
    pub audience: String,
    /// The issuer's public keys as a JWKS document (`{"keys": [...]}`, each with a `kid`).
    pub jwks_file: PathBuf,
    /// The claim holding the role name. Default `role`.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// The claim holding the sites (array of strings, `["*"]` = every site). Default `sites`.
    #[serde(default = "default_sites_claim")]
    pub sites_claim: String,
    /// Seconds of clock slack for `exp` and `nbf`. Default 60.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
}

fn default_role_claim() -> String {
    "role".into()
}
fn default_sites_claim() -> String {
    "sites".into()
}
fn default_leeway_s() -> u64 {
    60
}

/// Largest `leeway_s` (ten minutes).
const MAX_LEEWAY_S: u64 = 600;

impl JwtConfig {
    /// What serde cannot check (the JWKS file is checked by [`JwtKeys::read`]).
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("issuer", &self.issuer),
            ("audience", &self.audience),
            ("role_claim", &self.role_claim),
            ("sites_claim", &self.sites_claim),
        ] {
            if v.trim().is_empty() {
                return Err(format!("api.jwt.{key} must not be empty"));
            }
        }
        if self.role_claim == self.sites_claim {
            return Err("api.jwt.role_claim and sites_claim must differ".into());
        }
        if self.leeway_s > MAX_LEEWAY_S {
            return Err(format!(
                "api.jwt.leeway_s = {}: at most {MAX_LEEWAY_S} seconds",
                self.leeway_s
            ));
        }
        Ok(())
    }
}

/// Why a JWKS file does not load.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not readable.
    #[error("JWKS file {0}: {1}")]
    Read(String, std::io::Error),
    /// Not a JWKS document.
    #[error("JWKS file {0}: not a JWKS document ({1})")]
    Parse(String, serde_json::Error),
    /// A key that cannot be used.
    #[error("JWKS file {file}: key {kid:?}: {why}")]
    Key {
        /// The file.
        file: String,
        /// The key's `kid` (or its index when it has none).
        kid: String,
        /// What is wrong.
        why: String,
    },
    /// No key at all.
    #[error("JWKS file {0}: no keys")]
    Empty(String),
}

/// Why a JWT is refused (the detail of the 401; never the token itself).
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The header does not decode, or names an algorithm that is not accepted.
    #[error("JWT header: {0}")]
    Header(String),
    /// The header names no `kid`, or one the JWKS file does not have.
    #[error("JWT key id {0:?} is not one of the issuer's keys")]
    UnknownKid(String),
    /// The header's algorithm is not the key's.
    #[error("JWT algorithm {got:?} does not match key {kid:?} ({want:?})")]
    AlgMismatch {
        /// The key.
        kid: String,
        /// The header's.
        got: Algorithm,
        /// The key's.
        want: Algorithm,
    },
    /// Signature, expiry, issuer, audience or a required claim.
    #[error("JWT rejected: {0}")]
    Invalid(String),
    /// The claims do not map to a principal.
    #[error("JWT claims: {0}")]
    Claims(String),
}

/// One usable public key.
struct Key {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of a JWKS file at one moment.
#[derive(Default)]
pub(crate) struct JwtKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.alg)))
            .finish()
    }
}

/// The algorithm a JWKS entry is for, or why it is not accepted.
fn key_alg(jwk: &Jwk) -> Result<Algorithm, String> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key: only public keys are accepted".into())
        }
        _ => return Err("key type or curve not accepted (RSA, EC P-256, OKP Ed25519)".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Ok(by_type),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Ok(by_type),
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => Ok(by_type),
        Some(a) => Err(format!(
            "alg {a:?} not accepted for this key (RS256, ES256, EdDSA)"
        )),
    }
}

impl JwtKeys {
    /// Read and check a JWKS file: every key public, of an accepted type, with a unique `kid`.
    pub(crate) fn read(path: &Path) -> Result<JwtKeys, JwksError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| JwksError::Read(file.clone(), e))?;
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|e| JwksError::Parse(file.clone(), e))?;
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let bad = |kid: &str, why: String| JwksError::Key {
                file: file.clone(),
                kid: kid.to_owned(),
                why,
            };
            let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
                return Err(bad(&format!("#{i}"), "no kid".into()));
            };
            if !seen.insert(kid.clone()) {
                return Err(bad(&kid, "kid used twice".into()));
            }
            let alg = key_alg(jwk).map_err(|w| bad(&kid, w))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(&kid, e.to_string()))?;
            keys.push(Key { kid, alg, key });
        }
        if keys.is_empty() {
            return Err(JwksError::Empty(file));
        }
        Ok(JwtKeys { keys })
    }

    /// How many keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The principal of a valid token, or why it is refused.
    pub(crate) fn validate(&self, cfg: &JwtConfig, token: &str) -> Result<Principal, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Header(e.to_string()))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(JwtError::Header(format!(
                "algorithm {:?} not accepted (RS256, ES256, EdDSA)",
                header.alg
            )));
        }
        let kid = header.kid.unwrap_or_default();
        let Some(key) = self.keys.iter().find(|k| k.kid == kid) else {
            return Err(JwtError::UnknownKid(kid));
        };
        if key.alg != header.alg {
            return Err(JwtError::AlgMismatch {
                kid,
                got: header.alg,
                want: key.alg,
            });
        }
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[&cfg.issuer]);
        v.set_audience(&[&cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = cfg.leeway_s;
        v.validate_exp = true;
        v.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.key, &v)
                .map_err(|e| JwtError::Invalid(describe(&e)))?;
        principal(cfg, &data.claims)
    }
}

/// A validation error in words (the detail of the 401).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired (exp)".into(),
        K::ImmatureSignature => "not valid yet (nbf)".into(),
        K::InvalidAudience => "wrong audience (aud)".into(),
        K::InvalidIssuer => "wrong issuer (iss)".into(),
        K::MissingRequiredClaim(c) => format!("claim {c:?} missing"),
        K::InvalidSignature => "bad signature".into(),
        _ => e.to_string(),
    }
}

/// The principal of validated claims.
fn principal(
    cfg: &JwtConfig,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Principal, JwtError> {
    let bad = |s: String| JwtError::Claims(s);
    let name = match claims.get("sub").and_then(|s| s.as_str()) {
        Some(s) if !s.trim().is_empty() => s.to_owned(),
        _ => return Err(bad("sub must be a non-empty string".into())),
    };
    let role = match claims.get(&cfg.role_claim).and_then(|r| r.as_str()) {
        Some(r) => {
            serde_json::from_value::<Role>(serde_json::Value::String(r.into())).map_err(|_| {
                bad(format!(
                    "{} {r:?} is not a role (viewer, operator, auditor, admin)",
                    cfg.role_claim
                ))
            })?
        }
        None => return Err(bad(format!("no string claim {:?}", cfg.role_claim))),
    };
    let scope = match claims.get(&cfg.sites_claim) {
        None | Some(serde_json::Value::Null) => SiteScope::Sites(BTreeSet::new()),
        Some(serde_json::Value::Array(a)) => {
            let mut sites = BTreeSet::new();
            for s in a {
                match s.as_str() {
                    Some(s) if !s.trim().is_empty() => {
                        sites.insert(s.to_owned());
                    }
                    _ => {
                        return Err(bad(format!(
                            "{} must be an array of non-empty strings",
                            cfg.sites_claim
                        )))
                    }
                }
            }
            if sites.len() == 1 && sites.contains("*") {
                SiteScope::All
            } else {
                SiteScope::Sites(sites)
            }
        }
        Some(_) => {
            return Err(bad(format!(
                "{} must be an array of strings",
                cfg.sites_claim
            )))
        }
    };
    // `exp` is required and checked by the validation; a number that does not fit is refused.
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| bad("exp must be an integer".into()))?;
    let leeway = i64::try_from(cfg.leeway_s).unwrap_or(0);
    Ok(Principal {
        name,
        role,
        scope,
        expires_ms: Some(exp.saturating_add(leeway).saturating_mul(1000)),
    })
}

/// Does a bearer token look like a JWT (three base64url parts, the first two non-empty)?
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `check-config`: the `[api.jwt]` section and its JWKS file; a summary line, or what is wrong.
pub fn check(cfg: &JwtConfig) -> Result<String, String> {
    cfg.validate()?;
    let keys = JwtKeys::read(&cfg.jwks_file).map_err(|e| e.to_string())?;
    let kinds: Vec<String> = keys
        .keys
        .iter()
        .map(|k| format!("{} {:?}", k.kid, k.alg))
        .collect();
    Ok(format!(
        "ok: [api.jwt] issuer {:?}, audience {:?}, {} key(s) ({}), role claim {:?}, sites claim {:?}",
        cfg.issuer,
        cfg.audience,
        keys.len(),
        kinds.join(", "),
        cfg.role_claim,
        cfg.sites_claim
    ))
}
