//! Listeners: accepting connections with a cap, and every phase of a client connection bounded
//! in time.
//!
//! Rules (the defaults are in [`ServeLimits::default`]):
//! - **Connection cap.** At most `max_connections` client connections per listener are served
//!   at once; the accept loop takes a slot *before* accepting, so the next connection waits in
//!   the kernel's listen backlog (it is not refused, and no file descriptor is spent on it)
//!   until a slot frees. Reaching the cap logs one warning, then at most one per
//!   [`LOG_EVERY`] with the number of times it was hit meanwhile. `0` derives the cap from the
//!   process's open-file limit (half of the soft `RLIMIT_NOFILE` minus a reserve: each client
//!   connection may hold one upstream connection too), at most [`MAX_DERIVED_CONNECTIONS`].
//! - **Accept errors never spin.** Out of file descriptors (`EMFILE`/`ENFILE`) or memory, the
//!   loop sleeps with a doubling back-off (10 ms up to 1 s) instead of retrying at once, and
//!   logs at most one line per [`LOG_EVERY`] (with the count of suppressed errors).
//! - **Timeouts of a connection** (checked by one watchdog per connection, over the bytes the
//!   socket actually moves and the answers it carries, so they hold before hyper even knows the
//!   protocol):
//!   - a new connection must deliver a complete request head (HTTP/2: open a stream) within
//!     `header_read_timeout` of being accepted (a client that never sends a byte is closed
//!     then);
//!   - a kept-alive connection may stay idle `client_idle_timeout` between requests; once the
//!     next request's first byte arrives, its head must be complete within
//!     `header_read_timeout`. An HTTP/2 connection with no open stream is closed
//!     `client_idle_timeout` after its last stream ended, whatever frames (PING, SETTINGS,
//!     WINDOW_UPDATE) it still sends;
//!   - while a request is in flight, a response the client does not read (writes blocked) for
//!     `client_idle_timeout` closes the connection;
//!   - **an answer that makes no progress toward the client** is cut: a response body whose
//!     last piece the connection has not taken (HTTP/2: the client's flow-control window is
//!     closed, by a zero initial window or no WINDOW_UPDATE; HTTP/1: hyper's write buffer is
//!     full) for `client_idle_timeout` (`stream_idle_timeout` for a `text/event-stream`
//!     answer). An HTTP/2 stream is reset (RST_STREAM `CANCEL`) and the connection's other
//!     streams go on; an HTTP/1 connection is closed. Either way the body is dropped at once:
//!     its share of the memory budget and its upstream connection are released, and a stream
//!     is metered as a client that left (read on for its usage within the drain bounds). The
//!     watchdog looks at least [`TICKS_PER_TIMEOUT`] times per timeout, so the cut comes
//!     between the timeout and a quarter of it later, never before. Over HTTP/2 an answer of
//!     known length ends only once the client's window holds all of it (see [`TrackedBody`]),
//!     so no finished answer is left in h2's buffers waiting on a closed window;
//!   - reading a request *body* is bounded by the API handler (`body_read_timeout` of
//!     [`GatewayOptions`](super::GatewayOptions): a body that stalls gets 408 and the
//!     connection is closed); the metrics listener never reads bodies (hyper closes such a
//!     connection after the answer).
//! - **HTTP/2 header lists** are bounded by `max_header_bytes` as HTTP/1 heads are (h2's
//!   accounting: each field's name + value + 32 bytes; over it the stream gets 431).
//! - **Shutdown.** After `shutdown` resolves, no new connection is accepted and in-flight
//!   requests get `shutdown_grace`; when the grace is over, the [`ShutdownCut`] token every
//!   request carries (an extension) is cancelled *before* the remaining connections are
//!   dropped, so a stream cut there is metered as `shutdown_cut`, not as a client that left.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Least time between two log lines about the same listener trouble (cap reached, accept
/// errors).
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Upper bound of a connection cap derived from the open-file limit.
pub const MAX_DERIVED_CONNECTIONS: usize = 16_384;
/// File descriptors kept aside (config, credentials, logs, listeners) when deriving the cap.
const FD_RESERVE: u64 = 64;
/// The watchdog of a connection looks at its answers at least this many times per idle
/// timeout: a stalled answer is cut within a quarter of the timeout after it ran out.
pub const TICKS_PER_TIMEOUT: u32 = 4;
/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP server limits.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Largest request head (request line + headers), bytes.
    pub max_header_bytes: usize,
    /// Time allowed to receive a complete request head: from the accept for a new connection,
    /// from its first byte for a later request of a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Longest a connection may make no progress: idle between two requests (HTTP/2: with no
    /// open stream), or with a response the client does not read (or whose flow-control window
    /// it keeps closed).
    pub client_idle_timeout: Duration,
    /// Longest a streamed answer (`text/event-stream`) may wait for the client to take its
    /// next piece.
    pub stream_idle_timeout: Duration,
    /// Connections served at once (0: derived from the open-file limit).
    pub max_connections: usize,
    /// After shutdown is asked, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            client_idle_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(60),
            max_connections: 0,
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// The soft open-file limit of this process, when it can be read (`/proc/self/limits`).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" { Some(u64::MAX) } else { soft.parse().ok() }
}

impl ServeLimits {
    /// The connection cap in force: `max_connections`, or derived from the open-file limit.
    pub fn connection_cap(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        match open_file_limit() {
            Some(n) => {
                let derived = n.saturating_sub(FD_RESERVE) / 2;
                usize::try_from(derived).unwrap_or(usize::MAX).clamp(16, MAX_DERIVED_CONNECTIONS)
            }
            None => 4096,
        }
    }
}

/// Cancelled when the shutdown grace is over, just before the remaining connections are
/// dropped. Every request served by [`serve`] / [`serve_sharded`] carries it as an extension.
#[derive(Clone, Debug, Default)]
pub struct ShutdownCut(pub CancellationToken);

/// One log line per [`LOG_EVERY`] at most; counts what it kept quiet.
#[derive(Debug, Default)]
struct Throttle(Mutex<(Option<Instant>, u64)>);

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be written now.
    fn hit(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match g.0 {
            Some(at) if now.duration_since(at) < LOG_EVERY => {
                g.1 += 1;
                None
            }
            _ => {
                let suppressed = g.1;
                *g = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// What a listener shares between its accept loop and its connections.
struct Listener {
    slots: Arc<Semaphore>,
    cap: usize,
    cap_log: Throttle,
    error_log: Throttle,
    cut: CancellationToken,
}

impl Listener {
    fn new(limits: &ServeLimits) -> Self {
        let cap = limits.connection_cap();
        Self {
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            cap_log: Throttle::default(),
            error_log: Throttle::default(),
            cut: CancellationToken::new(),
        }
    }

    /// A connection slot: at once if one is free, else after logging (throttled) and waiting.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        if let Some(suppressed) = self.cap_log.hit() {
            tracing::warn!(
                max_connections = self.cap,
                times_since_last_log = suppressed,
                "connection limit reached: new connections wait in the listen backlog until one closes"
            );
        }
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Handles an accept error; returns how long to back off.
    fn accept_error(&self, e: &io::Error, backoff: &mut Duration) -> Duration {
        // EMFILE (24), ENFILE (23), ENOBUFS (105), ENOMEM (12): resources, not the peer.
        let starved = matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12));
        if let Some(suppressed) = self.error_log.hit() {
            tracing::warn!(error = %e, errors_since_last_log = suppressed, out_of_resources = starved, "accept failed");
        }
        if starved {
            *backoff = (*backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
            *backoff
        } else {
            Duration::from_millis(1)
        }
    }
}

/// Activity of one connection, as its watchdog sees it. Times are ms since `born` (+1, so 0
/// means "not set").
struct Activity {
    born: Instant,
    /// End of the last response (or the accept).
    idle_since: AtomicU64,
    /// First byte of a request head read while no request was in flight (HTTP/1 only: on an
    /// HTTP/2 connection bytes without a stream are control frames, not a head).
    head_since: AtomicU64,
    /// A write has been blocked since.
    blocked_since: AtomicU64,
    active: AtomicUsize,
    served: AtomicU64,
    /// The protocol, from the first bytes read: [`PROTO_UNKNOWN`], [`PROTO_H1`] or
    /// [`PROTO_H2`].
    proto: AtomicU8,
    /// The response bodies in flight, as the watchdog last saw them.
    flows: Mutex<Vec<Watched>>,
}

const PROTO_UNKNOWN: u8 = 0;
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

/// One response body in flight, shared by the body (which writes `state`) and the watchdog.
struct Flow {
    /// The body's polls so far, shifted left by one, with the low bit set while the body waits
    /// for the connection to take its next piece (it handed one over, or none yet): a change
    /// of the value is progress, an unchanged value with the bit set is a stall.
    state: AtomicU64,
    /// Longest stall allowed.
    bound: Duration,
    /// HTTP/2: cancels the stream's task (see [`StreamExec`]); HTTP/1: none, the connection is
    /// closed instead.
    cut: Option<CancellationToken>,
}

/// A flow as the watchdog last saw it: the state then, and since when it has not changed.
struct Watched {
    flow: Arc<Flow>,
    seen: u64,
    since: Instant,
}

/// What the watchdog found among the flows.
enum FlowCheck {
    /// A stalled HTTP/1 answer: the connection is to be closed.
    Close,
    /// The next instant a flow may stall (`None`: no flow is waiting for the client).
    Next(Option<Instant>),
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            idle_since: AtomicU64::new(1),
            head_since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            proto: AtomicU8::new(PROTO_UNKNOWN),
            flows: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms.saturating_sub(1))
    }

    fn read_some(&self, bytes: &[u8]) {
        let proto = match self.proto.load(Ordering::Relaxed) {
            PROTO_UNKNOWN => {
                // A short first read that is a prefix of the preface counts as HTTP/2 (no
                // HTTP/1 request line starts with `PRI * HTTP/2.0`).
                let n = bytes.len().min(H2_PREFACE.len());
                let p = if bytes[..n] == H2_PREFACE[..n] { PROTO_H2 } else { PROTO_H1 };
                self.proto.store(p, Ordering::Relaxed);
                p
            }
            p => p,
        };
        if proto == PROTO_H1 && self.active.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// When the connection is to be closed if nothing changes (the rules of the connection
    /// itself; its answers are checked by [`Activity::check_flows`]).
    fn deadline(&self, limits: &ServeLimits) -> Instant {
        let blocked = self.blocked_since.load(Ordering::Relaxed);
        if self.active.load(Ordering::Acquire) > 0 {
            return if blocked != 0 {
                self.at(blocked) + limits.client_idle_timeout
            } else {
                Instant::now() + limits.client_idle_timeout
            };
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            return self.at(head) + limits.header_read_timeout;
        }
        let idle = self.at(self.idle_since.load(Ordering::Relaxed));
        if self.served.load(Ordering::Relaxed) == 0 {
            idle + limits.header_read_timeout
        } else {
            idle + limits.client_idle_timeout
        }
    }

    /// Starts watching a response body that stalls after `bound` without progress.
    fn watch(&self, bound: Duration, cut: Option<CancellationToken>) -> Arc<Flow> {
        let flow = Arc::new(Flow { state: AtomicU64::new(1), bound, cut });
        // `seen` matches no state: the first look starts the clock (no clock read here).
        let w = Watched { flow: flow.clone(), seen: u64::MAX, since: self.born };
        self.flows.lock().unwrap_or_else(PoisonError::into_inner).push(w);
        flow
    }

    fn unwatch(&self, flow: &Arc<Flow>) {
        let mut g = self.flows.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = g.iter().position(|w| Arc::ptr_eq(&w.flow, flow)) {
            g.swap_remove(i);
        }
    }

    /// Looks at every flow at `now`: resets (HTTP/2) the ones stalled past their bound, or
    /// asks for the connection to close (HTTP/1).
    fn check_flows(&self, now: Instant) -> FlowCheck {
        let mut next: Option<Instant> = None;
        let mut close = false;
        let mut cuts = Vec::new();
        let mut g = self.flows.lock().unwrap_or_else(PoisonError::into_inner);
        g.retain_mut(|w| {
            let state = w.flow.state.load(Ordering::Relaxed);
            if state != w.seen {
                w.seen = state;
                w.since = now;
            }
            if state & 1 == 0 {
                return true;
            }
            let at = w.since + w.flow.bound;
            if now < at {
                next = Some(next.map_or(at, |n| n.min(at)));
                return true;
            }
            match &w.flow.cut {
                Some(cut) => {
                    cuts.push(cut.clone());
                    false
                }
                None => {
                    close = true;
                    true
                }
            }
        });
        drop(g);
        for cut in cuts {
            tracing::debug!(
                "an HTTP/2 answer made no progress toward the client within its idle timeout: stream reset"
            );
            cut.cancel();
        }
        if close { FlowCheck::Close } else { FlowCheck::Next(next) }
    }
}

/// Resolves when the connection has broken one of its time limits (stalled HTTP/2 streams are
/// reset on the way, without closing the connection).
async fn watchdog(act: Arc<Activity>, limits: ServeLimits) {
    let tick =
        (limits.client_idle_timeout.min(limits.stream_idle_timeout) / TICKS_PER_TIMEOUT).max(Duration::from_millis(1));
    loop {
        let now = Instant::now();
        let deadline = act.deadline(&limits);
        if now >= deadline {
            return;
        }
        let next = match act.check_flows(now) {
            FlowCheck::Close => {
                tracing::debug!("an HTTP/1 answer made no progress toward the client within its idle timeout");
                return;
            }
            FlowCheck::Next(next) => next,
        };
        // A flow may start to wait at any time without telling: look again within a tick.
        let wake = next.map_or(deadline, |n| n.min(deadline)).min(now + tick);
        tokio::time::sleep_until(wake).await;
    }
}

/// The socket, counting the bytes it moves for the watchdog.
struct WatchedIo {
    inner: TcpStream,
    act: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.act.read_some(&buf.filled()[before..]);
        }
        r
    }
}

impl WatchedIo {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => {
                if self.act.blocked_since.load(Ordering::Relaxed) == 0 {
                    self.act.blocked_since.store(self.act.now_ms(), Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => self.act.blocked_since.store(0, Ordering::Relaxed),
        }
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks a request in flight until its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(act: Arc<Activity>) -> Self {
        act.active.fetch_add(1, Ordering::AcqRel);
        act.head_since.store(0, Ordering::Relaxed);
        Self(act)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let act = &self.0;
        act.idle_since.store(act.now_ms(), Ordering::Relaxed);
        act.served.fetch_add(1, Ordering::Relaxed);
        act.head_since.store(0, Ordering::Relaxed);
        act.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request marked in flight and tells the watchdog whether the
/// connection keeps taking it (its [`Flow`]; none for a body that is empty from the start).
///
/// Over HTTP/2 an answer of known length ends only once the client's window has room for all
/// of it, so nothing of a finished answer is left in h2's buffers waiting on a window the
/// client keeps closed (out of the watchdog's sight): its last byte is handed over as a piece
/// of its own, and hyper sends a piece only when the stream's window exceeds what it already
/// holds by at least one byte.
struct TrackedBody {
    inner: Body,
    flow: Option<Arc<Flow>>,
    /// HTTP/2: the last byte of a known-length answer, still to be handed over.
    last: Option<bytes::Bytes>,
    polls: u64,
    flight: InFlight,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(flow) = &self.flow {
            self.flight.0.unwatch(flow);
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let r = match this.last.take() {
            Some(last) => Poll::Ready(Some(Ok(Frame::data(last)))),
            None => {
                let mut r = Pin::new(&mut this.inner).poll_frame(cx);
                let h2 = this.flow.as_ref().is_some_and(|f| f.cut.is_some());
                if h2
                    && let Poll::Ready(Some(Ok(frame))) = &mut r
                    && let Some(data) = frame.data_mut()
                    && data.len() > 1
                    && this.inner.is_end_stream()
                {
                    this.last = Some(data.split_off(data.len() - 1));
                }
                r
            }
        };
        if let Some(flow) = &this.flow {
            // A piece handed over: the next poll is up to the connection (and the client).
            // Pending: the body waits for its own source, which bounds itself.
            this.polls += 1;
            let waiting = matches!(r, Poll::Ready(Some(Ok(_))));
            flow.state.store((this.polls << 1) | u64::from(waiting), Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.last.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(last) = &self.last {
            let n = last.len() as u64;
            // Upper first: a lower bound above the upper one panics.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
            hint.set_lower(hint.lower() + n);
        }
        hint
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What [`serve`] and [`serve_sharded`] answer requests with: an axum [`Router`], or the
/// gateway's API ([`super::Api`]: its hot endpoints dispatched without the router, everything
/// else through it).
pub trait App: Clone + Send + Sync + 'static {
    /// The answer to one request.
    fn answer(&self, req: Request<Incoming>) -> impl Future<Output = Response<Body>> + Send + 'static;
}

impl App for Router {
    fn answer(&self, req: Request<Incoming>) -> impl Future<Output = Response<Body>> + Send + 'static {
        // As hyper-util's `TowerToHyperService` calls it: a clone of the router per request.
        let fut = tower_service::Service::call(&mut self.clone(), req);
        async move {
            match fut.await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    }
}

/// Longest stall of an answer with these headers: a stream's or any answer's.
fn stall_bound(resp: &Response<Body>, limits: &ServeLimits) -> Duration {
    if limits.stream_idle_timeout == limits.client_idle_timeout {
        return limits.client_idle_timeout;
    }
    let event_stream = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..17).is_some_and(|p| p.eq_ignore_ascii_case(b"text/event-stream")));
    if event_stream { limits.stream_idle_timeout } else { limits.client_idle_timeout }
}

/// The app as a hyper service that tracks requests in flight and their answers, and hands
/// each request the [`ShutdownCut`] token.
#[derive(Clone)]
struct ConnService<A> {
    app: A,
    act: Arc<Activity>,
    cut: ShutdownCut,
    limits: ServeLimits,
}

impl<A: App> hyper::service::Service<Request<Incoming>> for ConnService<A> {
    type Response = Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let flight = InFlight::new(self.act.clone());
        req.extensions_mut().insert(self.cut.clone());
        let fut = self.app.answer(req);
        let limits = self.limits;
        Box::pin(async move {
            let resp = fut.await;
            let flow = (!hyper::body::Body::is_end_stream(resp.body())).then(|| {
                // Inside an HTTP/2 stream's task (see `StreamExec`), its cut; HTTP/1 has none.
                let cut = STREAM_CUT.try_with(CancellationToken::clone).ok();
                flight.0.watch(stall_bound(&resp, &limits), cut)
            });
            Ok(resp.map(|inner| TrackedBody { inner, flow, last: None, polls: 0, flight }))
        })
    }
}

tokio::task_local! {
    /// The cut of the HTTP/2 stream whose task is running (set by [`StreamExec`]).
    static STREAM_CUT: CancellationToken;
}

/// The executor of the tasks hyper spawns, one per HTTP/2 stream: each runs until it ends or
/// its cut (the task-local [`STREAM_CUT`]) is cancelled. Dropping a stream's task drops its
/// handles, and h2 then resets the stream (RST_STREAM `CANCEL`) and frees what it buffered
/// for it; the connection and its other streams go on.
#[derive(Clone, Copy, Debug)]
struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let cut = CancellationToken::new();
        let cancelled = cut.clone().cancelled_owned();
        tokio::spawn(STREAM_CUT.scope(cut, async move {
            tokio::select! {
                biased;
                () = cancelled => {}
                _ = fut => {}
            }
        }));
    }
}

fn conn_builder(limits: ServeLimits) -> auto::Builder<StreamExec> {
    let max_header = limits.max_header_bytes.max(8192);
    let mut builder = auto::Builder::new(StreamExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(max_header)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX));
    builder
}

fn serve_stream<A: App>(
    builder: &auto::Builder<StreamExec>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    app: &A,
    limits: ServeLimits,
    cut: &CancellationToken,
    slot: Option<OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    let act = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo { inner: stream, act: act.clone() });
    let svc = ConnService { app: app.clone(), act: act.clone(), cut: ShutdownCut(cut.clone()), limits };
    let conn = graceful.watch(builder.serve_connection_with_upgrades(io, svc).into_owned());
    let cut = cut.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = conn => {}
            () = watchdog(act, limits) => tracing::debug!("client connection closed by a timeout"),
            () = cut.cancelled() => {}
        }
        drop(slot);
    });
}

async fn drain(graceful: GracefulShutdown, grace: Duration, cut: &CancellationToken) {
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
    cut.cancel();
    // Let the connection tasks see the cut and drop their connections (and meter them).
    tokio::task::yield_now().await;
}

/// Serves `app` (a [`Router`] or the gateway's [`super::Api`]) on `listener` (HTTP/1.1 and
/// h2c) on the current runtime until `shutdown` resolves, then lets in-flight requests finish
/// for at most `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    app: impl App,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let builder = conn_builder(limits);
    let graceful = GracefulShutdown::new();
    let lst = Listener::new(&limits);
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = lst.slot() => s,
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    serve_stream(&builder, &graceful, stream, &app, limits, &lst.cut, slot);
                }
                Err(e) => {
                    drop(slot);
                    tokio::time::sleep(lst.accept_error(&e, &mut backoff)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drain(graceful, limits.shutdown_grace, &lst.cut).await;
}

/// Thread-per-core serving: this task accepts; `workers` threads, each with its own
/// single-threaded runtime, serve the connections handed to them in turn. A connection, its
/// requests and their upstream connections then stay on one thread, without cross-thread
/// wake-ups (what makes the gateway's added latency close to a plain reverse proxy's).
/// `workers` ≤ 1 on a current-thread runtime serves on it; on a multi-thread runtime (the
/// `tollgate gateway` process's) it is one worker thread like the others, so one worker is
/// the same single-threaded layout as many (the multi-thread scheduler costs more per
/// request: bench/instructions.sh). The connection cap is shared by all workers.
pub async fn serve_sharded(
    listener: TcpListener,
    app: impl App,
    limits: ServeLimits,
    workers: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let current_thread =
        tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread;
    if workers <= 1 && current_thread {
        serve(listener, app, limits, shutdown.cancelled_owned()).await;
        return Ok(());
    }
    let workers = workers.max(1);
    let lst = Listener::new(&limits);
    let mut senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    type Handoff = (std::net::TcpStream, Option<OwnedSemaphorePermit>);
    for i in 0..workers {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Each worker cuts its own connections when its own grace is over.
        let (app, token, cut) = (app.clone(), shutdown.clone(), CancellationToken::new());
        let thread = std::thread::Builder::new().name(format!("tollgate-api-{i}")).spawn(move || {
            rt.block_on(async move {
                let builder = conn_builder(limits);
                let graceful = GracefulShutdown::new();
                loop {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some((std_stream, slot)) => match TcpStream::from_std(std_stream) {
                                Ok(stream) => serve_stream(&builder, &graceful, stream, &app, limits, &cut, slot),
                                Err(e) => tracing::warn!(error = %e, "cannot adopt a connection"),
                            },
                            None => break,
                        },
                        () = token.cancelled() => break,
                    }
                }
                drain(graceful, limits.shutdown_grace, &cut).await;
            });
        })?;
        senders.push(tx);
        threads.push(thread);
    }
    let mut next = 0usize;
    let mut backoff = Duration::ZERO;
    loop {
        let slot = tokio::select! {
            s = lst.slot() => s,
            () = shutdown.cancelled() => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted.and_then(|(s, _)| s.into_std()) {
                Ok(stream) => {
                    backoff = Duration::ZERO;
                    let _ = senders[next % workers].send((stream, slot));
                    next = next.wrapping_add(1);
                }
                Err(e) => {
                    drop(slot);
                    tokio::time::sleep(lst.accept_error(&e, &mut backoff)).await;
                }
            },
            () = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    drop(senders);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_explicit_or_derived_within_bounds() {
        let l = ServeLimits { max_connections: 7, ..ServeLimits::default() };
        assert_eq!(l.connection_cap(), 7);
        let derived = ServeLimits::default().connection_cap();
        assert!((16..=MAX_DERIVED_CONNECTIONS).contains(&derived), "{derived}");
    }

    #[test]
    fn throttle_speaks_once_per_period() {
        let t = Throttle::default();
        assert_eq!(t.hit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.hit(), None);
        }
    }
}
