//! The connection layer: the API's own accept loop and HTTP/1.1 connections (hyper), with the
//! limits `axum::serve` does not have.
//!
//! - **Connection limit** (`[api] max_connections`): a semaphore. At the limit the accept loop
//!   closes the oldest connection that is waiting for a request head (an idle keep-alive one or
//!   a slow one; never one whose request is being served) and takes its slot, so slow-header
//!   clients cannot starve `/healthz`; when every connection is busy the new one waits up to
//!   [`QUEUE_WAIT`], then is closed.
//! - **Header timeout** (`header_timeout_ms`): from the moment the server waits for a request
//!   head and a byte of it has arrived, the whole head must arrive in time, else 408 and close.
//!   **Idle timeout** (`idle_timeout_ms`): a connection waiting for its next request without a
//!   byte of it, or a request body that stalls, is closed after it.
//! - **Head screen** (`head.rs`): every head is checked before hyper sees it; a malformed,
//!   oversized or too-slow head is answered with an RFC 7807 problem (400/408/414/431, or 503 when
//!   closed at the limit or at shutdown), with a fresh `X-Request-Id`, then the connection is
//!   closed (response first, then FIN, then the unread input is drained for a moment so the
//!   client sees the answer rather than a reset).
//! - **Graceful shutdown**: the listener closes, connections waiting for a head close at once,
//!   requests in progress finish (then their connections close), then [`serve`] returns.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::Router;
use futures::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::config::ApiConfig;
use super::head::{Reject, Screen};
use super::limit::ApiStats;
use super::problem::Problem;

/// Longest wait for a slot when every connection is busy.
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// How long a closing connection's unread input is drained after its answer.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained then.
const LINGER_BYTES: usize = 256 * 1024;
/// Most closing connections draining at once (beyond, they close without draining).
const LINGERING: usize = 256;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;

/// What the accept loop and every connection share.
struct Shared {
    header_timeout: Duration,
    idle_timeout: Duration,
    stats: Arc<ApiStats>,
    slots: Arc<Semaphore>,
    /// Open connections by accept order (oldest first).
    conns: Mutex<BTreeMap<u64, Arc<ConnFlags>>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    /// Closing connections that may drain their input (they no longer hold a slot).
    lingering: Arc<Semaphore>,
}

/// One connection's flags, seen by the accept loop.
#[derive(Default)]
struct ConnFlags {
    /// Waiting for a request head (hyper asked for one): may be closed for a new connection.
    waiting: AtomicBool,
    /// Chosen to be closed.
    evict: AtomicBool,
    /// Wakes the connection's read side.
    waker: AtomicWaker,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ConnFlags>>> {
        // A poisoned lock only means a panic elsewhere mid-update of a map: still consistent.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection: free, or freed by closing the oldest waiting connection,
    /// or freed within [`QUEUE_WAIT`]; `None`: refuse it.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let deadline = Instant::now() + QUEUE_WAIT;
        loop {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                return Some(p);
            }
            let until = if self.evict_one() {
                (Instant::now() + Duration::from_millis(100)).min(deadline)
            } else {
                deadline
            };
            match tokio::time::timeout_at(until, self.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => return Some(p),
                Ok(Err(_)) => return None,
                Err(_) if Instant::now() >= deadline => return None,
                Err(_) => {}
            }
        }
    }

    /// Mark the oldest connection waiting for a head to be closed.
    fn evict_one(&self) -> bool {
        let conns = self.conns();
        let victim = conns
            .values()
            .find(|c| c.waiting.load(Relaxed) && !c.evict.load(Relaxed));
        match victim {
            Some(c) => {
                c.evict.store(true, Relaxed);
                c.waker.wake();
                self.stats.connections_evicted.fetch_add(1, Relaxed);
                true
            }
            None => false,
        }
    }

    /// Register a connection holding `permit`.
    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next_id.fetch_add(1, Relaxed);
        let flags = Arc::new(ConnFlags::default());
        self.conns().insert(id, flags.clone());
        self.stats.connections_open.fetch_add(1, Relaxed);
        Slot {
            id,
            flags,
            shared: self.clone(),
            _permit: permit,
        }
    }

    /// Shutdown: connections waiting for a head close.
    fn stop(&self) {
        self.stopping.store(true, Relaxed);
        for c in self.conns().values() {
            c.waker.wake();
        }
    }
}

/// A connection's slot: its permit and its registry entry, given back on drop.
struct Slot {
    id: u64,
    flags: Arc<ConnFlags>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.conns().remove(&self.id);
        self.shared.stats.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Why a connection waiting for a head is closed.
enum Close {
    Stop,
    Evict,
    Timeout,
}

/// The socket as hyper sees it: reads pass through the head screen and the timeouts.
struct Guarded {
    /// Taken only by `Drop` (to answer a rejected request).
    io: Option<TcpStream>,
    screen: Screen,
    /// Screened bytes not yet read by hyper.
    ready: Vec<u8>,
    pos: usize,
    /// Reads end (EOF) from now on.
    eof: bool,
    /// The problem response to send before closing.
    answer: Option<Vec<u8>>,
    /// Since when hyper has been waiting for the current head.
    head_since: Option<Instant>,
    /// When the first byte of the current head arrived.
    first_byte: Option<Instant>,
    last_read: Instant,
    sleep: Pin<Box<Sleep>>,
    slot: Option<Slot>,
}

impl Guarded {
    fn new(io: TcpStream, slot: Slot) -> Guarded {
        let now = Instant::now();
        Guarded {
            io: Some(io),
            screen: Screen::default(),
            ready: Vec::new(),
            pos: 0,
            eof: false,
            answer: None,
            head_since: None,
            first_byte: None,
            last_read: now,
            sleep: Box::pin(tokio::time::sleep_until(now + slot.shared.idle_timeout)),
            slot: Some(slot),
        }
    }

    fn slot(&self) -> Option<(&Arc<Shared>, &Arc<ConnFlags>)> {
        self.slot.as_ref().map(|s| (&s.shared, &s.flags))
    }

    /// When the current wait ends: the header timeout once a head has started, else the idle
    /// timeout (between requests, or in a stalled body).
    fn deadline(&mut self, now: Instant) -> Option<Instant> {
        let (shared, _) = self.slot()?;
        let (header, idle) = (shared.header_timeout, shared.idle_timeout);
        if !self.screen.at_head() {
            return Some(self.last_read + idle);
        }
        let since = *self.head_since.get_or_insert(now);
        Some(match self.first_byte {
            Some(t) if self.screen.head_started() => since.max(t) + header,
            _ => since + idle,
        })
    }

    /// Should a connection waiting for a head close now?
    fn close_reason(&mut self, now: Instant) -> Option<Close> {
        let (shared, flags) = self.slot()?;
        if shared.stopping.load(Relaxed) {
            Some(Close::Stop)
        } else if flags.evict.load(Relaxed) {
            Some(Close::Evict)
        } else if self.deadline(now).is_some_and(|d| now >= d) {
            Some(Close::Timeout)
        } else {
            None
        }
    }

    /// Close while waiting for a head: a started head gets a problem answer.
    fn close(&mut self, why: Close) {
        self.eof = true;
        let started = self.screen.head_started();
        let Some((shared, flags)) = self.slot() else {
            return;
        };
        flags.waiting.store(false, Relaxed);
        let (status, detail) = match why {
            Close::Timeout if started => {
                shared.stats.header_timeouts.fetch_add(1, Relaxed);
                (
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request head did not arrive within {} ms",
                        shared.header_timeout.as_millis()
                    ),
                )
            }
            Close::Evict if started => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is at its connection limit and this connection had not sent a complete request".to_owned(),
            ),
            Close::Stop if started => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down".to_owned(),
            ),
            _ => return,
        };
        self.answer = Some(answer(status, detail, None));
    }

    /// A head the screen refused.
    fn reject(&mut self, r: Reject) {
        if let Some((shared, _)) = self.slot() {
            shared.stats.bad_requests.fetch_add(1, Relaxed);
        }
        tracing::debug!(status = r.status.as_u16(), detail = %r.detail, "api: request head refused");
        self.eof = true;
        self.answer = Some(answer(r.status, r.detail, r.path));
    }

    /// Screen what was read.
    fn screen(&mut self, data: &[u8], now: Instant) {
        self.last_read = now;
        let started = self.screen.head_started();
        let at_head = self.screen.at_head();
        let before = self.ready.len();
        if let Err(r) = self.screen.feed(data, &mut self.ready) {
            self.reject(r);
        }
        let released_head = at_head && self.ready.len() > before;
        if released_head {
            // hyper now serves it; the next wait starts when hyper asks for the next head.
            self.head_since = None;
            self.first_byte = None;
        }
        if self.screen.head_started() && (!started || released_head) {
            self.first_byte = Some(now);
        }
        if let Some((_, flags)) = self.slot() {
            flags.waiting.store(false, Relaxed);
        }
    }
}

/// A problem response with a fresh request id.
fn answer(status: StatusCode, detail: String, path: Option<String>) -> Vec<u8> {
    Problem::protocol(status, detail)
        .at(path, Some(super::request_id::generate()))
        .http1_response()
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.pos);
                buf.put_slice(&this.ready[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.ready.len() {
                    this.ready.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let now = Instant::now();
            // Read what has arrived first: a close decision sees every byte already sent.
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let mut tmp = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // The client closed; a partial head is dropped.
                    this.eof = true;
                    continue;
                }
                Poll::Ready(Ok(())) => {
                    this.screen(rb.filled(), now);
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if this.screen.at_head() {
                // hyper asks for a head: it is between requests (half-close is on, so it does
                // not read while a response is pending). Register before looking at the flags.
                if let Some((_, flags)) = this.slot() {
                    flags.waker.register(cx.waker());
                    flags.waiting.store(true, Relaxed);
                }
                if let Some(why) = this.close_reason(now) {
                    this.close(why);
                    continue;
                }
            }
            let Some(d) = this.deadline(now) else {
                return Poll::Pending;
            };
            if now >= d {
                // A stalled request body.
                this.eof = true;
                continue;
            }
            if this.sleep.deadline() != d {
                this.sleep.as_mut().reset(d);
            }
            if this.sleep.as_mut().poll(cx).is_ready() {
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.answer.is_some() {
            // The answer goes first; `Drop` sends it and closes.
            return Poll::Ready(Ok(()));
        }
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // hyper is done with the socket (after its own responses, flushed or failed): send the
        // problem answer, if any, from a task of its own that keeps the slot until it is done.
        let (Some(io), Some(bytes)) = (self.io.take(), self.answer.take()) else {
            return;
        };
        let slot = self.slot.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(answer_and_close(io, bytes, slot));
        }
    }
}

/// Send `bytes`, close the sending side and give the slot back, then drain what the client
/// still sends for a moment (so the close is a FIN, not a reset that could destroy the answer;
/// at most [`LINGERING`] connections at once), then close.
async fn answer_and_close(mut io: TcpStream, bytes: Vec<u8>, slot: Option<Slot>) {
    let deadline = Instant::now() + LINGER;
    let written = tokio::time::timeout_at(deadline, io.write_all(&bytes)).await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = io.shutdown().await;
    let linger = slot.and_then(|s| s.shared.lingering.clone().try_acquire_owned().ok());
    let Some(_linger) = linger else {
        return;
    };
    let mut sink = [0u8; READ_CHUNK];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// The router as a hyper service, with the client's address as `ConnectInfo`.
#[derive(Clone)]
struct Service {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let app = self.app.clone();
        Box::pin(tower::ServiceExt::oneshot(app, req))
    }
}

/// Listen backlog of [`bind`]: connections the kernel completes before they are accepted
/// (tokio's `TcpListener::bind` uses 128, which a burst of connections overflows: a dropped
/// SYN costs a client a 1 s retransmission, `/healthz` included).
pub const BACKLOG: u32 = 1024;

/// Bind the API's listener (`host:port`, the first address it resolves to) with [`BACKLOG`].
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address"))
    })?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serve `app` on `listener` until `shutdown` completes, then finish the requests in progress.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &ApiConfig,
    stats: Arc<ApiStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        header_timeout: Duration::from_millis(cfg.header_timeout_ms),
        idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
        stats,
        slots: Arc::new(Semaphore::new(cfg.max_connections)),
        conns: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        lingering: Arc::new(Semaphore::new(LINGERING)),
    });
    let mut http = http1::Builder::new();
    // Half-close on: hyper reads only when it wants a head or body bytes, never to watch for
    // EOF while a response is pending, so the screen may end reads (EOF) whenever hyper asks for
    // a head. The timeouts are the screen's own.
    http.half_close(true)
        .keep_alive(true)
        .header_read_timeout(None);
    let http = Arc::new(http);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                };
                let Some(permit) = shared.admit().await else {
                    shared.stats.connections_refused.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "api: connection refused at the connection limit");
                    continue;
                };
                let slot = shared.register(permit);
                tasks.spawn(connection(sock, peer, slot, app.clone(), http.clone()));
            }
        }
    }
    drop(listener);
    shared.stop();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// An accept error: per-connection ones are skipped; others (out of file descriptors) pause.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "api: accept failed (out of file descriptors? see LimitNOFILE and [api] max_connections)");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One connection, until it closes. At shutdown the screen ends it when hyper next asks for a
/// request head (at once when it is waiting for one; after the response in progress otherwise).
/// hyper's own graceful shutdown is not used: it does not close a connection that has not
/// completed a first request, and it would close one without the screen's answer.
async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    http: Arc<http1::Builder>,
) {
    let _ = sock.set_nodelay(true);
    let conn = http.serve_connection(
        TokioIo::new(Guarded::new(sock, slot)),
        Service { app, peer },
    );
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "api: connection ended with an error");
    }
}
