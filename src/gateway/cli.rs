//! `tollgate gateway`: its flags, and the job that binds the data plane to its two listeners
//! and to a config source (a watched file, or a ConfigMap through the API) until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::source::watch_configmap;
use super::{
    DEFAULT_CREDENTIALS_DIR, Gateway, GatewayError, GatewayOptions, ServeLimits, serve, serve_sharded,
    watch_config_file,
};
use crate::cmd::parse_duration;

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
    /// Largest request head (request line + headers), bytes (at least 8192); over HTTP/2, the
    /// largest header list (each field: name + value + 32 bytes).
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
    /// Longest silence between two chunks of a stream, and longest a streamed answer may wait
    /// for the client to take its next piece (an HTTP/2 stream is then reset).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_stream_timeout: Duration,
    /// Longest silence while reading a request body (past it: 408 and the connection closes).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Longest a client connection may make no progress: idle between requests (keep-alive;
    /// HTTP/2: no open stream), or not reading its response (HTTP/2: its flow-control window
    /// kept closed; that stream is reset).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub client_idle_timeout: Duration,
    /// Client connections served at once per listener; more wait in the listen backlog
    /// (0: half the open-file limit, at most 16384).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections: usize,
    /// Largest server-sent event of an upstream stream, bytes (larger: the stream ends with an
    /// error event).
    #[arg(long, value_name = "BYTES", default_value_t = super::limits::DEFAULT_MAX_SSE_EVENT_BYTES)]
    pub max_sse_event_bytes: usize,
    /// Bytes of whole (non-stream) upstream answers held at once, all requests together (over
    /// it: 503).
    #[arg(long, value_name = "BYTES", default_value_t = super::limits::DEFAULT_MAX_BUFFERED_BYTES)]
    pub max_buffered_bytes: usize,
    /// After a streaming client disconnects, how long the upstream is still read for its usage.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub disconnect_drain_timeout: Duration,
    /// How long `/metrics` still exports the series of a route or backend a reload removed, so
    /// every scraper reads their last values; then they are dropped.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub retired_series_retention: Duration,
    /// After a streaming client disconnects, how many upstream bytes are still read for its
    /// usage.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub disconnect_drain_bytes: usize,
    /// Longest time one 429 makes the gateway skip a backend for every client, whatever its
    /// `Retry-After` asks (its clients are still told the provider's `Retry-After`; a 429 about
    /// the request's own size skips nothing; 0: never skipped; at most 1h).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::cmd::parse_duration_in::<0, 3_600_000>)]
    pub max_rate_limit_pause: Duration,
    /// How long an upstream connection may stay idle in the pool before the gateway closes it
    /// (at least 100ms).
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = crate::cmd::parse_duration_in::<100, { u64::MAX }>)]
    pub upstream_idle_timeout: Duration,
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
    /// The Hard budgets' allowances document (`allowances.json` of the mounted
    /// `tollgate-allowances` ConfigMap), polled every `--reload-interval`.
    #[arg(long, env = "TOLLGATE_ALLOWANCES", value_name = "FILE")]
    pub allowances: Option<PathBuf>,
    /// With `--from-configmap` and no `--allowances`: the name of the allowances ConfigMap
    /// (key `allowances.json`) watched beside the config ConfigMap, in its namespace.
    #[arg(long, value_name = "NAME", default_value = crate::config::allowances::ALLOWANCES_CONFIGMAP)]
    pub allowances_configmap: String,
    /// This gateway's instance id in the allowances: its pod UID in a cluster (the controller
    /// grants each gateway pod by UID; the chart passes it from the downward API).
    #[arg(long, env = "TOLLGATE_INSTANCE", value_name = "ID", default_value = "gateway")]
    pub instance: String,
    /// Make the instance id unique to this process, `<ID>.<8 random hex digits>`: a restarted
    /// gateway (same pod, same `--instance`) is then a new instance with no grant, instead of a
    /// new process that could spend its predecessor's grant again. The id is published on
    /// `/metrics` (`tollgate_hard_budget_instance_info`), where the controller reads it.
    #[arg(long)]
    pub instance_per_process: bool,
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
            retired_series_retention: self.retired_series_retention,
            disconnect_drain_bytes: self.disconnect_drain_bytes,
            max_rate_limit_pause: self.max_rate_limit_pause,
            upstream_idle_timeout: self.upstream_idle_timeout,
        }
    }

    /// The server limits these flags give.
    pub fn limits(&self) -> ServeLimits {
        ServeLimits {
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: self.header_read_timeout,
            client_idle_timeout: self.client_idle_timeout,
            stream_idle_timeout: self.idle_stream_timeout,
            max_connections: self.max_connections,
            shutdown_grace: self.shutdown_grace,
        }
    }
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
    let instance = if args.instance_per_process {
        format!("{}.{:08x}", args.instance, rand::random::<u32>())
    } else {
        args.instance.clone()
    };
    if args.allowances.is_some() || args.from_configmap.is_some() {
        // Publishes the instance id at once (no Hard budget known until a document arrives).
        gw.set_allowances(&instance, &crate::config::allowances::Allowances::default())
            .map_err(|e| GatewayError::Source(e.to_string()))?;
        tracing::info!(instance = %instance, "Hard budgets: grants are read for this instance id");
    }
    let allowances = match (&args.allowances, &args.from_configmap) {
        (Some(path), _) => {
            Some(super::watch_allowances_file(gw.clone(), path.clone(), instance.clone(), args.reload_interval))
        }
        (None, Some(object)) => {
            let (namespace, _) = crate::kube_source::parse_object_ref(object).map_err(GatewayError::Source)?;
            let client = kube::Client::try_default()
                .await
                .map_err(|e| GatewayError::Source(format!("cannot reach the Kubernetes API: {e}")))?;
            Some(
                super::watch_allowances_configmap(
                    gw.clone(),
                    client,
                    namespace,
                    args.allowances_configmap.clone(),
                    instance.clone(),
                )
                .await,
            )
        }
        (None, None) => None,
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
    crate::cmd::cancel_on_shutdown(token.clone());
    let limits = args.limits();
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        n => n,
    };
    let api_server = serve_sharded(api, gw.api(), limits, workers, token.clone());
    let metrics_server = serve(metrics, gw.metrics_router(), limits, token.clone().cancelled_owned());
    let (api_result, ()) = tokio::join!(api_server, metrics_server);
    api_result?;
    watcher.abort();
    if let Some(a) = allowances {
        a.abort();
    }
    Ok(())
}

/// Entry point of the `tollgate gateway` subcommand.
pub fn run_gateway(args: GatewayArgs) -> ExitCode {
    crate::cmd::init_tracing("info", args.log_json);
    // This runtime accepts, serves /metrics and reloads the config; the API is served by the
    // worker threads of `serve_sharded`.
    let rt = match crate::cmd::runtime(Some(1)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(run(args));
    if let Err(e) = &result {
        tracing::error!(error = %e, "gateway failed");
    }
    crate::cmd::exit_code(result, 1)
}
