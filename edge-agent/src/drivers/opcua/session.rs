//! One OPC UA session: connect (security policy/mode, identity, the agent's PKI), resolve node
//! references, read, write, browse, close. The library's own reconnect is switched off: when the
//! connection is lost, [`OpcUaSession::lost`] fires and the run loop builds a fresh session
//! (and subscription, and resolves the nodes again) with its own backoff — a session never stays
//! wedged.
//!
//! This is also the API other features bind to (gantry event capture over OPC UA):
//! [`OpcUaSession::read_nodes`] and [`OpcUaSession::write_value`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opcua::client::{ClientBuilder, IdentityToken, Password, Session, SessionPollResult};
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, DataValue, NodeClassMask,
    NodeId, ReadValueId, ReferenceDescription, ReferenceTypeId, StatusCode, TimestampsToReturn,
    Variant, WriteValue,
};
use tokio::sync::watch;

use super::config::{Auth, NodeRef, OpcUaDevice, PasswordSource};
use super::error::{OpcUaError, OpcUaResult};

/// A connected session.
pub struct OpcUaSession {
    session: Arc<Session>,
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
    namespaces: Vec<String>,
    max_nodes: usize,
    timeout: Duration,
}

/// Read the password of a `username` device.
pub fn read_password(src: &PasswordSource) -> OpcUaResult<String> {
    src.source()
        .read()
        .map(|p| p.expose().to_owned())
        .map_err(|e| OpcUaError::Credentials(format!("password: {e}")))
}

fn identity(dev: &OpcUaDevice, pki: &Path) -> OpcUaResult<IdentityToken> {
    match &dev.auth {
        Auth::Anonymous => Ok(IdentityToken::Anonymous),
        Auth::Username { username, password } => Ok(IdentityToken::UserName(
            username.clone(),
            Password::new(read_password(password)?),
        )),
        Auth::Certificate { files } => {
            let (cert, key) = match files {
                Some((c, k)) => (c.clone(), k.clone()),
                None => (
                    super::pki::own_cert_path(pki),
                    super::pki::own_key_path(pki),
                ),
            };
            IdentityToken::new_x509_path(&cert, &key).map_err(|e| {
                OpcUaError::Pki(format!(
                    "user certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })
        }
    }
}

fn connect_error(dev: &OpcUaDevice, status: StatusCode, detail: String, pki: &Path) -> OpcUaError {
    let hint = match status {
        StatusCode::BadCertificateUntrusted
        | StatusCode::BadSecurityChecksFailed
        | StatusCode::BadCertificateInvalid
        | StatusCode::BadCertificateHostNameInvalid
        | StatusCode::BadCertificateUriInvalid => format!(
            " — if the server certificate is new, check it and trust it: edge-agent opcua certs list --pki-dir {} (then `trust`); the server must also trust the agent's certificate ({})",
            pki.display(),
            super::pki::own_cert_path(pki).display()
        ),
        StatusCode::BadIdentityTokenRejected | StatusCode::BadUserAccessDenied | StatusCode::BadIdentityTokenInvalid => {
            " — check auth / username / password".to_owned()
        }
        StatusCode::BadTcpEndpointUrlInvalid => format!(
            " — the server offers no endpoint with security_policy {:?} and security_mode {:?} at this URL (edge-agent browse opcua lists them)",
            dev.security_policy.as_str(),
            dev.security_mode.as_str()
        ),
        _ => String::new(),
    };
    OpcUaError::Connect {
        endpoint: dev.endpoint.clone(),
        detail: format!("{detail}{hint}"),
        status: Some(status),
    }
}

impl OpcUaSession {
    /// Open a session to `dev` with the agent's certificate in `pki` (created there for
    /// `who` on first use and reused afterwards; the client presents the certificate's
    /// application URI).
    pub async fn connect(
        dev: &OpcUaDevice,
        pki: &Path,
        who: &super::pki::Identity,
        session_name: &str,
    ) -> OpcUaResult<Self> {
        let uri = super::pki::ensure_own_certificate(pki, who)?;
        let token = identity(dev, pki)?;
        let keep_alive =
            (dev.session_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let mut client = ClientBuilder::new()
            .application_name("FlowSquare edge agent")
            .application_uri(uri)
            .product_uri("urn:flowsquare:edge-agent")
            .pki_dir(pki)
            .create_sample_keypair(false)
            .trust_server_certs(false)
            .verify_server_certs(dev.verify_server_certificate)
            .session_retry_limit(0)
            .recreate_subscriptions(false)
            .session_timeout(u32::try_from(dev.session_timeout.as_millis()).unwrap_or(u32::MAX))
            .request_timeout(dev.request_timeout)
            .keep_alive_interval(keep_alive)
            .max_failed_keep_alive_count(3)
            // A publish response carries one notification per changed item: the library's
            // default limits (1,000 array elements) would drop a session of 5,000 items.
            .max_array_length(1_000_000)
            .max_message_size(64 * 1024 * 1024)
            .max_chunk_count(4096)
            .session_name(session_name)
            .client()
            .map_err(|e| OpcUaError::Pki(e.join("; ")))?;
        let endpoint = (
            dev.endpoint.as_str(),
            dev.security_policy.to_ua().to_str(),
            dev.security_mode.to_ua(),
        );
        let timeout = dev.request_timeout * 3;
        let (session, event_loop) = tokio::time::timeout(
            timeout,
            client.connect_to_matching_endpoint(endpoint, token),
        )
        .await
        .map_err(|_| OpcUaError::Connect {
            endpoint: dev.endpoint.clone(),
            detail: "no answer to GetEndpoints".into(),
            status: Some(StatusCode::BadTimeout),
        })?
        .map_err(|e| connect_error(dev, e.status(), e.to_string(), pki))?;

        let (lost_tx, lost) = watch::channel(None);
        let (up_tx, up_rx) = tokio::sync::oneshot::channel::<Result<(), StatusCode>>();
        let task = tokio::spawn(async move {
            let stream = event_loop.enter();
            futures::pin_mut!(stream);
            let mut up_tx = Some(up_tx);
            let reason = loop {
                match stream.next().await {
                    Some(Ok(SessionPollResult::Reconnected(_))) => {
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                        break format!("connection lost: {code}");
                    }
                    Some(Ok(SessionPollResult::ReconnectFailed(code))) | Some(Err(code)) => {
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(Err(code));
                        }
                        break format!("connect failed: {code}");
                    }
                    Some(Ok(_)) => {}
                    None => break "session closed".to_owned(),
                }
            };
            let _ = lost_tx.send(Some(reason));
        });
        let up = tokio::time::timeout(timeout, up_rx).await;
        let fail = |status: StatusCode, detail: String| {
            task.abort();
            Err(connect_error(dev, status, detail, pki))
        };
        match up {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(code))) => return fail(code, format!("session not created: {code}")),
            Ok(Err(_)) => return fail(StatusCode::BadUnexpectedError, "session loop ended".into()),
            Err(_) => return fail(StatusCode::BadTimeout, "session not created in time".into()),
        }
        let mut s = OpcUaSession {
            session,
            lost,
            task,
            namespaces: Vec::new(),
            max_nodes: dev.max_nodes_per_request,
            timeout: dev.request_timeout,
        };
        s.namespaces = s.read_namespaces().await?;
        Ok(s)
    }

    /// The underlying library session (for services not wrapped here).
    pub fn inner(&self) -> &Arc<Session> {
        &self.session
    }

    /// Fires (with the reason) when the connection is lost.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// The server's namespace array, read at connect.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    async fn read_namespaces(&self) -> OpcUaResult<Vec<String>> {
        let v = self
            .read_nodes(&[NodeId::from(
                opcua::types::VariableId::Server_NamespaceArray,
            )])
            .await?;
        Ok(match v.first().and_then(|d| d.value.as_ref()) {
            Some(Variant::Array(a)) => a
                .values
                .iter()
                .map(|v| match v {
                    Variant::String(s) => s.as_ref().to_owned(),
                    _ => String::new(),
                })
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Resolve tag-map node references against this server (namespace URIs → indexes).
    pub fn resolve(&self, r: &NodeRef) -> Result<NodeId, String> {
        match &r.namespace_uri {
            None => Ok(r.node.clone()),
            Some(uri) => match self.namespaces.iter().position(|n| n == uri) {
                Some(i) => {
                    let mut n = r.node.clone();
                    n.namespace = u16::try_from(i).map_err(|_| "namespace index too large")?;
                    Ok(n)
                }
                None => Err(format!("namespace {uri:?} not on this server")),
            },
        }
    }

    /// Read the Value attribute of `nodes` (one DataValue each, in order; bad statuses per node
    /// are in the DataValues). Split into requests of at most `max_nodes_per_request`.
    pub async fn read_nodes(&self, nodes: &[NodeId]) -> OpcUaResult<Vec<DataValue>> {
        let mut out = Vec::with_capacity(nodes.len());
        for chunk in nodes.chunks(self.max_nodes.max(1)) {
            let ids: Vec<ReadValueId> = chunk
                .iter()
                .map(|n| ReadValueId {
                    node_id: n.clone(),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                })
                .collect();
            let r = tokio::time::timeout(
                self.timeout,
                self.session.read(&ids, TimestampsToReturn::Both, 0.0),
            )
            .await
            .map_err(|_| OpcUaError::Service {
                service: "Read",
                status: StatusCode::BadTimeout,
            })?
            .map_err(|e| OpcUaError::service("Read", e))?;
            if r.len() != chunk.len() {
                return Err(OpcUaError::Service {
                    service: "Read",
                    status: StatusCode::BadUnexpectedError,
                });
            }
            out.extend(r);
        }
        Ok(out)
    }

    /// Write one value to the Value attribute of `node`; the server's status for the node.
    pub async fn write_value(&self, node: &NodeId, value: Variant) -> OpcUaResult<StatusCode> {
        let w = WriteValue {
            node_id: node.clone(),
            attribute_id: AttributeId::Value as u32,
            value: DataValue::value_only(value),
            ..Default::default()
        };
        let r = tokio::time::timeout(self.timeout, self.session.write(&[w]))
            .await
            .map_err(|_| OpcUaError::Service {
                service: "Write",
                status: StatusCode::BadTimeout,
            })?
            .map_err(|e| OpcUaError::service("Write", e))?;
        Ok(r.first().copied().unwrap_or(StatusCode::BadUnexpectedError))
    }

    /// The forward hierarchical references of `node` (children), following continuation points.
    pub async fn browse(&self, node: &NodeId) -> OpcUaResult<Vec<ReferenceDescription>> {
        let d = BrowseDescription {
            node_id: node.clone(),
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: (NodeClassMask::OBJECT | NodeClassMask::VARIABLE).bits(),
            result_mask: BrowseResultMask::All as u32,
        };
        let mut out = Vec::new();
        let r = self
            .session
            .browse(&[d], 1000, None)
            .await
            .map_err(|e| OpcUaError::service("Browse", e))?;
        let mut next = None;
        for b in r {
            if !b.status_code.is_good() {
                return Err(OpcUaError::Service {
                    service: "Browse",
                    status: b.status_code,
                });
            }
            out.extend(b.references.unwrap_or_default());
            if !b.continuation_point.is_null() {
                next = Some(b.continuation_point);
            }
        }
        while let Some(cp) = next.take() {
            let r = self
                .session
                .browse_next(false, &[cp])
                .await
                .map_err(|e| OpcUaError::service("BrowseNext", e))?;
            for b in r {
                out.extend(b.references.unwrap_or_default());
                if !b.continuation_point.is_null() {
                    next = Some(b.continuation_point);
                }
            }
        }
        Ok(out)
    }

    /// Close the session (subscriptions deleted) and stop its event loop.
    pub async fn close(self) {
        let _ = tokio::time::timeout(self.timeout, self.session.disconnect()).await;
        self.task.abort();
    }
}

impl Drop for OpcUaSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}
