//! OPC UA keys of a tag map: the `protocol = "opcua"` device keys and the OPC UA tag keys.
//! Raw structs are deserialized with `deny_unknown_fields`; `resolve_*` turn them into the
//! driver's types, reporting every problem to the diagnostics.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use opcua::types::NodeId;
use serde::Deserialize;

use crate::model::{TimePolicy, TimestampMode, DEFAULT_MAX_CLOCK_SKEW};
use crate::settings::duration;
use crate::settings::parse::Spans;

/// Default publishing interval of the subscription.
pub const DEFAULT_PUBLISHING_INTERVAL: Duration = Duration::from_secs(1);
/// Default session timeout asked of the server.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time to wait for one service call.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default first reconnect delay (doubles up to `reconnect_max`).
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
/// Default longest reconnect delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default number of nodes per Read / CreateMonitoredItems request.
pub const DEFAULT_MAX_NODES_PER_REQUEST: usize = 1000;

/// Security policy of the secure channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SecurityPolicy {
    /// No security (the server must offer a `None` endpoint).
    #[default]
    None,
    /// Basic256Sha256 (RSA 2048+, SHA-256): the common secure policy of field servers.
    Basic256Sha256,
    /// Aes128_Sha256_RsaOaep.
    #[serde(alias = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    /// Aes256_Sha256_RsaPss.
    #[serde(alias = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
}

impl SecurityPolicy {
    /// The library's policy.
    pub fn to_ua(self) -> opcua::crypto::SecurityPolicy {
        use opcua::crypto::SecurityPolicy as P;
        match self {
            SecurityPolicy::None => P::None,
            SecurityPolicy::Basic256Sha256 => P::Basic256Sha256,
            SecurityPolicy::Aes128Sha256RsaOaep => P::Aes128Sha256RsaOaep,
            SecurityPolicy::Aes256Sha256RsaPss => P::Aes256Sha256RsaPss,
        }
    }
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128Sha256RsaOaep",
            SecurityPolicy::Aes256Sha256RsaPss => "Aes256Sha256RsaPss",
        }
    }
}

/// Message security mode of the secure channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SecurityMode {
    /// Neither signed nor encrypted (only with `security_policy = "None"`).
    #[default]
    None,
    /// Signed.
    Sign,
    /// Signed and encrypted.
    #[serde(alias = "Sign&Encrypt", alias = "SignEncrypt")]
    SignAndEncrypt,
}

impl SecurityMode {
    /// The library's mode.
    pub fn to_ua(self) -> opcua::types::MessageSecurityMode {
        use opcua::types::MessageSecurityMode as M;
        match self {
            SecurityMode::None => M::None,
            SecurityMode::Sign => M::Sign,
            SecurityMode::SignAndEncrypt => M::SignAndEncrypt,
        }
    }
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityMode::None => "None",
            SecurityMode::Sign => "Sign",
            SecurityMode::SignAndEncrypt => "SignAndEncrypt",
        }
    }
}

/// How the agent authenticates its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// Anonymous identity token.
    #[default]
    Anonymous,
    /// User name and password (`username`, `password_file` or `password_credential`).
    #[serde(alias = "userpass", alias = "user")]
    Username,
    /// X.509 user certificate (`user_certificate`/`user_key`; default: the agent's own).
    Certificate,
}

/// Acquisition mode of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Monitored items in one subscription: the server reports changes.
    #[default]
    Subscription,
    /// The Read service every `poll_interval`.
    Polling,
}

impl Mode {
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Subscription => "subscription",
            Mode::Polling => "polling",
        }
    }
}

/// The type a tag expects; the server's value is converted to it or the reading is bad-decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OpcType {
    /// Whatever scalar the server sends (numbers as numbers, text as text).
    #[default]
    Auto,
    /// Boolean.
    #[serde(alias = "boolean")]
    Bool,
    /// Any integer type, kept as an integer.
    #[serde(
        alias = "int",
        alias = "i8",
        alias = "i16",
        alias = "i32",
        alias = "i64",
        alias = "u8",
        alias = "u16",
        alias = "u32",
        alias = "u64",
        alias = "int16",
        alias = "int32",
        alias = "int64",
        alias = "uint16",
        alias = "uint32",
        alias = "uint64",
        alias = "byte",
        alias = "sbyte"
    )]
    Integer,
    /// Any number, as a float.
    #[serde(
        alias = "float",
        alias = "double",
        alias = "f32",
        alias = "f64",
        alias = "real",
        alias = "number"
    )]
    Float,
    /// Text (String, LocalizedText, or anything rendered as text).
    #[serde(alias = "text")]
    String,
}

impl OpcType {
    /// Spelling in the birth catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            OpcType::Auto => "auto",
            OpcType::Bool => "bool",
            OpcType::Integer => "integer",
            OpcType::Float => "float",
            OpcType::String => "string",
        }
    }
    /// Numeric (deadband/totalizer apply)? `auto` is taken as numeric; a text value then only
    /// skips the deadband.
    pub fn is_numeric(self) -> bool {
        matches!(self, OpcType::Auto | OpcType::Integer | OpcType::Float)
    }
}

/// A tag's `type` as written: the type, and the largest value of an unsigned width
/// (`u16` → 65535), which an event trigger uses as its default rollover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeSpelling {
    /// The type values are converted to.
    pub ty: OpcType,
    /// Largest value of an unsigned width (`u8`/`byte`, `u16`, `u32`, `u64`).
    pub unsigned_max: Option<u64>,
}

impl<'de> Deserialize<'de> for TypeSpelling {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IntoDeserializer;
        let text = String::deserialize(d)?;
        let ty = OpcType::deserialize(text.as_str().into_deserializer())
            .map_err(|e: serde::de::value::Error| serde::de::Error::custom(e))?;
        let unsigned_max = match text.as_str() {
            "u8" | "byte" => Some(u64::from(u8::MAX)),
            "u16" | "uint16" => Some(u64::from(u16::MAX)),
            "u32" | "uint32" => Some(u64::from(u32::MAX)),
            "u64" | "uint64" => Some(u64::MAX),
            _ => None,
        };
        Ok(TypeSpelling { ty, unsigned_max })
    }
}

/// Keys of a `protocol = "opcua"` device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpcUaDevice {
    /// Server endpoint URL, `opc.tcp://host:port[/path]`.
    pub endpoint: String,
    /// `None`, `Basic256Sha256`, `Aes128Sha256RsaOaep` or `Aes256Sha256RsaPss`.
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    /// `None`, `Sign` or `SignAndEncrypt`.
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// `anonymous`, `username` or `certificate`.
    #[serde(default)]
    pub auth: AuthKind,
    /// User name for `auth = "username"`.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (first line) for `auth = "username"`; never the password itself.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// systemd credential name holding the password (`$CREDENTIALS_DIRECTORY/<name>`).
    #[serde(default)]
    pub password_credential: Option<String>,
    /// User certificate (DER or PEM) for `auth = "certificate"`; default: the agent's own.
    #[serde(default)]
    pub user_certificate: Option<PathBuf>,
    /// Private key (PEM) of `user_certificate`.
    #[serde(default)]
    pub user_key: Option<PathBuf>,
    /// `subscription` (the server reports changes) or `polling` (Read every `poll_interval`).
    #[serde(default)]
    pub mode: Mode,
    /// Subscription publishing interval.
    #[serde(default = "default_publishing", deserialize_with = "duration::de")]
    pub publishing_interval: Duration,
    /// Session timeout requested from the server.
    #[serde(default = "default_session_timeout", deserialize_with = "duration::de")]
    pub session_timeout: Duration,
    /// Time to wait for one service call.
    #[serde(default = "default_request_timeout", deserialize_with = "duration::de")]
    pub request_timeout: Duration,
    /// First delay before reconnecting after the session was lost (doubles each failure).
    #[serde(default = "default_reconnect_min", deserialize_with = "duration::de")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    #[serde(default = "default_reconnect_max", deserialize_with = "duration::de")]
    pub reconnect_max: Duration,
    /// Most nodes per Read or CreateMonitoredItems request.
    #[serde(default = "default_max_nodes")]
    pub max_nodes_per_request: usize,
    /// PKI directory (own certificate, trusted/rejected server certificates); default `pki/`
    /// next to the buffer database.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// Also check the server certificate's host name, application URI and validity dates (the
    /// certificate must be trusted in any case).
    #[serde(default)]
    pub verify_server_certificate: bool,
    /// `source` (subscription readings carry the server's source timestamp while it is within
    /// `max_clock_skew` of the gateway clock) or `gateway` (always the gateway's time). Polling
    /// always stamps the request's time.
    #[serde(default)]
    pub timestamps: TimestampMode,
    /// Largest accepted difference between a source timestamp and the gateway clock; beyond it
    /// readings get the gateway's time and quality `time-substituted`.
    #[serde(default = "default_max_clock_skew", deserialize_with = "duration::de")]
    pub max_clock_skew: Duration,
}

fn default_max_clock_skew() -> Duration {
    DEFAULT_MAX_CLOCK_SKEW
}
fn default_publishing() -> Duration {
    DEFAULT_PUBLISHING_INTERVAL
}
fn default_session_timeout() -> Duration {
    DEFAULT_SESSION_TIMEOUT
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_reconnect_min() -> Duration {
    DEFAULT_RECONNECT_MIN
}
fn default_reconnect_max() -> Duration {
    DEFAULT_RECONNECT_MAX
}
fn default_max_nodes() -> usize {
    DEFAULT_MAX_NODES_PER_REQUEST
}

/// OPC UA keys of a tag.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpcUaTag {
    /// NodeId, e.g. `ns=2;s=Tank101.Level`, or `nsu=<namespace URI>;s=…` (resolved again at
    /// every connect, so a server that renumbers its namespaces is still read right).
    pub node: String,
    /// Expected type: `auto`, `bool`, `integer`, `float` or `string` (or a width such as
    /// `u16`, `u32`: an integer whose unsigned width sets the default event `seq_rollover`).
    #[serde(default, rename = "type")]
    pub data_type: TypeSpelling,
    /// Sampling interval asked of the server (subscription mode); default: the publishing
    /// interval.
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub sampling_interval: Option<Duration>,
    /// Server-side queue of the monitored item; default: enough for one publishing interval.
    #[serde(default)]
    pub queue_size: Option<u32>,
}

/// Password of a `username` session: where to read it at connect time (never inline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// This file (the password alone; one trailing newline ignored).
    File(PathBuf),
    /// systemd credential of this name.
    Credential(String),
}

impl PasswordSource {
    /// The same place as the shared secret source (`flowsquare_service::secret`).
    pub fn source(&self) -> flowsquare_service::secret::SecretSource {
        use flowsquare_service::secret::SecretSource;
        match self {
            PasswordSource::File(p) => SecretSource::File(p.clone()),
            PasswordSource::Credential(n) => SecretSource::Credential(n.clone()),
        }
    }
}

/// How the session authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous.
    Anonymous,
    /// User name and password.
    Username {
        /// User name.
        username: String,
        /// Where the password is.
        password: PasswordSource,
    },
    /// X.509 user certificate; `None` = the agent's application certificate.
    Certificate {
        /// Certificate and key files.
        files: Option<(PathBuf, PathBuf)>,
    },
}

/// A resolved OPC UA device.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaDevice {
    /// Endpoint URL.
    pub endpoint: String,
    /// Security policy.
    pub security_policy: SecurityPolicy,
    /// Security mode.
    pub security_mode: SecurityMode,
    /// Authentication.
    pub auth: Auth,
    /// Subscription or polling.
    pub mode: Mode,
    /// Publishing interval.
    pub publishing_interval: Duration,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Request timeout.
    pub request_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Nodes per request.
    pub max_nodes_per_request: usize,
    /// PKI directory if set in the tag map (else next to the buffer).
    pub pki_dir: Option<PathBuf>,
    /// Verify host name / URI / dates of the server certificate.
    pub verify_server_certificate: bool,
    /// Which clock stamps the readings, and the bound on source timestamps.
    pub time: TimePolicy,
}

/// A tag's node reference: a NodeId, or a namespace URI plus identifier.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRef {
    /// As written in the tag map.
    pub text: String,
    /// `nsu=` namespace URI, resolved to an index at every connect.
    pub namespace_uri: Option<String>,
    /// The NodeId (its namespace index is a placeholder when `namespace_uri` is set).
    pub node: NodeId,
}

impl NodeRef {
    /// Parse `ns=2;s=X`, `i=85`, `nsu=urn:x;s=X`.
    pub fn parse(text: &str) -> Result<NodeRef, String> {
        let t = text.trim();
        let bad = || {
            format!(
                "node {text:?} is not a NodeId; write e.g. \"ns=2;s=Tank101.Level\", \"ns=3;i=1002\" or \"nsu=urn:vendor:plc;s=Tank101.Level\""
            )
        };
        if let Some(rest) = t.strip_prefix("nsu=") {
            let (uri, id) = rest.split_once(';').ok_or_else(bad)?;
            if uri.is_empty() {
                return Err(bad());
            }
            let node = NodeId::from_str(id).map_err(|_| bad())?;
            return Ok(NodeRef {
                text: text.to_owned(),
                namespace_uri: Some(uri.to_owned()),
                node,
            });
        }
        let node = NodeId::from_str(t).map_err(|_| bad())?;
        if node.is_null() {
            return Err(bad());
        }
        Ok(NodeRef {
            text: text.to_owned(),
            namespace_uri: None,
            node,
        })
    }
}

/// A resolved OPC UA tag.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaTag {
    /// Node to read or monitor.
    pub node: NodeRef,
    /// Expected type.
    pub data_type: OpcType,
    /// Largest value of the declared unsigned width (`type = "u16"` → 65535), if any.
    pub unsigned_max: Option<u64>,
    /// Sampling interval (subscription mode).
    pub sampling_interval: Option<Duration>,
    /// Monitored item queue size (subscription mode).
    pub queue_size: Option<u32>,
}

impl OpcUaTag {
    /// Sampling interval in effect under `dev`.
    pub fn sampling(&self, dev: &OpcUaDevice) -> Duration {
        self.sampling_interval.unwrap_or(dev.publishing_interval)
    }
    /// Queue size in effect: as set, or enough samples for one publishing interval.
    pub fn queue(&self, dev: &OpcUaDevice) -> u32 {
        self.queue_size.unwrap_or_else(|| {
            let s = self.sampling(dev).as_millis().max(1);
            let p = dev.publishing_interval.as_millis();
            u32::try_from(p.div_ceil(s)).unwrap_or(u32::MAX).max(1)
        })
    }
}

/// Turn raw device keys into an `OpcUaDevice`, pushing `(key, message)` problems.
pub fn resolve_device(
    r: RawOpcUaDevice,
    problems: &mut Vec<(&'static str, String)>,
) -> OpcUaDevice {
    match r.endpoint.strip_prefix("opc.tcp://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
        _ => problems.push((
            "endpoint",
            format!(
                "endpoint {:?} must be an opc.tcp:// URL, e.g. \"opc.tcp://10.0.0.5:4840\"",
                r.endpoint
            ),
        )),
    }
    let none_policy = r.security_policy == SecurityPolicy::None;
    let none_mode = r.security_mode == SecurityMode::None;
    if none_policy && !none_mode {
        problems.push((
            "security_mode",
            format!(
                "security_mode {:?} needs a security_policy (e.g. \"Basic256Sha256\")",
                r.security_mode.as_str()
            ),
        ));
    }
    if !none_policy && none_mode {
        problems.push((
            "security_policy",
            format!(
                "security_policy {:?} needs security_mode \"Sign\" or \"SignAndEncrypt\"",
                r.security_policy.as_str()
            ),
        ));
    }
    let auth = match r.auth {
        AuthKind::Anonymous => {
            for (k, set) in [
                ("username", r.username.is_some()),
                ("password_file", r.password_file.is_some()),
                ("password_credential", r.password_credential.is_some()),
            ] {
                if set {
                    problems.push((k, format!("{k} applies only to auth = \"username\"")));
                }
            }
            Auth::Anonymous
        }
        AuthKind::Username => {
            let username = match &r.username {
                Some(u) if !u.is_empty() => u.clone(),
                _ => {
                    problems.push(("auth", "auth = \"username\" needs `username`".into()));
                    String::new()
                }
            };
            let password = match (&r.password_file, &r.password_credential) {
                (Some(f), None) => PasswordSource::File(f.clone()),
                (None, Some(c)) => PasswordSource::Credential(c.clone()),
                (Some(_), Some(_)) => {
                    problems.push((
                        "password_credential",
                        "give either password_file or password_credential, not both".into(),
                    ));
                    PasswordSource::Credential(String::new())
                }
                (None, None) => {
                    problems.push((
                        "auth",
                        "auth = \"username\" needs password_file or password_credential (the password itself never goes in the tag map)".into(),
                    ));
                    PasswordSource::Credential(String::new())
                }
            };
            Auth::Username { username, password }
        }
        AuthKind::Certificate => {
            let files = match (&r.user_certificate, &r.user_key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                _ => {
                    problems.push((
                        "user_certificate",
                        "user_certificate and user_key go together".into(),
                    ));
                    None
                }
            };
            if none_policy {
                problems.push((
                    "auth",
                    "auth = \"certificate\" needs a secure endpoint (security_policy other than \"None\") to sign the token".into(),
                ));
            }
            Auth::Certificate { files }
        }
    };
    if r.auth != AuthKind::Certificate && (r.user_certificate.is_some() || r.user_key.is_some()) {
        problems.push((
            "user_certificate",
            "user_certificate/user_key apply only to auth = \"certificate\"".into(),
        ));
    }
    if r.publishing_interval < Duration::from_millis(10) {
        problems.push((
            "publishing_interval",
            "publishing_interval must be at least 10ms".into(),
        ));
    }
    if r.session_timeout < Duration::from_secs(1) {
        problems.push((
            "session_timeout",
            "session_timeout must be at least 1s".into(),
        ));
    }
    if r.request_timeout.is_zero() {
        problems.push((
            "request_timeout",
            "request_timeout must be greater than zero".into(),
        ));
    }
    if r.reconnect_min.is_zero() || r.reconnect_max < r.reconnect_min {
        problems.push((
            "reconnect_max",
            "need 0 < reconnect_min <= reconnect_max".into(),
        ));
    }
    if r.max_clock_skew.is_zero() {
        problems.push((
            "max_clock_skew",
            "max_clock_skew must be greater than zero (every reading would be time-substituted)"
                .into(),
        ));
    }
    if r.max_nodes_per_request == 0 {
        problems.push((
            "max_nodes_per_request",
            "max_nodes_per_request must be at least 1".into(),
        ));
    }
    OpcUaDevice {
        endpoint: r.endpoint,
        security_policy: r.security_policy,
        security_mode: r.security_mode,
        auth,
        mode: r.mode,
        publishing_interval: r.publishing_interval,
        session_timeout: r.session_timeout,
        request_timeout: r.request_timeout,
        reconnect_min: r.reconnect_min,
        reconnect_max: r.reconnect_max,
        max_nodes_per_request: r.max_nodes_per_request,
        pki_dir: r.pki_dir,
        verify_server_certificate: r.verify_server_certificate,
        time: TimePolicy {
            mode: r.timestamps,
            max_skew: r.max_clock_skew,
        },
    }
}

/// Turn raw tag keys into an `OpcUaTag`, pushing problems.
pub fn resolve_tag(
    r: &RawOpcUaTag,
    dev: &OpcUaDevice,
    problems: &mut Vec<(&'static str, String)>,
) -> Option<OpcUaTag> {
    let node = match NodeRef::parse(&r.node) {
        Ok(n) => n,
        Err(e) => {
            problems.push(("node", e));
            return None;
        }
    };
    if dev.mode == Mode::Polling {
        if r.sampling_interval.is_some() {
            problems.push((
                "sampling_interval",
                "sampling_interval applies to mode = \"subscription\"; polling reads every poll_interval".into(),
            ));
        }
        if r.queue_size.is_some() {
            problems.push((
                "queue_size",
                "queue_size applies to mode = \"subscription\"".into(),
            ));
        }
    }
    if r.queue_size == Some(0) {
        problems.push(("queue_size", "queue_size must be at least 1".into()));
    }
    Some(OpcUaTag {
        node,
        data_type: r.data_type.ty,
        unsigned_max: r.data_type.unsigned_max,
        sampling_interval: r.sampling_interval,
        queue_size: r.queue_size,
    })
}

/// The OPC UA part of the tag-map loader.
pub struct Protocol;

impl crate::drivers::registry::ProtocolConfig for Protocol {
    fn check(
        &self,
        devices: &[crate::drivers::Device],
        tags: &[crate::drivers::Tag],
        _device_spans: &[crate::settings::parse::Spans],
        tag_spans: &[crate::settings::parse::Spans],
        diags: &mut crate::settings::Diagnostics,
    ) {
        for d in devices {
            super::checks::same_node(d, tags, tag_spans, diags);
        }
    }

    fn device_keys(&self, _protocol: &str) -> Vec<&'static [&'static str]> {
        vec![crate::settings::parse::fields_of::<RawOpcUaDevice>()]
    }

    fn device_subtables(&self) -> &'static [&'static str] {
        &["event"]
    }

    fn tag_keys(&self, _dev: &crate::drivers::DeviceDriver) -> Vec<&'static [&'static str]> {
        vec![crate::settings::parse::fields_of::<RawOpcUaTag>()]
    }

    fn device(
        &self,
        _protocol: &str,
        table: &crate::settings::parse::STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut crate::settings::Diagnostics,
    ) -> crate::drivers::DeviceDriver {
        let raw: Option<RawOpcUaDevice> = crate::settings::parse::part(table, subject, diags);
        let mut problems = Vec::new();
        let dev = match raw {
            Some(r) => resolve_device(r, &mut problems),
            None => resolve_device(
                RawOpcUaDevice {
                    endpoint: "opc.tcp://invalid".into(),
                    security_policy: SecurityPolicy::None,
                    security_mode: SecurityMode::None,
                    auth: AuthKind::Anonymous,
                    username: None,
                    password_file: None,
                    password_credential: None,
                    user_certificate: None,
                    user_key: None,
                    mode: Mode::Subscription,
                    publishing_interval: DEFAULT_PUBLISHING_INTERVAL,
                    session_timeout: DEFAULT_SESSION_TIMEOUT,
                    request_timeout: DEFAULT_REQUEST_TIMEOUT,
                    reconnect_min: DEFAULT_RECONNECT_MIN,
                    reconnect_max: DEFAULT_RECONNECT_MAX,
                    max_nodes_per_request: DEFAULT_MAX_NODES_PER_REQUEST,
                    pki_dir: None,
                    verify_server_certificate: false,
                    timestamps: TimestampMode::Source,
                    max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
                },
                &mut Vec::new(),
            ),
        };
        for (key, msg) in problems {
            diags.error(spans.of(key), subject, msg);
        }
        crate::drivers::DeviceDriver::OpcUa(dev)
    }

    fn tag(
        &self,
        dev: &crate::drivers::DeviceDriver,
        table: &crate::settings::parse::STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut crate::settings::Diagnostics,
    ) -> Option<crate::drivers::TagSource> {
        let dev = dev.opcua()?;
        let raw: RawOpcUaTag = crate::settings::parse::part(table, subject, diags)?;
        let mut problems = Vec::new();
        let t = resolve_tag(&raw, dev, &mut problems);
        for (key, msg) in problems {
            diags.error(spans.of(key), subject, msg);
        }
        t.map(|t| crate::drivers::TagSource::OpcUa(Box::new(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_refs_parse_or_explain() {
        let n = NodeRef::parse("ns=2;s=Tank101.Level").unwrap();
        assert_eq!(n.node, NodeId::new(2, "Tank101.Level"));
        let n = NodeRef::parse("nsu=urn:flowsquare:sim;i=1002").unwrap();
        assert_eq!(n.namespace_uri.as_deref(), Some("urn:flowsquare:sim"));
        assert_eq!(n.node, NodeId::new(0, 1002u32));
        assert!(NodeRef::parse("Tank101.Level").is_err());
        assert!(NodeRef::parse("nsu=;s=x").is_err());
    }

    #[test]
    fn default_queue_holds_one_publishing_interval() {
        let mut p = Vec::new();
        let raw: RawOpcUaDevice =
            toml::from_str("endpoint = \"opc.tcp://h:4840\"\npublishing_interval = \"1s\"")
                .unwrap();
        let dev = resolve_device(raw, &mut p);
        assert!(p.is_empty(), "{p:?}");
        let tag = OpcUaTag {
            node: NodeRef::parse("i=1").unwrap(),
            data_type: OpcType::Auto,
            unsigned_max: None,
            sampling_interval: Some(Duration::from_millis(250)),
            queue_size: None,
        };
        assert_eq!(tag.queue(&dev), 4);
    }
}
