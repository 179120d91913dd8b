//! Secrets: where they come from, and keeping them out of everything that is printed.
//!
//! - [`SecretSource`]: a secret given inline (accepted, but `check` warns), in a file
//!   (`*_file = "/path"`, keep it 0600) or as a systemd credential (`*_credential = "NAME"`: the
//!   file `$CREDENTIALS_DIRECTORY/NAME` that `LoadCredential=NAME:/path` hands to the service,
//!   so the original can stay root-only). A file holds the secret alone; one trailing newline
//!   (`\n` or `\r\n`) is stripped; an empty file, or one of several lines, is an error.
//! - [`redact`]: the one redaction of passwords in text — URL user info
//!   (`mqtt://user:***@host`) and `password=…` in connection strings (`key=value` or URL query).
//!   Every broker or database URL that is logged, printed or put in an error goes through it;
//!   [`SecretUrl`] does it in its `Display` and `Debug`.
//! - [`Secret`]: a value whose `Debug` is `***`.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

/// What a redacted password reads as.
pub const REDACTED: &str = "***";

/// A secret value: `Debug` never shows it; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wrap `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself (to hand to a protocol, never to a log).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// `true` for an empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A URL (or `key=value` connection string) that may hold a password: `Display` and `Debug`
/// show it redacted ([`redact`]); [`SecretUrl::expose`] gives the real text to connect with.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wrap `url`.
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }
    /// The URL with its password, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// `true` when the URL holds a password (user info or `password=`).
    pub fn has_password(&self) -> bool {
        !password_spans(&self.0).is_empty()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_owned())
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        SecretUrl(s)
    }
}

/// `text` with every password in it replaced by [`REDACTED`]: the password of URL user info
/// (`scheme://user:PASSWORD@host`) and the value of `password=` (libpq `key=value` strings,
/// quoted or not, and URL query parameters). Errs on the side of hiding too much.
pub fn redact(text: &str) -> Cow<'_, str> {
    let spans = password_spans(text);
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e) in spans {
        if s < at {
            continue;
        }
        out.push_str(&text[at..s]);
        out.push_str(REDACTED);
        at = e;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// Does a configuration key hold a secret, by its name (`password`, `mqtt_password`,
/// `secret`, `token`, `psk`, `private_key`, `url`, `dsn`, …)? Errs on the side of hiding too
/// much: a URL may carry a password, a key name may be a key.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "psk",
        "key",
        "credential",
        "security_code",
        "url",
        "dsn",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// The key whose value starts at byte `at` of a TOML `source` (`key = value`, also in an inline
/// table `{ a = 1, key = value }`, dotted `a.key = …` gives `key`); None when `at` is not a
/// value's start.
pub fn toml_key_at(source: &str, at: usize) -> Option<&str> {
    let before = source.get(..at)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let lhs = line.trim_end().strip_suffix('=')?;
    let lhs = &lhs[lhs.rfind([',', '{']).map_or(0, |i| i + 1)..];
    let key = lhs.trim();
    let key = key.rsplit('.').next().unwrap_or(key).trim();
    Some(key.trim_matches(['"', '\'']))
}

/// A configuration parser's `message` about the value at byte range `span` of `source`, safe to
/// print: when that value is a secret key's ([`is_secret_key`]), every quoted part of the
/// message (`` `…` ``, `"…"`) and the value's own text are replaced by [`REDACTED`] (a TOML
/// type error quotes the value: ``invalid type: integer `12345`, expected a string``). Other
/// messages are returned as they are, through [`redact`].
pub fn redact_value_error(
    source: &str,
    span: Option<std::ops::Range<usize>>,
    message: &str,
) -> String {
    let secret = span
        .as_ref()
        .and_then(|s| toml_key_at(source, s.start))
        .is_some_and(is_secret_key);
    if !secret {
        return redact(message).into_owned();
    }
    let out = redact_quoted(message);
    let value = span
        .and_then(|s| source.get(s))
        .map(|v| v.trim().trim_matches(['"', '\'']))
        .filter(|v| !v.is_empty());
    match value {
        Some(v) => out.replace(v, REDACTED),
        None => out,
    }
}

/// `message` with every quoted part (`` `…` ``, `"…"`) replaced by [`REDACTED`]: a parser's
/// message about a secret's value (``invalid type: integer `12345`, expected a string``).
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(['`', '"']) {
        let q = &rest[i..i + 1];
        out.push_str(&rest[..i]);
        match rest[i + 1..].find(q) {
            Some(j) => {
                out.push_str(REDACTED);
                rest = &rest[i + 1 + j + 1..];
            }
            None => {
                out.push_str(REDACTED);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Characters that end a URL or a bare value in running text.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

/// Byte ranges of the passwords in `text`, in order, not overlapping.
fn password_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    // URL user info: the password runs from the first ':' after "://" to the last '@' before
    // the end of the URL.
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let end = text[start..]
            .find(ends_value)
            .map_or(text.len(), |j| start + j);
        let url = &text[start..end];
        if let (Some(colon), Some(at)) = (url.find(':'), url.rfind('@')) {
            if colon < at && !url[..colon].contains(['/', '@']) {
                spans.push((start + colon + 1, start + at));
            }
        }
        from = end.max(start);
    }
    // password=VALUE ('…' quoted with \' escapes, or up to a space, '&' or ';').
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password") {
        let key = from + i;
        from = key + "password".len();
        let before_ok = text[..key]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '?' | '&' | ';' | ',' | '"' | '\''));
        let rest = &text[from..];
        let trimmed = rest.trim_start_matches([' ', '\t']);
        let Some(value) = trimmed.strip_prefix('=') else {
            continue;
        };
        if !before_ok {
            continue;
        }
        let value = value.trim_start_matches([' ', '\t']);
        let vstart = text.len() - value.len();
        let vend = if let Some(q) = value.strip_prefix('\'') {
            let mut esc = false;
            let close = q.char_indices().find(|&(_, c)| {
                let done = !esc && c == '\'';
                esc = !esc && c == '\\';
                done
            });
            close.map_or(text.len(), |(j, _)| vstart + 1 + j + 1)
        } else {
            value
                .find(|c: char| ends_value(c) || matches!(c, '&' | ';' | ','))
                .map_or(text.len(), |j| vstart + j)
        };
        if vend > vstart {
            spans.push((vstart, vend));
        }
        from = vend.max(from);
    }
    spans.sort_unstable();
    spans
}

/// The warning for a secret written in a configuration file: the `key`, `what` secret it
/// holds, and the keys that would read it from a file or a systemd credential `instead`.
pub fn inline_warning(key: &str, what: &str, instead: &str) -> String {
    format!(
        "`{key}`: {what} is written in the configuration file (readable by anyone who can read the file, and copied wherever it goes): move it to a file or a systemd credential ({instead}; LoadCredential=NAME:/path in the unit)"
    )
}

/// `%XX` escapes decoded (user info of a URL); invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// A systemd credential was named, but the service got none (`LoadCredential=` missing, or
    /// the program was run by hand).
    NoCredentialsDirectory {
        /// The credential's name.
        name: String,
    },
    /// A credential name that is not a plain file name.
    BadCredentialName {
        /// The name given.
        name: String,
    },
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The cause, as text.
        error: String,
    },
    /// The file is empty (or holds only a newline).
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file holds more than one line.
    SeveralLines {
        /// The file.
        path: PathBuf,
    },
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::NoCredentialsDirectory { name } => write!(
                f,
                "systemd credential {name:?}: $CREDENTIALS_DIRECTORY is not set (add LoadCredential={name}:/path/to/file to the unit)"
            ),
            SecretError::BadCredentialName { name } => write!(
                f,
                "systemd credential {name:?}: a credential name is a plain file name (no '/')"
            ),
            SecretError::Read { path, error } => {
                write!(f, "cannot read secret file {}: {error}", path.display())
            }
            SecretError::Empty { path } => write!(f, "secret file {} is empty", path.display()),
            SecretError::SeveralLines { path } => write!(
                f,
                "secret file {} holds more than one line (the secret alone, one trailing newline allowed)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SecretError {}

/// The file of systemd credential `name`: `$CREDENTIALS_DIRECTORY/name`.
pub fn credential_path(name: &str) -> Result<PathBuf, SecretError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(SecretError::BadCredentialName { name: name.into() });
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| SecretError::NoCredentialsDirectory { name: name.into() })?;
    Ok(PathBuf::from(dir).join(name))
}

/// The text of a secret file with one trailing newline (`\n` or `\r\n`) stripped; an empty
/// file is an error.
pub fn read_secret_text(path: &Path) -> Result<String, SecretError> {
    let mut text = std::fs::read_to_string(path).map_err(|e| SecretError::Read {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the configuration file itself (works; `check` warns).
    Inline(Secret),
    /// A file holding it.
    File(PathBuf),
    /// A systemd credential of this name (`$CREDENTIALS_DIRECTORY/NAME`).
    Credential(String),
}

impl SecretSource {
    /// The source of a secret given by the keys `KEY`, `KEY_file` and `KEY_credential` (at most
    /// one of them): `Ok(None)` when none is given, `Err` naming `key` when several are.
    pub fn from_keys(
        key: &str,
        inline: Option<String>,
        file: Option<PathBuf>,
        credential: Option<String>,
    ) -> Result<Option<SecretSource>, String> {
        match (inline, file, credential) {
            (None, None, None) => Ok(None),
            (Some(s), None, None) => Ok(Some(SecretSource::Inline(Secret(s)))),
            (None, Some(p), None) => Ok(Some(SecretSource::File(p))),
            (None, None, Some(n)) => Ok(Some(SecretSource::Credential(n))),
            _ => Err(format!(
                "give only one of {key}, {key}_file and {key}_credential"
            )),
        }
    }

    /// A `"file:/path"` or `"systemd:NAME"` spec (the `credentials` keys of the MQTT settings).
    pub fn from_spec(spec: &str) -> Result<SecretSource, String> {
        if let Some(p) = spec.strip_prefix("file:") {
            Ok(SecretSource::File(PathBuf::from(p)))
        } else if let Some(n) = spec.strip_prefix("systemd:") {
            Ok(SecretSource::Credential(n.to_owned()))
        } else {
            Err("expected \"file:/path\" or \"systemd:NAME\" (never the secret itself)".into())
        }
    }

    /// `true` when the secret is written in the configuration file.
    pub fn is_inline(&self) -> bool {
        matches!(self, SecretSource::Inline(_))
    }

    /// The file it is read from (`None` inline); a credential's needs `$CREDENTIALS_DIRECTORY`.
    pub fn path(&self) -> Result<Option<PathBuf>, SecretError> {
        match self {
            SecretSource::Inline(_) => Ok(None),
            SecretSource::File(p) => Ok(Some(p.clone())),
            SecretSource::Credential(n) => credential_path(n).map(Some),
        }
    }

    /// The whole text (several lines allowed, one trailing newline stripped, not empty).
    pub fn read_text(&self) -> Result<Secret, SecretError> {
        match (self, self.path()?) {
            (SecretSource::Inline(s), _) => Ok(s.clone()),
            (_, Some(p)) => read_secret_text(&p).map(Secret),
            (_, None) => Err(SecretError::BadCredentialName {
                name: String::new(),
            }),
        }
    }

    /// The secret: one line, one trailing newline stripped, not empty.
    pub fn read(&self) -> Result<Secret, SecretError> {
        let s = self.read_text()?;
        if s.0.contains('\n') {
            if let Some(path) = self.path()? {
                return Err(SecretError::SeveralLines { path });
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_value_in_a_config_error_is_hidden() {
        let src = "[mqtt]\nbroker = \"mqtt://h\"\npassword = 12345\nport = \"x\"\n";
        let at = src.find("12345").expect("value");
        assert_eq!(toml_key_at(src, at), Some("password"));
        let msg = "invalid type: integer `12345`, expected a string";
        let out = redact_value_error(src, Some(at..at + 5), msg);
        assert!(!out.contains("12345"), "{out}");
        assert_eq!(out, "invalid type: integer ***, expected a string");
        // Without backticks (another parser's wording) the value itself is still hidden.
        let out = redact_value_error(
            src,
            Some(at..at + 5),
            "invalid type: integer 12345, expected a string",
        );
        assert!(!out.contains("12345"), "{out}");
        // Another key's value is shown.
        let at = src.find("\"x\"").expect("port");
        let out = redact_value_error(
            src,
            Some(at..at + 3),
            "invalid type: string \"x\", expected u16",
        );
        assert!(out.contains("\"x\""), "{out}");
        // Inline tables and dotted keys.
        let src = "a = { user = \"u\", api_token = 7 }\nb.psk = 9\n";
        assert_eq!(
            toml_key_at(src, src.find('7').expect("7")),
            Some("api_token")
        );
        assert_eq!(toml_key_at(src, src.find('9').expect("9")), Some("psk"));
        assert_eq!(toml_key_at(src, 0), None);
    }

    #[test]
    fn urls_lose_their_password_and_nothing_else() {
        let r = |s: &str| redact(s).into_owned();
        assert_eq!(
            r("mqtt://user:hunter2@host:1883"),
            "mqtt://user:***@host:1883"
        );
        assert_eq!(r("mqtts://u:p%40ss@h"), "mqtts://u:***@h");
        assert_eq!(r("mqtt://u:pa/ss@h:1"), "mqtt://u:***@h:1");
        assert_eq!(r("mqtt://u:p@ss@h"), "mqtt://u:***@h");
        assert_eq!(r("mqtt://host:1883"), "mqtt://host:1883");
        assert_eq!(r("mqtt://user@host"), "mqtt://user@host");
        assert_eq!(
            r("postgres://fs:s3cret@db/fs?sslmode=require"),
            "postgres://fs:***@db/fs?sslmode=require"
        );
        assert_eq!(
            r("broker \"mqtt://a:b@h\" failed, see mqtt://c:d@i x"),
            "broker \"mqtt://a:***@h\" failed, see mqtt://c:***@i x"
        );
        assert!(matches!(redact("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn password_values_are_redacted_in_connection_strings() {
        let r = |s: &str| redact(s).into_owned();
        assert_eq!(
            r("host=db user=fs password=s3cret dbname=fs"),
            "host=db user=fs password=*** dbname=fs"
        );
        assert_eq!(
            r("host=db password = 'a b\\' c' dbname=fs"),
            "host=db password = *** dbname=fs"
        );
        assert_eq!(r("PASSWORD=x"), "PASSWORD=***");
        assert_eq!(
            r("postgres://db/fs?user=u&password=pw&sslmode=disable"),
            "postgres://db/fs?user=u&password=***&sslmode=disable"
        );
        assert_eq!(r("password_file=/etc/x"), "password_file=/etc/x");
        assert_eq!(r("no_password=1"), "no_password=1");
        let u = SecretUrl::from("host=h password=pw");
        assert!(u.has_password());
        assert_eq!(
            format!("{u} {u:?}"),
            "host=h password=*** \"host=h password=***\""
        );
        assert!(!SecretUrl::from("mqtt://h:1883").has_password());
        assert_eq!(format!("{:?}", Secret::new("pw")), "***");
        assert_eq!(percent_decode("p%40ss%2"), "p@ss%2");
        assert_eq!(percent_decode("a%2Fb%zz"), "a/b%zz");
    }

    #[test]
    fn secret_files_strip_one_newline_and_refuse_empty_or_missing() {
        let dir = std::env::temp_dir().join(format!("fs-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            SecretSource::File(p)
        };
        assert_eq!(f("a", "pw\n").read().expect("a").expose(), "pw");
        assert_eq!(f("b", "pw\r\n").read().expect("b").expose(), "pw");
        assert_eq!(f("c", "pw").read().expect("c").expose(), "pw");
        assert_eq!(
            f("d", " pw \n\n").read_text().expect("d").expose(),
            " pw \n"
        );
        assert!(matches!(f("e", "").read(), Err(SecretError::Empty { .. })));
        assert!(matches!(
            f("g", "\n").read(),
            Err(SecretError::Empty { .. })
        ));
        assert!(matches!(
            f("h", "a\nb\n").read(),
            Err(SecretError::SeveralLines { .. })
        ));
        let missing = SecretSource::File(dir.join("missing"));
        let e = missing.read().expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(matches!(
            SecretSource::Credential("a/b".into()).read(),
            Err(SecretError::BadCredentialName { .. })
        ));
        assert_eq!(
            SecretSource::from_keys("k", Some("x".into()), None, Some("n".into())).unwrap_err(),
            "give only one of k, k_file and k_credential"
        );
        assert_eq!(
            SecretSource::from_spec("systemd:mqtt"),
            Ok(SecretSource::Credential("mqtt".into()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
