//! One upstream attempt, the same for every (client surface, upstream format) pair: encode
//! ([`codec::encode`]) → output cap → send (HTTP or mock, until the first-byte deadline) →
//! `Retry-After` pause → error classification ([`Codec::on_error`]) → the answer, streamed
//! (nothing reaches the client before the upstream's first chunk, so failures before it fail
//! over) or read whole (size limit, the total deadline, the shared memory budget) → metering.
//!
//! Edge cases, on every surface: a 429 with `Retry-After` pauses the backend for this gateway,
//! unless it is about the request's own size, for at most the configured ceiling (see
//! [`limits`]; read from its headers and error body); an upstream that stalls mid-body past the deadline is a 504 (in the
//! client's error shape) metered as an estimate (`unreadable_body`); a whole answer over the
//! memory budget is a 503 `gateway_overloaded` metered as an estimate (`over_memory_budget`),
//! its outcome `gateway_overloaded` (the gateway's failure, not the backend's);
//! a body that is not JSON or cannot be translated is a 502 (`unparseable_body`); usage above
//! [`limits::MAX_TOKENS_PER_ANSWER`] is a 502 (`upstream_invalid_usage`). Every failed attempt
//! records its outcome, duration and gen_ai duration once; a Hard budget reservation
//! is settled by whichever bill ends the attempt (or released by the caller).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use tokio::time::Instant;

use super::answer::{ReadError, bill, is_event_stream, pass_headers, read_all};
use super::codec::{self, Codec, Encoded, Inbound, Surface, Target, Verdict};
use super::errors::ApiError;
use super::limits::{self, HeldBody};
use super::native_stream::{DrainBounds, StreamMeter, TranslatedStream};
use super::stream::{SseProcessor, StreamBounds, StreamEnd, StreamSummary, metered};
use super::upstream::{SendError, UpstreamReply};
use super::{CompiledBackend, CompiledRoute, Gateway, mock, native, native_mock};
use crate::config::EndpointConfig;
use crate::policy::Outcome;
use crate::pricing::UsageError;

/// Largest upstream answer read whole (non-stream), bytes.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
/// Largest upstream error body read, bytes.
const MAX_ERROR_BODY: usize = 256 * 1024;
/// Longest wait for an upstream error body.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// Why an attempt failed in a way that lets the next backend be tried.
pub(crate) struct Failure {
    pub(crate) backend: String,
    pub(crate) outcome: Outcome,
    pub(crate) status: Option<StatusCode>,
    pub(crate) message: String,
}

pub(crate) enum Attempt {
    /// Answer the client with this (success or a final error).
    Done(Response),
    /// Nothing reached the client; try the next backend.
    Retry(Failure),
}

/// What every attempt of one request shares.
pub(crate) struct AttemptCtx<'a> {
    pub(crate) surface: Surface,
    pub(crate) inbound: &'a Inbound,
    pub(crate) client_headers: &'a HeaderMap,
    pub(crate) request_bytes: usize,
    pub(crate) cut: Option<tokio_util::sync::CancellationToken>,
}

/// Records a finished attempt's outcome and durations.
fn record(b: &CompiledBackend, endpoint: super::request::Endpoint, outcome: Outcome, started: Instant) {
    b.cell.record_outcome(outcome, None);
    let secs = started.elapsed().as_secs_f64();
    b.duration.observe(secs);
    b.gen_ai.duration(endpoint, outcome, secs);
}

/// Sends `body` to `b` at `target` (HTTP or the backend's mock) until `first_byte_deadline`.
async fn send(
    gw: &Gateway,
    b: &CompiledBackend,
    target: &Target,
    body: Vec<u8>,
    client_headers: &HeaderMap,
    first_byte_deadline: Instant,
) -> Result<UpstreamReply, SendError> {
    match (&b.cfg.endpoint, target) {
        (EndpointConfig::Mock(m), target) => {
            let m = gw.inner.mock_cache.view(&b.labels.route, &b.cfg.name, m, &body);
            let fut = async {
                match target {
                    Target::OpenAI(e) => mock::respond(&m, b.cfg.family, *e, &body).await,
                    Target::Native { stream, .. } => {
                        native_mock::respond(&m, b.cfg.api, &b.cfg.model, *stream, &body).await
                    }
                }
            };
            tokio::time::timeout_at(first_byte_deadline, fut).await.map_err(|_| SendError::Timeout)
        }
        (EndpointConfig::Http { base_url, protocol, api_key_file }, Target::OpenAI(e)) => {
            match (b.uris.as_ref().and_then(|u| u.get(e.index())), b.base_headers.as_deref()) {
                (Some(uri), Some(base)) => {
                    let uri = uri.clone();
                    gw.inner
                        .upstream
                        .send(
                            (uri, base),
                            *protocol,
                            api_key_file.as_deref(),
                            body,
                            client_headers,
                            first_byte_deadline,
                        )
                        .await
                }
                _ => Err(SendError::Connect(format!("invalid upstream base URL {base_url:?}"))),
            }
        }
        (EndpointConfig::Http { .. }, Target::Native { url, .. }) => {
            native::send(gw, b, url, body, client_headers, first_byte_deadline).await
        }
    }
}

/// A 429's pause, scoped to what it was about (see [`limits`]): the request's own output bound
/// as sent is its cost bound's ([`super::admission::CostBound`]), lowered by the output cap the
/// attempt applied.
fn pause_after_429(
    gw: &Gateway,
    route: &CompiledRoute,
    b: &CompiledBackend,
    ctx: &AttemptCtx<'_>,
    headers: &HeaderMap,
    body: &[u8],
) {
    let requested = super::admission::CostBound::read(ctx.surface.endpoint(), ctx.inbound, ctx.request_bytes).output;
    let bound = match (requested, super::admission::current_cap(&b.cfg).map(u64::from)) {
        (Some(r), Some(c)) => Some(r.min(c)),
        (r, c) => r.or(c),
    };
    match gw.inner.limits.after_429(&route.name, &b.cfg.name, headers, body, bound) {
        limits::RateLimitPause::Nothing => {}
        limits::RateLimitPause::ThisRequest(why) => {
            tracing::info!(route = %route.name, backend = %b.cfg.name, why = %why, "429 about this request's own size: the backend is not paused");
        }
        limits::RateLimitPause::Backend { skip, asked } => {
            tracing::info!(route = %route.name, backend = %b.cfg.name, pause_s = skip.as_secs(), retry_after_s = asked.as_secs(), "backend asked to pause (Retry-After): skipped for the pause");
        }
    }
}

/// One attempt of `ctx`'s request on `b`.
pub(crate) async fn attempt(
    gw: &Gateway,
    route: &CompiledRoute,
    b: &Arc<CompiledBackend>,
    ctx: &AttemptCtx<'_>,
    deadline: Instant,
) -> Attempt {
    let (surface, request_bytes) = (ctx.surface, ctx.request_bytes);
    let endpoint = surface.endpoint();
    let opts = &gw.inner.opts;
    let Encoded { mut body, target, codec } = match codec::encode(surface, ctx.inbound, b) {
        Ok(e) => e,
        Err(e) => return Attempt::Done(surface.render(e)),
    };
    if let Some(capped) = super::admission::current_cap(&b.cfg)
        .and_then(|cap| super::admission::cap_body(&body, b.cfg.api, target.cap_endpoint(), &b.cfg.provider, cap))
    {
        body = capped;
    }
    let started = Instant::now();
    let first_byte_deadline = (started + opts.first_byte_timeout).min(deadline);
    let fail = |outcome: Outcome, status: Option<StatusCode>, message: String| {
        record(b, endpoint, outcome, started);
        Failure { backend: b.cfg.name.clone(), outcome, status, message }
    };
    let UpstreamReply { status, headers, mut body } =
        match send(gw, b, &target, body, ctx.client_headers, first_byte_deadline).await {
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

    if !status.is_success() {
        let wait = (Instant::now() + ERROR_BODY_WAIT).min(deadline);
        let raw = read_all(&mut body, MAX_ERROR_BODY, wait, None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            pause_after_429(gw, route, b, ctx, &headers, raw.as_deref().unwrap_or_default());
        }
        let raw = match raw {
            Ok(r) => r,
            Err(_) if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
                return Attempt::Retry(fail(
                    if status == StatusCode::TOO_MANY_REQUESTS { Outcome::RateLimited } else { Outcome::UpstreamError },
                    Some(status),
                    "(unreadable error body)".into(),
                ));
            }
            Err(_) => Vec::new(),
        };
        return match codec.on_error(surface, b, status, &headers, &raw, key) {
            Verdict::Retry { outcome, status, message } => Attempt::Retry(fail(outcome, status, message)),
            Verdict::Answer { outcome, response } => {
                record(b, endpoint, outcome, started);
                Attempt::Done(response)
            }
        };
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
        let hold = super::admission::current();
        let stream_body = match codec {
            Codec::Pass { ask_usage } => {
                let b2 = b.clone();
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
                let sse = SseProcessor::new(b.cfg.family, ask_usage, opts.max_sse_event_bytes, redactor.clone());
                let bounds = StreamBounds {
                    idle: opts.idle_stream_timeout,
                    deadline,
                    drain_timeout: opts.disconnect_drain_timeout,
                    drain_bytes: opts.disconnect_drain_bytes,
                    cut: ctx.cut.clone(),
                };
                Body::from_stream(metered(first, body, sse, bounds, on_end))
            }
            Codec::Translate(translator) => {
                let meter = StreamMeter { b: b.clone(), endpoint, started, ttfb, surface, hold, request_bytes };
                let stream = TranslatedStream::new(first, body, *translator, opts.idle_stream_timeout, deadline, meter)
                    .with_drain(DrainBounds {
                        cut: ctx.cut.clone(),
                        timeout: opts.disconnect_drain_timeout,
                        bytes: opts.disconnect_drain_bytes,
                    });
                // No API key reaches the client, however encoded: every frame is
                // scrubbed. Every frame is made of whole events (translated, or the upstream's
                // own bytes passed through event by event), so a key split across two upstream
                // reads is caught too.
                let scrub = redactor.clone();
                Body::from_stream(stream.map(move |item| item.map(|frame| codec::scrub(&scrub, frame))))
            }
        };
        let mut resp = Response::new(stream_body);
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
    let unreadable = |outcome: Outcome, reason: &str| {
        record(b, endpoint, outcome, started);
        bill(b, endpoint, Err(UsageError::Missing), Some(reason), request_bytes, 0);
    };
    let raw = match read_all(&mut body, MAX_UPSTREAM_BODY, deadline, Some((shared, &mut held))).await {
        Ok(r) => r,
        Err(ReadError::OverBudget) => {
            drop(held);
            // The gateway's own overload: the backend answered, so it is no backend error.
            unreadable(Outcome::GatewayOverloaded, "over_memory_budget");
            tracing::warn!(route = %route.name, backend = %b.cfg.name, budget_bytes = shared.budget_bytes, "whole answers in memory reached the budget; answer dropped");
            return Attempt::Done(surface.render(ApiError::overloaded(format!(
                "The gateway is holding its limit of {} bytes of upstream answers; retry shortly.",
                shared.budget_bytes
            ))));
        }
        Err(ReadError::Timeout) => {
            unreadable(Outcome::Timeout, "unreadable_body");
            return Attempt::Done(surface.render(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "api_error",
                "upstream_timeout",
                format!("Backend `{}` did not finish its answer in time.", b.cfg.name),
            )));
        }
        Err(e) => {
            let why = match e {
                ReadError::TooLarge => format!("larger than {MAX_UPSTREAM_BODY} bytes"),
                ReadError::Broken(e) => e,
                ReadError::Timeout | ReadError::OverBudget => String::new(),
            };
            unreadable(Outcome::UpstreamError, "unreadable_body");
            return Attempt::Done(surface.render(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "upstream_error",
                format!("Backend `{}` sent an unreadable answer: {why}", b.cfg.name),
            )));
        }
    };
    let elapsed = started.elapsed();
    let whole = match codec.whole(b, &headers, raw, key) {
        Ok(w) => w,
        Err(message) => {
            unreadable(Outcome::UpstreamError, "unparseable_body");
            tracing::warn!(route = %route.name, backend = %b.cfg.name, error = %message, "upstream answered 2xx with a body that cannot be read");
            return Attempt::Done(surface.render(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "upstream_invalid_response",
                message,
            )));
        }
    };
    b.duration.observe(elapsed.as_secs_f64());
    if let Ok(t) = whole.usage
        && limits::plausible(t).is_err()
    {
        b.cell.record_outcome(Outcome::UpstreamError, None);
        b.gen_ai.duration(endpoint, Outcome::UpstreamError, elapsed.as_secs_f64());
        bill(b, endpoint, Ok(t), None, request_bytes, 0);
        return Attempt::Done(surface.render(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_invalid_usage",
            format!(
                "Backend `{}` reported usage above {} tokens for one answer; the answer was refused.",
                b.cfg.name,
                limits::MAX_TOKENS_PER_ANSWER
            ),
        )));
    }
    b.gen_ai.duration(endpoint, Outcome::Ok, elapsed.as_secs_f64());
    b.cell.record_outcome(Outcome::Ok, Some(elapsed));
    bill(b, endpoint, whole.usage, None, request_bytes, 0);
    let mut resp = Response::new(Body::new(HeldBody::new(whole.body, held)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, whole.content_type);
    pass_headers(&headers, h, key);
    Attempt::Done(resp)
}
