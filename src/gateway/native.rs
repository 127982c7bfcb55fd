//! Native upstream wire formats: backends with `endpoint.api: AnthropicMessages` or `Gemini`
//! serving `/v1/chat/completions` clients (and, through [`super::messages`], `/v1/messages`
//! clients), over HTTP or as a mock answering in that format.
//!
//! Rules:
//! - The request is translated by [`super::translate`] (pure functions); a request the target
//!   format cannot express is answered 400 naming the field, with no failover (the same request
//!   fails the same way on the next backend of that format).
//! - Anthropic: `POST {baseUrl}/v1/messages` (a trailing `/v1` on `baseUrl` is not doubled),
//!   `x-api-key`, `anthropic-version: 2023-06-01` (a client's `anthropic-version` and
//!   `anthropic-beta` are passed on); `max_tokens` defaults to [`DEFAULT_MAX_TOKENS`].
//!   Gemini: [`gemini_url`], `x-goog-api-key`. Keys never travel in URLs.
//! - Upstream errors are classified by [`translate::errors`]: rate limits (429,
//!   `rate_limit_error`, `RESOURCE_EXHAUSTED`) and overload/5xx/529 and backend faults
//!   (credentials, unknown model) fail over; request faults (`invalid_request_error`,
//!   `INVALID_ARGUMENT`) are answered at once in the client's error shape. Messages are scrubbed
//!   of the API key.
//! - Metering is the OpenAI path's: the same meter cell, outcome, latency and gen_ai
//!   instruments; usage comes from the upstream's own usage fields ([`UsageReport`]) and costs
//!   [`UsageReport::cost`] at the backend's prices. A stream cut short bills the usage known so
//!   far (Anthropic's `message_start` input counts) and counts `usage_missing` if none is known.
//! - Streams are translated as they arrive (no buffering); nothing reaches the client before
//!   the upstream's first chunk, so failures before it fail over.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::errors::ApiError;
use super::native_stream::{Decoder, Encoder, StreamMeter, TranslatedStream, Translator};
use super::redact::Redactor;
use super::request::{ClientRequest, Endpoint};
use super::stream::BodyStream;
use super::translate::openai::parse_chat_request;
use super::translate::{
    AnthropicRequestOptions, AnthropicStream, ChatAnswer, GeminiStream, TranslateError, UpstreamError, UsageReport,
    anthropic_error, chat_to_gemini, chat_to_messages, gemini_response_to_chat, gemini_url, messages_response_to_chat,
    openai_error,
};
use super::upstream::{UpstreamReply, describe};
use super::{CompiledBackend, Gateway, mock, native_mock};
use crate::config::EndpointConfig;
use crate::config::{Protocol, WireApi};
use crate::policy::Outcome;

/// `max_tokens` sent to an Anthropic Messages backend when the client sets none (Anthropic
/// requires it).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The `anthropic-version` header sent unless the client sent one.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
const MAX_ERROR_BODY: usize = 256 * 1024;
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// Why an attempt failed in a way that lets the next backend be tried (the caller turns it
/// into its own failure record; the outcome is already metered).
#[derive(Debug)]
pub(crate) struct Retry {
    pub(crate) outcome: Outcome,
    pub(crate) status: Option<StatusCode>,
    pub(crate) message: String,
}

/// The client surface an answer is shaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/messages`, naming `model` (the client's alias) in answers.
    Messages,
}

/// One prepared upstream request.
pub(crate) struct Prepared {
    /// The upstream URL (ignored by mocks).
    pub(crate) url: String,
    /// The body to send.
    pub(crate) body: Vec<u8>,
    /// Whether the upstream streams.
    pub(crate) stream: bool,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `{base}/v1/messages`, with a trailing `/` or `/v1` on `base` not doubled.
pub fn anthropic_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    format!("{base}/v1/messages")
}

/// A 400 for a request the backend's format cannot carry.
pub(crate) fn translate_refusal(e: &TranslateError, surface: Surface) -> Response {
    match surface {
        Surface::Chat => ApiError::bad_request(
            if matches!(e, TranslateError::Unsupported { .. }) { "unsupported_parameter" } else { "invalid_request" },
            e.client_message(),
        )
        .into_response(),
        Surface::Messages => {
            anthropic_error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &e.client_message())
        }
    }
}

/// An Anthropic-shaped error answer.
pub(crate) fn anthropic_error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({ "type": "error", "error": { "type": kind, "message": message } });
    json_response(status, &body)
}

/// `frame` with every API key the gateway holds removed (the same bytes when there is none).
fn scrubbed(redactor: &Redactor, frame: Bytes) -> Bytes {
    match redactor.redact(&frame) {
        std::borrow::Cow::Borrowed(_) => frame,
        std::borrow::Cow::Owned(v) => Bytes::from(v),
    }
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Builds the upstream request of a native backend from a chat request body (`model` already
/// the upstream id).
pub(crate) fn prepare(b: &CompiledBackend, chat_body: &[u8], stream: bool) -> Result<Prepared, TranslateError> {
    let chat = parse_chat_request(chat_body)?;
    let base = match &b.cfg.endpoint {
        EndpointConfig::Http { base_url, .. } => base_url.as_str(),
        EndpointConfig::Mock(_) => "http://mock.invalid",
    };
    let (url, body) = match b.cfg.api {
        WireApi::AnthropicMessages => {
            let opts = AnthropicRequestOptions { model: b.cfg.model.clone(), default_max_tokens: DEFAULT_MAX_TOKENS };
            let t = chat_to_messages(&chat, &opts)?;
            (anthropic_url(base), serde_json::to_vec(&t.value))
        }
        WireApi::Gemini => {
            let t = chat_to_gemini(&chat)?;
            (gemini_url(base, &b.cfg.model, stream)?, serde_json::to_vec(&t.value))
        }
        WireApi::OpenAI => return Err(TranslateError::invalid("endpoint.api", "OpenAI is not a native format")),
    };
    let body = body.map_err(|e| TranslateError::invalid("(upstream request)", e.to_string()))?;
    Ok(Prepared { url, body, stream })
}

/// Sends a prepared request to the backend (HTTP, or the mock) until the first-byte deadline.
pub(crate) async fn send(
    gw: &Gateway,
    b: &CompiledBackend,
    p: &Prepared,
    client_headers: &HeaderMap,
    first_byte_deadline: Instant,
) -> Result<UpstreamReply, Retry> {
    let connect = |m: String| Retry { outcome: Outcome::ConnectError, status: None, message: m };
    // Output cap (issue 13): clamped or inserted in the upstream's wire format.
    let capped = super::admission::current_cap(&b.cfg).and_then(|cap| {
        super::admission::cap_body(&p.body, b.cfg.api, Endpoint::ChatCompletions, &b.cfg.provider, cap)
    });
    let body: &[u8] = capped.as_deref().unwrap_or(&p.body);
    let (api_key_file, mock) = match &b.cfg.endpoint {
        EndpointConfig::Http { api_key_file, .. } => (api_key_file.as_deref(), None),
        EndpointConfig::Mock(m) => (None, Some(m)),
    };
    if let Some(m) = mock {
        let m = &*gw.inner.mock_cache.view(&b.labels.route, &b.cfg.name, m, &p.body);
        let fut = async {
            match b.cfg.api {
                WireApi::OpenAI => mock::respond(m, b.cfg.family, Endpoint::ChatCompletions, body).await,
                api => native_mock::respond(m, api, &b.cfg.model, p.stream, body).await,
            }
        };
        return tokio::time::timeout_at(first_byte_deadline, fut).await.map_err(|_| Retry {
            outcome: Outcome::Timeout,
            status: None,
            message: "no answer before the first-byte timeout".into(),
        });
    }
    let upstream = &gw.inner.upstream;
    let api_key = match api_key_file {
        Some(f) => Some(upstream.credentials.get(f).map_err(|e| connect(format!("credentials: {e}")))?),
        None => None,
    };
    let uri = Uri::try_from(p.url.as_str()).map_err(|_| connect(format!("invalid upstream URL {:?}", p.url)))?;
    let mut req = Request::new(Full::new(Bytes::copy_from_slice(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::USER_AGENT, HeaderValue::from_static(concat!("tollgate/", env!("CARGO_PKG_VERSION"))));
    let protocol = match &b.cfg.endpoint {
        EndpointConfig::Http { protocol, .. } => *protocol,
        EndpointConfig::Mock(_) => Protocol::OpenAI,
    };
    let anthropic =
        b.cfg.api == WireApi::AnthropicMessages || (b.cfg.api == WireApi::OpenAI && protocol == Protocol::Anthropic);
    if anthropic {
        for name in ["anthropic-version", "anthropic-beta"] {
            if let Some(v) = client_headers.get(name) {
                h.insert(HeaderName::from_static(name), v.clone());
            }
        }
        if !h.contains_key("anthropic-version") {
            h.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static(ANTHROPIC_VERSION));
        }
    }
    if let Some(key) = api_key.as_deref() {
        let mut v = HeaderValue::try_from(key).map_err(|_| {
            connect("credentials: the API key contains characters not allowed in an HTTP header".into())
        })?;
        v.set_sensitive(true);
        match b.cfg.api {
            WireApi::OpenAI if !anthropic => {
                let mut bearer = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                    connect("credentials: the API key contains characters not allowed in an HTTP header".into())
                })?;
                bearer.set_sensitive(true);
                h.insert(header::AUTHORIZATION, bearer);
            }
            WireApi::Gemini => {
                h.insert(HeaderName::from_static("x-goog-api-key"), v);
            }
            _ => {
                h.insert(HeaderName::from_static("x-api-key"), v);
            }
        }
    }
    let client = upstream.client().map_err(|e| connect(e.to_string()))?;
    let resp = match tokio::time::timeout_at(first_byte_deadline, client.request(req)).await {
        Err(_) => {
            return Err(Retry {
                outcome: Outcome::Timeout,
                status: None,
                message: "no answer before the first-byte timeout".into(),
            });
        }
        Ok(Err(e)) if e.is_connect() => return Err(connect(describe(&e))),
        Ok(Err(e)) => return Err(Retry { outcome: Outcome::UpstreamError, status: None, message: describe(&e) }),
        Ok(Ok(r)) => r,
    };
    let (parts, body) = resp.into_parts();
    let body: BodyStream = Box::pin(body.into_data_stream().map_err(|e| io::Error::other(describe(&e))));
    Ok(UpstreamReply { status: parts.status, headers: parts.headers, body })
}

/// Reads a body whole until `deadline`, at most `limit` bytes (`None` if it cannot).
pub(crate) async fn read_all(body: &mut BodyStream, limit: usize, deadline: Instant) -> Option<Vec<u8>> {
    let read = async {
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.ok()?;
            if out.len() + chunk.len() > limit {
                return None;
            }
            out.extend_from_slice(&chunk);
        }
        Some(out)
    };
    tokio::time::timeout_at(deadline, read).await.ok().flatten()
}

/// The classification of an upstream error answer of `api`, its message scrubbed of `key`.
pub(crate) fn classify(api: WireApi, status: u16, body: &[u8], redactor: &Redactor) -> UpstreamError {
    let mut e = match api {
        WireApi::AnthropicMessages => anthropic_error(status, body),
        WireApi::Gemini => super::translate::gemini_error(status, body),
        WireApi::OpenAI => openai_error(status, body),
    };
    e.message = redactor.redact_str(&e.message);
    e
}

/// Meters a successful answer's usage (the OpenAI path's cell and instruments).
pub(crate) fn bill(b: &CompiledBackend, endpoint: Endpoint, usage: &UsageReport) {
    // `UsageReport::cost` is `TokenCounts::cost` (one cache-write price), so the shared path
    // bills exactly the same amount, with its plausibility and overflow checks.
    super::answer::bill(b, endpoint, Ok(usage.counts), None, 0, 0);
}

/// Records an attempt's outcome and duration.
pub(crate) fn record(
    b: &CompiledBackend,
    endpoint: Endpoint,
    outcome: Outcome,
    started: Instant,
    latency: Option<Duration>,
) {
    b.cell.record_outcome(outcome, latency);
    let secs = started.elapsed().as_secs_f64();
    b.duration.observe(secs);
    b.gen_ai.duration(endpoint, outcome, secs);
}

/// What an upstream error means for this attempt: a retry, or the client's answer.
pub(crate) fn on_error(
    b: &CompiledBackend,
    endpoint: Endpoint,
    started: Instant,
    err: &UpstreamError,
    surface: Surface,
) -> Result<Response, Retry> {
    let outcome = match err.class.outcome() {
        "rate_limited" => Outcome::RateLimited,
        "client_error" => Outcome::ClientError,
        _ => Outcome::UpstreamError,
    };
    record(b, endpoint, outcome, started, None);
    if err.class.fails_over() {
        return Err(Retry {
            outcome,
            status: StatusCode::from_u16(err.status).ok(),
            message: format!("{} {}: {}", err.provider, err.kind, err.message),
        });
    }
    let status = StatusCode::from_u16(err.client_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = match surface {
        Surface::Chat => err.openai_body(),
        Surface::Messages => err.anthropic_body(),
    };
    Ok(json_response(status, &body))
}

/// One `/v1/chat/completions` attempt on a native backend.
pub(crate) async fn chat_attempt(
    gw: &Gateway,
    b: &Arc<CompiledBackend>,
    endpoint: Endpoint,
    creq: &ClientRequest,
    client_headers: &HeaderMap,
    deadline: Instant,
) -> Result<Response, Retry> {
    if endpoint != Endpoint::ChatCompletions {
        return Err(Retry {
            outcome: Outcome::UpstreamError,
            status: None,
            message: format!("speaks {} and serves only /v1/chat/completions and /v1/messages", b.cfg.api.label()),
        });
    }
    let chat_body = creq.upstream_body(&b.cfg.model, false);
    let prepared = match prepare(b, &chat_body, creq.stream) {
        Ok(p) => p,
        Err(e) => return Ok(translate_refusal(&e, Surface::Chat)),
    };
    let started = Instant::now();
    let first_byte_deadline = (started + gw.inner.opts.first_byte_timeout).min(deadline);
    let reply = match send(gw, b, &prepared, client_headers, first_byte_deadline).await {
        Ok(r) => r,
        Err(r) => {
            record(b, endpoint, r.outcome, started, None);
            return Err(r);
        }
    };
    let decoder = match b.cfg.api {
        WireApi::Gemini => Decoder::Gemini(GeminiStream::new(&b.cfg.model, now_secs(), creq.include_usage)),
        _ => Decoder::Anthropic(AnthropicStream::new(now_secs(), creq.include_usage)),
    };
    let out = Translator { decoder: Some(decoder), encoder: Encoder::Chat };
    finish_attempt(gw, b, endpoint, reply, out, Surface::Chat, &b.cfg.model, started, deadline).await
}

/// Turns a native upstream's non-streamed answer into a `chat.completion` and its usage.
pub(crate) fn native_answer(api: WireApi, model: &str, body: &Value) -> Result<ChatAnswer, TranslateError> {
    match api {
        WireApi::Gemini => gemini_response_to_chat(body, model, now_secs()),
        _ => messages_response_to_chat(body, now_secs()),
    }
}

/// The shared tail of an attempt once the upstream answered: errors, whole answers, streams.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish_attempt(
    gw: &Gateway,
    b: &Arc<CompiledBackend>,
    endpoint: Endpoint,
    reply: UpstreamReply,
    translator: Translator,
    surface: Surface,
    alias: &str,
    started: Instant,
    deadline: Instant,
) -> Result<Response, Retry> {
    let UpstreamReply { status, headers, mut body } = reply;
    let redactor = gw.inner.upstream.credentials.redactor();
    let api = translator.upstream_api(b);
    if !status.is_success() {
        let wait = (Instant::now() + ERROR_BODY_WAIT).min(deadline);
        let raw = read_all(&mut body, MAX_ERROR_BODY, wait).await.unwrap_or_default();
        let err = classify(api, status.as_u16(), &raw, &redactor);
        return on_error(b, endpoint, started, &err, surface);
    }
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    if is_sse {
        let first_byte_deadline = (started + gw.inner.opts.first_byte_timeout).min(deadline);
        let first = match tokio::time::timeout_at(first_byte_deadline, body.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(e))) => {
                record(b, endpoint, Outcome::UpstreamError, started, None);
                return Err(Retry {
                    outcome: Outcome::UpstreamError,
                    status: None,
                    message: format!("stream broke before its first chunk: {e}"),
                });
            }
            Ok(None) => {
                record(b, endpoint, Outcome::UpstreamError, started, None);
                return Err(Retry { outcome: Outcome::UpstreamError, status: None, message: "empty stream".into() });
            }
            Err(_) => {
                record(b, endpoint, Outcome::Timeout, started, None);
                return Err(Retry {
                    outcome: Outcome::Timeout,
                    status: None,
                    message: "no stream chunk before the first-byte timeout".into(),
                });
            }
        };
        let ttfb = started.elapsed();
        b.ttft.observe(ttfb.as_secs_f64());
        b.gen_ai.time_to_first_token(endpoint, ttfb.as_secs_f64());
        let meter = StreamMeter { b: b.clone(), endpoint, started, ttfb, surface, hold: super::admission::current() };
        let stream = TranslatedStream::new(first, body, translator, gw.inner.opts.idle_stream_timeout, deadline, meter);
        // No API key reaches the client, however encoded (issue 10): every frame is scrubbed.
        // Translated frames are whole events; a raw pass-through frame is what one upstream read
        // gave, so a key split across two reads is the one form this does not catch.
        let scrub = redactor.clone();
        let stream = stream.map(move |item| item.map(|frame| scrubbed(&scrub, frame)));
        let mut resp = Response::new(Body::from_stream(stream));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
        return Ok(resp);
    }
    let Some(raw) = read_all(&mut body, MAX_UPSTREAM_BODY, deadline).await else {
        record(b, endpoint, Outcome::UpstreamError, started, None);
        b.cell.record_usage_missing("unreadable_body");
        super::admission::settle_current(None);
        return Ok(upstream_failure(surface, &format!("Backend `{}` sent an unreadable answer.", b.cfg.name)));
    };
    let answer = serde_json::from_slice::<Value>(&raw)
        .map_err(|e| TranslateError::invalid("(upstream answer)", e.to_string()))
        .and_then(|v| translator.whole(b, &v, alias));
    match answer {
        Ok((value, usage)) => {
            record(b, endpoint, Outcome::Ok, started, Some(started.elapsed()));
            bill(b, endpoint, &usage);
            let mut resp = json_response(StatusCode::OK, &value);
            let text = Bytes::from(value.to_string());
            *resp.body_mut() = Body::from(scrubbed(&redactor, text));
            Ok(resp)
        }
        Err(e) => {
            record(b, endpoint, Outcome::UpstreamError, started, None);
            b.cell.record_usage_missing("unparseable_body");
            super::admission::settle_current(None);
            tracing::warn!(backend = %b.cfg.name, error = %e, "native upstream answer could not be translated");
            Ok(upstream_failure(surface, &format!("Backend `{}` sent an answer that cannot be read: {e}", b.cfg.name)))
        }
    }
}

fn upstream_failure(surface: Surface, message: &str) -> Response {
    match surface {
        Surface::Chat => {
            ApiError::new(StatusCode::BAD_GATEWAY, "api_error", "upstream_invalid_response", message).into_response()
        }
        Surface::Messages => anthropic_error_response(StatusCode::BAD_GATEWAY, "api_error", message),
    }
}
