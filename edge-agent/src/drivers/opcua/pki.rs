//! The agent's OPC UA PKI directory:
//!
//! ```text
//! <state dir>/pki/own/cert.der          the agent's application certificate (made once for
//!                                       `[agent] site`/`id`, reused; `certs renew` replaces it)
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
use crate::drivers::{AgentContext, Device};

/// The PKI directory of `device` (in `agent`): its `pki_dir`, else `pki/` next to the buffer.
pub fn dir_for(device: &Device, agent: &AgentContext) -> PathBuf {
    if let Some(p) = device.driver.opcua().and_then(|o| o.pki_dir.clone()) {
        return p;
    }
    default_dir(agent)
}

/// `pki/` next to the buffer database.
pub fn default_dir(agent: &AgentContext) -> PathBuf {
    agent
        .buffer_path
        .parent()
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

/// Create the directory layout (the certificate itself is made by the client on first use):
/// the directories it creates are 0700, and `private/` is made 0700 even if it existed.
pub fn ensure(pki: &Path) -> OpcUaResult<()> {
    for d in ["own", "private", "trusted", "rejected"] {
        let p = pki.join(d);
        flowsquare_service::private::create_dir_all(&p)
            .map_err(|e| OpcUaError::Pki(format!("cannot create {}: {e}", p.display())))?;
    }
    use std::os::unix::fs::PermissionsExt;
    let private = pki.join("private");
    std::fs::set_permissions(
        &private,
        std::fs::Permissions::from_mode(flowsquare_service::private::DIR_MODE),
    )
    .map_err(|e| OpcUaError::Pki(format!("cannot restrict {}: {e}", private.display())))?;
    Ok(())
}

/// Days the agent's certificate is valid (2 years; `edge-agent opcua certs renew` makes the next).
pub const VALIDITY_DAYS: u32 = 730;

/// Application URI of certificates made before the identity came from `[agent]` (still accepted
/// for sessions until the pair is renewed).
pub const LEGACY_APPLICATION_URI: &str = "urn:flowsquare:edge-agent";

/// Who the agent is towards OPC UA servers: its certificate's subject and application URI, made
/// from `[agent] site` and `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `[agent] site`.
    pub site: String,
    /// `[agent] id`.
    pub id: String,
}

impl Identity {
    /// The identity of site `site`, agent `id`.
    pub fn new(site: &str, id: &str) -> Self {
        Identity {
            site: site.to_owned(),
            id: id.to_owned(),
        }
    }

    /// The identity of the tag map's `[agent]`.
    pub fn of(agent: &AgentContext) -> Self {
        Identity::new(&agent.site, &agent.id)
    }

    /// `urn:flowsquare:edge-agent:{site}:{id}` (characters outside letters, digits and `-._~`
    /// percent-encoded). The client's ApplicationDescription carries the same URI.
    pub fn application_uri(&self) -> String {
        format!(
            "urn:flowsquare:edge-agent:{}:{}",
            uri_part(&self.site),
            uri_part(&self.id)
        )
    }

    /// Subject common name: `flowsquare-edge-agent {site}/{id}`.
    pub fn common_name(&self) -> String {
        name_part(&format!("flowsquare-edge-agent {}/{}", self.site, self.id))
    }

    /// Subject `CN=… O=FlowSquare OU={site}`.
    pub fn x509_data(&self) -> opcua::crypto::X509Data {
        opcua::crypto::X509Data {
            key_size: 2048,
            common_name: self.common_name(),
            organization: "FlowSquare".to_owned(),
            organizational_unit: name_part(&self.site),
            country: String::new(),
            state: String::new(),
            // The application URI first (servers compare it with the ApplicationDescription),
            // then this computer's host names.
            alt_host_names: opcua::crypto::X509Data::alt_host_names(
                &self.application_uri(),
                None,
                false,
                true,
                false,
            ),
            certificate_duration_days: VALIDITY_DAYS,
        }
    }

    /// Whether `cert` was made for this identity (common name and application URI).
    pub fn matches(&self, cert: &opcua::crypto::X509) -> bool {
        // Compared as text: the subject starts with the common name the agent writes.
        cert.subject_name()
            .starts_with(&format!("CN={},", self.common_name()))
            && certificate_uri(cert).as_deref() == Some(self.application_uri().as_str())
    }
}

fn uri_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Subject names are written as RFC 4514 text: characters with a meaning there become `_`.
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| if ",+=\"\\<>;#".contains(c) { '_' } else { c })
        .collect()
}

/// Write a new pair for `identity` (overwriting the current one).
fn create_pair(pki: &Path, identity: &Identity) -> OpcUaResult<()> {
    ensure(pki)?;
    opcua::crypto::CertificateStore::create_certificate_and_key(
        &identity.x509_data(),
        true,
        &own_cert_path(pki),
        &own_key_path(pki),
    )
    .map_err(|e| OpcUaError::Pki(format!("cannot create the agent's certificate: {e}")))?;
    let key = own_key_path(pki);
    flowsquare_service::private::restrict_file(&key)
        .map_err(|e| OpcUaError::Pki(format!("cannot restrict {}: {e}", key.display())))?;
    Ok(())
}

/// Make the agent's certificate for `identity` if it does not exist yet; returns the application
/// URI the client must present (the certificate's). An existing pair is never replaced here (the
/// servers trust that certificate): one made for another identity (the old sample subject, or
/// another site/id) is used as it is, with a warning to run `edge-agent opcua certs renew`.
pub fn ensure_own_certificate(pki: &Path, identity: &Identity) -> OpcUaResult<String> {
    ensure(pki)?;
    let cert = own_cert_path(pki);
    if !(cert.exists() && own_key_path(pki).exists()) {
        create_pair(pki, identity)?;
        return Ok(identity.application_uri());
    }
    let x = opcua::crypto::CertificateStore::read_cert(&cert).map_err(OpcUaError::Pki)?;
    if identity.matches(&x) {
        return Ok(identity.application_uri());
    }
    warn_once(pki, identity, &x);
    Ok(certificate_uri(&x).unwrap_or_else(|| LEGACY_APPLICATION_URI.to_owned()))
}

fn warn_once(pki: &Path, identity: &Identity, x: &opcua::crypto::X509) {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut w = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if w.iter().any(|p| p == pki) {
        return;
    }
    w.push(pki.to_path_buf());
    tracing::warn!(
        pki = %pki.display(),
        subject = %x.subject_name(),
        expected_cn = %identity.common_name(),
        expected_uri = %identity.application_uri(),
        "the agent's OPC UA certificate was made for another identity (sample subject or another site/id); \
         it is still used — run `edge-agent opcua certs renew --config <tag map>` and have the servers trust the new one"
    );
}

/// The application URI (first URI subject alternative name) of `x`, read from its DER: the
/// library has no getter. `None` when there is none.
pub fn certificate_uri(x: &opcua::crypto::X509) -> Option<String> {
    let der = x.to_der().ok()?;
    // subjectAltName OID 2.5.29.17, then the first [6] uniformResourceIdentifier (short length).
    const SAN: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x11];
    let at = der.windows(SAN.len()).position(|w| w == SAN)? + SAN.len();
    let rest = der.get(at..)?;
    let i = rest.windows(2).position(|w| w[0] == 0x86 && w[1] < 0x80)?;
    let len = usize::from(*rest.get(i + 1)?);
    let bytes = rest.get(i + 2..i + 2 + len)?;
    String::from_utf8(bytes.to_vec()).ok()
}

/// What `certs show` prints about the agent's certificate.
#[derive(Debug, Clone)]
pub struct OwnCert {
    /// Certificate file.
    pub path: PathBuf,
    /// Subject.
    pub subject: String,
    /// Application URI.
    pub application_uri: String,
    /// Valid from, RFC 3339.
    pub not_before: String,
    /// Valid until, RFC 3339.
    pub not_after: String,
    /// SHA-1 thumbprint, hex.
    pub thumbprint: String,
    /// Made for the expected identity.
    pub matches: bool,
}

/// The agent's certificate as `identity` expects it, or an error when there is none.
pub fn own_certificate(pki: &Path, identity: &Identity) -> OpcUaResult<OwnCert> {
    let path = own_cert_path(pki);
    let x = opcua::crypto::CertificateStore::read_cert(&path).map_err(|e| {
        OpcUaError::Pki(format!(
            "no agent certificate at {} ({e}); `edge-agent opcua certs renew` makes one",
            path.display()
        ))
    })?;
    Ok(OwnCert {
        subject: x.subject_name(),
        application_uri: certificate_uri(&x).unwrap_or_default(),
        not_before: x.not_before().map(|t| t.to_rfc3339()).unwrap_or_default(),
        not_after: x.not_after().map(|t| t.to_rfc3339()).unwrap_or_default(),
        thumbprint: x.thumbprint().as_hex_string(),
        matches: identity.matches(&x),
        path,
    })
}

/// Replace the agent's pair with a new one for `identity`; the old certificate and key are kept
/// beside them as `cert.der.<UTC time>.bak` / `private.pem.<UTC time>.bak`. Returns the backups.
pub fn renew(pki: &Path, identity: &Identity) -> OpcUaResult<Vec<PathBuf>> {
    ensure(pki)?;
    let stamp = opcua::types::DateTime::now()
        .as_chrono()
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut backups = Vec::new();
    for p in [own_cert_path(pki), own_key_path(pki)] {
        if p.exists() {
            let mut name = p.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".{stamp}.bak"));
            let b = p.with_file_name(name);
            std::fs::rename(&p, &b)
                .map_err(|e| OpcUaError::Pki(format!("cannot back up {}: {e}", p.display())))?;
            backups.push(b);
        }
    }
    create_pair(pki, identity)?;
    Ok(backups)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_site_and_id() {
        let who = Identity::new("rotterdam-t2", "gw-01");
        assert_eq!(
            who.application_uri(),
            "urn:flowsquare:edge-agent:rotterdam-t2:gw-01"
        );
        assert_eq!(
            who.common_name(),
            "flowsquare-edge-agent rotterdam-t2/gw-01"
        );
        let x = who.x509_data();
        assert_eq!(x.organization, "FlowSquare");
        assert_eq!(x.organizational_unit, "rotterdam-t2");
        assert!(x.country.is_empty() && x.state.is_empty());
        assert_eq!(x.certificate_duration_days, VALIDITY_DAYS);
        // Odd characters cannot break the URI or the subject.
        let odd = Identity::new("Port A,B", "gw 1");
        assert_eq!(
            odd.application_uri(),
            "urn:flowsquare:edge-agent:Port%20A%2CB:gw%201"
        );
        assert_eq!(odd.common_name(), "flowsquare-edge-agent Port A_B/gw 1");
    }

    #[test]
    fn the_certificate_carries_the_identity_and_renew_keeps_the_old_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        let who = Identity::new("s1", "a1");
        assert_eq!(
            ensure_own_certificate(&pki, &who).expect("made"),
            who.application_uri()
        );
        let c = own_certificate(&pki, &who).expect("own");
        assert!(c.matches, "{c:?}");
        // Made by the agent: every PKI directory 0700, the private key 0600.
        let mode = |p: &Path| flowsquare_service::private::mode_of(p).expect("mode");
        for d in ["", "own", "private", "trusted", "rejected"] {
            assert_eq!(mode(&pki.join(d)), 0o700, "{d}");
        }
        assert_eq!(mode(&own_key_path(&pki)), 0o600);
        assert_eq!(c.application_uri, who.application_uri());
        assert!(
            c.subject.contains("CN=flowsquare-edge-agent s1/a1"),
            "{}",
            c.subject
        );
        assert!(c.subject.contains("O=FlowSquare"), "{}", c.subject);
        // Another identity: kept as it is (its own URI presented), flagged as not matching.
        let other = Identity::new("s2", "a1");
        assert_eq!(
            ensure_own_certificate(&pki, &other).expect("kept"),
            who.application_uri()
        );
        assert!(!own_certificate(&pki, &other).expect("own").matches);
        let backups = renew(&pki, &other).expect("renew");
        assert_eq!(backups.len(), 2, "{backups:?}");
        assert!(backups.iter().all(|b| b.exists()));
        let n = own_certificate(&pki, &other).expect("renewed");
        assert!(n.matches && n.thumbprint != c.thumbprint, "{n:?}");
    }
}
