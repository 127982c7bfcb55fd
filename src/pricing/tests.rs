//! Unit tests of the usage rules of every provider family.

use serde_json::json;

use super::*;

fn spec(input: &str, output: &str) -> Pricing {
    Pricing {
        input: input.into(),
        cached_input: None,
        cache_write: None,
        cache_write_1h: None,
        output: output.into(),
        reasoning: None,
    }
}

fn p(s: &str) -> PricePerMillion {
    s.parse().unwrap()
}

#[test]
fn prices_default_cache_to_input_and_reasoning_to_output() {
    let prices = Prices::from_spec(&spec("3", "15")).unwrap();
    assert_eq!(prices.input, p("3"));
    assert_eq!(prices.cached_input, p("3"));
    assert_eq!(prices.cache_write, p("3"));
    // Anthropic's rule: a 1-hour write costs twice the base input price (2 × 3 = 6).
    assert_eq!(prices.cache_write_1h, p("6"));
    assert_eq!(prices.output, p("15"));
    assert_eq!(prices.reasoning, p("15"));
}

#[test]
fn prices_take_explicit_values() {
    let s = Pricing {
        input: "3".into(),
        cached_input: Some("0.30".into()),
        cache_write: Some("3.75".into()),
        cache_write_1h: Some("6.5".into()),
        output: "15".into(),
        reasoning: Some("20".into()),
    };
    let prices = Prices::from_spec(&s).unwrap();
    assert_eq!(prices.cached_input, p("0.3"));
    assert_eq!(prices.cache_write, p("3.75"));
    assert_eq!(prices.cache_write_1h, p("6.5"));
    assert_eq!(prices.reasoning, p("20"));
    let got: Vec<PricePerMillion> = TokenKind::ALL.iter().map(|k| prices.get(*k)).collect();
    assert_eq!(got, [p("3"), p("0.3"), p("3.75"), p("6.5"), p("15"), p("20")]);
}

#[test]
fn price_errors_name_the_field() {
    let mut s = spec("3", "15");
    s.cached_input = Some("0.1234567".into());
    let err = Prices::from_spec(&s).unwrap_err();
    assert_eq!(err.field, "cachedInput");
    assert_eq!(
        err.to_string(),
        r#"pricing.cachedInput: "0.1234567" is not a decimal USD amount (more than six decimals)"#
    );

    let err = Prices::from_spec(&spec("-1", "15")).unwrap_err();
    assert_eq!(err.field, "input");
    assert!(err.to_string().starts_with(r#"pricing.input: "-1""#), "{err}");

    let err = Prices::from_spec(&spec("1", "abc")).unwrap_err();
    assert_eq!(err.field, "output");

    let mut s = spec("1", "2");
    s.cache_write = Some("1e3".into());
    assert_eq!(Prices::from_spec(&s).unwrap_err().field, "cacheWrite");

    let mut s = spec("1", "2");
    s.cache_write_1h = Some("2.0000001".into());
    assert_eq!(Prices::from_spec(&s).unwrap_err().field, "cacheWrite1h");

    let mut s = spec("1", "2");
    s.reasoning = Some("".into());
    assert_eq!(Prices::from_spec(&s).unwrap_err().field, "reasoning");
}

#[test]
fn prices_round_trip_through_serde() {
    let prices = Prices::from_spec(&spec("0.27", "1.10")).unwrap();
    let v = serde_json::to_value(prices).unwrap();
    assert_eq!(
        v,
        json!({"input": "0.27", "cachedInput": "0.27", "cacheWrite": "0.27", "cacheWrite1h": "0.54", "output": "1.10", "reasoning": "1.10"})
    );
    let back: Prices = serde_json::from_value(v).unwrap();
    assert_eq!(back, prices);
    // A config document without `cacheWrite1h` (from a controller that predates it) reads it
    // by Anthropic's rule: 2 × 0.27.
    let old: Prices = serde_json::from_value(
        json!({"input": "0.27", "cachedInput": "0.07", "cacheWrite": "0.3375", "output": "1.10", "reasoning": "1.10"}),
    )
    .unwrap();
    assert_eq!(old.cache_write_1h, p("0.54"));
    assert_eq!(old.cache_write, p("0.3375"));
}

#[test]
fn counts_label_total_and_cost() {
    let c = TokenCounts { input: 1, cached_input: 2, cache_write: 3, cache_write_1h: 6, output: 4, reasoning: 5 };
    let labels: Vec<(&str, u64)> = c.by_kind().iter().map(|(k, n)| (k.label(), *n)).collect();
    assert_eq!(
        labels,
        [("input", 1), ("cached_input", 2), ("cache_write", 3), ("cache_write_1h", 6), ("output", 4), ("reasoning", 5)]
    );
    assert_eq!(c.total(), 21);
    let prices = Prices {
        input: p("1"),
        cached_input: p("10"),
        cache_write: p("100"),
        cache_write_1h: p("100000"),
        output: p("1000"),
        reasoning: p("10000"),
    };
    // 1×1 + 2×10 + 3×100 + 6×100000 + 4×1000 + 5×10000 = 654321 USD-per-million units.
    assert_eq!(c.cost(&prices), "0.654321".parse().unwrap());
    assert_eq!(TokenKind::CachedInput.to_string(), "cached_input");
    let saturated = TokenCounts { input: u64::MAX, output: 1, ..TokenCounts::default() };
    assert_eq!(saturated.total(), u64::MAX);
}

fn err(family: ProviderFamily, body: Value) -> UsageError {
    parse_usage(family, &body).unwrap_err()
}

#[test]
fn missing_usage_is_an_error_not_zero() {
    use ProviderFamily::*;
    assert_eq!(err(OpenAI, json!({"id": "x", "choices": []})), UsageError::Missing);
    assert_eq!(err(OpenAI, json!({"choices": [], "usage": null})), UsageError::Missing);
    assert_eq!(err(Anthropic, json!({"type": "message_stop"})), UsageError::Missing);
    assert_eq!(err(Gemini, json!({"candidates": []})), UsageError::Missing);
    assert_eq!(err(OpenAI, json!({"type": "response.created", "response": {"usage": null}})), UsageError::Missing);
    // Ollama-style `response` string is not a Responses event.
    assert_eq!(err(Mistral, json!({"response": "hi"})), UsageError::Missing);
    assert_eq!(UsageError::Missing.metric_label(), "missing");
    assert!(UsageError::Missing.to_string().contains("never assumed to be zero"));
}

#[test]
fn malformed_counts_name_the_field() {
    use ProviderFamily::*;
    let cases = [
        (json!({"usage": {"prompt_tokens": -3, "completion_tokens": 1}}), "usage.prompt_tokens", "-3 is negative"),
        (
            json!({"usage": {"prompt_tokens": 12.5, "completion_tokens": 1}}),
            "usage.prompt_tokens",
            "12.5 is not an integer",
        ),
        (
            json!({"usage": {"prompt_tokens": 12.0, "completion_tokens": 1}}),
            "usage.prompt_tokens",
            "12.0 is not an integer",
        ),
        (
            json!({"usage": {"prompt_tokens": "12", "completion_tokens": 1}}),
            "usage.prompt_tokens",
            "expected a non-negative integer, got a string",
        ),
        (json!({"usage": {"completion_tokens": 1}}), "usage.prompt_tokens", "missing"),
        (
            json!({"usage": {"prompt_tokens": 5}}),
            "usage.completion_tokens",
            "missing (and no total_tokens shows the request had no output)",
        ),
        (
            json!({"usage": {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": 7}}),
            "usage.prompt_tokens_details",
            "expected an object, got a number",
        ),
        (
            json!({"usage": {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": true}}}),
            "usage.prompt_tokens_details.cached_tokens",
            "expected a non-negative integer, got a boolean",
        ),
        (
            json!({"usage": {"prompt_tokens": 9_007_199_254_740_992u64, "completion_tokens": 1}}),
            "usage.prompt_tokens",
            "9007199254740992 is not a plausible token count (above 2^53 - 1)",
        ),
        (json!({"usage": 5}), "usage", "expected an object, got a number"),
    ];
    for (body, field, why) in cases {
        let e = err(OpenAI, body.clone());
        assert_eq!(e, UsageError::Malformed { field: field.into(), why: why.into() }, "body {body}");
        assert_eq!(e.metric_label(), "malformed");
    }
    assert_eq!(
        err(OpenAI, json!([1, 2])),
        UsageError::Malformed { field: "(response body)".into(), why: "expected a JSON object, got an array".into() }
    );
    let e = err(Anthropic, json!({"type": "message_delta", "usage": {"output_tokens": 15}}));
    let UsageError::Malformed { field, why } = &e else { panic!("{e:?}") };
    assert_eq!(field, "usage.input_tokens");
    assert!(why.contains("merge the message_start usage"), "{why}");
    assert_eq!(
        err(Anthropic, json!({"usage": {"output_tokens": 15}})),
        UsageError::Malformed { field: "usage.input_tokens".into(), why: "missing".into() }
    );
    assert_eq!(
        err(Anthropic, json!({"usage": {"input_tokens": 15}})),
        UsageError::Malformed { field: "usage.output_tokens".into(), why: "missing".into() }
    );
    assert_eq!(
        err(Gemini, json!({"usageMetadata": {"candidatesTokenCount": 3}})),
        UsageError::Malformed { field: "usageMetadata.promptTokenCount".into(), why: "missing".into() }
    );
    assert_eq!(
        err(Gemini, json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})),
        UsageError::Malformed { field: "usage.total_tokens".into(), why: "missing".into() }
    );
    assert_eq!(
        err(OpenAI, json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3}}})),
        UsageError::Malformed { field: "response.usage.output_tokens".into(), why: "missing".into() }
    );
    assert_eq!(
        err(OpenAI, json!({"usage": {"completion_tokens": 4}})).to_string(),
        "usage field usage.prompt_tokens: missing"
    );
}

#[test]
fn inconsistent_counts_are_typed() {
    use ProviderFamily::*;
    let cases = [
        (
            OpenAI,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 11}}}),
            "usage.prompt_tokens_details.cached_tokens=11 exceeds usage.prompt_tokens=10",
        ),
        (
            OpenAI,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 6}}}),
            "usage.completion_tokens_details.reasoning_tokens=6 exceeds usage.completion_tokens=5",
        ),
        (
            OpenAI,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 16}}),
            "usage.total_tokens=16 is not usage.prompt_tokens=10 + usage.completion_tokens=5",
        ),
        (
            OpenAI,
            json!({"usage": {"prompt_tokens": 10, "total_tokens": 12}}),
            "usage.completion_tokens is absent but usage.total_tokens=12 differs from usage.prompt_tokens=10",
        ),
        (
            OpenAI,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 5}}}),
            "usage.prompt_tokens_details cache writes=5 exceeds usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens=4",
        ),
        (
            Qwen,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cache_write_tokens": 6, "cache_creation_input_tokens": 5}}}),
            "usage.prompt_tokens_details.cache_write_tokens=6 and usage.prompt_tokens_details.cache_creation_input_tokens=5 report the same tokens but disagree",
        ),
        (
            OpenAI,
            json!({"usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 14}}),
            "usage.total_tokens=14 is not usage.input_tokens=10 + usage.output_tokens=5",
        ),
        (
            DeepSeek,
            json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 40}}),
            "usage.prompt_cache_hit_tokens=64 + usage.prompt_cache_miss_tokens=40 is not usage.prompt_tokens=100",
        ),
        (
            DeepSeek,
            json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36, "prompt_tokens_details": {"cached_tokens": 32}}}),
            "usage.prompt_tokens_details.cached_tokens=32 disagrees with usage.prompt_cache_hit_tokens=64",
        ),
        (
            DeepSeek,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_cache_hit_tokens": 11}}),
            "usage.prompt_cache_hit_tokens=11 exceeds usage.prompt_tokens=10",
        ),
        (
            Anthropic,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 20, "cache_read_input_tokens": 8}}),
            "usage.total_tokens=20 is neither prompt + completion (15) nor prompt + completion + cache reads + cache writes (23)",
        ),
        (
            Anthropic,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "cache_read_input_tokens": 8, "prompt_tokens_details": {"cached_tokens": 7}}}),
            "usage.cache_read_input_tokens=8 and usage.prompt_tokens_details.cached_tokens=7 report the same tokens but disagree",
        ),
        (
            Gemini,
            json!({"usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 198, "thoughtsTokenCount": 405, "totalTokenCount": 218}}),
            "usageMetadata.totalTokenCount=218 is not promptTokenCount + candidatesTokenCount + toolUsePromptTokenCount + thoughtsTokenCount = 20 + 198 + 0 + 405 = 623",
        ),
        (
            Gemini,
            json!({"usageMetadata": {"promptTokenCount": 20, "cachedContentTokenCount": 21, "totalTokenCount": 20}}),
            "usageMetadata.cachedContentTokenCount=21 exceeds usageMetadata.promptTokenCount=20",
        ),
        (
            Gemini,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 14}}),
            "prompt_tokens + completion_tokens (10 + 5)=15 exceeds usage.total_tokens=14",
        ),
        (
            Gemini,
            json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 25, "completion_tokens_details": {"reasoning_tokens": 9}}}),
            "reported reasoning tokens (9) differ from total_tokens - prompt_tokens - completion_tokens (10)",
        ),
    ];
    for (family, body, why) in cases {
        let e = err(family, body.clone());
        assert_eq!(e, UsageError::Inconsistent { why: why.into() }, "{family:?} {body}");
        assert_eq!(e.metric_label(), "inconsistent");
        assert_eq!(e.to_string(), format!("inconsistent usage: {why}"));
    }
}

fn counts(family: ProviderFamily, body: Value) -> TokenCounts {
    parse_usage(family, &body).unwrap()
}

fn tc(input: u64, cached_input: u64, cache_write: u64, output: u64, reasoning: u64) -> TokenCounts {
    TokenCounts { input, cached_input, cache_write, cache_write_1h: 0, output, reasoning }
}

#[test]
fn optional_details_default_to_zero_and_null_is_absent() {
    use ProviderFamily::*;
    let body = json!({"usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
        "prompt_tokens_details": null, "completion_tokens_details": null}});
    assert_eq!(counts(OpenAI, body.clone()), tc(19, 0, 0, 10, 0));
    assert_eq!(counts(Mistral, body.clone()), tc(19, 0, 0, 10, 0));
    assert_eq!(counts(DeepSeek, body), tc(19, 0, 0, 10, 0));
    // Embeddings: total_tokens == prompt_tokens pins the output to zero.
    assert_eq!(counts(OpenAI, json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}})), tc(8, 0, 0, 0, 0));
    assert_eq!(counts(Anthropic, json!({"usage": {"input_tokens": 7, "output_tokens": 3}})), tc(7, 0, 0, 3, 0));
    assert_eq!(counts(Gemini, json!({"usageMetadata": {"promptTokenCount": 7}})), tc(7, 0, 0, 0, 0));
}

#[test]
fn deepseek_derives_the_missing_half() {
    use ProviderFamily::DeepSeek;
    let only_hit = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64}});
    assert_eq!(counts(DeepSeek, only_hit), tc(36, 64, 0, 5, 0));
    let only_miss = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_miss_tokens": 36}});
    assert_eq!(counts(DeepSeek, only_miss), tc(36, 64, 0, 5, 0));
    let details_only = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 64}}});
    assert_eq!(counts(DeepSeek, details_only), tc(36, 64, 0, 5, 0));
}

#[test]
fn anthropic_compat_places_cache_by_total() {
    use ProviderFamily::Anthropic;
    // No total: Anthropic semantics, cache counts are outside prompt_tokens.
    let no_total = json!({"usage": {"prompt_tokens": 40, "completion_tokens": 200,
        "cache_read_input_tokens": 8192, "cache_creation_input_tokens": 2048}});
    assert_eq!(counts(Anthropic, no_total), tc(40, 8192, 2048, 200, 0));
    // Total equals prompt + completion: cache counts were inside prompt_tokens.
    let inside = json!({"usage": {"prompt_tokens": 10280, "completion_tokens": 200, "total_tokens": 10480,
        "prompt_tokens_details": {"cached_tokens": 8192}, "cache_creation_input_tokens": 2048}});
    assert_eq!(counts(Anthropic, inside), tc(40, 8192, 2048, 200, 0));
    // A zero placeholder in prompt_tokens_details does not contradict the top-level count.
    let placeholder = json!({"usage": {"prompt_tokens": 40, "completion_tokens": 200, "total_tokens": 8432,
        "cache_read_input_tokens": 8192, "prompt_tokens_details": {"cached_tokens": 0}}});
    assert_eq!(counts(Anthropic, placeholder), tc(40, 8192, 0, 200, 0));
}

#[test]
fn gemini_compat_reasoning_inside_when_total_leaves_no_gap() {
    use ProviderFamily::Gemini;
    // A gateway that folds thoughts into completion_tokens (and reports them as reasoning).
    let folded = json!({"usage": {"prompt_tokens": 21, "completion_tokens": 60, "total_tokens": 81,
        "completion_tokens_details": {"reasoning_tokens": 60}}});
    assert_eq!(counts(Gemini, folded), tc(21, 0, 0, 0, 60));
    // Google's own: thoughts only in total_tokens.
    let google = json!({"usage": {"prompt_tokens": 21, "completion_tokens": 0, "total_tokens": 81}});
    assert_eq!(counts(Gemini, google), tc(21, 0, 0, 0, 60));
    // Cached tokens inside prompt_tokens.
    let cached = json!({"usage": {"prompt_tokens": 2100, "completion_tokens": 10, "total_tokens": 2110,
        "prompt_tokens_details": {"cached_tokens": 2048}}});
    assert_eq!(counts(Gemini, cached), tc(52, 2048, 0, 10, 0));
    // Folded reasoning larger than completion is inconsistent.
    let bad = json!({"usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26,
        "completion_tokens_details": {"reasoning_tokens": 60}}});
    assert!(matches!(parse_usage(Gemini, &bad), Err(UsageError::Inconsistent { .. })));
}

#[test]
fn gemini_native_is_preferred_over_a_usage_key() {
    let body = json!({"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7},
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    assert_eq!(counts(ProviderFamily::Gemini, body.clone()), tc(5, 0, 0, 2, 0));
    // Other families never look at usageMetadata.
    assert_eq!(counts(ProviderFamily::OpenAI, body), tc(1, 0, 0, 1, 0));
}
