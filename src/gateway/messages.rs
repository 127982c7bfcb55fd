//! Inbound `POST /v1/messages`: Anthropic SDK clients on the same routes, budgets, failover
//! and metering as `/v1/chat/completions`.
//!
//! Rules:
//! - The request's `model` is the route alias. A `Rejecting` route answers 429
//!   `rate_limit_error` (budget exhausted) without calling upstream.
//! - To an `AnthropicMessages` backend the body passes through byte for byte except the
//!   top-level `model` ([`replace_model`]); the answer (whole or streamed) comes back unchanged.
//! - To an OpenAI-compatible backend the body is translated to a chat request
//!   ([`messages_to_chat`]) sent to `{baseUrl}/chat/completions`; to a `Gemini` backend it goes
//!   on from chat to `generateContent`. Answers come back in Messages shape, streamed as the
//!   Messages event sequence, naming the client's alias as `model`.
//! - Failover crosses formats: an attempt that fails before the first byte (529, 5xx, 429,
//!   timeouts, credentials) moves to the next backend in the plan whatever its format.
//! - Every error is Anthropic-shaped (`{"type":"error","error":{"type","message"}}`); a request
//!   field a backend's format cannot carry is a 400 `invalid_request_error` naming the field.
//! - Metrics and gen_ai instruments label these requests with the chat-completions endpoint
//!   (they are chat turns); spend lands in the same meter cells as every other surface.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use tokio::time::Instant;

use super::admission;
use super::native::{self, Prepared, Retry, Surface, anthropic_error_response, anthropic_url, now_secs};
use super::native_stream::{Decoder, Encoder, Translator};
use super::request::Endpoint;
use super::{CompiledBackend, CompiledRoute, Gateway};
use crate::config::EndpointConfig;
use crate::config::{RouteState, WireApi};
use crate::policy::Outcome;

use super::translate::{
    AnthropicStream, ChatToMessagesStream, GeminiStream, InboundOptions, messages_to_chat, replace_model,
};

/// The metrics endpoint of `/v1/messages` requests.
const ENDPOINT: Endpoint = Endpoint::ChatCompletions;

fn headers(resp: &mut Response, route: &CompiledRoute, b: Option<&CompiledBackend>, attempts: usize) {
    let h = resp.headers_mut();
    h.insert(HeaderName::from_static("x-tollgate-route"), route.route_header.clone());
    if let Some(b) = b {
        h.insert(HeaderName::from_static("x-tollgate-backend"), b.backend_header.clone());
        h.insert(HeaderName::from_static("x-tollgate-provider"), b.provider_header.clone());
    }
    if attempts > 1 {
        h.insert(HeaderName::from_static("x-tollgate-attempts"), HeaderValue::from(attempts));
    }
}

fn bad_request(message: &str) -> Response {
    anthropic_error_response(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// The `/v1/messages` handler.
pub(crate) async fn handle(gw: Gateway, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let limit = gw.inner.opts.max_body_bytes;
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return anthropic_error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &format!("The request body is larger than {limit} bytes."),
            );
        }
        Err(e) => return bad_request(&format!("Could not read the request body: {e}")),
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad_request("The request body must be a JSON object."),
        Err(e) => return bad_request(&format!("The request body is not valid JSON: {e}")),
    };
    let Some(alias) = value.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).map(str::to_string) else {
        return bad_request("model: a non-empty string naming the model alias is required.");
    };
    let stream = match value.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad_request("stream: must be a boolean."),
    };
    let Some(served) = gw.inner.current.load_full() else {
        return anthropic_error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            "The gateway has no valid config loaded yet.",
        );
    };
    let Some(route) = served.routes.get(&alias).cloned() else {
        return anthropic_error_response(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("model: no route serves the model alias `{alias}`."),
        );
    };
    drop(served);
    if route.state == RouteState::Rejecting {
        if let Some(b) = route.backends.iter().min_by_key(|b| b.cfg.tier) {
            b.cell.record_outcome(Outcome::BudgetRejected, None);
        }
        let mut resp = anthropic_error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            &format!("Route `{}` has exhausted its budget: requests are rejected until it resets.", route.name),
        );
        headers(&mut resp, &route, None, 1);
        return resp;
    }
    if let Some(msg) = admission::input_too_large(route.max_input_tokens, &route.name, bytes.len()) {
        let mut resp = bad_request(&msg);
        headers(&mut resp, &route, None, 1);
        return resp;
    }
    let opts = &gw.inner.opts;
    // issue 15 hook: affinity key and request hints (src/gateway/steer.rs).
    let steer = match super::steer::steer(&route, super::steer::Input::messages(&parts.headers, &value, bytes.len())) {
        Ok(s) => s,
        Err(r) => {
            let mut resp = anthropic_error_response(r.status, "invalid_request_error", &r.message);
            headers(&mut resp, &route, None, 1);
            return resp;
        }
    };
    let plan = route.attempt_plan_steered(opts.max_attempts, &steer);
    let deadline = Instant::now() + opts.total_timeout;
    let mut last: Option<(String, Retry)> = None;
    let requested = value.get("max_tokens").and_then(Value::as_u64);
    let mut refused = false;
    for (n, &idx) in plan.iter().enumerate() {
        let Some(b) = route.backends.get(idx).cloned() else { continue };
        // Hard budgets (issue 13): try the backend only if its worst case can be reserved.
        let hold = match gw.inner.admission.admit_attempt(&b.cfg, ENDPOINT, bytes.len(), requested, 1) {
            admission::Admit::Free => None,
            admission::Admit::Held(h) => Some(h),
            admission::Admit::Refused(_) => {
                b.cell.record_outcome(Outcome::BudgetRejected, None);
                refused = true;
                continue;
            }
        };
        let result =
            admission::scoped(hold.clone(), attempt(&gw, &b, &bytes, &value, &alias, stream, &parts.headers, deadline))
                .await;
        admission::after_attempt(hold.as_ref(), matches!(&result, Ok(r) if r.status().is_success()));
        match result {
            Ok(mut resp) => {
                headers(&mut resp, &route, Some(&b), n + 1);
                return resp;
            }
            Err(r) => {
                tracing::warn!(route = %route.name, backend = %b.cfg.name, outcome = r.outcome.label(), error = %r.message, attempt = n + 1, "upstream attempt failed (/v1/messages)");
                last = Some((b.cfg.name.clone(), r));
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    if last.is_none() && refused {
        let mut resp = anthropic_error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            &format!(
                "Route `{}`: no backend's worst-case cost fits a Hard budget's allowance (budget_exhausted).",
                route.name
            ),
        );
        headers(&mut resp, &route, None, plan.len().max(1));
        return resp;
    }
    let mut resp = exhausted(last, plan.len());
    headers(&mut resp, &route, None, plan.len().max(1));
    resp
}

fn exhausted(last: Option<(String, Retry)>, attempts: usize) -> Response {
    let Some((backend, r)) = last else {
        return anthropic_error_response(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", "No backend is serving.");
    };
    let msg = format!("All upstreams failed ({attempts} attempts); last: backend `{backend}`: {}", r.message);
    let (status, kind) = match r.outcome {
        Outcome::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        Outcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
        _ if r.status.is_some_and(|s| s.as_u16() == 529 || s == StatusCode::SERVICE_UNAVAILABLE) => {
            (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error")
        }
        _ => (StatusCode::BAD_GATEWAY, "api_error"),
    };
    anthropic_error_response(status, kind, &msg)
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    gw: &Gateway,
    b: &Arc<CompiledBackend>,
    raw: &[u8],
    value: &Value,
    alias: &str,
    stream: bool,
    client_headers: &HeaderMap,
    deadline: Instant,
) -> Result<Response, Retry> {
    let refuse = |e: &super::translate::TranslateError| Ok(native::translate_refusal(e, Surface::Messages));
    let base = match &b.cfg.endpoint {
        EndpointConfig::Http { base_url, .. } => base_url.clone(),
        EndpointConfig::Mock(_) => "http://mock.invalid".to_string(),
    };
    let (prepared, translator) = match b.cfg.api {
        WireApi::AnthropicMessages => {
            let body = match replace_model(raw, &b.cfg.model) {
                Ok(b) => b,
                Err(e) => return refuse(&e),
            };
            let t =
                Translator { decoder: Some(Decoder::Anthropic(AnthropicStream::new(0, false))), encoder: Encoder::Raw };
            (Prepared { url: anthropic_url(&base), body, stream }, t)
        }
        api => {
            let opts = InboundOptions { model: b.cfg.model.clone(), max_completion_tokens: false };
            let chat = match messages_to_chat(value, &opts) {
                Ok(c) => c.value,
                Err(e) => return refuse(&e),
            };
            let chat_body = match serde_json::to_vec(&chat) {
                Ok(v) => v,
                Err(e) => return Ok(bad_request(&format!("the request cannot be encoded: {e}"))),
            };
            let enc = Encoder::Messages(Box::new(ChatToMessagesStream::new(b.cfg.family, alias)));
            if api == WireApi::Gemini {
                match native::prepare(b, &chat_body, stream) {
                    Ok(p) => {
                        let d = Decoder::Gemini(GeminiStream::new(&b.cfg.model, now_secs(), true));
                        (p, Translator { decoder: Some(d), encoder: enc })
                    }
                    Err(e) => return refuse(&e),
                }
            } else {
                let url = format!("{base}{}", Endpoint::ChatCompletions.path());
                (Prepared { url, body: chat_body, stream }, Translator { decoder: None, encoder: enc })
            }
        }
    };
    let started = Instant::now();
    let first_byte_deadline = (started + gw.inner.opts.first_byte_timeout).min(deadline);
    let reply = match native::send(gw, b, &prepared, client_headers, first_byte_deadline).await {
        Ok(r) => r,
        Err(r) => {
            native::record(b, ENDPOINT, r.outcome, started, None);
            return Err(r);
        }
    };
    let mut resp =
        native::finish_attempt(gw, b, ENDPOINT, reply, translator, Surface::Messages, alias, started, deadline).await?;
    if !resp.headers().contains_key(header::CONTENT_TYPE) {
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(resp)
}
