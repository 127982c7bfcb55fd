//! Exposition of the gen_ai families for a known set of requests; every expected number, bucket
//! bound and label below is written out by hand from the convention's bucket lists.

use super::*;
use crate::gateway::metrics::Metrics;

/// The lines of one histogram series, from hand-written bounds, cumulative counts and sum.
fn hist(name: &str, labels: &str, bounds: &[&str], cumulative: &[u64], sum: &str, count: u64) -> Vec<String> {
    assert_eq!(bounds.len(), cumulative.len(), "test table of {name}{{{labels}}}");
    let mut out: Vec<String> =
        bounds.iter().zip(cumulative).map(|(le, n)| format!("{name}_bucket{{{labels},le=\"{le}\"}} {n}")).collect();
    out.push(format!("{name}_bucket{{{labels},le=\"+Inf\"}} {count}"));
    out.push(format!("{name}_sum{{{labels}}} {sum}"));
    out.push(format!("{name}_count{{{labels}}} {count}"));
    out
}

const TOKEN_BOUNDS: [&str; 14] = [
    "1",
    "4",
    "16",
    "64",
    "256",
    "1024",
    "4096",
    "16384",
    "65536",
    "262144",
    "1.048576e+06",
    "4.194304e+06",
    "1.6777216e+07",
    "6.7108864e+07",
];
const DURATION_BOUNDS: [&str; 14] = [
    "0.01", "0.02", "0.04", "0.08", "0.16", "0.32", "0.64", "1.28", "2.56", "5.12", "10.24", "20.48", "40.96", "81.92",
];
const TTFT_BOUNDS: [&str; 16] = [
    "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75", "1", "2.5", "5", "7.5",
    "10",
];

#[test]
fn exposition_for_known_requests() {
    let m = Metrics::new();
    let g = m.gen_ai("openai", "gpt-x");
    // A chat answer: 1000 uncached + 200 cached input, 300 visible + 7 reasoning output.
    let big =
        TokenCounts { input: 1000, cached_input: 200, cache_write: 0, cache_write_1h: 0, output: 300, reasoning: 7 };
    g.usage(Endpoint::ChatCompletions, &big, Money::from_picos(12_500_000_000));
    // Another chat answer through the Responses API (also `chat`): 3 in, 1 out.
    let small = TokenCounts { input: 3, cached_input: 0, cache_write: 0, cache_write_1h: 0, output: 1, reasoning: 0 };
    g.usage(Endpoint::Responses, &small, Money::from_picos(2_500_000_000));
    // An embedding: 10 input tokens, no output recorded.
    let emb = TokenCounts { input: 10, ..TokenCounts::default() };
    g.usage(Endpoint::Embeddings, &emb, Money::from_picos(1_000_000_000));
    g.duration(Endpoint::ChatCompletions, Outcome::Ok, 0.5);
    g.duration(Endpoint::ChatCompletions, Outcome::Timeout, 3.0);
    g.time_to_first_token(Endpoint::ChatCompletions, 0.03);

    let chat = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-x""#;
    let emb_labels = r#"gen_ai_operation_name="embeddings",gen_ai_provider_name="openai",gen_ai_request_model="gpt-x""#;
    let mut expected: Vec<String> = vec![
        "# HELP gen_ai_client_token_usage Number of input and output tokens used (OpenTelemetry gen_ai.client.token.usage).".into(),
        "# TYPE gen_ai_client_token_usage histogram".into(),
        "# HELP gen_ai_client_operation_duration_seconds GenAI operation duration (OpenTelemetry gen_ai.client.operation.duration).".into(),
        "# TYPE gen_ai_client_operation_duration_seconds histogram".into(),
        "# HELP gen_ai_server_time_to_first_token_seconds Time to the first chunk of streaming answers (OpenTelemetry gen_ai.server.time_to_first_token).".into(),
        "# TYPE gen_ai_server_time_to_first_token_seconds histogram".into(),
        "# HELP tollgate_gen_ai_cost_usd_total Spend in USD by gen_ai operation, provider and request model (float for humans, from the exact total)".into(),
        "# TYPE tollgate_gen_ai_cost_usd_total counter".into(),
        // 0.0125 + 0.0025 USD for chat, 0.001 for embeddings.
        format!("tollgate_gen_ai_cost_usd_total{{{chat}}} 0.015"),
        format!("tollgate_gen_ai_cost_usd_total{{{emb_labels}}} 0.001"),
    ];
    // Chat input: 1200 and 3 tokens.
    expected.extend(hist(
        "gen_ai_client_token_usage",
        &format!("{chat},gen_ai_token_type=\"input\""),
        &TOKEN_BOUNDS,
        &[0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2],
        "1203.0",
        2,
    ));
    // Chat output: 307 and 1 tokens.
    expected.extend(hist(
        "gen_ai_client_token_usage",
        &format!("{chat},gen_ai_token_type=\"output\""),
        &TOKEN_BOUNDS,
        &[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2],
        "308.0",
        2,
    ));
    // Embeddings input: 10 tokens.
    expected.extend(hist(
        "gen_ai_client_token_usage",
        &format!("{emb_labels},gen_ai_token_type=\"input\""),
        &TOKEN_BOUNDS,
        &[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        "10.0",
        1,
    ));
    // Durations: 0.5 s ok, 3 s timeout.
    expected.extend(hist(
        "gen_ai_client_operation_duration_seconds",
        chat,
        &DURATION_BOUNDS,
        &[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        "0.5",
        1,
    ));
    expected.extend(hist(
        "gen_ai_client_operation_duration_seconds",
        &format!("{chat},error_type=\"timeout\""),
        &DURATION_BOUNDS,
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
        "3.0",
        1,
    ));
    // Time to first token: 30 ms.
    expected.extend(hist(
        "gen_ai_server_time_to_first_token_seconds",
        chat,
        &TTFT_BOUNDS,
        &[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        "0.03",
        1,
    ));

    let text = m.encode();
    // Series order inside a histogram family is not defined: compare sorted lines.
    let mut got: Vec<&str> = text.lines().filter(|l| l.contains("gen_ai")).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want, "\n{text}");
    // The controller's series are still there, untouched by the gen_ai families.
    assert!(!text.lines().any(|l| l.starts_with("tollgate_requests_total{") && l.contains("gen_ai")));
}

#[test]
fn nothing_before_traffic_and_operations_are_a_fixed_list() {
    let m = Metrics::new();
    let _unused = m.gen_ai("openai", "gpt-x");
    assert!(!m.encode().contains("gen_ai"), "families without series are not exposed");
    let ops: Vec<&str> = Endpoint::ALL.iter().map(|e| operation_name(*e)).collect();
    assert_eq!(ops, ["chat", "text_completion", "embeddings", "chat", "chat"]);
}
