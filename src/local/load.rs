//! `tollgate load`: a bounded traffic driver for demos and the quick start.
//!
//! Sends chat completions at a fixed rate for a fixed time against a gateway (loopback or any
//! URL you give), spread over the given models (default: every model `/v1/models` lists), and
//! prints who served what every few seconds: status codes and `x-tollgate-backend` headers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `tollgate load`: the flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Base URL of the gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Requests per second (1..=1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rps: u32,
    /// How long to send (at most 1h).
    #[arg(long, default_value = "60s", value_parser = crate::cmd::parse_duration_in::<1, 3_600_000>)]
    pub duration: Duration,
    /// Models to call, comma-separated (default: all that /v1/models lists).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    pub report_every: u64,
}

#[derive(Default)]
struct Tally {
    /// (model, outcome) → count, outcome = backend name or HTTP status / error code.
    by: BTreeMap<(String, String), u64>,
    sent: u64,
}

fn summary(t: &Tally) -> String {
    let mut per_model: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((m, o), n) in &t.by {
        per_model.entry(m).or_default().push(format!("{o}={n}"));
    }
    let parts: Vec<String> = per_model.into_iter().map(|(m, v)| format!("{m}: {}", v.join(" "))).collect();
    format!("sent {} | {}", t.sent, parts.join(" | "))
}

async fn discover_models(client: &reqwest::Client, url: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = client
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let models: Vec<String> = v["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if models.is_empty() { Err("the gateway lists no models".into()) } else { Ok(models) }
}

async fn run(args: LoadArgs) -> Result<(), String> {
    let url = args.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().map_err(|e| e.to_string())?;
    let models = if args.models.is_empty() { discover_models(&client, &url).await? } else { args.models.clone() };
    println!("tollgate load: {} rps for {:?} against {url}, models {}", args.rps, args.duration, models.join(","));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rps)));
    let mut last_report = Instant::now();
    let mut i: u64 = 0;
    let mut inflight = Vec::new();
    while start.elapsed() < args.duration {
        tick.tick().await;
        let model = models[(i % models.len() as u64) as usize].clone();
        i += 1;
        let (client, url, shared) = (client.clone(), url.clone(), tally.clone());
        inflight.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            });
            let outcome = match client.post(format!("{url}/v1/chat/completions")).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    r.headers().get("x-tollgate-backend").and_then(|v| v.to_str().ok()).unwrap_or("ok").to_string()
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let code = r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if code.is_empty() { status.to_string() } else { format!("{status}:{code}") }
                }
                Err(e) if e.is_timeout() => "timeout".into(),
                Err(_) => "connect_error".into(),
            };
            if let Ok(mut t) = shared.lock() {
                t.sent += 1;
                *t.by.entry((model, outcome)).or_insert(0) += 1;
            }
        }));
        inflight.retain(|h| !h.is_finished());
        if last_report.elapsed() >= Duration::from_secs(args.report_every.max(1)) {
            last_report = Instant::now();
            if let Ok(t) = tally.lock() {
                println!("[{:>4}s] {}", start.elapsed().as_secs(), summary(&t));
            }
        }
    }
    for h in inflight {
        let _ = h.await;
    }
    if let Ok(t) = tally.lock() {
        println!("done after {:.1}s: {}", start.elapsed().as_secs_f64(), summary(&t));
    }
    Ok(())
}

/// Entry point of `tollgate load`.
pub fn run_load(args: LoadArgs) -> std::process::ExitCode {
    crate::cmd::block_on_cli(run(args), 1)
}
