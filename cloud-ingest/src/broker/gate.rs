//! The embedded broker's gate: the only listener on `[broker] listen`. It terminates TLS when
//! configured (`tls.rs`), reads each CONNECT, lets [`policy`](super::policy) decide who the
//! client is and what it may do, checks every SUBSCRIBE filter and PUBLISH topic of the
//! connection against that, and forwards the rest to rumqttd on a loopback port that accepts
//! only a per-process random login. Broker → client bytes are copied untouched.
//!
//! Identities are agents: username (or certificate CN) `{site}/{agent}`, client id
//! `fs-{site}-{agent}` (the agent's default; rumqttd refuses a `/` in a client id, and a refused
//! id used again panics its connection bookkeeping, so the identity itself cannot be the client
//! id); it may publish its own data, birth, status and heartbeat (the Last Will only on its
//! status) and subscribe to its own ack and cmd. Nothing else, no wildcard, no `$share`. The
//! anonymous demo broker (loopback only) lets anything through but a client id rumqttd cannot
//! take. The ingest's own client connects to the internal listener directly.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::packet;
use super::policy::{self, Access, Login};
use super::BrokerError;
use crate::consume::ConsumerStats;

/// What every connection of the gate shares.
pub struct Gate {
    /// How agents log in.
    pub login: Login,
    /// The password file (mosquitto_passwd format), with `login.password`.
    pub password_file: Option<String>,
    /// TLS, when configured (client certificates required with `login.certificate`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
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
                tokio::spawn(accept(sock, peer, gate.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "embedded broker: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The TLS handshake (when configured) and the client certificate's identity, then the MQTT
/// connection.
async fn accept(sock: TcpStream, peer: SocketAddr, gate: Arc<Gate>) {
    let Some(tls) = gate.tls.clone() else {
        return connection(sock, peer, None, gate).await;
    };
    let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(sock)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(&gate, peer, "-", &format!("TLS handshake: {e}")),
        Err(_) => return refuse(&gate, peer, "-", "TLS handshake: not done within 10 s"),
    };
    let cn = if gate.login.certificate {
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match leaf.map(|c| super::tls::common_name(c)) {
            Some(Ok(cn)) => Some(cn),
            Some(Err(e)) => return refuse(&gate, peer, "-", &e),
            None => return refuse(&gate, peer, "-", "no client certificate"),
        }
    } else {
        None
    };
    connection(stream, peer, cn, gate).await
}

/// A client stream: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// Who a connection is, for the log: the certificate's CN, the username, or the anonymous
/// client id.
fn who(connect: &packet::Connect, cn: Option<&str>) -> String {
    match (cn, &connect.username) {
        (Some(cn), _) => cn.to_owned(),
        (None, Some(u)) => u.clone(),
        (None, None) => format!("anonymous client id {:?}", connect.client_id),
    }
}

async fn connection(mut sock: impl Stream, peer: SocketAddr, cn: Option<String>, gate: Arc<Gate>) {
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
        Err(e) => return refuse(&gate, peer, cn.as_deref().unwrap_or("-"), &e.to_string()),
    };
    let name = who(&connect, cn.as_deref());
    let verify = |user: &str, pw: &[u8]| match &gate.password_file {
        Some(file) => super::passwd::verify(file, user, pw),
        None => Ok(false),
    };
    let access = match policy::authorise(gate.login, &gate.root, &connect, cn.as_deref(), &verify) {
        Ok(a) => a,
        Err((code, why)) => {
            let _ = sock.write_all(&packet::connack(code)).await;
            let _ = sock.shutdown().await;
            return refuse(&gate, peer, &name, &format!("CONNECT: {why}"));
        }
    };
    if let Err(e) = relay(sock, &connect, &access, &gate).await {
        match e {
            BrokerError::Refused(what) => refuse(&gate, peer, &name, &what),
            e => {
                tracing::debug!(%peer, identity = name, error = %e, "embedded broker: connection ended")
            }
        }
    }
}

/// Forward the connection to rumqttd, checking each client → broker packet.
async fn relay(
    mut sock: impl Stream,
    connect: &packet::Connect,
    access: &Access,
    gate: &Gate,
) -> Result<(), BrokerError> {
    let mut upstream = TcpStream::connect(gate.internal).await?;
    let _ = upstream.set_nodelay(true);
    upstream
        .write_all(&packet::encode_connect(
            connect,
            &access.internal_client_id(connect),
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
    sock.write_all(&connack.bytes).await?;
    sock.flush().await?;
    let (cr, mut cw) = tokio::io::split(sock);
    let mut cr = tokio::io::BufReader::new(cr);
    let (mut ur, mut uw) = upstream.into_split();
    let down = async {
        tokio::io::copy(&mut ur, &mut cw).await?;
        Ok::<(), BrokerError>(())
    };
    let up = async {
        while let Some(f) = packet::read_frame(&mut cr, gate.max_packet).await? {
            policy::check(&f, access)?;
            uw.write_all(&f.bytes).await?;
        }
        Ok::<(), BrokerError>(())
    };
    tokio::select! {
        r = down => r,
        r = up => r,
    }
}
