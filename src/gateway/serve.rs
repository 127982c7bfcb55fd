//! Serving a router on a listener: HTTP/1.1 and h2c, keep-alive, a bounded request head and
//! its read timeout, graceful shutdown with a grace period. [`serve`] runs on the current
//! runtime; [`serve_sharded`] hands connections to per-thread single-threaded runtimes.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// HTTP server limits.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Largest request head (request line + headers), bytes.
    pub max_header_bytes: usize,
    /// Time allowed to receive a request head.
    pub header_read_timeout: Duration,
    /// After shutdown is asked, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

fn conn_builder(limits: ServeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
}

fn serve_stream(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    router: &Router,
) {
    let _ = stream.set_nodelay(true);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
    let conn = graceful.watch(conn.into_owned());
    tokio::spawn(async move {
        let _ = conn.await;
    });
}

async fn drain(graceful: GracefulShutdown, grace: Duration) {
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c) on the current runtime until `shutdown`
/// resolves, then lets in-flight requests finish for at most `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let builder = conn_builder(limits);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_stream(&builder, &graceful, stream, &router),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drain(graceful, limits.shutdown_grace).await;
}

/// Thread-per-core serving: this task accepts; `workers` threads, each with its own
/// single-threaded runtime, serve the connections handed to them in turn. A connection, its
/// requests and their upstream connections then stay on one thread, without cross-thread
/// wake-ups (what makes the gateway's added latency close to a plain reverse proxy's).
/// `workers` ≤ 1 serves on the current runtime.
pub async fn serve_sharded(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    workers: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if workers <= 1 {
        serve(listener, router, limits, shutdown.cancelled_owned()).await;
        return Ok(());
    }
    let mut senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (router, token) = (router.clone(), shutdown.clone());
        let thread = std::thread::Builder::new().name(format!("tollgate-api-{i}")).spawn(move || {
            rt.block_on(async move {
                let builder = conn_builder(limits);
                let graceful = GracefulShutdown::new();
                loop {
                    tokio::select! {
                        next = rx.recv() => match next.map(TcpStream::from_std) {
                            Some(Ok(stream)) => serve_stream(&builder, &graceful, stream, &router),
                            Some(Err(e)) => tracing::warn!(error = %e, "cannot adopt a connection"),
                            None => break,
                        },
                        () = token.cancelled() => break,
                    }
                }
                drain(graceful, limits.shutdown_grace).await;
            });
        })?;
        senders.push(tx);
        threads.push(thread);
    }
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted.and_then(|(s, _)| s.into_std()) {
                Ok(stream) => {
                    let _ = senders[next % workers].send(stream);
                    next = next.wrapping_add(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
