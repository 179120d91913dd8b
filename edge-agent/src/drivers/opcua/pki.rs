//! The agent's OPC UA PKI directory:
//!
//! ```text
//! <state dir>/pki/own/cert.der          the agent's application certificate (made once, reused)
//! <state dir>/pki/private/private.pem   its private key (0600)
//! <state dir>/pki/trusted/*.der         server certificates the engineer trusted
//! <state dir>/pki/rejected/*.der        server certificates seen but not trusted (yet)
//! ```
//!
//! A server certificate is never trusted automatically: the first connection to a secure
//! endpoint stores it under `rejected/` and fails; `edge-agent opcua certs trust` moves it to
//! `trusted/`.

use std::path::{Path, PathBuf};

use super::error::{OpcUaError, OpcUaResult};
use crate::config::TagMap;

/// The PKI directory of device `i` of `map`: its `pki_dir`, else `pki/` next to the buffer.
pub fn dir_for(map: &TagMap, i: usize) -> PathBuf {
    if let Some(p) = map
        .devices
        .get(i)
        .and_then(|d| d.driver.opcua())
        .and_then(|o| o.pki_dir.clone())
    {
        return p;
    }
    default_dir(map)
}

/// `pki/` next to the buffer database.
pub fn default_dir(map: &TagMap) -> PathBuf {
    let db = map.buffer.effective_path();
    db.parent()
        .map(|p| p.join("pki"))
        .unwrap_or_else(|| PathBuf::from("pki"))
}

/// The agent's certificate.
pub fn own_cert_path(pki: &Path) -> PathBuf {
    pki.join("own").join("cert.der")
}

/// The agent's private key.
pub fn own_key_path(pki: &Path) -> PathBuf {
    pki.join("private").join("private.pem")
}

/// Create the directory layout (the certificate itself is made by the client on first use).
pub fn ensure(pki: &Path) -> OpcUaResult<()> {
    for d in ["own", "private", "trusted", "rejected"] {
        let p = pki.join(d);
        std::fs::create_dir_all(&p)
            .map_err(|e| OpcUaError::Pki(format!("cannot create {}: {e}", p.display())))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ =
            std::fs::set_permissions(pki.join("private"), std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Make the agent's certificate now if it does not exist yet; returns its path. Existing ones
/// are kept (the servers trust that certificate).
pub fn ensure_own_certificate(pki: &Path) -> OpcUaResult<PathBuf> {
    ensure(pki)?;
    let cert = own_cert_path(pki);
    if cert.exists() && own_key_path(pki).exists() {
        return Ok(cert);
    }
    // The client creates the pair when it is built with create_sample_keypair.
    let _client = opcua::client::ClientBuilder::new()
        .application_name("FlowSquare edge agent")
        .application_uri(super::session::application_uri())
        .product_uri("urn:flowsquare:edge-agent")
        .pki_dir(pki)
        .create_sample_keypair(true)
        .client()
        .map_err(|e| OpcUaError::Pki(e.join("; ")))?;
    if cert.exists() {
        Ok(cert)
    } else {
        Err(OpcUaError::Pki(format!(
            "could not create {}",
            cert.display()
        )))
    }
}

/// A throw-away PKI directory for commands that persist nothing (`browse opcua`, `read`): a
/// temporary directory, holding a copy of the configured PKI's own certificate, key and trusted
/// server certificates when that PKI exists (so secure servers that trust the agent accept the
/// session), else nothing (the client makes a certificate there). Removed on drop, so no key
/// is left behind and the configured PKI is only read.
pub struct EphemeralPki {
    dir: PathBuf,
}

impl EphemeralPki {
    /// A fresh temporary PKI, seeded from `configured` when it exists.
    pub fn new(configured: Option<&Path>) -> OpcUaResult<Self> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "edge-agent-pki-{}-{}-{n}",
            std::process::id(),
            crate::model::now_ms()
        ));
        let me = EphemeralPki { dir };
        ensure(&me.dir)?;
        if let Some(src) = configured {
            me.seed(src)?;
        }
        Ok(me)
    }

    fn seed(&self, src: &Path) -> OpcUaResult<()> {
        let copy = |from: PathBuf, to: PathBuf| -> OpcUaResult<()> {
            std::fs::copy(&from, &to)
                .map(|_| ())
                .map_err(|e| OpcUaError::Pki(format!("cannot copy {}: {e}", from.display())))
        };
        if own_cert_path(src).is_file() && own_key_path(src).is_file() {
            copy(own_cert_path(src), own_cert_path(&self.dir))?;
            copy(own_key_path(src), own_key_path(&self.dir))?;
        }
        if let Ok(rd) = std::fs::read_dir(src.join("trusted")) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    copy(e.path(), self.dir.join("trusted").join(e.file_name()))?;
                }
            }
        }
        Ok(())
    }

    /// The directory to hand to the session.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EphemeralPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a listed certificate sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// The agent's own.
    Own,
    /// Trusted server certificate.
    Trusted,
    /// Seen, not trusted.
    Rejected,
}

impl CertState {
    /// Lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Own => "own",
            CertState::Trusted => "trusted",
            CertState::Rejected => "rejected",
        }
    }
}

/// One certificate of the PKI directory.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Own, trusted or rejected.
    pub state: CertState,
    /// File.
    pub path: PathBuf,
    /// SHA-1 thumbprint, hex.
    pub thumbprint: String,
    /// Subject.
    pub subject: String,
    /// Common name.
    pub common_name: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
}

fn info(state: CertState, path: &Path) -> Option<CertInfo> {
    let cert = opcua::crypto::CertificateStore::read_cert(path).ok()?;
    Some(CertInfo {
        state,
        path: path.to_path_buf(),
        thumbprint: cert.thumbprint().as_hex_string(),
        subject: cert.subject_name(),
        common_name: cert.common_name().unwrap_or_default(),
        not_after: cert.not_after().map(|t| t.to_rfc3339()).unwrap_or_default(),
    })
}

/// Every certificate in the directory: own, trusted, rejected.
pub fn list(pki: &Path) -> Vec<CertInfo> {
    let mut out = Vec::new();
    if let Some(i) = info(CertState::Own, &own_cert_path(pki)) {
        out.push(i);
    }
    for (state, sub) in [
        (CertState::Trusted, "trusted"),
        (CertState::Rejected, "rejected"),
    ] {
        let Ok(rd) = std::fs::read_dir(pki.join(sub)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            if f.is_file() {
                if let Some(i) = info(state, &f) {
                    out.push(i);
                }
            }
        }
    }
    out
}

/// Move the certificate whose thumbprint starts with `prefix` (or whose file name is `prefix`)
/// from `from` to `to`; returns the new path.
fn move_cert(pki: &Path, prefix: &str, from: CertState, to: &str) -> OpcUaResult<PathBuf> {
    let p = prefix.to_ascii_lowercase();
    let matches: Vec<CertInfo> = list(pki)
        .into_iter()
        .filter(|c| c.state == from)
        .filter(|c| {
            c.thumbprint.to_ascii_lowercase().starts_with(&p)
                || c.path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy() == prefix)
        })
        .collect();
    match matches.as_slice() {
        [one] => {
            let name = one
                .path
                .file_name()
                .ok_or_else(|| OpcUaError::Pki("certificate without a file name".into()))?;
            let dest = pki.join(to).join(name);
            std::fs::create_dir_all(pki.join(to))
                .and_then(|_| std::fs::rename(&one.path, &dest))
                .map_err(|e| OpcUaError::Pki(format!("cannot move {}: {e}", one.path.display())))?;
            Ok(dest)
        }
        [] => Err(OpcUaError::Pki(format!(
            "no {} certificate matches {prefix:?} (edge-agent opcua certs list shows them)",
            from.as_str()
        ))),
        _ => Err(OpcUaError::Pki(format!(
            "{} {} certificates match {prefix:?}; give more of the thumbprint",
            matches.len(),
            from.as_str()
        ))),
    }
}

/// Trust a rejected server certificate.
pub fn trust(pki: &Path, prefix: &str) -> OpcUaResult<PathBuf> {
    move_cert(pki, prefix, CertState::Rejected, "trusted")
}

/// Withdraw trust from a server certificate.
pub fn reject(pki: &Path, prefix: &str) -> OpcUaResult<PathBuf> {
    move_cert(pki, prefix, CertState::Trusted, "rejected")
}

/// Trust a certificate file given directly (e.g. exported from the server's configuration tool).
pub fn trust_file(pki: &Path, file: &Path) -> OpcUaResult<PathBuf> {
    ensure(pki)?;
    let cert = opcua::crypto::CertificateStore::read_cert(file).map_err(OpcUaError::Pki)?;
    let der = cert
        .to_der()
        .map_err(|e| OpcUaError::Pki(format!("{}: {e}", file.display())))?;
    // The store finds trusted certificates by this file name.
    let dest = pki
        .join("trusted")
        .join(opcua::crypto::CertificateStore::cert_file_name(&cert));
    std::fs::write(&dest, der).map_err(|e| OpcUaError::Pki(format!("{}: {e}", dest.display())))?;
    Ok(dest)
}
