//! Issue 16 experiment: the pass-through floor proxy on pingora, Cloudflare's proxy framework
//! (its own HTTP/1 codec, its own upstream connection pool, tokio underneath), built with no TLS
//! feature so it needs no system library.
//!
//! ```text
//! floor-pingora LISTEN_ADDR UPSTREAM_BASE_URL [WORKERS]
//! ```
//! One proxy service with WORKERS threads and work stealing off (pingora then runs one
//! single-threaded tokio runtime per thread, all accepting on the shared listener). Every path is
//! forwarded to the same path of the upstream base URL (its path, if any, prefixed). Unlike the
//! floor, pingora streams the request body upstream instead of reading it whole first; the answer
//! is streamed back. Plain `http://` upstreams only.

#[path = "../../floor_args.rs"]
mod floor_args;

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::Result;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Pass {
    addr: SocketAddr,
    host: String,
    prefix: String,
}

#[async_trait]
impl ProxyHttp for Pass {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.addr, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if !self.prefix.is_empty() {
            let path = format!("{}{}", self.prefix, upstream_request.uri.path());
            if let Ok(uri) = path.parse() {
                upstream_request.set_uri(uri);
            }
        }
        upstream_request.insert_header("Host", self.host.as_str())?;
        Ok(())
    }
}

fn main() {
    let floor_args::FloorArgs { listen, base: upstream, workers, .. } = floor_args::floor_args("floor-pingora");
    let rest =
        upstream.strip_prefix("http://").unwrap_or_else(|| panic!("upstream {upstream:?}: want http://HOST:PORT"));
    let (authority, prefix) = rest.split_once('/').map_or((rest, String::new()), |(a, p)| (a, format!("/{p}")));
    let addr: SocketAddr = authority.parse().unwrap_or_else(|e| panic!("upstream address {authority:?}: {e}"));
    let prefix = prefix.trim_end_matches('/').to_string();

    let run = std::env::temp_dir().join(format!("floor-pingora-{}", std::process::id()));
    let conf = ServerConf {
        threads: workers.max(1),
        work_stealing: false,
        pid_file: run.with_extension("pid").display().to_string(),
        upgrade_sock: run.with_extension("sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy =
        pingora_proxy::http_proxy_service(&server.configuration, Pass { addr, host: authority.to_string(), prefix });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever();
}
