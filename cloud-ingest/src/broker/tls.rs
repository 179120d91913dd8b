//! The embedded broker's TLS: the server configuration from `[broker] tls_cert_file`,
//! `tls_key_file` and `client_ca_file` (rustls with the ring provider, as the edge agent's
//! uplink), and the identity a client certificate carries (its subject CN, like Mosquitto's
//! `use_identity_as_username`).
//!
//! With `client_ca_file` every client must present a certificate that chains to one of its
//! CAs (valid now, and marked for client authentication if it has an extended key usage):
//! the handshake fails otherwise, before any MQTT byte is read. No revocation list is read:
//! to withdraw a gateway, issue certificates from a CA per site (or rotate the CA).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};

use super::BrokerError;

fn tls_err(file: &str, why: impl std::fmt::Display) -> BrokerError {
    BrokerError::Tls(format!("{file}: {why}"))
}

fn read(file: &str) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(file).map_err(|e| tls_err(file, e))
}

/// The PEM certificates of `file` (at least one).
fn certs(file: &str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(file)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(file, e))?;
    if certs.is_empty() {
        return Err(tls_err(file, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The server configuration: `cert` and `key` (PEM), and with `client_ca` client
/// certificates required and verified against it.
pub fn server_config(
    cert: &str,
    key: &str,
    client_ca: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, BrokerError> {
    let chain = certs(cert)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| tls_err(key, e))?
        .ok_or_else(|| tls_err(key, "no PEM private key in it"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| tls_err(ca, e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| tls_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(cert, format!("certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// X.520 commonName.
const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The subject CN of a (verified) client certificate: exactly one, a UTF-8, printable or IA5
/// string. Anything else is refused rather than guessed.
pub fn common_name(der: &[u8]) -> Result<String, String> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let mut found = Vec::new();
    for rdn in &cert.tbs_certificate.subject.0 {
        for atv in rdn.0.iter().filter(|a| a.oid == CN) {
            if !matches!(
                atv.value.tag(),
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String
            ) {
                return Err("client certificate CN is not a string".into());
            }
            let s = std::str::from_utf8(atv.value.value())
                .map_err(|_| "client certificate CN is not UTF-8".to_string())?;
            found.push(s.to_owned());
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err("client certificate has no subject CN".into()),
        n => Err(format!("client certificate has {n} subject CNs")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `subject` made by the openssl CLI (DER).
    fn openssl_cert(dir: &std::path::Path, subject: &str) -> Vec<u8> {
        let (key, crt) = (dir.join("k.pem"), dir.join("c.der"));
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes", "-days", "2", "-outform", "DER", "-subj", subject, "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(ok.success(), "openssl req {subject}");
        std::fs::read(crt).expect("cert")
    }

    #[test]
    fn the_identity_is_the_one_subject_cn() {
        let dir = tempfile::tempdir().expect("tmp");
        let one = openssl_cert(dir.path(), "/O=FlowSquare/CN=s1\\/gw-01");
        assert_eq!(common_name(&one).as_deref(), Ok("s1/gw-01"));
        let none = openssl_cert(dir.path(), "/O=FlowSquare");
        assert!(common_name(&none).is_err());
        let two = openssl_cert(dir.path(), "/CN=s1\\/a/CN=s1\\/b");
        assert_eq!(
            common_name(&two),
            Err("client certificate has 2 subject CNs".into())
        );
        assert!(common_name(b"not a certificate").is_err());
    }
}
