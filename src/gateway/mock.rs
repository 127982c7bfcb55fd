//! Mock backends: answered inside the gateway, no network.
//!
//! A mock answers like the provider family it stands for, in the wire shape that family's usage
//! rules read ([`crate::pricing::parse_usage`]), so budgets, pricing and metrics treat it exactly
//! like the real provider. Token counts come from [`MockEndpoint`]: `inputTokens` is the prompt
//! including cache reads (`cachedInputTokens`), cache writes (`cacheWriteTokens`) come on top,
//! `outputTokens` is visible output and `reasoningTokens` comes on top of it. Families whose wire
//! format has no field for a kind do not report it: DeepSeek and Gemini have no cache-write
//! count, and Anthropic's native usage (the Responses shape here) folds reasoning into output.
//! Embeddings bill `inputTokens` as input only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine;
use bytes::Bytes;
use rand::RngExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::Endpoint;
use super::stream::BodyStream;
use super::upstream::UpstreamReply;
use crate::config::{MockEndpoint, ProviderFamily};
use crate::policy::money::{Ppm, parse_duration_ms};
use crate::pricing::TokenCounts;

const ANSWER: &str = "This is a mock answer from tollgate: no provider was called.";

static SEQ: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize, Default)]
struct MockRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<Value>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
}

/// The counts a mock reports, by kind, after the family's wire format (what `parse_usage`
/// returns for its answers).
pub fn mock_tokens(mock: &MockEndpoint, family: ProviderFamily, endpoint: Endpoint) -> TokenCounts {
    let c = Counts::of(mock);
    if endpoint == Endpoint::Embeddings {
        return TokenCounts { input: c.input, ..TokenCounts::default() };
    }
    let uncached = c.input - c.cached;
    let mut t = TokenCounts {
        input: uncached,
        cached_input: c.cached,
        cache_write: c.write,
        cache_write_1h: 0,
        output: c.output,
        reasoning: c.reasoning,
    };
    match family {
        ProviderFamily::DeepSeek | ProviderFamily::Gemini => t.cache_write = 0,
        ProviderFamily::Anthropic if endpoint == Endpoint::Responses => {
            t.output += t.reasoning;
            t.reasoning = 0;
        }
        _ => {}
    }
    t
}

struct Counts {
    input: u64,
    cached: u64,
    write: u64,
    output: u64,
    reasoning: u64,
}

impl Counts {
    fn of(m: &MockEndpoint) -> Self {
        let input = u64::from(m.input_tokens);
        Self {
            input,
            cached: u64::from(m.cached_input_tokens).min(input),
            write: u64::from(m.cache_write_tokens),
            output: u64::from(m.output_tokens),
            reasoning: u64::from(m.reasoning_tokens),
        }
    }
}

/// The `usage` object of a chat or legacy completion, in the family's wire shape.
fn completion_usage(c: &Counts, family: ProviderFamily) -> Value {
    let uncached = c.input - c.cached;
    match family {
        ProviderFamily::OpenAI | ProviderFamily::Mistral => json!({
            "prompt_tokens": c.input + c.write,
            "completion_tokens": c.output + c.reasoning,
            "total_tokens": c.input + c.write + c.output + c.reasoning,
            "prompt_tokens_details": {"cached_tokens": c.cached, "cache_write_tokens": c.write},
            "completion_tokens_details": {"reasoning_tokens": c.reasoning},
        }),
        ProviderFamily::Qwen => json!({
            "prompt_tokens": c.input + c.write,
            "completion_tokens": c.output + c.reasoning,
            "total_tokens": c.input + c.write + c.output + c.reasoning,
            "prompt_tokens_details": {"cached_tokens": c.cached, "cache_creation_input_tokens": c.write},
            "completion_tokens_details": {"reasoning_tokens": c.reasoning},
        }),
        ProviderFamily::DeepSeek => json!({
            "prompt_tokens": c.input,
            "completion_tokens": c.output + c.reasoning,
            "total_tokens": c.input + c.output + c.reasoning,
            "prompt_cache_hit_tokens": c.cached,
            "prompt_cache_miss_tokens": uncached,
            "completion_tokens_details": {"reasoning_tokens": c.reasoning},
        }),
        // Anthropic's OpenAI-compatible layer: cache reads and writes outside `prompt_tokens`.
        ProviderFamily::Anthropic => json!({
            "prompt_tokens": uncached,
            "completion_tokens": c.output + c.reasoning,
            "total_tokens": uncached + c.output + c.reasoning + c.cached + c.write,
            "cache_read_input_tokens": c.cached,
            "cache_creation_input_tokens": c.write,
            "completion_tokens_details": {"reasoning_tokens": c.reasoning},
        }),
        // Gemini's OpenAI-compatible layer: thoughts only in `total_tokens`.
        ProviderFamily::Gemini => json!({
            "prompt_tokens": c.input,
            "completion_tokens": c.output,
            "total_tokens": c.input + c.output + c.reasoning,
            "prompt_tokens_details": {"cached_tokens": c.cached},
            "completion_tokens_details": {"reasoning_tokens": c.reasoning},
        }),
    }
}

/// The `usage` object of a Responses API response.
fn responses_usage(c: &Counts, family: ProviderFamily) -> Value {
    match family {
        ProviderFamily::OpenAI | ProviderFamily::Mistral | ProviderFamily::Qwen => json!({
            "input_tokens": c.input + c.write,
            "input_tokens_details": {"cached_tokens": c.cached, "cache_write_tokens": c.write},
            "output_tokens": c.output + c.reasoning,
            "output_tokens_details": {"reasoning_tokens": c.reasoning},
            "total_tokens": c.input + c.write + c.output + c.reasoning,
        }),
        ProviderFamily::Anthropic => json!({
            "input_tokens": c.input - c.cached,
            "cache_read_input_tokens": c.cached,
            "cache_creation_input_tokens": c.write,
            "output_tokens": c.output + c.reasoning,
        }),
        ProviderFamily::DeepSeek | ProviderFamily::Gemini => completion_usage(c, family),
    }
}

fn embeddings_usage(c: &Counts, family: ProviderFamily) -> Value {
    match family {
        ProviderFamily::Anthropic => json!({"prompt_tokens": c.input, "completion_tokens": 0, "total_tokens": c.input}),
        _ => json!({"prompt_tokens": c.input, "total_tokens": c.input}),
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An in-process upstream reply (shared with the native-format mocks).
pub(crate) fn reply(status: StatusCode, content_type: &'static str, chunks: Vec<Bytes>) -> UpstreamReply {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let body: BodyStream = Box::pin(futures::stream::iter(chunks.into_iter().map(Ok)));
    UpstreamReply { status, headers, body }
}

/// A whole JSON reply.
pub(crate) fn json_reply(status: StatusCode, v: &Value) -> UpstreamReply {
    reply(status, "application/json", vec![Bytes::from(v.to_string())])
}

/// One server-sent event, with an `event:` line when named.
pub(crate) fn sse_event(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(e) => Bytes::from(format!("event: {e}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// What every mock does before it answers, in either wire format: waits its `latency`, then
/// draws the injected error (`errorRate`); `Some(status)` when this request is to fail.
pub(crate) async fn delay_then_fault(mock: &MockEndpoint) -> Option<StatusCode> {
    let latency = parse_duration_ms(&mock.latency).unwrap_or(0).max(0);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(u64::try_from(latency).unwrap_or(0))).await;
    }
    let error_ppm = mock.error_rate.parse::<Ppm>().map(|p| p.0).unwrap_or(0);
    (error_ppm > 0 && rand::rng().random_range(0..1_000_000u32) < error_ppm)
        .then(|| StatusCode::from_u16(mock.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
}

/// Answers one request as the mock would.
pub(crate) async fn respond(
    mock: &MockEndpoint,
    family: ProviderFamily,
    endpoint: Endpoint,
    body: &[u8],
) -> UpstreamReply {
    if let Some(status) = delay_then_fault(mock).await {
        let kind = if status == StatusCode::TOO_MANY_REQUESTS { "rate_limit_error" } else { "server_error" };
        return json_reply(
            status,
            &json!({"error": {"message": format!("mock error ({}) injected by tollgate", status.as_u16()), "type": kind, "param": null, "code": "mock_error"}}),
        );
    }
    let req: MockRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"message": format!("mock: invalid request body: {e}"), "type": "invalid_request_error", "param": null, "code": null}}),
            );
        }
    };
    let model = req.model.clone().unwrap_or_default();
    let c = Counts::of(mock);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let created = now_secs();
    let stream = req.stream.unwrap_or(false);
    let include_usage =
        req.stream_options.as_ref().and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    match endpoint {
        // `Messages` never reaches an OpenAI-shaped mock (it is sent as chat); served as chat.
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Messages => {
            let chat = endpoint != Endpoint::Completions;
            let (id, object) = if chat {
                (format!("chatcmpl-mock-{seq}"), if stream { "chat.completion.chunk" } else { "chat.completion" })
            } else {
                (format!("cmpl-mock-{seq}"), "text_completion")
            };
            let usage = completion_usage(&c, family);
            if !stream {
                let choice = if chat {
                    json!({"index": 0, "message": {"role": "assistant", "content": ANSWER, "refusal": null}, "logprobs": null, "finish_reason": "stop"})
                } else {
                    json!({"index": 0, "text": ANSWER, "logprobs": null, "finish_reason": "stop"})
                };
                return json_reply(
                    StatusCode::OK,
                    &json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice], "usage": usage}),
                );
            }
            let chunk = |choices: Value, usage: Option<&Value>| {
                let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
                if include_usage {
                    v["usage"] = usage.cloned().unwrap_or(Value::Null);
                }
                sse_event(None, &v)
            };
            let mut chunks = Vec::new();
            if chat {
                chunks.push(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None));
            }
            for (i, word) in ANSWER.split(' ').enumerate() {
                let text = if i == 0 { word.to_string() } else { format!(" {word}") };
                let choice = if chat {
                    json!([{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}])
                } else {
                    json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": null}])
                };
                chunks.push(chunk(choice, None));
            }
            let last = if chat {
                json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
            } else {
                json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}])
            };
            chunks.push(chunk(last, None));
            if include_usage {
                chunks.push(chunk(json!([]), Some(&usage)));
            }
            chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
            reply(StatusCode::OK, "text/event-stream", chunks)
        }
        Endpoint::Responses => {
            let id = format!("resp_mock_{seq}");
            let message = json!({"type": "message", "id": format!("msg_mock_{seq}"), "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]});
            let done = json!({"id": id, "object": "response", "created_at": created, "status": "completed", "model": model,
                "output": [message], "usage": responses_usage(&c, family)});
            if !stream {
                return json_reply(StatusCode::OK, &done);
            }
            let mut created_resp = done.clone();
            created_resp["status"] = json!("in_progress");
            created_resp["output"] = json!([]);
            created_resp["usage"] = Value::Null;
            let mut n = 0u64;
            let mut seqn = || {
                n += 1;
                n
            };
            let mut chunks = vec![sse_event(
                Some("response.created"),
                &json!({"type": "response.created", "sequence_number": seqn(), "response": created_resp}),
            )];
            for (i, word) in ANSWER.split(' ').enumerate() {
                let text = if i == 0 { word.to_string() } else { format!(" {word}") };
                chunks.push(sse_event(
                    Some("response.output_text.delta"),
                    &json!({"type": "response.output_text.delta", "sequence_number": seqn(), "item_id": format!("msg_mock_{seq}"), "output_index": 0, "content_index": 0, "delta": text}),
                ));
            }
            chunks.push(sse_event(
                Some("response.completed"),
                &json!({"type": "response.completed", "sequence_number": seqn(), "response": done}),
            ));
            reply(StatusCode::OK, "text/event-stream", chunks)
        }
        Endpoint::Embeddings => {
            let inputs = match &req.input {
                Some(Value::Array(a)) if a.iter().all(|x| x.is_string() || x.is_array()) => a.len().max(1),
                _ => 1,
            };
            let dims = req.dimensions.unwrap_or(8).clamp(1, 4096) as usize;
            let base64 = req.encoding_format.as_deref() == Some("base64");
            let data: Vec<Value> = (0..inputs)
                .map(|k| {
                    let v: Vec<f32> = (0..dims).map(|j| ((k * 31 + j * 7) % 100) as f32 / 100.0).collect();
                    let embedding = if base64 {
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                    } else {
                        json!(v)
                    };
                    json!({"object": "embedding", "index": k, "embedding": embedding})
                })
                .collect();
            json_reply(
                StatusCode::OK,
                &json!({"object": "list", "data": data, "model": model, "usage": embeddings_usage(&c, family)}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::gateway::stream::{SseProcessor, body_usage};

    const FAMILIES: [ProviderFamily; 6] = [
        ProviderFamily::OpenAI,
        ProviderFamily::Anthropic,
        ProviderFamily::DeepSeek,
        ProviderFamily::Gemini,
        ProviderFamily::Mistral,
        ProviderFamily::Qwen,
    ];
    const ENDPOINTS: [Endpoint; 4] =
        [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses];

    fn fast() -> MockEndpoint {
        MockEndpoint { latency: "0ms".into(), ..MockEndpoint::default() }
    }

    async fn collect(r: UpstreamReply) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = r.body;
        while let Some(c) = b.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn every_family_and_surface_bills_what_the_mock_says() {
        let m = fast();
        for family in FAMILIES {
            for endpoint in ENDPOINTS {
                let want = mock_tokens(&m, family, endpoint);
                let r = respond(&m, family, endpoint, br#"{"model":"up","input":["a","b"]}"#).await;
                assert_eq!(r.status, StatusCode::OK);
                let body = collect(r).await;
                let got = body_usage(family, &body).unwrap().unwrap_or_else(|e| panic!("{family:?} {endpoint:?}: {e}"));
                assert_eq!(got, want, "{family:?} {endpoint:?}");
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["model"], "up");
            }
        }
        // Defaults: every kind non-zero where the family's wire format has it.
        let t = mock_tokens(&MockEndpoint::default(), ProviderFamily::OpenAI, Endpoint::ChatCompletions);
        assert!(t.input > 0 && t.cached_input > 0 && t.cache_write > 0 && t.output > 0 && t.reasoning > 0);
        let t = mock_tokens(&MockEndpoint::default(), ProviderFamily::Anthropic, Endpoint::ChatCompletions);
        assert!(t.input > 0 && t.cached_input > 0 && t.cache_write > 0 && t.output > 0 && t.reasoning > 0);
    }

    #[tokio::test]
    async fn streams_carry_usage_in_the_final_chunk() {
        let m = fast();
        for family in FAMILIES {
            for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Responses] {
                let r = respond(
                    &m,
                    family,
                    endpoint,
                    br#"{"model":"up","stream":true,"stream_options":{"include_usage":true}}"#,
                )
                .await;
                assert_eq!(r.headers[header::CONTENT_TYPE], "text/event-stream");
                let body = collect(r).await;
                let mut p = SseProcessor::new(family, false, 1 << 24, std::sync::Arc::default());
                p.feed(body.clone().into());
                assert_eq!(p.usage().unwrap(), mock_tokens(&m, family, endpoint), "{family:?} {endpoint:?}");
            }
            // Without include_usage a chat stream has no usage at all.
            let r = respond(&m, family, Endpoint::ChatCompletions, br#"{"model":"up","stream":true}"#).await;
            let body = collect(r).await;
            assert!(!String::from_utf8(body).unwrap().contains("usage"));
        }
    }

    #[tokio::test]
    async fn injected_errors_use_the_configured_status() {
        let m = MockEndpoint {
            latency: "0ms".into(),
            error_rate: "1".into(),
            error_status: 429,
            ..MockEndpoint::default()
        };
        let r = respond(&m, ProviderFamily::OpenAI, Endpoint::ChatCompletions, br#"{"model":"up"}"#).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        let v: Value = serde_json::from_slice(&collect(r).await).unwrap();
        assert_eq!(v["error"]["code"], "mock_error");
    }

    #[tokio::test]
    async fn base64_embeddings_decode_to_floats() {
        let r = respond(
            &fast(),
            ProviderFamily::OpenAI,
            Endpoint::Embeddings,
            br#"{"model":"e","input":"x","encoding_format":"base64","dimensions":4}"#,
        )
        .await;
        let v: Value = serde_json::from_slice(&collect(r).await).unwrap();
        let raw =
            base64::engine::general_purpose::STANDARD.decode(v["data"][0]["embedding"].as_str().unwrap()).unwrap();
        assert_eq!(raw.len(), 16);
    }
}
