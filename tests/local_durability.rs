//! Durability and operations of `tollgate local`, against the real binary: the state file is
//! only ever replaced whole, a SIGKILL loses at most the last second of spend and a restart
//! counts nothing twice, Ctrl-C and SIGTERM save a final evaluation, a tampered state file or a
//! state path that is not a regular file is refused at start, a window from a clock that was
//! ahead is moved to now keeping its spend, an invalid live edit is refused and reported while
//! the last good policy serves, the `status` and `load` commands, and which outcomes eject a
//! backend.
//!
//! Rules: every request on the `chat` route costs exactly $0.002 (mock: 1000 input + 1000
//! output tokens at $1/1M each); spend is compared in pico-dollars, never as floats. The budget
//! window is Rolling and ~8000 years long (epoch-aligned), so no run can cross a window
//! boundary (one test uses a Daily window on purpose). Each test has its own directory; every
//! wait has a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::local::Local;
use common::proc::{BIN, Proc, TempDir, free_port, usd_picos, wait_until, write_atomic};
use common::upstream::Fake;

/// The cost of one `chat` request, pico-USD.
const COST: i128 = 2_000_000_000;

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
      pricing: {input: "INPUT_PRICE", output: "1.00"}
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

/// A manifest directory, a state file and logs, in one test's own directory.
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
        std::fs::write(manifests.join("routes.yaml"), ROUTES.replace("INPUT_PRICE", "1.00")).unwrap();
        std::fs::write(manifests.join("budgets.yaml"), BUDGETS).unwrap();
        Setup { root, manifests, state_dir }
    }

    fn state(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// Starts `tollgate local` with this policy interval.
    async fn start(&self, interval: &str) -> Local {
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
            self.state().to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let log = self.root.join(&format!("local-{port}.log"));
        let local = Local {
            proc: Proc::spawn("tollgate local", &args, log),
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        local.ready().await;
        local
    }
}

impl Local {
    /// Waits until two more evaluations happened (everything sent before is evaluated).
    async fn settle(&self) -> Value {
        let mut last = self.ready().await["time"].clone();
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no two policy evaluations within 20 s; log:\n{}", self.proc.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
            let Some(s) = self.status().await else { continue };
            if s["time"] != last {
                seen += 1;
                last = s["time"].clone();
                if seen == 2 {
                    return s;
                }
            }
        }
    }

    /// One chat request: status and serving backend.
    async fn chat(&self, model: &str) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let backend = r.headers().get("x-tollgate-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let code = r.status().as_u16();
        let _ = r.bytes().await;
        (code, backend)
    }

    /// `n` chat requests, each answered 200 by `openai`.
    async fn spend(&self, n: usize) {
        for _ in 0..n {
            assert_eq!(self.chat("chat").await, (200, "openai".to_string()));
        }
    }
}

/// `spent` of the budget in a `/status` document, pico-USD (0 before any spend).
fn spent(status: &Value) -> i128 {
    let b = status["budgets"].as_array().unwrap().iter().find(|b| b["name"] == "openai-budget").unwrap();
    b["status"]["spent"].as_str().map(usd_picos).unwrap_or(0)
}

/// Spend observed but not yet evaluated, as saved in the state file, pico-USD.
fn pending_spend(state: &Path) -> i128 {
    let Ok(text) = std::fs::read_to_string(state) else { return 0 };
    let v: Value = serde_json::from_str(&text).unwrap();
    v["pending"]["spend"].as_object().map(|m| m.values().map(|s| usd_picos(s.as_str().unwrap())).sum()).unwrap_or(0)
}

fn backend_state(s: &Value, route: &str, backend: &str) -> String {
    let r = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == route).unwrap();
    let b = r["status"]["backends"].as_array().unwrap().iter().find(|b| b["name"] == backend).unwrap();
    b["state"].as_str().unwrap().to_string()
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

/// Under traffic with an evaluation every 200 ms, a reader polling the state file only ever
/// sees a complete JSON document, and the file is replaced (a new inode) rather than rewritten
/// in place; after a clean stop no temporary file is left beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_is_only_ever_replaced_whole() {
    use std::os::unix::fs::MetadataExt;
    let setup = Setup::new("ldatomic");
    let mut local = setup.start("200ms").await;
    let path = setup.state();
    let reader = tokio::task::spawn_blocking(move || {
        let (mut reads, mut replaced, mut last_ino) = (0u32, 0u32, None);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(2500) {
            let Ok(mut f) = std::fs::File::open(&path) else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            let ino = f.metadata().unwrap().ino();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut f, &mut text).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("a reader saw a partial state file ({e}):\n{text}"));
            assert_eq!(v["version"], 1, "{text}");
            reads += 1;
            if last_ino.is_some_and(|i| i != ino) {
                replaced += 1;
            }
            last_ino = Some(ino);
            std::thread::sleep(Duration::from_millis(2));
        }
        (reads, replaced)
    });
    let mut served = 0;
    while !reader.is_finished() {
        local.spend(1).await;
        served += 1;
    }
    let (reads, replaced) = reader.await.unwrap();
    assert!(reads >= 100, "only {reads} reads");
    assert!(replaced >= 3, "the file was replaced {replaced} times in 2.5 s of traffic ({served} requests)");
    local.proc.signal("TERM");
    assert_eq!(local.proc.wait_exit(Duration::from_secs(15)).code(), Some(0), "{}", local.proc.logs());
    let entries: Vec<String> = std::fs::read_dir(&setup.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["state.json"], "no temporary file left");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(setup.state()).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
}

/// docs/local.md: "a crash (even SIGKILL) loses at most the last second of spend and counts nothing
/// twice". With no evaluation running (interval 1h), 10 requests are saved as pending spend by
/// the per-second checkpoint; 5 more are sent and the process is SIGKILLed at once. After a
/// restart the spend is exactly 10 × $0.002 plus however many of the last 5 the checkpoint
/// caught, never less than the 10 and never more than the 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_at_most_the_last_second_of_spend() {
    let setup = Setup::new("ldkill");
    let mut local = setup.start("1h").await;
    let (n1, n2) = (10i128, 5i128);
    local.spend(n1 as usize).await;
    let done = Instant::now();
    let state = setup.state();
    wait_until("the first 10 requests saved as pending spend", Duration::from_secs(10), || {
        let state = state.clone();
        async move { pending_spend(&state) == n1 * COST }
    })
    .await;
    let saved_after = done.elapsed();
    // Checkpoints run each second; 3 s leaves room for a loaded machine and still fails a
    // cadence of several seconds.
    assert!(saved_after < Duration::from_secs(3), "pending spend saved after {saved_after:?}, not each second");

    let t_last = Instant::now();
    local.spend(n2 as usize).await;
    local.proc.signal("KILL");
    let last_window = t_last.elapsed();
    assert!(last_window < Duration::from_secs(1), "the last batch took {last_window:?}: not 'the last second'");
    local.proc.wait_exit(Duration::from_secs(10));
    drop(local);

    let local = setup.start("300ms").await;
    let s = local.settle().await;
    let after = spent(&s);
    let metered = (n1 + n2) * COST;
    let lost = metered - after;
    println!(
        "metered {metered} pico-USD, restored {after}, lost {lost} (last batch {n2} requests in {last_window:?}, checkpoint after {saved_after:?})"
    );
    assert_eq!(after % COST, 0, "spend is whole requests: {after}");
    // Lower bound: the 10 requests saved before the last second are never lost.
    assert!(
        after >= n1 * COST,
        "metered {metered} pico-USD, restored {after}: lost {lost}, more than the last second's {n2} requests"
    );
    // Upper bound: nothing was served after the kill, so a restore never shows more than the
    // 15 requests metered before it (a restore that counted the saved pending spend twice
    // would show 20 or more).
    assert!(
        after <= metered,
        "metered {metered} pico-USD before the kill, restored {after}: {} requests counted twice",
        (after - metered) / COST
    );
    let again = local.settle().await;
    assert_eq!(spent(&again), after, "nothing counted twice");
}

/// docs/local.md: "Stop it with Ctrl-C (a final evaluation is saved)". Same for SIGTERM. Requests are
/// Spawns `tollgate local` with `state` as its state file and waits at most 10 s for it to
/// exit, as a refused start does: its exit code and logs.
fn refused_start(setup: &Setup, state: &Path) -> (Option<i32>, String) {
    let port = free_port();
    let args: Vec<String> = [
        "local",
        "--table",
        "never",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "-f",
        setup.manifests.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let mut proc =
        Proc::spawn("tollgate local (refused start)", &args, setup.root.join(&format!("refused-{port}.log")));
    let code = proc.wait_exit(Duration::from_secs(10)).code();
    (code, proc.logs())
}

/// The state after `n` requests and a clean stop, as saved: its JSON.
async fn saved_state(setup: &Setup, n: usize) -> Value {
    let mut local = setup.start("1h").await;
    local.spend(n).await;
    local.proc.signal("TERM");
    assert_eq!(local.proc.wait_exit(Duration::from_secs(15)).code(), Some(0), "{}", local.proc.logs());
    serde_json::from_str(&std::fs::read_to_string(setup.state()).unwrap()).unwrap()
}

/// A state file edited into what no evaluation writes (a negative spend, which `/status`
/// would show as headroom above the limit; a window that ends before it starts, which would
/// reset the spend) is refused at start: exit 2, the file and the entry named, and the file
/// left as it was, so restoring the entry restores the spend exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_state_file_is_refused_at_start_and_left_as_it_was() {
    let setup = Setup::new("ldtamper");
    let good = saved_state(&setup, 3).await;
    let budget = "default/openai-budget";
    assert_eq!(usd_picos(good["decision"]["budgets"][budget]["spent"].as_str().unwrap()), 3 * COST, "{good}");
    let cases = [
        ("spent", json!("-1000.000000"), "spent: -1000.000000 is below zero"),
        ("total", json!("-0.000001"), "total: -0.000001 is below zero"),
        ("windowEnd", json!("1969-12-31T00:00:00Z"), "windowEnd: 1969-12-31T00:00:00Z is before windowStart"),
    ];
    for (field, value, why) in cases {
        let mut bad = good.clone();
        bad["decision"]["budgets"][budget][field] = value;
        let text = serde_json::to_string_pretty(&bad).unwrap();
        std::fs::write(setup.state(), &text).unwrap();
        let (code, logs) = refused_start(&setup, &setup.state());
        assert_eq!(code, Some(2), "{field}: {logs}");
        let expected =
            format!("error: state file {} is invalid: decision.budgets[\"{budget}\"].{why}", setup.state().display());
        assert!(logs.contains(&expected), "{field}: expected {expected:?} in\n{logs}");
        assert!(logs.contains("refusing to start"), "{logs}");
        assert_eq!(std::fs::read_to_string(setup.state()).unwrap(), text, "{field}: the file is left as it was");
    }
    std::fs::write(setup.state(), serde_json::to_string_pretty(&good).unwrap()).unwrap();
    let local = setup.start("300ms").await;
    assert_eq!(spent(&local.ready().await), 3 * COST, "the restored entry restores the spend");
}

/// A state path that is not a regular file (after following symlinks) is refused at start with
/// a message, before anything is read from it: a FIFO would block the start, `/dev/zero` would
/// grow the process without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_path_that_is_not_a_regular_file_is_refused_at_start() {
    let setup = Setup::new("ldspecial");
    let fifo = setup.state_dir.join("fifo.json");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let to_fifo = setup.state_dir.join("to-fifo.json");
    std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
    let to_zero = setup.state_dir.join("to-zero.json");
    std::os::unix::fs::symlink("/dev/zero", &to_zero).unwrap();
    let dir = setup.state_dir.join("dir.json");
    std::fs::create_dir(&dir).unwrap();
    let socket = setup.state_dir.join("sock.json");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for (path, what) in [
        (&fifo, "a FIFO"),
        (&to_fifo, "a FIFO"),
        (&to_zero, "a character device"),
        (&dir, "a directory"),
        (&socket, "a socket"),
    ] {
        let started = Instant::now();
        let (code, logs) = refused_start(&setup, path);
        assert_eq!(code, Some(2), "{}: {logs}", path.display());
        let expected = format!("error: state file {} is {what} (after following symlinks)", path.display());
        assert!(logs.contains(&expected), "expected {expected:?} in\n{logs}");
        assert!(started.elapsed() < Duration::from_secs(10), "{}", path.display());
    }
    // Nothing was written through any of them.
    assert!(std::fs::symlink_metadata(&to_zero).unwrap().file_type().is_symlink());
    assert!(std::fs::symlink_metadata(&to_fifo).unwrap().file_type().is_symlink());
}

/// A window opened while the clock was years ahead (then corrected) would never roll over: it
/// is moved to the window holding now, keeping its spend, and says so (README state file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_from_a_clock_that_was_ahead_is_moved_to_now_keeping_its_spend() {
    let setup = Setup::new("ldfuture");
    let daily = BUDGETS.replace("window: {period: Rolling, duration: 70000000h}", "window: {period: Daily}");
    std::fs::write(setup.manifests.join("budgets.yaml"), daily).unwrap();
    let mut state = saved_state(&setup, 2).await;
    let budget = "default/openai-budget";
    state["decision"]["budgets"][budget]["windowStart"] = json!("2030-01-01T00:00:00Z");
    state["decision"]["budgets"][budget]["windowEnd"] = json!("2030-01-02T00:00:00Z");
    state["decision"]["budgets"][budget]["samples"] = json!([]);
    std::fs::write(setup.state(), serde_json::to_string_pretty(&state).unwrap()).unwrap();
    let local = setup.start("300ms").await;
    let s = local.ready().await;
    assert_eq!(spent(&s), 2 * COST, "the spend is kept: {s}");
    let b = s["budgets"].as_array().unwrap().iter().find(|b| b["name"] == "openai-budget").unwrap();
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
    let start: jiff::Timestamp = b["status"]["window"]["start"].as_str().unwrap().parse().unwrap();
    let end: jiff::Timestamp = b["status"]["window"]["end"].as_str().unwrap().parse().unwrap();
    let midnight = |d: jiff::civil::Date| d.to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp();
    // Either today's window, or tomorrow's when the test ran across midnight.
    assert!(start == midnight(today) || start == midnight(today.tomorrow().unwrap()), "{b}");
    assert_eq!(end.as_second() - start.as_second(), 86_400, "{b}");
    assert!(local.proc.stdout().contains("BudgetWindowRealigned"), "{}", local.proc.logs());
}

/// README: "Stop it with Ctrl-C (a final evaluation is saved)". Same for SIGTERM. Requests are
/// sent and the signal follows at once; the process exits 0, the state file holds no pending
/// spend (all of it evaluated), and a restart shows exactly the metered spend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_and_sigterm_save_a_final_evaluation() {
    for (sig, n) in [("INT", 7i128), ("TERM", 4i128)] {
        let setup = Setup::new(&format!("ldstop{sig}"));
        let mut local = setup.start("1h").await;
        local.spend(n as usize).await;
        local.proc.signal(sig);
        let status = local.proc.wait_exit(Duration::from_secs(15));
        assert_eq!(status.code(), Some(0), "SIG{sig}: {}", local.proc.logs());
        assert!(local.proc.stdout().contains("tollgate local: stopped; state saved to"), "{}", local.proc.logs());
        assert_eq!(pending_spend(&setup.state()), 0, "SIG{sig}: everything was evaluated before the save");
        drop(local);
        let local = setup.start("300ms").await;
        let s = local.ready().await;
        assert_eq!(spent(&s), n * COST, "SIG{sig}: spend after restart is exactly the metered {n} requests");
    }
}

/// docs/local.md: "an invalid edit is refused with the file, document, object and field, and the last
/// good policy keeps serving". The refused edit would have changed the price; requests keep
/// costing the old price. A later valid edit applies and clears the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_live_edit_is_refused_reported_and_the_last_good_policy_serves() {
    let setup = Setup::new("ldedit");
    let local = setup.start("300ms").await;
    local.spend(2).await;
    let s = local.settle().await;
    assert_eq!(spent(&s), 2 * COST);
    assert!(s.get("manifestError").is_none(), "{s}");

    let routes = setup.manifests.join("routes.yaml");
    let invalid = ROUTES.replace("INPUT_PRICE", "5.00").replace("latency: 1ms,", "latency: 1ms, errorRate: \"2\",");
    write_atomic(&routes, invalid.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        if let Some(e) = local.status().await.and_then(|s| s["manifestError"].as_str().map(str::to_string)) {
            break e;
        }
        assert!(Instant::now() < deadline, "the refused edit never showed in /status; log:\n{}", local.proc.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for part in ["routes.yaml", "document 1", "ModelRoute default/chat", "spec.backends[0].endpoint.mock.errorRate"] {
        assert!(report.contains(part), "the report names {part:?}: {report}");
    }
    local.spend(3).await;
    let s = local.settle().await;
    assert_eq!(spent(&s), 5 * COST, "still $1.00 input: the refused edit's $5.00 is not applied");
    assert_eq!(s["manifestError"].as_str(), Some(report.as_str()), "still reported after evaluations");
    let (code, table, _) = run(&["status", "--url", &local.url]);
    assert_eq!(code, Some(0));
    assert!(
        table.contains(&format!("! manifest edit refused, still serving the last good policy: {report}")),
        "{table}"
    );
    assert!(local.proc.stdout().contains("refused manifest edit (still serving the last good policy)"));

    // A valid edit: $3.00 input → 1000 × $3 + 1000 × $1 = $0.004 per request.
    write_atomic(&routes, ROUTES.replace("INPUT_PRICE", "3.00").as_bytes());
    wait_until("the valid edit applied", Duration::from_secs(10), || {
        let local = &local;
        async move { local.status().await.is_some_and(|s| s.get("manifestError").is_none()) }
    })
    .await;
    local.spend(1).await;
    let s = local.settle().await;
    assert_eq!(spent(&s), 5 * COST + 4_000_000_000, "the new price applies");
}

/// `tollgate load` drives bounded traffic and reports who served it; `tollgate status` prints
/// the table (or the JSON) of a running `local`; both exit 1 with a clear error when nothing
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_load_commands() {
    let setup = Setup::new("ldcli");
    let local = setup.start("300ms").await;
    let url = local.url.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(&["load", "--url", &url, "--rps", "20", "--duration", "1s", "--models", "chat", "--report-every", "1"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with(&format!("tollgate load: 20 rps for 1s against {}, models chat\n", local.url)), "{out}");
    let last = out.lines().last().unwrap();
    let sent: i128 = last.split("sent ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((20..=21).contains(&sent), "20 rps for 1 s: {last}");
    assert!(last.starts_with("done after ") && last.ends_with(&format!("sent {sent} | chat: openai={sent}")), "{last}");
    let s = local.settle().await;
    assert_eq!(spent(&s), sent * COST, "every request load sent was served and billed");

    let (code, table, _) = run(&["status", "--url", &local.url]);
    assert_eq!(code, Some(0));
    let first = table.lines().next().unwrap();
    assert!(first.starts_with("tollgate · namespace default · "), "{table}");
    let row = table.lines().find(|l| l.starts_with("chat ")).unwrap_or_else(|| panic!("no chat row: {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..5], ["chat", "chat", "Serving", "openai", "Active"], "{row}");
    let budget = table.lines().find(|l| l.starts_with("openai-budget ")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = budget.split_whitespace().collect();
    assert_eq!(cells[1], "openai", "{budget}");
    assert_eq!(usd_picos(cells[2]), sent * COST, "{budget}");

    let (code, json_out, _) = run(&["status", "--url", &local.url, "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(spent(&v), sent * COST);
    assert_eq!(v["namespace"], "default");

    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = run(&["status", "--url", &closed]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with(&format!("error: cannot read {closed}/status: ")), "{err}");
    let (code, _, err) = run(&["load", "--url", &closed, "--duration", "1s"]);
    assert_eq!(code, Some(1), "no model list to discover");
    assert!(err.starts_with("error: "), "{err}");
}

/// Which outcomes eject a backend (docs/routing.md, health): 429 and connect errors count as
/// errors, a 4xx does not count at all. One route per kind, each backend first in priority
/// with a mock spare; six requests each, trip at 50% over at least 4 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_connect_errors_eject_but_client_errors_do_not() {
    let limited =
        Fake::fixed(429, r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#, &[])
            .await;
    let bad =
        Fake::fixed(400, r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#, &[])
            .await;
    let closed = format!("http://127.0.0.1:{}/v1", free_port());
    let route = |name: &str, url: &str| {
        format!(
            r#"apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {{name: {name}}}
spec:
  backends:
    - name: first
      provider: openai
      model: m1
      endpoint: {{baseUrl: "{url}"}}
      pricing: {{input: "1.00", output: "1.00"}}
    - name: spare
      provider: openai
      model: m2
      priority: 1
      endpoint: {{mock: {{latency: 1ms}}}}
      pricing: {{input: "1.00", output: "1.00"}}
  health:
    errorRate: {{trip: "0.50", recover: "0.10", window: 30s, minRequests: 4}}
    ejection: {{base: 60s, max: 120s}}
"#
        )
    };
    let setup = Setup::new("ldeject");
    std::fs::remove_file(setup.manifests.join("budgets.yaml")).unwrap();
    let docs = [route("r429", &limited.base_url()), route("rconnect", &closed), route("r400", &bad.base_url())];
    std::fs::write(setup.manifests.join("routes.yaml"), docs.join("---\n")).unwrap();
    let local = setup.start("300ms").await;
    for _ in 0..6 {
        assert_eq!(local.chat("r429").await, (200, "spare".to_string()));
        assert_eq!(local.chat("rconnect").await, (200, "spare".to_string()));
        assert_eq!(local.chat("r400").await, (400, "first".to_string()));
    }
    let s = local.settle().await;
    assert_eq!(backend_state(&s, "r429", "first"), "Ejected", "{s}");
    assert_eq!(backend_state(&s, "rconnect", "first"), "Ejected", "{s}");
    assert_eq!(backend_state(&s, "r400", "first"), "Active", "{s}");
    assert_eq!(bad.hits(), 6, "every 400 came from the backend");
    assert!(limited.hits() >= 4, "the 429 backend saw at least minRequests: {}", limited.hits());
    // Ejected: no longer tried at all.
    let before = limited.hits();
    assert_eq!(local.chat("r429").await, (200, "spare".to_string()));
    assert_eq!(limited.hits(), before, "an ejected backend is not called");
}
