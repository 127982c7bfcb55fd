//! Issue 16 experiment: the floor proxy (examples/floor_proxy.rs `plain`) with tokio swapped for
//! compio, an io_uring runtime. The HTTP stack stays the same: axum's router, hyper's HTTP/1
//! server and hyper-util's pooled legacy client (one pool per thread), over a small adapter
//! written here between hyper's I/O traits and compio's sockets (cyper-core, compio's hyper glue,
//! gives the executor and the timer).
//!
//! ```text
//! floor-compio-hyper LISTEN_ADDR UPSTREAM_BASE_URL [WORKERS]
//! ```
//! One compio runtime per worker thread, each accepting on its own `SO_REUSEPORT` socket. Every
//! `POST` path is forwarded to the same path of the upstream base URL; the request body is read
//! whole, the answer streamed back. Plain `http://` upstreams only (no TLS): the point is the
//! runtime's cost, not rustls's.
//!
//! Note how hyper meets io_uring here: hyper's I/O traits are readiness-based (`poll_read` into a
//! borrowed buffer), so compio serves them through `PollFd` (an io_uring poll operation, then a
//! non-blocking `recv`/`send` on the socket), not through completion-based reads into owned
//! buffers. The adapter reads into hyper's uninitialised buffer directly: cyper-core's
//! `HyperStream` (used by cyper-axum) zeroes the whole unfilled buffer on every read, which under
//! callgrind was more than half of all instructions.

#[path = "../../floor_args.rs"]
mod floor_args;
#[path = "../../floor_forward.rs"]
mod floor_forward;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::Uri;
use bytes::Bytes;
use compio::runtime::fd::PollFd;
use cyper_core::{CompioExecutor, CompioTimer};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::service::TowerToHyperService;
use send_wrapper::SendWrapper;
use socket2::{Domain, Protocol, Socket, Type};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A compio TCP socket as hyper I/O: readiness through io_uring (`PollFd`), then a
/// non-blocking `recv` into hyper's buffer or a `send`/`writev` from it.
struct Io(PollFd<Socket>);

impl Io {
    fn new(stream: compio::net::TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let fd = stream.into_poll_fd()?;
        fd.set_nonblocking(true)?;
        Ok(Io(fd))
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: recv(2) writes only the bytes it reports, and only those are advanced over.
        let n = ready!(self.0.poll_read_with(cx, |s| s.recv(unsafe { buf.as_mut() })))?;
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_write_with(cx, |s| s.shutdown(std::net::Shutdown::Write))
    }
}

/// An upstream connection. hyper-util's pool wants `Send` connections; the pool is per thread
/// and so is every connection in it, which `SendWrapper` checks.
struct Upstream(SendWrapper<Io>);

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Upstream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Connects plain TCP (TCP_NODELAY) to the URI's host and port on the current compio runtime.
#[derive(Clone, Copy)]
struct Connector;

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<Upstream>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Upstream;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(SendWrapper::new(async move {
            let host = uri.host().ok_or_else(|| io::Error::other("no host"))?.to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = compio::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(Upstream(SendWrapper::new(Io::new(stream)?)))
        }))
    }
}

type UpstreamClient = Client<Connector, Full<Bytes>>;

thread_local! {
    /// One pool per worker thread (the runtime is per thread too).
    static CLIENT: RefCell<Option<UpstreamClient>> = const { RefCell::new(None) };
}

fn client() -> UpstreamClient {
    CLIENT.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| {
                Client::builder(CompioExecutor)
                    .timer(CompioTimer)
                    .pool_timer(CompioTimer)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(Connector)
            })
            .clone()
    })
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn main() {
    let floor_args::FloorArgs { listen, base, workers, .. } = floor_args::floor_args("floor-compio-hyper");
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let rt = compio::runtime::Runtime::new().unwrap_or_else(|e| panic!("compio runtime: {e}"));
                rt.block_on(async move {
                    let std_listener = reuseport_listener(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
                    let listener = compio::net::TcpListener::from_std(std_listener).unwrap_or_else(|e| panic!("{e}"));
                    let router = Router::new().fallback(axum::routing::post(floor_forward::forward)).with_state(base);
                    let http1 = hyper::server::conn::http1::Builder::new();
                    loop {
                        let io = match listener.accept().await.and_then(|(stream, _)| Io::new(stream)) {
                            Ok(io) => io,
                            Err(e) => {
                                eprintln!("accept: {e}");
                                continue;
                            }
                        };
                        let conn = http1.serve_connection(io, TowerToHyperService::new(router.clone()));
                        compio::runtime::spawn(async move {
                            let _ = conn.await;
                        })
                        .detach();
                    }
                });
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
