//! The per-request pipeline shared by every client surface: route → refusals (rejecting
//! route, input too large, hints) → attempt plan (steered, native backends skipped where they
//! cannot serve, paused backends skipped) → attempts with Hard-budget admission and failover
//! ([`super::attempt`]) → the final answer, every error in the surface's shape.
//!
//! Rules and edge cases:
//! - A backend whose wire format cannot serve the surface (a native backend for
//!   `/v1/completions`, `/v1/embeddings`, `/v1/responses`) is left out of the plan before any
//!   budget is reserved, and the plan is then cut to `max_attempts`; when no backend of the
//!   route can serve the request the client gets a 400 `endpoint_not_supported` naming them.
//! - Backends paused by a `Retry-After` are skipped; when every backend of the plan is paused
//!   the client gets 429 with `Retry-After`. When the last failure was a rate limit, the final
//!   error carries the earliest pause as `Retry-After`.
//! - When no attempt reached upstream because a Hard budget's backend could not bound the
//!   request's cost (a cost field that is not an integer, media parts with no stated bound:
//!   [`admission::CostBound`]), the answer is 400 (`invalid_cost_field`, `unbounded_input`);
//!   because every backend's worst case was refused by a Hard budget, 429 `budget_exhausted`.
//! - Every answer names the route (and the backend that answered) in `x-tollgate-*` headers.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::time::Instant;

use super::attempt::{Attempt, AttemptCtx, Failure, attempt};
use super::codec::{Inbound, Surface, not_served};
use super::errors::ApiError;
use super::{CompiledBackend, CompiledRoute, Gateway, admission, limits};
use crate::config::RouteState;
use crate::policy::Outcome;

static ROUTE_HEADER: HeaderName = HeaderName::from_static("x-tollgate-route");
static BACKEND_HEADER: HeaderName = HeaderName::from_static("x-tollgate-backend");
static PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-tollgate-provider");
static ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-tollgate-attempts");

pub(crate) fn set_headers(
    resp: &mut Response,
    route: &CompiledRoute,
    backend: Option<&CompiledBackend>,
    attempts: usize,
) {
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

/// One parsed client request on its way through the pipeline.
pub(crate) struct Request<'a> {
    pub(crate) surface: Surface,
    pub(crate) inbound: Inbound,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) request_bytes: usize,
    pub(crate) cut: Option<tokio_util::sync::CancellationToken>,
}

/// Serves one parsed request.
pub(crate) async fn run(gw: &Gateway, req: Request<'_>) -> Response {
    let Request { surface, inbound, headers, request_bytes, cut } = req;
    let opts = &gw.inner.opts;
    let Some(served) = gw.inner.current.load_full() else {
        return surface.render(ApiError::not_ready());
    };
    let Some(route) = served.routes.get(inbound.alias()).cloned() else {
        return surface.render(ApiError::model_not_found(inbound.alias()));
    };
    drop(served);
    let answer = |e: ApiError, backend: Option<&CompiledBackend>, attempts: usize| {
        let mut resp = surface.render(e);
        set_headers(&mut resp, &route, backend, attempts);
        resp
    };

    if route.state == RouteState::Rejecting {
        // Attributed to the route's preferred backend (the one a request would have gone to).
        let preferred = route.backends.iter().min_by_key(|b| b.cfg.tier);
        if let Some(b) = preferred {
            b.cell.record_outcome(Outcome::BudgetRejected, None);
        }
        return answer(ApiError::budget_exhausted(&route.name), None, 1);
    }

    if let Some(msg) = admission::input_too_large(route.max_input_tokens, &route.name, request_bytes) {
        return answer(ApiError::bad_request("input_too_large", msg), None, 1);
    }

    let endpoint = surface.endpoint();
    // What bounds the request's cost (one rule for Hard admission, the cap written upstream
    // and the max-cost hint); its media parts are read only where a bound needs them.
    let bound = admission::CostBound::read(endpoint, &inbound, request_bytes);
    let media = std::sync::OnceLock::new();
    let media_tokens = || media.get_or_init(|| admission::media(&inbound).tokens(route.media_input_tokens)).clone();

    // Affinity key and request hints (src/gateway/steer.rs).
    let input = match &inbound {
        Inbound::OpenAI(c) => super::steer::Input::openai(headers, c, endpoint, &bound, &media_tokens),
        Inbound::Messages(m) => super::steer::Input::messages(headers, &m.value, endpoint, &bound, &media_tokens),
    };
    let steer = match super::steer::steer(&route, input) {
        Ok(s) => s,
        Err(r) => return answer(ApiError::new(r.status, "invalid_request_error", r.code, r.message), None, 1),
    };
    // Native backends serve only chat turns: on other endpoints they leave the plan before it
    // is cut to `max_attempts` (a check of the configured formats, no allocation when all
    // backends are OpenAI-compatible).
    let filter = !matches!(surface, Surface::OpenAI(super::request::Endpoint::ChatCompletions) | Surface::Messages)
        && route.backends.iter().any(|b| !surface.serves(b.cfg.api));
    let mut plan = route.attempt_plan_steered(if filter { usize::MAX } else { opts.max_attempts }, &steer);
    if filter {
        let unserved: Vec<usize> = plan.iter().copied().filter(|&i| !serves(&route, surface, i)).collect();
        plan.retain(|&i| serves(&route, surface, i));
        plan.truncate(opts.max_attempts);
        if plan.is_empty() && !unserved.is_empty() {
            let skipped = unserved.iter().filter_map(|&i| route.backends.get(i)).map(|b| &**b);
            return answer(not_served(surface, skipped), None, 1);
        }
    }
    if plan.is_empty() {
        return answer(ApiError::no_backend(&route.name), None, 1);
    }
    let shared = &gw.inner.limits;
    let pause_of = |i: usize| route.backends.get(i).and_then(|b| shared.paused_until(&route.name, &b.cfg.name));
    // Split only when a backend of the plan is paused (rarely): no two new vectors per request.
    let (plan, paused): (Vec<usize>, Vec<usize>) = if plan.iter().any(|&i| pause_of(i).is_some()) {
        plan.into_iter().partition(|&i| pause_of(i).is_none())
    } else {
        (plan, Vec::new())
    };
    if plan.is_empty() {
        let until = paused.iter().filter_map(|&i| pause_of(i)).min();
        let secs = until.map_or(1, limits::retry_after_secs);
        let mut resp = answer(
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                format!(
                    "Every backend of model route `{}` asked to pause (Retry-After); retry in {secs} s.",
                    route.name
                ),
            ),
            None,
            1,
        );
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let ctx = AttemptCtx { surface, inbound: &inbound, client_headers: headers, request_bytes, cut };

    let deadline = Instant::now() + opts.total_timeout;
    let mut last: Option<Failure> = None;
    let mut refused = None;
    let mut unbounded = None;
    for (n, &idx) in plan.iter().enumerate() {
        let Some(backend) = route.backends.get(idx).cloned() else {
            continue;
        };
        // Hard budgets: try the backend only if its worst case can be bounded and reserved.
        let hold = if gw.inner.admission.is_hard(&backend.cfg) {
            let media = match (&bound.unreadable, media_tokens()) {
                (Some(msg), _) => Err(ApiError::bad_request("invalid_cost_field", msg.clone())),
                (None, Err(msg)) => Err(ApiError::bad_request("unbounded_input", msg)),
                (None, Ok(t)) => Ok(t),
            };
            let media = match media {
                Ok(t) => t,
                Err(e) => {
                    unbounded.get_or_insert(e);
                    continue;
                }
            };
            match gw.inner.admission.admit_attempt(&backend.cfg, endpoint, &bound, media) {
                admission::Admit::Free => None,
                admission::Admit::Held(h) => Some(h),
                admission::Admit::Refused(budget) => {
                    backend.cell.record_outcome(Outcome::BudgetRejected, None);
                    refused = Some(budget);
                    continue;
                }
            }
        } else {
            None
        };
        let result = admission::scoped(hold.clone(), attempt(gw, &route, &backend, &ctx, deadline)).await;
        admission::after_attempt(hold.as_ref(), matches!(&result, Attempt::Done(r) if r.status().is_success()));
        match result {
            Attempt::Done(mut resp) => {
                set_headers(&mut resp, &route, Some(&backend), n + 1);
                return resp;
            }
            Attempt::Retry(f) => {
                tracing::warn!(route = %route.name, backend = %f.backend, outcome = f.outcome.label(), error = %f.message, attempt = n + 1, surface = surface.path(), "upstream attempt failed");
                last = Some(f);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    // Nothing reached upstream: a request a Hard budget cannot bound is the client's to fix
    // (400, the field named), before a budget with no room (429).
    if last.is_none()
        && let Some(e) = unbounded
    {
        return answer(e, None, plan.len());
    }
    if last.is_none()
        && let Some(budget) = refused
    {
        tracing::info!(route = %route.name, budget = %budget, "no backend's worst case fits a Hard budget's allowance");
        return answer(ApiError::budget_exhausted(&route.name), None, plan.len());
    }
    let attempts = plan.len();
    let rate_limited = last.as_ref().is_some_and(|f| f.outcome == Outcome::RateLimited);
    let mut resp = answer(exhausted(last, attempts, surface), None, attempts);
    if rate_limited
        && let Some(until) = route.backends.iter().filter_map(|b| shared.paused_until(&route.name, &b.cfg.name)).min()
    {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(limits::retry_after_secs(until)));
    }
    resp
}

fn serves(route: &CompiledRoute, surface: Surface, i: usize) -> bool {
    route.backends.get(i).is_some_and(|b| surface.serves(b.cfg.api))
}

/// The error answered when every attempt failed.
fn exhausted(last: Option<Failure>, attempts: usize, surface: Surface) -> ApiError {
    let Some(f) = last else {
        return ApiError::new(StatusCode::BAD_GATEWAY, "api_error", "upstream_error", "No upstream could be tried.");
    };
    let tries = if attempts == 1 { "1 attempt".to_string() } else { format!("{attempts} attempts") };
    let msg = |what: &str| format!("All upstreams failed ({tries}); last: backend `{}` {what}", f.backend);
    let overloaded = f.status.is_some_and(|s| s.as_u16() == 529 || s == StatusCode::SERVICE_UNAVAILABLE);
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
        // Anthropic clients know `overloaded_error` (503) as "retry later".
        (_, Some(s)) if overloaded && surface == Surface::Messages => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "upstream_overloaded",
            msg(&format!("is overloaded ({}): {}", s.as_u16(), f.message)),
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
