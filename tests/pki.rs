//! Test certificates made by the openssl CLI in a test's directory: CAs, and certificates they
//! sign (server certificates for 127.0.0.1/localhost, client certificates whose subject CN is an
//! agent's `{site}/{agent}`), for the certificate-login tests of the embedded broker and of the
//! shipped Mosquitto configuration.

use std::path::PathBuf;

/// Test certificates made by the openssl CLI in `dir`: CAs, and certificates they sign.
pub struct Pki {
    /// Where the files are written.
    pub dir: PathBuf,
}

impl Pki {
    /// Certificates written into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Pki {
        Pki { dir: dir.into() }
    }

    /// Run `openssl ARGS` in `dir`; panics (this is test support) when it fails.
    pub fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    /// A CA `name` (`name.pem`, `name.key`).
    pub fn ca(&self, name: &str) {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=FlowSquare test {name}"),
            "-keyout",
            &key,
            "-out",
            &pem,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// A certificate `name` (`name.pem`, `name.key`) for `cn`, signed by CA `ca`: a server
    /// certificate for 127.0.0.1 when `server`, else a client certificate.
    pub fn leaf(&self, ca: &str, name: &str, cn: &str, server: bool) {
        let ext = format!("{name}.ext");
        let usage = if server {
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        } else {
            "extendedKeyUsage=clientAuth\n"
        };
        std::fs::write(
            self.dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{usage}"),
        )
        .expect("ext");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subj = format!("/O=FlowSquare/CN={}", cn.replace('/', "\\/"));
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }

    /// The path of `file` in `dir`.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}
