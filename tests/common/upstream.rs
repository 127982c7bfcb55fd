//! Fake upstreams written for the tests: an axum server on 127.0.0.1:0 whose answer is a
//! closure of the request, recording every request it saw; streams paced by the test; and a
//! "black hole" address on loopback that never completes a TCP handshake.
//!
//! The black hole is a listener with a backlog of 0 whose accept queue is filled and never
//! accepted: Linux then drops further SYNs, so a connect there hangs until the caller's own
//! timeout (no non-loopback address is ever used). `black_hole` checks that property itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One request a fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Path (`/v1/chat/completions`).
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Body as JSON (`Null` when it was not JSON).
    pub body: Value,
}

type Handler = Arc<dyn Fn(&Seen, usize) -> Response + Send + Sync>;

/// A running fake upstream; stops on drop.
pub struct Fake {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    /// Serves `answer(request, n)` (n counts from 1) for every request.
    pub async fn start(answer: impl Fn(&Seen, usize) -> Response + Send + Sync + 'static) -> Fake {
        let answer: Handler = Arc::new(answer);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let app = Router::new().fallback(move |req: Request| {
            let (seen, answer) = (seen2.clone(), answer.clone());
            async move {
                let (parts, body) = req.into_parts();
                let raw = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
                let s = Seen {
                    path: parts.uri.path().to_string(),
                    headers: parts.headers,
                    body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                };
                let n = {
                    let mut v = seen.lock().unwrap();
                    v.push(s.clone());
                    v.len()
                };
                answer(&s, n)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake { addr, seen, task }
    }

    /// A fixed status and JSON body with extra headers.
    pub async fn fixed(status: u16, body: &'static str, headers: &'static [(&'static str, &'static str)]) -> Fake {
        Fake::start(move |_, _| reply(status, body.to_string(), headers)).await
    }

    /// `http://ADDR/v1`, what a manifest's `baseUrl` names.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// How many requests it received.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The `i`-th request it received (0-based).
    pub fn seen(&self, i: usize) -> Seen {
        self.seen.lock().unwrap().get(i).cloned().expect("the fake received that many requests")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JSON answer with a status and extra headers.
pub fn reply(status: u16, body: String, headers: &[(&str, &str)]) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), body).into_response();
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        r.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    r
}

/// A server-sent-events answer: `events[0]` at once, then one every `every`.
pub fn paced_sse(events: Vec<String>, every: Duration, headers: &[(&str, &str)]) -> Response {
    let s = futures::stream::unfold(0usize, move |i| {
        let events = events.clone();
        async move {
            let e = events.get(i)?.clone();
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            Some((Ok::<Bytes, std::io::Error>(Bytes::from(e)), i + 1))
        }
    });
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    for (k, v) in headers {
        r.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    r
}

/// A loopback address whose TCP handshakes never complete, and what keeps it so (drop both
/// to release it). Fails if the kernel does not drop SYNs there (checked with a connect).
pub async fn black_hole() -> (SocketAddr, tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue (never accepted) until a connect times out: from then on SYNs to
    // this address are dropped.
    let fill = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (held, true),
                Err(e) => panic!("unexpected connect error while filling the accept queue of {addr}: {e}"),
            }
        }
        (held, false)
    });
    let (held, silent) = fill.await.unwrap();
    assert!(silent, "{addr}: connects still complete after {} queued connections", held.len());
    (addr, listener, held)
}
