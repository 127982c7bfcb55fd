//! Golden usage → cost cases: one provider response (or final stream chunk/event) per case, in
//! the provider's wire shape, priced at 2026 list prices, with the expected cost worked by hand.
//!
//! Arithmetic convention in the comments: `n × $P/1M` is written in "micro-units" (n × P), and
//! the sum of the micro-units divided by 1,000,000 is the cost in USD.
//!
//! Invariants checked for every case:
//! - the parsed counts are exactly the expected disjoint counts;
//! - `TokenCounts::total()` equals the provider's own total (`total_tokens`, `totalTokenCount`,
//!   or for Anthropic native `input + cache_read + cache_creation + output`), read independently
//!   from the payload — each token is billed exactly once;
//! - the cost equals the hand-worked decimal, and equals the sum of the per-kind costs.

use serde_json::Value;
use tollgate::api::{Pricing, ProviderFamily};
use tollgate::policy::Money;
use tollgate::pricing::fields::{self, Treatment};
use tollgate::pricing::{Prices, TokenCounts, UsageError, parse_usage};

use ProviderFamily::{Anthropic, DeepSeek, Gemini, Mistral, OpenAI, Qwen};

/// USD per 1M tokens: input, cached input, cache write, output (reasoning = output).
#[derive(Clone, Copy)]
struct PriceSpec(&'static str, Option<&'static str>, Option<&'static str>, &'static str);

impl PriceSpec {
    fn prices(self) -> Prices {
        Prices::from_spec(&Pricing {
            input: self.0.into(),
            cached_input: self.1.map(Into::into),
            cache_write: self.2.map(Into::into),
            cache_write_1h: None,
            output: self.3.into(),
            reasoning: None,
        })
        .unwrap()
    }
}

// 2026 list prices (USD per 1M tokens).
/// OpenAI gpt-5: $1.25 in, $0.125 cached, $10 out.
const GPT_5: PriceSpec = PriceSpec("1.25", Some("0.125"), None, "10.00");
/// OpenAI gpt-4.1: $2 in, $0.50 cached, $8 out.
const GPT_4_1: PriceSpec = PriceSpec("2.00", Some("0.50"), None, "8.00");
/// OpenAI gpt-4.1-mini: $0.40 in, $0.10 cached, $1.60 out.
const GPT_4_1_MINI: PriceSpec = PriceSpec("0.40", Some("0.10"), None, "1.60");
/// A GPT-5.6-family model (illustrative list price): $5 in, $0.50 cached (0.1×),
/// $6.25 cache write (1.25× input, per OpenAI's prompt-caching guide), $30 out.
const GPT_5_6: PriceSpec = PriceSpec("5.00", Some("0.50"), Some("6.25"), "30.00");
/// OpenAI text-embedding-3-small: $0.02.
const EMBED_3_SMALL: PriceSpec = PriceSpec("0.02", None, None, "0");
/// OpenAI text-embedding-3-large: $0.13.
const EMBED_3_LARGE: PriceSpec = PriceSpec("0.13", None, None, "0");
/// Claude Sonnet 4.5: $3 in, $0.30 cache read, $3.75 cache write (5 min), $15 out.
const SONNET_4_5: PriceSpec = PriceSpec("3", Some("0.30"), Some("3.75"), "15");
/// Claude Haiku 4.5: $1 in, $0.10 cache read, $1.25 cache write, $5 out.
const HAIKU_4_5: PriceSpec = PriceSpec("1", Some("0.10"), Some("1.25"), "5");
/// Claude Opus 4.5: $5 in, $0.50 cache read, $6.25 cache write, $25 out.
const OPUS_4_5: PriceSpec = PriceSpec("5", Some("0.50"), Some("6.25"), "25");
/// DeepSeek V3.2 (deepseek-chat and deepseek-reasoner): $0.28 miss, $0.028 hit, $0.42 out.
const DEEPSEEK_V3_2: PriceSpec = PriceSpec("0.28", Some("0.028"), None, "0.42");
/// Gemini 2.5 Flash: $0.30 in, $0.03 cached, $2.50 out (thinking included).
const GEMINI_2_5_FLASH: PriceSpec = PriceSpec("0.30", Some("0.03"), None, "2.50");
/// Gemini 2.5 Pro (≤200k prompt): $1.25 in, $0.125 cached, $10 out (thinking included).
const GEMINI_2_5_PRO: PriceSpec = PriceSpec("1.25", Some("0.125"), None, "10.00");
/// Mistral Medium 3: $0.40 in, $0.04 cached (10%), $2 out.
const MISTRAL_MEDIUM_3: PriceSpec = PriceSpec("0.40", Some("0.04"), None, "2.00");
/// Mistral Small 3.2: $0.10 in, $0.30 out.
const MISTRAL_SMALL: PriceSpec = PriceSpec("0.10", None, None, "0.30");
/// mistral-embed: $0.10.
const MISTRAL_EMBED: PriceSpec = PriceSpec("0.10", None, None, "0");
/// qwen-plus, implicit cache: $0.40 in, $0.08 cached (20%), $1.20 out.
const QWEN_PLUS_IMPLICIT: PriceSpec = PriceSpec("0.40", Some("0.08"), None, "1.20");
/// qwen-plus, explicit cache: $0.40 in, $0.04 hit (10%), $0.50 creation (125%), $1.20 out.
const QWEN_PLUS_EXPLICIT: PriceSpec = PriceSpec("0.40", Some("0.04"), Some("0.50"), "1.20");

struct Case {
    name: &'static str,
    family: ProviderFamily,
    prices: PriceSpec,
    body: &'static str,
    /// input, cached_input, cache_write (5-minute), cache_write_1h, output, reasoning.
    counts: [u64; 6],
    /// The provider's own total, by hand.
    total: u64,
    /// Exact USD.
    cost: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        // ---------------------------------------------------------------- OpenAI chat
        Case {
            name: "openai chat gpt-5, cached prompt and reasoning",
            family: OpenAI,
            prices: GPT_5,
            body: r#"{
              "id": "chatcmpl-C3x9kTq2bW7m1rZf0aLpUe4sYvNd",
              "object": "chat.completion",
              "created": 1767225600,
              "model": "gpt-5-2025-08-07",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Here is the plan…", "refusal": null, "annotations": []}, "finish_reason": "stop"}],
              "usage": {
                "prompt_tokens": 1486, "completion_tokens": 651, "total_tokens": 2137,
                "prompt_tokens_details": {"cached_tokens": 1408, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 512, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
              },
              "service_tier": "default",
              "system_fingerprint": null
            }"#,
            // input: 1486-1408 = 78 × $1.25 = 97.5; cached: 1408 × $0.125 = 176;
            // output: 651-512 = 139 × $10 = 1390; reasoning: 512 × $10 = 5120.
            // 97.5 + 176 + 1390 + 5120 = 6783.5 → $0.0067835. Total 78+1408+139+512 = 2137.
            counts: [78, 1408, 0, 0, 139, 512],
            total: 2137,
            cost: "0.0067835",
        },
        Case {
            name: "openai chat gpt-5.6, billed cache write",
            family: OpenAI,
            prices: GPT_5_6,
            body: r#"{
              "id": "chatcmpl-D1a2b3c4d5e6f7g8h9i0",
              "object": "chat.completion",
              "created": 1784000000,
              "model": "gpt-5.6",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Done."}, "finish_reason": "stop"}],
              "usage": {
                "prompt_tokens": 9657, "completion_tokens": 78, "total_tokens": 9735,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 9654, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 37, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
              }
            }"#,
            // input: 9657-0-9654 = 3 × $5 = 15; cache write: 9654 × $6.25 = 60337.5;
            // output: 78-37 = 41 × $30 = 1230; reasoning: 37 × $30 = 1110.
            // 15 + 60337.5 + 1230 + 1110 = 62692.5 → $0.0626925. Total 3+9654+41+37 = 9735.
            counts: [3, 0, 9654, 0, 41, 37],
            total: 9735,
            cost: "0.0626925",
        },
        // ---------------------------------------------------------------- OpenAI stream final chunk
        Case {
            name: "openai chat stream final chunk (include_usage), gpt-5",
            family: OpenAI,
            prices: GPT_5,
            body: r#"{
              "id": "chatcmpl-C3xAbCdEfGhIjKlMnOpQrStUv",
              "object": "chat.completion.chunk",
              "created": 1767225700,
              "model": "gpt-5-2025-08-07",
              "service_tier": "default",
              "system_fingerprint": null,
              "choices": [],
              "usage": {
                "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
              },
              "obfuscation": "x1Yz"
            }"#,
            // input: 2006-1920 = 86 × $1.25 = 107.5; cached: 1920 × $0.125 = 240;
            // output: 300-192 = 108 × $10 = 1080; reasoning: 192 × $10 = 1920.
            // 107.5 + 240 + 1080 + 1920 = 3347.5 → $0.0033475. Total 86+1920+108+192 = 2306.
            counts: [86, 1920, 0, 0, 108, 192],
            total: 2306,
            cost: "0.0033475",
        },
        Case {
            name: "openai chat stream final chunk, gpt-4.1-mini, no cache",
            family: OpenAI,
            prices: GPT_4_1_MINI,
            body: r#"{
              "id": "chatcmpl-B9qWeRtYuIoPaSdFgHjKl",
              "object": "chat.completion.chunk",
              "created": 1767225800,
              "model": "gpt-4.1-mini-2025-04-14",
              "system_fingerprint": "fp_6f2eabb9a5",
              "choices": [],
              "usage": {
                "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
              }
            }"#,
            // input: 19 × $0.40 = 7.6; output: 10 × $1.60 = 16.
            // 7.6 + 16 = 23.6 → $0.0000236. Total 19+10 = 29.
            counts: [19, 0, 0, 0, 10, 0],
            total: 29,
            cost: "0.0000236",
        },
        // ---------------------------------------------------------------- OpenAI Responses
        Case {
            name: "openai responses gpt-4.1, mostly cached",
            family: OpenAI,
            prices: GPT_4_1,
            body: r#"{
              "id": "resp_0cd5d6b8310055d600696a1776b42c81a199fbb02248a8bfa0",
              "object": "response",
              "created_at": 1768560502,
              "status": "completed",
              "background": false,
              "completed_at": 1768560504,
              "error": null,
              "incomplete_details": null,
              "instructions": null,
              "max_output_tokens": null,
              "model": "gpt-4.1-2025-04-14",
              "output": [{"id": "msg_0cd5", "type": "message", "status": "completed", "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "- I provide clear, accurate answers."}], "role": "assistant"}],
              "parallel_tool_calls": true,
              "previous_response_id": null,
              "prompt_cache_key": "key-123",
              "prompt_cache_retention": "24h",
              "reasoning": {"effort": null, "summary": null},
              "service_tier": "default",
              "store": true,
              "temperature": 1.0,
              "text": {"format": {"type": "text"}, "verbosity": "medium"},
              "tool_choice": "auto",
              "tools": [],
              "top_p": 1.0,
              "truncation": "disabled",
              "usage": {
                "input_tokens": 12033, "input_tokens_details": {"cached_tokens": 11904},
                "output_tokens": 44, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 12077
              },
              "user": null,
              "metadata": {}
            }"#,
            // input: 12033-11904 = 129 × $2 = 258; cached: 11904 × $0.50 = 5952;
            // output: 44 × $8 = 352. 258 + 5952 + 352 = 6562 → $0.006562.
            // Total 129+11904+44 = 12077.
            counts: [129, 11904, 0, 0, 44, 0],
            total: 12077,
            cost: "0.006562",
        },
        Case {
            name: "openai responses gpt-5, reasoning",
            family: OpenAI,
            prices: GPT_5,
            body: r#"{
              "id": "resp_68af4030592c81938ec0a5fbab4a3e9f05438e46b5f69a3b",
              "object": "response",
              "created_at": 1767226000,
              "status": "completed",
              "model": "gpt-5-2025-08-07",
              "output": [
                {"id": "rs_68af4030baa48193b0b43b4c2a176a1a", "type": "reasoning", "summary": []},
                {"id": "msg_68af40337e58819392e935fb404414d0", "type": "message", "status": "completed", "content": [{"type": "output_text", "annotations": [], "text": "42"}], "role": "assistant"}
              ],
              "reasoning": {"effort": "medium", "summary": null},
              "usage": {
                "input_tokens": 1250, "input_tokens_details": {"cached_tokens": 1024},
                "output_tokens": 900, "output_tokens_details": {"reasoning_tokens": 704},
                "total_tokens": 2150
              }
            }"#,
            // input: 1250-1024 = 226 × $1.25 = 282.5; cached: 1024 × $0.125 = 128;
            // output: 900-704 = 196 × $10 = 1960; reasoning: 704 × $10 = 7040.
            // 282.5 + 128 + 1960 + 7040 = 9410.5 → $0.0094105. Total 226+1024+196+704 = 2150.
            counts: [226, 1024, 0, 0, 196, 704],
            total: 2150,
            cost: "0.0094105",
        },
        Case {
            name: "openai responses stream response.completed, gpt-5.6 cache write",
            family: OpenAI,
            prices: GPT_5_6,
            body: r#"{
              "type": "response.completed",
              "sequence_number": 57,
              "response": {
                "id": "resp_0a1b2c3d4e5f",
                "object": "response",
                "created_at": 1784000100,
                "status": "completed",
                "model": "gpt-5.6",
                "output": [{"id": "msg_0a1b", "type": "message", "status": "completed", "content": [{"type": "output_text", "annotations": [], "text": "Summary…"}], "role": "assistant"}],
                "usage": {
                  "input_tokens": 9658,
                  "input_tokens_details": {"cache_write_tokens": 9655, "cached_tokens": 0},
                  "output_tokens": 42,
                  "output_tokens_details": {"reasoning_tokens": 25},
                  "total_tokens": 9700
                }
              }
            }"#,
            // input: 9658-0-9655 = 3 × $5 = 15; cache write: 9655 × $6.25 = 60343.75;
            // output: 42-25 = 17 × $30 = 510; reasoning: 25 × $30 = 750.
            // 15 + 60343.75 + 510 + 750 = 61618.75 → $0.06161875. Total 3+9655+17+25 = 9700.
            counts: [3, 0, 9655, 0, 17, 25],
            total: 9700,
            cost: "0.06161875",
        },
        // ---------------------------------------------------------------- OpenAI embeddings
        Case {
            name: "openai embeddings text-embedding-3-small",
            family: OpenAI,
            prices: EMBED_3_SMALL,
            body: r#"{
              "object": "list",
              "data": [{"object": "embedding", "index": 0, "embedding": [-0.006929283, -0.005336422, -0.00004547575, -0.024047505]}],
              "model": "text-embedding-3-small",
              "usage": {"prompt_tokens": 8, "total_tokens": 8}
            }"#,
            // input: 8 × $0.02 = 0.16 → $0.00000016. Total 8.
            counts: [8, 0, 0, 0, 0, 0],
            total: 8,
            cost: "0.00000016",
        },
        Case {
            name: "openai embeddings text-embedding-3-large, batch",
            family: OpenAI,
            prices: EMBED_3_LARGE,
            body: r#"{
              "object": "list",
              "data": [
                {"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292]},
                {"object": "embedding", "index": 1, "embedding": [-0.0028842222, 0.021438]}
              ],
              "model": "text-embedding-3-large",
              "usage": {"prompt_tokens": 5120, "total_tokens": 5120}
            }"#,
            // input: 5120 × $0.13 = 665.6 → $0.0006656. Total 5120.
            counts: [5120, 0, 0, 0, 0, 0],
            total: 5120,
            cost: "0.0006656",
        },
        // ---------------------------------------------------------------- Anthropic native
        Case {
            name: "anthropic message sonnet-4.5, cache write",
            family: Anthropic,
            prices: SONNET_4_5,
            body: r#"{
              "id": "msg_01EcyWo6m4hyW8KHs2y2pei5",
              "type": "message",
              "role": "assistant",
              "model": "claude-sonnet-4-5-20250929",
              "content": [{"type": "text", "text": "The book's central theme is…"}],
              "stop_reason": "end_turn",
              "stop_sequence": null,
              "usage": {
                "input_tokens": 21,
                "cache_creation_input_tokens": 188086,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 393,
                "service_tier": "standard"
              }
            }"#,
            // input: 21 × $3 = 63; cache write: 188086 × $3.75 = 705322.5; output: 393 × $15 = 5895.
            // 63 + 705322.5 + 5895 = 711280.5 → $0.7112805. Total 21+188086+0+393 = 188500.
            counts: [21, 0, 188086, 0, 393, 0],
            total: 188500,
            cost: "0.7112805",
        },
        Case {
            name: "anthropic message sonnet-4.5, 1-hour and 5-minute cache writes mixed",
            family: Anthropic,
            prices: SONNET_4_5,
            body: r#"{
              "id": "msg_01HvQ3kTqS9yZ1aPzR4mW7xN",
              "type": "message",
              "role": "assistant",
              "model": "claude-sonnet-4-5-20250929",
              "content": [{"type": "text", "text": "Summary of the contract…"}],
              "stop_reason": "end_turn",
              "stop_sequence": null,
              "usage": {
                "input_tokens": 50,
                "cache_creation_input_tokens": 12000,
                "cache_read_input_tokens": 30000,
                "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 10000},
                "output_tokens": 700,
                "service_tier": "standard"
              }
            }"#,
            // Sonnet 4.5: input $3, read $0.30, 5-minute write $3.75 (1.25×), 1-hour write $6
            // (2 × $3, Anthropic's rule; the route names no cacheWrite1h), output $15.
            // input: 50 × 3 = 150; read: 30000 × 0.30 = 9000; 5m write: 2000 × 3.75 = 7500;
            // 1h write: 10000 × 6 = 60000; output: 700 × 15 = 10500.
            // 150 + 9000 + 7500 + 60000 + 10500 = 87150 → $0.08715.
            // Total 50+12000+30000+700 = 42750.
            counts: [50, 30000, 2000, 10000, 700, 0],
            total: 42750,
            cost: "0.08715",
        },
        Case {
            name: "anthropic message opus-4.5, only 1-hour cache writes (no 5-minute part given)",
            family: Anthropic,
            prices: OPUS_4_5,
            body: r#"{
              "id": "msg_01Tz8bKcW2nLq5VxYd3FhJ6e",
              "type": "message",
              "role": "assistant",
              "model": "claude-opus-4-5-20251101",
              "content": [{"type": "text", "text": "Done."}],
              "stop_reason": "end_turn",
              "stop_sequence": null,
              "usage": {
                "input_tokens": 8,
                "cache_creation_input_tokens": 4096,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_1h_input_tokens": 4096},
                "output_tokens": 12
              }
            }"#,
            // Opus 4.5: input $5, 1-hour write 2 × $5 = $10, output $25.
            // input: 8 × 5 = 40; 1h write: 4096 × 10 = 40960; output: 12 × 25 = 300.
            // 40 + 40960 + 300 = 41300 → $0.0413. Total 8+4096+12 = 4116.
            counts: [8, 0, 0, 4096, 12, 0],
            total: 4116,
            cost: "0.0413",
        },
        Case {
            name: "anthropic message haiku-4.5, cache read, extended thinking inside output",
            family: Anthropic,
            prices: HAIKU_4_5,
            body: r#"{
              "id": "msg_01Aq9w938a90dw8q",
              "type": "message",
              "role": "assistant",
              "model": "claude-haiku-4-5-20251001",
              "content": [
                {"type": "thinking", "thinking": "Let me work through this…", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
                {"type": "text", "text": "The answer is 27."}
              ],
              "stop_reason": "end_turn",
              "stop_sequence": null,
              "usage": {
                "input_tokens": 312,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 14336,
                "output_tokens": 1250,
                "service_tier": "standard"
              }
            }"#,
            // input: 312 × $1 = 312; cache read: 14336 × $0.10 = 1433.6;
            // output (thinking included): 1250 × $5 = 6250.
            // 312 + 1433.6 + 6250 = 7995.6 → $0.0079956. Total 312+14336+0+1250 = 15898.
            counts: [312, 14336, 0, 0, 1250, 0],
            total: 15898,
            cost: "0.0079956",
        },
        // ---------------------------------------------------------------- Anthropic stream
        Case {
            name: "anthropic stream message_delta sonnet-4.5 (cumulative usage)",
            family: Anthropic,
            prices: SONNET_4_5,
            body: r#"{
              "type": "message_delta",
              "delta": {"stop_reason": "end_turn", "stop_sequence": null},
              "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 89}
            }"#,
            // input: 472 × $3 = 1416; output: 89 × $15 = 1335. 1416 + 1335 = 2751 → $0.002751.
            // Total 472+0+0+89 = 561.
            counts: [472, 0, 0, 0, 89, 0],
            total: 561,
            cost: "0.002751",
        },
        Case {
            name: "anthropic stream message_delta opus-4.5, cache read+write, server tool use",
            family: Anthropic,
            prices: OPUS_4_5,
            body: r#"{
              "type": "message_delta",
              "delta": {"stop_reason": "tool_use", "stop_sequence": null},
              "usage": {
                "input_tokens": 1843,
                "cache_creation_input_tokens": 2048,
                "cache_read_input_tokens": 30720,
                "output_tokens": 512,
                "server_tool_use": {"web_search_requests": 1}
              }
            }"#,
            // input: 1843 × $5 = 9215; cache write: 2048 × $6.25 = 12800;
            // cache read: 30720 × $0.50 = 15360; output: 512 × $25 = 12800.
            // 9215 + 12800 + 15360 + 12800 = 50175 → $0.050175. Total 1843+2048+30720+512 = 35123.
            counts: [1843, 30720, 2048, 0, 512, 0],
            total: 35123,
            cost: "0.050175",
        },
        // ---------------------------------------------------------------- Anthropic OpenAI-compatible
        Case {
            name: "anthropic openai-compat chat, plain",
            family: Anthropic,
            prices: SONNET_4_5,
            body: r#"{
              "id": "msg_01Bq4Xh7pQzz8c5Yf1",
              "object": "chat.completion",
              "created": 1767226100,
              "model": "claude-sonnet-4-5",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "I'm Claude, an AI assistant made by Anthropic."}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 25, "completion_tokens": 120, "total_tokens": 145}
            }"#,
            // input: 25 × $3 = 75; output: 120 × $15 = 1800. 75 + 1800 = 1875 → $0.001875.
            // Total 145.
            counts: [25, 0, 0, 0, 120, 0],
            total: 145,
            cost: "0.001875",
        },
        Case {
            name: "anthropic openai-compat chat, native cache fields outside prompt_tokens",
            family: Anthropic,
            prices: SONNET_4_5,
            body: r#"{
              "id": "msg_01Cw9Tz3kLmN2",
              "object": "chat.completion",
              "created": 1767226200,
              "model": "claude-sonnet-4-5",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Section 4.2 says…"}, "finish_reason": "stop"}],
              "usage": {
                "prompt_tokens": 40, "completion_tokens": 200, "total_tokens": 10480,
                "cache_read_input_tokens": 8192, "cache_creation_input_tokens": 2048
              }
            }"#,
            // total 10480 = 40 + 200 + 8192 + 2048 → cache counts are outside prompt_tokens.
            // input: 40 × $3 = 120; cache read: 8192 × $0.30 = 2457.6;
            // cache write: 2048 × $3.75 = 7680; output: 200 × $15 = 3000.
            // 120 + 2457.6 + 7680 + 3000 = 13257.6 → $0.0132576.
            counts: [40, 8192, 2048, 0, 200, 0],
            total: 10480,
            cost: "0.0132576",
        },
        Case {
            name: "anthropic openai-compat chat, cache counts reported inside prompt_tokens",
            family: Anthropic,
            prices: SONNET_4_5,
            body: r#"{
              "id": "msg_01Dx0Ua4lMnO3",
              "object": "chat.completion",
              "created": 1767226300,
              "model": "claude-sonnet-4-5",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Section 4.2 says…"}, "finish_reason": "stop"}],
              "usage": {
                "prompt_tokens": 10280, "completion_tokens": 200, "total_tokens": 10480,
                "prompt_tokens_details": {"cached_tokens": 8192},
                "cache_creation_input_tokens": 2048
              }
            }"#,
            // total 10480 = 10280 + 200 → cache counts are inside prompt_tokens:
            // input: 10280-8192-2048 = 40 × $3 = 120; then as above → $0.0132576
            // (the same request billed the same whichever way the layer reports it).
            counts: [40, 8192, 2048, 0, 200, 0],
            total: 10480,
            cost: "0.0132576",
        },
        // ---------------------------------------------------------------- DeepSeek
        Case {
            name: "deepseek-chat, cache hit and miss",
            family: DeepSeek,
            prices: DEEPSEEK_V3_2,
            body: r#"{
              "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
              "object": "chat.completion",
              "created": 1767226400,
              "model": "deepseek-chat",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "The report's key figures are…"}, "logprobs": null, "finish_reason": "stop"}],
              "usage": {
                "prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "prompt_cache_hit_tokens": 1024, "prompt_cache_miss_tokens": 176
              },
              "system_fingerprint": "fp_ffc7281d48_prod0820_fp8_kvcache"
            }"#,
            // input (miss): 176 × $0.28 = 49.28; cached (hit): 1024 × $0.028 = 28.672;
            // output: 300 × $0.42 = 126. 49.28 + 28.672 + 126 = 203.952 → $0.000203952.
            // Total 176+1024+300 = 1500.
            counts: [176, 1024, 0, 0, 300, 0],
            total: 1500,
            cost: "0.000203952",
        },
        Case {
            name: "deepseek-reasoner, reasoning tokens inside completion",
            family: DeepSeek,
            prices: DEEPSEEK_V3_2,
            body: r#"{
              "id": "184b2dc7-08b5-4849-836d-e278efcfc85b",
              "object": "chat.completion",
              "created": 1767226500,
              "model": "deepseek-reasoner",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?", "reasoning_content": "The user says hi; greet them."}, "logprobs": null, "finish_reason": "stop"}],
              "usage": {
                "prompt_tokens": 10, "completion_tokens": 48, "total_tokens": 58,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 38},
                "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 10
              },
              "system_fingerprint": "fp_9954b31ca7_prod0820_fp8_kvcache"
            }"#,
            // input: 10 × $0.28 = 2.8; output: 48-38 = 10 × $0.42 = 4.2;
            // reasoning: 38 × $0.42 = 15.96. 2.8 + 4.2 + 15.96 = 22.96 → $0.00002296.
            // Total 10+10+38 = 58.
            counts: [10, 0, 0, 0, 10, 38],
            total: 58,
            cost: "0.00002296",
        },
        Case {
            name: "deepseek-reasoner, cache hits, hit/miss only (no prompt_tokens_details)",
            family: DeepSeek,
            prices: DEEPSEEK_V3_2,
            body: r#"{
              "id": "5e3f1a0c-7b2d-4e8f-9a1b-2c3d4e5f6a7b",
              "object": "chat.completion",
              "created": 1767226600,
              "model": "deepseek-reasoner",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "x = 7", "reasoning_content": "…"}, "logprobs": null, "finish_reason": "stop"}],
              "usage": {
                "prompt_tokens": 3000, "completion_tokens": 1500, "total_tokens": 4500,
                "completion_tokens_details": {"reasoning_tokens": 1100},
                "prompt_cache_hit_tokens": 2816, "prompt_cache_miss_tokens": 184
              }
            }"#,
            // input: 184 × $0.28 = 51.52; cached: 2816 × $0.028 = 78.848;
            // output: 1500-1100 = 400 × $0.42 = 168; reasoning: 1100 × $0.42 = 462.
            // 51.52 + 78.848 + 168 + 462 = 760.368 → $0.000760368. Total 184+2816+400+1100 = 4500.
            counts: [184, 2816, 0, 0, 400, 1100],
            total: 4500,
            cost: "0.000760368",
        },
        // ---------------------------------------------------------------- Gemini native
        Case {
            name: "gemini native 2.5-flash, thoughts outside candidates",
            family: Gemini,
            prices: GEMINI_2_5_FLASH,
            body: r#"{
              "candidates": [{"content": {"parts": [{"text": "15% of 240 is 36."}], "role": "model"}, "finishReason": "STOP", "index": 0}],
              "usageMetadata": {
                "promptTokenCount": 20, "candidatesTokenCount": 198, "totalTokenCount": 623,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 20}],
                "thoughtsTokenCount": 405
              },
              "modelVersion": "gemini-2.5-flash",
              "responseId": "8hOraJ3rLpW2nvgPj8Xx0Q4"
            }"#,
            // input: 20 × $0.30 = 6; output: 198 × $2.50 = 495; reasoning: 405 × $2.50 = 1012.5.
            // 6 + 495 + 1012.5 = 1513.5 → $0.0015135. Total 20+198+405 = 623.
            counts: [20, 0, 0, 0, 198, 405],
            total: 623,
            cost: "0.0015135",
        },
        Case {
            name: "gemini native 2.5-pro, cached content, tool-use prompt, thoughts",
            family: Gemini,
            prices: GEMINI_2_5_PRO,
            body: r#"{
              "candidates": [{"content": {"parts": [{"text": "According to the search results…"}], "role": "model"}, "finishReason": "STOP", "index": 0, "groundingMetadata": {"webSearchQueries": ["tollgate kubernetes"]}}],
              "usageMetadata": {
                "promptTokenCount": 12000,
                "candidatesTokenCount": 850,
                "totalTokenCount": 14696,
                "cachedContentTokenCount": 8192,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12000}],
                "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 8192}],
                "toolUsePromptTokenCount": 310,
                "thoughtsTokenCount": 1536
              },
              "modelVersion": "gemini-2.5-pro",
              "responseId": "Yx2sZ8OjBfKqnvgP4Y2P-Ac"
            }"#,
            // input: (12000-8192) + 310 tool-use = 4118 × $1.25 = 5147.5;
            // cached: 8192 × $0.125 = 1024; output: 850 × $10 = 8500; reasoning: 1536 × $10 = 15360.
            // 5147.5 + 1024 + 8500 + 15360 = 30031.5 → $0.0300315.
            // Total 12000+850+310+1536 = 14696 = 4118+8192+850+1536.
            counts: [4118, 8192, 0, 0, 850, 1536],
            total: 14696,
            cost: "0.0300315",
        },
        Case {
            name: "gemini native stream final chunk, thoughts only (no candidatesTokenCount)",
            family: Gemini,
            prices: GEMINI_2_5_FLASH,
            body: r#"{
              "candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP", "index": 0}],
              "usageMetadata": {"promptTokenCount": 21, "totalTokenCount": 81, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 21}], "thoughtsTokenCount": 60},
              "modelVersion": "gemini-2.5-flash",
              "responseId": "kP2saNXyD4GhnvgP2qW_4Qw"
            }"#,
            // input: 21 × $0.30 = 6.3; reasoning: 60 × $2.50 = 150. 6.3 + 150 = 156.3 → $0.0001563.
            // Total 21+60 = 81.
            counts: [21, 0, 0, 0, 0, 60],
            total: 81,
            cost: "0.0001563",
        },
        // ---------------------------------------------------------------- Gemini OpenAI-compatible
        Case {
            name: "gemini openai-compat 2.5-pro, thoughts only in total_tokens",
            family: Gemini,
            prices: GEMINI_2_5_PRO,
            body: r#"{
              "choices": [{"finish_reason": "stop", "index": 0, "message": {"content": "Here is the estimate…", "role": "assistant"}}],
              "created": 1767226700,
              "id": "Z0GsaPaRA4mRnvgPxd7YqQ8",
              "model": "gemini-2.5-pro",
              "object": "chat.completion",
              "usage": {"completion_tokens": 102, "prompt_tokens": 758, "total_tokens": 1725}
            }"#,
            // reasoning = 1725 - 758 - 102 = 865.
            // input: 758 × $1.25 = 947.5; output: 102 × $10 = 1020; reasoning: 865 × $10 = 8650.
            // 947.5 + 1020 + 8650 = 10617.5 → $0.0106175. Total 758+102+865 = 1725.
            counts: [758, 0, 0, 0, 102, 865],
            total: 1725,
            cost: "0.0106175",
        },
        Case {
            name: "gemini openai-compat 2.5-flash, reasoning_tokens reported outside completion",
            family: Gemini,
            prices: GEMINI_2_5_FLASH,
            body: r#"{
              "choices": [{"finish_reason": "stop", "index": 0, "message": {"content": "Hello there!", "role": "assistant"}}],
              "created": 1767226800,
              "id": "q0KsaLnCKYqlnvgP3Z2j6Q0",
              "model": "gemini-2.5-flash",
              "object": "chat.completion",
              "usage": {"completion_tokens": 12, "prompt_tokens": 21, "total_tokens": 93, "completion_tokens_details": {"reasoning_tokens": 60}}
            }"#,
            // gap = 93 - 21 - 12 = 60 = reported reasoning → outside completion.
            // input: 21 × $0.30 = 6.3; output: 12 × $2.50 = 30; reasoning: 60 × $2.50 = 150.
            // 6.3 + 30 + 150 = 186.3 → $0.0001863. Total 21+12+60 = 93.
            counts: [21, 0, 0, 0, 12, 60],
            total: 93,
            cost: "0.0001863",
        },
        Case {
            name: "gemini openai-compat on vertex, top-level reasoning_tokens",
            family: Gemini,
            prices: GEMINI_2_5_PRO,
            body: r#"{
              "choices": [{"finish_reason": "stop", "index": 0, "logprobs": null, "message": {"content": "The function is O(n log n).", "role": "assistant"}}],
              "created": 1767226900,
              "id": "3qKsaPTvEJqtnvgPlN_B8Aw",
              "model": "google/gemini-2.5-pro",
              "object": "chat.completion",
              "system_fingerprint": "",
              "usage": {
                "completion_tokens": 57, "prompt_tokens": 2181, "total_tokens": 2518,
                "extra_properties": {"google": {"traffic_type": "ON_DEMAND"}},
                "reasoning_tokens": 280
              }
            }"#,
            // gap = 2518 - 2181 - 57 = 280 = reasoning_tokens.
            // input: 2181 × $1.25 = 2726.25; output: 57 × $10 = 570; reasoning: 280 × $10 = 2800.
            // 2726.25 + 570 + 2800 = 6096.25 → $0.00609625. Total 2181+57+280 = 2518.
            counts: [2181, 0, 0, 0, 57, 280],
            total: 2518,
            cost: "0.00609625",
        },
        // ---------------------------------------------------------------- Mistral
        Case {
            name: "mistral medium-3 chat, prompt cache hit",
            family: Mistral,
            prices: MISTRAL_MEDIUM_3,
            body: r#"{
              "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
              "object": "chat.completion",
              "model": "mistral-medium-2508",
              "created": 1767227000,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Check that your API key is sent in the Authorization header…", "tool_calls": null}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1874, "completion_tokens": 312, "total_tokens": 2186, "prompt_tokens_details": {"cached_tokens": 1792}}
            }"#,
            // input: 1874-1792 = 82 × $0.40 = 32.8; cached: 1792 × $0.04 = 71.68;
            // output: 312 × $2 = 624. 32.8 + 71.68 + 624 = 728.48 → $0.00072848.
            // Total 82+1792+312 = 2186.
            counts: [82, 1792, 0, 0, 312, 0],
            total: 2186,
            cost: "0.00072848",
        },
        Case {
            name: "mistral small chat, plain",
            family: Mistral,
            prices: MISTRAL_SMALL,
            body: r#"{
              "id": "cmpl-3b5a2d8f1c7e4a9b8d6f0e2c4a6b8d0f",
              "object": "chat.completion",
              "model": "mistral-small-latest",
              "created": 1767227100,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris is the capital of France.", "tool_calls": null, "prefix": false}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 16, "completion_tokens": 34, "total_tokens": 50}
            }"#,
            // input: 16 × $0.10 = 1.6; output: 34 × $0.30 = 10.2. 1.6 + 10.2 = 11.8 → $0.0000118.
            // Total 50.
            counts: [16, 0, 0, 0, 34, 0],
            total: 50,
            cost: "0.0000118",
        },
        Case {
            name: "mistral embeddings",
            family: Mistral,
            prices: MISTRAL_EMBED,
            body: r#"{
              "id": "embd-aad6fc62b17349b192ef09225058bc45",
              "object": "list",
              "data": [{"object": "embedding", "embedding": [-0.016632080078125, 0.0701904296875, 0.03143310546875], "index": 0}],
              "model": "mistral-embed",
              "usage": {"prompt_tokens": 15, "total_tokens": 15, "completion_tokens": 0}
            }"#,
            // input: 15 × $0.10 = 1.5 → $0.0000015. Total 15.
            counts: [15, 0, 0, 0, 0, 0],
            total: 15,
            cost: "0.0000015",
        },
        // ---------------------------------------------------------------- Qwen (DashScope compatible mode)
        Case {
            name: "qwen-plus, implicit cache hit",
            family: Qwen,
            prices: QWEN_PLUS_IMPLICIT,
            body: r#"{
              "choices": [{"message": {"role": "assistant", "content": "This contract's termination clause…"}, "finish_reason": "stop", "index": 0, "logprobs": null}],
              "object": "chat.completion",
              "usage": {"prompt_tokens": 3019, "completion_tokens": 104, "total_tokens": 3123, "prompt_tokens_details": {"cached_tokens": 2048}},
              "created": 1767227200,
              "system_fingerprint": null,
              "model": "qwen-plus",
              "id": "chatcmpl-6ada9ed2-7f33-9de2-8bb0-78bd4035025a"
            }"#,
            // input: 3019-2048 = 971 × $0.40 = 388.4; cached: 2048 × $0.08 = 163.84;
            // output: 104 × $1.20 = 124.8. 388.4 + 163.84 + 124.8 = 677.04 → $0.00067704.
            // Total 971+2048+104 = 3123.
            counts: [971, 2048, 0, 0, 104, 0],
            total: 3123,
            cost: "0.00067704",
        },
        Case {
            name: "qwen-plus thinking, explicit cache creation",
            family: Qwen,
            prices: QWEN_PLUS_EXPLICIT,
            body: r#"{
              "choices": [{"message": {"role": "assistant", "content": "Summary: …", "reasoning_content": "First, …"}, "finish_reason": "stop", "index": 0, "logprobs": null}],
              "object": "chat.completion",
              "usage": {
                "prompt_tokens": 29719, "completion_tokens": 435, "total_tokens": 30154,
                "completion_tokens_details": {"reasoning_tokens": 382, "text_tokens": 435},
                "prompt_tokens_details": {
                  "text_tokens": 29719,
                  "cache_creation": {"ephemeral_5m_input_tokens": 29713},
                  "cache_creation_input_tokens": 29713,
                  "cache_type": "ephemeral",
                  "cached_tokens": 0
                }
              },
              "created": 1767227300,
              "system_fingerprint": null,
              "model": "qwen-plus",
              "id": "chatcmpl-0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
            }"#,
            // input: 29719-0-29713 = 6 × $0.40 = 2.4; cache write: 29713 × $0.50 = 14856.5;
            // output: 435-382 = 53 × $1.20 = 63.6; reasoning: 382 × $1.20 = 458.4.
            // 2.4 + 14856.5 + 63.6 + 458.4 = 15380.9 → $0.0153809. Total 6+29713+53+382 = 30154.
            counts: [6, 0, 29713, 0, 53, 382],
            total: 30154,
            cost: "0.0153809",
        },
        Case {
            name: "qwen-plus, explicit cache hit",
            family: Qwen,
            prices: QWEN_PLUS_EXPLICIT,
            body: r#"{
              "choices": [{"message": {"role": "assistant", "content": "Clause 7 allows…"}, "finish_reason": "stop", "index": 0, "logprobs": null}],
              "object": "chat.completion",
              "usage": {
                "prompt_tokens": 29730, "completion_tokens": 80, "total_tokens": 29810,
                "prompt_tokens_details": {"text_tokens": 29730, "cached_tokens": 29713, "cache_type": "ephemeral"}
              },
              "created": 1767227400,
              "system_fingerprint": null,
              "model": "qwen-plus",
              "id": "chatcmpl-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"
            }"#,
            // input: 29730-29713 = 17 × $0.40 = 6.8; cached: 29713 × $0.04 = 1188.52;
            // output: 80 × $1.20 = 96. 6.8 + 1188.52 + 96 = 1291.32 → $0.00129132.
            // Total 17+29713+80 = 29810.
            counts: [17, 29713, 0, 0, 80, 0],
            total: 29810,
            cost: "0.00129132",
        },
    ]
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn n(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// The provider's own notion of the request's total tokens, read straight from the payload.
fn provider_total(family: ProviderFamily, body: &Value) -> u64 {
    if family == Gemini && body.get("usageMetadata").is_some() {
        return n(body, "/usageMetadata/totalTokenCount");
    }
    let usage = body.get("usage").or_else(|| body.pointer("/response/usage")).unwrap();
    if family == Anthropic && usage.get("prompt_tokens").is_none() {
        // Anthropic native has no total: input + cache read + cache creation + output.
        return n(usage, "/input_tokens")
            + n(usage, "/cache_read_input_tokens")
            + n(usage, "/cache_creation_input_tokens")
            + n(usage, "/output_tokens");
    }
    n(usage, "/total_tokens")
}

#[test]
fn golden_cases_cost_exactly_what_was_worked_by_hand() {
    let cases = cases();
    for family in [OpenAI, Anthropic, DeepSeek, Gemini, Mistral, Qwen] {
        assert!(cases.iter().filter(|c| c.family == family).count() >= 2, "{family:?}");
    }
    for case in &cases {
        let body = json(case.body);
        let counts = parse_usage(case.family, &body).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let [input, cached_input, cache_write, cache_write_1h, output, reasoning] = case.counts;
        let expected = TokenCounts { input, cached_input, cache_write, cache_write_1h, output, reasoning };
        assert_eq!(counts, expected, "{}: counts", case.name);

        // Each token billed exactly once.
        assert_eq!(counts.total(), case.total, "{}: total vs hand-worked total", case.name);
        assert_eq!(
            counts.total(),
            provider_total(case.family, &body),
            "{}: total vs the provider's own total",
            case.name
        );

        let prices = case.prices.prices();
        let cost = counts.cost(&prices);
        let want: Money = case.cost.parse().unwrap();
        assert_eq!(cost, want, "{}: cost {cost} != {want}", case.name);

        let per_kind = prices.input.cost(counts.input)
            + prices.cached_input.cost(counts.cached_input)
            + prices.cache_write.cost(counts.cache_write)
            + prices.cache_write_1h.cost(counts.cache_write_1h)
            + prices.output.cost(counts.output)
            + prices.reasoning.cost(counts.reasoning);
        assert_eq!(cost, per_kind, "{}: cost vs sum of per-kind costs", case.name);
        let by_kind: Money = counts.cost_by_kind(&prices).into_iter().map(|(_, m)| m).sum();
        assert_eq!(cost, by_kind, "{}: cost vs cost_by_kind", case.name);
    }
}

#[test]
fn kind_labels_are_the_metric_label_values() {
    let counts = TokenCounts { input: 5, cached_input: 4, cache_write: 3, cache_write_1h: 6, output: 2, reasoning: 1 };
    let labels: Vec<(&str, u64)> = counts.by_kind().iter().map(|(k, n)| (k.label(), *n)).collect();
    assert_eq!(
        labels,
        [("input", 5), ("cached_input", 4), ("cache_write", 3), ("cache_write_1h", 6), ("output", 2), ("reasoning", 1)]
    );
}

/// Responses without usage are an error, never a zero bill.
#[test]
fn missing_usage_is_a_typed_error() {
    let cases: [(ProviderFamily, &str); 6] = [
        // A non-final chunk of a stream with include_usage.
        (
            OpenAI,
            r#"{"id": "chatcmpl-C3xA", "object": "chat.completion.chunk", "created": 1767225700, "model": "gpt-5-2025-08-07",
                "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}], "usage": null}"#,
        ),
        // The final chunk of a stream whose client did not ask for usage.
        (
            DeepSeek,
            r#"{"id": "930c60df", "object": "chat.completion.chunk", "created": 1767226400, "model": "deepseek-chat",
                "choices": [{"index": 0, "delta": {"content": ""}, "logprobs": null, "finish_reason": "stop"}]}"#,
        ),
        // A Responses event before completion.
        (
            OpenAI,
            r#"{"type": "response.created", "sequence_number": 0,
                "response": {"id": "resp_1", "object": "response", "status": "in_progress", "output": [], "usage": null}}"#,
        ),
        // Anthropic's closing event carries no usage.
        (Anthropic, r#"{"type": "message_stop"}"#),
        // A Gemini chunk without usageMetadata.
        (
            Gemini,
            r#"{"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}, "index": 0}], "modelVersion": "gemini-2.5-flash"}"#,
        ),
        // An upstream error body.
        (
            Mistral,
            r#"{"object": "error", "message": "Service tier capacity exceeded for this model.", "type": "service_tier_capacity_exceeded", "param": null, "code": "3505"}"#,
        ),
    ];
    for (family, body) in cases {
        assert_eq!(parse_usage(family, &json(body)), Err(UsageError::Missing), "{family:?} {body}");
    }
}

#[test]
fn malformed_usage_is_a_typed_error() {
    let cases: [(ProviderFamily, &str, &str, &str); 5] = [
        (
            OpenAI,
            r#"{"object": "chat.completion", "usage": {"prompt_tokens": "1486", "completion_tokens": 651, "total_tokens": 2137}}"#,
            "usage.prompt_tokens",
            "expected a non-negative integer, got a string",
        ),
        (
            DeepSeek,
            r#"{"object": "chat.completion", "usage": {"prompt_tokens": 1200, "completion_tokens": -1, "total_tokens": 1199}}"#,
            "usage.completion_tokens",
            "-1 is negative",
        ),
        (
            Gemini,
            r#"{"usageMetadata": {"promptTokenCount": 20.0, "candidatesTokenCount": 198, "totalTokenCount": 218}}"#,
            "usageMetadata.promptTokenCount",
            "20.0 is not an integer",
        ),
        (
            Qwen,
            r#"{"object": "chat.completion", "usage": {"prompt_tokens": 3019, "completion_tokens": 104, "total_tokens": 3123, "prompt_tokens_details": [2048]}}"#,
            "usage.prompt_tokens_details",
            "expected an object, got an array",
        ),
        (
            OpenAI,
            r#"{"type": "response.completed", "response": {"status": "completed", "usage": {"input_tokens": 1250, "total_tokens": 2150}}}"#,
            "response.usage.output_tokens",
            "missing",
        ),
    ];
    for (family, body, field, why) in cases {
        assert_eq!(
            parse_usage(family, &json(body)),
            Err(UsageError::Malformed { field: field.into(), why: why.into() }),
            "{family:?} {body}"
        );
    }
    // A message_delta from an API version that reports only output tokens there cannot be
    // billed on its own.
    let delta = r#"{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}"#;
    let err = parse_usage(Anthropic, &json(delta)).unwrap_err();
    assert!(matches!(&err, UsageError::Malformed { field, .. } if field == "usage.input_tokens"), "{err:?}");
}

#[test]
fn inconsistent_usage_is_a_typed_error() {
    let cases: [(ProviderFamily, &str); 4] = [
        (
            DeepSeek,
            r#"{"usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                "prompt_cache_hit_tokens": 1024, "prompt_cache_miss_tokens": 200}}"#,
        ),
        (
            OpenAI,
            r#"{"usage": {"prompt_tokens": 1486, "completion_tokens": 651, "total_tokens": 2137,
                "prompt_tokens_details": {"cached_tokens": 1536}}}"#,
        ),
        (
            Qwen,
            r#"{"usage": {"prompt_tokens": 29719, "completion_tokens": 435, "total_tokens": 30154,
                "completion_tokens_details": {"reasoning_tokens": 436}}}"#,
        ),
        (
            Gemini,
            r#"{"usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 198, "thoughtsTokenCount": 405, "totalTokenCount": 218}}"#,
        ),
    ];
    for (family, body) in cases {
        let got = parse_usage(family, &json(body));
        assert!(matches!(got, Err(UsageError::Inconsistent { .. })), "{family:?} {body}: {got:?}");
    }
}

/// The usage object of a golden body, where the family's rule looks for it.
fn usage_object(family: ProviderFamily, body: &Value) -> &Value {
    let found = match family {
        Gemini => body.get("usageMetadata").or_else(|| body.get("usage")),
        _ => body.get("usage").or_else(|| body.pointer("/response/usage")),
    };
    found.unwrap_or_else(|| panic!("no usage object in {body}"))
}

#[test]
fn every_usage_field_of_every_golden_is_billed_or_explained() {
    let mut seen = std::collections::BTreeSet::new();
    for case in cases() {
        let body = json(case.body);
        for path in fields::leaf_paths(usage_object(case.family, &body)) {
            let entry = fields::lookup(case.family, &path).unwrap_or_else(|| {
                panic!(
                    "{}: usage field `{path}` is neither billed nor listed as not billed in src/pricing/fields.rs",
                    case.name
                )
            });
            seen.insert((entry.shape.label(), entry.path));
        }
    }
    // The goldens carry fields of every shape, billed and not billed.
    assert!(seen.len() >= 40, "{} fields seen", seen.len());
    let unbilled = seen
        .iter()
        .filter(|(_, p)| {
            fields::USAGE_FIELDS.iter().any(|u| u.path == *p && matches!(u.treatment, Treatment::NotBilled(_)))
        })
        .count();
    assert!(unbilled >= 8, "{unbilled} not-billed fields seen");
    // A field nobody lists is caught (the check above can fail).
    assert!(fields::lookup(OpenAI, "prompt_tokens_details.surprise_tokens").is_none());
}

#[test]
fn the_docs_list_every_usage_field_as_the_code_does() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/usage-fields.md")).unwrap();
    assert!(
        doc.contains(&fields::markdown_table()),
        "docs/usage-fields.md does not hold the table of src/pricing/fields.rs; regenerate it with \
         `cargo test --test pricing_golden -- --ignored print_usage_fields_table --nocapture`"
    );
}

#[test]
#[ignore = "prints the docs table"]
fn print_usage_fields_table() {
    print!("{}", fields::markdown_table());
}
