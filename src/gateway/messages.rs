//! Inbound Anthropic `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic SDK
//! clients on the same routes, budgets, failover and metering as the OpenAI endpoints.
//!
//! Rules:
//! - `/v1/messages` reads its body like every surface (size limit → 413, a stalled body →
//!   408), parses it once ([`MessagesRequest`]; `model` is the route alias, `stream` a
//!   boolean) and hands it to the shared pipeline ([`pipeline::run`]) as
//!   [`Surface::Messages`]: every error is Anthropic-shaped
//!   (`{"type":"error","error":{"type","message"}}`), the metrics endpoint is
//!   [`Endpoint::Messages`] (gen_ai operation `chat`), and spend lands in the same meter cells
//!   as every other surface. What each backend format gets is [`super::codec`]'s: to an
//!   `AnthropicMessages` backend the body passes through byte for byte except the top-level
//!   `model`; to an OpenAI-compatible or Gemini backend it is translated and the answer comes
//!   back in Messages shape. Failover crosses formats.
//! - `/v1/messages/count_tokens` is not metered (providers do not bill it). It goes to the
//!   route's Anthropic-native HTTP backends (tier order, at most `max_attempts`) at
//!   `{baseUrl}/v1/messages/count_tokens`, body passed through except `model`; a 2xx or a
//!   request fault (4xx other than 401/403/429) is passed on, scrubbed of the API keys; any
//!   other failure tries the next one. An Anthropic-native mock answers its configured
//!   `inputTokens`. When no Anthropic-native backend answers, the gateway answers an
//!   *estimate* — `input_tokens` = request body bytes / 4, rounded up (the metering estimate
//!   rule of [`super::limits`]) — marked with `x-tollgate-token-count: estimate`.

use std::time::Duration;

use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::answer::{read_all, read_body};
use super::codec::{Inbound, MessagesRequest, Surface, scrub};
use super::errors::ApiError;
use super::native::{anthropic_url, json_response};
use super::pipeline::{self, set_headers};
use super::serve::ShutdownCut;
use super::translate::replace_model;
use super::{Gateway, limits, native};
use crate::config::{EndpointConfig, WireApi};

#[cfg(doc)]
use super::request::Endpoint;

/// Largest count_tokens answer passed on, bytes.
const MAX_COUNT_BODY: usize = 256 * 1024;
/// Longest wait for one upstream count_tokens answer.
const COUNT_WAIT: Duration = Duration::from_secs(30);

/// Parses a `/v1/messages` body (a JSON object with a non-empty string `model`).
pub(crate) fn parse(raw: Bytes) -> Result<MessagesRequest, ApiError> {
    let bad = |code: &'static str, m: String| ApiError::bad_request(code, m);
    let value: Value = match serde_json::from_slice(&raw) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err(bad("invalid_json", "The request body must be a JSON object.".into())),
        Err(e) => return Err(bad("invalid_json", format!("The request body is not valid JSON: {e}"))),
    };
    let Some(alias) = value.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).map(str::to_string) else {
        return Err(bad("missing_model", "model: a non-empty string naming the model alias is required.".into()));
    };
    let stream = match value.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("invalid_stream", "stream: must be a boolean.".into())),
    };
    Ok(MessagesRequest { raw, value, alias, stream })
}

/// The request's head and its body, read within the gateway's size and time limits (an
/// Anthropic-shaped error answer otherwise).
async fn read_request(gw: &Gateway, req: Request) -> Result<(Parts, Bytes), Response> {
    let (parts, body) = req.into_parts();
    let opts = &gw.inner.opts;
    let raw =
        read_body(body, &parts.headers, parts.version, opts.max_body_bytes, opts.body_read_timeout, Surface::Messages)
            .await?;
    Ok((parts, raw))
}

/// The `/v1/messages` handler.
pub(crate) async fn handle(gw: Gateway, req: Request) -> Response {
    let surface = Surface::Messages;
    let (parts, raw) = match read_request(&gw, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let request_bytes = raw.len();
    let m = match parse(raw) {
        Ok(m) => m,
        Err(e) => return surface.render(e),
    };
    let cut = parts.extensions.get::<ShutdownCut>().map(|c| c.0.clone());
    let req = pipeline::Request { surface, inbound: Inbound::Messages(m), headers: &parts.headers, request_bytes, cut };
    pipeline::run(&gw, req).await
}

/// The `/v1/messages/count_tokens` handler (see the module docs).
pub(crate) async fn count_tokens(gw: Gateway, req: Request) -> Response {
    let surface = Surface::Messages;
    let (parts, raw) = match read_request(&gw, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let opts = &gw.inner.opts;
    let m = match parse(raw) {
        Ok(m) => m,
        Err(e) => return surface.render(e),
    };
    let Some(served) = gw.inner.current.load_full() else {
        return surface.render(ApiError::not_ready());
    };
    let Some(route) = served.routes.get(&m.alias).cloned() else {
        return surface.render(ApiError::model_not_found(&m.alias));
    };
    drop(served);
    let mut natives: Vec<_> =
        route.backends.iter().filter(|b| b.cfg.serving && b.cfg.api == WireApi::AnthropicMessages).collect();
    natives.sort_by_key(|b| b.cfg.tier);
    let redactor = gw.inner.upstream.credentials.redactor();
    for b in natives.into_iter().take(opts.max_attempts.max(1)) {
        let base = match &b.cfg.endpoint {
            EndpointConfig::Mock(mock) => {
                let mut resp = json_response(StatusCode::OK, &json!({ "input_tokens": mock.input_tokens }));
                set_headers(&mut resp, &route, Some(b), 1);
                return resp;
            }
            EndpointConfig::Http { base_url, .. } => base_url,
        };
        let Ok(body) = replace_model(&m.raw, &b.cfg.model) else { continue };
        let url = format!("{}/count_tokens", anthropic_url(base));
        let deadline = Instant::now() + COUNT_WAIT.min(opts.total_timeout);
        let reply = match native::send(&gw, b, &url, body, &parts.headers, deadline).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(route = %route.name, backend = %b.cfg.name, error = %e, "count_tokens upstream failed");
                continue;
            }
        };
        let status = reply.status;
        let passed = status.is_success()
            || (status.is_client_error()
                && ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS].contains(&status));
        if !passed {
            tracing::warn!(route = %route.name, backend = %b.cfg.name, status = status.as_u16(), "count_tokens upstream failed");
            continue;
        }
        let mut rest = reply.body;
        let Ok(text) = read_all(&mut rest, MAX_COUNT_BODY, deadline, None).await else { continue };
        let mut resp = Response::new(axum::body::Body::from(scrub(&redactor, Bytes::from(text))));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        set_headers(&mut resp, &route, Some(b), 1);
        return resp;
    }
    let estimate = limits::estimate(m.raw.len(), 0).input;
    let mut resp = json_response(StatusCode::OK, &json!({ "input_tokens": estimate }));
    resp.headers_mut().insert(HeaderName::from_static("x-tollgate-token-count"), HeaderValue::from_static("estimate"));
    set_headers(&mut resp, &route, None, 1);
    resp
}
