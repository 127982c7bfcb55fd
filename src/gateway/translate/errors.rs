//! Provider error bodies → one classification the failover rules use, and error bodies in the
//! client's shape (OpenAI for `/v1/chat/completions`, Anthropic for `/v1/messages`).
//!
//! Classification ([`ErrorClass`]), by the provider's error type first and the HTTP status
//! second (a type the table does not know falls back to the status):
//!
//! | class | Anthropic `error.type` | Gemini `error.status` | status fallback | failover |
//! | --- | --- | --- | --- | --- |
//! | `RateLimited` | `rate_limit_error` | `RESOURCE_EXHAUSTED` | 429 | yes |
//! | `Retryable` | `overloaded_error`, `api_error`, `timeout_error` | `UNAVAILABLE`, `INTERNAL`, `DEADLINE_EXCEEDED`, `CANCELLED` | 5xx, 529, 408 | yes |
//! | `Backend` | `authentication_error`, `permission_error`, `billing_error`, `not_found_error` | `UNAUTHENTICATED`, `PERMISSION_DENIED`, `NOT_FOUND`, `FAILED_PRECONDITION` | 401, 402, 403, 404 | yes (the backend cannot serve, another may) |
//! | `Client` | `invalid_request_error`, `request_too_large` | `INVALID_ARGUMENT`, `OUT_OF_RANGE` | other 4xx | no (the same request fails everywhere) |
//!
//! An unreadable body is classified by status alone; status 0 (an `error` event inside a
//! stream, which has no status of its own) with an unknown type is `Retryable`. Upstream
//! messages are clipped to 1000 bytes; they never carry key material (providers do not echo
//! keys), and the gateway's own messages name no secret either.

use serde_json::{Value, json};

const MAX_MESSAGE: usize = 1000;

/// What the failover rules do with an upstream error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Rate limit or quota (429): try the next backend; metric outcome `rate_limited`.
    RateLimited,
    /// Overloaded or failed upstream (5xx, 529): try the next backend; outcome `upstream_error`.
    Retryable,
    /// The backend cannot serve (credentials, permission, billing, unknown upstream model): try
    /// the next backend; outcome `upstream_error`.
    Backend,
    /// The request is at fault: answer the client, no failover; outcome `client_error`.
    Client,
}

impl ErrorClass {
    /// Whether another backend may succeed.
    pub fn fails_over(self) -> bool {
        self != ErrorClass::Client
    }

    /// The `outcome` label of `tollgate_requests_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Retryable | ErrorClass::Backend => "upstream_error",
            ErrorClass::Client => "client_error",
        }
    }

    fn from_status(status: u16) -> ErrorClass {
        match status {
            429 => ErrorClass::RateLimited,
            401..=404 => ErrorClass::Backend,
            408 => ErrorClass::Retryable,
            400..=499 => ErrorClass::Client,
            _ => ErrorClass::Retryable,
        }
    }
}

/// A classified upstream error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider} upstream error {kind} (HTTP {status}): {message}")]
pub struct UpstreamError {
    /// `Anthropic`, `Gemini` or `OpenAI-compatible`.
    pub provider: &'static str,
    /// The upstream HTTP status (0 for an error event inside a stream).
    pub status: u16,
    /// The classification.
    pub class: ErrorClass,
    /// The provider's error type or status name (`overloaded_error`, `RESOURCE_EXHAUSTED`).
    pub kind: String,
    /// The provider's message, clipped.
    pub message: String,
}

impl UpstreamError {
    /// The HTTP status for the client: the upstream's for client errors, 429 for rate limits,
    /// 503 for overload, 502 for any other upstream failure.
    pub fn client_status(&self) -> u16 {
        match self.class {
            ErrorClass::Client if (400..500).contains(&self.status) => self.status,
            ErrorClass::Client => 400,
            ErrorClass::RateLimited => 429,
            ErrorClass::Retryable if matches!(self.status, 503 | 529) || self.kind == "overloaded_error" => 503,
            _ => 502,
        }
    }

    /// The OpenAI-shaped body `{"error":{"message","type","param","code"}}`.
    pub fn openai_body(&self) -> Value {
        let kind = match self.class {
            ErrorClass::Client => "invalid_request_error",
            ErrorClass::RateLimited => "rate_limit_error",
            ErrorClass::Retryable | ErrorClass::Backend => "api_error",
        };
        json!({ "error": {
            "message": format!("{} upstream: {}", self.provider, self.message),
            "type": kind,
            "param": null,
            "code": self.kind,
        }})
    }

    /// The Anthropic-shaped body `{"type":"error","error":{"type","message"}}`: an Anthropic
    /// upstream's own type is kept, other providers' errors take the type of
    /// [`client_status`](Self::client_status).
    pub fn anthropic_body(&self) -> Value {
        let kind = if self.provider == "Anthropic" && anthropic_kind_known(&self.kind) {
            self.kind.clone()
        } else {
            anthropic_type_for_status(self.client_status()).to_string()
        };
        json!({ "type": "error", "error": { "type": kind, "message": format!("{} upstream: {}", self.provider, self.message) } })
    }
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn anthropic_kind_known(kind: &str) -> bool {
    anthropic_class(kind).is_some()
}

fn anthropic_class(kind: &str) -> Option<ErrorClass> {
    Some(match kind {
        "rate_limit_error" => ErrorClass::RateLimited,
        "overloaded_error" | "api_error" | "timeout_error" => ErrorClass::Retryable,
        "authentication_error" | "permission_error" | "billing_error" | "not_found_error" => ErrorClass::Backend,
        "invalid_request_error" | "request_too_large" => ErrorClass::Client,
        _ => return None,
    })
}

/// The Anthropic error type for a client-facing status.
pub fn anthropic_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

fn body_json(body: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(body) {
        // Gemini sometimes wraps its error in a one-element array.
        Ok(Value::Array(mut a)) if a.len() == 1 => a.remove(0),
        Ok(v) => v,
        Err(_) => Value::Null,
    }
}

fn raw_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    if t.is_empty() { "(empty body)".to_string() } else { clip(t) }
}

/// An Anthropic error answer (`status` 0 for a stream `error` event's data).
pub fn anthropic_error(status: u16, body: &[u8]) -> UpstreamError {
    let v = body_json(body);
    let err = v.get("error");
    let kind = err.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or_default().to_string();
    let message = err.and_then(|e| e.get("message")).and_then(Value::as_str).map_or_else(|| raw_message(body), clip);
    let class = anthropic_class(&kind).unwrap_or_else(|| ErrorClass::from_status(status));
    let kind = if kind.is_empty() { format!("http_{status}") } else { kind };
    UpstreamError { provider: "Anthropic", status, class, kind, message }
}

/// A Gemini error answer (`{"error":{"code","message","status"}}`, possibly in an array).
pub fn gemini_error(status: u16, body: &[u8]) -> UpstreamError {
    let v = body_json(body);
    let err = v.get("error");
    let kind = err.and_then(|e| e.get("status")).and_then(Value::as_str).unwrap_or_default().to_string();
    let message = err.and_then(|e| e.get("message")).and_then(Value::as_str).map_or_else(|| raw_message(body), clip);
    let class = match kind.as_str() {
        "RESOURCE_EXHAUSTED" => ErrorClass::RateLimited,
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "CANCELLED" => ErrorClass::Retryable,
        "UNAUTHENTICATED" | "PERMISSION_DENIED" | "NOT_FOUND" | "FAILED_PRECONDITION" => ErrorClass::Backend,
        "INVALID_ARGUMENT" | "OUT_OF_RANGE" => ErrorClass::Client,
        _ => ErrorClass::from_status(status),
    };
    let kind = if kind.is_empty() { format!("http_{status}") } else { kind };
    UpstreamError { provider: "Gemini", status, class, kind, message }
}

/// An OpenAI-compatible error answer (`{"error":{"message","type","code"}}`), classified by
/// status (OpenAI types are not stable enough across compatible providers).
pub fn openai_error(status: u16, body: &[u8]) -> UpstreamError {
    let v = body_json(body);
    let err = v.get("error");
    let code = err.and_then(|e| e.get("code")).and_then(Value::as_str);
    let kind = err.and_then(|e| e.get("type")).and_then(Value::as_str);
    let message = err.and_then(|e| e.get("message")).and_then(Value::as_str).map_or_else(|| raw_message(body), clip);
    let kind = code.or(kind).map_or_else(|| format!("http_{status}"), str::to_string);
    UpstreamError { provider: "OpenAI-compatible", status, class: ErrorClass::from_status(status), kind, message }
}

/// An OpenAI-shaped error body (the gateway's own, or an OpenAI-compatible upstream's) as the
/// Anthropic error body a `/v1/messages` client expects, with the status to answer. The
/// message is kept; the type follows the status (429 → `rate_limit_error`, 503 →
/// `overloaded_error`, ...). A body that is not OpenAI-shaped keeps its text as the message.
pub fn openai_error_to_anthropic(status: u16, body: &[u8]) -> (u16, Value) {
    let v = body_json(body);
    let message =
        v.get("error").and_then(|e| e.get("message")).and_then(Value::as_str).map_or_else(|| raw_message(body), clip);
    (status, json!({ "type": "error", "error": { "type": anthropic_type_for_status(status), "message": message } }))
}
