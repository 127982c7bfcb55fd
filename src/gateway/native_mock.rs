//! Mock backends with a native wire format (`endpoint.api: AnthropicMessages` or `Gemini`):
//! they answer in that upstream format, so the gateway's translation runs exactly as against
//! the real provider (`local` and the quick start exercise it).
//!
//! Token counts follow [`MockEndpoint`] as the OpenAI-shaped mocks do: `inputTokens` is the
//! prompt including cache reads (`cachedInputTokens`), `cacheWriteTokens` come on top,
//! `outputTokens` is visible output and `reasoningTokens` comes on top of it. Anthropic reports
//! `input_tokens` without cache reads and writes and folds thinking into `output_tokens`;
//! Gemini has no cache-write count (writes are not reported) and reports `thoughtsTokenCount`
//! apart. Injected errors use the provider's error body (`overloaded_error` for 529/503,
//! `rate_limit_error` / `RESOURCE_EXHAUSTED` for 429). A Messages request without
//! `max_tokens` is refused with 400 `invalid_request_error`, as Anthropic does.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::mock::{delay_then_fault, json_reply, reply, sse_event};
use super::upstream::UpstreamReply;
use crate::config::{MockEndpoint, WireApi};

const ANSWER: &str = "This is a mock answer from tollgate: no provider was called.";

struct Counts {
    input: u64,
    cached: u64,
    write: u64,
    output: u64,
    reasoning: u64,
}

fn error_reply(api: WireApi, status: StatusCode) -> UpstreamReply {
    let msg = format!("mock error ({}) injected by tollgate", status.as_u16());
    let body = match api {
        WireApi::Gemini => {
            let st = match status.as_u16() {
                429 => "RESOURCE_EXHAUSTED",
                400 => "INVALID_ARGUMENT",
                500 => "INTERNAL",
                _ => "UNAVAILABLE",
            };
            json!({ "error": { "code": status.as_u16(), "message": msg, "status": st } })
        }
        _ => {
            let kind = match status.as_u16() {
                429 => "rate_limit_error",
                400 => "invalid_request_error",
                503 | 529 => "overloaded_error",
                _ => "api_error",
            };
            json!({ "type": "error", "error": { "type": kind, "message": msg } })
        }
    };
    json_reply(status, &body)
}

/// Answers one native request as the mock would.
pub(crate) async fn respond(
    mock: &MockEndpoint,
    api: WireApi,
    model: &str,
    stream: bool,
    body: &[u8],
) -> UpstreamReply {
    if let Some(status) = delay_then_fault(mock).await {
        return error_reply(api, status);
    }
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if api == WireApi::AnthropicMessages && req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return json_reply(
            StatusCode::BAD_REQUEST,
            &json!({ "type": "error", "error": { "type": "invalid_request_error", "message": "max_tokens: Field required" } }),
        );
    }
    let input = u64::from(mock.input_tokens);
    let c = Counts {
        input,
        cached: u64::from(mock.cached_input_tokens).min(input),
        write: u64::from(mock.cache_write_tokens),
        output: u64::from(mock.output_tokens),
        reasoning: u64::from(mock.reasoning_tokens),
    };
    match api {
        WireApi::Gemini => gemini(&c, model, stream),
        _ => anthropic(&c, model, stream),
    }
}

fn anthropic(c: &Counts, model: &str, stream: bool) -> UpstreamReply {
    let usage = json!({
        "input_tokens": c.input - c.cached,
        "cache_read_input_tokens": c.cached,
        "cache_creation_input_tokens": c.write,
        "output_tokens": c.output + c.reasoning,
    });
    let id = "msg_mock";
    if !stream {
        return json_reply(
            StatusCode::OK,
            &json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [{ "type": "text", "text": ANSWER }],
                "stop_reason": "end_turn", "stop_sequence": null, "usage": usage,
            }),
        );
    }
    let start_usage = json!({
        "input_tokens": c.input - c.cached,
        "cache_read_input_tokens": c.cached,
        "cache_creation_input_tokens": c.write,
        "output_tokens": 1,
    });
    let chunks = vec![
        sse_event(
            Some("message_start"),
            &json!({ "type": "message_start", "message": { "id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage } }),
        ),
        sse_event(
            Some("content_block_start"),
            &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
        sse_event(Some("ping"), &json!({ "type": "ping" })),
        sse_event(
            Some("content_block_delta"),
            &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": ANSWER } }),
        ),
        sse_event(Some("content_block_stop"), &json!({ "type": "content_block_stop", "index": 0 })),
        sse_event(
            Some("message_delta"),
            &json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn", "stop_sequence": null }, "usage": { "output_tokens": c.output + c.reasoning } }),
        ),
        sse_event(Some("message_stop"), &json!({ "type": "message_stop" })),
    ];
    reply(StatusCode::OK, "text/event-stream", chunks)
}

fn gemini(c: &Counts, model: &str, stream: bool) -> UpstreamReply {
    let mut usage = json!({
        "promptTokenCount": c.input,
        "candidatesTokenCount": c.output,
        "totalTokenCount": c.input + c.output + c.reasoning,
    });
    if c.cached > 0 {
        usage["cachedContentTokenCount"] = c.cached.into();
    }
    if c.reasoning > 0 {
        usage["thoughtsTokenCount"] = c.reasoning.into();
    }
    let done = json!({
        "candidates": [{ "content": { "role": "model", "parts": [{ "text": ANSWER }] }, "finishReason": "STOP", "index": 0 }],
        "usageMetadata": usage,
        "modelVersion": model,
    });
    if !stream {
        return json_reply(StatusCode::OK, &done);
    }
    let (a, b) = ANSWER.split_at(ANSWER.len() / 2);
    let first = json!({
        "candidates": [{ "content": { "role": "model", "parts": [{ "text": a }] }, "index": 0 }],
        "modelVersion": model,
    });
    let mut last = done;
    last["candidates"][0]["content"]["parts"][0]["text"] = b.into();
    reply(StatusCode::OK, "text/event-stream", vec![sse_event(None, &first), sse_event(None, &last)])
}
