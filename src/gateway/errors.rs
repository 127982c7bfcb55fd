//! OpenAI-shaped errors: every error the gateway answers is
//! `{"error":{"message":...,"type":...,"param":null,"code":...}}`.
//!
//! An upstream 4xx error body passed on to the client is rebuilt from its known fields only
//! (`error.message`, `error.type`, `error.code`, `error.param`; strings, numbers or null, each
//! scrubbed of API keys and clipped), so nothing else an upstream echoes reaches the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::redact::Redactor;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human message (never contains key material).
    pub message: String,
    /// OpenAI `type` (`invalid_request_error`, `insufficient_quota`, `api_error`, ...).
    pub kind: &'static str,
    /// Machine-readable `code`.
    pub code: &'static str,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, code }
    }

    /// 400: the request is not something we can route.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    /// 404: no route serves this alias.
    pub fn model_not_found(alias: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{}` does not exist or you do not have access to it.", clip(alias, 256)),
        )
    }

    /// 404 for an unknown path.
    pub fn unknown_path(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown request URL: {}.", clip(path, 256)),
        )
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "Method not allowed for this URL.",
        )
    }

    /// 413: the body is larger than the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body exceeds the gateway's limit of {limit} bytes."),
        )
    }

    /// 408: the request body stalled.
    pub fn request_timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!("The request body stalled: no data for {} ms.", after.as_millis()),
        )
    }

    /// 503: the gateway's memory budget for whole answers is used up.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "gateway_overloaded", message)
    }

    /// 429: the route refuses requests because a budget is exhausted (`onExhausted: Reject`).
    pub fn budget_exhausted(route: &str) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "budget_exhausted",
            format!(
                "The spend budget for model route `{route}` is exhausted; requests are refused until the budget window resets or the limit is raised."
            ),
        )
    }

    /// 503: no valid config has been loaded yet.
    pub fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "config_not_loaded",
            "The gateway has not loaded a valid configuration yet.",
        )
    }

    /// 503: the route has no serving backend.
    pub fn no_backend(route: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "no_backend_available",
            format!("Model route `{route}` has no backend in rotation."),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }
        })
        .to_string()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body()).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

/// An upstream error body `{"error":{...}}` rebuilt from its known fields, scrubbed; `None`
/// when it is not that shape.
pub(crate) fn rebuild_upstream_error(raw: &[u8], redactor: &Redactor) -> Option<String> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    let err = v.get("error")?.as_object()?;
    let field = |name: &str, max: usize| match err.get(name) {
        Some(Value::String(s)) => Value::String(clip(&redactor.redact_str(s), max)),
        Some(n @ Value::Number(_)) => n.clone(),
        Some(Value::Null) | None => Value::Null,
        Some(other) => Value::String(clip(&redactor.redact_str(&other.to_string()), max)),
    };
    let body = serde_json::json!({"error": {
        "message": field("message", 2000),
        "type": field("type", 200),
        "param": field("param", 200),
        "code": field("code", 200),
    }});
    Some(body.to_string())
}

/// At most `max` bytes of `s`, cut at a character boundary, with `…` when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_openai_shaped() {
        let e = ApiError::budget_exhausted("chat");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "budget_exhausted");
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert!(v["error"]["message"].as_str().unwrap().contains("chat"));
        assert!(v["error"]["param"].is_null());
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn upstream_errors_keep_only_known_fields_scrubbed() {
        let r = Redactor::new(["sk-live/0123456789abcdef"]);
        let raw = br#"{"error":{"message":"bad key sk-live\/0123456789abcdef","type":"invalid_request_error","code":"invalid_api_key","param":null,"echo":"sk-live/0123456789abcdef"},"headers":{"authorization":"x"}}"#;
        let out = rebuild_upstream_error(raw, &r).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"]["message"], "bad key [redacted]");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"].get("echo").is_none() && v.get("headers").is_none());
        assert!(rebuild_upstream_error(b"[1]", &r).is_none());
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h…");
        assert_eq!(clip("abc", 5), "abc");
    }
}
