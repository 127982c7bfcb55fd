//! Process-level helpers for tests that drive the `tollgate` binary: unique temporary
//! directories (per test, never per process), loopback ports, child processes that are always
//! killed, signals, deadlines, and reading Prometheus text.
//!
//! Rules: every wait has a deadline and a message naming what it waited for; directories are
//! unique per call (pid + counter + tag), so tests in one binary never share files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `tollgate` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A directory of its own for one test, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory (`tollgate-<tag>-<pid>-<n>`).
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "tollgate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Names of the entries in it, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `content` to `path` atomically: a file beside it, then a rename over it (a reader
/// or watcher never sees the file missing or half written).
pub fn write_atomic(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process, killed (SIGKILL) and reaped on drop unless it already exited.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Where its stderr goes (shown when a test fails).
    pub log: PathBuf,
    what: String,
}

impl Proc {
    /// Starts `tollgate ARGS`, stdout and stderr into `log` (stdout to `log.out`).
    pub fn spawn(what: &str, args: &[String], log: PathBuf) -> Self {
        let err = std::fs::File::create(&log).unwrap();
        let out = std::fs::File::create(log.with_extension("out")).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Proc { child, log, what: what.into() }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args(["-s", sig, &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -s {sig} {} ({}) failed", self.pid(), self.what);
    }

    /// Waits for the process to exit, at most `limit`; fails naming the process otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {limit:?}; log:\n{}", self.what, self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its stderr and stdout so far (for failure messages).
    pub fn logs(&self) -> String {
        let err = std::fs::read_to_string(&self.log).unwrap_or_default();
        let out = std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default();
        format!("--- stderr ---\n{err}--- stdout ---\n{out}")
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until it holds; fails after `limit` naming `what`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the series `name{labels}` in Prometheus text (labels in exposition order),
/// `None` when absent.
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let prefix = if l.is_empty() { format!("{name} ") } else { format!("{name}{{{}}} ", l.join(",")) };
    text.lines().find_map(|line| line.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap())
}

/// The sum of every series `name{...}` in Prometheus text whose labels include all of
/// `labels` (other labels and their order free; 0 when none).
pub fn series_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let prefix = format!("{name}{{");
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Every non-zero `tollgate_requests_total` series of one route as `(backend, outcome, count)`,
/// sorted.
pub fn request_outcomes(text: &str, route: &str) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tollgate_requests_total{") else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let get = |k: &str| {
            labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{k}=\""))).map(|v| v.trim_end_matches('"'))
        };
        if get("route") != Some(route) {
            continue;
        }
        let n: f64 = value.trim().parse().unwrap();
        if n == 0.0 {
            continue; // series are created at zero when a config is loaded
        }
        out.push((get("backend").unwrap().to_string(), get("outcome").unwrap().to_string(), n as u64));
    }
    out.sort();
    out
}

/// An exact decimal USD string (`"0.002000"`) in pico-dollars; no floating point.
pub fn usd_picos(s: &str) -> i128 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(frac.len() <= 12 && frac.chars().all(|c| c.is_ascii_digit()), "not an exact USD amount: {s:?}");
    let int: i128 = int.parse().unwrap_or_else(|_| panic!("not an exact USD amount: {s:?}"));
    let frac: i128 = format!("{frac:0<12}").parse().unwrap();
    int * 1_000_000_000_000 + if int < 0 || s.starts_with('-') { -frac } else { frac }
}
