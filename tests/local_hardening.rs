//! Hardening of `tollgate local` against a state file that cannot be saved and special files in
//! the manifest directory, against the real binary.
//!
//! - A state path that cannot be written (missing or read-only directory) stops `local` at
//!   start with exit 2 and a message naming it.
//! - A save that fails while running (a full tmpfs) is logged once per failure episode, shown in
//!   `/status` (`stateSave`) and by `tollgate status`, leaves no temporary file, recovers when
//!   space returns, and a stop while failing exits non-zero saying the state was NOT saved.
//! - A state file deleted while running is rewritten within a couple of seconds.
//! - A FIFO, a symlink to `/dev/zero` and an oversized file named `*.yaml` neither block the
//!   policy loop nor balloon the process; they are reported (in `/status` while running, as the
//!   start-up error otherwise) and a dangling symlink (an editor's lock file) is skipped.
//!
//! Rules: tests that need a mount (tmpfs) run only where `mount` works (root with
//! CAP_SYS_ADMIN) and otherwise say why they skip (a failure where `TOLLGATE_CI_PROVIDES` lists
//! `tmpfs`: tests/common/skip.rs); every mount is unmounted on drop, before
//! the test's directory is removed. Each test has its own directory; every wait has a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::local::Local;
use common::proc::{BIN, Proc, TempDir, free_port, wait_until};
use common::skip;

const ROUTES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: chat}
spec:
  backends:
    - name: openai
      provider: openai
      model: gpt-5-mini
      endpoint: {mock: {latency: 1ms, inputTokens: 1000, cachedInputTokens: 0, cacheWriteTokens: 0, outputTokens: 1000, reasoningTokens: 0}}
      pricing: {input: "1.00", output: "1.00"}
"#;

const BUDGETS: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ProviderBudget
metadata: {name: openai-budget}
spec:
  provider: openai
  limit: "1000"
  window: {period: Rolling, duration: 70000000h}
"#;

/// The log line of a failed save (one per failure episode).
const SAVE_ERROR: &str = "cannot save the state file";

/// A manifest directory, a state directory and logs, in one test's own directory.
struct Setup {
    root: TempDir,
    manifests: PathBuf,
    state_dir: PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Self {
        let root = TempDir::new(tag);
        let (manifests, state_dir) = (root.join("manifests"), root.join("state"));
        std::fs::create_dir(&manifests).unwrap();
        std::fs::create_dir(&state_dir).unwrap();
        std::fs::write(manifests.join("routes.yaml"), ROUTES).unwrap();
        std::fs::write(manifests.join("budgets.yaml"), BUDGETS).unwrap();
        Setup { root, manifests, state_dir }
    }

    fn state(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// Starts `tollgate local` with this policy interval and state file (not waiting).
    fn spawn(&self, interval: &str, state: &Path) -> Local {
        let port = free_port();
        let args: Vec<String> = [
            "local",
            "--interval",
            interval,
            "--table",
            "never",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "-f",
            self.manifests.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let log = self.root.join(&format!("local-{port}.log"));
        Local {
            proc: Proc::spawn("tollgate local", &args, log),
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    /// Starts `tollgate local` and waits until it answers `/status`.
    async fn start(&self, interval: &str) -> Local {
        let local = self.spawn(interval, &self.state());
        local.ready().await;
        local
    }
}

impl Local {
    /// Waits until `/status` satisfies `cond`, returning it; fails naming `what`.
    async fn wait_status(&self, what: &str, limit: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.status().await
                && cond(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; log:\n{}",
                self.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `n` chat requests, each answered 200 by `openai`.
    async fn spend(&self, n: usize) {
        for _ in 0..n {
            let r = self
                .client
                .post(format!("{}/v1/chat/completions", self.url))
                .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{}", self.proc.logs());
            let _ = r.bytes().await;
        }
    }

    /// How many failed-save error lines stderr holds.
    fn save_errors(&self) -> usize {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default().lines().filter(|l| l.contains(SAVE_ERROR)).count()
    }
}

/// A tmpfs mounted on a directory, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs with `options` on `dir`; `None` (skipped through tests/common/skip.rs)
    /// where this process may not mount.
    fn tmpfs(dir: &Path, options: &str, test: &str) -> Option<Mount> {
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir).output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Mount(dir.to_path_buf())),
            Ok(o) => format!(
                "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run mount: {e}"),
        };
        skip::skip(skip::TMPFS, test, &why);
        None
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with `file` until it is full.
fn fill(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file).unwrap();
    let chunk = [0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// Names of the entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Resident memory of a process, from `/proc/PID/status`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------

/// A state path whose directory is missing, or read-only, is refused at start: exit 2 with a
/// message naming the file, before anything is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_path_that_cannot_be_written_stops_local_at_start() {
    let setup = Setup::new("lhstart");
    let missing = setup.root.join("no-such-dir/state.json");
    let mut local = setup.spawn("1h", &missing);
    let status = local.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{}", local.proc.logs());
    let logs = local.proc.logs();
    assert!(
        logs.contains(&format!("error: state file {} cannot be written (", missing.display()))
            && logs.contains("refusing to start"),
        "{logs}"
    );

    let test = "a_state_path_that_cannot_be_written_stops_local_at_start (read-only part)";
    let Some(_ro) = Mount::tmpfs(&setup.state_dir, "ro,size=64k", test) else { return };
    let mut local = setup.spawn("1h", &setup.state());
    let status = local.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{}", local.proc.logs());
    let logs = local.proc.logs();
    assert!(
        logs.contains(&format!(
            "error: state file {} cannot be written (Read-only file system",
            setup.state().display()
        )),
        "{logs}"
    );
    assert!(!logs.contains("serving"), "nothing served: {logs}");
}

/// A save that fails at runtime (the state file system is full) is loud once per episode,
/// visible in `/status` and `tollgate status`, leaves no temporary file, recovers when space
/// returns, and a SIGTERM while failing exits non-zero saying the state was NOT saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_save_is_loud_shown_and_fails_the_stop() {
    let setup = Setup::new("lhfull");
    let test = "a_failing_save_is_loud_shown_and_fails_the_stop";
    let Some(_tmpfs) = Mount::tmpfs(&setup.state_dir, "size=64k", test) else { return };
    let mut local = setup.start("1h").await;
    let s = local.ready().await;
    assert_eq!(s["stateSave"]["ok"], true, "{s}");
    assert!(setup.state().exists());

    let filler = setup.state_dir.join("filler");
    fill(&filler);
    local.spend(3).await;
    let t0 = Instant::now();
    let s = local.wait_status("stateSave.ok false", Duration::from_secs(10), |s| s["stateSave"]["ok"] == false).await;
    let error = s["stateSave"]["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&format!("cannot write state file {}", setup.state().display()))
            && error.contains("No space left on device"),
        "{s}"
    );
    assert!(s["stateSave"]["since"].is_string(), "{s}");
    println!("failed save visible in /status {:?} after the traffic", t0.elapsed());

    let (code, table, _) = run(&["status", "--url", &local.url]);
    assert_eq!(code, Some(0));
    assert!(table.contains("! state NOT saved since ") && table.contains(&error), "{table}");

    // The checkpoint retries every second while failing; more traffic keeps the state changing.
    // Three seconds of retries must still be one error line (one per episode, not per second).
    let retry_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < retry_until {
        local.spend(1).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(local.save_errors(), 1, "{}", local.proc.logs());
    assert_eq!(entries(&setup.state_dir), ["filler", "state.json"], "no temporary file left");

    // Space returns: the next save succeeds and the condition clears.
    std::fs::remove_file(&filler).unwrap();
    let s =
        local.wait_status("stateSave.ok true again", Duration::from_secs(10), |s| s["stateSave"]["ok"] == true).await;
    assert!(s["stateSave"].get("error").is_none(), "{s}");
    assert!(local.proc.stdout().contains("state file saved again to"), "{}", local.proc.logs());

    // A second episode: one more error line, and a stop while failing is an error.
    fill(&filler);
    local.spend(2).await;
    local.wait_status("stateSave.ok false again", Duration::from_secs(10), |s| s["stateSave"]["ok"] == false).await;
    local.proc.signal("TERM");
    let status = local.proc.wait_exit(Duration::from_secs(15));
    let logs = local.proc.logs();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(
        logs.contains(&format!("error: stopped, but the state was NOT saved to {}", setup.state().display())),
        "{logs}"
    );
    assert!(!local.proc.stdout().contains("state saved to"), "{logs}");
    assert_eq!(local.save_errors(), 2, "{logs}");
    assert_eq!(entries(&setup.state_dir), ["filler", "state.json"], "no temporary file left");
}

/// A state file deleted while `local` runs (and nothing else changes) is rewritten within a
/// couple of seconds, with what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_state_file_is_rewritten() {
    let setup = Setup::new("lhdeleted");
    let mut local = setup.start("1h").await;
    local.spend(2).await;
    let state = setup.state();
    // Wait until the checkpoint saved the two requests as pending spend: from then on nothing
    // changes (no traffic, no evaluation within the hour), so only the existence check can
    // bring the file back.
    wait_until("the pending spend saved", Duration::from_secs(10), || {
        let state = state.clone();
        async move {
            std::fs::read_to_string(&state)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["pending"]["spend"].as_object().is_some_and(|m| !m.is_empty()))
        }
    })
    .await;
    std::fs::remove_file(&state).unwrap();
    let t0 = Instant::now();
    wait_until("the deleted state file rewritten", Duration::from_secs(5), || {
        let state = state.clone();
        async move { state.exists() }
    })
    .await;
    let after = t0.elapsed();
    println!("deleted state file rewritten after {after:?}");
    assert!(after < Duration::from_secs(3), "rewritten after {after:?}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    assert!(v["pending"]["spend"].as_object().is_some_and(|m| !m.is_empty()), "the pending spend is back: {v}");
    local.proc.signal("TERM");
    assert_eq!(local.proc.wait_exit(Duration::from_secs(15)).code(), Some(0), "{}", local.proc.logs());
}

/// A FIFO, a symlink to `/dev/zero` and a 17 MiB file named `*.yaml`: while running they are
/// reported in `/status`, the loop keeps running (requests served, SIGTERM completes at once) and
/// resident memory stays under 100 MB; removing them applies again (a dangling symlink, like an
/// editor's lock file, is skipped). At start they are the start-up error, naming each file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_in_the_manifest_directory_neither_block_nor_balloon() {
    let setup = Setup::new("lhspecial");
    let mut local = setup.start("300ms").await;
    let (fifo, zero, big, lock) = (
        setup.manifests.join("fifo.yaml"),
        setup.manifests.join("zero.yaml"),
        setup.manifests.join("big.yaml"),
        setup.manifests.join(".#routes.yaml"),
    );
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    std::fs::File::create(&big).unwrap().set_len(17 * 1024 * 1024).unwrap();
    std::os::unix::fs::symlink("root@host.1234", &lock).unwrap();

    let s = local
        .wait_status("the special files reported", Duration::from_secs(10), |s| s["manifestError"].is_string())
        .await;
    let report = s["manifestError"].as_str().unwrap();
    for part in [
        format!("{}: document 0: (file): (file): is a FIFO", fifo.display()),
        format!("{}: document 0: (file): (file): is a character device", zero.display()),
        format!("{}: document 0: (file): (file): is 17825792 bytes, over the limit of 16777216 bytes", big.display()),
    ] {
        assert!(report.contains(&part), "the report names {part:?}: {report}");
    }
    assert!(!report.contains(".#routes.yaml"), "a dangling symlink is skipped: {report}");

    // The change detector runs every second: sample memory over three of its passes while
    // requests keep being served.
    let mut max_rss = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        local.spend(1).await;
        max_rss = max_rss.max(rss_kib(local.proc.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("max VmRSS with a FIFO, /dev/zero and a 17 MiB file in the manifests: {max_rss} KiB");
    assert!(max_rss < 100 * 1024, "VmRSS {max_rss} KiB");

    for f in [&fifo, &zero, &big] {
        std::fs::remove_file(f).unwrap();
    }
    local.wait_status("the report cleared", Duration::from_secs(10), |s| s.get("manifestError").is_none()).await;
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    local.wait_status("the FIFO reported", Duration::from_secs(10), |s| s["manifestError"].is_string()).await;
    let t0 = Instant::now();
    local.proc.signal("TERM");
    let status = local.proc.wait_exit(Duration::from_secs(10));
    println!("SIGTERM with a FIFO in the manifests completed in {:?}", t0.elapsed());
    assert_eq!(status.code(), Some(0), "{}", local.proc.logs());

    // At start: the same files are the start-up error (exit 2), naming each.
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    std::fs::File::create(&big).unwrap().set_len(17 * 1024 * 1024).unwrap();
    let mut local = setup.spawn("1h", &setup.state());
    let status = local.proc.wait_exit(Duration::from_secs(10));
    let logs = local.proc.logs();
    assert_eq!(status.code(), Some(2), "{logs}");
    for part in [
        format!("{}: document 0: (file): (file): is a FIFO", fifo.display()),
        format!("{}: document 0: (file): (file): is a character device", zero.display()),
        format!("{}: document 0: (file): (file): is 17825792 bytes", big.display()),
    ] {
        assert!(logs.contains(&part), "the start-up error names {part:?}: {logs}");
    }
}
