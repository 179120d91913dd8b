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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            tokens: Vec::new(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

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
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not a secret, but there is no reason to spread it through logs either.
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
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
    /// token names and hashes are unique. Call at startup; a token whose hash is malformed is
    /// otherwise never accepted (and logged once when the router is built).
    pub fn validate(&self) -> Result<(), String> {
        match self.listen.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(format!("api.listen {:?} must be host:port", self.listen)),
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for t in &self.tokens {
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
        }
        Ok(())
    }
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
        let tok = |name: &str, sha: &str| TokenConfig {
            name: name.into(),
            role: Role::Viewer,
            sha256: sha.into(),
        };
        let h = super::super::hash_token("t");
        let mut c = ApiConfig {
            listen: "localhost".into(),
            tokens: vec![],
        };
        assert!(c.validate().unwrap_err().contains("listen"));
        c.listen = "localhost:8080".into();
        c.tokens = vec![tok("a", "abc")];
        assert!(c.validate().unwrap_err().contains("64 hex"));
        c.tokens = vec![tok("a", &h), tok("a", &super::super::hash_token("u"))];
        assert!(c.validate().unwrap_err().contains("twice"));
        c.tokens = vec![tok("a", &h), tok("b", &h.to_uppercase())];
        assert!(c.validate().unwrap_err().contains("same token"));
        c.tokens = vec![tok("a", &h)];
        c.validate().expect("valid");
        assert!(
            !format!("{:?}", c.tokens[0]).contains(&h),
            "Debug leaves the hash out"
        );
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
