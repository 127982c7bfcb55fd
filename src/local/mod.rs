//! `tollgate local -f DIR`: the gateway and the policy loop in one process, with manifests read
//! from files and spend persisted to a state file.
//!
//! Each `--interval` the loop diffs the in-process gateway's exact meter into observations,
//! runs the same pure policy as the controller, swaps in the new config when the effective
//! tables change, prints the transitions (and a status table on a terminal), and saves the
//! state atomically. Between evaluations the not-yet-evaluated observations are saved every
//! second, so a crash loses at most the last second and counts nothing twice.

pub mod load;
pub mod state;
pub mod status;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::validate::{Manifests, load_dir};
use crate::config::GatewayConfig;
use crate::gateway::MeterSnapshot;
use crate::gateway::{Gateway, GatewayOptions, ServeLimits, serve};
use crate::policy::money::parse_duration_ms;
use crate::policy::{DecisionState, Inputs, ObjectKey, Observations, Transition, evaluate};
use crate::render::{notes, pick_namespace};
use state::{LocalState, merge_observations};
use status::{BudgetReport, RouteReport, StatusReport};

/// `tollgate local`: the flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// Directory of ModelRoute and ProviderBudget manifests (watched: edits apply live).
    #[arg(short = 'f', long = "filename", value_name = "DIR")]
    pub dir: PathBuf,
    /// Address of the OpenAI-compatible API and `/status`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of `/metrics` (Prometheus text), off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// State file: spend, windows and health, written atomically.
    #[arg(long, value_name = "FILE", default_value = "./tollgate-state.json")]
    pub state: PathBuf,
    /// How often the policy runs.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Namespace to serve when the manifests span several.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Directory of API key files named by the routes (real providers only).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub credentials_dir: PathBuf,
    /// Print the status table each interval: auto (when stdout is a terminal), always, never.
    #[arg(long, value_name = "WHEN", default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub table: String,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let ms = parse_duration_ms(s)?;
    if ms < 100 {
        return Err(format!("{s:?}: at least 100ms"));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Why `local` stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Invalid manifests at start.
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    /// State file unusable.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Gateway could not start.
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Digest of the manifest files (names and contents), to notice edits.
fn dir_digest(dir: &Path) -> Option<[u8; 32]> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).unwrap_or_default());
    }
    Some(h.finalize().into())
}

/// The policy loop's state.
struct Engine {
    dir: PathBuf,
    namespace_flag: Option<String>,
    manifests: Manifests,
    namespace: String,
    digest: Option<[u8; 32]>,
    decision: DecisionState,
    /// Observations not yet evaluated that came from the state file.
    carried: Observations,
    /// Meter at the last evaluation.
    evaluated: MeterSnapshot,
    state_path: PathBuf,
    last_saved: Option<LocalState>,
    report: Arc<RwLock<StatusReport>>,
    gateway: Gateway,
    manifest_error: Option<String>,
}

impl Engine {
    fn pending(&self) -> Observations {
        let mut obs = self.gateway.meter().snapshot().to_observations_since(&self.evaluated, &self.namespace);
        merge_observations(&mut obs, self.carried.clone());
        obs
    }

    fn save(&mut self, state: LocalState) -> Result<(), state::StateError> {
        let unchanged =
            self.last_saved.as_ref().is_some_and(|s| s.decision == state.decision && s.pending == state.pending);
        if unchanged {
            return Ok(());
        }
        let mut stamped = state.clone();
        stamped.saved_at = Some(Timestamp::now());
        stamped.save(&self.state_path)?;
        self.last_saved = Some(state);
        Ok(())
    }

    /// Saves what was observed since the last evaluation (every second).
    fn checkpoint(&mut self) {
        let state = LocalState {
            version: state::STATE_VERSION,
            saved_at: None,
            decision: self.decision.clone(),
            pending: self.pending(),
        };
        if let Err(e) = self.save(state) {
            tracing::error!(error = %e, "cannot save the state file");
        }
    }

    /// Re-reads the manifests if they changed; an invalid edit is refused and reported.
    fn reload_manifests(&mut self) -> bool {
        let digest = dir_digest(&self.dir);
        if digest == self.digest {
            return false;
        }
        self.digest = digest;
        let loaded = load_dir(&self.dir).map_err(crate::render::RenderError::Manifests).and_then(|m| {
            let ns = pick_namespace(&m, self.namespace_flag.as_deref())?;
            Ok((m, ns))
        });
        match loaded {
            Ok((m, ns)) => {
                for n in notes(&m) {
                    println!("note: {n}");
                }
                println!(
                    "manifests changed: {} routes, {} budgets applied from {}",
                    m.routes.len(),
                    m.budgets.len(),
                    self.dir.display()
                );
                self.manifests = m;
                self.namespace = ns;
                self.manifest_error = None;
                true
            }
            Err(e) => {
                println!("refused manifest edit (still serving the last good policy): {e}");
                self.manifest_error = Some(e.to_string());
                if let Ok(mut r) = self.report.write() {
                    r.manifest_error = self.manifest_error.clone();
                }
                false
            }
        }
    }

    /// One evaluation: observe, decide, serve, persist, report.
    fn tick(&mut self, now: Timestamp) -> Vec<Transition> {
        let snapshot = self.gateway.meter().snapshot();
        let mut observations = snapshot.to_observations_since(&self.evaluated, &self.namespace);
        merge_observations(&mut observations, std::mem::take(&mut self.carried));
        let m = &self.manifests;
        let d = evaluate(Inputs {
            routes: &crate::api::convert::route_inputs(&m.routes),
            budgets: &crate::api::convert::budget_inputs(&m.budgets),
            observations: &observations,
            previous: &self.decision,
            now,
        });
        match GatewayConfig::build(&self.namespace, &m.routes, &d) {
            Ok(cfg) => {
                if self.gateway.revision().as_deref() != Some(cfg.revision.as_str())
                    && let Err(e) = self.gateway.swap_config(cfg)
                {
                    tracing::error!(error = %e, "the decided config was refused; the gateway keeps the previous one");
                }
            }
            Err(e) => {
                self.gateway.record_reload_error();
                println!("config not updated: {e}");
            }
        }
        let m = &self.manifests;
        let report = StatusReport {
            time: Some(now),
            namespace: self.namespace.clone(),
            config_revision: self.gateway.revision(),
            manifest_error: self.manifest_error.clone(),
            routes: m
                .routes
                .iter()
                .filter_map(|r| {
                    let key = ObjectKey::of(r);
                    let rd = d.routes.get(&key)?;
                    (key.namespace == self.namespace).then(|| RouteReport {
                        name: key.name,
                        model: rd.alias.clone(),
                        status: rd.status.clone(),
                    })
                })
                .collect(),
            budgets: m
                .budgets
                .iter()
                .filter_map(|b| {
                    let key = ObjectKey::of(b);
                    let bd = d.budgets.get(&key)?;
                    (key.namespace == self.namespace).then(|| BudgetReport {
                        name: key.name,
                        provider: b.spec.provider.clone(),
                        limit: b.spec.limit.clone(),
                        status: bd.status.clone(),
                    })
                })
                .collect(),
        };
        if let Ok(mut r) = self.report.write() {
            *r = report;
        }
        self.decision = d.state.clone();
        self.evaluated = snapshot;
        let state = LocalState {
            version: state::STATE_VERSION,
            saved_at: None,
            decision: self.decision.clone(),
            pending: Observations::default(),
        };
        if let Err(e) = self.save(state) {
            tracing::error!(error = %e, "cannot save the state file");
        }
        d.transitions
    }
}

fn print_transition(t: &Transition) {
    let when = t.time.strftime("%H:%M:%S");
    let level = if t.warning { "Warning" } else { "Normal" };
    println!("{when} {level:<7} {:<20} {:?} {}: {}", t.reason, t.kind, t.object, t.message);
}

/// Runs `tollgate local` until SIGTERM / Ctrl-C.
pub async fn run(args: LocalArgs) -> Result<(), LocalError> {
    let manifests = load_dir(&args.dir).map_err(crate::render::RenderError::Manifests)?;
    let namespace = pick_namespace(&manifests, args.namespace.as_deref())?;
    for n in notes(&manifests) {
        println!("note: {n}");
    }
    let saved = LocalState::load(&args.state)?;
    let opts = GatewayOptions { credentials_dir: args.credentials_dir.clone(), ..GatewayOptions::default() };
    let gateway = Gateway::new(None, opts)?;
    let report = Arc::new(RwLock::new(StatusReport { namespace: namespace.clone(), ..Default::default() }));
    let mut engine = Engine {
        digest: dir_digest(&args.dir),
        dir: args.dir.clone(),
        namespace_flag: args.namespace.clone(),
        manifests,
        namespace,
        decision: saved.decision,
        carried: saved.pending,
        evaluated: MeterSnapshot::default(),
        state_path: args.state.clone(),
        last_saved: None,
        report: report.clone(),
        gateway: gateway.clone(),
        manifest_error: None,
    };
    for t in engine.tick(Timestamp::now()) {
        print_transition(&t);
    }

    let listener =
        TcpListener::bind(args.listen).await.map_err(|source| LocalError::Bind { addr: args.listen, source })?;
    let token = CancellationToken::new();
    let status_report = report.clone();
    let api = gateway.router().route(
        "/status",
        get(move || {
            let r = status_report.clone();
            async move { Json(r.read().map(|r| r.clone()).unwrap_or_default()) }
        }),
    );
    let mut servers = Vec::new();
    {
        let t = token.clone();
        servers.push(tokio::spawn(serve(listener, api, ServeLimits::default(), async move { t.cancelled().await })));
    }
    if let Some(addr) = args.metrics_listen {
        let l = TcpListener::bind(addr).await.map_err(|source| LocalError::Bind { addr, source })?;
        let t = token.clone();
        servers.push(tokio::spawn(serve(l, gateway.metrics_router(), ServeLimits::default(), async move {
            t.cancelled().await
        })));
    }
    println!(
        "tollgate local: serving {} routes on http://{} (OpenAI API under /v1, status at /status), policy every {:?}, state in {}",
        engine.manifests.routes.len(),
        args.listen,
        args.interval,
        args.state.display()
    );
    let show_table = match args.table.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stdout().is_terminal(),
    };

    let shutdown = {
        let t = token.clone();
        async move {
            let _ = wait_for_signal().await;
            t.cancel();
        }
    };
    tokio::spawn(shutdown);
    let mut interval = tokio::time::interval(args.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                for t in engine.tick(Timestamp::now()) {
                    print_transition(&t);
                }
                if show_table && let Ok(r) = report.read() {
                    println!("\n{}", r.to_table());
                }
            }
            _ = second.tick() => {
                if engine.reload_manifests() {
                    for t in engine.tick(Timestamp::now()) {
                        print_transition(&t);
                    }
                } else {
                    engine.checkpoint();
                }
            }
            () = token.cancelled() => break,
        }
    }
    // Final evaluation so everything served is counted and saved.
    for t in engine.tick(Timestamp::now()) {
        print_transition(&t);
    }
    for s in servers {
        let _ = s.await;
    }
    println!("tollgate local: stopped; state saved to {}", args.state.display());
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Entry point of the CLI.
pub fn run_local(args: LocalArgs) -> std::process::ExitCode {
    init_tracing();
    block_on_cli(run(args), 2)
}

/// Runs a CLI job on a multi-threaded runtime: exit 0 on success, `error_code` with the error
/// on stderr otherwise.
pub fn block_on_cli<E: std::fmt::Display>(
    job: impl std::future::Future<Output = Result<(), E>>,
    error_code: u8,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(job) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(error_code)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// `tollgate status`: prints a running `local`'s status table.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Base URL of `tollgate local`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Entry point of `tollgate status`.
pub fn run_status(args: StatusArgs) -> std::process::ExitCode {
    block_on_cli(status(args), 1)
}

async fn status(args: StatusArgs) -> Result<(), String> {
    let url = format!("{}/status", args.url.trim_end_matches('/'));
    let fetch = async {
        let resp = reqwest::Client::new().get(&url).timeout(Duration::from_secs(10)).send().await?;
        resp.error_for_status()?.json::<StatusReport>().await
    };
    let r = fetch.await.map_err(|e| format!("cannot read {url}: {e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        print!("{}", r.to_table());
    }
    Ok(())
}
