//! A running `tollgate local` process, as the process-level tests drive it: its URL, one HTTP
//! client, and `/status` (read once, or waited for with a 20 s deadline). Each test file adds the
//! requests and waits it needs in its own `impl Local` block.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proc::{Proc, free_port};

/// `tollgate local` under test.
pub struct Local {
    pub proc: Proc,
    pub url: String,
    pub client: reqwest::Client,
}

impl Local {
    /// Starts `tollgate local -f manifests` on a free port with its state in `root`
    /// (`state.json`, log `local.log`), no table, `extra` flags appended, and waits until it
    /// answers `/status`.
    pub async fn start(root: &Path, manifests: &Path, extra: &[&str]) -> Local {
        let port = free_port();
        let mut args: Vec<String> = [
            "local",
            "--table",
            "never",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "-f",
            manifests.to_str().unwrap(),
            "--state",
            root.join("state.json").to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        let local = Local {
            proc: Proc::spawn("tollgate local", &args, root.join("local.log")),
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        local.ready().await;
        local
    }

    /// `GET /status`, or `None` while it does not answer.
    pub async fn status(&self) -> Option<Value> {
        self.client.get(format!("{}/status", self.url)).send().await.ok()?.json().await.ok()
    }

    /// Waits (at most 20 s) until `/status` answers with a time; fails with the process log.
    pub async fn ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(s) = self.status().await
                && s["time"].is_string()
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tollgate local did not answer /status at {}; log:\n{}", self.url, self.proc.logs());
    }
}
