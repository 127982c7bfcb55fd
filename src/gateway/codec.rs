//! The per-format codec of one attempt: what differs between a client surface and an upstream
//! wire format, and nothing else (the attempt pipeline in [`super::attempt`] does the rest the
//! same way for every pair).
//!
//! Rules:
//! - A [`Surface`] is what the client speaks: an OpenAI endpoint or Anthropic `/v1/messages`.
//!   It shapes every error the gateway answers ([`Surface::render`]) and names the metrics
//!   endpoint ([`Surface::endpoint`]).
//! - [`encode`] builds the upstream request of one backend from the client's request
//!   ([`Inbound`]): the OpenAI pass-through rewrites only `model` (and `stream_options` when
//!   the gateway asks for stream usage), Anthropic pass-through only `model`, and every other
//!   pair goes through the pure translators of [`super::translate`]. A request the backend's
//!   format cannot carry is a 400 naming the field (no failover: the same request fails the
//!   same way on the next backend of that format).
//! - Native backends (`AnthropicMessages`, `Gemini`) serve only chat turns
//!   (`/v1/chat/completions`, `/v1/messages`): [`Surface::serves`] says so, and the pipeline
//!   skips them for other endpoints before any budget is reserved.
//! - [`Codec::on_error`] classifies an upstream error answer: the OpenAI pass-through keeps
//!   its rules (429 and 5xx fail over, 401/403 become 502 `upstream_auth_failed`, other 4xx
//!   are passed on rebuilt from their known fields); translated pairs use
//!   [`super::translate::errors`] (rate limits, overload, backend faults fail over; request
//!   faults are answered in the client's shape). Messages are scrubbed of the API keys.
//! - [`Codec::whole`] turns a whole upstream answer into the client's body and its usage;
//!   streams are [`super::stream::metered`] (pass-through) or
//!   [`super::native_stream::TranslatedStream`] (translated).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::CompiledBackend;
use super::answer::{error_message, pass_headers};
use super::errors::{ApiError, rebuild_upstream_error};
use super::native::{self, anthropic_url, now_secs};
use super::native_stream::{Decoder, Encoder, Translator};
use super::redact::Redactor;
use super::request::{ClientRequest, Endpoint};
use super::stream::body_usage;
use super::translate::errors::anthropic_type_for_status;
use super::translate::{
    AnthropicStream, ChatToMessagesStream, GeminiStream, InboundOptions, TranslateError, UsageReport, messages_to_chat,
    replace_model,
};
use crate::config::{EndpointConfig, WireApi};
use crate::policy::Outcome;
use crate::pricing::{TokenCounts, UsageError};

/// The API a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// An OpenAI endpoint (`/v1/chat/completions`, `/v1/completions`, ...).
    OpenAI(Endpoint),
    /// Anthropic `POST /v1/messages`.
    Messages,
}

impl Surface {
    /// The endpoint this surface is metered as.
    pub(crate) fn endpoint(self) -> Endpoint {
        match self {
            Surface::OpenAI(e) => e,
            Surface::Messages => Endpoint::Messages,
        }
    }

    /// Whether a backend speaking `api` can serve this surface.
    pub(crate) fn serves(self, api: WireApi) -> bool {
        matches!(
            (self, api),
            (_, WireApi::OpenAI) | (Surface::Messages, _) | (Surface::OpenAI(Endpoint::ChatCompletions), _)
        )
    }

    /// The path clients call this surface on.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Surface::OpenAI(e) => e.client_path(),
            Surface::Messages => "/v1/messages",
        }
    }

    /// `e` in this surface's error shape: OpenAI's
    /// `{"error":{"message","type","param","code"}}`, or Anthropic's
    /// `{"type":"error","error":{"type","message"}}` (the type from the status).
    pub(crate) fn render(self, e: ApiError) -> Response {
        match self {
            Surface::OpenAI(_) => e.into_response(),
            Surface::Messages => anthropic_error(e.status, anthropic_type_for_status(e.status.as_u16()), &e.message),
        }
    }
}

/// An Anthropic-shaped error answer.
pub(crate) fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({ "type": "error", "error": { "type": kind, "message": message } });
    native::json_response(status, &body)
}

/// A `/v1/messages` request as parsed once.
pub(crate) struct MessagesRequest {
    /// The body as the client sent it (passed on to Anthropic backends, `model` replaced).
    pub(crate) raw: Bytes,
    /// The body parsed (a JSON object).
    pub(crate) value: Value,
    /// `model`: the route alias.
    pub(crate) alias: String,
    /// `stream: true`.
    pub(crate) stream: bool,
}

/// The client's request, parsed once and encoded per attempt.
pub(crate) enum Inbound {
    OpenAI(ClientRequest),
    Messages(MessagesRequest),
}

impl Inbound {
    /// The route alias asked for.
    pub(crate) fn alias(&self) -> &str {
        match self {
            Inbound::OpenAI(c) => &c.model,
            Inbound::Messages(m) => &m.alias,
        }
    }
}

/// Where an encoded request goes.
pub(crate) enum Target {
    /// The backend's OpenAI-compatible URL of this endpoint (or its OpenAI-shaped mock).
    OpenAI(Endpoint),
    /// A native URL (or the backend's native mock), streaming or not.
    Native { url: String, stream: bool },
}

impl Target {
    /// The upstream endpoint the output cap is applied for.
    pub(crate) fn cap_endpoint(&self) -> Endpoint {
        match self {
            Target::OpenAI(e) => *e,
            Target::Native { .. } => Endpoint::ChatCompletions,
        }
    }
}

/// How one attempt's answer is read.
pub(crate) enum Codec {
    /// OpenAI surface on an OpenAI-compatible upstream: the answer passes as is (usage read on
    /// the side; with `ask_usage`, the gateway's own usage chunk is removed from the stream).
    Pass { ask_usage: bool },
    /// Every other pair: decoded from the upstream format, encoded for the client.
    Translate(Box<Translator>),
}

/// One upstream request, ready to send.
pub(crate) struct Encoded {
    pub(crate) body: Vec<u8>,
    pub(crate) target: Target,
    pub(crate) codec: Codec,
}

fn refusal(e: &TranslateError) -> ApiError {
    let code =
        if matches!(e, TranslateError::Unsupported { .. }) { "unsupported_parameter" } else { "invalid_request" };
    ApiError::bad_request(code, e.client_message())
}

/// The upstream request of backend `b` for `req` on `surface` (a 400 when its format cannot
/// carry the request).
pub(crate) fn encode(surface: Surface, req: &Inbound, b: &CompiledBackend) -> Result<Encoded, ApiError> {
    let api = b.cfg.api;
    if !surface.serves(api) {
        return Err(not_served(surface, std::iter::once(b)));
    }
    let base = match &b.cfg.endpoint {
        EndpointConfig::Http { base_url, .. } => base_url.as_str(),
        EndpointConfig::Mock(_) => "http://mock.invalid",
    };
    match (req, api) {
        (Inbound::OpenAI(c), WireApi::OpenAI) => {
            let endpoint = surface.endpoint();
            let ask_usage = c.stream && !c.include_usage && endpoint.usage_needs_stream_options();
            let body = c.upstream_body(&b.cfg.model, ask_usage);
            Ok(Encoded { body, target: Target::OpenAI(endpoint), codec: Codec::Pass { ask_usage } })
        }
        (Inbound::OpenAI(c), api) => {
            let chat = c.upstream_body(&b.cfg.model, false);
            let p = native::prepare(b, &chat, c.stream).map_err(|e| refusal(&e))?;
            let decoder = match api {
                WireApi::Gemini => Decoder::Gemini(GeminiStream::new(&b.cfg.model, now_secs(), c.include_usage)),
                _ => Decoder::Anthropic(AnthropicStream::new(now_secs(), c.include_usage)),
            };
            let t = Translator { decoder: Some(decoder), encoder: Encoder::Chat, alias: b.cfg.model.clone() };
            Ok(Encoded {
                body: p.body,
                target: Target::Native { url: p.url, stream: c.stream },
                codec: Codec::Translate(Box::new(t)),
            })
        }
        (Inbound::Messages(m), WireApi::AnthropicMessages) => {
            let body = replace_model(&m.raw, &b.cfg.model).map_err(|e| refusal(&e))?;
            let t = Translator {
                decoder: Some(Decoder::Anthropic(AnthropicStream::new(0, false))),
                encoder: Encoder::Raw,
                alias: m.alias.clone(),
            };
            let target = Target::Native { url: anthropic_url(base), stream: m.stream };
            Ok(Encoded { body, target, codec: Codec::Translate(Box::new(t)) })
        }
        (Inbound::Messages(m), api) => {
            let opts = InboundOptions { model: b.cfg.model.clone(), max_completion_tokens: false };
            let chat = messages_to_chat(&m.value, &opts).map_err(|e| refusal(&e))?.value;
            let chat = serde_json::to_vec(&chat)
                .map_err(|e| ApiError::bad_request("invalid_request", format!("The request cannot be encoded: {e}")))?;
            let encoder = Encoder::Messages(Box::new(ChatToMessagesStream::new(b.cfg.family, &m.alias)));
            if api == WireApi::Gemini {
                let p = native::prepare(b, &chat, m.stream).map_err(|e| refusal(&e))?;
                let decoder = Decoder::Gemini(GeminiStream::new(&b.cfg.model, now_secs(), true));
                let t = Translator { decoder: Some(decoder), encoder, alias: m.alias.clone() };
                let target = Target::Native { url: p.url, stream: m.stream };
                return Ok(Encoded { body: p.body, target, codec: Codec::Translate(Box::new(t)) });
            }
            let t = Translator { decoder: None, encoder, alias: m.alias.clone() };
            Ok(Encoded {
                body: chat,
                target: Target::OpenAI(Endpoint::ChatCompletions),
                codec: Codec::Translate(Box::new(t)),
            })
        }
    }
}

/// The 400 answered when no backend of a plan can serve `surface` (each named with its format).
pub(crate) fn not_served<'a>(surface: Surface, skipped: impl Iterator<Item = &'a CompiledBackend>) -> ApiError {
    let names: Vec<String> = skipped.map(|b| format!("`{}` ({})", b.cfg.name, b.cfg.api.label())).collect();
    ApiError::bad_request(
        "endpoint_not_supported",
        format!(
            "No backend of this route can serve {}: {} speak a native wire format, which serves only /v1/chat/completions and /v1/messages.",
            surface.path(),
            names.join(", ")
        ),
    )
}

/// What an upstream error answer means for the attempt.
pub(crate) enum Verdict {
    /// Try the next backend (nothing reached the client).
    Retry { outcome: Outcome, status: Option<StatusCode>, message: String },
    /// Answer the client with this; `outcome` is what the attempt is metered as.
    Answer { outcome: Outcome, response: Response },
}

/// A whole answer in the client's shape.
pub(crate) struct Whole {
    pub(crate) body: Bytes,
    pub(crate) usage: Result<TokenCounts, UsageError>,
    pub(crate) content_type: HeaderValue,
}

impl Codec {
    /// The classification of an upstream error answer (`status` not 2xx, `raw` its body).
    pub(crate) fn on_error(
        &self,
        surface: Surface,
        b: &CompiledBackend,
        status: StatusCode,
        headers: &HeaderMap,
        raw: &[u8],
        key: &Redactor,
    ) -> Verdict {
        match self {
            Codec::Pass { .. } => pass_error(b, status, headers, raw, key),
            Codec::Translate(t) => {
                let err = native::classify(t.upstream_api(b), status.as_u16(), raw, key);
                let outcome = match err.class.outcome() {
                    "rate_limited" => Outcome::RateLimited,
                    "client_error" => Outcome::ClientError,
                    _ => Outcome::UpstreamError,
                };
                if err.class.fails_over() {
                    let message = format!("{} {}: {}", err.provider, err.kind, err.message);
                    return Verdict::Retry { outcome, status: Some(status), message };
                }
                let client = StatusCode::from_u16(err.client_status()).unwrap_or(StatusCode::BAD_REQUEST);
                let body = match surface {
                    Surface::OpenAI(_) => err.openai_body(),
                    Surface::Messages => err.anthropic_body(),
                };
                Verdict::Answer { outcome, response: native::json_response(client, &body) }
            }
        }
    }

    /// A whole (non-stream) answer: the client body and the usage (`Err(message)`: the answer
    /// cannot be read at all).
    pub(crate) fn whole(
        &self,
        b: &CompiledBackend,
        headers: &HeaderMap,
        raw: Vec<u8>,
        key: &Redactor,
    ) -> Result<Whole, String> {
        match self {
            Codec::Pass { .. } => {
                let usage = body_usage(b.cfg.family, &raw)
                    .map_err(|()| format!("Backend `{}` answered with a body that is not JSON.", b.cfg.name))?;
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .cloned()
                    .unwrap_or_else(|| HeaderValue::from_static("application/json"));
                Ok(Whole { body: scrub(key, Bytes::from(raw)), usage, content_type })
            }
            Codec::Translate(t) => {
                let cannot =
                    |e: TranslateError| format!("Backend `{}` sent an answer that cannot be read: {e}", b.cfg.name);
                let v = serde_json::from_slice::<Value>(&raw)
                    .map_err(|e| cannot(TranslateError::invalid("(upstream answer)", e.to_string())))?;
                let json = HeaderValue::from_static("application/json");
                if matches!(t.encoder, Encoder::Raw) {
                    // Anthropic to a Messages client: the answer's own bytes.
                    let usage = UsageReport::parse(b.cfg.family, &v).map(|u| u.counts).map_err(usage_error);
                    return Ok(Whole { body: scrub(key, Bytes::from(raw)), usage, content_type: json });
                }
                let (value, usage) = t.whole(b, &v).map_err(cannot)?;
                Ok(Whole {
                    body: scrub(key, Bytes::from(value.to_string())),
                    usage: Ok(usage.counts),
                    content_type: json,
                })
            }
        }
    }
}

fn usage_error(e: TranslateError) -> UsageError {
    match e {
        TranslateError::Usage(u) => u,
        other => UsageError::Malformed { field: "usage".into(), why: other.to_string() },
    }
}

/// `bytes` with every API key the gateway holds removed (the same bytes when there is none).
pub(crate) fn scrub(key: &Redactor, bytes: Bytes) -> Bytes {
    match key.redact(&bytes) {
        std::borrow::Cow::Borrowed(_) => bytes,
        std::borrow::Cow::Owned(v) => Bytes::from(v),
    }
}

/// The OpenAI pass-through's error rules (see the module docs).
fn pass_error(b: &CompiledBackend, status: StatusCode, headers: &HeaderMap, raw: &[u8], key: &Redactor) -> Verdict {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let outcome =
            if status == StatusCode::TOO_MANY_REQUESTS { Outcome::RateLimited } else { Outcome::UpstreamError };
        return Verdict::Retry { outcome, status: Some(status), message: error_message(raw, key) };
    }
    if !status.is_client_error() {
        let response = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_error",
            format!("Backend `{}` answered with unexpected status {}.", b.cfg.name, status.as_u16()),
        )
        .into_response();
        return Verdict::Answer { outcome: Outcome::UpstreamError, response };
    }
    // The request's fault, not the backend's: answered as is, never retried.
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::error!(route = %b.labels.route, backend = %b.cfg.name, status = status.as_u16(), "upstream refused the gateway's credentials");
        let response = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_auth_failed",
            format!(
                "Backend `{}` refused the gateway's credentials ({}): {}",
                b.cfg.name,
                status.as_u16(),
                error_message(raw, key)
            ),
        )
        .into_response();
        return Verdict::Answer { outcome: Outcome::ClientError, response };
    }
    let mut response = match rebuild_upstream_error(raw, key) {
        Some(text) => {
            let mut r = (status, text).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        None => ApiError::new(
            status,
            "invalid_request_error",
            "upstream_rejected",
            format!("Backend `{}` rejected the request: {}", b.cfg.name, error_message(raw, key)),
        )
        .into_response(),
    };
    pass_headers(headers, response.headers_mut(), key);
    Verdict::Answer { outcome: Outcome::ClientError, response }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_formats_serve_only_chat_turns() {
        for api in [WireApi::OpenAI, WireApi::AnthropicMessages, WireApi::Gemini] {
            assert!(Surface::OpenAI(Endpoint::ChatCompletions).serves(api));
            assert!(Surface::Messages.serves(api));
            for e in [Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses] {
                assert_eq!(Surface::OpenAI(e).serves(api), api == WireApi::OpenAI, "{e:?} on {api:?}");
            }
        }
        assert_eq!(Surface::Messages.endpoint(), Endpoint::Messages);
        assert_eq!(Surface::Messages.path(), "/v1/messages");
        assert_eq!(Surface::OpenAI(Endpoint::Embeddings).path(), "/v1/embeddings");
    }

    async fn body(r: Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_take_the_surface_shape() {
        let e = || ApiError::new(StatusCode::GATEWAY_TIMEOUT, "api_error", "upstream_timeout", "late");
        let (s, v) = body(Surface::OpenAI(Endpoint::ChatCompletions).render(e())).await;
        assert_eq!(s, 504);
        assert_eq!(v["error"]["code"], "upstream_timeout");
        let (s, v) = body(Surface::Messages.render(e())).await;
        assert_eq!(s, 504);
        assert_eq!(v, json!({"type": "error", "error": {"type": "timeout_error", "message": "late"}}));
        for (status, kind) in [
            (StatusCode::BAD_REQUEST, "invalid_request_error"),
            (StatusCode::NOT_FOUND, "not_found_error"),
            (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error"),
            (StatusCode::BAD_GATEWAY, "api_error"),
        ] {
            let (_, v) = body(Surface::Messages.render(ApiError::new(status, "x", "y", "m"))).await;
            assert_eq!(v["error"]["type"], kind, "{status}");
        }
    }
}
