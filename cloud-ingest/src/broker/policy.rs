//! The gate's decisions, without I/O: who a CONNECT is (password, client certificate, or
//! anonymous on the loopback-only demo broker), which client id it must use and which id
//! rumqttd gets, and whether a packet of the connection is allowed.

use flowsquare_wire as wire;

use super::packet::{self, Connect, Frame};
use super::BrokerError;

/// How agents log in (from `[broker]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Login {
    /// `password_file`: a username and password are required and checked.
    pub password: bool,
    /// `client_ca_file`: a verified client certificate names the identity (its CN).
    pub certificate: bool,
}

impl Login {
    /// Neither: the anonymous demo broker (loopback only).
    pub fn is_open(self) -> bool {
        !self.password && !self.certificate
    }
}

/// What a connection may do.
#[derive(Debug, PartialEq)]
pub enum Access {
    /// The anonymous demo broker: anything but a second CONNECT.
    Open,
    /// An authenticated agent: its own topics only.
    Agent(Agent),
}

/// The topics an authenticated agent may use.
#[derive(Debug, PartialEq)]
pub struct Agent {
    /// The identity `{site}/{agent}`.
    pub name: String,
    /// Topics it may publish on.
    pub publish: [String; 4],
    /// Filters it may subscribe to.
    pub subscribe: [String; 2],
}

impl Access {
    /// The client id rumqttd gets. An agent's is made of its (site, agent) pair with a
    /// separator ids cannot hold (`fs~{site}~{agent}`), so two identities whose default client
    /// ids are the same string (`a-b/c` and `a/b-c` both give `fs-a-b-c`) never share a
    /// session in rumqttd: neither can take the other's session or throw it off.
    pub fn internal_client_id(&self, c: &Connect) -> String {
        match self {
            Access::Open => c.client_id.clone(),
            Access::Agent(a) => format!("fs~{}", a.name.replacen('/', "~", 1)),
        }
    }
}

/// Checks a username and password (the password file).
pub type Verify<'a> = &'a dyn Fn(&str, &[u8]) -> Result<bool, BrokerError>;

/// A refusal of a CONNECT: the CONNACK code and the reason logged.
pub type Refusal = (u8, String);

/// Check a client id on the anonymous broker: rumqttd 0.20 refuses ids holding `/ + $ #` and
/// stops altogether (a panic in its router) when such an id connects twice, so they never
/// reach it; nor do control characters or an empty id (rumqttd keeps no session for it).
fn open_client_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() {
        return Err((packet::IDENTIFIER_REJECTED, "empty client id".into()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| matches!(c, '/' | '+' | '$' | '#') || c.is_control())
    {
        return Err((
            packet::IDENTIFIER_REJECTED,
            format!("client id {id:?}: character {c:?} not allowed"),
        ));
    }
    Ok(())
}

/// The identity of `c`: from the certificate (`cert`, its CN; a username, if given, must be
/// the same) and/or the password file (`verify(user, password)`).
fn identity(
    login: Login,
    c: &Connect,
    cert: Option<&str>,
    verify: Verify<'_>,
) -> Result<String, Refusal> {
    let name = if login.certificate {
        let cn = cert.ok_or((
            packet::NOT_AUTHORISED,
            "no verified client certificate".to_string(),
        ))?;
        if let Some(user) = c.username.as_deref().filter(|u| *u != cn) {
            return Err((
                packet::NOT_AUTHORISED,
                format!("username {user:?} is not the certificate's identity {cn:?}"),
            ));
        }
        cn.to_owned()
    } else {
        c.username.clone().ok_or((
            packet::BAD_LOGIN,
            "CONNECT without username and password".to_string(),
        ))?
    };
    if login.password {
        let Some(pw) = &c.password else {
            return Err((packet::BAD_LOGIN, "CONNECT without a password".into()));
        };
        match verify(&name, pw) {
            Ok(true) => {}
            Ok(false) => return Err((packet::BAD_LOGIN, "wrong username or password".into())),
            Err(e) => return Err((packet::NOT_AUTHORISED, e.to_string())),
        }
    }
    Ok(name)
}

/// Decide on the CONNECT `c`: the access it gets, or the refusal.
pub fn authorise(
    login: Login,
    root: &str,
    c: &Connect,
    cert: Option<&str>,
    verify: Verify<'_>,
) -> Result<Access, Refusal> {
    if login.is_open() {
        open_client_id(&c.client_id)?;
        return Ok(Access::Open);
    }
    let name = identity(login, c, cert, verify)?;
    let topics = name
        .split_once('/')
        .and_then(|(site, agent)| wire::Topics::new(root, site, agent).ok())
        .ok_or((
            packet::NOT_AUTHORISED,
            format!("identity {name:?} is not an agent <site>/<agent>"),
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
    Ok(Access::Agent(Agent {
        name,
        publish: [
            topics.data(),
            topics.birth(),
            topics.status(),
            topics.heartbeat(),
        ],
        subscribe: [topics.ack(), topics.cmd()],
    }))
}

/// Whether the connection may send `f`; a refusal names the topic.
pub fn check(f: &Frame, access: &Access) -> Result<(), BrokerError> {
    if f.kind() == packet::CONNECT {
        return Err(BrokerError::Refused("a second CONNECT".into()));
    }
    let Access::Agent(agent) = access else {
        return Ok(());
    };
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
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(id: &str, user: Option<&str>, pw: Option<&str>) -> Connect {
        Connect {
            flags: 0x02,
            keep_alive: 30,
            client_id: id.into(),
            will: None,
            username: user.map(Into::into),
            password: pw.map(|p| p.as_bytes().to_vec()),
        }
    }

    fn pw_ok(user: &str, pw: &[u8]) -> Result<bool, BrokerError> {
        Ok(pw == format!("{user}-pw").as_bytes())
    }

    const CERT: Login = Login {
        password: false,
        certificate: true,
    };
    const PASSWORD: Login = Login {
        password: true,
        certificate: false,
    };
    const OPEN: Login = Login {
        password: false,
        certificate: false,
    };

    fn code(r: Result<Access, Refusal>) -> Option<u8> {
        r.err().map(|(c, _)| c)
    }

    #[test]
    fn a_certificate_identity_is_bound_to_its_client_id_and_username() {
        let ok = authorise(
            CERT,
            "fs",
            &connect("fs-s1-a", None, None),
            Some("s1/a"),
            &pw_ok,
        );
        let Ok(Access::Agent(a)) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(a.name, "s1/a");
        assert_eq!(a.publish[0], "fs/v1/s1/a/data");
        let same_user = connect("fs-s1-a", Some("s1/a"), Some("ignored"));
        assert!(authorise(CERT, "fs", &same_user, Some("s1/a"), &pw_ok).is_ok());
        for (c, cn) in [
            (connect("fs-s1-b", None, None), Some("s1/a")),
            (connect("fs-s1-a", Some("s1/b"), None), Some("s1/a")),
            (connect("fs-s1-a", None, None), None),
            (connect("fs-s1", None, None), Some("s1")),
            (connect("fs-s1-a+", None, None), Some("s1/a+")),
        ] {
            let r = authorise(CERT, "fs", &c, cn, &pw_ok);
            assert_eq!(code(r), Some(packet::NOT_AUTHORISED), "{c:?} {cn:?}");
        }
    }

    #[test]
    fn certificate_and_password_together_need_both() {
        let both = Login {
            password: true,
            certificate: true,
        };
        let good = connect("fs-s1-a", None, Some("s1/a-pw"));
        assert!(authorise(both, "fs", &good, Some("s1/a"), &pw_ok).is_ok());
        let wrong = connect("fs-s1-a", None, Some("s1/b-pw"));
        let r = authorise(both, "fs", &wrong, Some("s1/a"), &pw_ok);
        assert_eq!(code(r), Some(packet::BAD_LOGIN));
        let r = authorise(both, "fs", &good, None, &pw_ok);
        assert_eq!(code(r), Some(packet::NOT_AUTHORISED));
    }

    /// Issue 15: `a-b/c` and `a/b-c` both have the default client id `fs-a-b-c`; each may use
    /// it, and rumqttd sees two different ids, so neither takes the other's session.
    #[test]
    fn colliding_default_client_ids_get_separate_sessions() {
        let c = connect("fs-a-b-c", Some("a-b/c"), Some("a-b/c-pw"));
        let one = authorise(PASSWORD, "fs", &c, None, &pw_ok).expect("a-b/c");
        let c2 = connect("fs-a-b-c", Some("a/b-c"), Some("a/b-c-pw"));
        let two = authorise(PASSWORD, "fs", &c2, None, &pw_ok).expect("a/b-c");
        assert_eq!(one.internal_client_id(&c), "fs~a-b~c");
        assert_eq!(two.internal_client_id(&c2), "fs~a~b-c");
        let Access::Agent(a) = two else { panic!() };
        assert_eq!(a.subscribe[0], "fs/v1/a/b-c/ack");
    }

    #[test]
    fn the_open_broker_refuses_client_ids_rumqttd_cannot_take() {
        for id in ["", "a/b", "x+", "$SYS", "#", "a\u{0}b", "a\nb"] {
            let r = authorise(OPEN, "fs", &connect(id, None, None), None, &pw_ok);
            assert_eq!(code(r), Some(packet::IDENTIFIER_REJECTED), "{id:?}");
        }
        let c = connect("fake-s1-gw-1", None, None);
        let open = authorise(OPEN, "fs", &c, None, &pw_ok).expect("open");
        assert_eq!(open, Access::Open);
        assert_eq!(open.internal_client_id(&c), "fake-s1-gw-1");
    }
}
