//! The benchmarks' upstream: an OpenAI-shaped chat-completions server that answers every
//! `POST …/chat/completions` with `"stream":true` by a paced server-sent-event stream, and
//! counts what it served, so a benchmark can compare the proxy's metering with what the
//! upstream actually delivered.
//!
//! Rules:
//! - HTTP/1.1 over plain TCP, written by hand (not hyper) so that "served" means exactly one
//!   thing: every byte of the answer, the final usage event, `[DONE]` and the closing chunk, was
//!   written to the socket without error. A stream whose write fails (the peer closed) is
//!   `aborted`, never `completed`.
//! - Keep-alive: a connection serves requests until the peer closes it; the upstream never
//!   closes an idle connection (the proxy's own pool decides when to let it go).
//! - One stream: `chunks` content events, one every `interval_ms` (the first after one
//!   interval, as a model's first token), then a `finish_reason: "stop"` event, then a usage
//!   event (`choices: []`, always sent, whether or not the request asked for it), then
//!   `data: [DONE]`. Usage: `prompt_tokens` = `prompt` (of which `cached` are
//!   `prompt_tokens_details.cached_tokens`), `completion_tokens` = `chunks + reasoning` (of which
//!   `reasoning` are `completion_tokens_details.reasoning_tokens`), `total_tokens` their sum.
//! - `GET /stats` answers the counters as one JSON object (requests, started, completed,
//!   aborted, active, usage_requested, bad_requests).
//! - Anything else is a 400 with a JSON error, counted in `bad_requests`.
//!
//! Usage: `sse-upstream listen=127.0.0.1:PORT [chunks=20] [interval_ms=250] [prompt=1234]
//! [cached=234] [reasoning=7] [threads=1]`.

mod args;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use args::{arg, die};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
static COMPLETED: AtomicU64 = AtomicU64::new(0);
static ABORTED: AtomicU64 = AtomicU64::new(0);
static USAGE_REQUESTED: AtomicU64 = AtomicU64::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);

/// Largest request head or body read (the proxies send small JSON requests).
const MAX_REQUEST: usize = 1 << 20;

struct Conf {
    chunks: u64,
    interval: Duration,
    prompt: u64,
    cached: u64,
    reasoning: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen: SocketAddr = arg(&args, "listen", None);
    let threads: usize = arg(&args, "threads", Some(1));
    let conf = Conf {
        chunks: arg(&args, "chunks", Some(20)),
        interval: Duration::from_millis(arg(&args, "interval_ms", Some(250))),
        prompt: arg(&args, "prompt", Some(1234)),
        cached: arg(&args, "cached", Some(234)),
        reasoning: arg(&args, "reasoning", Some(7)),
    };
    if conf.cached > conf.prompt {
        die("cached must not exceed prompt");
    }
    let conf: &'static Conf = Box::leak(Box::new(conf));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.unwrap_or_else(|e| die(&format!("bind {listen}: {e}")));
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(connection(sock, conf));
                }
                // Out of descriptors or similar: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; false when the peer closed or the read failed.
async fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    matches!(sock.read_buf(buf).await, Ok(n) if n > 0)
}

/// Serves requests on one connection until the peer closes it.
async fn connection(mut sock: TcpStream, conf: &'static Conf) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > MAX_REQUEST || !fill(&mut sock, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.parse().ok(),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        buf.drain(..head_end);
        let body = if chunked {
            match read_chunked(&mut sock, &mut buf).await {
                Some(b) => b,
                None => return,
            }
        } else {
            let n = content_length.unwrap_or(0);
            if n > MAX_REQUEST {
                return;
            }
            while buf.len() < n {
                if !fill(&mut sock, &mut buf).await {
                    return;
                }
            }
            buf.drain(..n).collect()
        };
        REQUESTS.fetch_add(1, Relaxed);
        let ok = if method == "GET" && path == "/stats" {
            write_whole(&mut sock, "200 OK", &stats()).await
        } else if method == "POST" && path.ends_with("/chat/completions") && is_stream(&body) {
            if wants_usage(&body) {
                USAGE_REQUESTED.fetch_add(1, Relaxed);
            }
            stream(&mut sock, conf).await
        } else {
            BAD.fetch_add(1, Relaxed);
            let msg = r#"{"error":{"message":"sse-upstream serves only streaming chat completions","type":"invalid_request_error","param":null,"code":null}}"#;
            write_whole(&mut sock, "400 Bad Request", msg).await
        };
        if !ok || close {
            return;
        }
    }
}

/// Decodes a chunked request body from `buf` (reading more as needed); None on a broken body.
async fn read_chunked(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = find(buf, b"\r\n") {
                break p;
            }
            if buf.len() > MAX_REQUEST || !fill(sock, buf).await {
                return None;
            }
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        if size > MAX_REQUEST || body.len() + size > MAX_REQUEST {
            return None;
        }
        while buf.len() < line_end + 2 + size + 2 {
            if !fill(sock, buf).await {
                return None;
            }
        }
        if size == 0 {
            // No trailers are sent by the proxies benchmarked here: the final CRLF follows.
            buf.drain(..line_end + 4);
            return Some(body);
        }
        body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        buf.drain(..line_end + 2 + size + 2);
    }
}

fn compact(body: &[u8]) -> Vec<u8> {
    body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect()
}

fn is_stream(body: &[u8]) -> bool {
    find(&compact(body), br#""stream":true"#).is_some()
}

fn wants_usage(body: &[u8]) -> bool {
    find(&compact(body), br#""include_usage":true"#).is_some()
}

fn stats() -> String {
    let started = STARTED.load(Relaxed);
    let completed = COMPLETED.load(Relaxed);
    let aborted = ABORTED.load(Relaxed);
    format!(
        r#"{{"requests":{},"started":{started},"completed":{completed},"aborted":{aborted},"active":{},"usage_requested":{},"bad_requests":{}}}"#,
        REQUESTS.load(Relaxed),
        started.saturating_sub(completed + aborted),
        USAGE_REQUESTED.load(Relaxed),
        BAD.load(Relaxed),
    )
}

async fn write_whole(sock: &mut TcpStream, status: &str, body: &str) -> bool {
    let msg =
        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    sock.write_all(msg.as_bytes()).await.is_ok()
}

/// One chunk of a chunked answer holding one server-sent event.
fn event(data: &str) -> Vec<u8> {
    let payload = format!("data: {data}\n\n");
    let mut out = format!("{:x}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

const CHUNK_HEAD: &str = r#"{"id":"chatcmpl-soak","object":"chat.completion.chunk","created":1,"model":"soak-model","#;

/// Streams one answer; true when every byte of it was written.
async fn stream(sock: &mut TcpStream, conf: &Conf) -> bool {
    STARTED.fetch_add(1, Relaxed);
    let served = stream_body(sock, conf).await;
    if served {
        COMPLETED.fetch_add(1, Relaxed);
    } else {
        ABORTED.fetch_add(1, Relaxed);
    }
    served
}

async fn stream_body(sock: &mut TcpStream, conf: &Conf) -> bool {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    if sock.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for i in 0..conf.chunks {
        tokio::time::sleep(conf.interval).await;
        let delta = if i == 0 { r#"{"role":"assistant","content":"tok "}"# } else { r#"{"content":"tok "}"# };
        let data = format!(r#"{CHUNK_HEAD}"choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]}}"#);
        if sock.write_all(&event(&data)).await.is_err() {
            return false;
        }
    }
    let completion = conf.chunks + conf.reasoning;
    let mut tail = event(&format!(r#"{CHUNK_HEAD}"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#));
    tail.extend(event(&format!(
        r#"{CHUNK_HEAD}"choices":[],"usage":{{"prompt_tokens":{},"completion_tokens":{completion},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":{}}},"completion_tokens_details":{{"reasoning_tokens":{}}}}}}}"#,
        conf.prompt,
        conf.prompt + completion,
        conf.cached,
        conf.reasoning,
    )));
    tail.extend(event("[DONE]"));
    tail.extend_from_slice(b"0\r\n\r\n");
    sock.write_all(&tail).await.is_ok()
}
