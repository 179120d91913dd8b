//! MQTT 3.1.1 and MQTT 5 behind one small interface, so the uplink loop is written once
//! (rumqttc has a separate client per protocol version; the differences stay here).

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{ConnectionError, Event, LastWill, MqttOptions, Packet, QoS};

use super::config::UplinkConfig;
use super::error::UplinkError;
use super::Catalog;
use crate::model::now_ms;
use flowsquare_wire as wire;

/// What the connection reported.
#[derive(Debug)]
pub enum LinkEvent {
    /// The broker accepted the connection.
    Connected,
    /// A message arrived.
    Message {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// Our DISCONNECT went out.
    DisconnectSent,
    /// Anything else (acks, pings).
    Other,
    /// The connection failed; the text says why (with a hint for refused credentials).
    Failed(String),
}

/// The sending half (cheap to clone).
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

/// The receiving half (drives the connection). Its `poll` is not cancel-safe while connecting
/// (see [`Poller`]): poll it through a `Poller` wherever it races other futures.
pub enum Events {
    /// MQTT 3.1.1.
    V4(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
}

const MAX_PACKET: usize = 16 * 1024 * 1024;

/// TCP_NODELAY: acknowledgements and small batches must not wait for Nagle/delayed-ACK timers
/// (measured: ~40 ms per round trip without it, which caps the backlog drain).
fn nodelay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

fn hint(refused_auth: bool) -> &'static str {
    if refused_auth {
        " (check [uplink] credentials and the broker's password file/ACL)"
    } else {
        ""
    }
}

/// Connect options for `cfg` (credentials, TLS, Last Will), for the configured protocol.
pub fn open(
    cfg: &UplinkConfig,
    map: &impl Catalog,
    topics: &wire::Topics,
) -> Result<(Client, Events), UplinkError> {
    let addr = cfg.broker_addr().map_err(UplinkError::Config)?;
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("fs-{}-{}", map.site(), map.agent()));
    let creds = cfg.read_credentials().map_err(UplinkError::Config)?;
    let transport = if addr.tls {
        Some(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(super::run::tls_config(cfg)?)),
        ))
    } else {
        None
    };
    let will = wire::Status::last_will(now_ms()).encode();
    let keep_alive = cfg.keep_alive.max(Duration::from_secs(1));
    match cfg.protocol.as_str() {
        "5" => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, addr.host, addr.port);
            o.set_keep_alive(keep_alive);
            o.set_clean_start(true);
            o.set_max_packet_size(Some(MAX_PACKET as u32));
            o.set_last_will(p5::LastWill::new(
                topics.status(),
                will,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                true,
                None,
            ));
            if let Some((u, p)) = creds {
                o.set_credentials(u, p.expose());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, mut e) = rumqttc::v5::AsyncClient::new(o, 256);
            e.options.set_network_options(nodelay());
            Ok((Client::V5(c), Events::V5(Box::new(e))))
        }
        _ => {
            let mut o = MqttOptions::new(client_id, addr.host, addr.port);
            o.set_keep_alive(keep_alive);
            o.set_clean_session(true);
            o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
            o.set_inflight(u16::max(cfg.inflight, 10) + 10);
            o.set_last_will(LastWill::new(topics.status(), will, QoS::AtLeastOnce, true));
            if let Some((u, p)) = creds {
                o.set_credentials(u, p.expose());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, mut e) = rumqttc::AsyncClient::new(o, 256);
            e.set_network_options(nodelay());
            Ok((Client::V4(c), Events::V4(Box::new(e))))
        }
    }
}

impl Events {
    /// Drive the connection until something happens.
    pub async fn poll(&mut self) -> LinkEvent {
        match self {
            Events::V4(ev) => match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => LinkEvent::Connected,
                Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                },
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => LinkEvent::DisconnectSent,
                Ok(_) => LinkEvent::Other,
                Err(ConnectionError::ConnectionRefused(code)) => LinkEvent::Failed(format!(
                    "broker refused the connection: {code:?}{}",
                    hint(matches!(
                        code,
                        rumqttc::ConnectReturnCode::BadUserNamePassword
                            | rumqttc::ConnectReturnCode::NotAuthorized
                    ))
                )),
                Err(e) => LinkEvent::Failed(e.to_string()),
            },
            Events::V5(ev) => match ev.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(_))) => LinkEvent::Connected,
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Publish(p))) => LinkEvent::Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                },
                Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    LinkEvent::DisconnectSent
                }
                Ok(_) => LinkEvent::Other,
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                    LinkEvent::Failed(format!(
                        "broker refused the connection: {code:?}{}",
                        hint(matches!(
                            code,
                            p5::ConnectReturnCode::BadUserNamePassword
                                | p5::ConnectReturnCode::NotAuthorized
                        ))
                    ))
                }
                Err(e) => LinkEvent::Failed(e.to_string()),
            },
        }
    }
}

impl Client {
    /// Queue a publication without waiting; `false` if the client's queue is full.
    pub fn publish(&self, topic: String, qos1: bool, retain: bool, payload: Vec<u8>) -> bool {
        match self {
            Client::V4(c) => c
                .try_publish(
                    topic,
                    if qos1 {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    },
                    retain,
                    payload,
                )
                .is_ok(),
            Client::V5(c) => c
                .try_publish(
                    topic,
                    if qos1 {
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                    } else {
                        rumqttc::v5::mqttbytes::QoS::AtMostOnce
                    },
                    retain,
                    payload,
                )
                .is_ok(),
        }
    }

    /// Subscribe with QoS 1.
    pub fn subscribe(&self, topic: String) {
        // A full queue is retried at the next connection (subscribe happens on every ConnAck).
        let _ = match self {
            Client::V4(c) => c.try_subscribe(topic, QoS::AtLeastOnce).is_ok(),
            Client::V5(c) => c
                .try_subscribe(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .is_ok(),
        };
    }

    /// Send DISCONNECT.
    pub fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        };
    }
}

/// A cancel-safe way to poll [`Events`] inside `tokio::select!`.
///
/// rumqttc's `EventLoop::poll` opens the connection (TCP, TLS, CONNECT, wait for CONNACK) inside
/// the future it returns: dropping that future mid-handshake drops the half-open socket, the broker
/// sees the client vanish and publishes its retained "offline" Last Will, and the next poll starts
/// a second connection. The uplink loop races `poll` against a 50 ms tick, so any handshake slower
/// than a tick (TLS, a distant broker) was cut and restarted, 2–3 connections per start. A
/// `Poller` owns the event loop inside the poll in progress: when the future returned by
/// [`Poller::next`] is dropped, the poll is kept and the next call resumes it, so a handshake runs
/// to its end (or to rumqttc's own connection timeout) on one socket.
pub struct Poller {
    state: PollState,
}

type PollFuture = std::pin::Pin<Box<dyn std::future::Future<Output = (Events, LinkEvent)> + Send>>;

enum PollState {
    Idle(Events),
    Polling(PollFuture),
    /// Only between taking the event loop out of `Idle` and storing the poll in `Polling`.
    Moving,
}

impl Poller {
    /// Poll `events` through this.
    pub fn new(events: Events) -> Self {
        Poller {
            state: PollState::Idle(events),
        }
    }

    /// The next event. Cancel-safe: dropping the returned future keeps the poll in progress.
    pub async fn next(&mut self) -> LinkEvent {
        if let PollState::Idle(_) = self.state {
            if let PollState::Idle(mut events) =
                std::mem::replace(&mut self.state, PollState::Moving)
            {
                self.state = PollState::Polling(Box::pin(async move {
                    let ev = events.poll().await;
                    (events, ev)
                }));
            }
        }
        match &mut self.state {
            PollState::Polling(fut) => {
                let (events, ev) = fut.await;
                self.state = PollState::Idle(events);
                ev
            }
            // Unreachable: `Idle` was turned into `Polling` just above and nothing in between
            // can fail; kept total rather than panicking.
            PollState::Idle(_) | PollState::Moving => {
                LinkEvent::Failed("internal: the MQTT event loop is missing".into())
            }
        }
    }
}
