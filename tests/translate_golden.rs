//! Golden translation cases: for each wire format, request in → upstream request out, and
//! upstream answer / SSE stream in → client answer out, with tools, images, thinking, cache
//! tokens (5-minute / 1-hour split), errors and truncated streams. Every cost is worked by hand
//! in a comment; the convention is the one of `tests/pricing_golden.rs`: `n × $P/1M` is written
//! in micro-units (n × P), and their sum / 1,000,000 is USD; 1 micro-unit = 1,000,000 pico-USD.
//!
//! Stream translators are also fed every split of their golden stream (every single split point,
//! and byte by byte) and random partitions (proptest): the output must not depend on where the
//! bytes were cut.

use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate::api::{Pricing, ProviderFamily};
use tollgate::gateway::translate::errors::ErrorClass;
use tollgate::gateway::translate::openai::ChatRequest;
use tollgate::gateway::translate::sse::SseParser;
use tollgate::gateway::translate::{
    AnthropicRequestOptions, AnthropicStream, ChatToMessagesStream, GeminiStream, InboundOptions, StreamOutput,
    TranslateError, UsageReport, anthropic_error, chat_response_to_messages, chat_to_gemini, chat_to_messages,
    gemini_error, gemini_response_to_chat, gemini_url, messages_response_to_chat, messages_to_chat, openai_error,
    openai_error_to_anthropic, replace_model, thinking_budget,
};
use tollgate::pricing::{Prices, TokenCounts};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// USD per 1M tokens: input, cached input, cache write, output.
fn prices(input: &str, cached: &str, write: &str, output: &str) -> Prices {
    Prices::from_spec(&Pricing {
        input: input.into(),
        cached_input: Some(cached.into()),
        cache_write: Some(write.into()),
        // Anthropic's rule applies (twice `input`).
        cache_write_1h: None,
        output: output.into(),
        reasoning: None,
    })
    .unwrap()
}

/// Claude Sonnet 4.5: $3 in, $0.30 cache read, $3.75 cache write (5 minutes), $6 cache write
/// (1 hour, 2 × input by default), $15 out.
fn sonnet_4_5() -> Prices {
    prices("3", "0.30", "3.75", "15")
}
/// Claude Haiku 4.5: $1 in, $0.10 cache read, $1.25 cache write, $5 out.
fn haiku_4_5() -> Prices {
    prices("1", "0.10", "1.25", "5")
}
/// Gemini 2.5 Flash: $0.30 in, $0.03 cached, $2.50 out (thinking = output price).
fn gemini_2_5_flash() -> Prices {
    prices("0.30", "0.03", "0.30", "2.50")
}
/// OpenAI gpt-4.1: $2 in, $0.50 cached, $8 out.
fn gpt_4_1() -> Prices {
    prices("2.00", "0.50", "2.00", "8.00")
}

const PICO_PER_MICRO: i128 = 1_000_000;

fn chat(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

fn anthropic_opts() -> AnthropicRequestOptions {
    AnthropicRequestOptions { model: "claude-sonnet-4-5".into(), default_max_tokens: 4096 }
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

fn counts(input: u64, cached_input: u64, cache_write: u64, output: u64, reasoning: u64) -> TokenCounts {
    TokenCounts { input, cached_input, cache_write, cache_write_1h: 0, output, reasoning }
}

fn chunks_of(outputs: &[StreamOutput]) -> Vec<Value> {
    outputs
        .iter()
        .map(|o| match o {
            StreamOutput::Chunk(c) => to_value(c),
            StreamOutput::Error(e) => json!({ "error": e.kind }),
        })
        .collect()
}

/// Every way of cutting `bytes` in two, plus byte by byte.
fn partitions(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all: Vec<Vec<&[u8]>> = (0..=bytes.len()).map(|i| vec![&bytes[..i], &bytes[i..]]).collect();
    all.push(bytes.chunks(1).collect());
    all
}

// ---------------------------------------------------------------------------------------------
// OpenAI → Anthropic Messages: requests
// ---------------------------------------------------------------------------------------------

#[test]
fn anthropic_request_basic_fields_and_dropped() {
    let req = chat(json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "How are you?"}
        ],
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "seed": 7,
        "presence_penalty": 0.5,
        "user": "u-42",
        "stream": true,
        "stream_options": {"include_usage": true}
    }));
    let out = chat_to_messages(&req, &anthropic_opts()).unwrap();
    assert_eq!(
        to_value(&out.value),
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
                {"role": "user", "content": [{"type": "text", "text": "How are you?"}]}
            ],
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_p": 0.9,
            "stream": true,
            "metadata": {"user_id": "u-42"}
        })
    );
    assert_eq!(out.dropped, vec!["presence_penalty", "seed"]);
}

#[test]
fn anthropic_request_merges_turns_and_maps_tools() {
    let req = chat(json!({
        "model": "chat",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "user", "content": "And Rome."},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "Thanks, compare them."},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "24C"}]}
        ],
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Current weather", "strict": true,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "required",
        "parallel_tool_calls": false
    }));
    let out = chat_to_messages(&req, &anthropic_opts()).unwrap();
    assert_eq!(
        to_value(&out.value),
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}, {"type": "text", "text": "And Rome."}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}}
                ]},
                // Tool results lead the user turn, in order, before the user's own text.
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "24C"}]},
                    {"type": "text", "text": "Thanks, compare them."}
                ]}
            ],
            "tools": [{"name": "weather", "description": "Current weather",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
    assert_eq!(out.dropped, vec!["tools[].function.strict"]);
}

#[test]
fn anthropic_request_images_and_cache_control() {
    let req = chat(json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Long policy…", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Compare", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]}
        ],
        "max_completion_tokens": 100
    }));
    let out = chat_to_messages(&req, &anthropic_opts()).unwrap();
    assert_eq!(
        to_value(&out.value),
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Long policy…", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Compare", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ]}]
        })
    );
    assert_eq!(out.dropped, vec!["image_url.detail"]);
}

#[test]
fn anthropic_request_thinking_budgets() {
    let base = |extra: Value| {
        let mut v = json!({"model": "chat", "messages": [{"role": "user", "content": "Think."}], "temperature": 0.5});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        chat(v)
    };
    // No client cap: the default 4096 plus the medium budget 8192 = 12288.
    let out = chat_to_messages(&base(json!({"reasoning_effort": "medium"})), &anthropic_opts()).unwrap();
    assert_eq!(out.value.max_tokens, 12288);
    assert_eq!(out.value.thinking, Some(json!({"type": "enabled", "budget_tokens": 8192})));
    assert_eq!(out.value.temperature, None);
    assert_eq!(out.dropped, vec!["temperature"]);
    // Client cap 3000 below the high budget 24576: the budget is clamped to 2999.
    let out =
        chat_to_messages(&base(json!({"reasoning_effort": "high", "max_tokens": 3000})), &anthropic_opts()).unwrap();
    assert_eq!(out.value.max_tokens, 3000);
    assert_eq!(out.value.thinking, Some(json!({"type": "enabled", "budget_tokens": 2999})));
    // Client cap 10000 above the low budget: kept as is.
    let out =
        chat_to_messages(&base(json!({"reasoning_effort": "low", "max_tokens": 10000})), &anthropic_opts()).unwrap();
    assert_eq!(
        (out.value.max_tokens, out.value.thinking),
        (10000, Some(json!({"type": "enabled", "budget_tokens": 2048})))
    );
    // `none`: no thinking, temperature kept.
    let out = chat_to_messages(&base(json!({"reasoning_effort": "none"})), &anthropic_opts()).unwrap();
    assert_eq!((out.value.thinking, out.value.temperature), (None, Some(0.5)));
    // A cap that leaves less than Anthropic's 1024-token minimum is refused, naming the field.
    let err =
        chat_to_messages(&base(json!({"reasoning_effort": "low", "max_completion_tokens": 1000})), &anthropic_opts())
            .unwrap_err();
    assert_eq!(err.field(), Some("max_completion_tokens"));
    assert!(err.client_message().contains("max_completion_tokens=1000"), "{err}");
    // A forced tool cannot be combined with thinking.
    let err = chat_to_messages(
        &base(json!({"reasoning_effort": "low", "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f"}}]})),
        &anthropic_opts(),
    )
    .unwrap_err();
    assert_eq!(err.field(), Some("tool_choice"));
    let err = chat_to_messages(&base(json!({"reasoning_effort": "extreme"})), &anthropic_opts()).unwrap_err();
    assert_eq!(err.field(), Some("reasoning_effort"));
}

#[test]
fn thinking_budget_table() {
    let table = [
        ("none", None, Some(0)),
        ("minimal", Some(1024), Some(512)),
        ("low", Some(2048), Some(2048)),
        ("medium", Some(8192), Some(8192)),
        ("high", Some(24576), Some(24576)),
    ];
    for (effort, anthropic, gemini) in table {
        assert_eq!(thinking_budget(effort, false).unwrap(), anthropic, "{effort}");
        assert_eq!(thinking_budget(effort, true).unwrap(), gemini, "{effort}");
    }
}

#[test]
fn anthropic_request_refusals_name_the_field() {
    let user = json!([{"role": "user", "content": "x"}]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"messages": user, "n": 2}), "n"),
        (json!({"messages": user, "logprobs": true}), "logprobs"),
        (json!({"messages": user, "top_logprobs": 3}), "top_logprobs"),
        (json!({"messages": user, "response_format": {"type": "json_object"}}), "response_format.type"),
        (json!({"messages": user, "modalities": ["text", "audio"]}), "modalities"),
        (json!({"messages": user, "functions": []}), "functions"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            "messages[0].content[0].type",
        ),
        (json!({"messages": [{"role": "function", "content": "x", "name": "f"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id"),
        (json!({"messages": user, "tools": [{"type": "web_search"}]}), "tools[0].type"),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (json!({"messages": [{"role": "system", "content": "only system"}]}), "messages"),
    ];
    for (body, field) in cases {
        let err = chat_to_messages(&chat(body.clone()), &anthropic_opts()).unwrap_err();
        assert_eq!(err.field(), Some(field), "{body}: {err}");
        assert!(err.client_message().contains(field), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages → OpenAI: answers
// ---------------------------------------------------------------------------------------------

#[test]
fn anthropic_answer_with_thinking_tools_and_cache_split() {
    let body = json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCgIYAhIM"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A", "name": "weather", "input": {"city": "Paris"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 500,
            "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 200},
            "output_tokens": 250,
            "service_tier": "standard"
        }
    });
    let answer = messages_response_to_chat(&body, 1_767_225_600).unwrap();
    assert_eq!(
        to_value(&answer.completion),
        json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "object": "chat.completion",
            "created": 1_767_225_600u64,
            "model": "claude-sonnet-4-5-20250929",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "reasoning_content": "The user wants weather.",
                    "tool_calls": [{"id": "toolu_01A", "type": "function",
                                    "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]
                },
                "finish_reason": "tool_calls"
            }],
            // prompt = 100 + 2000 + 500 = 2600; cached = 2000; total = 2600 + 250 = 2850.
            "usage": {"prompt_tokens": 2600, "completion_tokens": 250, "total_tokens": 2850,
                      "prompt_tokens_details": {"cached_tokens": 2000}}
        })
    );
    // The 500 written tokens split by lifetime: 300 for 5 minutes, 200 for an hour.
    assert_eq!(
        answer.usage.counts,
        TokenCounts {
            input: 100,
            cached_input: 2000,
            cache_write: 300,
            cache_write_1h: 200,
            output: 250,
            reasoning: 0
        }
    );
    // Sonnet 4.5: 100 × 3 = 300; 2000 × 0.30 = 600; 300 × 3.75 = 1125; 200 × 6 = 1200;
    // 250 × 15 = 3750. 300 + 600 + 1125 + 1200 + 3750 = 6975 micro → $0.006975.
    assert_eq!(answer.usage.cost(&sonnet_4_5()).picos(), 6975 * PICO_PER_MICRO);
}

#[test]
fn anthropic_stop_reasons() {
    let table = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ];
    for (stop, finish) in table {
        let body = json!({"id": "m", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": "x"}], "stop_reason": stop,
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        let a = messages_response_to_chat(&body, 0).unwrap();
        assert_eq!(a.completion.choices[0].finish_reason.as_deref(), Some(finish), "{stop}");
    }
}

#[test]
fn anthropic_answer_without_usage_is_an_error_never_zero() {
    let body = json!({"id": "m", "type": "message", "role": "assistant", "model": "c",
        "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn"});
    assert!(matches!(messages_response_to_chat(&body, 0), Err(TranslateError::Usage(_))));
    let not_a_message = json!({"type": "error", "error": {"type": "api_error", "message": "boom"}});
    assert_eq!(messages_response_to_chat(&not_a_message, 0).unwrap_err().field(), Some("type"));
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages SSE → chat.completion.chunk
// ---------------------------------------------------------------------------------------------

const ANTHROPIC_STREAM: &str = "event: message_start\r\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-haiku-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":50,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1000,\"output_tokens\":1}}}\r\n\r\n\
event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Hmm, \u{e9}t\u{e9}.\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQB\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking \u{2600}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
: keep-alive comment\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"weather\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":120}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn anthropic_expected_chunks() -> Vec<Value> {
    let c = |delta: Value, finish: Value| {
        json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 1700u64, "model": "claude-haiku-4-5",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    vec![
        c(json!({"role": "assistant", "content": ""}), Value::Null),
        c(json!({"reasoning_content": "Hmm, \u{e9}t\u{e9}."}), Value::Null),
        c(json!({"content": "Checking \u{2600}"}), Value::Null),
        c(
            json!({"tool_calls": [{"index": 0, "id": "toolu_9", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
            Value::Null,
        ),
        c(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}), Value::Null),
        c(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}), Value::Null),
        c(json!({}), json!("tool_calls")),
        // Usage chunk: prompt = 50 + 1000 + 0 = 1050 (1000 cached); completion 120.
        json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 1700u64, "model": "claude-haiku-4-5",
               "choices": [], "usage": {"prompt_tokens": 1050, "completion_tokens": 120, "total_tokens": 1170,
                                        "prompt_tokens_details": {"cached_tokens": 1000}}}),
    ]
}

fn run_anthropic(parts: &[&[u8]], include_usage: bool) -> (Vec<Value>, UsageReport) {
    let mut s = AnthropicStream::new(1700, include_usage);
    let mut out = Vec::new();
    for p in parts {
        out.extend(s.push(p).unwrap());
    }
    let (tail, usage) = s.finish().unwrap();
    out.extend(tail);
    (chunks_of(&out), usage)
}

#[test]
fn anthropic_stream_golden() {
    let (chunks, usage) = run_anthropic(&[ANTHROPIC_STREAM.as_bytes()], true);
    assert_eq!(chunks, anthropic_expected_chunks());
    // message_start input counts, message_delta's cumulative output count.
    assert_eq!(usage.counts, counts(50, 1000, 0, 120, 0));
    // Haiku 4.5: 50 × 1 = 50; 1000 × 0.10 = 100; 120 × 5 = 600. 750 micro → $0.00075.
    assert_eq!(usage.cost(&haiku_4_5()).picos(), 750 * PICO_PER_MICRO);
    // Without include_usage: the same chunks minus the usage chunk; usage still metered.
    let (chunks, usage2) = run_anthropic(&[ANTHROPIC_STREAM.as_bytes()], false);
    assert_eq!(chunks, anthropic_expected_chunks()[..7].to_vec());
    assert_eq!(usage2, usage);
}

#[test]
fn anthropic_stream_every_split_point() {
    let bytes = ANTHROPIC_STREAM.as_bytes();
    let expected = anthropic_expected_chunks();
    for parts in partitions(bytes) {
        let (chunks, usage) = run_anthropic(&parts, true);
        assert_eq!(chunks, expected, "split {:?}", parts.iter().map(|p| p.len()).collect::<Vec<_>>());
        assert_eq!(usage.counts, counts(50, 1000, 0, 120, 0));
    }
}

#[test]
fn anthropic_stream_message_delta_with_full_usage_and_cache_split() {
    // Newer API versions repeat every count in message_delta (cumulative); they win.
    let stream = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":4000,\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":1000,\"ephemeral_1h_input_tokens\":3000},\"output_tokens\":30}}\n\n\
data: {\"type\":\"message_stop\"}\n\n";
    let mut s = AnthropicStream::new(5, false);
    let out = chunks_of(&s.push(stream.as_bytes()).unwrap());
    assert_eq!(out[1]["choices"][0]["delta"], json!({"content": "Hi"}));
    assert_eq!(out[2]["choices"][0]["finish_reason"], json!("length"));
    let (_, usage) = s.finish().unwrap();
    // The cache_creation breakdown merged from message_delta splits the 4000 writes by
    // lifetime: 1000 for 5 minutes, 3000 for an hour.
    assert_eq!(
        usage.counts,
        TokenCounts { input: 12, cached_input: 0, cache_write: 1000, cache_write_1h: 3000, output: 30, reasoning: 0 }
    );
    // Sonnet 4.5: 12 × 3 = 36; 1000 × 3.75 = 3750; 3000 × 6 (2 × $3) = 18000; 30 × 15 = 450.
    // 36 + 3750 + 18000 + 450 = 22236 micro → $0.022236.
    assert_eq!(usage.cost(&sonnet_4_5()).picos(), 22236 * PICO_PER_MICRO);
}

#[test]
fn anthropic_stream_truncated_is_a_typed_error_with_partial_usage() {
    let cut = ANTHROPIC_STREAM.find("event: message_delta").unwrap();
    for end in [0, 10, cut, ANTHROPIC_STREAM.len() - 3] {
        let mut s = AnthropicStream::new(0, true);
        let pushed = s.push(&ANTHROPIC_STREAM.as_bytes()[..end]);
        let finished = pushed.and_then(|_| s.finish());
        match finished {
            Err(TranslateError::Truncated { expected: "message_stop", .. }) => {}
            // Cut inside the final event's JSON: that event does not parse.
            Err(TranslateError::Invalid { .. }) if end == ANTHROPIC_STREAM.len() - 3 => {}
            other => panic!("cut at {end}: {other:?}"),
        }
        if end == cut {
            // Input counts from message_start, output as counted so far (1).
            assert_eq!(s.partial_usage().unwrap().counts, counts(50, 1000, 0, 1, 0));
        }
        if end == ANTHROPIC_STREAM.len() - 3 {
            // message_delta arrived (output 120), message_stop did not.
            assert_eq!(s.partial_usage().unwrap().counts, counts(50, 1000, 0, 120, 0));
        }
    }
    assert!(AnthropicStream::new(0, true).partial_usage().is_none());
}

#[test]
fn anthropic_stream_error_event() {
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
    let mut s = AnthropicStream::new(0, true);
    let out = s.push(stream.as_bytes()).unwrap();
    let StreamOutput::Error(e) = &out[1] else { panic!("{out:?}") };
    assert_eq!((e.class, e.kind.as_str(), e.client_status()), (ErrorClass::Retryable, "overloaded_error", 503));
    assert!(matches!(s.finish(), Err(TranslateError::Upstream(_))));
}

#[test]
fn anthropic_stream_event_size_is_bounded() {
    let mut s = AnthropicStream::with_limit(0, false, 64);
    let big = format!("data: {{\"type\":\"ping\",\"pad\":\"{}\"}}\n\n", "x".repeat(100));
    assert_eq!(s.push(big.as_bytes()).unwrap_err(), TranslateError::EventTooLarge { limit: 64 });
    // Poisoned: later input fails the same way, never panics.
    assert!(matches!(s.push(b"data: {}\n\n"), Err(TranslateError::EventTooLarge { .. })));
    // A line that never ends is bounded too.
    let mut s = AnthropicStream::with_limit(0, false, 64);
    assert!(s.push(&[b'a'; 40]).is_ok());
    assert!(matches!(s.push(&[b'a'; 40]), Err(TranslateError::EventTooLarge { limit: 64 })));
}

#[test]
fn anthropic_stream_rejects_json_delta_for_a_non_tool_block() {
    let stream = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n";
    let err = AnthropicStream::new(0, false).push(stream.as_bytes()).unwrap_err();
    assert_eq!(err.field(), Some("content_block_delta.index"));
}

// ---------------------------------------------------------------------------------------------
// SSE parser
// ---------------------------------------------------------------------------------------------

#[test]
fn sse_line_endings_comments_and_multiline_data() {
    let mut p = SseParser::new(1024);
    let mut evs = p.push(b"event: a\rdata: 1\r\ndata:2\n\n: c\n\ndata: x\r").unwrap();
    evs.extend(p.push(b"\n\r\n").unwrap());
    assert_eq!(evs.len(), 2);
    assert_eq!((evs[0].event.as_deref(), evs[0].data.as_str()), (Some("a"), "1\n2"));
    assert_eq!((evs[1].event.as_deref(), evs[1].data.as_str()), (None, "x"));
    assert!(p.is_idle());
    // A last event without its blank line is dispatched at the end of the body.
    assert!(p.push(b"data: tail").unwrap().is_empty());
    assert_eq!(p.finish().unwrap().unwrap().data, "tail");
    // Invalid UTF-8 is a typed error.
    assert!(matches!(SseParser::new(64).push(b"data: \xff\n\n"), Err(TranslateError::Invalid { .. })));
}

// ---------------------------------------------------------------------------------------------
// OpenAI → Gemini: requests
// ---------------------------------------------------------------------------------------------

#[test]
fn gemini_urls() {
    let b = "https://generativelanguage.googleapis.com";
    assert_eq!(
        gemini_url(b, "gemini-2.5-flash", false).unwrap(),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        gemini_url("https://generativelanguage.googleapis.com/v1beta/", "models/gemini-2.5-pro", true).unwrap(),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    );
    assert_eq!(gemini_url(b, "../x", false).unwrap_err().field(), Some("model"));
    assert_eq!(gemini_url(b, "", false).unwrap_err().field(), Some("model"));
}

#[test]
fn gemini_request_basic_and_generation_config() {
    let req = chat(json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "Plan a trip", "cache_control": {"type": "ephemeral"}}]}
        ],
        "max_tokens": 500,
        "temperature": 0.7,
        "top_p": 0.95,
        "stop": ["END", "STOP"],
        "seed": 42,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "trip", "schema": {"type": "object"}}},
        "logit_bias": {"1": 2},
        "stream": true
    }));
    let out = chat_to_gemini(&req).unwrap();
    assert_eq!(
        to_value(&out.value),
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello!"}]},
                {"role": "user", "parts": [{"text": "Plan a trip"}]}
            ],
            "generationConfig": {
                "maxOutputTokens": 500, "temperature": 0.7, "topP": 0.95, "stopSequences": ["END", "STOP"],
                "seed": 42, "presencePenalty": 0.1, "frequencyPenalty": 0.2,
                "thinkingConfig": {"thinkingBudget": 2048},
                "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}
            }
        })
    );
    assert_eq!(out.dropped, vec!["logit_bias", "cache_control"]);
}

#[test]
fn gemini_request_tools_calls_results_and_signatures() {
    let req = chat(json!({
        "model": "chat",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_0__thought__c2lnLTE=", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_0__thought__c2lnLTE=", "content": "{\"temp\": 18}"},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": true
    }));
    let out = chat_to_gemini(&req).unwrap();
    assert_eq!(
        to_value(&out.value),
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
                {"role": "model", "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLTE="},
                    {"functionCall": {"name": "weather", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "weather", "response": {"temp": 18}}},
                    {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}}
                ]}
            ],
            "tools": [{"functionDeclarations": [{"name": "weather", "description": "Weather",
                "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}
        })
    );
    assert_eq!(out.dropped, vec!["parallel_tool_calls"]);
}

#[test]
fn gemini_request_images() {
    let req = chat(json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a/photo.JPG?size=large"}}
    ]}]}));
    let out = chat_to_gemini(&req).unwrap();
    assert_eq!(
        to_value(&out.value.contents),
        json!([{"role": "user", "parts": [
            {"inlineData": {"mimeType": "image/webp", "data": "UklGR"}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/a/photo.JPG?size=large"}}
        ]}])
    );
}

#[test]
fn gemini_request_refusals_name_the_field() {
    let user = json!([{"role": "user", "content": "x"}]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"messages": user, "n": 3}), "n"),
        (json!({"messages": user, "logprobs": true}), "logprobs"),
        (json!({"messages": user, "audio": {}}), "audio"),
        (json!({"messages": user, "response_format": {"type": "grammar"}}), "response_format.type"),
        (json!({"messages": user, "response_format": {"type": "json_schema"}}), "response_format.json_schema.schema"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/img"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}), "messages[0].tool_call_id"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}),
            "messages[0].content[0].type",
        ),
        (json!({"messages": user, "reasoning_effort": "max"}), "reasoning_effort"),
    ];
    for (body, field) in cases {
        let err = chat_to_gemini(&chat(body.clone())).unwrap_err();
        assert_eq!(err.field(), Some(field), "{body}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Gemini → OpenAI: answers and streams
// ---------------------------------------------------------------------------------------------

#[test]
fn gemini_answer_with_thoughts_calls_and_cache() {
    let body = json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "Considering the cities.", "thought": true},
                {"text": "Here you go."},
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"}
            ]},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {"promptTokenCount": 1200, "cachedContentTokenCount": 1000, "candidatesTokenCount": 80,
                          "thoughtsTokenCount": 300, "totalTokenCount": 1580},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1"
    });
    let a = gemini_response_to_chat(&body, "gemini-2.5-flash", 99).unwrap();
    assert_eq!(
        to_value(&a.completion),
        json!({
            "id": "resp-1", "object": "chat.completion", "created": 99, "model": "gemini-2.5-flash",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "Here you go.", "reasoning_content": "Considering the cities.",
                "tool_calls": [{"id": "call_0__thought__c2ln", "type": "function",
                                "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                "finish_reason": "tool_calls"}],
            // prompt 1200 (1000 cached); completion = 80 + 300 thoughts = 380.
            "usage": {"prompt_tokens": 1200, "completion_tokens": 380, "total_tokens": 1580,
                      "prompt_tokens_details": {"cached_tokens": 1000},
                      "completion_tokens_details": {"reasoning_tokens": 300}}
        })
    );
    assert_eq!(a.usage.counts, counts(200, 1000, 0, 80, 300));
    // Gemini 2.5 Flash: 200 × 0.30 = 60; 1000 × 0.03 = 30; 80 × 2.50 = 200; 300 × 2.50 = 750.
    // 1040 micro → $0.00104.
    assert_eq!(a.usage.cost(&gemini_2_5_flash()).picos(), 1040 * PICO_PER_MICRO);
}

#[test]
fn gemini_finish_reasons_and_blocked_prompt() {
    let table = [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
    ];
    for (reason, finish) in table {
        let body = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}],
                          "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4}});
        let a = gemini_response_to_chat(&body, "g", 0).unwrap();
        assert_eq!(a.completion.choices[0].finish_reason.as_deref(), Some(finish), "{reason}");
    }
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"},
                         "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}});
    let a = gemini_response_to_chat(&blocked, "g", 0).unwrap();
    assert_eq!(a.completion.choices[0].finish_reason.as_deref(), Some("content_filter"));
    assert_eq!(a.completion.choices[0].message.content.as_deref(), Some(""));
    assert_eq!(a.usage.counts, counts(7, 0, 0, 0, 0));
    // No usageMetadata: never billed as zero.
    let no_usage = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}]});
    assert!(matches!(gemini_response_to_chat(&no_usage, "g", 0), Err(TranslateError::Usage(_))));
}

const GEMINI_STREAM: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Thinking\u{2026}\", \"thought\": true}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 40,\"totalTokenCount\": 40},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r-7\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Bonjour \u{e0} \"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 40,\"totalTokenCount\": 40},\"responseId\": \"r-7\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"vous.\"},{\"functionCall\": {\"name\": \"log\",\"args\": {\"n\": 1}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 40,\"candidatesTokenCount\": 12,\"totalTokenCount\": 77,\"thoughtsTokenCount\": 25},\"responseId\": \"r-7\"}\r\n\r\n";

fn gemini_expected_chunks() -> Vec<Value> {
    let c = |delta: Value, finish: Value| {
        json!({"id": "r-7", "object": "chat.completion.chunk", "created": 3u64, "model": "gemini-2.5-flash",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    vec![
        c(json!({"role": "assistant", "content": ""}), Value::Null),
        c(json!({"reasoning_content": "Thinking\u{2026}"}), Value::Null),
        c(json!({"content": "Bonjour \u{e0} "}), Value::Null),
        c(json!({"content": "vous."}), Value::Null),
        c(
            json!({"tool_calls": [{"index": 0, "id": "call_0", "type": "function", "function": {"name": "log", "arguments": "{\"n\":1}"}}]}),
            Value::Null,
        ),
        c(json!({}), json!("tool_calls")),
        // prompt 40; completion = 12 + 25 thoughts = 37.
        json!({"id": "r-7", "object": "chat.completion.chunk", "created": 3u64, "model": "gemini-2.5-flash", "choices": [],
               "usage": {"prompt_tokens": 40, "completion_tokens": 37, "total_tokens": 77,
                         "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 25}}}),
    ]
}

fn run_gemini(parts: &[&[u8]]) -> (Vec<Value>, UsageReport) {
    let mut s = GeminiStream::new("gemini-2.5-flash", 3, true);
    let mut out = Vec::new();
    for p in parts {
        out.extend(s.push(p).unwrap());
    }
    let (tail, usage) = s.finish().unwrap();
    out.extend(tail);
    (chunks_of(&out), usage)
}

#[test]
fn gemini_stream_golden_and_every_split_point() {
    let expected = gemini_expected_chunks();
    let (chunks, usage) = run_gemini(&[GEMINI_STREAM.as_bytes()]);
    assert_eq!(chunks, expected);
    assert_eq!(usage.counts, counts(40, 0, 0, 12, 25));
    // Gemini 2.5 Flash: 40 × 0.30 = 12; 12 × 2.50 = 30; 25 × 2.50 = 62.5. 104.5 micro → $0.0001045.
    assert_eq!(usage.cost(&gemini_2_5_flash()).picos(), 104_500_000);
    for parts in partitions(GEMINI_STREAM.as_bytes()) {
        assert_eq!(run_gemini(&parts).0, expected);
    }
}

#[test]
fn gemini_stream_truncated_and_error() {
    let cut = GEMINI_STREAM.rfind("data:").unwrap();
    let mut s = GeminiStream::new("g", 0, false);
    s.push(&GEMINI_STREAM.as_bytes()[..cut]).unwrap();
    assert!(matches!(s.finish(), Err(TranslateError::Truncated { format: "Gemini", .. })));
    assert_eq!(s.partial_usage().unwrap().counts, counts(40, 0, 0, 0, 0));
    let mut s = GeminiStream::new("g", 0, false);
    let out = s
        .push(b"data: {\"error\": {\"code\": 429, \"message\": \"Quota exceeded\", \"status\": \"RESOURCE_EXHAUSTED\"}}\n\n")
        .unwrap();
    assert_eq!(chunks_of(&out), vec![json!({"error": "RESOURCE_EXHAUSTED"})]);
    assert!(matches!(s.finish(), Err(TranslateError::Upstream(e)) if e.class == ErrorClass::RateLimited));
}

// ---------------------------------------------------------------------------------------------
// Inbound /v1/messages
// ---------------------------------------------------------------------------------------------

#[test]
fn inbound_messages_request_to_chat() {
    let body = json!({
        "model": "chat",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image, and the weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "…", "signature": "sig"},
                {"type": "text", "text": "A cat."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}], "is_error": false},
                {"type": "text", "text": "Thanks"}
            ]}
        ],
        "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.3,
        "top_k": 40,
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "metadata": {"user_id": "u-1"},
        "stream": true
    });
    let opts = InboundOptions { model: "gpt-4.1".into(), max_completion_tokens: true };
    let out = messages_to_chat(&body, &opts).unwrap();
    assert_eq!(
        to_value(&out.value),
        json!({
            "model": "gpt-4.1",
            "max_completion_tokens": 1024,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
                ]},
                {"role": "assistant", "content": "A cat.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "user", "content": [{"type": "text", "text": "Thanks"}]}
            ],
            "stop": ["\n\nHuman:"],
            "temperature": 0.3,
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "reasoning_effort": "medium",
            "user": "u-1"
        })
    );
    assert_eq!(out.dropped, vec!["top_k", "cache_control", "thinking blocks", "is_error"]);
    // The same request can continue to Gemini.
    let gem = chat_to_gemini(&out.value).unwrap();
    assert_eq!(gem.value.contents.len(), 3);
    // Refusals.
    let refuse = |patch: Value, field: &str| {
        let mut b = json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
        b.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        assert_eq!(messages_to_chat(&b, &opts).unwrap_err().field(), Some(field), "{b}");
    };
    refuse(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}), "tools[0].type");
    refuse(json!({"mcp_servers": []}), "mcp_servers");
    refuse(
        json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
        "messages[0].content[0].type",
    );
    refuse(json!({"messages": [{"role": "system", "content": "x"}]}), "messages[0].role");
    // A thinking mode without a budget has no effort to pick: dropped, listed.
    let b = json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
                   "thinking": {"type": "adaptive"}});
    let out = messages_to_chat(&b, &opts).unwrap();
    assert_eq!((out.value.reasoning_effort, out.dropped), (None, vec!["thinking".to_string()]));
}

#[test]
fn inbound_chat_answer_to_messages() {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sure.",
            "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
                  "prompt_tokens_details": {"cached_tokens": 400}}
    });
    let a = chat_response_to_messages(&body, ProviderFamily::OpenAI, "chat").unwrap();
    assert_eq!(
        a.body,
        json!({
            "id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "chat",
            "content": [{"type": "text", "text": "Sure."},
                        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Rome"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            // Anthropic nesting: input = 1000 - 400 cached = 600, cache reads outside it.
            "usage": {"input_tokens": 600, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 400, "output_tokens": 200}
        })
    );
    // gpt-4.1: 600 × 2 = 1200; 400 × 0.50 = 200; 200 × 8 = 1600. 3000 micro → $0.003.
    assert_eq!(a.usage.cost(&gpt_4_1()).picos(), 3000 * PICO_PER_MICRO);
    for (finish, stop) in [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")] {
        let mut b = body.clone();
        b["choices"][0]["finish_reason"] = json!(finish);
        assert_eq!(
            chat_response_to_messages(&b, ProviderFamily::OpenAI, "chat").unwrap().body["stop_reason"],
            json!(stop)
        );
    }
    let mut bad = body.clone();
    bad["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = json!("{oops");
    assert_eq!(
        chat_response_to_messages(&bad, ProviderFamily::OpenAI, "chat").unwrap_err().field(),
        Some("choices[0].message.tool_calls[0].function.arguments")
    );
}

const OPENAI_STREAM: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Let me \u{e9}\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"check.\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_x\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Oslo\\\"}\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_y\",\"type\":\"function\",\"function\":{\"name\":\"time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"deepseek-chat\",\"choices\":[],\"usage\":{\"prompt_tokens\":900,\"completion_tokens\":60,\"total_tokens\":960,\"prompt_cache_hit_tokens\":512,\"prompt_cache_miss_tokens\":388}}\n\n\
data: [DONE]\n\n";

fn openai_stream_expected() -> Vec<Value> {
    vec![
        json!({"event": "message_start", "data": {"type": "message_start", "message": {
            "id": "c1", "type": "message", "role": "assistant", "content": [], "model": "chat",
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}}),
        json!({"event": "content_block_start", "data": {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}}),
        json!({"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me \u{e9}"}}}),
        json!({"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}}}),
        json!({"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 0}}),
        json!({"event": "content_block_start", "data": {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_x", "name": "weather", "input": {}}}}),
        json!({"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}}),
        json!({"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Oslo\"}"}}}),
        json!({"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 1}}),
        json!({"event": "content_block_start", "data": {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "call_y", "name": "time", "input": {}}}}),
        json!({"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}}),
        json!({"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 2}}),
        // DeepSeek: 512 cache hits, 388 misses.
        json!({"event": "message_delta", "data": {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 388, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 512, "output_tokens": 60}}}),
        json!({"event": "message_stop", "data": {"type": "message_stop"}}),
    ]
}

fn run_openai_to_messages(parts: &[&[u8]]) -> (Vec<Value>, UsageReport) {
    let mut s = ChatToMessagesStream::new(ProviderFamily::DeepSeek, "chat");
    let mut out = Vec::new();
    for p in parts {
        out.extend(s.push(p).unwrap());
    }
    let (tail, usage) = s.finish().unwrap();
    out.extend(tail);
    (out.iter().map(|e| json!({"event": e.event, "data": e.data})).collect(), usage)
}

#[test]
fn inbound_stream_golden_and_every_split_point() {
    let expected = openai_stream_expected();
    let (events, usage) = run_openai_to_messages(&[OPENAI_STREAM.as_bytes()]);
    assert_eq!(events, expected);
    assert_eq!(usage.counts, counts(388, 512, 0, 60, 0));
    // DeepSeek V3.2: $0.28 miss, $0.028 hit, $0.42 out: 388 × 0.28 = 108.64; 512 × 0.028 = 14.336;
    // 60 × 0.42 = 25.2. 148.176 micro → $0.000148176 = 148,176,000 pico.
    assert_eq!(usage.cost(&prices("0.28", "0.028", "0.28", "0.42")).picos(), 148_176_000);
    for parts in partitions(OPENAI_STREAM.as_bytes()) {
        assert_eq!(run_openai_to_messages(&parts).0, expected);
    }
    // Each event renders as one SSE event with its name.
    let mut s = ChatToMessagesStream::new(ProviderFamily::DeepSeek, "chat");
    let first = s.push(OPENAI_STREAM.as_bytes()).unwrap()[0].to_sse();
    assert!(first.starts_with("event: message_start\ndata: {") && first.ends_with("}\n\n"), "{first}");
}

#[test]
fn inbound_stream_truncated_error_and_missing_done() {
    // Ends before any finish_reason: truncated.
    let cut = OPENAI_STREAM.find("{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"").unwrap();
    let cut = OPENAI_STREAM[..cut].rfind("data:").unwrap();
    let mut s = ChatToMessagesStream::new(ProviderFamily::OpenAI, "chat");
    s.push(&OPENAI_STREAM.as_bytes()[..cut]).unwrap();
    assert!(matches!(s.finish(), Err(TranslateError::Truncated { .. })));
    // finish_reason and usage came but no [DONE]: closed at the end of the body.
    let no_done = OPENAI_STREAM.replace("data: [DONE]\n\n", "");
    let mut s = ChatToMessagesStream::new(ProviderFamily::DeepSeek, "chat");
    let mut events = s.push(no_done.as_bytes()).unwrap();
    let (tail, _) = s.finish().unwrap();
    events.extend(tail);
    assert_eq!(events.last().unwrap().event, "message_stop");
    // An error object in the stream becomes an Anthropic error event.
    let mut s = ChatToMessagesStream::new(ProviderFamily::OpenAI, "chat");
    let err = s.push(b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n").unwrap_err();
    assert!(matches!(err, TranslateError::Upstream(_)));
    // Usage never came: typed error, not zero.
    let no_usage: String =
        OPENAI_STREAM.lines().filter(|l| !l.contains("\"usage\"")).map(|l| format!("{l}\n")).collect();
    let mut s = ChatToMessagesStream::new(ProviderFamily::DeepSeek, "chat");
    assert!(matches!(s.push(no_usage.as_bytes()), Err(TranslateError::Usage(_))));
}

#[test]
fn inbound_stream_from_gemini_chunks() {
    // Gemini → chat chunks → Messages events, usage handed over from the Gemini stream.
    let mut g = GeminiStream::new("gemini-2.5-flash", 3, false);
    let mut m = ChatToMessagesStream::new(ProviderFamily::Gemini, "chat");
    let mut events = Vec::new();
    for o in g.push(GEMINI_STREAM.as_bytes()).unwrap() {
        let StreamOutput::Chunk(c) = o else { panic!() };
        events.extend(m.push_chunk(&c).unwrap());
    }
    let (_, usage) = g.finish().unwrap();
    m.set_usage(usage);
    let (tail, usage) = m.finish().unwrap();
    events.extend(tail);
    let names: Vec<&str> = events.iter().map(|e| e.event).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    // Thoughts are inside Anthropic's output_tokens: 12 + 25 = 37.
    assert_eq!(
        events[8].data["usage"],
        json!({"input_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 37})
    );
    assert_eq!(usage.counts, counts(40, 0, 0, 12, 25));
}

#[test]
fn replace_model_keeps_every_other_byte() {
    let body = "{ \"max_tokens\" : 10,\n  \"model\":\t\"chat\" , \"metadata\": {\"model\": \"inner\"}, \"x\": [1, {\"model\": 2}], \"s\": \"\\u00e9\" }";
    let out = replace_model(body.as_bytes(), "claude-sonnet-4-5-20250929").unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{ \"max_tokens\" : 10,\n  \"model\":\t\"claude-sonnet-4-5-20250929\" , \"metadata\": {\"model\": \"inner\"}, \"x\": [1, {\"model\": 2}], \"s\": \"\\u00e9\" }"
    );
    // An escaped key is still the model key; the new value is JSON-escaped.
    let out = replace_model(br#"{"mod\u0065l":"a","n":1}"#, "q\"x").unwrap();
    assert_eq!(out, br#"{"mod\u0065l":"q\"x","n":1}"#);
    for (bad, field) in [
        (&br#"{"n":1}"#[..], "model"),
        (br#"{"model":"a","model":"b"}"#, "model"),
        (br#"["model"]"#, "(request body)"),
        (br#"{"model":"a""#, "(request body)"),
    ] {
        assert_eq!(replace_model(bad, "m").unwrap_err().field(), Some(field));
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn provider_errors_classified() {
    use ErrorClass::*;
    let anth = |status: u16, kind: &str| {
        let body = format!(
            "{{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"m\"}},\"request_id\":\"req_1\"}}"
        );
        anthropic_error(status, body.as_bytes())
    };
    // (status, type) → (class, client status, fails over, metric outcome)
    let table = [
        (529, "overloaded_error", Retryable, 503, true, "upstream_error"),
        (429, "rate_limit_error", RateLimited, 429, true, "rate_limited"),
        (400, "invalid_request_error", Client, 400, false, "client_error"),
        (413, "request_too_large", Client, 413, false, "client_error"),
        (401, "authentication_error", Backend, 502, true, "upstream_error"),
        (404, "not_found_error", Backend, 502, true, "upstream_error"),
        (500, "api_error", Retryable, 502, true, "upstream_error"),
        (504, "timeout_error", Retryable, 502, true, "upstream_error"),
        (503, "brand_new_error", Retryable, 503, true, "upstream_error"),
    ];
    for (status, kind, class, client, fails_over, outcome) in table {
        let e = anth(status, kind);
        assert_eq!(
            (e.class, e.client_status(), e.class.fails_over(), e.class.outcome()),
            (class, client, fails_over, outcome),
            "{kind}"
        );
        assert_eq!(e.kind, kind);
    }
    let e = anth(529, "overloaded_error");
    assert_eq!(
        e.openai_body(),
        json!({"error": {"message": "Anthropic upstream: m", "type": "api_error", "param": null, "code": "overloaded_error"}})
    );
    assert_eq!(
        e.anthropic_body(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Anthropic upstream: m"}})
    );
    // Unreadable body: status alone, the text as the message.
    let e = anthropic_error(502, b"<html>Bad gateway</html>");
    assert_eq!((e.class, e.kind.as_str(), e.message.as_str()), (Retryable, "http_502", "<html>Bad gateway</html>"));

    let gem = |status: u16, s: &str| {
        gemini_error(
            status,
            format!("{{\"error\":{{\"code\":{status},\"message\":\"g\",\"status\":\"{s}\"}}}}").as_bytes(),
        )
    };
    for (status, s, class, client) in [
        (429, "RESOURCE_EXHAUSTED", RateLimited, 429),
        (400, "INVALID_ARGUMENT", Client, 400),
        (400, "FAILED_PRECONDITION", Backend, 502),
        (403, "PERMISSION_DENIED", Backend, 502),
        (503, "UNAVAILABLE", Retryable, 503),
        (500, "INTERNAL", Retryable, 502),
    ] {
        let e = gem(status, s);
        assert_eq!((e.class, e.client_status()), (class, client), "{s}");
    }
    // Gemini sometimes wraps the error in an array.
    let e = gemini_error(429, br#"[{"error":{"code":429,"message":"q","status":"RESOURCE_EXHAUSTED"}}]"#);
    assert_eq!((e.class, e.message.as_str()), (RateLimited, "q"));
    assert_eq!(e.anthropic_body()["error"]["type"], json!("rate_limit_error"));

    let e = openai_error(429, br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#);
    assert_eq!((e.class, e.kind.as_str()), (RateLimited, "rate_limit_exceeded"));
    // Long messages are clipped.
    let long = format!("{{\"error\":{{\"message\":\"{}\"}}}}", "é".repeat(900));
    assert!(openai_error(500, long.as_bytes()).message.len() <= 1003);
}

#[test]
fn openai_errors_to_anthropic_shape() {
    let body = br#"{"error":{"message":"The spend budget for model route `chat` is exhausted","type":"insufficient_quota","param":null,"code":"budget_exhausted"}}"#;
    let table = [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
    ];
    for (status, kind) in table {
        let (s, v) = openai_error_to_anthropic(status, body);
        assert_eq!(s, status);
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": kind, "message": "The spend budget for model route `chat` is exhausted"}})
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Random partitions (proptest)
// ---------------------------------------------------------------------------------------------

/// Cuts `bytes` at the given (sorted, deduplicated) points.
fn cut_at(bytes: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.iter_mut().for_each(|p| *p %= bytes.len() + 1);
    points.sort_unstable();
    points.dedup();
    let mut parts = Vec::new();
    let mut last = 0;
    for p in points {
        parts.push(&bytes[last..p]);
        last = p;
    }
    parts.push(&bytes[last..]);
    parts
}

proptest! {
    #[test]
    fn anthropic_stream_any_partition(points in proptest::collection::vec(0usize..4096, 0..40)) {
        let parts = cut_at(ANTHROPIC_STREAM.as_bytes(), points);
        prop_assert_eq!(run_anthropic(&parts, true).0, anthropic_expected_chunks());
    }

    #[test]
    fn gemini_stream_any_partition(points in proptest::collection::vec(0usize..4096, 0..40)) {
        let parts = cut_at(GEMINI_STREAM.as_bytes(), points);
        prop_assert_eq!(run_gemini(&parts).0, gemini_expected_chunks());
    }

    #[test]
    fn inbound_stream_any_partition(points in proptest::collection::vec(0usize..4096, 0..40)) {
        let parts = cut_at(OPENAI_STREAM.as_bytes(), points);
        prop_assert_eq!(run_openai_to_messages(&parts).0, openai_stream_expected());
    }

    /// Arbitrary bytes never panic a stream translator: each call returns Ok or a typed error.
    #[test]
    fn stream_translators_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
        let cut = cut.min(data.len());
        let mut a = AnthropicStream::with_limit(0, true, 256);
        let _ = a.push(&data[..cut]).and_then(|_| a.push(&data[cut..])).and_then(|_| a.finish());
        let mut g = GeminiStream::with_limit("g", 0, true, 256);
        let _ = g.push(&data[..cut]).and_then(|_| g.push(&data[cut..])).and_then(|_| g.finish());
        let mut m = ChatToMessagesStream::new(ProviderFamily::OpenAI, "chat");
        let _ = m.push(&data[..cut]).and_then(|_| m.push(&data[cut..])).and_then(|_| m.finish());
    }
}

// ---------------------------------------------------------------------------------------------
// One SSE framer: bare CR line ends; a second message_start
// ---------------------------------------------------------------------------------------------

#[test]
fn anthropic_stream_with_bare_cr_line_ends_every_split_point() {
    let text = ANTHROPIC_STREAM.replace("\r\n", "\r").replace('\n', "\r");
    let bytes = text.as_bytes();
    for i in 0..=bytes.len() {
        let (chunks, usage) = run_anthropic(&[&bytes[..i], &bytes[i..]], true);
        assert_eq!(chunks, anthropic_expected_chunks(), "split at {i}");
        assert_eq!(usage.counts, counts(50, 1000, 0, 120, 0), "split at {i}");
    }
}

#[test]
fn anthropic_stream_a_second_message_start_is_an_error_and_the_usage_seen_stands() {
    let stop = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (before, _) = ANTHROPIC_STREAM.split_at(ANTHROPIC_STREAM.find(stop).unwrap());
    let restart = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"m\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n";
    let text = format!("{before}{restart}{stop}");
    let bytes = text.as_bytes();
    for i in 0..=bytes.len() {
        let mut s = AnthropicStream::new(0, true);
        let mut forwarded = Vec::new();
        let err = s
            .push_forwarding(&bytes[..i], &mut forwarded)
            .and_then(|_| s.push_forwarding(&bytes[i..], &mut forwarded))
            .and_then(|_| s.finish_forwarding(&mut forwarded).map(|(out, _)| out))
            .expect_err("a second message_start breaks the stream");
        assert_eq!(err.field(), Some("(stream event).type"), "split at {i}: {err}");
        // What was seen before it stands: message_start's input, message_delta's output.
        assert_eq!(s.partial_usage().unwrap().counts, counts(50, 1000, 0, 120, 0), "split at {i}");
        // A pass-through forwards the events before it, never it.
        assert_eq!(forwarded, before.as_bytes(), "split at {i}");
    }
}
