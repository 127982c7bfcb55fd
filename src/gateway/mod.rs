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
//! Memory: a served document is compiled and taken apart, not kept beside its compiled form
//! ([`Served`]): each backend row moves into its compiled backend, instruments labelled only by
//! provider and model are shared, and [`Gateway::config`] puts the document back together on
//! demand.
//!
//! Rooms: this file is the facade (the [`Gateway`], its options and errors); `cli.rs` holds
//! `tollgate gateway`'s flags and job, `serve.rs` the HTTP serving, `source.rs` the Kubernetes
//! config source (over [`crate::kube_source`]; the gateway never imports the operator).
//!
//! ```no_run
//! # async fn demo(cfg: tollgate::config::GatewayConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::gateway::{Gateway, GatewayOptions, MeterSnapshot};
//! let gw = Gateway::new(Some(cfg), GatewayOptions::default())?;
//! let api = gw.api(); // serve with gateway::serve (gw.router(): an axum Router)
//! let before = MeterSnapshot::default();
//! let now = gw.meter().snapshot();
//! let obs = now.to_observations_since(&before, "default"); // → policy::evaluate
//! # let _ = (api, obs); Ok(()) }
//! ```

mod admission;
mod affinity;
mod allowances_file;
mod answer;
mod attempt;
mod cli;
mod codec;
mod errors;
mod limits;
mod messages;
mod metrics;
mod mock;
mod mock_cache;
mod native;
mod native_mock;
mod native_stream;
mod pipeline;
mod redact;
mod reload;
mod request;
mod select;
mod serve;
mod server;
mod source;
mod steer;
mod stream;
pub mod translate;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::http::{HeaderValue, Uri};

pub use admission::{DEFAULT_HARD_OUTPUT_CAP, DEFAULT_IMAGE_TOKENS, HardUsage, INPUT_TOKEN_OVERHEAD};
pub use allowances_file::{watch_allowances_configmap, watch_allowances_file};
pub use cli::{GatewayArgs, run, run_gateway};
pub use errors::ApiError;
pub use metrics::{Meter, MeterEntry, MeterKey, MeterSnapshot};
pub use mock::mock_tokens;
pub use native::{ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS, anthropic_url};
pub use reload::{ReloadOutcome, watch_config_file};
pub use request::Endpoint;
pub use serve::{App, ServeLimits, ShutdownCut, serve, serve_sharded};
pub use server::Api;

use crate::config::{BackendConfig, ConfigError, EndpointConfig, GatewayConfig, RouteConfig};
use crate::config::{RouteState, Strategy};
use metrics::{BackendLabels, GenAiBackend, LazyHistogram, MeterCell, Metrics};
use select::{Candidate, Steer};

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
    /// How long `/metrics` still exports the series of a route or backend a reload removed
    /// (then, once no request in flight uses them, they are dropped): long enough for every
    /// scraper to read their last values.
    pub retired_series_retention: Duration,
    /// Longest time one 429 makes this gateway skip a backend, whatever its `Retry-After`
    /// asks (0: never skipped); see [`limits`].
    pub max_rate_limit_pause: Duration,
    /// How long an upstream connection may stay idle in the pool; past it the gateway closes
    /// it, whether or not another request comes.
    pub upstream_idle_timeout: Duration,
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
            retired_series_retention: Duration::from_secs(600),
            max_rate_limit_pause: limits::DEFAULT_MAX_RATE_LIMIT_PAUSE,
            upstream_idle_timeout: Duration::from_secs(90),
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

/// One backend as served: its config row (moved out of the document, the only copy) plus its
/// meter cell and precomputed labels.
pub(crate) struct CompiledBackend {
    pub(crate) cfg: BackendConfig,
    pub(crate) cell: Arc<MeterCell>,
    /// Shared with its two histograms.
    pub(crate) labels: Arc<BackendLabels>,
    pub(crate) duration: LazyHistogram,
    pub(crate) ttft: LazyHistogram,
    /// OpenTelemetry gen_ai instruments (by endpoint). Their series are labelled by provider
    /// and upstream model only, so every backend of a document with the same pair shares one.
    pub(crate) gen_ai: Arc<GenAiBackend>,
    pub(crate) backend_header: HeaderValue,
    pub(crate) provider_header: HeaderValue,
    /// Upstream URL of each endpoint (HTTP backends whose base URL parses); boxed, so mock
    /// backends do not carry four empty URIs.
    pub(crate) uris: Option<Box<[Uri; 4]>>,
    /// The headers every request to those URLs starts with (`Host`, built once by
    /// [`upstream::host_header`], `Content-Type`, `User-Agent`): copied per request instead
    /// of hashed in one by one ([`upstream::base_headers`]). HTTP backends only, one map per
    /// distinct `Host` shared by its backends (a map each took 32 MiB at 50,000 backends).
    pub(crate) base_headers: Option<Arc<axum::http::HeaderMap>>,
}

/// One route as served.
pub(crate) struct CompiledRoute {
    pub(crate) name: String,
    pub(crate) strategy: Strategy,
    pub(crate) state: RouteState,
    pub(crate) route_header: HeaderValue,
    pub(crate) backends: Vec<Arc<CompiledBackend>>,
    pub(crate) candidates: Vec<Candidate>,
    /// `maxInputTokens`.
    pub(crate) max_input_tokens: Option<u32>,
    /// `mediaInputTokens`: input tokens per media part where a cost bound is needed.
    pub(crate) media_input_tokens: Option<u32>,
    /// Cache affinity and hints (`spec.affinity`, `spec.hints`), as the document carries them.
    pub(crate) affinity: Option<crate::config::AffinityPolicy>,
    pub(crate) hints: Option<crate::config::HintsPolicy>,
    /// The route's entry in the document with its backend rows moved out (they live in
    /// `backends`): with them, the entry as it was ([`Served::document`]).
    pub(crate) doc: RouteConfig,
}

impl CompiledRoute {
    /// The backends to try for one request, in order (at most `max_attempts`), drawn by the
    /// route's strategy among the serving rows of the best tier, steered for this request
    /// (affinity key, hints: [`steer`]).
    pub(crate) fn attempt_plan_steered(&self, max_attempts: usize, steer: &Steer) -> Vec<usize> {
        select::plan_steered(
            &self.candidates,
            self.strategy,
            max_attempts,
            |i| self.backends.get(i).and_then(|b| b.cell.latency_estimate_us()),
            steer,
            &mut rand::rng(),
        )
    }
}

/// A config document ready to serve. The document is taken apart, not kept beside its
/// compiled form: each backend row is moved into its [`CompiledBackend`], so a fleet-sized
/// document is held once ([`Served::document`] puts it back together on demand).
pub(crate) struct Served {
    /// The document's version, revision and namespace (its `routes` are empty).
    pub(crate) head: GatewayConfig,
    /// The routes in document order (sorted by name).
    pub(crate) order: Vec<Arc<CompiledRoute>>,
    /// The same routes by alias.
    pub(crate) routes: HashMap<String, Arc<CompiledRoute>>,
}

/// The first value of each of `names` in `headers` (`None`: absent), in one walk over the
/// request's or answer's few headers instead of one hashed lookup per name.
pub(crate) fn first_values<'h, const N: usize>(
    headers: &'h axum::http::HeaderMap,
    names: [&axum::http::HeaderName; N],
) -> [Option<&'h HeaderValue>; N] {
    let mut out = [None; N];
    for (name, v) in headers {
        if let Some(k) = names.iter().position(|n| *n == name)
            && out[k].is_none()
        {
            out[k] = Some(v);
        }
    }
    out
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Upstream URL of each endpoint of an HTTP backend whose base URL parses.
fn upstream_uris(endpoint: &EndpointConfig) -> Option<Box<[Uri; 4]>> {
    match endpoint {
        EndpointConfig::Http { base_url, .. } => {
            let parsed: Result<Vec<Uri>, _> =
                Endpoint::UPSTREAM.iter().map(|e| Uri::try_from(format!("{base_url}{}", e.path()))).collect();
            parsed.ok().and_then(|v| <[Uri; 4]>::try_from(v).ok()).map(Box::new)
        }
        EndpointConfig::Mock(_) => None,
    }
}

impl Served {
    /// Compiles `config`, consuming it: route by route, each row moves into its compiled
    /// backend (nothing of the document is copied but the labels and headers).
    fn compile(config: GatewayConfig, metrics: &Metrics) -> Self {
        let GatewayConfig { version, revision, namespace, routes } = config;
        let head = GatewayConfig { version, revision, namespace, routes: Vec::new() };
        let mut gen_ai: HashMap<(String, String), Arc<GenAiBackend>> = HashMap::new();
        let mut bases: HashMap<Option<HeaderValue>, Arc<axum::http::HeaderMap>> = HashMap::new();
        let mut order = Vec::with_capacity(routes.len());
        let mut by_alias = HashMap::with_capacity(routes.len());
        for mut r in routes {
            let rows = std::mem::take(&mut r.backends);
            let candidates = rows
                .iter()
                .map(|b| Candidate {
                    tier: b.tier,
                    weight: b.weight,
                    serving: b.serving,
                    id: affinity::backend_id(&b.name),
                })
                .collect();
            // Pushed into an exact-size vector: a collect of `rows.into_iter()` would reuse the
            // rows' allocation (sized for the parser's growth, 288 bytes a slot) for 8-byte Arcs.
            let mut backends: Vec<Arc<CompiledBackend>> = Vec::with_capacity(rows.len());
            backends.extend(rows.into_iter().map(|b| {
                let key = MeterKey::new(&r.name, &b.name, &b.provider, &b.model);
                let labels = Arc::new(BackendLabels::of(&key));
                let (duration, ttft) = metrics.histograms(&labels);
                let uris = upstream_uris(&b.endpoint);
                let base_headers = uris.as_ref().map(|u| {
                    let host = upstream::host_header(&u[0]);
                    Arc::clone(bases.entry(host.clone()).or_insert_with(|| Arc::new(upstream::base_headers(host))))
                });
                let gen_ai = gen_ai
                    .entry((b.provider.clone(), b.model.clone()))
                    .or_insert_with(|| Arc::new(metrics.gen_ai(&b.provider, &b.model)))
                    .clone();
                Arc::new(CompiledBackend {
                    cell: metrics.meter.cell(&key),
                    labels,
                    duration,
                    ttft,
                    gen_ai,
                    backend_header: header_value(&b.name),
                    provider_header: header_value(&b.provider),
                    uris,
                    base_headers,
                    cfg: b,
                })
            }));
            let route = Arc::new(CompiledRoute {
                name: r.name.clone(),
                strategy: r.strategy,
                state: r.state,
                route_header: header_value(&r.name),
                backends,
                candidates,
                max_input_tokens: r.max_input_tokens,
                media_input_tokens: r.media_input_tokens,
                affinity: r.affinity.clone(),
                hints: r.hints.clone(),
                doc: r,
            });
            by_alias.insert(route.doc.model.clone(), route.clone());
            order.push(route);
        }
        Self { head, order, routes: by_alias }
    }

    /// The document served, put back together (a copy: at fleet scale, megabytes).
    pub(crate) fn document(&self) -> GatewayConfig {
        let routes = self
            .order
            .iter()
            .map(|r| RouteConfig { backends: r.backends.iter().map(|b| b.cfg.clone()).collect(), ..r.doc.clone() })
            .collect();
        GatewayConfig { routes, ..self.head.clone() }
    }
}

pub(crate) struct Inner {
    pub(crate) current: ArcSwapOption<Served>,
    pub(crate) metrics: Metrics,
    pub(crate) upstream: upstream::Upstream,
    pub(crate) opts: GatewayOptions,
    pub(crate) limits: limits::Shared,
    /// Hard budgets: reservations against this gateway's grants.
    pub(crate) admission: Arc<admission::Admission>,
    /// Mock backends' prompt caches.
    pub(crate) mock_cache: mock_cache::PromptCaches,
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
        let admission = Arc::new(admission::Admission::default());
        let mut metrics = Metrics::new();
        metrics.retention = opts.retired_series_retention;
        metrics.register_collector(Box::new(admission::AdmissionCollector(admission.clone())));
        let gw = Gateway {
            inner: Arc::new(Inner {
                current: ArcSwapOption::empty(),
                metrics,
                admission,
                upstream,
                limits: limits::Shared::new(&opts),
                mock_cache: mock_cache::PromptCaches::default(),
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
        self.swap_validated(config);
        Ok(())
    }

    /// Serves a document the caller has just validated (the file and API sources decode and
    /// validate before handing over), without validating it a second time: at fleet scale the
    /// revision check alone hashes megabytes.
    pub(crate) fn swap_validated(&self, config: GatewayConfig) {
        let revision = config.revision.clone();
        let served = Served::compile(config, &self.inner.metrics);
        self.inner.current.store(Some(Arc::new(served)));
        self.inner.metrics.meter.set_revision(&revision);
        // The previous document's series no longer served start their retention.
        self.inner.metrics.drop_retired(std::time::Instant::now());
    }

    /// Applies the allowances document (Hard budgets' grants) as gateway instance
    /// `instance`: validated first; an invalid document changes nothing.
    pub fn set_allowances(
        &self,
        instance: &str,
        doc: &crate::config::allowances::Allowances,
    ) -> Result<(), crate::config::allowances::AllowancesError> {
        doc.validate()?;
        self.inner.admission.apply(instance, doc);
        Ok(())
    }

    /// This gateway's view of every Hard budget (grant, settled, reserved, admitted, refused).
    pub fn hard_usage(&self) -> Vec<HardUsage> {
        self.inner.admission.usage()
    }

    /// Counts a refused config (for callers that validate documents themselves).
    pub fn record_reload_error(&self) {
        self.inner.metrics.meter.inc_reload_errors();
    }

    /// Whether a valid config is being served.
    pub fn is_ready(&self) -> bool {
        self.inner.current.load().is_some()
    }

    /// The document being served: put back together from the compiled routes on each call
    /// (a copy; the gateway does not hold the document twice), so not for the request path.
    pub fn config(&self) -> Option<Arc<GatewayConfig>> {
        self.inner.current.load().as_ref().map(|s| Arc::new(s.document()))
    }

    /// Revision of the document being served.
    pub fn revision(&self) -> Option<String> {
        self.inner.current.load().as_ref().map(|s| s.head.revision.clone())
    }

    /// The exact in-process meter.
    pub fn meter(&self) -> &Meter {
        &self.inner.metrics.meter
    }

    /// The options it runs with.
    pub fn options(&self) -> &GatewayOptions {
        &self.inner.opts
    }

    /// The API: `/v1/*`, `/healthz`, `/readyz`, as an axum router.
    pub fn router(&self) -> Router {
        server::api_router(self.clone())
    }

    /// The API as `tollgate gateway` serves it ([`serve`], [`serve_sharded`]): the same answers
    /// as [`router`](Self::router), the proxied endpoints dispatched without the router.
    pub fn api(&self) -> Api {
        Api::new(self.clone(), self.router())
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
