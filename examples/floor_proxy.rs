//! The floor of the gateway's stack (issue 16), for `bench/gateway.sh`: a pass-through proxy
//! built from exactly what `tollgate gateway` is built from, doing nothing else.
//!
//! Same listener and connection handling (`tollgate::gateway::serve_sharded` with the default
//! [`ServeLimits`]: thread-per-core current-thread runtimes, the per-connection watchdog, the
//! connection cap), same router (axum), same upstream client (hyper-util's pooled legacy client
//! over hyper-rustls, `https_or_http`, one pool per thread), same body handling (the request
//! body read whole, the answer streamed back). No routing, no JSON, no metering, no metrics.
//! The time between nginx and this is what the stack costs; between this and tollgate is ours.
//!
//! ```text
//! cargo run --release --example floor_proxy -- 127.0.0.1:8090 http://127.0.0.1:8080 [WORKERS] [plain]
//! ```
//! Every `POST` path is forwarded to the same path of the upstream base URL.
//!
//! `plain` (an experiment of issue 16) swaps tollgate's listener for the least hyper needs:
//! one current-thread runtime per worker, each accepting on its own `SO_REUSEPORT` socket, no
//! connection cap, no watchdog, no graceful shutdown. It shows what those parts of the stack
//! cost.

#[path = "../bench/floor-experiments/floor_args.rs"]
mod floor_args;
#[path = "../bench/floor-experiments/floor_forward.rs"]
mod floor_forward;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;
use tollgate::gateway::{ServeLimits, serve_sharded};

/// mimalloc: fewer instructions per allocation than glibc's malloc on the request path
/// (bench/instructions.sh); the floor proxy uses it too, so it stays the gateway's exact stack.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

thread_local! {
    /// One pool per worker thread, as the gateway keeps it.
    static CLIENT: RefCell<Option<HttpsClient>> = const { RefCell::new(None) };
}

fn client() -> HttpsClient {
    CLIENT.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(Duration::from_secs(10)));
                http.set_keepalive(Some(Duration::from_secs(60)));
                let https = HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
                    .unwrap_or_else(|e| panic!("TLS setup: {e}"))
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http);
                Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(https)
            })
            .clone()
    })
}

fn main() {
    let floor_args::FloorArgs { listen, base, workers, extra } = floor_args::floor_args("floor_proxy");
    if extra.as_deref() == Some("plain") {
        plain(listen, base, workers);
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let router = Router::new().fallback(axum::routing::post(floor_forward::forward)).with_state(base);
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            t.cancel();
        });
        if let Err(e) = serve_sharded(listener, router, ServeLimits::default(), workers, token).await {
            eprintln!("floor_proxy: {e}");
        }
    });
}

/// The `plain` listener: per worker thread, a current-thread runtime accepting on its own
/// `SO_REUSEPORT` socket and serving each connection with hyper's auto builder directly.
fn plain(listen: SocketAddr, base: &'static str, workers: usize) {
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"));
                rt.block_on(async move {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
                    socket.set_reuseport(true).unwrap_or_else(|e| panic!("SO_REUSEPORT: {e}"));
                    socket.bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
                    let listener = socket.listen(1024).unwrap_or_else(|e| panic!("listen: {e}"));
                    let router = Router::new().fallback(axum::routing::post(floor_forward::forward)).with_state(base);
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let _ = stream.set_nodelay(true);
                        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
                        let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).into_owned();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                });
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
