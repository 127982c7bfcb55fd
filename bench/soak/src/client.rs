//! The benchmarks' load client: `concurrency` tasks, each on its own HTTP/1.1 keep-alive
//! connection, each sending streaming chat completions one after another until `duration`
//! seconds have passed, then finishing the stream in flight and leaving.
//!
//! Rules:
//! - Every stream is checked, not only counted: a 200 with `text/event-stream`, exactly
//!   `chunks` content events, one `finish_reason: "stop"` event, `data: [DONE]` last, and a usage
//!   event exactly when the request asked for one (`stream_options.include_usage`; with
//!   `usage=mixed` every other stream of a task asks), whose counts equal the upstream's
//!   (`prompt`, `cached`, `chunks + reasoning`, `reasoning`). Anything else is an error, counted
//!   by kind; a stream is `completed` only when all of it holds.
//! - `hangup_pct` percent of the streams (a per-task seeded generator decides which) hang up
//!   mid-stream: after k content events, k uniform in 1..chunks-1, the client closes the TCP
//!   connection (FIN) and opens a new one for its next stream.
//! - A connection the server closed between two requests is reopened and counted in
//!   `reconnects`, not as an error; a failed connect is an error (`connect`) and is retried
//!   after 100 ms.
//! - Task starts are spread evenly over `ramp` seconds, so streams do not move in lockstep.
//! - Progress goes to stderr every `progress` seconds; the final counts go to stdout as one JSON
//!   object. `events` counts every SSE data event received (content, finish, usage, `[DONE]`).
//!
//! Usage: `stream-client addr=127.0.0.1:PORT [model=soak] [path=/v1/chat/completions]
//! [concurrency=200] [duration=20] [hangup_pct=0] [chunks=20] [prompt=1234] [cached=234]
//! [reasoning=7] [usage=mixed|always|never] [ramp=2] [progress=10] [timeout=120] [seed=1]
//! [threads=1]`.

mod args;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use args::{arg, die};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    completed: AtomicU64,
    hung_up: AtomicU64,
    reconnects: AtomicU64,
    events: AtomicU64,
    content_events: AtomicU64,
    stream_ms_sum: AtomicU64,
    stream_ms_max: AtomicU64,
    active: AtomicU64,
    err_connect: AtomicU64,
    err_request: AtomicU64,
    err_status: AtomicU64,
    err_body: AtomicU64,
    err_short: AtomicU64,
    err_usage: AtomicU64,
    err_timeout: AtomicU64,
}

impl Counters {
    fn errors(&self) -> u64 {
        [
            &self.err_connect,
            &self.err_request,
            &self.err_status,
            &self.err_body,
            &self.err_short,
            &self.err_usage,
            &self.err_timeout,
        ]
        .iter()
        .map(|c| c.load(Relaxed))
        .sum()
    }
}

static C: std::sync::LazyLock<Counters> = std::sync::LazyLock::new(Counters::default);

#[derive(Clone, Copy, PartialEq)]
enum UsageMode {
    Mixed,
    Always,
    Never,
}

struct Conf {
    addr: SocketAddr,
    model: String,
    path: String,
    concurrency: u64,
    duration: Duration,
    hangup_pct: u64,
    chunks: u64,
    prompt: u64,
    cached: u64,
    reasoning: u64,
    usage: UsageMode,
    ramp: Duration,
    progress: Duration,
    timeout: Duration,
    seed: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = match arg::<String>(&args, "usage", Some("mixed".into())).as_str() {
        "mixed" => UsageMode::Mixed,
        "always" => UsageMode::Always,
        "never" => UsageMode::Never,
        other => die(&format!("usage must be mixed, always or never, not {other}")),
    };
    let conf = Conf {
        addr: arg(&args, "addr", None),
        model: arg(&args, "model", Some("soak".into())),
        path: arg(&args, "path", Some("/v1/chat/completions".into())),
        concurrency: arg(&args, "concurrency", Some(200)),
        duration: Duration::from_secs(arg(&args, "duration", Some(20))),
        hangup_pct: arg(&args, "hangup_pct", Some(0)),
        chunks: arg(&args, "chunks", Some(20)),
        prompt: arg(&args, "prompt", Some(1234)),
        cached: arg(&args, "cached", Some(234)),
        reasoning: arg(&args, "reasoning", Some(7)),
        usage,
        ramp: Duration::from_secs_f64(arg(&args, "ramp", Some(2.0))),
        progress: Duration::from_secs(arg(&args, "progress", Some(10))),
        timeout: Duration::from_secs(arg(&args, "timeout", Some(120))),
        seed: arg(&args, "seed", Some(1)),
    };
    if conf.hangup_pct > 100 {
        die("hangup_pct must be 0..100");
    }
    let threads: usize = arg(&args, "threads", Some(1));
    let conf: &'static Conf = Box::leak(Box::new(conf));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    rt.block_on(run(conf));
}

async fn run(conf: &'static Conf) {
    let start = Instant::now();
    let deadline = start + conf.duration;
    let progress = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(start + conf.progress, conf.progress);
        loop {
            tick.tick().await;
            eprintln!(
                "t={}s active={} started={} completed={} hung_up={} errors={} events={}",
                start.elapsed().as_secs(),
                C.active.load(Relaxed),
                C.started.load(Relaxed),
                C.completed.load(Relaxed),
                C.hung_up.load(Relaxed),
                C.errors(),
                C.events.load(Relaxed),
            );
        }
    });
    let mut tasks = Vec::new();
    for i in 0..conf.concurrency {
        let offset = conf.ramp.mul_f64(i as f64 / conf.concurrency.max(1) as f64);
        tasks.push(tokio::spawn(worker(conf, i, start + offset, deadline)));
    }
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let completed = C.completed.load(Relaxed);
    println!(
        concat!(
            r#"{{"elapsed_s":{:.1},"started":{},"completed":{},"hung_up":{},"errors":{},"reconnects":{},"#,
            r#""events":{},"content_events":{},"stream_ms_mean":{},"stream_ms_max":{},"#,
            r#""errors_by_kind":{{"connect":{},"request":{},"status":{},"body":{},"short":{},"usage":{},"timeout":{}}}}}"#
        ),
        elapsed,
        C.started.load(Relaxed),
        completed,
        C.hung_up.load(Relaxed),
        C.errors(),
        C.reconnects.load(Relaxed),
        C.events.load(Relaxed),
        C.content_events.load(Relaxed),
        C.stream_ms_sum.load(Relaxed).checked_div(completed).unwrap_or(0),
        C.stream_ms_max.load(Relaxed),
        C.err_connect.load(Relaxed),
        C.err_request.load(Relaxed),
        C.err_status.load(Relaxed),
        C.err_body.load(Relaxed),
        C.err_short.load(Relaxed),
        C.err_usage.load(Relaxed),
        C.err_timeout.load(Relaxed),
    );
}

/// xorshift64*: the per-task choice of which streams hang up, and when.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropping the connection future closes the socket.
        self.task.abort();
    }
}

async fn connect(addr: SocketAddr) -> Option<Conn> {
    let sock = TcpStream::connect(addr).await.ok()?;
    let _ = sock.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.ok()?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(Conn { sender, task })
}

enum End {
    Completed,
    HungUp,
    /// The server closed the kept-alive connection before this request was sent.
    Closed,
    Error(&'static AtomicU64),
}

async fn worker(conf: &'static Conf, id: u64, first: Instant, deadline: Instant) {
    tokio::time::sleep_until(first).await;
    let mut rng = Rng((conf.seed ^ (id.wrapping_mul(0x9E37_79B9_7F4A_7C15))) | 1);
    let mut conn: Option<Conn> = None;
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let Some(c) = (match conn.take() {
            Some(c) => Some(c),
            None => connect(conf.addr).await,
        }) else {
            C.err_connect.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut c = c;
        let hang_at =
            (conf.chunks >= 2 && rng.next() % 100 < conf.hangup_pct).then(|| 1 + rng.next() % (conf.chunks - 1));
        let usage = match conf.usage {
            UsageMode::Always => true,
            UsageMode::Never => false,
            UsageMode::Mixed => n.is_multiple_of(2),
        };
        n += 1;
        let t0 = Instant::now();
        let end = match tokio::time::timeout(conf.timeout, one_stream(conf, &mut c, usage, hang_at)).await {
            Ok(e) => e,
            Err(_) => End::Error(&C.err_timeout),
        };
        match end {
            End::Completed => {
                C.completed.fetch_add(1, Relaxed);
                let ms = t0.elapsed().as_millis() as u64;
                C.stream_ms_sum.fetch_add(ms, Relaxed);
                C.stream_ms_max.fetch_max(ms, Relaxed);
                conn = Some(c);
            }
            End::HungUp => {
                C.hung_up.fetch_add(1, Relaxed);
                drop(c);
            }
            End::Closed => {
                C.reconnects.fetch_add(1, Relaxed);
                n -= 1;
            }
            End::Error(counter) => {
                counter.fetch_add(1, Relaxed);
                drop(c);
            }
        }
    }
}

/// Payloads of the complete `data:` events at the front of `buf`, which keeps the rest.
fn take_events(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(p) = buf[start..].windows(2).position(|w| w == b"\n\n") {
        let ev = &buf[start..start + p];
        let mut data: Vec<u8> = Vec::new();
        for line in ev.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(d) = line.strip_prefix(b"data:") {
                let d = d.strip_prefix(b" ").unwrap_or(d);
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(d);
            }
        }
        if !data.is_empty() {
            out.push(data);
        }
        start += p + 2;
    }
    buf.drain(..start);
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The usage object of an event equals the upstream's.
fn usage_ok(conf: &Conf, v: &serde_json::Value) -> bool {
    let u = &v["usage"];
    let completion = conf.chunks + conf.reasoning;
    u["prompt_tokens"].as_u64() == Some(conf.prompt)
        && u["completion_tokens"].as_u64() == Some(completion)
        && u["total_tokens"].as_u64() == Some(conf.prompt + completion)
        && u["prompt_tokens_details"]["cached_tokens"].as_u64() == Some(conf.cached)
        && u["completion_tokens_details"]["reasoning_tokens"].as_u64() == Some(conf.reasoning)
}

async fn one_stream(conf: &Conf, c: &mut Conn, usage: bool, hang_at: Option<u64>) -> End {
    if c.sender.ready().await.is_err() {
        return End::Closed;
    }
    let body = if usage {
        format!(
            r#"{{"model":"{}","stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"Stream a few tokens."}}]}}"#,
            conf.model
        )
    } else {
        format!(
            r#"{{"model":"{}","stream":true,"messages":[{{"role":"user","content":"Stream a few tokens."}}]}}"#,
            conf.model
        )
    };
    let req = Request::post(conf.path.as_str())
        .header("host", conf.addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::from(body)));
    let Ok(req) = req else { return End::Error(&C.err_request) };
    C.started.fetch_add(1, Relaxed);
    C.active.fetch_add(1, Relaxed);
    let end = read_stream(conf, c, req, usage, hang_at).await;
    C.active.fetch_sub(1, Relaxed);
    end
}

async fn read_stream(conf: &Conf, c: &mut Conn, req: Request<Full<Bytes>>, usage: bool, hang_at: Option<u64>) -> End {
    let resp = match c.sender.send_request(req).await {
        Ok(r) => r,
        Err(_) => return End::Error(&C.err_request),
    };
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if resp.status() != 200 || !is_sse {
        let _ = resp.into_body().collect().await;
        return End::Error(&C.err_status);
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let (mut content, mut finish, mut usage_seen, mut done, mut bad) = (0u64, 0u64, 0u64, false, false);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return End::Error(&C.err_body) };
        let Ok(data) = frame.into_data() else { continue };
        buf.extend_from_slice(&data);
        for ev in take_events(&mut buf) {
            C.events.fetch_add(1, Relaxed);
            if done {
                // Nothing may follow [DONE].
                bad = true;
            } else if ev == b"[DONE]" {
                done = true;
            } else if contains(&ev, b"\"usage\"") && !contains(&ev, b"\"usage\":null") {
                match serde_json::from_slice::<serde_json::Value>(&ev) {
                    Ok(v) if usage_ok(conf, &v) => usage_seen += 1,
                    _ => return End::Error(&C.err_usage),
                }
            } else if contains(&ev, b"\"finish_reason\":\"stop\"") {
                finish += 1;
            } else if contains(&ev, b"\"content\"") {
                content += 1;
                C.content_events.fetch_add(1, Relaxed);
                if hang_at == Some(content) {
                    return End::HungUp;
                }
            } else {
                bad = true;
            }
        }
    }
    if bad || !done || content != conf.chunks || finish != 1 {
        return End::Error(&C.err_short);
    }
    if usage_seen != u64::from(usage) {
        return End::Error(&C.err_usage);
    }
    End::Completed
}
