//! `tollgate local -f DIR`: the gateway and the policy loop in one process, with manifests read
//! from files and spend persisted to a state file.
//!
//! Each `--interval` the loop diffs the in-process gateway's exact meter into observations,
//! runs the same pure policy as the controller, swaps in the new config when the effective
//! tables change, prints the transitions (and a status table on a terminal), and saves the
//! state atomically. Between evaluations the not-yet-evaluated observations are saved every
//! second, so a crash loses at most the last second and counts nothing twice.
//!
//! Saving is never silent about failing: the state path is written once at start (a path that
//! cannot be written exits 2 before serving); at runtime a failed save logs one error per
//! failure episode (not per second), shows `stateSave: {ok: false, error, since}` in `/status`
//! and is retried each second until it succeeds; a stop while saves fail exits non-zero saying
//! the state was NOT saved. A save is skipped only when nothing changed since the last
//! successful save *and* the state file still exists, so a deleted state file is rewritten
//! within a second.
//!
//! Manifest files are read under one definition ([`read_manifest_files`]): regular files only,
//! 16 MiB at most each, so a FIFO or a symlink to `/dev/zero` named `*.yaml` is a reported error,
//! never a blocked loop or a ballooning process.

mod hard;
pub mod load;
pub mod state;
pub mod status;

use std::collections::BTreeMap;
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

use crate::api::validate::{Manifests, load_dir, read_manifest_files};
use crate::gateway::MeterSnapshot;
use crate::gateway::{Api, Gateway, GatewayOptions, ServeLimits, serve};
use crate::plan::{Plan, kind_name};
use crate::policy::{DecisionState, ObjectKey, ObjectKind, Observations, Transition};
use crate::render::{notes, pick_namespace, plan_manifests};
use state::{LocalState, merge_observations};
use status::{BudgetReport, RouteReport, StateSaveReport, StatusReport};

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
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::cmd::parse_duration_in::<100, { u64::MAX }>)]
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
    /// Stopped while the state file could not be saved.
    #[error(
        "stopped, but the state was NOT saved to {path}: {error} (saves failing since {since}); \
         spend and windows observed since then are lost on restart"
    )]
    NotSaved {
        /// State file.
        path: PathBuf,
        /// The last save's error.
        error: String,
        /// First failed save of the episode.
        since: Timestamp,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Digest of the manifest files (names, and contents or why they are refused), to notice
/// edits. Reads exactly what the loader reads ([`read_manifest_files`]: regular files only,
/// size-limited), so a FIFO or a symlink to `/dev/zero` can neither block nor balloon the loop;
/// `None` when the directory cannot be listed.
fn dir_digest(dir: &Path) -> Option<[u8; 32]> {
    let files = read_manifest_files(dir).ok()?;
    let mut h = Sha256::new();
    for (path, content) in files {
        let name = path.to_string_lossy();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        match content {
            Ok(bytes) => {
                h.update([0]);
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(e) => {
                h.update([1]);
                h.update((e.len() as u64).to_le_bytes());
                h.update(e.as_bytes());
            }
        }
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
    /// What the state file holds after the last successful save (`None` after a failure).
    last_saved: Option<LocalState>,
    /// Whether saves work: the `stateSave` of `/status`.
    save_status: StateSaveReport,
    report: Arc<RwLock<StatusReport>>,
    gateway: Gateway,
    manifest_error: Option<String>,
    /// Problems already printed, per object.
    reported: BTreeMap<(ObjectKind, ObjectKey), String>,
    /// Hard budgets: grants of this process's gateway.
    hard: hard::LocalHard,
    /// The allowances document last applied.
    allowances: crate::config::allowances::Allowances,
}

impl Engine {
    fn pending(&self) -> Observations {
        let mut obs = self.gateway.meter().snapshot().to_observations_since(&self.evaluated, &self.namespace);
        merge_observations(&mut obs, self.carried.clone());
        obs
    }

    /// Saves `state` unless the state file already holds it; a failure is logged once per
    /// episode and shown in `/status` until a save succeeds.
    fn save(&mut self, state: LocalState) {
        let unchanged =
            self.last_saved.as_ref().is_some_and(|s| s.decision == state.decision && s.pending == state.pending)
                && self.state_path.exists();
        if unchanged {
            return;
        }
        let now = Timestamp::now();
        let mut stamped = state.clone();
        stamped.saved_at = Some(now);
        match stamped.save(&self.state_path) {
            Ok(()) => {
                if let Some(since) = self.save_status.since {
                    println!(
                        "state file saved again to {} (saves had failed since {since})",
                        self.state_path.display()
                    );
                }
                self.last_saved = Some(state);
                self.save_status.ok = true;
                self.save_status.error = None;
                self.save_status.since = None;
                self.save_status.last_saved = Some(now);
            }
            Err(e) => {
                self.last_saved = None;
                if self.save_status.since.is_none() {
                    tracing::error!(
                        error = %e,
                        "cannot save the state file: spend observed from now on is not on disk; \
                         retrying every second, no further error is logged until a save succeeds"
                    );
                    self.save_status.since = Some(now);
                }
                self.save_status.ok = false;
                self.save_status.error = Some(e.to_string());
            }
        }
        if let Ok(mut r) = self.report.write() {
            r.state_save = Some(self.save_status.clone());
        }
    }

    /// Saves what was observed since the last evaluation (every second).
    fn checkpoint(&mut self) {
        let state = LocalState {
            version: state::STATE_VERSION,
            saved_at: None,
            decision: self.decision.clone(),
            pending: self.pending(),
        };
        self.save(state);
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
                for n in notes(&m, None) {
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

    /// One evaluation: observe, plan (the same step as the controller's), serve, persist,
    /// report.
    fn tick(&mut self, now: Timestamp) -> Vec<Transition> {
        let snapshot = self.gateway.meter().snapshot();
        let mut observations = snapshot.to_observations_since(&self.evaluated, &self.namespace);
        merge_observations(&mut observations, std::mem::take(&mut self.carried));
        let plan = plan_manifests(&self.manifests, &self.namespace, &observations, &self.decision, now);
        // Hard budgets: grants first, so no document is served without them.
        let usage = self.gateway.hard_usage();
        let doc = self.hard.allowances(&self.manifests.budgets, &self.namespace, &plan.decision.state, &usage);
        match self.gateway.set_allowances(&self.hard.instance, &doc) {
            Ok(()) => self.allowances = doc,
            Err(e) => tracing::error!(error = %e, "the Hard budgets' allowances were refused; the previous ones stay"),
        }
        for name in self.hard.started_refusing(&usage) {
            println!("event: ProviderBudget {name}: Hard budget started refusing requests (its allowance is used up)");
        }
        match plan.namespaces.get(&self.namespace).map(|n| &n.config) {
            Some(Ok(cfg)) => {
                if self.gateway.revision().as_deref() != Some(cfg.revision.as_str())
                    && let Err(e) = self.gateway.swap_config(cfg.clone())
                {
                    tracing::error!(error = %e, "the decided config was refused; the gateway keeps the previous one");
                }
            }
            Some(Err(e)) => {
                self.gateway.record_reload_error();
                println!("config not updated: {e}");
            }
            None => {}
        }
        self.print_problems(&plan);
        let report = self.status_report(&plan, now);
        if let Ok(mut r) = self.report.write() {
            *r = report;
        }
        self.decision = plan.decision.state.clone();
        self.evaluated = snapshot;
        let state = LocalState {
            version: state::STATE_VERSION,
            saved_at: None,
            decision: self.decision.clone(),
            pending: Observations::default(),
        };
        self.save(state);
        plan.decision.transitions
    }

    /// Prints each problem of the plan once, when it appears or changes (as the controller's
    /// Events do).
    fn print_problems(&mut self, plan: &Plan) {
        let mut current = BTreeMap::new();
        for (kind, key, p) in plan.problems() {
            let id = (kind, key.clone());
            if self.reported.get(&id) != Some(&p.message) {
                println!("problem: {} {key}: {}: {}", kind_name(kind), p.reason, p.message);
            }
            current.insert(id, p.message.clone());
        }
        self.reported = current;
    }

    /// `/status`: every route and budget of the namespace served, with the status the
    /// controller would write.
    fn status_report(&self, plan: &Plan, now: Timestamp) -> StatusReport {
        let m = &self.manifests;
        let usage = self.gateway.hard_usage();
        StatusReport {
            time: Some(now),
            namespace: self.namespace.clone(),
            config_revision: self.gateway.revision(),
            manifest_error: self.manifest_error.clone(),
            state_save: Some(self.save_status.clone()),
            routes: m
                .routes
                .iter()
                .filter_map(|r| {
                    let key = ObjectKey::of(r);
                    let status = plan.route_statuses.get(&key)?;
                    let model = plan.decision.routes.get(&key).map_or_else(|| r.alias(), |d| d.alias.clone());
                    (key.namespace == self.namespace).then(|| RouteReport {
                        name: key.name,
                        model,
                        status: status.clone(),
                    })
                })
                .collect(),
            budgets: m
                .budgets
                .iter()
                .filter_map(|b| {
                    let key = ObjectKey::of(b);
                    let status = plan.budget_statuses.get(&key)?;
                    let hard = self.hard.status(&self.allowances, &key.name, &usage);
                    (key.namespace == self.namespace).then(|| BudgetReport {
                        name: key.name,
                        provider: b.spec.provider.clone(),
                        limit: b.spec.limit.clone(),
                        status: hard::with_hard(status.clone(), hard),
                    })
                })
                .collect(),
        }
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
    for n in notes(&manifests, None) {
        println!("note: {n}");
    }
    let saved = LocalState::load(&args.state)?;
    saved.check_writable(&args.state)?;
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
        save_status: StateSaveReport { ok: true, path: args.state.display().to_string(), ..Default::default() },
        report: report.clone(),
        gateway: gateway.clone(),
        manifest_error: None,
        reported: BTreeMap::new(),
        hard: hard::LocalHard::new(format!("local-{}-{}", std::process::id(), Timestamp::now().as_nanosecond())),
        allowances: Default::default(),
    };
    for t in engine.tick(Timestamp::now()) {
        print_transition(&t);
    }

    let listener =
        TcpListener::bind(args.listen).await.map_err(|source| LocalError::Bind { addr: args.listen, source })?;
    let token = CancellationToken::new();
    let status_report = report.clone();
    let router = gateway.router().route(
        "/status",
        get(move || {
            let r = status_report.clone();
            async move { Json(r.read().map(|r| r.clone()).unwrap_or_default()) }
        }),
    );
    let api = Api::new(gateway.clone(), router);
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
            crate::cmd::shutdown_signal().await;
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
    if let (false, Some(since)) = (engine.save_status.ok, engine.save_status.since) {
        return Err(LocalError::NotSaved {
            path: args.state.clone(),
            error: engine.save_status.error.clone().unwrap_or_default(),
            since,
        });
    }
    println!("tollgate local: stopped; state saved to {}", args.state.display());
    Ok(())
}

/// Entry point of the CLI.
pub fn run_local(args: LocalArgs) -> std::process::ExitCode {
    crate::cmd::init_tracing("error", false);
    crate::cmd::block_on_cli(run(args), 2)
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
    /// Redraw every `--interval` until Ctrl-C: in place on a terminal, appended otherwise.
    #[arg(short, long)]
    pub watch: bool,
    /// How often `--watch` reads the status.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = crate::cmd::parse_duration)]
    pub interval: Duration,
}

/// Entry point of `tollgate status`.
pub fn run_status(args: StatusArgs) -> std::process::ExitCode {
    crate::cmd::block_on_cli(status(args), 1)
}

async fn status(args: StatusArgs) -> Result<(), String> {
    status::show(&args.url, args.json, args.watch.then_some(args.interval)).await
}
