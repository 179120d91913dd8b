//! The request-head screen of the connection layer (pure): it sits between the socket and
//! hyper, holds back each request head until it is complete and valid, and passes bodies
//! through by their framing (`Content-Length` or chunked), so it always knows where the next
//! head starts (keep-alive, pipelining). A head that is malformed (400), whose request target is
//! too long (414) or that is too large or has too many header lines (431) never reaches hyper:
//! the screen reports a [`Reject`] and the connection layer answers problem+json. Its checks
//! are hyper's own (same parser, same framing rules) with smaller limits, so hyper never answers
//! with its own empty error responses.

use axum::http::{Method, StatusCode, Uri};

/// Longest request target (path and query), bytes.
pub const MAX_URI: usize = 8 * 1024;
/// Largest request head (request line and headers), bytes.
pub const MAX_HEAD: usize = 32 * 1024;
/// Most header lines.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line or trailer section before the screen stops following the framing.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    /// 400, 414 or 431.
    pub(crate) status: StatusCode,
    /// What was wrong.
    pub(crate) detail: String,
    /// The request path, when it could be read.
    pub(crate) path: Option<String>,
}

impl Reject {
    fn new(status: StatusCode, detail: impl Into<String>, path: Option<String>) -> Reject {
        Reject {
            status,
            detail: detail.into(),
            path,
        }
    }
}

/// Where the screen is in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Passing this many more body bytes.
    Body(u64),
    /// Passing a chunked body.
    Chunked(Chunk),
    /// Framing lost (malformed chunked body): pass everything; hyper fails the connection.
    Opaque,
}

/// Chunked-body framing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// The chunk-size line: size so far, hex digits, in an extension, length.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
        len: usize,
    },
    /// After the size line's CR.
    SizeLf { size: u64 },
    /// Chunk data still to pass.
    Data(u64),
    /// The CR (or LF) after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// Trailer lines after the last chunk: length of the current line, of all of them.
    Trailer { line: usize, total: usize },
}

/// The screen of one connection.
#[derive(Debug)]
pub(crate) struct Screen {
    state: State,
    /// The head collected so far.
    head: Vec<u8>,
}

impl Default for Screen {
    fn default() -> Self {
        Screen {
            state: State::Head,
            head: Vec::new(),
        }
    }
}

impl Screen {
    /// Is the screen between messages (collecting a head, possibly none of it yet)?
    pub(crate) fn at_head(&self) -> bool {
        self.state == State::Head
    }

    /// Has part of a head arrived?
    pub(crate) fn head_started(&self) -> bool {
        self.state == State::Head && !self.head.is_empty()
    }

    /// Take `input` from the socket; append what may go on to hyper to `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Reject> {
        while !input.is_empty() {
            input = match &mut self.state {
                State::Head => self.feed_head(input, out)?,
                State::Body(n) => {
                    let k = usize::try_from(*n).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..k]);
                    *n -= k as u64;
                    if *n == 0 {
                        self.state = State::Head;
                    }
                    &input[k..]
                }
                State::Chunked(_) => self.feed_chunked(input, out),
                State::Opaque => {
                    out.extend_from_slice(input);
                    &[]
                }
            };
        }
        Ok(())
    }

    /// Collect head bytes; on a complete head release it and switch to its body's framing.
    /// Returns the input not consumed.
    fn feed_head<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], Reject> {
        let mut input = input;
        if self.head.is_empty() {
            // Empty lines before a request line are allowed (RFC 9112 §2.2).
            let blank = input
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            input = &input[blank..];
            if input.is_empty() {
                return Ok(input);
            }
        }
        let old = self.head.len();
        let take = input.len().min(MAX_HEAD + 1 - old);
        self.head.extend_from_slice(&input[..take]);
        if !self.head.contains(&b'\n') {
            // Still in the request line.
            if self.head.len() > MAX_URI + 32 {
                return Err(self.line_too_long());
            }
            return Ok(&input[take..]);
        }
        // A head ends with a line feed: parse again only when one arrived.
        if !input[..take].contains(&b'\n') {
            return self.over_limit().map(|()| &input[take..]);
        }
        match self.parse()? {
            None => self.over_limit().map(|()| &input[take..]),
            Some((len, framing)) => {
                // The head ends in the bytes just taken: it ends with a line feed, and a line
                // feed taken earlier was parsed then (incomplete).
                let used = len.saturating_sub(old);
                out.extend_from_slice(&self.head[..len]);
                self.head.clear();
                self.state = framing;
                Ok(&input[used..])
            }
        }
    }

    /// The request line alone is longer than a request target may be.
    fn line_too_long(&self) -> Reject {
        let method_ok = self
            .head
            .iter()
            .position(|b| *b == b' ')
            .is_some_and(|sp| sp > 0 && Method::from_bytes(&self.head[..sp]).is_ok());
        if method_ok {
            Reject::new(
                StatusCode::URI_TOO_LONG,
                format!("the request target is longer than {MAX_URI} bytes"),
                None,
            )
        } else {
            Reject::new(StatusCode::BAD_REQUEST, "malformed request line", None)
        }
    }

    /// An incomplete head that is already too large.
    fn over_limit(&self) -> Result<(), Reject> {
        if self.head.len() > MAX_HEAD {
            Err(Reject::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request head is larger than {MAX_HEAD} bytes"),
                None,
            ))
        } else {
            Ok(())
        }
    }

    /// Parse the collected head: `None` while incomplete, else its length and body framing.
    fn parse(&self) -> Result<Option<(usize, State)>, Reject> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let bad = |d: &str, path: Option<&str>| {
            Reject::new(StatusCode::BAD_REQUEST, d, path.map(str::to_owned))
        };
        let len = match req.parse(&self.head) {
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(n)) => n,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Reject::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("more than {MAX_HEADERS} header lines"),
                    None,
                ))
            }
            Err(httparse::Error::Token) if req.method.is_none() => {
                return Err(bad("malformed request method", None))
            }
            Err(httparse::Error::Token) => return Err(bad("malformed request target", None)),
            Err(httparse::Error::Version) => {
                return Err(bad(
                    "unsupported protocol version (HTTP/1.0 and HTTP/1.1 are served)",
                    None,
                ))
            }
            Err(e) => return Err(bad(&format!("malformed request head: {e}"), None)),
        };
        if len > MAX_HEAD {
            return Err(self
                .over_limit()
                .err()
                .unwrap_or_else(|| bad("head too large", None)));
        }
        let (method, target) = match (req.method, req.path) {
            (Some(m), Some(p)) => (m, p),
            _ => return Err(bad("malformed request line", None)),
        };
        if target.len() > MAX_URI {
            return Err(Reject::new(
                StatusCode::URI_TOO_LONG,
                format!("the request target is longer than {MAX_URI} bytes"),
                None,
            ));
        }
        let path = target.split('?').next().filter(|p| p.starts_with('/'));
        if Method::from_bytes(method.as_bytes()).is_err() || target.parse::<Uri>().is_err() {
            return Err(bad("malformed request line", path));
        }
        let framing = framing(req.version == Some(1), req.headers).map_err(|d| bad(d, path))?;
        Ok(Some((len, framing)))
    }

    /// Follow a chunked body; returns the input not consumed.
    fn feed_chunked<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let State::Chunked(chunk) = &mut self.state else {
            return input;
        };
        if let Chunk::Data(n) = chunk {
            let k = usize::try_from(*n).unwrap_or(usize::MAX).min(input.len());
            out.extend_from_slice(&input[..k]);
            *n -= k as u64;
            if *n == 0 {
                *chunk = Chunk::DataCr;
            }
            return &input[k..];
        }
        let b = input[0];
        out.push(b);
        let next = match std::mem::replace(chunk, Chunk::DataCr) {
            Chunk::Size {
                size,
                digits,
                ext,
                len,
            } => match b {
                _ if len > MAX_CHUNK_LINE => None,
                b'\r' => Some(Chunk::SizeLf { size }),
                b'\n' => Some(after_size(size)),
                _ if ext => Some(Chunk::Size {
                    size,
                    digits,
                    ext,
                    len: len + 1,
                }),
                b';' | b' ' | b'\t' if digits > 0 => Some(Chunk::Size {
                    size,
                    digits,
                    ext: true,
                    len: len + 1,
                }),
                _ => char::from(b)
                    .to_digit(16)
                    .filter(|_| digits < 16)
                    .map(|d| Chunk::Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                        ext,
                        len: len + 1,
                    }),
            },
            Chunk::SizeLf { size } => (b == b'\n').then(|| after_size(size)),
            Chunk::DataCr => match b {
                b'\r' => Some(Chunk::DataLf),
                b'\n' => Some(size_line()),
                _ => None,
            },
            Chunk::DataLf => (b == b'\n').then(size_line),
            Chunk::Trailer { line, total } => match b {
                _ if total > MAX_CHUNK_LINE => None,
                b'\n' if line == 0 => {
                    self.state = State::Head;
                    return &input[1..];
                }
                b'\n' => Some(Chunk::Trailer {
                    line: 0,
                    total: total + 1,
                }),
                b'\r' => Some(Chunk::Trailer {
                    line,
                    total: total + 1,
                }),
                _ => Some(Chunk::Trailer {
                    line: line + 1,
                    total: total + 1,
                }),
            },
            Chunk::Data(_) => None,
        };
        match next {
            Some(c) => *chunk = c,
            None => self.state = State::Opaque,
        }
        &input[1..]
    }
}

fn size_line() -> Chunk {
    Chunk::Size {
        size: 0,
        digits: 0,
        ext: false,
        len: 0,
    }
}

fn after_size(size: u64) -> Chunk {
    if size == 0 {
        Chunk::Trailer { line: 0, total: 0 }
    } else {
        Chunk::Data(size)
    }
}

/// The body framing of a request, by hyper's rules (RFC 9112 §6.3): `Transfer-Encoding` with
/// `chunked` last (HTTP/1.1 only; it overrides `Content-Length`), else `Content-Length` (all
/// equal, digits only), else no body.
fn framing(http11: bool, headers: &[httparse::Header<'_>]) -> Result<State, &'static str> {
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err("Transfer-Encoding is not allowed in HTTP/1.0");
            }
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            length = None;
        } else if h.name.eq_ignore_ascii_case("content-length") && chunked.is_none() {
            let v = digits(h.value).ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != v) {
                return Err("conflicting Content-Length headers");
            }
            length = Some(v);
        }
    }
    match (chunked, length) {
        (Some(false), _) => Err("Transfer-Encoding must end with chunked"),
        (Some(true), _) => Ok(State::Chunked(size_line())),
        (None, Some(n)) if n > 0 => Ok(State::Body(n)),
        _ => Ok(State::Head),
    }
}

/// A non-empty decimal number that fits (hyper refuses anything else).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; what was released, or the rejection.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Option<Reject>, bool) {
        let mut s = Screen::default();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            if let Err(r) = s.feed(piece, &mut out) {
                return (out, Some(r), false);
            }
        }
        let at_head = s.at_head() && !s.head_started();
        (out, None, at_head)
    }

    #[test]
    fn valid_requests_pass_whole_in_any_pieces() {
        let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\n\r\n";
        let chunked = b"POST /d HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nGET /e HTTP/1.0\r\n\r\n";
        for input in [&two[..], &chunked[..]] {
            for step in [1, 2, 3, 7, 64, 4096] {
                let (out, rej, idle) = run(input, step);
                assert_eq!(rej, None, "step {step}");
                assert_eq!(out, input, "step {step}: everything passes");
                assert!(idle, "step {step}: between messages at the end");
            }
        }
        // Blank lines before a request are dropped; a partial head is held back.
        let (out, rej, idle) = run(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n", 5);
        assert_eq!((out.as_slice(), rej, idle), (&b""[..], None, false));
    }

    #[test]
    fn bad_heads_are_rejected_with_their_status() {
        let status = |input: &[u8]| {
            let (_, rej, _) = run(input, 1000);
            rej.map(|r| r.status.as_u16())
        };
        assert_eq!(status(b"GARBAGE\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /x HTTP/1.1\r\nbad header\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /x HTTP/9.9\r\n\r\n"), Some(400));
        assert_eq!(status(b"GE(T /x HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(400));
        assert_eq!(
            status(b"POST /x HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI));
        assert_eq!(status(long.as_bytes()), Some(414));
        // Detected before the line ends.
        let (_, rej, _) = run(
            format!("GET /{}", "a".repeat(MAX_URI + 100)).as_bytes(),
            512,
        );
        assert_eq!(rej.map(|r| r.status.as_u16()), Some(414));
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(MAX_HEAD));
        assert_eq!(status(big.as_bytes()), Some(431));
        let (_, rej, _) = run(&big.as_bytes()[..MAX_HEAD + 10], 100);
        assert_eq!(
            rej.map(|r| r.status.as_u16()),
            Some(431),
            "before the head ends"
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Some(431)
        );
        // The path is kept for the problem's `instance` when it could be read.
        let (_, rej, _) = run(
            b"POST /api/v1/epods?x=1 HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            100,
        );
        assert_eq!(rej.and_then(|r| r.path).as_deref(), Some("/api/v1/epods"));
    }

    #[test]
    fn a_pipelined_bad_head_leaves_the_good_one_released() {
        let mut s = Screen::default();
        let mut out = Vec::new();
        let good = b"GET /healthz HTTP/1.1\r\n\r\n";
        let mut input = good.to_vec();
        input.extend_from_slice(b"BAD\r\n\r\n");
        let rej = s.feed(&input, &mut out).expect_err("second is bad");
        assert_eq!(rej.status, StatusCode::BAD_REQUEST);
        assert_eq!(out, good);
    }

    #[test]
    fn broken_chunk_framing_is_passed_through() {
        let input =
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n";
        let (out, rej, _) = run(input, 3);
        assert_eq!(rej, None);
        assert_eq!(out, input, "hyper sees it and fails the connection");
    }
}
