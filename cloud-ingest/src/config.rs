//! The cloud-ingest configuration file (TOML). `config/cloud-ingest.example.toml` documents every
//! key; a test parses it. Every table is optional: no file at all means the embedded defaults
//! (SQLite in the working directory, the local broker).

use flowsquare_service::secret::{self, Secret, SecretSource, SecretUrl};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// `[mqtt]`.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// `[database]`.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// `[ingest]`.
    #[serde(default)]
    pub ingest: IngestTuning,
    /// `[broker]`: the embedded MQTT broker (off by default).
    #[serde(default)]
    pub broker: crate::broker::BrokerConfig,
    /// `[api]`: the HTTP API for cloud ops.
    #[serde(default)]
    pub api: crate::api::ApiConfig,
    /// `[reconcile]`: the site model, tolerances and schedules of the reconciliation.
    #[serde(default)]
    pub reconcile: crate::reconcile::ReconcileConfig,
}

/// `[mqtt]`: where the agents' batches come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port`. `mqtt://user:password@host` works, with a
    /// `check-config` warning; it is shown redacted everywhere.
    #[serde(default = "default_broker")]
    pub broker: SecretUrl,
    /// Topic root the agents publish under (their `[uplink] topic_root`).
    #[serde(default = "default_root")]
    pub topic_root: String,
    /// Shared-subscription group: replicas with the same group split the data between them
    /// (`$share/{group}/…`). Empty = a plain subscription (single replica).
    #[serde(default = "default_group")]
    pub group: String,
    /// MQTT client id (unique per replica). Default `cloud-ingest-{hostname}-{pid}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username/password source: `file:/path` (two lines: username, password) or
    /// `systemd:NAME` (`$CREDENTIALS_DIRECTORY/NAME`, passed with `LoadCredential=`).
    #[serde(default)]
    pub credentials: Option<String>,
    /// Keys that sign the end-to-end acks, by site id (`"*"`: every site not named), each a
    /// `file:/path` or `systemd:NAME` source holding the key alone. Empty (default): acks are
    /// not signed. An agent with `[uplink] ack_key_file`/`ack_key_credential` ignores acks
    /// without a valid signature.
    #[serde(default)]
    pub ack_keys: BTreeMap<String, String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: default_broker(),
            topic_root: default_root(),
            group: default_group(),
            client_id: None,
            credentials: None,
            ack_keys: BTreeMap::new(),
        }
    }
}

/// `[database]`: where the data go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string (`host=… user=… dbname=…` or `postgres://…`). Absent: the
    /// embedded SQLite database at `sqlite_path`. A password in it works, with a `check-config`
    /// warning (use `password_file` or `password_credential`); it is shown redacted everywhere.
    #[serde(default)]
    pub url: Option<SecretUrl>,
    /// PostgreSQL: file holding the password (the password alone, one trailing newline
    /// ignored); it takes the place of a password in `url`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PostgreSQL: systemd credential holding the password (`$CREDENTIALS_DIRECTORY/<name>`).
    #[serde(default)]
    pub password_credential: Option<String>,
    /// SQLite file when no `url` is given. Default `flowsquare-ingest.db`.
    #[serde(default)]
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL: `"auto"` (TimescaleDB hypertables when the extension is available and
    /// preloaded, native daily partitions otherwise, with a warning when it is installed but not
    /// preloaded), `"off"` (always native partitions) or `"require"` (refused with the fix when
    /// it cannot be used). `check-config` says which layout `migrate` would choose.
    #[serde(default = "default_timescale")]
    pub timescale: String,
    /// PostgreSQL: drop data older than this many days (partitions/chunks). Default: keep all.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// PostgreSQL native partitions: days created ahead. Default 7.
    #[serde(default = "default_ahead")]
    pub partitions_ahead_days: u32,
    /// PostgreSQL: how often the roller builds the due minute and hour rollups from the
    /// committed rows (`store::postgres::rollup`), ms. Default 5000.
    #[serde(default = "default_rollup_interval")]
    pub rollup_interval_ms: u64,
    /// PostgreSQL: how long after a minute closes (data clock) the roller waits before rolling
    /// it, so that in live flow a minute is rolled once, ms. Default 10000.
    #[serde(default = "default_rollup_settle")]
    pub rollup_settle_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            password_file: None,
            password_credential: None,
            sqlite_path: None,
            timescale: default_timescale(),
            retention_days: None,
            partitions_ahead_days: default_ahead(),
            rollup_interval_ms: default_rollup_interval(),
            rollup_settle_ms: default_rollup_settle(),
        }
    }
}

fn default_timescale() -> String {
    "auto".into()
}
fn default_ahead() -> u32 {
    7
}
fn default_rollup_interval() -> u64 {
    5000
}
fn default_rollup_settle() -> u64 {
    10_000
}

/// `[ingest]`: tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestTuning {
    /// Most batches committed in one database transaction.
    #[serde(default = "default_group_commit")]
    pub max_batches_per_commit: usize,
    /// Readings and events older than this many days on the ingest's clock are not stored: each
    /// batch's refused part is one dead letter with the reason, the rest is stored and the batch
    /// acknowledged. 0: no bound. Default 35 (above the agent's 30-day buffer `max_age`).
    #[serde(default = "default_accept_past_days")]
    pub accept_past_days: u32,
    /// Readings and events later than this many days ahead of the ingest's clock are refused the
    /// same way. 0: no bound. Default 1.
    #[serde(default = "default_accept_future_days")]
    pub accept_future_days: u32,
    /// Most tags registered per agent: a birth that would pass it is refused and kept as a dead
    /// letter naming the agent and the counts. 0: no bound. Default 200,000.
    #[serde(default = "default_max_tags")]
    pub max_tags_per_agent: usize,
    /// Bytes of a dead letter's payload kept; the rest is replaced by the original length and
    /// the payload's SHA-256 in its reason. 0: kept whole. Default 1024.
    #[serde(default = "default_dead_letter_keep")]
    pub dead_letter_keep_bytes: usize,
    /// Dead letters older than this many days are dropped (hourly). 0: kept. Default 30.
    #[serde(default = "default_dead_letter_retention")]
    pub dead_letter_retention_days: u32,
    /// After the age rule, the oldest dead letters are dropped while their payloads add up to
    /// more than this many MiB. 0 (default): no bound.
    #[serde(default)]
    pub dead_letter_max_total_mib: u64,
}

impl Default for IngestTuning {
    fn default() -> Self {
        IngestTuning {
            max_batches_per_commit: default_group_commit(),
            accept_past_days: default_accept_past_days(),
            accept_future_days: default_accept_future_days(),
            max_tags_per_agent: default_max_tags(),
            dead_letter_keep_bytes: default_dead_letter_keep(),
            dead_letter_retention_days: default_dead_letter_retention(),
            dead_letter_max_total_mib: 0,
        }
    }
}

impl IngestTuning {
    /// The bounds the stores hold every agent to (0 in a key: that bound off).
    pub fn limits(&self) -> crate::store::Limits {
        const DAY_MS: i64 = 86_400_000;
        let days = |d: u32| (d > 0).then(|| i64::from(d) * DAY_MS);
        crate::store::Limits {
            accept_past_ms: days(self.accept_past_days),
            accept_future_ms: days(self.accept_future_days),
            max_tags_per_agent: (self.max_tags_per_agent > 0).then_some(self.max_tags_per_agent),
            dead_letter_keep_bytes: (self.dead_letter_keep_bytes > 0)
                .then_some(self.dead_letter_keep_bytes),
            dead_letter_retention_ms: days(self.dead_letter_retention_days),
            dead_letter_max_total_bytes: (self.dead_letter_max_total_mib > 0)
                .then(|| self.dead_letter_max_total_mib.saturating_mul(1 << 20)),
        }
    }
}

fn default_accept_past_days() -> u32 {
    35
}
fn default_accept_future_days() -> u32 {
    1
}
fn default_max_tags() -> usize {
    200_000
}
fn default_dead_letter_keep() -> usize {
    1024
}
fn default_dead_letter_retention() -> u32 {
    30
}

fn default_broker() -> SecretUrl {
    "mqtt://127.0.0.1:1883".into()
}
fn default_root() -> String {
    "fs".into()
}
fn default_group() -> String {
    "ingest".into()
}
fn default_group_commit() -> usize {
    64
}

/// Shortest ack key accepted (characters; `openssl rand -hex 32` gives 64).
pub const MIN_ACK_KEY_LEN: usize = 16;

/// The keys that sign acks ([`IngestConfig::ack_keys`]); `Debug` shows no key.
#[derive(Debug, Clone, Default)]
pub struct AckKeys {
    /// By site id.
    pub sites: BTreeMap<String, Secret>,
    /// For every other site (`"*"`).
    pub all: Option<Secret>,
}

impl AckKeys {
    /// No keys: acks go out unsigned.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty() && self.all.is_none()
    }

    /// The key that signs acks to `site`'s agents (`None`: unsigned).
    pub fn for_site(&self, site: &str) -> Option<&[u8]> {
        self.sites
            .get(site)
            .or(self.all.as_ref())
            .map(|k| k.expose().as_bytes())
    }
}

/// A warning about the configuration file at a key: `[table] key` and its 1-based line and
/// column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWarning {
    /// `table.key`.
    pub key: String,
    /// 1-based line of the key's value (0 when the key is not in the text).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// A TOML error of the config text with its line and column. When it is about a line holding a
/// secret key (`password = 12345`: a type error quotes the value, an unknown key's excerpt
/// shows the line), the excerpt of the line is left out and a quoted value is redacted
/// ([`secret::redact_value_error`]).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(sp) = e.span() else {
        return secret::redact(&e.to_string()).into_owned();
    };
    let start = sp.start.min(text.len());
    let before = &text[..start];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_text = &text[line_start
        ..text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i)];
    let secret_line = line_text.find('=').is_some_and(|eq| {
        secret::toml_key_at(text, line_start + eq + 1).is_some_and(secret::is_secret_key)
    });
    if !secret_line {
        return secret::redact(&e.to_string()).into_owned();
    }
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    format!(
        "TOML parse error at line {line}, column {column}: {}",
        secret::redact_value_error(text, Some(sp), e.message().trim_end())
    )
}

impl IngestConfig {
    /// Parse a config file's text; errors name line and column (any password they quote is
    /// redacted).
    pub fn parse(text: &str) -> Result<IngestConfig, String> {
        let cfg: IngestConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        cfg.validate_secrets()?;
        Ok(cfg)
    }

    /// The broker URL after `mqtt://`, split at its user info.
    fn broker_parts(&self) -> Result<(Option<&str>, &str), String> {
        let rest = self
            .mqtt
            .broker
            .expose()
            .strip_prefix("mqtt://")
            .ok_or_else(|| format!("broker {:?} must start with mqtt://", self.mqtt.broker))?;
        let rest = rest.trim_end_matches('/');
        Ok(match rest.rsplit_once('@') {
            Some((user_info, host_port)) => (Some(user_info), host_port),
            None => (None, rest),
        })
    }

    /// Broker host and port.
    pub fn broker_addr(&self) -> Result<(String, u16), String> {
        let (_, rest) = self.broker_parts()?;
        match rest.rsplit_once(':') {
            Some((h, p)) => Ok((
                h.to_owned(),
                p.parse()
                    .map_err(|_| format!("broker port {p:?} is not a number"))?,
            )),
            None => Ok((rest.to_owned(), 1883)),
        }
    }

    /// The password sources given together, refused.
    fn validate_secrets(&self) -> Result<(), String> {
        if self.mqtt.credentials.is_some() && self.broker_parts().is_ok_and(|(u, _)| u.is_some()) {
            return Err("[mqtt]: the broker URL has a user name too: give the user and password in one place (credentials)".into());
        }
        if let Some(c) = &self.mqtt.credentials {
            SecretSource::from_spec(c).map_err(|e| format!("[mqtt] credentials: {e}"))?;
        }
        self.database_password_source()
            .map_err(|e| format!("[database]: {e}"))?;
        self.ack_key_sources()?;
        Ok(())
    }

    /// `[mqtt] ack_keys` checked: site ids (or `"*"`) and `file:`/`systemd:` sources.
    fn ack_key_sources(&self) -> Result<Vec<(&str, SecretSource)>, String> {
        self.mqtt
            .ack_keys
            .iter()
            .map(|(site, spec)| {
                if site != "*" {
                    flowsquare_wire::topics::validate_id(site).map_err(|e| {
                        format!("[mqtt] ack_keys: {site:?} is neither a site id nor \"*\": {e}")
                    })?;
                }
                let src = SecretSource::from_spec(spec)
                    .map_err(|e| format!("[mqtt] ack_keys {site:?}: {e}"))?;
                Ok((site.as_str(), src))
            })
            .collect()
    }

    /// The ack signing keys (`[mqtt] ack_keys`), read from their files or credentials: each at
    /// least [`MIN_ACK_KEY_LEN`] characters.
    pub fn ack_keys(&self) -> Result<AckKeys, String> {
        let mut keys = AckKeys::default();
        for (site, src) in self.ack_key_sources()? {
            let key = src
                .read()
                .map_err(|e| format!("[mqtt] ack_keys {site:?}: {e}"))?;
            if key.expose().len() < MIN_ACK_KEY_LEN {
                return Err(format!(
                    "[mqtt] ack_keys {site:?}: the key is shorter than {MIN_ACK_KEY_LEN} characters (make one with: openssl rand -hex 32)"
                ));
            }
            if site == "*" {
                keys.all = Some(key);
            } else {
                keys.sites.insert(site.to_owned(), key);
            }
        }
        Ok(keys)
    }

    fn database_password_source(&self) -> Result<Option<SecretSource>, String> {
        SecretSource::from_keys(
            "password",
            None,
            self.database.password_file.clone(),
            self.database.password_credential.clone(),
        )
        .map_err(|_| "give either password_file or password_credential, not both".to_owned())
    }

    /// The PostgreSQL password from `password_file` / `password_credential`, if given.
    pub fn database_password(&self) -> Result<Option<Secret>, String> {
        match self.database_password_source()? {
            Some(src) => src
                .read()
                .map(Some)
                .map_err(|e| format!("[database] password: {e}")),
            None => Ok(None),
        }
    }

    /// The broker username and password: from where `credentials` points (two lines), else
    /// from the broker URL's user info (percent-decoded); `None`: anonymous.
    pub fn mqtt_credentials(&self) -> Result<Option<(String, Secret)>, String> {
        let Some(spec) = &self.mqtt.credentials else {
            let Some(info) = self.broker_parts()?.0 else {
                return Ok(None);
            };
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            return Ok(Some((
                secret::percent_decode(u),
                Secret::new(secret::percent_decode(p)),
            )));
        };
        let src = SecretSource::from_spec(spec).map_err(|e| format!("[mqtt] credentials: {e}"))?;
        let text = src
            .read_text()
            .map_err(|e| format!("[mqtt] credentials: {e}"))?;
        let mut l = text.expose().lines();
        let user = l.next().unwrap_or("").trim().to_owned();
        let pass = l.next().unwrap_or("").trim_end_matches('\r').to_owned();
        if user.is_empty() {
            return Err(format!(
                "[mqtt] credentials {spec:?}: the first line (username) is empty"
            ));
        }
        Ok(Some((user, Secret::new(pass))))
    }

    /// Secrets written in the file (`text`, the file this configuration was parsed from): a
    /// password in the broker URL or the database URL, each at its key.
    pub fn secret_warnings(&self, text: &str) -> Vec<KeyWarning> {
        let mut w = Vec::new();
        if self.mqtt.broker.has_password() {
            w.push((
                "mqtt",
                "broker",
                secret::inline_warning(
                    "broker",
                    "the broker password (in the URL)",
                    "credentials = \"systemd:NAME\" or \"file:/path\"",
                ),
            ));
        }
        if self
            .database
            .url
            .as_ref()
            .is_some_and(SecretUrl::has_password)
        {
            w.push((
                "database",
                "url",
                secret::inline_warning(
                    "url",
                    "the database password",
                    "password_credential = \"NAME\" or password_file = \"/path\"",
                ),
            ));
        }
        w.into_iter()
            .map(|(table, key, message)| {
                let (line, column) = locate(text, table, key).unwrap_or((0, 0));
                KeyWarning {
                    key: format!("{table}.{key}"),
                    line,
                    column,
                    message,
                }
            })
            .collect()
    }
}

/// 1-based line and column of the value of `[table] key` in `text`.
fn locate(text: &str, table: &str, key: &str) -> Option<(usize, usize)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let t = doc.get_ref().get(table)?;
    let toml::de::DeValue::Table(t) = t.get_ref() else {
        return None;
    };
    let at = t.get(key)?.span().start;
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some((
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords in the broker and database URLs work, are warned about at their keys, and
    /// never show in `Debug`, `Display` or a parse error.
    #[test]
    fn passwords_in_urls_work_warn_and_stay_hidden() {
        let text = "[mqtt]\nbroker = \"mqtt://ingest:mq%40pw@broker:1884\"\n\n[database]\nurl = \"host=db user=fs password=pgpw dbname=fs\"\n";
        let cfg = IngestConfig::parse(text).expect("parses");
        assert_eq!(cfg.broker_addr(), Ok(("broker".into(), 1884)));
        let (u, p) = cfg.mqtt_credentials().expect("ok").expect("from the URL");
        assert_eq!((u.as_str(), p.expose()), ("ingest", "mq@pw"));
        let shown = format!("{cfg:?} {} {:?}", cfg.mqtt.broker, cfg.database.url);
        assert!(
            !shown.contains("mq%40pw") && !shown.contains("pgpw"),
            "{shown}"
        );
        let w = cfg.secret_warnings(text);
        let at: Vec<_> = w
            .iter()
            .map(|w| (w.key.as_str(), w.line, w.column))
            .collect();
        assert_eq!(at, [("mqtt.broker", 2, 10), ("database.url", 5, 7)]);
        assert!(
            w[1].message.contains("password_credential"),
            "{}",
            w[1].message
        );

        let bad = "[database]\nurl = \"postgres://fs:pgpw@db/fs\" x\n";
        let e = IngestConfig::parse(bad).expect_err("syntax error");
        // The line of a secret key is not quoted at all (only its line and column).
        assert!(!e.contains("pgpw") && e.contains("line 2"), "{e}");

        // A secret of the wrong type, or under a misspelt key: line and column, never the value.
        for (bad, line) in [
            ("[database]\nurl = 12345\n", 2),
            ("[database]\npassword = 12345\n", 2),
            (
                "[mqtt]\nbroker = \"mqtt://b:1883\"\npassword = \"hunter2\"\n",
                3,
            ),
        ] {
            let e = IngestConfig::parse(bad).expect_err("refused");
            assert!(!e.contains("12345") && !e.contains("hunter2"), "{bad}: {e}");
            assert!(e.contains(&format!("line {line}")), "{bad}: {e}");
        }

        let clean = IngestConfig::parse("[mqtt]\nbroker = \"mqtt://b:1883\"\n").expect("parses");
        assert!(clean.secret_warnings("").is_empty());
        assert_eq!(clean.mqtt_credentials(), Ok(None));
    }

    /// `password_file`: the password alone, one trailing newline stripped; missing or empty
    /// files are errors naming the file; two sources are refused at load.
    #[test]
    fn the_database_password_comes_from_a_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("pg");
        let cfg = IngestConfig::parse(&format!(
            "[database]\nurl = \"host=db user=fs\"\npassword_file = {:?}\n",
            f.display().to_string()
        ))
        .expect("parses");
        let e = cfg.database_password().expect_err("missing");
        assert!(e.contains(&f.display().to_string()), "{e}");
        std::fs::write(&f, "\n").expect("write");
        assert!(cfg
            .database_password()
            .expect_err("empty")
            .contains("empty"));
        std::fs::write(&f, "pg pw\n").expect("write");
        let p = cfg.database_password().expect("ok").expect("some");
        assert_eq!(p.expose(), "pg pw");
        assert!(IngestConfig::parse(
            "[database]\npassword_file = \"/a\"\npassword_credential = \"b\"\n"
        )
        .is_err());
        assert!(IngestConfig::parse(
            "[mqtt]\nbroker = \"mqtt://u:p@h\"\ncredentials = \"file:/x\"\n"
        )
        .is_err());
    }

    /// `[mqtt] ack_keys`: per site and `"*"`, from files; bad site ids, sources, missing and
    /// short keys are refused; a site without a key (and no `"*"`) gets unsigned acks.
    #[test]
    fn ack_keys_per_site_and_for_every_other_site() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, all) = (dir.path().join("a"), dir.path().join("all"));
        let cfg = IngestConfig::parse(&format!(
            "[mqtt.ack_keys]\n\"terminal-01\" = \"file:{}\"\n\"*\" = \"file:{}\"\n",
            a.display(),
            all.display()
        ))
        .expect("parses");
        let e = cfg.ack_keys().expect_err("missing files");
        assert!(e.contains("ack_keys"), "{e}");
        std::fs::write(&a, "short\n").expect("write");
        std::fs::write(&all, "0123456789abcdef0123456789abcdef\n").expect("write");
        assert!(cfg.ack_keys().expect_err("short").contains("shorter"));
        std::fs::write(&a, "terminal-01 key, long enough\n").expect("write");
        let keys = cfg.ack_keys().expect("keys");
        assert_eq!(
            keys.for_site("terminal-01"),
            Some(&b"terminal-01 key, long enough"[..])
        );
        assert_eq!(
            keys.for_site("terminal-02"),
            Some(&b"0123456789abcdef0123456789abcdef"[..])
        );
        assert!(!format!("{keys:?}").contains("long enough"));

        let one = IngestConfig::parse(&format!(
            "[mqtt]\nack_keys = {{ \"terminal-01\" = \"file:{}\" }}\n",
            a.display()
        ))
        .expect("inline table");
        let keys = one.ack_keys().expect("keys");
        assert!(keys.for_site("terminal-01").is_some());
        assert_eq!(keys.for_site("terminal-02"), None);
        assert!(IngestConfig::default().ack_keys().expect("none").is_empty());

        for bad in [
            "[mqtt.ack_keys]\n\"a/b\" = \"file:/x\"\n",
            "[mqtt.ack_keys]\n\"s\" = \"the key itself\"\n",
            "[mqtt]\nack_keys = \"file:/x\"\n",
        ] {
            assert!(IngestConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
