//! The HTTP surface and the per-request pipeline: parse → route → attempts with failover →
//! answer (whole or streamed) → meter.
//!
//! Edge cases: a request body that stalls longer than `body_read_timeout` gets 408 (and the
//! connection closes); backends paused by a `Retry-After` are skipped, and when every backend of
//! the plan is paused the client gets 429 with `Retry-After`; every upstream byte passed on
//! (error bodies, the passed-through headers, whole answers, stream events) is scrubbed of the
//! API keys ([`Redactor`]); whole answers count against the shared memory budget (503 when it is
//! used up); usage above [`limits::MAX_TOKENS_PER_ANSWER`] is refused (502, `malformed`); an
//! answer the provider bills but whose usage cannot be read is metered as an estimate in a
//! separate series (`usage_missing{reason}` + `tollgate_cost_estimated_nanousd_total`).

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
use serde_json::{Value, json};
use tokio::time::Instant;

use super::answer::{ReadError, bill, error_message, is_event_stream, pass_headers, read_all, read_body};
use super::errors::{ApiError, rebuild_upstream_error};
use super::limits::{self, HeldBody};
use super::metrics::METRICS_CONTENT_TYPE;
use super::request::{ClientRequest, Endpoint};
use super::serve::ShutdownCut;
use super::stream::{SseProcessor, StreamBounds, StreamEnd, StreamSummary, body_usage, metered};
use super::upstream::{SendError, UpstreamReply};
use super::{CompiledBackend, CompiledRoute, Gateway, admission, mock};
use crate::config::EndpointConfig;
use crate::config::{RouteState, WireApi};
use crate::policy::Outcome;
use crate::pricing::UsageError;

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

pub(crate) fn api_router(gw: Gateway) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::ChatCompletions, req)),
        )
        .route("/v1/completions", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Completions, req)))
        .route("/v1/embeddings", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Embeddings, req)))
        .route("/v1/responses", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Responses, req)))
        // wire11 hook: inbound Anthropic Messages surface (src/gateway/messages.rs).
        .route("/v1/messages", post(|State(gw): State<Gateway>, req: Request| super::messages::handle(gw, req)))
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
    let bytes = match read_body(body, &parts.headers, parts.version, opts.max_body_bytes, opts.body_read_timeout).await
    {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request_bytes = bytes.len();
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

    if let Some(msg) = admission::input_too_large(route.max_input_tokens, &route.name, request_bytes) {
        let mut resp = ApiError::bad_request("input_too_large", msg).into_response();
        set_headers(&mut resp, &route, None, 1);
        return resp;
    }

    // issue 15 hook: affinity key and request hints (src/gateway/steer.rs).
    let steer = match super::steer::steer(
        &route,
        super::steer::Input::openai(&parts.headers, &creq, endpoint, request_bytes),
    ) {
        Ok(s) => s,
        Err(r) => {
            let mut resp = ApiError::new(r.status, "invalid_request_error", r.code, r.message).into_response();
            set_headers(&mut resp, &route, None, 1);
            return resp;
        }
    };
    let plan = route.attempt_plan_steered(opts.max_attempts, &steer);
    if plan.is_empty() {
        let mut resp = ApiError::no_backend(&route.name).into_response();
        set_headers(&mut resp, &route, None, 1);
        return resp;
    }
    let shared = &gw.inner.limits;
    let pause_of = |i: usize| route.backends.get(i).and_then(|b| shared.paused_until(&route.name, &b.cfg.name));
    let (plan, paused): (Vec<usize>, Vec<usize>) = plan.into_iter().partition(|&i| pause_of(i).is_none());
    if plan.is_empty() {
        let until = paused.iter().filter_map(|&i| pause_of(i)).min();
        let secs = until.map_or(1, limits::retry_after_secs);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!("Every backend of model route `{}` asked to pause (Retry-After); retry in {secs} s.", route.name),
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        set_headers(&mut resp, &route, None, 1);
        return resp;
    }
    let cut = parts.extensions.get::<ShutdownCut>().map(|c| c.0.clone());
    let ctx = AttemptCtx { endpoint, creq: &creq, client_headers: &parts.headers, request_bytes, cut };

    let deadline = Instant::now() + opts.total_timeout;
    let mut last: Option<Failure> = None;
    let requested = admission::requested_output(endpoint, |k| creq.u64_field(k));
    let choices = admission::choices(|k| creq.u64_field(k));
    let mut refused = None;
    for (n, &idx) in plan.iter().enumerate() {
        let Some(backend) = route.backends.get(idx).cloned() else {
            continue;
        };
        // Hard budgets (issue 13): try the backend only if its worst case can be reserved.
        let hold = match gw.inner.admission.admit_attempt(&backend.cfg, endpoint, request_bytes, requested, choices) {
            admission::Admit::Free => None,
            admission::Admit::Held(h) => Some(h),
            admission::Admit::Refused(budget) => {
                backend.cell.record_outcome(Outcome::BudgetRejected, None);
                refused = Some(budget);
                continue;
            }
        };
        // wire11 hook: native upstream wire formats (src/gateway/native.rs).
        let result = admission::scoped(hold.clone(), async {
            match backend.cfg.api {
                WireApi::OpenAI => attempt(&gw, &route, &backend, &ctx, deadline).await,
                _ => {
                    match super::native::chat_attempt(&gw, &backend, endpoint, &creq, &parts.headers, deadline).await {
                        Ok(resp) => Attempt::Done(resp),
                        Err(r) => Attempt::Retry(Failure {
                            backend: backend.cfg.name.clone(),
                            outcome: r.outcome,
                            status: r.status,
                            message: r.message,
                        }),
                    }
                }
            }
        })
        .await;
        admission::after_attempt(hold.as_ref(), matches!(&result, Attempt::Done(r) if r.status().is_success()));
        match result {
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
    if last.is_none()
        && let Some(budget) = refused
    {
        tracing::info!(route = %route.name, budget = %budget, "no backend's worst case fits a Hard budget's allowance");
        let mut resp = ApiError::budget_exhausted(&route.name).into_response();
        set_headers(&mut resp, &route, None, plan.len());
        return resp;
    }
    let attempts = plan.len();
    let rate_limited = last.as_ref().is_some_and(|f| f.outcome == Outcome::RateLimited);
    let mut resp = exhausted(last, attempts).into_response();
    if rate_limited
        && let Some(until) = route.backends.iter().filter_map(|b| shared.paused_until(&route.name, &b.cfg.name)).min()
    {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(limits::retry_after_secs(until)));
    }
    set_headers(&mut resp, &route, None, attempts);
    resp
}

/// What every attempt of one request shares.
struct AttemptCtx<'a> {
    endpoint: Endpoint,
    creq: &'a ClientRequest,
    client_headers: &'a HeaderMap,
    request_bytes: usize,
    cut: Option<tokio_util::sync::CancellationToken>,
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

async fn attempt(
    gw: &Gateway,
    route: &CompiledRoute,
    b: &Arc<CompiledBackend>,
    ctx: &AttemptCtx<'_>,
    deadline: Instant,
) -> Attempt {
    let (endpoint, creq, client_headers, request_bytes) =
        (ctx.endpoint, ctx.creq, ctx.client_headers, ctx.request_bytes);
    let opts = &gw.inner.opts;
    let started = Instant::now();
    let first_byte_deadline = (started + opts.first_byte_timeout).min(deadline);
    let ask_usage = creq.stream && !creq.include_usage && endpoint.usage_needs_stream_options();
    let mut body = creq.upstream_body(&b.cfg.model, ask_usage);
    if let Some(capped) = super::admission::current_cap(&b.cfg)
        .and_then(|cap| super::admission::cap_body(&body, WireApi::OpenAI, endpoint, &b.cfg.provider, cap))
    {
        body = capped;
    }
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
            let m = gw.inner.mock_cache.view(&b.labels.route, &b.cfg.name, m, &body);
            match tokio::time::timeout_at(first_byte_deadline, mock::respond(&m, family, endpoint, &body)).await {
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
    let UpstreamReply { status, headers, mut body } = match sent {
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
    let redactor = gw.inner.upstream.credentials.redactor();
    let key = &*redactor;

    if status == StatusCode::TOO_MANY_REQUESTS
        && let Some(wait) = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| limits::parse_retry_after(v, std::time::SystemTime::now()))
    {
        tracing::info!(route = %route.name, backend = %b.cfg.name, pause_s = wait.as_secs(), "backend asked to pause (Retry-After): skipped until then");
        gw.inner.limits.pause(&route.name, &b.cfg.name, Instant::now() + wait);
    }

    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let wait = (Instant::now() + ERROR_BODY_WAIT).min(deadline);
        let msg = match read_all(&mut body, MAX_ERROR_BODY, wait, None).await {
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
        let raw = read_all(&mut body, MAX_ERROR_BODY, wait, None).await.unwrap_or_default();
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
        let mut resp = match rebuild_upstream_error(&raw, key) {
            Some(text) => {
                let mut r = (status, text).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            None => ApiError::new(
                status,
                "invalid_request_error",
                "upstream_rejected",
                format!("Backend `{}` rejected the request: {}", b.cfg.name, error_message(&raw, key)),
            )
            .into_response(),
        };
        pass_headers(&headers, resp.headers_mut(), key);
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
        let hold = super::admission::current();
        let on_end = Box::new(move |sum: StreamSummary| {
            let (outcome, latency, missing_reason) = match sum.end {
                StreamEnd::Complete => (Outcome::Ok, Some(ttfb), None),
                StreamEnd::ClientGone => (Outcome::Ok, Some(ttfb), Some("client_disconnected")),
                StreamEnd::ShutdownCut => (Outcome::Ok, Some(ttfb), Some("shutdown_cut")),
                StreamEnd::EventTooLarge => (Outcome::UpstreamError, None, Some("event_too_large")),
                StreamEnd::UpstreamError => (Outcome::UpstreamError, None, Some("stream_interrupted")),
                StreamEnd::IdleTimeout | StreamEnd::TotalTimeout => {
                    (Outcome::Timeout, None, Some("stream_interrupted"))
                }
            };
            b2.cell.record_outcome(outcome, latency);
            let secs = started.elapsed().as_secs_f64();
            b2.duration.observe(secs);
            b2.gen_ai.duration(endpoint, outcome, secs);
            // An event over the limit ends the stream whatever usage came before it.
            let usage = if sum.end == StreamEnd::EventTooLarge { Err(UsageError::Missing) } else { sum.usage };
            super::admission::scoped_sync(hold, || {
                bill(&b2, endpoint, usage, missing_reason, request_bytes, sum.data_events)
            });
        });
        let sse = SseProcessor::new(family, ask_usage, opts.max_sse_event_bytes, redactor.clone());
        let bounds = StreamBounds {
            idle: opts.idle_stream_timeout,
            deadline,
            drain_timeout: opts.disconnect_drain_timeout,
            drain_bytes: opts.disconnect_drain_bytes,
            cut: ctx.cut.clone(),
        };
        let stream = metered(first, body, sse, bounds, on_end);
        let mut resp = Response::new(Body::from_stream(stream));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
        pass_headers(&headers, h, key);
        return Attempt::Done(resp);
    }

    let mut held = None;
    let shared = &gw.inner.limits;
    let raw = match read_all(&mut body, MAX_UPSTREAM_BODY, deadline, Some((shared, &mut held))).await {
        Ok(r) => r,
        Err(ReadError::OverBudget) => {
            drop(held);
            b.cell.record_outcome(Outcome::UpstreamError, None);
            b.duration.observe(started.elapsed().as_secs_f64());
            bill(b, endpoint, Err(UsageError::Missing), Some("over_memory_budget"), request_bytes, 0);
            tracing::warn!(route = %route.name, backend = %b.cfg.name, budget_bytes = shared.budget_bytes, "whole answers in memory reached the budget; answer dropped");
            return Attempt::Done(
                ApiError::overloaded(format!(
                    "The gateway is holding its limit of {} bytes of upstream answers; retry shortly.",
                    shared.budget_bytes
                ))
                .into_response(),
            );
        }
        Err(ReadError::Timeout) => {
            b.cell.record_outcome(Outcome::Timeout, None);
            let secs = started.elapsed().as_secs_f64();
            b.duration.observe(secs);
            b.gen_ai.duration(endpoint, Outcome::Timeout, secs);
            bill(b, endpoint, Err(UsageError::Missing), Some("unreadable_body"), request_bytes, 0);
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
                ReadError::Timeout | ReadError::OverBudget => String::new(),
            };
            b.cell.record_outcome(Outcome::UpstreamError, None);
            let secs = started.elapsed().as_secs_f64();
            b.duration.observe(secs);
            b.gen_ai.duration(endpoint, Outcome::UpstreamError, secs);
            bill(b, endpoint, Err(UsageError::Missing), Some("unreadable_body"), request_bytes, 0);
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
            bill(b, endpoint, Err(UsageError::Missing), Some("unparseable_body"), request_bytes, 0);
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
        Ok(Ok(t)) if limits::plausible(t).is_err() => {
            b.cell.record_outcome(Outcome::UpstreamError, None);
            bill(b, endpoint, Ok(t), None, request_bytes, 0);
            Attempt::Done(
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "upstream_invalid_usage",
                    format!(
                        "Backend `{}` reported usage above {} tokens for one answer; the answer was refused.",
                        b.cfg.name,
                        limits::MAX_TOKENS_PER_ANSWER
                    ),
                )
                .into_response(),
            )
        }
        Ok(usage) => {
            b.gen_ai.duration(endpoint, Outcome::Ok, elapsed.as_secs_f64());
            b.cell.record_outcome(Outcome::Ok, Some(elapsed));
            bill(b, endpoint, usage, None, request_bytes, 0);
            let raw = match key.redact(&raw) {
                std::borrow::Cow::Borrowed(_) => Bytes::from(raw),
                std::borrow::Cow::Owned(v) => Bytes::from(v),
            };
            let mut resp = Response::new(Body::new(HeldBody::new(raw, held)));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            let ct = headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("application/json"));
            h.insert(header::CONTENT_TYPE, ct);
            pass_headers(&headers, h, key);
            Attempt::Done(resp)
        }
    }
}
