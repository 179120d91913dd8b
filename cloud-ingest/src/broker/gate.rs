//! The embedded broker's gate: the only listener on `[broker] listen` when a password file is
//! configured. It authenticates each CONNECT against the password file, binds the client id to
//! the identity, checks every SUBSCRIBE filter and PUBLISH topic of the connection against the
//! agent's own topics, and forwards the rest to rumqttd on a loopback port that accepts only
//! a per-process random login. Broker → client bytes are copied untouched.
//!
//! Identities are agents: username `{site}/{agent}`, client id `fs-{site}-{agent}` (the agent's
//! default; rumqttd refuses a `/` in a client id, and a refused id used again panics its
//! connection bookkeeping, so the username itself cannot be the client id); it may publish its own data, birth, status and heartbeat (the Last
//! Will only on its status) and subscribe to its own ack and cmd. Nothing else, no wildcard,
//! no `$share`. The ingest's own client connects to the internal listener directly.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use flowsquare_wire as wire;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::packet::{self, Frame};
use super::BrokerError;
use crate::consume::ConsumerStats;

/// What every connection of the gate shares.
pub struct Gate {
    /// The password file (mosquitto_passwd format).
    pub password_file: String,
    /// The topic root agents publish under.
    pub root: String,
    /// rumqttd's internal listener and its login.
    pub internal: SocketAddr,
    /// Internal username.
    pub user: String,
    /// Internal password.
    pub password: String,
    /// Largest packet body accepted.
    pub max_packet: usize,
    /// Counters (`broker_refused`).
    pub stats: Arc<ConsumerStats>,
}

/// A refusal: logged with the identity and the topic, counted, the connection closed.
fn refuse(gate: &Gate, peer: SocketAddr, who: &str, what: &str) {
    gate.stats.broker_refused.fetch_add(1, Relaxed);
    tracing::warn!(%peer, identity = who, refused = what, "embedded broker: refused, connection closed");
}

/// Accept connections until the listener fails.
pub async fn run(listener: TcpListener, gate: Arc<Gate>) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(connection(sock, peer, gate.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "embedded broker: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The topics an authenticated agent may use.
struct Agent {
    name: String,
    publish: [String; 4],
    subscribe: [String; 2],
}

/// Check the login of `c`: the agent it is, or the CONNACK code and the reason.
fn authorise(gate: &Gate, c: &packet::Connect) -> Result<Agent, (u8, String)> {
    let (Some(user), Some(pw)) = (&c.username, &c.password) else {
        return Err((
            packet::BAD_LOGIN,
            "CONNECT without username and password".into(),
        ));
    };
    match super::passwd::verify(&gate.password_file, user, pw) {
        Ok(true) => {}
        Ok(false) => return Err((packet::BAD_LOGIN, "wrong username or password".into())),
        Err(e) => return Err((packet::NOT_AUTHORISED, e.to_string())),
    }
    let topics = user
        .split_once('/')
        .and_then(|(site, agent)| wire::Topics::new(&gate.root, site, agent).ok())
        .ok_or((
            packet::NOT_AUTHORISED,
            "username is not an agent identity <site>/<agent>".into(),
        ))?;
    let bound = format!("fs-{}-{}", topics.site(), topics.agent());
    if c.client_id != bound {
        return Err((
            packet::NOT_AUTHORISED,
            format!("client id {:?} (must be {bound:?})", c.client_id),
        ));
    }
    if let Some((will, _)) = &c.will {
        if *will != topics.status() {
            return Err((packet::NOT_AUTHORISED, format!("Last Will on {will}")));
        }
    }
    Ok(Agent {
        name: user.clone(),
        publish: [
            topics.data(),
            topics.birth(),
            topics.status(),
            topics.heartbeat(),
        ],
        subscribe: [topics.ack(), topics.cmd()],
    })
}

async fn connection(mut sock: TcpStream, peer: SocketAddr, gate: Arc<Gate>) {
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        packet::read_frame(&mut sock, gate.max_packet),
    )
    .await;
    let connect = match first {
        Ok(Ok(Some(f))) => packet::parse_connect(&f),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BrokerError::Protocol("no CONNECT within 10 s".into())),
    };
    let connect = match connect {
        Ok(c) => c,
        Err(e) => return refuse(&gate, peer, "-", &e.to_string()),
    };
    let agent = match authorise(&gate, &connect) {
        Ok(a) => a,
        Err((code, why)) => {
            let _ = sock.write_all(&packet::connack(code)).await;
            let who = connect.username.as_deref().unwrap_or("-");
            return refuse(&gate, peer, who, &format!("CONNECT: {why}"));
        }
    };
    if let Err(e) = relay(sock, &connect, &agent, &gate).await {
        match e {
            BrokerError::Refused(what) => refuse(&gate, peer, &agent.name, &what),
            e => {
                tracing::debug!(%peer, identity = agent.name, error = %e, "embedded broker: connection ended")
            }
        }
    }
}

/// Forward the connection to rumqttd, checking each client → broker packet.
async fn relay(
    sock: TcpStream,
    connect: &packet::Connect,
    agent: &Agent,
    gate: &Gate,
) -> Result<(), BrokerError> {
    let mut upstream = TcpStream::connect(gate.internal).await?;
    let _ = upstream.set_nodelay(true);
    upstream
        .write_all(&packet::encode_connect(
            connect,
            &gate.user,
            &gate.password,
        )?)
        .await?;
    // Wait for rumqttd's CONNACK before passing anything on: a connection it loses before
    // answering leaves a stale entry that makes the next login with that client id panic it.
    let connack = tokio::time::timeout(
        Duration::from_secs(10),
        packet::read_frame(&mut upstream, 16),
    )
    .await
    .map_err(|_| BrokerError::Protocol("no CONNACK from the internal broker".into()))??;
    let Some(connack) = connack.filter(|f| f.kind() == packet::CONNACK) else {
        return Err(BrokerError::Protocol(
            "the internal broker did not answer CONNECT".into(),
        ));
    };
    let mut sock = sock;
    sock.write_all(&connack.bytes).await?;
    let (cr, mut cw) = sock.into_split();
    let mut cr = tokio::io::BufReader::new(cr);
    let (mut ur, mut uw) = upstream.into_split();
    let down = async {
        tokio::io::copy(&mut ur, &mut cw).await?;
        Ok::<(), BrokerError>(())
    };
    let up = async {
        while let Some(f) = packet::read_frame(&mut cr, gate.max_packet).await? {
            check(&f, agent)?;
            uw.write_all(&f.bytes).await?;
        }
        Ok::<(), BrokerError>(())
    };
    tokio::select! {
        r = down => r,
        r = up => r,
    }
}

/// Whether the agent may send `f`; a refusal names the topic.
fn check(f: &Frame, agent: &Agent) -> Result<(), BrokerError> {
    match f.kind() {
        packet::PUBLISH => {
            let topic = packet::publish_topic(f)?;
            if !agent.publish.contains(&topic) {
                return Err(BrokerError::Refused(format!("PUBLISH on {topic}")));
            }
        }
        packet::SUBSCRIBE => {
            for filter in packet::subscribe_filters(f)? {
                if !agent.subscribe.contains(&filter) {
                    return Err(BrokerError::Refused(format!("SUBSCRIBE to {filter}")));
                }
            }
        }
        packet::CONNECT => return Err(BrokerError::Refused("a second CONNECT".into())),
        _ => {}
    }
    Ok(())
}
