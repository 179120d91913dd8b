//! Mosquitto password files (`mosquitto_passwd`): lines `username:$7$iterations$salt$hash`,
//! PBKDF2-HMAC-SHA512 with a base64 salt and a 64-byte base64 hash (Mosquitto 2.0), or
//! `$6$salt$hash`, SHA-512 of password and salt (Mosquitto 1.x). Field engineers add agents
//! to the embedded broker with the same tool as to a Mosquitto broker.

use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::BrokerError;

const BLOCK: usize = 128;

fn hmac_sha512(key: &[u8], parts: &[&[u8]]) -> [u8; 64] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..64].copy_from_slice(&Sha512::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha512::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha512::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    let mut out = [0u8; 64];
    out.copy_from_slice(&outer.finalize());
    out
}

/// PBKDF2-HMAC-SHA512, one 64-byte block (what Mosquitto stores).
fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    let mut u = hmac_sha512(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha512(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

fn b64(s: &str, file: &str) -> Result<Vec<u8>, BrokerError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| BrokerError::PasswordFile(format!("{file}: bad base64 {s:?}")))
}

/// Whether `password` matches the stored `hash` field (`$7$…` or `$6$…`).
fn matches(stored: &str, password: &[u8], file: &str) -> Result<bool, BrokerError> {
    let fields: Vec<&str> = stored.split('$').collect();
    let expected = match fields.as_slice() {
        ["", "7", iterations, salt, hash] => {
            let n: u32 = iterations.parse().map_err(|_| {
                BrokerError::PasswordFile(format!("{file}: bad iteration count {iterations:?}"))
            })?;
            let (salt, hash) = (b64(salt, file)?, b64(hash, file)?);
            (pbkdf2_sha512(password, &salt, n.max(1)).to_vec(), hash)
        }
        ["", "6", salt, hash] => {
            let (salt, hash) = (b64(salt, file)?, b64(hash, file)?);
            let mut d = Sha512::new();
            d.update(password);
            d.update(&salt);
            (d.finalize().to_vec(), hash)
        }
        _ => {
            return Err(BrokerError::PasswordFile(format!(
                "{file}: a password is not a mosquitto_passwd hash ($7$ or $6$); plain passwords are not accepted"
            )))
        }
    };
    Ok(expected.0.len() == expected.1.len() && bool::from(expected.0.ct_eq(&expected.1)))
}

/// Check every line of a password file (so `check-config` finds a broken file).
pub fn check_file(path: &str) -> Result<usize, BrokerError> {
    let text = read(path)?;
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (_, stored) = line
            .split_once(':')
            .ok_or_else(|| BrokerError::PasswordFile(format!("{path}: a line without ':'")))?;
        matches(stored, b"", path)?;
        n += 1;
    }
    Ok(n)
}

fn read(path: &str) -> Result<String, BrokerError> {
    std::fs::read_to_string(path)
        .map_err(|e| BrokerError::PasswordFile(format!("cannot read {path}: {e}")))
}

/// Whether `user` with `password` is in the password file at `path` (read on each call, so
/// an agent added with `mosquitto_passwd` can log in without a restart).
pub fn verify(path: &str, user: &str, password: &[u8]) -> Result<bool, BrokerError> {
    let text = read(path)?;
    for line in text.lines() {
        if let Some((u, stored)) = line.split_once(':') {
            if u == user {
                return matches(stored.trim_end(), password, path);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6070-style check against a known PBKDF2-HMAC-SHA512 vector.
    #[test]
    fn pbkdf2_sha512_matches_a_known_vector() {
        let dk = pbkdf2_sha512(b"password", b"salt", 1);
        assert_eq!(hex::encode(&dk[..16]), "867f70cf1ade02cff3752599a3a53dc4");
    }

    /// A line written by `mosquitto_passwd -b` (Mosquitto 2.0.11) for s1/a1 with "apw".
    #[test]
    fn a_mosquitto_passwd_line_verifies_its_password_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("pw");
        std::fs::write(&p, "s1/a1:$7$101$MIpJY7g/4a0wXULJ$RIQrqz7v2d/lSczRzQPOEcnXGy/k8VQVHtiZPD2eiwEs5oH8YOUKQqBAbshsO8u0Yc/4wafKDQo9Kj90QeHzfQ==\n").expect("write");
        let p = p.to_string_lossy();
        assert_eq!(verify(&p, "s1/a1", b"apw").ok(), Some(true));
        assert_eq!(verify(&p, "s1/a1", b"bpw").ok(), Some(false));
        assert_eq!(verify(&p, "s1/a2", b"apw").ok(), Some(false));
        assert_eq!(check_file(&p).ok(), Some(1));
        std::fs::write(dir.path().join("plain"), "s1/a1:apw\n").expect("write");
        assert!(check_file(&dir.path().join("plain").to_string_lossy()).is_err());
    }
}
