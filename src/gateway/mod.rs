//! The gateway: tollgate's OpenAI-compatible data plane.
//!
//! It serves the config document the controller (or `local`) renders: `model` picks the route,
//! the effective backend table (already decided by the policy) and the strategy pick the
//! backend, failures before the first byte fail over to the next backend, streams pass through
//! unbuffered, and every answer's usage is metered exactly.
//!
//! Library first: [`Gateway`] is the whole data plane without sockets. `tollgate gateway`
//! ([`run_gateway`]) binds it to two listeners and a config file watcher; `tollgate local` runs
//! the same [`Gateway`] in-process, calls [`Gateway::swap_config`] with the documents it renders
//! and diffs [`Meter::snapshot`]s into the policy's observations with
//! [`MeterSnapshot::to_observations_since`].
//!
//! ```no_run
//! # async fn demo(cfg: tollgate::config::GatewayConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::gateway::{Gateway, GatewayOptions, MeterSnapshot};
//! let gw = Gateway::new(Some(cfg), GatewayOptions::default())?;
//! let api = gw.router(); // serve with axum / gateway::serve
//! let before = MeterSnapshot::default();
//! let now = gw.meter().snapshot();
//! let obs = now.to_observations_since(&before, "default"); // → policy::evaluate
//! # let _ = (api, obs); Ok(()) }
//! ```

mod answer;
mod errors;
mod limits;
mod metrics;
mod mock;
mod redact;
mod reload;
mod request;
mod select;
mod serve;
mod server;
mod stream;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::http::{HeaderValue, Uri};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use errors::ApiError;
pub use metrics::{Meter, MeterEntry, MeterKey, MeterSnapshot};
pub use mock::mock_tokens;
pub use reload::{ReloadOutcome, watch_config_file};
pub use request::Endpoint;
pub use serve::{ServeLimits, ShutdownCut, serve, serve_sharded};

use crate::api::{RouteState, Strategy};
use crate::config::{BackendConfig, ConfigError, EndpointConfig, GatewayConfig};
use crate::policy::money::parse_duration_ms;
use metrics::{BackendLabels, MeterCell, Metrics};
use prometheus_client::metrics::histogram::Histogram;
use select::Candidate;

/// Default directory of the API key files (the mounted `tollgate-credentials` Secret).
pub const DEFAULT_CREDENTIALS_DIR: &str = "/var/run/tollgate/credentials";

/// Limits and timeouts of the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayOptions {
    /// Directory holding the API key files the config names.
    pub credentials_dir: PathBuf,
    /// Largest request body accepted (larger: 413).
    pub max_body_bytes: usize,
    /// Upstream attempts per request, failovers included (at least 1).
    pub max_attempts: usize,
    /// TCP + TLS connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Time from sending an attempt to the upstream's first byte (headers, and for streams the
    /// first chunk); past it the attempt is a `timeout` and the next backend is tried.
    pub first_byte_timeout: Duration,
    /// Time limit of a whole request, streams included.
    pub total_timeout: Duration,
    /// Longest silence between two chunks of a stream.
    pub idle_stream_timeout: Duration,
    /// Longest silence while reading a request body (past it: 408, connection closed).
    pub body_read_timeout: Duration,
    /// Largest server-sent event of an upstream stream (larger: the stream ends with an error
    /// event).
    pub max_sse_event_bytes: usize,
    /// Bytes of whole (non-stream) upstream answers held at once, all requests together (over
    /// it: 503).
    pub max_buffered_bytes: usize,
    /// After a streaming client left, how long the upstream is still read for its usage.
    pub disconnect_drain_timeout: Duration,
    /// After a streaming client left, how many upstream bytes are still read for its usage.
    pub disconnect_drain_bytes: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            credentials_dir: PathBuf::from(DEFAULT_CREDENTIALS_DIR),
            max_body_bytes: 16 * 1024 * 1024,
            max_attempts: 3,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(120),
            total_timeout: Duration::from_secs(600),
            idle_stream_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_sse_event_bytes: limits::DEFAULT_MAX_SSE_EVENT_BYTES,
            max_buffered_bytes: limits::DEFAULT_MAX_BUFFERED_BYTES,
            disconnect_drain_timeout: Duration::from_secs(30),
            disconnect_drain_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The HTTP client could not be built (TLS backend).
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] rustls::Error),
    /// The initial config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The runtime could not start, or a server failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The config source (the Kubernetes API) cannot be used.
    #[error("{0}")]
    Source(String),
}

/// One backend as served: its config row plus its meter cell and precomputed labels.
pub(crate) struct CompiledBackend {
    pub(crate) cfg: BackendConfig,
    pub(crate) cell: Arc<MeterCell>,
    pub(crate) labels: BackendLabels,
    pub(crate) duration: Histogram,
    pub(crate) ttft: Histogram,
    pub(crate) backend_header: HeaderValue,
    pub(crate) provider_header: HeaderValue,
    /// Upstream URL of each endpoint (HTTP backends whose base URL parses).
    pub(crate) uris: Option<[Uri; 4]>,
}

/// One route as served.
pub(crate) struct CompiledRoute {
    pub(crate) name: String,
    pub(crate) strategy: Strategy,
    pub(crate) state: RouteState,
    pub(crate) route_header: HeaderValue,
    pub(crate) backends: Vec<Arc<CompiledBackend>>,
    pub(crate) candidates: Vec<Candidate>,
}

/// A config document ready to serve.
pub(crate) struct Served {
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) routes: HashMap<String, Arc<CompiledRoute>>,
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

impl Served {
    fn compile(config: GatewayConfig, metrics: &Metrics) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let backends: Vec<Arc<CompiledBackend>> = r
                    .backends
                    .iter()
                    .map(|b| {
                        let key = MeterKey::new(&r.name, &b.name, &b.provider, &b.model);
                        let labels = BackendLabels::of(&key);
                        let (duration, ttft) = metrics.histograms(&labels);
                        let uris = match &b.endpoint {
                            EndpointConfig::Http { base_url, .. } => {
                                let parsed: Result<Vec<Uri>, _> = Endpoint::ALL
                                    .iter()
                                    .map(|e| Uri::try_from(format!("{base_url}{}", e.path())))
                                    .collect();
                                parsed.ok().and_then(|v| <[Uri; 4]>::try_from(v).ok())
                            }
                            EndpointConfig::Mock(_) => None,
                        };
                        Arc::new(CompiledBackend {
                            cfg: b.clone(),
                            cell: metrics.meter.cell(&key),
                            labels,
                            duration,
                            ttft,
                            backend_header: header_value(&b.name),
                            provider_header: header_value(&b.provider),
                            uris,
                        })
                    })
                    .collect();
                let candidates = r
                    .backends
                    .iter()
                    .map(|b| Candidate { tier: b.tier, weight: b.weight, serving: b.serving })
                    .collect();
                let route = CompiledRoute {
                    name: r.name.clone(),
                    strategy: r.strategy,
                    state: r.state,
                    route_header: header_value(&r.name),
                    backends,
                    candidates,
                };
                (r.model.clone(), Arc::new(route))
            })
            .collect();
        Self { config: Arc::new(config), routes }
    }
}

pub(crate) struct Inner {
    pub(crate) current: ArcSwapOption<Served>,
    pub(crate) metrics: Metrics,
    pub(crate) upstream: upstream::Upstream,
    pub(crate) opts: GatewayOptions,
    pub(crate) limits: limits::Shared,
}

/// The data plane, without sockets. Cheap to clone (all clones share state).
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("revision", &self.revision()).field("opts", &self.inner.opts).finish()
    }
}

impl Gateway {
    /// A gateway serving `initial` (validated first), or not ready until
    /// [`swap_config`](Self::swap_config) gives it a document.
    pub fn new(initial: Option<GatewayConfig>, opts: GatewayOptions) -> Result<Self, GatewayError> {
        let upstream = upstream::Upstream::new(&opts)?;
        let gw = Gateway {
            inner: Arc::new(Inner {
                current: ArcSwapOption::empty(),
                metrics: Metrics::new(),
                upstream,
                limits: limits::Shared::new(&opts),
                opts,
            }),
        };
        if let Some(cfg) = initial {
            gw.swap_config(cfg)?;
        }
        Ok(gw)
    }

    /// Validates `config` completely and, if valid, serves it from the next request on
    /// (requests in flight finish on the previous one). An invalid document changes nothing
    /// and counts in `tollgate_config_reload_errors_total`.
    pub fn swap_config(&self, config: GatewayConfig) -> Result<(), ConfigError> {
        if let Err(e) = config.validate() {
            self.record_reload_error();
            return Err(e);
        }
        let revision = config.revision.clone();
        let served = Served::compile(config, &self.inner.metrics);
        self.inner.current.store(Some(Arc::new(served)));
        self.inner.metrics.meter.set_revision(&revision);
        Ok(())
    }

    /// Counts a refused config (for callers that validate documents themselves).
    pub fn record_reload_error(&self) {
        self.inner.metrics.meter.inc_reload_errors();
    }

    /// Whether a valid config is being served.
    pub fn is_ready(&self) -> bool {
        self.inner.current.load().is_some()
    }

    /// The document being served.
    pub fn config(&self) -> Option<Arc<GatewayConfig>> {
        self.inner.current.load().as_ref().map(|s| s.config.clone())
    }

    /// Revision of the document being served.
    pub fn revision(&self) -> Option<String> {
        self.inner.current.load().as_ref().map(|s| s.config.revision.clone())
    }

    /// The exact in-process meter.
    pub fn meter(&self) -> &Meter {
        &self.inner.metrics.meter
    }

    /// The options it runs with.
    pub fn options(&self) -> &GatewayOptions {
        &self.inner.opts
    }

    /// The API: `/v1/*`, `/healthz`, `/readyz`.
    pub fn router(&self) -> Router {
        server::api_router(self.clone())
    }

    /// `/metrics` (Prometheus text format).
    pub fn metrics_router(&self) -> Router {
        server::metrics_router(self.clone())
    }

    /// The Prometheus exposition, as `/metrics` serves it.
    pub fn encode_metrics(&self) -> String {
        self.inner.metrics.encode()
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let ms = parse_duration_ms(s)?;
    Ok(Duration::from_millis(u64::try_from(ms).map_err(|_| format!("{s:?}: negative"))?))
}

fn parse_attempts(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=20).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: expected a number from 1 to 20")),
    }
}

/// `tollgate gateway`: the flags.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The gateway config document (`config.json` of the mounted ConfigMap). Watched and
    /// reloaded on change (ConfigMap symlink swaps included); an invalid or missing document
    /// keeps the last good one.
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "FILE", required_unless_present = "from_configmap")]
    pub config: Option<PathBuf>,
    /// Instead of a file, watch ConfigMap NAMESPACE/NAME (key `config.json`) and the
    /// credentials Secret `tollgate-credentials` beside it through the Kubernetes API:
    /// sub-second propagation, same validate-then-swap rules. The API key files are written
    /// into `--credentials-dir`, which must then be writable (an emptyDir).
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "config")]
    pub from_configmap: Option<String>,
    /// Directory of the API key files the config names (the mounted credentials Secret).
    #[arg(long, env = "TOLLGATE_CREDENTIALS_DIR", value_name = "DIR", default_value = DEFAULT_CREDENTIALS_DIR)]
    pub credentials_dir: PathBuf,
    /// Address of the OpenAI-compatible API.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of `/metrics`.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Upstream attempts per request, failovers included.
    #[arg(long, default_value = "3", value_parser = parse_attempts)]
    pub max_attempts: usize,
    /// Largest request body, bytes (larger: 413).
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest request head (request line + headers), bytes (at least 8192).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Time allowed to receive a request head.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Upstream TCP + TLS connect timeout.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time to the upstream's first byte (for streams: first chunk) before failing over.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub first_byte_timeout: Duration,
    /// Time limit of a whole request, streams included.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub total_timeout: Duration,
    /// Longest silence between two chunks of a stream.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_stream_timeout: Duration,
    /// Longest silence while reading a request body (past it: 408 and the connection closes).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Longest a client connection may make no progress: idle between requests (keep-alive),
    /// or not reading its response.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub client_idle_timeout: Duration,
    /// Client connections served at once per listener; more wait in the listen backlog
    /// (0: half the open-file limit, at most 16384).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections: usize,
    /// Largest server-sent event of an upstream stream, bytes (larger: the stream ends with an
    /// error event).
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_SSE_EVENT_BYTES)]
    pub max_sse_event_bytes: usize,
    /// Bytes of whole (non-stream) upstream answers held at once, all requests together (over
    /// it: 503).
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_BUFFERED_BYTES)]
    pub max_buffered_bytes: usize,
    /// After a streaming client disconnects, how long the upstream is still read for its usage.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub disconnect_drain_timeout: Duration,
    /// After a streaming client disconnects, how many upstream bytes are still read for its
    /// usage.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub disconnect_drain_bytes: usize,
    /// Poll interval of the config file (in addition to file-system events).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Time in-flight requests get to finish after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Threads serving the API, each with its own single-threaded runtime (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

impl GatewayArgs {
    /// The data-plane options these flags give.
    pub fn options(&self) -> GatewayOptions {
        GatewayOptions {
            credentials_dir: self.credentials_dir.clone(),
            max_body_bytes: self.max_body_bytes,
            max_attempts: self.max_attempts,
            connect_timeout: self.connect_timeout,
            first_byte_timeout: self.first_byte_timeout,
            total_timeout: self.total_timeout,
            idle_stream_timeout: self.idle_stream_timeout,
            body_read_timeout: self.body_read_timeout,
            max_sse_event_bytes: self.max_sse_event_bytes,
            max_buffered_bytes: self.max_buffered_bytes,
            disconnect_drain_timeout: self.disconnect_drain_timeout,
            disconnect_drain_bytes: self.disconnect_drain_bytes,
        }
    }

    /// The server limits these flags give.
    pub fn limits(&self) -> ServeLimits {
        ServeLimits {
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: self.header_read_timeout,
            client_idle_timeout: self.client_idle_timeout,
            max_connections: self.max_connections,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
    token.cancel();
}

/// Runs `tollgate gateway` until SIGTERM / Ctrl-C.
pub async fn run(args: GatewayArgs) -> Result<(), GatewayError> {
    let gw = Gateway::new(None, args.options())?;
    let api =
        TcpListener::bind(args.listen).await.map_err(|source| GatewayError::Bind { addr: args.listen, source })?;
    let metrics = TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|source| GatewayError::Bind { addr: args.metrics_listen, source })?;
    let watcher = match (&args.config, &args.from_configmap) {
        (Some(path), _) => watch_config_file(gw.clone(), path.clone(), args.reload_interval),
        (None, Some(object)) => watch_configmap(gw.clone(), object).await?,
        (None, None) => return Err(GatewayError::Source("either --config or --from-configmap is required".into())),
    };
    tracing::info!(
        listen = %args.listen,
        metrics = %args.metrics_listen,
        config = ?args.config,
        from_configmap = ?args.from_configmap,
        ready = gw.is_ready(),
        "tollgate gateway started"
    );
    let token = CancellationToken::new();
    tokio::spawn(shutdown_signal(token.clone()));
    let limits = args.limits();
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        n => n,
    };
    let api_server = serve_sharded(api, gw.router(), limits, workers, token.clone());
    let metrics_server = serve(metrics, gw.metrics_router(), limits, token.clone().cancelled_owned());
    let (api_result, ()) = tokio::join!(api_server, metrics_server);
    api_result?;
    watcher.abort();
    Ok(())
}

/// Follows a ConfigMap (and the credentials Secret beside it) through the Kubernetes API.
async fn watch_configmap(gw: Gateway, object: &str) -> Result<tokio::task::JoinHandle<()>, GatewayError> {
    use crate::controller::source::{SourceUpdate, parse_object_ref, updates, write_credentials};
    use futures::StreamExt;
    let (namespace, name) = parse_object_ref(object).map_err(GatewayError::Source)?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| GatewayError::Source(format!("cannot reach the Kubernetes API: {e}")))?;
    let dir = gw.options().credentials_dir.clone();
    Ok(tokio::spawn(async move {
        let mut stream = std::pin::pin!(updates(client, &namespace, &name, crate::config::CREDENTIALS_SECRET));
        while let Some(update) = stream.next().await {
            match update {
                SourceUpdate::Credentials(files) => {
                    if let Err(e) = write_credentials(&dir, &files) {
                        // The error names the directory or file, never the key material.
                        tracing::error!(error = %e, dir = %dir.display(), "cannot write the credential files");
                    }
                }
                SourceUpdate::Config(cfg) => {
                    let revision = cfg.revision.clone();
                    match gw.swap_config(*cfg) {
                        Ok(()) => tracing::info!(%revision, "config loaded from the API"),
                        Err(e) => tracing::warn!(error = %e, "config from the API refused; keeping the last good one"),
                    }
                }
                SourceUpdate::Rejected(why) => {
                    gw.record_reload_error();
                    tracing::warn!(%why, "config from the API refused; keeping the last good one");
                }
            }
        }
    }))
}

/// Entry point of the `tollgate gateway` subcommand.
pub fn run_gateway(args: GatewayArgs) -> ExitCode {
    init_tracing(args.log_json);
    // This runtime accepts, serves /metrics and reloads the config; the API is served by the
    // worker threads of `serve_sharded`.
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
