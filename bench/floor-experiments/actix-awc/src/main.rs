//! Issue 16 experiment: the pass-through floor proxy on another well-kept framework on the epoll
//! path: actix-web's server (actix-rt: one single-threaded tokio runtime per worker, the
//! listener shared) and awc, actix's pooled HTTP/1 client (one client, so one pool, per worker).
//!
//! ```text
//! floor-actix-awc LISTEN_ADDR UPSTREAM_BASE_URL [WORKERS]
//! ```
//! Every `POST` path is forwarded to the same path of the upstream base URL; the request body is
//! read whole, the answer streamed back (with its Content-Length when upstream sent one, chunked
//! otherwise). Plain `http://` upstreams only (awc built without TLS).

#[path = "../../floor_args.rs"]
mod floor_args;

use std::time::Duration;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Upstream {
    base: &'static str,
    client: awc::Client,
}

/// Hop-by-hop headers and the framing ones actix-web sets from the body itself.
fn skip(name: &header::HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::HeaderName::from_static("keep-alive")
}

async fn forward(req: HttpRequest, body: web::Bytes, up: web::Data<Upstream>) -> HttpResponse {
    let url = format!("{}{}", up.base, req.path());
    let sent = up.client.post(url).insert_header((header::CONTENT_TYPE, "application/json")).send_body(body).await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(_) => return HttpResponse::BadGateway().finish(),
    };
    let mut out = HttpResponse::build(resp.status());
    for (name, value) in resp.headers() {
        if !skip(name) {
            out.append_header((name.clone(), value.clone()));
        }
    }
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| !resp.headers().contains_key(header::TRANSFER_ENCODING));
    match length {
        Some(n) => out.body(SizedStream::new(n, resp)),
        None => out.body(BodyStream::new(resp)),
    }
}

fn main() -> std::io::Result<()> {
    let floor_args::FloorArgs { listen, base, workers, .. } = floor_args::floor_args("floor-actix-awc");
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            // Called once per worker: one awc client, so one connection pool, per worker thread.
            let connector = awc::Connector::new()
                .limit(0)
                .conn_keep_alive(Duration::from_secs(90))
                .conn_lifetime(Duration::from_secs(24 * 3600));
            let client = awc::Client::builder().connector(connector).timeout(Duration::from_secs(600)).finish();
            App::new()
                .app_data(web::Data::new(Upstream { base, client }))
                .app_data(web::PayloadConfig::new(64 << 20))
                .default_service(web::post().to(forward))
        })
        .workers(workers)
        .backlog(1024)
        .tcp_nodelay(true)
        .keep_alive(Duration::from_secs(120))
        .bind(listen)?
        .run()
        .await
    })
}
