//! Issue 16 experiment: a pass-through floor proxy on monoio, an io_uring runtime with
//! completion-based I/O (reads and writes on owned buffers), with monoio-http's HTTP/1 codec on
//! the client side and monoio-http-client's pooled client (one per thread) on the upstream side.
//!
//! ```text
//! floor-monoio-http LISTEN_ADDR UPSTREAM_BASE_URL [WORKERS]
//! ```
//! One monoio runtime (io_uring driver) per worker thread, each accepting on its own
//! `SO_REUSEPORT` socket; one task per connection, which decodes a request, reads its body whole
//! (Content-Length or chunked), sends it upstream with the same path, and writes the answer back
//! (Content-Length or chunked). Keep-alive on both sides.
//!
//! Limits, as measured here: monoio-http-client reads the upstream answer whole (a chunked
//! answer is collected before it is handed back), so this does not stream; plain `http://`
//! upstreams only.

#[path = "../../floor_args.rs"]
mod floor_args;

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri, header};
use monoio::io::Splitable;
use monoio::io::sink::SinkExt;
use monoio::io::stream::Stream;
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio_http::common::body::{FixedBody, HttpBody};
use monoio_http::common::response::Response;
use monoio_http::h1::codec::decoder::{FillPayload, RequestDecoder};
use monoio_http::h1::codec::encoder::GenericEncoder;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What every connection task of a thread shares: the upstream base and the thread's pool.
struct Upstream {
    base: &'static str,
    host: HeaderValue,
    client: monoio_http_client::Client,
}

fn status(code: StatusCode) -> Response<HttpBody> {
    let mut resp = Response::new(HttpBody::fixed_body(None));
    *resp.status_mut() = code;
    resp
}

async fn forward(up: &Upstream, req: http::Request<HttpBody>) -> Response<HttpBody> {
    let (parts, mut body) = req.into_parts();
    let Ok(bytes) = body.to_ready().await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Ok(uri) = format!("{}{}", up.base, parts.uri.path()).parse::<Uri>() else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let mut out = http::Request::post(uri)
        .body(HttpBody::fixed_body(bytes.filter(|b: &Bytes| !b.is_empty())))
        .unwrap_or_default();
    out.headers_mut().insert(header::HOST, up.host.clone());
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match up.client.send_request(out).await {
        Ok(resp) => resp,
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

async fn serve(stream: TcpStream, up: Rc<Upstream>) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut requests = RequestDecoder::new(r);
    let mut answers = GenericEncoder::new(w);
    loop {
        let req = match requests.next().await {
            Some(Ok(req)) => req,
            Some(Err(_)) | None => return,
        };
        // The body arrives through a channel the decoder feeds: fill it before reading it.
        if requests.fill_payload().await.is_err() {
            return;
        }
        let resp = forward(&up, HttpBody::request(req)).await;
        if answers.send_and_flush(resp).await.is_err() {
            return;
        }
    }
}

fn main() {
    let floor_args::FloorArgs { listen, base, workers, .. } = floor_args::floor_args("floor-monoio-http");
    let base_uri: Uri = base.parse().unwrap_or_else(|e| panic!("upstream {base:?}: {e}"));
    let host = HeaderValue::from_str(base_uri.authority().map_or("", |a| a.as_str()))
        .unwrap_or_else(|e| panic!("upstream host: {e}"));
    // The first worker runs on the main thread: under valgrind, a second thread blocked in
    // io_uring_enter would keep the main one from ever running a signal's exit.
    let threads: Vec<_> = (1..workers.max(1))
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || worker(listen, base, host))
        })
        .collect();
    worker(listen, base, host);
    for t in threads {
        let _ = t.join();
    }
}

/// One worker: a monoio runtime (io_uring driver) with its own `SO_REUSEPORT` listener and pool.
fn worker(listen: SocketAddr, base: &'static str, host: HeaderValue) {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .unwrap_or_else(|e| panic!("monoio io_uring runtime: {e}"));
    rt.block_on(async move {
        let opts = ListenerOpts::default().reuse_port(true).backlog(1024);
        let listener = TcpListener::bind_with_config(listen, &opts).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let up = Rc::new(Upstream { base, host, client: monoio_http_client::Builder::new().http1_client().build() });
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    monoio::spawn(serve(stream, up.clone()));
                }
                Err(e) => eprintln!("accept: {e}"),
            }
        }
    });
}
