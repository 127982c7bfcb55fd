//! The HTTP surface and the per-request pipeline: parse → route → attempts with failover →
//! answer (whole or streamed) → meter.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::errors::{ApiError, clip};
use super::metrics::METRICS_CONTENT_TYPE;
use super::request::{ClientRequest, Endpoint};
use super::stream::{BodyStream, SseProcessor, StreamEnd, body_usage, metered};
use super::upstream::{SendError, UpstreamReply, redact};
use super::{CompiledBackend, CompiledRoute, Gateway, mock, select};
use crate::api::RouteState;
use crate::config::EndpointConfig;
use crate::policy::Outcome;
use crate::pricing::{TokenCounts, UsageError};

static ROUTE_HEADER: HeaderName = HeaderName::from_static("x-tollgate-route");
static BACKEND_HEADER: HeaderName = HeaderName::from_static("x-tollgate-backend");
static PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-tollgate-provider");
static ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-tollgate-attempts");

/// Largest upstream answer read whole (non-stream), bytes.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
/// Largest upstream error body read, bytes.
const MAX_ERROR_BODY: usize = 256 * 1024;
/// Longest wait for an upstream error body.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);
/// Upstream response headers passed on to the client.
const PASSED_HEADERS: [&str; 3] = ["x-request-id", "request-id", "openai-processing-ms"];

pub(crate) fn api_router(gw: Gateway) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::ChatCompletions, req)),
        )
        .route("/v1/completions", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Completions, req)))
        .route("/v1/embeddings", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Embeddings, req)))
        .route("/v1/responses", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Responses, req)))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*model}", get(get_model))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|req: Request| async move { ApiError::unknown_path(req.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(gw)
}

pub(crate) fn metrics_router(gw: Gateway) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(gw): State<Gateway>| async move {
                ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], gw.inner.metrics.encode())
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(gw)
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.revision() {
        Some(rev) => (StatusCode::OK, format!("ready: serving config {rev}\n")).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no valid config loaded yet\n").into_response(),
    }
}

fn model_object(alias: &str) -> Value {
    json!({"id": alias, "object": "model", "created": 0, "owned_by": "tollgate"})
}

async fn list_models(State(gw): State<Gateway>) -> Response {
    let Some(cfg) = gw.config() else {
        return ApiError::not_ready().into_response();
    };
    let data: Vec<Value> = cfg.routes.iter().map(|r| model_object(&r.model)).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(State(gw): State<Gateway>, Path(model): Path<String>) -> Response {
    let Some(cfg) = gw.config() else {
        return ApiError::not_ready().into_response();
    };
    match cfg.route(&model) {
        Some(r) => axum::Json(model_object(&r.model)).into_response(),
        None => ApiError::model_not_found(&model).into_response(),
    }
}

/// Reads the body up to the limit.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::payload_too_large(limit)),
        Err(e) => Err(ApiError::bad_request("body_read_error", format!("Could not read the request body: {e}"))),
    }
}

/// Why an attempt failed in a way that lets the next backend be tried.
struct Failure {
    backend: String,
    outcome: Outcome,
    status: Option<StatusCode>,
    message: String,
}

enum Attempt {
    /// Answer the client with this (success or a final error).
    Done(Response),
    /// Nothing reached the client; try the next backend.
    Retry(Failure),
}

fn set_headers(resp: &mut Response, route: &CompiledRoute, backend: Option<&CompiledBackend>, attempts: usize) {
    let h = resp.headers_mut();
    h.insert(ROUTE_HEADER.clone(), route.route_header.clone());
    if let Some(b) = backend {
        h.insert(BACKEND_HEADER.clone(), b.backend_header.clone());
        h.insert(PROVIDER_HEADER.clone(), b.provider_header.clone());
    }
    if attempts > 1 {
        h.insert(ATTEMPTS_HEADER.clone(), HeaderValue::from(attempts));
    }
}

async fn proxy(gw: Gateway, endpoint: Endpoint, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let opts = &gw.inner.opts;
    let bytes = match read_body(body, &parts.headers, opts.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let creq = match ClientRequest::parse(&bytes) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    drop(bytes);
    let Some(served) = gw.inner.current.load_full() else {
        return ApiError::not_ready().into_response();
    };
    let Some(route) = served.routes.get(&creq.model).cloned() else {
        return ApiError::model_not_found(&creq.model).into_response();
    };
    drop(served);

    if route.state == RouteState::Rejecting {
        // Attributed to the route's preferred backend (the one a request would have gone to).
        let preferred = route.backends.iter().min_by_key(|b| b.cfg.tier);
        if let Some(b) = preferred {
            b.cell.record_outcome(Outcome::BudgetRejected, None);
        }
        let mut resp = ApiError::budget_exhausted(&route.name).into_response();
        set_headers(&mut resp, &route, None, 1);
        return resp;
    }

    let plan = select::plan(
        &route.candidates,
        route.strategy,
        opts.max_attempts,
        |i| route.backends.get(i).and_then(|b| b.cell.latency_estimate_us()),
        &mut rand::rng(),
    );
    if plan.is_empty() {
        let mut resp = ApiError::no_backend(&route.name).into_response();
        set_headers(&mut resp, &route, None, 1);
        return resp;
    }

    let deadline = Instant::now() + opts.total_timeout;
    let mut last: Option<Failure> = None;
    for (n, &idx) in plan.iter().enumerate() {
        let Some(backend) = route.backends.get(idx).cloned() else {
            continue;
        };
        match attempt(&gw, &route, &backend, endpoint, &creq, &parts.headers, deadline).await {
            Attempt::Done(mut resp) => {
                set_headers(&mut resp, &route, Some(&backend), n + 1);
                return resp;
            }
            Attempt::Retry(f) => {
                tracing::warn!(route = %route.name, backend = %f.backend, outcome = f.outcome.label(), error = %f.message, attempt = n + 1, "upstream attempt failed");
                last = Some(f);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let attempts = plan.len();
    let mut resp = exhausted(last, attempts).into_response();
    set_headers(&mut resp, &route, None, attempts);
    resp
}

/// The error answered when every attempt failed.
fn exhausted(last: Option<Failure>, attempts: usize) -> ApiError {
    let Some(f) = last else {
        return ApiError::new(StatusCode::BAD_GATEWAY, "api_error", "upstream_error", "No upstream could be tried.");
    };
    let tries = if attempts == 1 { "1 attempt".to_string() } else { format!("{attempts} attempts") };
    let msg = |what: &str| format!("All upstreams failed ({tries}); last: backend `{}` {what}", f.backend);
    match (f.outcome, f.status) {
        (Outcome::RateLimited, _) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            msg(&format!("is rate limited (429): {}", f.message)),
        ),
        (Outcome::Timeout, _) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            "upstream_timeout",
            msg(&format!("timed out: {}", f.message)),
        ),
        (Outcome::ConnectError, _) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_unavailable",
            msg(&format!("is unreachable: {}", f.message)),
        ),
        (_, Some(s)) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_error",
            msg(&format!("answered {}: {}", s.as_u16(), f.message)),
        ),
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_error",
            msg(&format!("failed: {}", f.message)),
        ),
    }
}

enum ReadError {
    Timeout,
    TooLarge,
    Broken(String),
}

/// Reads a body whole, until `deadline`, at most `limit` bytes.
async fn read_all(body: &mut BodyStream, limit: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
    let read = async {
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ReadError::Broken(e.to_string()))?;
            if out.len() + chunk.len() > limit {
                return Err(ReadError::TooLarge);
            }
            if out.is_empty() && chunk.len() < limit {
                out.reserve(chunk.len());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    // One timer for the whole body, not one per chunk.
    tokio::time::timeout_at(deadline, read).await.unwrap_or(Err(ReadError::Timeout))
}

/// The message of an upstream error body, scrubbed of the API key.
fn error_message(body: &[u8], key: Option<&str>) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error"))
            .map(|m| m.as_str().map(str::to_string).unwrap_or_else(|| m.to_string()))
            .unwrap_or_else(|| "(no message)".into()),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    clip(&redact(&text, key), 300)
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

fn pass_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in PASSED_HEADERS {
        if let Some(v) = from.get(name) {
            to.insert(HeaderName::from_static(name), v.clone());
        }
    }
}

/// Meters what a successful answer's usage said.
fn bill(
    b: &CompiledBackend,
    endpoint: Endpoint,
    usage: Result<TokenCounts, UsageError>,
    reason_if_missing: Option<&str>,
) {
    match usage {
        Ok(t) => {
            let cost = t.cost(&b.cfg.pricing);
            b.cell.record_usage(&t, cost);
            b.gen_ai.usage(endpoint, &t, cost);
        }
        Err(e) => {
            let reason = reason_if_missing.unwrap_or(e.metric_label());
            tracing::warn!(route = %b.labels.route, backend = %b.cfg.name, reason, error = %e, "answer without usable usage: not billed");
            b.cell.record_usage_missing(reason);
        }
    }
}

async fn attempt(
    gw: &Gateway,
    route: &CompiledRoute,
    b: &Arc<CompiledBackend>,
    endpoint: Endpoint,
    creq: &ClientRequest,
    client_headers: &HeaderMap,
    deadline: Instant,
) -> Attempt {
    let opts = &gw.inner.opts;
    let started = Instant::now();
    let first_byte_deadline = (started + opts.first_byte_timeout).min(deadline);
    let ask_usage = creq.stream && !creq.include_usage && endpoint.usage_needs_stream_options();
    let body = creq.upstream_body(&b.cfg.model, ask_usage);
    let family = b.cfg.family;

    let sent = match &b.cfg.endpoint {
        EndpointConfig::Http { base_url, protocol, api_key_file } => match &b.uris {
            Some(uris) => {
                let uri = uris[endpoint.index()].clone();
                gw.inner
                    .upstream
                    .send(uri, *protocol, api_key_file.as_deref(), body, client_headers, first_byte_deadline)
                    .await
            }
            None => Err(SendError::Connect(format!("invalid upstream base URL {base_url:?}"))),
        },
        EndpointConfig::Mock(m) => {
            match tokio::time::timeout_at(first_byte_deadline, mock::respond(m, family, endpoint, &body)).await {
                Ok(r) => Ok(r),
                Err(_) => Err(SendError::Timeout),
            }
        }
    };
    let fail = |outcome: Outcome, status: Option<StatusCode>, message: String| {
        b.cell.record_outcome(outcome, None);
        let secs = started.elapsed().as_secs_f64();
        b.duration.observe(secs);
        b.gen_ai.duration(endpoint, outcome, secs);
        Failure { backend: b.cfg.name.clone(), outcome, status, message }
    };
    let UpstreamReply { status, headers, mut body, api_key } = match sent {
        Ok(r) => r,
        Err(e) => {
            let outcome = match &e {
                SendError::Connect(_) | SendError::Credentials(_) => Outcome::ConnectError,
                SendError::Timeout => Outcome::Timeout,
                SendError::Transport(_) => Outcome::UpstreamError,
            };
            return Attempt::Retry(fail(outcome, None, e.to_string()));
        }
    };
    let key = api_key.as_deref();

    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let wait = (Instant::now() + ERROR_BODY_WAIT).min(deadline);
        let msg = match read_all(&mut body, MAX_ERROR_BODY, wait).await {
            Ok(b) => error_message(&b, key),
            Err(_) => "(unreadable error body)".into(),
        };
        let outcome =
            if status == StatusCode::TOO_MANY_REQUESTS { Outcome::RateLimited } else { Outcome::UpstreamError };
        return Attempt::Retry(fail(outcome, Some(status), msg));
    }

    if status.is_client_error() {
        // The request's fault, not the backend's: answered as is, never retried.
        let wait = (Instant::now() + ERROR_BODY_WAIT).min(deadline);
        let raw = read_all(&mut body, MAX_ERROR_BODY, wait).await.unwrap_or_default();
        b.cell.record_outcome(Outcome::ClientError, None);
        let secs = started.elapsed().as_secs_f64();
        b.duration.observe(secs);
        b.gen_ai.duration(endpoint, Outcome::ClientError, secs);
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            tracing::error!(route = %route.name, backend = %b.cfg.name, status = status.as_u16(), "upstream refused the gateway's credentials");
            return Attempt::Done(
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "upstream_auth_failed",
                    format!(
                        "Backend `{}` refused the gateway's credentials ({}): {}",
                        b.cfg.name,
                        status.as_u16(),
                        error_message(&raw, key)
                    ),
                )
                .into_response(),
            );
        }
        let resp = match serde_json::from_slice::<Value>(&raw) {
            Ok(v) if v.get("error").is_some_and(Value::is_object) => {
                let text = redact(&String::from_utf8_lossy(&raw), key);
                let mut r = (status, text).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            _ => ApiError::new(
                status,
                "invalid_request_error",
                "upstream_rejected",
                format!("Backend `{}` rejected the request: {}", b.cfg.name, error_message(&raw, key)),
            )
            .into_response(),
        };
        return Attempt::Done(resp);
    }

    if !status.is_success() {
        b.cell.record_outcome(Outcome::UpstreamError, None);
        let secs = started.elapsed().as_secs_f64();
        b.duration.observe(secs);
        b.gen_ai.duration(endpoint, Outcome::UpstreamError, secs);
        return Attempt::Done(
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "upstream_error",
                format!("Backend `{}` answered with unexpected status {}.", b.cfg.name, status.as_u16()),
            )
            .into_response(),
        );
    }

    if is_event_stream(&headers) {
        // Nothing goes to the client until upstream's first chunk: until then, fail over.
        let first = match tokio::time::timeout_at(first_byte_deadline, body.next()).await {
            Err(_) => {
                return Attempt::Retry(fail(
                    Outcome::Timeout,
                    None,
                    "no stream chunk before the first-byte timeout".into(),
                ));
            }
            Ok(None) => return Attempt::Retry(fail(Outcome::UpstreamError, None, "empty stream".into())),
            Ok(Some(Err(e))) => {
                return Attempt::Retry(fail(
                    Outcome::UpstreamError,
                    None,
                    format!("stream broke before its first chunk: {e}"),
                ));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        let ttfb = started.elapsed();
        b.ttft.observe(ttfb.as_secs_f64());
        b.gen_ai.time_to_first_token(endpoint, ttfb.as_secs_f64());
        let b2 = b.clone();
        let on_end = Box::new(move |end: StreamEnd, usage: Result<TokenCounts, UsageError>| {
            let (outcome, latency, missing_reason) = match end {
                StreamEnd::Complete => (Outcome::Ok, Some(ttfb), None),
                StreamEnd::ClientGone => (Outcome::Ok, Some(ttfb), Some("client_disconnected")),
                StreamEnd::UpstreamError => (Outcome::UpstreamError, None, Some("stream_interrupted")),
                StreamEnd::IdleTimeout | StreamEnd::TotalTimeout => {
                    (Outcome::Timeout, None, Some("stream_interrupted"))
                }
            };
            b2.cell.record_outcome(outcome, latency);
            let secs = started.elapsed().as_secs_f64();
            b2.duration.observe(secs);
            b2.gen_ai.duration(endpoint, outcome, secs);
            bill(&b2, endpoint, usage, missing_reason);
        });
        let sse = SseProcessor::new(family, ask_usage);
        let stream = metered(first, body, sse, opts.idle_stream_timeout, deadline, on_end);
        let mut resp = Response::new(Body::from_stream(stream));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
        pass_headers(&headers, h);
        return Attempt::Done(resp);
    }

    let raw = match read_all(&mut body, MAX_UPSTREAM_BODY, deadline).await {
        Ok(r) => r,
        Err(ReadError::Timeout) => {
            b.cell.record_outcome(Outcome::Timeout, None);
            let secs = started.elapsed().as_secs_f64();
            b.duration.observe(secs);
            b.gen_ai.duration(endpoint, Outcome::Timeout, secs);
            b.cell.record_usage_missing("unreadable_body");
            return Attempt::Done(
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "api_error",
                    "upstream_timeout",
                    format!("Backend `{}` did not finish its answer in time.", b.cfg.name),
                )
                .into_response(),
            );
        }
        Err(e) => {
            let why = match e {
                ReadError::TooLarge => format!("larger than {MAX_UPSTREAM_BODY} bytes"),
                ReadError::Broken(e) => e,
                ReadError::Timeout => String::new(),
            };
            b.cell.record_outcome(Outcome::UpstreamError, None);
            let secs = started.elapsed().as_secs_f64();
            b.duration.observe(secs);
            b.gen_ai.duration(endpoint, Outcome::UpstreamError, secs);
            b.cell.record_usage_missing("unreadable_body");
            return Attempt::Done(
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "upstream_error",
                    format!("Backend `{}` sent an unreadable answer: {why}", b.cfg.name),
                )
                .into_response(),
            );
        }
    };
    let elapsed = started.elapsed();
    b.duration.observe(elapsed.as_secs_f64());
    match body_usage(family, &raw) {
        Err(()) => {
            b.gen_ai.duration(endpoint, Outcome::UpstreamError, elapsed.as_secs_f64());
            b.cell.record_outcome(Outcome::UpstreamError, None);
            b.cell.record_usage_missing("unparseable_body");
            tracing::warn!(route = %route.name, backend = %b.cfg.name, "upstream answered 2xx with a body that is not a JSON object");
            Attempt::Done(
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "upstream_invalid_response",
                    format!("Backend `{}` answered with a body that is not JSON.", b.cfg.name),
                )
                .into_response(),
            )
        }
        Ok(usage) => {
            b.gen_ai.duration(endpoint, Outcome::Ok, elapsed.as_secs_f64());
            b.cell.record_outcome(Outcome::Ok, Some(elapsed));
            bill(b, endpoint, usage, None);
            let mut resp = Response::new(Body::from(raw));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            let ct = headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("application/json"));
            h.insert(header::CONTENT_TYPE, ct);
            pass_headers(&headers, h);
            Attempt::Done(resp)
        }
    }
}
