//! The start-up delivery probe: before the consumer subscribes, prove that the broker delivers
//! what the ingest subscribes to, the way it subscribes (shared group or plain).
//!
//! Some brokers accept a subscription they do not implement: NATS 2.9's MQTT support takes
//! `$share/{group}/…` as a literal topic, so the ingest would be "subscribed" and receive
//! nothing, while the agents' batches wait unacknowledged forever (or, on a broker without
//! persistent sessions, are lost). The probe turns that into a refusal to start with a clear
//! error.
//!
//! How: a separate connection (client id `{client_id}-probe`, clean session, the ingest's
//! credentials) subscribes at QoS 1 to `{root}/v1/_probe/{nonce}` — through
//! `$share/{group}/…` when `[mqtt] group` is set — publishes one QoS 1 message to
//! `{root}/v1/_probe/{nonce}` and waits [`PROBE_WAIT`] for it. The topic has two levels after
//! `v1`, so no data, birth, status or heartbeat filter (`{root}/v1/+/+/{kind}`) of any replica
//! matches it, and it is not retained. While the broker is unreachable the probe retries (as
//! the consumer does); shutdown ends it.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::watch;
use tokio::time::Instant;

use flowsquare_wire as wire;

use crate::config::IngestConfig;

/// How long the probe waits for its own message once the broker has confirmed the subscription
/// and the publication.
pub const PROBE_WAIT: Duration = Duration::from_secs(5);

/// Why the ingest refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The configuration gives no usable topic or broker.
    #[error("delivery probe: {0}")]
    Config(String),
    /// The broker answered the subscription with a failure code.
    #[error(
        "delivery probe: the broker refused the subscription {filter:?}; the ingest's MQTT identity \
         must be allowed to subscribe and publish to {root}/v1/_probe/# (see docs/brokers.md)"
    )]
    Refused {
        /// The refused filter.
        filter: String,
        /// The topic root.
        root: String,
    },
    /// Subscribed and published, and nothing arrived.
    #[error("delivery probe: {0}")]
    NotDelivered(String),
}

/// The probe's topic and filter for `root` (`group` empty: plain subscription).
pub fn topics(root: &str, group: &str, nonce: &str) -> Result<(String, String), ProbeError> {
    // The root and group validated as for the data filter.
    let shared = if group.is_empty() {
        wire::Topics::filter(root, wire::Kind::Data)
    } else {
        wire::Topics::shared_filter(group, root, wire::Kind::Data)
    };
    shared.map_err(|e| ProbeError::Config(e.to_string()))?;
    let topic = format!("{root}/{}/_probe/{nonce}", wire::topics::TOPIC_VERSION);
    let filter = if group.is_empty() {
        topic.clone()
    } else {
        // The same construction as `Topics::shared_filter`'s.
        format!("$share/{group}/{topic}")
    };
    Ok((topic, filter))
}

/// The error text when nothing arrived.
fn not_delivered(group: &str, filter: &str, topic: &str) -> ProbeError {
    ProbeError::NotDelivered(if group.is_empty() {
        format!(
            "the broker confirmed the subscription {filter:?} and the QoS 1 publication to it, but \
             delivered nothing within {PROBE_WAIT:?}; refusing to start rather than lose data \
             silently. Check that the broker supports MQTT QoS 1 and that the ingest's identity may \
             subscribe and publish to {topic:?} (its ACL must allow {{root}}/v1/_probe/#)"
        )
    } else {
        format!(
            "the broker accepted the shared subscription {filter:?} but delivered nothing \
             published to {topic:?} within {PROBE_WAIT:?}: it does not implement MQTT shared \
             subscriptions ($share/{group}/…; NATS 2.9 takes the filter as a literal topic), so \
             every batch would be lost silently. Fix: set [mqtt] group = \"\" (plain subscription, \
             a single ingest replica), or use a broker with shared subscriptions (Mosquitto); if \
             the broker has them, check the ingest's ACL allows {{root}}/v1/_probe/#"
        )
    })
}

/// Where the probe is.
enum Step {
    /// Waiting for the connection.
    Connecting,
    /// Subscribed, waiting for the broker's answer.
    Subscribing,
    /// Published; waiting for the message until the deadline.
    Waiting(Instant),
}

/// Run the probe. `Ok(true)`: delivered; `Ok(false)`: shutdown came first.
pub async fn check(
    cfg: &IngestConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, ProbeError> {
    let (host, port) = cfg.broker_addr().map_err(ProbeError::Config)?;
    let root = cfg.mqtt.topic_root.as_str();
    let group = cfg.mqtt.group.as_str();
    let nonce = format!("{:016x}", rand::random::<u64>());
    let (topic, filter) = topics(root, group, &nonce)?;
    let base = cfg
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("cloud-ingest-{}", std::process::id()));
    let mut o = MqttOptions::new(format!("{base}-probe"), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    if let Some((u, p)) = cfg.mqtt_credentials().map_err(ProbeError::Config)? {
        o.set_credentials(u, p.expose());
    }
    let (client, mut events) = AsyncClient::new(o, 16);
    let mut step = Step::Connecting;
    let mut logged = false;
    let far = Instant::now() + Duration::from_secs(3600 * 24 * 365);
    loop {
        let deadline = match step {
            Step::Waiting(d) => d,
            _ => far,
        };
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = tokio::time::sleep_until(deadline) => {
                let _ = client.try_disconnect();
                return Err(not_delivered(group, &filter, &topic));
            }
            _ = shutdown.changed() => return Ok(false),
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                step = Step::Subscribing;
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                if s.return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    let _ = client.try_disconnect();
                    let root = root.to_owned();
                    return Err(ProbeError::Refused { filter, root });
                }
                let _ = client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, nonce.clone())
                    .await;
                step = Step::Waiting(Instant::now() + PROBE_WAIT);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                tracing::debug!(%filter, %topic, "delivery probe: the broker delivers what the ingest subscribes to");
                let _ = client.try_disconnect();
                return Ok(true);
            }
            Ok(_) => {}
            Err(e) => {
                if !logged {
                    tracing::warn!(broker = %cfg.mqtt.broker, error = %e, "delivery probe: broker connection failed; retrying");
                    logged = true;
                }
                // A new connection (clean session) subscribes and publishes again.
                step = Step::Connecting;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return Ok(false),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_topic_is_matched_by_no_wire_filter() {
        let (topic, filter) = topics("fs", "", "abc").unwrap();
        assert_eq!(topic, "fs/v1/_probe/abc");
        assert_eq!(filter, topic);
        // Two levels after v1: never a {site}/{agent}/{kind} topic.
        assert!(wire::Topics::parse("fs", &topic).is_err());
        let (_, shared) = topics("a/b", "ingest", "abc").unwrap();
        assert_eq!(shared, "$share/ingest/a/b/v1/_probe/abc");
        assert!(topics("fs", "bad/group", "x").is_err());
    }
}
