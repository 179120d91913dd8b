//! The protocol-independent parts of a tag map: `[agent]`, the common keys of every `[[device]]`
//! and of every `[[device.tag]]`. Protocol-specific keys live with their driver
//! (`drivers::modbus::config`). `config/agent.example.toml` documents every key by example.

use serde::Deserialize;
use std::time::Duration;

use crate::model::{Deadband, Priority, TagKind};
use crate::settings::duration;

/// Default poll interval of a device.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default longest time a tag may go unreported when its value sits inside its deadband.
pub const DEFAULT_MAX_SILENCE: Duration = Duration::from_secs(60);

/// `[agent]`: who this gateway is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Site (terminal, depot, station) this gateway belongs to; part of every MQTT topic.
    pub site: String,
    /// Agent id, unique within the site; part of every MQTT topic.
    pub id: String,
    /// Free text shown in the cloud console.
    #[serde(default)]
    pub description: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint, or `"off"`. Localhost by default: expose it
    /// wider only behind a firewall.
    #[serde(default = "default_metrics")]
    pub metrics: String,
}

fn default_metrics() -> String {
    "127.0.0.1:9898".into()
}

/// Keys every `[[device]]` has, whatever its protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCommon {
    /// Unique device name, used in logs, metrics and `read`/`plan` output.
    pub name: String,
    /// `modbus-tcp` or `modbus-rtu`.
    pub protocol: String,
    /// How often every tag of the device is read.
    #[serde(default = "default_poll_interval", deserialize_with = "duration::de")]
    pub poll_interval: Duration,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// Keys of the device table that `DeviceCommon` owns (the rest go to the driver).
pub const DEVICE_COMMON_KEYS: &[&str] = &["name", "protocol", "poll_interval", "description"];

fn default_poll_interval() -> Duration {
    DEFAULT_POLL_INTERVAL
}

/// A deadband as written: a number (absolute, engineering units) or a percentage string. The
/// type is the model's; its spelling is the tag map's, so it is read here.
impl<'de> Deserialize<'de> for Deadband {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "deadband must be a number (absolute, engineering units) or a percentage string like \"0.5%\"",
            )
        };
        match Raw::deserialize(d)? {
            Raw::Num(v) if v >= 0.0 && v.is_finite() => Ok(Deadband::Absolute(v)),
            Raw::Num(_) => Err(bad()),
            Raw::Text(s) => {
                let p = s.trim().strip_suffix('%').ok_or_else(bad)?;
                match p.trim().parse::<f64>() {
                    Ok(v) if (0.0..=100.0).contains(&v) => Ok(Deadband::Percent(v)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

/// Keys every `[[device.tag]]` has, whatever its protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagCommon {
    /// Hierarchical name, `area/asset/signal`, e.g. `tank-farm/tk-101/level`; unique in the map.
    pub name: String,
    /// Engineering unit after scaling (`m3`, `mm`, `degC`, `kg/m3`, …).
    #[serde(default)]
    pub unit: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// `gauge` (default), `totalizer` or `state`.
    #[serde(default)]
    pub kind: TagKind,
    /// Report-by-exception threshold: a number (absolute) or `"N%"`; none = report every poll.
    #[serde(default)]
    pub deadband: Option<Deadband>,
    /// Longest time a tag inside its deadband goes unreported (heartbeat).
    #[serde(default = "default_max_silence", deserialize_with = "duration::de")]
    pub max_silence: Duration,
    /// Buffer priority when the gateway runs out of buffer space: `low` readings are dropped
    /// first, then `normal`, then `high` (events are never dropped). Default: `high` for
    /// totalizers (custody quantities), `normal` otherwise.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Totalizer only: the value at which the counter wraps to zero (engineering units).
    /// Default for unsigned integer types: the type's range times the scale.
    #[serde(default)]
    pub rollover: Option<f64>,
}

/// Keys of the tag table that `TagCommon` owns (the rest go to the driver).
pub const TAG_COMMON_KEYS: &[&str] = &[
    "name",
    "unit",
    "description",
    "kind",
    "deadband",
    "max_silence",
    "priority",
    "rollover",
];

fn default_max_silence() -> Duration {
    DEFAULT_MAX_SILENCE
}

/// Is `s` a valid hierarchical tag name (`a/b/c`, segments of `[A-Za-z0-9_.-]`)?
pub fn valid_tag_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
}

/// Is `s` a valid MQTT-safe identifier (site, agent id, device name)?
pub fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
