//! Native upstream wire formats: the request side of backends with `endpoint.api:
//! AnthropicMessages` or `Gemini` (URLs, auth headers, the chat → native request) and the
//! classification of their error answers. The attempt itself is the shared pipeline
//! ([`super::attempt`]); answers are translated by [`super::native_stream`].
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

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::time::Instant;

use super::redact::Redactor;
use super::stream::BodyStream;
use super::translate::openai::parse_chat_request;
use super::translate::{
    AnthropicRequestOptions, ChatAnswer, TranslateError, UpstreamError, anthropic_error, chat_to_gemini,
    chat_to_messages, gemini_response_to_chat, gemini_url, messages_response_to_chat, openai_error,
};
use super::upstream::{SendError, UpstreamReply, describe};
use super::{CompiledBackend, Gateway};
use crate::config::EndpointConfig;
use crate::config::{Protocol, WireApi};

/// `max_tokens` sent to an Anthropic Messages backend when the client sets none (Anthropic
/// requires it).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The `anthropic-version` header sent unless the client sent one.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// One prepared upstream request.
pub(crate) struct Prepared {
    /// The upstream URL (ignored by mocks).
    pub(crate) url: String,
    /// The body to send.
    pub(crate) body: Vec<u8>,
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
    Ok(Prepared { url, body })
}

/// Sends `body` to the native HTTP backend `b` at `url` until the first-byte deadline (mocks
/// are answered by the attempt pipeline).
pub(crate) async fn send(
    gw: &Gateway,
    b: &CompiledBackend,
    url: &str,
    body: Vec<u8>,
    client_headers: &HeaderMap,
    first_byte_deadline: Instant,
) -> Result<UpstreamReply, SendError> {
    let (api_key_file, protocol) = match &b.cfg.endpoint {
        EndpointConfig::Http { api_key_file, protocol, .. } => (api_key_file.as_deref(), *protocol),
        EndpointConfig::Mock(_) => (None, Protocol::OpenAI),
    };
    let upstream = &gw.inner.upstream;
    let api_key = match api_key_file {
        Some(f) => Some(upstream.credentials.get(f).map_err(SendError::Credentials)?),
        None => None,
    };
    let uri = Uri::try_from(url).map_err(|_| SendError::Connect(format!("invalid upstream URL {url:?}")))?;
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::USER_AGENT, HeaderValue::from_static(concat!("tollgate/", env!("CARGO_PKG_VERSION"))));
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
        let bad = || SendError::Credentials("the API key contains characters not allowed in an HTTP header".into());
        match b.cfg.api {
            WireApi::OpenAI if !anthropic => {
                let mut bearer = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| bad())?;
                bearer.set_sensitive(true);
                h.insert(header::AUTHORIZATION, bearer);
            }
            api => {
                let mut v = HeaderValue::try_from(key).map_err(|_| bad())?;
                v.set_sensitive(true);
                let name = if api == WireApi::Gemini { "x-goog-api-key" } else { "x-api-key" };
                h.insert(HeaderName::from_static(name), v);
            }
        }
    }
    let client = upstream.client()?;
    let resp = match tokio::time::timeout_at(first_byte_deadline, client.request(req)).await {
        Err(_) => return Err(SendError::Timeout),
        Ok(Err(e)) if e.is_connect() => return Err(SendError::Connect(describe(&e))),
        Ok(Err(e)) => return Err(SendError::Transport(describe(&e))),
        Ok(Ok(r)) => r,
    };
    let (parts, body) = resp.into_parts();
    let body: BodyStream = Box::pin(body.into_data_stream().map_err(|e| io::Error::other(describe(&e))));
    Ok(UpstreamReply { status: parts.status, headers: parts.headers, body })
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

/// Turns a native upstream's non-streamed answer into a `chat.completion` and its usage.
pub(crate) fn native_answer(api: WireApi, model: &str, body: &Value) -> Result<ChatAnswer, TranslateError> {
    match api {
        WireApi::Gemini => gemini_response_to_chat(body, model, now_secs()),
        _ => messages_response_to_chat(body, now_secs()),
    }
}
