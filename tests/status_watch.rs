//! `tollgate status --watch` as a process, its stdout a pipe (not a terminal): frames are
//! appended as plain text, one per interval, with no escape sequence; each frame is a fresh read
//! of `/status`; a failed read is shown and the watch goes on. A stand-in `/status` server (this
//! test's) answers with a report whose namespace changes on every read.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate::local::status::StatusReport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_appends_plain_frames_when_piped() {
    let reads = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = reads.clone();
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 2 {
                    // One failed read in the middle of the watch.
                    return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                }
                Ok(axum::Json(StatusReport { namespace: format!("read-{n}"), ..Default::default() }))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["status", "--watch", "--interval", "100ms", "--url", &format!("http://127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lines: Vec<String> = Vec::new();
        let mut last_frame = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            last_frame |= line.contains("namespace read-4");
            // The budget table's header is the last line of a frame without budgets.
            let done = last_frame && line.starts_with("BUDGET");
            lines.push(line);
            if done || Instant::now() > deadline {
                break;
            }
        }
        lines
    });
    // A watch that prints nothing would block the reader: killing it closes the pipe.
    let lines = tokio::time::timeout(Duration::from_secs(30), reader).await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.expect("no complete frames from `tollgate status --watch` within 30 s").unwrap();

    let text = lines.join("\n");
    assert!(!text.contains('\x1b'), "escape sequences in piped output:\n{text}");
    let headers: Vec<&String> = lines.iter().filter(|l| l.starts_with("tollgate · namespace")).collect();
    let names: Vec<String> = headers.iter().map(|h| h.split(" · ").nth(1).unwrap_or_default().to_string()).collect();
    assert_eq!(names, ["namespace read-0", "namespace read-1", "namespace read-3", "namespace read-4"], "{text}");
    assert!(text.contains("cannot read http://127.0.0.1:"), "the failed read is shown:\n{text}");
    // Frames are separated by a blank line, and each one is a whole table.
    assert_eq!(lines.iter().filter(|l| l.starts_with("ROUTE")).count(), 4, "{text}");
    assert!(lines.iter().any(String::is_empty));
}
