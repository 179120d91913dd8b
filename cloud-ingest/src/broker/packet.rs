//! The few MQTT 3.1.1 packets the embedded broker's gate reads: any packet's frame (fixed
//! header and remaining length), CONNECT (parsed and re-encoded with the internal login),
//! the topic of a PUBLISH and the filters of a SUBSCRIBE. Everything else passes as raw bytes.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::BrokerError;

/// Packet types (the high nibble of the first byte).
pub const CONNECT: u8 = 1;
/// CONNACK.
pub const CONNACK: u8 = 2;
/// PUBLISH.
pub const PUBLISH: u8 = 3;
/// SUBSCRIBE.
pub const SUBSCRIBE: u8 = 8;

/// One control packet as read: its first byte and all its bytes (header included).
#[derive(Debug)]
pub struct Frame {
    /// The whole packet.
    pub bytes: Vec<u8>,
    /// Where the variable header starts in `bytes`.
    pub body: usize,
}

impl Frame {
    /// The packet type.
    pub fn kind(&self) -> u8 {
        self.bytes[0] >> 4
    }

    fn body(&self) -> &[u8] {
        &self.bytes[self.body..]
    }
}

fn bad(why: &str) -> BrokerError {
    BrokerError::Protocol(why.to_string())
}

/// Read one packet (`Ok(None)` at a clean end of stream), at most `max` bytes of body.
pub async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Option<Frame>, BrokerError> {
    let mut first = [0u8; 1];
    if r.read(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut bytes = vec![first[0]];
    let (mut len, mut shift) = (0usize, 0u32);
    loop {
        let b = r.read_u8().await?;
        bytes.push(b);
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(bad("remaining length longer than 4 bytes"));
        }
    }
    if len > max {
        return Err(bad(&format!("packet of {len} bytes over the limit {max}")));
    }
    let body = bytes.len();
    bytes.resize(body + len, 0);
    r.read_exact(&mut bytes[body..]).await?;
    Ok(Some(Frame { bytes, body }))
}

/// A reader over a packet body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BrokerError> {
        if self.0.len() < n {
            return Err(bad("packet shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, BrokerError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BrokerError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn binary(&mut self) -> Result<&'a [u8], BrokerError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn string(&mut self) -> Result<String, BrokerError> {
        String::from_utf8(self.binary()?.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }
}

/// A CONNECT packet (MQTT 3.1.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// Connect flags without the username and password bits.
    pub flags: u8,
    /// Keep alive, seconds.
    pub keep_alive: u16,
    /// Client id.
    pub client_id: String,
    /// Last Will topic and message.
    pub will: Option<(String, Vec<u8>)>,
    /// Username.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Vec<u8>>,
}

/// Parse a CONNECT frame; only protocol level 4 ("MQTT", 3.1.1) is accepted.
pub fn parse_connect(f: &Frame) -> Result<Connect, BrokerError> {
    if f.kind() != CONNECT {
        return Err(bad("the first packet is not CONNECT"));
    }
    let mut c = Cursor(f.body());
    let (name, level) = (c.binary()?, c.u8()?);
    if name != b"MQTT" || level != 4 {
        return Err(bad("only MQTT 3.1.1 (protocol level 4) is served"));
    }
    let flags = c.u8()?;
    let keep_alive = c.u16()?;
    let client_id = c.string()?;
    let will = if flags & 0x04 != 0 {
        Some((c.string()?, c.binary()?.to_vec()))
    } else {
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(c.string()?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(c.binary()?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        flags: flags & 0x3f,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn put_binary(out: &mut Vec<u8>, b: &[u8]) -> Result<(), BrokerError> {
    let n = u16::try_from(b.len()).map_err(|_| bad("field longer than 65535 bytes"))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// Encode `c` with client id `client_id` and the login `user`/`password` instead of its own.
pub fn encode_connect(
    c: &Connect,
    client_id: &str,
    user: &str,
    password: &str,
) -> Result<Vec<u8>, BrokerError> {
    let mut body = Vec::new();
    put_binary(&mut body, b"MQTT")?;
    body.push(4);
    body.push(c.flags | 0xc0);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    put_binary(&mut body, client_id.as_bytes())?;
    if let Some((topic, msg)) = &c.will {
        put_binary(&mut body, topic.as_bytes())?;
        put_binary(&mut body, msg)?;
    }
    put_binary(&mut body, user.as_bytes())?;
    put_binary(&mut body, password.as_bytes())?;
    let mut out = vec![CONNECT << 4];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// CONNACK refusal codes (MQTT 3.1.1): client identifier rejected.
pub const IDENTIFIER_REJECTED: u8 = 2;
/// Bad username or password.
pub const BAD_LOGIN: u8 = 4;
/// Not authorised.
pub const NOT_AUTHORISED: u8 = 5;

/// A CONNACK with return code `code`.
pub fn connack(code: u8) -> [u8; 4] {
    [0x20, 0x02, 0x00, code]
}

/// The topic of a PUBLISH frame.
pub fn publish_topic(f: &Frame) -> Result<String, BrokerError> {
    Cursor(f.body()).string()
}

/// The topic filters of a SUBSCRIBE frame.
pub fn subscribe_filters(f: &Frame) -> Result<Vec<String>, BrokerError> {
    let mut c = Cursor(f.body());
    c.u16()?;
    let mut out = Vec::new();
    while !c.0.is_empty() {
        out.push(c.string()?);
        c.u8()?;
    }
    if out.is_empty() {
        return Err(bad("SUBSCRIBE without a topic filter"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connect_reencoded_with_another_login_parses_back() {
        let c = Connect {
            flags: 0x02 | 0x04 | 0x08,
            keep_alive: 30,
            client_id: "fs-s1-a".into(),
            will: Some(("fs/v1/s1/a/status".into(), b"{}".to_vec())),
            username: Some("internal".into()),
            password: Some(b"pw".to_vec()),
        };
        let bytes = encode_connect(&c, "fs-s1-a", "internal", "pw").expect("encode");
        let f = read_frame(&mut &bytes[..], 1 << 20)
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(parse_connect(&f).expect("parse"), c);
    }

    #[tokio::test]
    async fn publish_and_subscribe_topics_are_read_and_short_packets_refused() {
        let publish = [0x32, 9, 0, 5, b'a', b'/', b'b', b'/', b'c', 0, 1];
        let f = read_frame(&mut &publish[..], 100)
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(publish_topic(&f).expect("topic"), "a/b/c");
        let sub = [0x82, 12, 0, 1, 0, 1, b'x', 1, 0, 3, b'$', b'/', b'#', 0];
        let f = read_frame(&mut &sub[..], 100)
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(subscribe_filters(&f).expect("filters"), ["x", "$/#"]);
        let short = [0x82, 3, 0, 1, 0];
        let f = read_frame(&mut &short[..], 100)
            .await
            .expect("read")
            .expect("frame");
        assert!(subscribe_filters(&f).is_err());
        let big = [0x30, 0xff, 0xff, 0x7f];
        assert!(read_frame(&mut &big[..], 100).await.is_err());
    }
}
