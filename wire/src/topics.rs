//! The versioned topic scheme: `{root}/v1/{site}/{agent}/{kind}`.
//!
//! `root` defaults to [`DEFAULT_ROOT`] (`fs`) and may contain `/` (e.g. `test-7f3a/fs`, so each
//! test run can use its own prefix on a shared broker). `site` and `agent` are ids of 1-64
//! characters of `[A-Za-z0-9_.-]` (see [`validate_id`]).
//!
//! | kind        | direction      | QoS | retained | payload                              |
//! |-------------|----------------|-----|----------|--------------------------------------|
//! | `data`      | agent → cloud  | 1   | no       | binary batch ([`crate::batch`])      |
//! | `ack`       | cloud → agent  | 1   | no       | JSON [`crate::Ack`]                  |
//! | `birth`     | agent → cloud  | 1   | yes      | JSON [`crate::Birth`]                |
//! | `status`    | agent → cloud  | 1   | yes      | JSON [`crate::Status`] (also the LWT)|
//! | `heartbeat` | agent → cloud  | 0   | no       | JSON [`crate::Heartbeat`]            |
//! | `cmd`       | cloud → agent  | 1   | no       | reserved                             |

use crate::error::WireError;

/// The default topic root.
pub const DEFAULT_ROOT: &str = "fs";

/// The topic scheme version segment.
pub const TOPIC_VERSION: &str = "v1";

/// Longest site or agent id.
pub const MAX_ID_LEN: usize = 64;

/// Longest root (MQTT allows 65535 bytes for a whole topic; this leaves room for the rest).
pub const MAX_ROOT_LEN: usize = 256;

/// The kind of a topic, its last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Data batches, agent → cloud, QoS 1.
    Data,
    /// End-to-end acknowledgements, cloud → agent, QoS 1.
    Ack,
    /// The agent's birth certificate (tag catalog), retained, agent → cloud.
    Birth,
    /// Online/offline status, retained; the Last Will is an offline status.
    Status,
    /// Periodic health figures, agent → cloud, QoS 0.
    Heartbeat,
    /// Commands, cloud → agent (reserved, no payload defined yet).
    Cmd,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 6] = [
        Kind::Data,
        Kind::Ack,
        Kind::Birth,
        Kind::Status,
        Kind::Heartbeat,
        Kind::Cmd,
    ];

    /// The topic segment (`data`, `ack`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Ack => "ack",
            Kind::Birth => "birth",
            Kind::Status => "status",
            Kind::Heartbeat => "heartbeat",
            Kind::Cmd => "cmd",
        }
    }

    /// The kind for a topic segment.
    pub fn from_segment(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The QoS to publish (and subscribe) with.
    pub fn qos(self) -> u8 {
        match self {
            Kind::Heartbeat => 0,
            _ => 1,
        }
    }

    /// Whether messages of this kind are published retained.
    pub fn retained(self) -> bool {
        matches!(self, Kind::Birth | Kind::Status)
    }

    /// Whether the agent publishes this kind (otherwise the cloud does).
    pub fn from_agent(self) -> bool {
        !matches!(self, Kind::Ack | Kind::Cmd)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Check a site or agent id: 1-64 characters of `[A-Za-z0-9_.-]`.
///
/// This excludes `/`, `+`, `#` and every other character that would break the topic scheme.
pub fn validate_id(id: &str) -> Result<(), WireError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(WireError::BadId(format!(
            "{:?}: must be 1-{MAX_ID_LEN} characters",
            truncate_for_message(id)
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(WireError::BadId(format!(
            "{:?}: character {c:?} not allowed (only A-Z a-z 0-9 _ . -)",
            truncate_for_message(id)
        )));
    }
    Ok(())
}

/// Check a topic root: non-empty levels separated by `/`, no wildcards (`+`, `#`), no NUL, not
/// starting with `$` (broker-reserved), at most [`MAX_ROOT_LEN`] bytes.
pub fn validate_root(root: &str) -> Result<(), WireError> {
    let bad = |why: &str| {
        Err(WireError::BadTopic(format!(
            "root {:?}: {why}",
            truncate_for_message(root)
        )))
    };
    if root.is_empty() {
        return bad("empty");
    }
    if root.len() > MAX_ROOT_LEN {
        return bad("too long");
    }
    if root.starts_with('$') {
        return bad("starts with '$' (reserved for the broker)");
    }
    if root.contains(['+', '#', '\0']) {
        return bad("contains a wildcard or NUL");
    }
    if root.split('/').any(str::is_empty) {
        return bad("empty level (leading, trailing or double '/')");
    }
    Ok(())
}

/// Check a shared-subscription group name: like an id (no `/`, `+`, `#`).
fn validate_group(group: &str) -> Result<(), WireError> {
    validate_id(group).map_err(|e| match e {
        WireError::BadId(m) => WireError::BadTopic(format!("share group {m}")),
        other => other,
    })
}

fn truncate_for_message(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The topics of one agent. Built with [`Topics::new`], which validates root and ids, so every
/// topic it formats is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    root: String,
    site: String,
    agent: String,
}

impl Topics {
    /// Topics for `agent` at `site` under `root` (usually [`DEFAULT_ROOT`]).
    pub fn new(
        root: impl Into<String>,
        site: impl Into<String>,
        agent: impl Into<String>,
    ) -> Result<Topics, WireError> {
        let (root, site, agent) = (root.into(), site.into(), agent.into());
        validate_root(&root)?;
        validate_id(&site)?;
        validate_id(&agent)?;
        Ok(Topics { root, site, agent })
    }

    /// The root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The site id.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The agent id.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The topic of `kind` for this agent.
    pub fn topic(&self, kind: Kind) -> String {
        format!(
            "{}/{TOPIC_VERSION}/{}/{}/{}",
            self.root,
            self.site,
            self.agent,
            kind.as_str()
        )
    }

    /// `{root}/v1/{site}/{agent}/data`: batches, QoS 1.
    pub fn data(&self) -> String {
        self.topic(Kind::Data)
    }

    /// `{root}/v1/{site}/{agent}/ack`: acknowledgements for this agent, QoS 1.
    pub fn ack(&self) -> String {
        self.topic(Kind::Ack)
    }

    /// `{root}/v1/{site}/{agent}/birth`: retained birth certificate.
    pub fn birth(&self) -> String {
        self.topic(Kind::Birth)
    }

    /// `{root}/v1/{site}/{agent}/status`: retained status, also the Last Will topic.
    pub fn status(&self) -> String {
        self.topic(Kind::Status)
    }

    /// `{root}/v1/{site}/{agent}/heartbeat`: health figures, QoS 0.
    pub fn heartbeat(&self) -> String {
        self.topic(Kind::Heartbeat)
    }

    /// `{root}/v1/{site}/{agent}/cmd`: commands (reserved).
    pub fn cmd(&self) -> String {
        self.topic(Kind::Cmd)
    }

    /// Split a received topic under `root` into its kind, site and agent.
    ///
    /// Fails with [`WireError::BadTopic`] when the topic is not under `root`, has another scheme
    /// version, the wrong number of levels or an unknown kind, and with [`WireError::BadId`] when
    /// a site or agent segment is not a valid id.
    pub fn parse(root: &str, topic: &str) -> Result<(Kind, String, String), WireError> {
        validate_root(root)?;
        let bad = |why: &str| {
            Err(WireError::BadTopic(format!(
                "{:?}: {why}",
                truncate_for_message(topic)
            )))
        };
        let Some(rest) = topic.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
            return bad(&format!("not under root {root:?}"));
        };
        let Some(rest) = rest
            .strip_prefix(TOPIC_VERSION)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return bad(&format!("not topic scheme {TOPIC_VERSION}"));
        };
        let mut parts = rest.split('/');
        let (Some(site), Some(agent), Some(kind), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return bad("expected {root}/v1/{site}/{agent}/{kind}");
        };
        validate_id(site)?;
        validate_id(agent)?;
        let Some(kind) = Kind::from_segment(kind) else {
            return bad(&format!("unknown kind {:?}", truncate_for_message(kind)));
        };
        Ok((kind, site.to_string(), agent.to_string()))
    }

    /// The subscription filter for `kind` from every site and agent: `{root}/v1/+/+/{kind}`.
    pub fn filter(root: &str, kind: Kind) -> Result<String, WireError> {
        validate_root(root)?;
        Ok(format!("{root}/{TOPIC_VERSION}/+/+/{}", kind.as_str()))
    }

    /// The MQTT 5 shared-subscription form of [`Topics::filter`], so several ingest instances
    /// split the load: `$share/{group}/{root}/v1/+/+/{kind}`.
    pub fn shared_filter(group: &str, root: &str, kind: Kind) -> Result<String, WireError> {
        validate_group(group)?;
        Ok(format!("$share/{group}/{}", Topics::filter(root, kind)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_every_kind() {
        let t = Topics::new(DEFAULT_ROOT, "terminal-01", "gw.a_1").unwrap();
        assert_eq!(t.data(), "fs/v1/terminal-01/gw.a_1/data");
        assert_eq!(t.ack(), "fs/v1/terminal-01/gw.a_1/ack");
        assert_eq!(t.birth(), "fs/v1/terminal-01/gw.a_1/birth");
        assert_eq!(t.status(), "fs/v1/terminal-01/gw.a_1/status");
        assert_eq!(t.heartbeat(), "fs/v1/terminal-01/gw.a_1/heartbeat");
        assert_eq!(t.cmd(), "fs/v1/terminal-01/gw.a_1/cmd");
        assert_eq!(
            (t.root(), t.site(), t.agent()),
            ("fs", "terminal-01", "gw.a_1")
        );
    }

    #[test]
    fn parse_round_trips_with_slashed_root() {
        let root = "test-7f3a/fs";
        let t = Topics::new(root, "S1", "A1").unwrap();
        for kind in Kind::ALL {
            let topic = t.topic(kind);
            assert!(topic.starts_with("test-7f3a/fs/v1/S1/A1/"));
            assert_eq!(
                Topics::parse(root, &topic).unwrap(),
                (kind, "S1".to_string(), "A1".to_string())
            );
        }
    }

    #[test]
    fn parse_rejects_what_is_not_ours() {
        let root = "test-7f3a/fs";
        for topic in [
            "fs/v1/S1/A1/data",                // other root
            "test-7f3a/fsx/v1/S1/A1/data",     // root is not a level prefix
            "test-7f3a/fs/v2/S1/A1/data",      // other scheme
            "test-7f3a/fs/v1/S1/data",         // too few levels
            "test-7f3a/fs/v1/S1/A1/data/x",    // too many levels
            "test-7f3a/fs/v1/S1/A1/telemetry", // unknown kind
            "test-7f3a/fs/v1/S1/A1/",          // empty kind
            "test-7f3a/fs",
            "",
        ] {
            assert!(
                matches!(Topics::parse(root, topic), Err(WireError::BadTopic(_))),
                "{topic}"
            );
        }
        for topic in [
            "test-7f3a/fs/v1/S+1/A1/data",
            "test-7f3a/fs/v1//A1/data",
            "test-7f3a/fs/v1/S1/A#/data",
            "test-7f3a/fs/v1/S1/Ä/data",
        ] {
            assert!(
                matches!(Topics::parse(root, topic), Err(WireError::BadId(_))),
                "{topic}"
            );
        }
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("a").is_ok());
        assert!(validate_id(&"x".repeat(64)).is_ok());
        for bad in ["", "a/b", "a+b", "a#b", "a b", "é", "$SYS", &"x".repeat(65)] {
            assert!(
                matches!(validate_id(bad), Err(WireError::BadId(_))),
                "{bad:?}"
            );
            assert!(Topics::new("fs", bad, "agent").is_err());
            assert!(Topics::new("fs", "site", bad).is_err());
        }
    }

    #[test]
    fn roots_are_validated() {
        for good in ["fs", "test-7f3a/fs", "a/b/c", "prod env/fs"] {
            assert!(validate_root(good).is_ok(), "{good:?}");
        }
        for bad in ["", "/fs", "fs/", "a//b", "fs/+", "fs/#", "$SYS", "a\0b"] {
            assert!(
                matches!(validate_root(bad), Err(WireError::BadTopic(_))),
                "{bad:?}"
            );
            assert!(Topics::new(bad, "s", "a").is_err());
            assert!(Topics::filter(bad, Kind::Data).is_err());
        }
    }

    #[test]
    fn filters() {
        assert_eq!(Topics::filter("fs", Kind::Data).unwrap(), "fs/v1/+/+/data");
        assert_eq!(
            Topics::filter("test-7f3a/fs", Kind::Birth).unwrap(),
            "test-7f3a/fs/v1/+/+/birth"
        );
        assert_eq!(
            Topics::shared_filter("ingest", "fs", Kind::Data).unwrap(),
            "$share/ingest/fs/v1/+/+/data"
        );
        assert!(Topics::shared_filter("in/gest", "fs", Kind::Data).is_err());
        assert!(Topics::shared_filter("", "fs", Kind::Data).is_err());
    }

    #[test]
    fn qos_and_retain() {
        assert_eq!(Kind::Data.qos(), 1);
        assert_eq!(Kind::Ack.qos(), 1);
        assert_eq!(Kind::Heartbeat.qos(), 0);
        let retained: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.retained()).collect();
        assert_eq!(retained, [Kind::Birth, Kind::Status]);
        assert!(!Kind::Ack.from_agent() && !Kind::Cmd.from_agent() && Kind::Data.from_agent());
        for k in Kind::ALL {
            assert_eq!(Kind::from_segment(k.as_str()), Some(k));
        }
    }
}
