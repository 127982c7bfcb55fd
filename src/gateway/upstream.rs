//! Calling a real upstream over HTTP(S): URL, auth headers, credentials, transport errors.
//!
//! Credentials are read from the credentials directory and cached for [`CREDENTIAL_TTL`]; the
//! [`Redactor`] of every key loaded so far (what scrubs upstream bytes before a client sees
//! them) is rebuilt only when that set of keys changes (a generation counter, bumped when a
//! read changes the cache, spares each request the look at the keys).
//!
//! Connections are pooled per thread; one left idle for `upstream_idle_timeout` is closed by
//! the pool's own timer, so the descriptors of a burst are released even if no request follows.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::GatewayOptions;
use super::redact::Redactor;
use super::stream::BodyStream;
use crate::config::Protocol;

/// What came back from an upstream (or a mock): status, headers and the body still streaming.
pub(crate) struct UpstreamReply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: BodyStream,
}

/// Why no answer came back.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Could not connect (refused, DNS, TLS handshake, connect timeout).
    Connect(String),
    /// No response headers before the first-byte deadline.
    Timeout,
    /// The connection broke before an answer (reset, protocol error).
    Transport(String),
    /// The API key file could not be read (its name is safe to show, its content never is).
    Credentials(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect error: {e}"),
            SendError::Timeout => f.write_str("no answer before the first-byte timeout"),
            SendError::Transport(e) => write!(f, "transport error: {e}"),
            SendError::Credentials(e) => write!(f, "credentials: {e}"),
        }
    }
}

/// How long a credential file read stays fresh (the Secret volume may be updated).
const CREDENTIAL_TTL: Duration = Duration::from_secs(1);

type CachedKey = (std::time::Instant, Result<Arc<str>, String>);

/// API keys read from the credentials directory, cached briefly.
pub(crate) struct Credentials {
    dir: PathBuf,
    cache: Mutex<HashMap<String, CachedKey>>,
    /// The redactor, with the cache generation and the keys it was built from.
    redactor: Mutex<(u64, Vec<Arc<str>>, Arc<Redactor>)>,
    /// Bumped whenever a read changes what the cache holds for a file.
    generation: AtomicU64,
}

impl Credentials {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            cache: Mutex::new(HashMap::new()),
            redactor: Mutex::new((0, Vec::new(), Arc::default())),
            generation: AtomicU64::new(0),
        }
    }

    /// A redactor of every key loaded so far (rebuilt only when that set changes; while the
    /// cache has not changed since the last call, no key is looked at).
    pub(crate) fn redactor(&self) -> Arc<Redactor> {
        let generation = self.generation.load(Ordering::Acquire);
        {
            let r = self.redactor.lock().unwrap_or_else(PoisonError::into_inner);
            if r.0 == generation {
                return r.2.clone();
            }
        }
        let mut keys: Vec<Arc<str>> = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|(_, v)| v.as_ref().ok().cloned())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut r = self.redactor.lock().unwrap_or_else(PoisonError::into_inner);
        if r.1 != keys {
            r.2 = Arc::new(Redactor::new(keys.iter().map(|k| &**k)));
            r.1 = keys;
        }
        // Built from what the cache held at `generation` or later: a change after the load
        // above bumps it again, and the next call rebuilds.
        r.0 = generation;
        r.2.clone()
    }

    /// The key in `file` (surrounding whitespace trimmed).
    pub(crate) fn get(&self, file: &str) -> Result<Arc<str>, String> {
        let now = std::time::Instant::now();
        if let Some((at, v)) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(file)
            && now.duration_since(*at) < CREDENTIAL_TTL
        {
            return v.clone();
        }
        let v = match std::fs::read_to_string(self.dir.join(file)) {
            Ok(s) if !s.trim().is_empty() => Ok(Arc::from(s.trim())),
            Ok(_) => Err(format!("credential file {file:?} is empty")),
            Err(e) => Err(format!("cannot read credential file {file:?} in {}: {}", self.dir.display(), e.kind())),
        };
        let previous =
            self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(file.to_string(), (now, v.clone()));
        if previous.is_none_or(|(_, p)| p != v) {
            self.generation.fetch_add(1, Ordering::Release);
        }
        v
    }
}

/// Request headers of the client passed on to upstream (names built once, compared while
/// walking the client's headers).
const FORWARDED: [HeaderName; 3] =
    [HeaderName::from_static("openai-beta"), HeaderName::from_static("anthropic-beta"), header::ACCEPT];
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// The `Host` header hyper would write for `uri` (the host, and the port unless it is the
/// scheme's default), taken from the URI's own text instead of formatted by hyper on every
/// request (a backend's is built once, with its URLs); `None`
/// (hyper then writes it) for the rare authority this shortcut does not cover: with
/// credentials, or a port written other than as hyper prints it.
pub(crate) fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let default = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    match authority.port() {
        None => HeaderValue::from_str(authority.host()).ok(),
        Some(p) if Some(p.as_u16()) == default => HeaderValue::from_str(authority.host()).ok(),
        Some(p) if !p.as_str().starts_with('0') => HeaderValue::from_str(authority.as_str()).ok(),
        Some(_) => None,
    }
}

/// The headers every request to an upstream URL starts with, in this order: its `Host`
/// (`None`: left to hyper), `Content-Type: application/json`, `User-Agent`.
pub(crate) fn base_headers(host: Option<HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    headers
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// One connection pool per thread and gateway: with the thread-per-core server, a request
    /// and its upstream connection stay on one thread (no cross-thread wake-ups).
    /// (Gateway id, client): one entry per gateway in the process, found by a short scan.
    static CLIENTS: RefCell<Vec<(u64, HttpsClient)>> = const { RefCell::new(Vec::new()) };
}

/// The upstream HTTP(S) client: hyper's pooled client over rustls (webpki roots, ring).
pub(crate) struct Upstream {
    id: u64,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pub(crate) credentials: Credentials,
}

impl Upstream {
    pub(crate) fn new(opts: &GatewayOptions) -> Result<Self, rustls::Error> {
        let up = Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connect_timeout: opts.connect_timeout,
            idle_timeout: opts.upstream_idle_timeout,
            credentials: Credentials::new(opts.credentials_dir.clone()),
        };
        // Fail at start, not on the first request, if TLS cannot be set up.
        up.build_client()?;
        Ok(up)
    }

    fn build_client(&self) -> Result<HttpsClient, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // The pool's idle timeout takes effect only with a timer: without one, hyper-util checks
        // it only when a connection is taken for a request, and a burst's connections stay open
        // (each a descriptor) until traffic comes back.
        Ok(Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(https))
    }

    /// Calls `f` with this thread's client (built on first use), without cloning it.
    fn with_client<T>(&self, f: impl FnOnce(&HttpsClient) -> T) -> Result<T, SendError> {
        CLIENTS.with(|c| {
            let mut clients = c.borrow_mut();
            if let Some((_, client)) = clients.iter().find(|(id, _)| *id == self.id) {
                return Ok(f(client));
            }
            let client = self.build_client().map_err(|e| SendError::Connect(format!("TLS setup: {e}")))?;
            let out = f(&client);
            clients.push((self.id, client));
            Ok(out)
        })
    }

    pub(crate) fn client(&self) -> Result<HttpsClient, SendError> {
        self.with_client(HttpsClient::clone)
    }

    /// Sends one attempt and waits for the response headers until `first_byte_deadline`.
    /// `to`: the URL and the headers every request to it starts with ([`base_headers`]).
    pub(crate) async fn send(
        &self,
        to: (Uri, &HeaderMap),
        protocol: Protocol,
        api_key_file: Option<&str>,
        body: Vec<u8>,
        client_headers: &HeaderMap,
        first_byte_deadline: Instant,
    ) -> Result<UpstreamReply, SendError> {
        let api_key = match api_key_file {
            Some(f) => Some(self.credentials.get(f).map_err(SendError::Credentials)?),
            None => None,
        };
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        let (uri, base) = to;
        *req.uri_mut() = uri;
        *req.headers_mut() = base.clone();
        let headers = req.headers_mut();
        // The first value of each forwarded header, in one walk over the client's headers.
        for (name, v) in FORWARDED.iter().zip(super::first_values(client_headers, FORWARDED.each_ref())) {
            if let Some(v) = v {
                headers.insert(name.clone(), v.clone());
            }
        }
        if let Some(key) = api_key.as_deref() {
            let bad = || SendError::Credentials("the API key contains characters not allowed in an HTTP header".into());
            match protocol {
                Protocol::OpenAI => {
                    let mut bearer = String::with_capacity(7 + key.len());
                    bearer.push_str("Bearer ");
                    bearer.push_str(key);
                    let mut v = HeaderValue::try_from(bearer).map_err(|_| bad())?;
                    v.set_sensitive(true);
                    headers.insert(header::AUTHORIZATION, v);
                }
                Protocol::Anthropic => {
                    let mut v = HeaderValue::try_from(key).map_err(|_| bad())?;
                    v.set_sensitive(true);
                    headers.insert(HeaderName::from_static("x-api-key"), v);
                }
            }
        }
        if protocol == Protocol::Anthropic && !headers.contains_key(&ANTHROPIC_VERSION) {
            headers.insert(ANTHROPIC_VERSION, HeaderValue::from_static("2023-06-01"));
        }
        let pending = self.with_client(|c| c.request(req))?;
        let resp = match tokio::time::timeout_at(first_byte_deadline, pending).await {
            Err(_) => return Err(SendError::Timeout),
            Ok(Err(e)) if e.is_connect() => return Err(SendError::Connect(describe(&e))),
            Ok(Err(e)) => return Err(SendError::Transport(describe(&e))),
            Ok(Ok(r)) => r,
        };
        let (parts, body) = resp.into_parts();
        let body: BodyStream = Box::pin(body.into_data_stream().map_err(|e| io::Error::other(describe(&e))));
        Ok(UpstreamReply { status: parts.status, headers: parts.headers, body })
    }
}

const USER_AGENT: &str = concat!("tollgate/", env!("CARGO_PKG_VERSION"));

/// An error with its causes (keys never travel in URLs, and hyper never prints headers).
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_what_hyper_writes() {
        let host = |u: &str| host_header(&u.parse::<Uri>().unwrap()).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(host("http://127.0.0.1:8080/v1/chat/completions").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(host("http://example.com:80/x").as_deref(), Some("example.com"));
        assert_eq!(host("https://api.openai.com/v1").as_deref(), Some("api.openai.com"));
        assert_eq!(host("https://api.openai.com:443/v1").as_deref(), Some("api.openai.com"));
        assert_eq!(host("https://[::1]:8443/v1").as_deref(), Some("[::1]:8443"));
        // Left to hyper: credentials in the authority, a port hyper would print otherwise.
        assert_eq!(host("http://user:pw@example.com/x"), None);
        assert_eq!(host("http://example.com:0080/x").as_deref(), Some("example.com"));
        assert_eq!(host("http://example.com:08080/x"), None);
    }

    #[test]
    fn credentials_are_read_trimmed_and_errors_name_only_the_file() {
        let dir = std::env::temp_dir().join(format!("tollgate-creds-upstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("openai_api-key"), "sk-secret-123\n").unwrap();
        let c = Credentials::new(dir.clone());
        assert_eq!(&*c.get("openai_api-key").unwrap(), "sk-secret-123");
        let e = c.get("missing_key").unwrap_err();
        assert!(e.contains("missing_key") && !e.contains("sk-secret"));
        assert_eq!(c.redactor().redact_str("bad key sk-secret-123!"), "bad key [redacted]!");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
