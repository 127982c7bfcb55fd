//! Property test of [`Node`]: usage read from bytes parsed straight into a [`Node`] is exactly
//! usage read from the same bytes parsed into a `serde_json::Value` (the reference), for every
//! provider family, on documents built from the keys the usage rules read, with repeated keys,
//! escaped keys, every JSON type in every position and numbers in every notation. Then the
//! single-pass scan in front of serde_json (`scan.rs`): [`Node::usage_of_answer`] gives what
//! serde_json alone gives, on those documents broken in every way and on piece soups.

use proptest::prelude::*;
use serde_json::Value;

use super::*;

/// Keys the usage rules read, the containers they look in, and keys no rule reads.
const KEYS: &[&str] = &[
    "usage",
    "usageMetadata",
    "response",
    "type",
    "message",
    "choices",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "output_tokens_details",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
    "promptTokenCount",
    "candidatesTokenCount",
    "cachedContentTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
    "totalTokenCount",
    "message_delta",
    "id",
];

/// A JSON document, with how each piece is written.
#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    /// A number, written as given (`12`, `-3`, `12.0`, `1e2`, `18446744073709551615`...).
    Num(String),
    Str(String, bool),
    Arr(Vec<J>),
    /// Entries: key index, whether the key is written with a `\u` escape, value.
    Obj(Vec<(usize, bool, J)>),
}

fn escaped(s: &str) -> String {
    // The first character as a \u escape: decodes to the same key.
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => format!("\\u{:04x}{}", c as u32, chars.as_str()),
        None => String::new(),
    }
}

fn write(j: &J, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s, esc) => {
            out.push('"');
            out.push_str(&if *esc { escaped(s) } else { s.clone() });
            out.push('"');
        }
        J::Arr(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        J::Obj(entries) => {
            out.push('{');
            for (i, (k, esc, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let key = KEYS[*k % KEYS.len()];
                out.push('"');
                out.push_str(&if *esc { escaped(key) } else { key.to_string() });
                out.push_str("\":");
                write(v, out);
            }
            out.push('}');
        }
    }
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..2000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => (-50i64..0).prop_map(|n| n.to_string()),
        1 => (0u64..100).prop_map(|n| format!("{n}.0")),
        1 => (0u64..100).prop_map(|n| format!("{n}e1")),
        1 => Just("9007199254740992".to_string()),
        1 => Just("-0".to_string()),
    ]
}

fn key(name: &str) -> usize {
    KEYS.iter().position(|k| *k == name).unwrap_or(0)
}

fn num(n: u64) -> J {
    J::Num(n.to_string())
}

fn obj(entries: Vec<(&str, J)>) -> J {
    J::Obj(entries.into_iter().map(|(k, v)| (key(k), false, v)).collect())
}

/// A document shaped like an answer of one of the wire formats, with consistent counts
/// (a, b: the two totals; c, d: parts of them), then changed by a few mutations (an entry
/// dropped, a key repeated with another value, a key escaped, a value replaced by any leaf),
/// so that many documents carry usage the rules accept and the rest sit next to them.
fn answer() -> impl Strategy<Value = J> {
    (0u8..5, 0u64..1000, 0u64..1000, 0u64..1000, 0u64..1000)
        .prop_map(|(shape, a, b, c, d)| {
            let (c, d) = (c.min(a), d.min(b));
            let (container, usage) = match shape {
                0 => (
                    "usage",
                    vec![
                        ("prompt_tokens", num(a)),
                        ("completion_tokens", num(b)),
                        ("total_tokens", num(a + b)),
                        ("prompt_tokens_details", obj(vec![("cached_tokens", num(c))])),
                        ("completion_tokens_details", obj(vec![("reasoning_tokens", num(d))])),
                    ],
                ),
                1 => (
                    "usage",
                    vec![
                        ("input_tokens", num(a)),
                        ("output_tokens", num(b)),
                        ("total_tokens", num(a + b)),
                        ("input_tokens_details", obj(vec![("cached_tokens", num(c))])),
                    ],
                ),
                2 => (
                    "usage",
                    vec![
                        ("input_tokens", num(a)),
                        ("cache_read_input_tokens", num(c)),
                        ("cache_creation_input_tokens", num(d)),
                        ("output_tokens", num(b)),
                    ],
                ),
                3 => (
                    "usageMetadata",
                    vec![
                        ("promptTokenCount", num(a)),
                        ("cachedContentTokenCount", num(c)),
                        ("candidatesTokenCount", num(b)),
                        ("totalTokenCount", num(a + b)),
                    ],
                ),
                _ => (
                    "usage",
                    vec![
                        ("prompt_tokens", num(a)),
                        ("completion_tokens", num(b)),
                        ("total_tokens", num(a + b)),
                        ("prompt_cache_hit_tokens", num(c)),
                        ("prompt_cache_miss_tokens", num(a - c)),
                    ],
                ),
            };
            (container, usage)
        })
        .prop_flat_map(|(container, usage)| {
            let usage = obj(usage);
            let mutations = prop::collection::vec((0u8..4, 0usize..16, leaf()), 0..3);
            (
                Just(container),
                Just(usage),
                mutations,
                prop::option::of(prop::sample::select(vec!["message_delta", "message_start"])),
            )
        })
        .prop_map(|(container, mut usage, mutations, kind)| {
            if let J::Obj(entries) = &mut usage {
                for (op, at, value) in mutations {
                    if entries.is_empty() {
                        break;
                    }
                    let i = at % entries.len();
                    match op {
                        0 => {
                            entries.remove(i);
                        }
                        1 => {
                            let k = entries[i].0;
                            entries.push((k, false, value));
                        }
                        2 => entries[i].1 = true,
                        _ => entries[i].2 = value,
                    }
                }
            }
            let mut root = vec![(container, usage)];
            if let Some(kind) = kind {
                root.push(("type", J::Str(kind.to_string(), false)));
            }
            obj(root)
        })
}

fn leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        6 => number().prop_map(J::Num),
        2 => (
            prop::sample::select(vec![
                "message_delta",
                "message_start",
                "x",
                "a\\\"b",
                // Past `scan::LONG_RUN` (64) plain bytes the scan looks for the end by memchr.
                "a plain run of text longer than sixty-four bytes, read eight bytes at a time, then more of it",
                "more than sixty-four plain bytes, which the scan reads eight at a time, then \\\" an escape",
                // Written raw: a control byte past 64 plain bytes, which serde_json refuses.
                "more than sixty-four plain bytes, which the scan reads eight at a time, then a \u{1} control byte",
                // And one before `LONG_RUN`, found by the eight-byte words.
                "sixteen bytes..., then a \u{1} control byte",
            ]),
            any::<bool>()
        )
            .prop_map(|(s, e)| J::Str(s.to_string(), e)),
    ]
}

fn doc() -> impl Strategy<Value = J> {
    prop_oneof![1 => any_doc(), 2 => answer()]
}

fn any_doc() -> impl Strategy<Value = J> {
    leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            1 => prop::collection::vec(inner.clone(), 0..3).prop_map(J::Arr),
            4 => prop::collection::vec((0..KEYS.len(), prop::bool::weighted(0.1), inner), 0..8).prop_map(J::Obj),
        ]
    })
}

/// A tree as its keys read: objects as sorted maps of each key's last value.
#[derive(Debug, PartialEq)]
enum Norm {
    Leaf(String),
    Obj(std::collections::BTreeMap<String, Norm>),
}

fn norm(n: &Node<'_>) -> Norm {
    match n {
        Node::Object(o) => Norm::Obj(o.iter().map(|(k, v)| (k.to_string(), norm(v))).collect()),
        other => Norm::Leaf(format!("{other:?}")),
    }
}

const FAMILIES: [ProviderFamily; 6] = [
    ProviderFamily::OpenAI,
    ProviderFamily::Mistral,
    ProviderFamily::Qwen,
    ProviderFamily::DeepSeek,
    ProviderFamily::Anthropic,
    ProviderFamily::Gemini,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn node_reads_usage_as_a_value_does(j in doc()) {
        let mut text = String::new();
        write(&j, &mut text);
        let node = Node::parse(text.as_bytes());
        let value = serde_json::from_str::<Value>(&text).ok();
        prop_assert_eq!(node.is_some(), value.is_some(), "parses alike: {}", text);
        if let (Some(node), Some(value)) = (node, value) {
            prop_assert_eq!(norm(&node), norm(&Node::of_value(&value)), "same tree: {}", text);
            for family in FAMILIES {
                prop_assert_eq!(parse_usage_node(family, &node), parse_usage(family, &value), "{:?}: {}", family, text);
            }
            // The short form of a whole answer reads the same usage, and refuses the same bytes.
            let short = Node::usage_of_answer(text.as_bytes());
            prop_assert_eq!(short.is_some(), value.is_object(), "an object: {}", text);
            if let Some(short) = &short {
                for family in FAMILIES {
                    prop_assert_eq!(parse_usage_node(family, short), parse_usage(family, &value), "short {:?}: {}", family, text);
                }
            }
            // An owned copy reads the same.
            let owned = node.clone().into_owned();
            prop_assert_eq!(&owned, &node);
        }
    }
}

/// The property above is not vacuous: run here with its own runner, a good share of the pairs
/// have usage the rules accept (the rest are errors, compared just as strictly).
#[test]
fn the_property_reads_real_usage() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 500, ..ProptestConfig::default() });
    let (read, total) = (std::cell::Cell::new(0usize), std::cell::Cell::new(0usize));
    runner
        .run(&doc(), |j| {
            let mut text = String::new();
            write(&j, &mut text);
            if let Ok(value) = serde_json::from_str::<Value>(&text) {
                for family in FAMILIES {
                    total.set(total.get() + 1);
                    read.set(read.get() + usize::from(parse_usage(family, &value).is_ok()));
                }
            }
            Ok(())
        })
        .unwrap();
    let (read, total) = (read.get(), total.get());
    assert!(read * 10 > total, "only {read} of {total} pairs had usage");
    eprintln!("{read} of {total} (document, family) pairs had usage the rules accept");
}

/// The shapes real answers have, with the usage found and counted.
#[test]
fn node_reads_real_answers() {
    let openai = br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\""}}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":3}}}"#;
    let node = Node::parse(openai).unwrap();
    let counts = parse_usage_node(ProviderFamily::OpenAI, &node).unwrap();
    assert_eq!((counts.input, counts.cached_input, counts.output, counts.reasoning), (10, 2, 4, 3));
    assert_eq!(node.as_object().unwrap().get("choices"), Some(&Node::Array(1)));

    // A repeated key reads as its last value, as in a Value.
    let dup = br#"{"usage":{"input_tokens":1,"output_tokens":2,"input_tokens":5}}"#;
    let counts = parse_usage_node(ProviderFamily::Anthropic, &Node::parse(dup).unwrap()).unwrap();
    assert_eq!((counts.input, counts.output), (5, 2));

    // An escaped key is the same key.
    let esc = br#"{"usage":{"\u0069nput_tokens":4,"output_tokens":1}}"#;
    let counts = parse_usage_node(ProviderFamily::Anthropic, &Node::parse(esc).unwrap()).unwrap();
    assert_eq!(counts.input, 4);

    // Not JSON, and JSON that is not an object.
    assert!(Node::parse(b"{\"usage\":").is_none());
    assert_eq!(
        parse_usage_node(ProviderFamily::OpenAI, &Node::parse(b"[1]").unwrap()),
        Err(UsageError::Malformed {
            field: "(response body)".into(),
            why: "expected a JSON object, got an array".into()
        })
    );
}

// ---------------------------------------------------------------------------------------------
// The single-pass scan (`scan.rs`) against serde_json, on valid and broken answers
// ---------------------------------------------------------------------------------------------

/// Pieces of JSON text, right and wrong: structure, every literal and number form (with the
/// ones serde_json refuses), strings with escapes (lone surrogates too), control characters,
/// non-ASCII text and a byte that is not UTF-8.
const PIECES: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b" ",
    b"\n\t",
    b"\"usage\"",
    b"\"type\"",
    b"\"usageMetadata\"",
    b"\"response\"",
    b"\"prompt_tokens\"",
    b"\"completion_tokens\"",
    b"\"us\\u0061ge\"",
    b"\"x\"",
    b"\"a plain string of more than sixteen bytes\"",
    b"\"more than sixteen plain bytes\\n then an escape\"",
    b"\"more than sixteen plain bytes\x01 then a control byte\"",
    // Past `scan::LONG_RUN` plain bytes: the end searched by memchr.
    b"\"a plain string of more than sixty-four bytes, which the scan reads eight at a time\"",
    b"\"more than sixty-four plain bytes, which the scan reads eight at a time,\\n then an escape\"",
    b"\"more than sixty-four plain bytes, which the scan reads eight at a time,\x01 then a control\"",
    b"\"\\ud800\"",
    b"\"\\ud83d\\ude00\"",
    b"\"a\\q\"",
    b"\"a\\u00g1\"",
    b"\"\x01\"",
    b"\"h\xc3\xa9\"",
    b"\"\xff\"",
    b"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
    b"0",
    b"12",
    b"-3",
    b"01",
    b"1.",
    b"1.5",
    b"2e3",
    b"1e",
    b"-",
    b"+1",
    b"1e400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"true",
    b"false",
    b"null",
    b"nul",
    b"tru",
];

/// Text of a generated document, then a few edits: a piece inserted, a byte removed, the
/// text cut short, nesting added around it.
fn broken_answer() -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((0u8..4, any::<prop::sample::Index>(), 0..PIECES.len()), 0..4);
    (doc(), edits, 0usize..3).prop_map(|(j, edits, nest)| {
        let mut text = String::new();
        write(&j, &mut text);
        let mut bytes = text.into_bytes();
        for (op, at, piece) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 => {
                    bytes.splice(i..i, PIECES[piece].iter().copied());
                }
                1 if i < bytes.len() => {
                    bytes.remove(i);
                }
                2 => bytes.truncate(i),
                _ => {
                    let mut wrapped = b"{\"usage\":".to_vec();
                    wrapped.extend_from_slice(&bytes);
                    wrapped.push(b'}');
                    bytes = wrapped;
                }
            }
        }
        for _ in 0..nest {
            let mut wrapped = b"[".to_vec();
            wrapped.extend_from_slice(&bytes);
            wrapped.push(b']');
            bytes = wrapped;
        }
        bytes
    })
}

/// Objects built from [`PIECES`] alone: mostly not JSON, sometimes JSON serde_json reads
/// differently from what a naive scanner would.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..PIECES.len(), 0..24).prop_map(|ps| {
        let mut out = b"{".to_vec();
        for p in ps {
            out.extend_from_slice(PIECES[p]);
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn the_scan_reads_answers_as_serde_json_does(bytes in prop_oneof![broken_answer(), soup()]) {
        let reference = node::usage_of_answer_serde(&bytes);
        prop_assert_eq!(&Node::usage_of_answer(&bytes), &reference, "{}", String::from_utf8_lossy(&bytes));
        if let Ok(fast) = node::usage_scan(&bytes) {
            prop_assert_eq!(Some(fast), reference, "scan: {}", String::from_utf8_lossy(&bytes));
        }
    }
}

/// The comparison above is not vacuous: the scan takes most answers on itself (the serde_json
/// path decides only what it refuses), including ones with escapes, floats and nesting.
#[test]
fn the_scan_takes_real_answers_on() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 500, ..ProptestConfig::default() });
    let (taken, total) = (std::cell::Cell::new(0usize), std::cell::Cell::new(0usize));
    runner
        .run(&doc(), |j| {
            let mut text = String::new();
            write(&j, &mut text);
            if text.starts_with('{') {
                total.set(total.get() + 1);
                taken.set(taken.get() + usize::from(node::usage_scan(text.as_bytes()).is_ok()));
            }
            Ok(())
        })
        .unwrap();
    let (taken, total) = (taken.get(), total.get());
    assert!(taken * 2 > total, "the scan took only {taken} of {total} objects");
    for answer in [
        &br#"{"id":"c","choices":[{"message":{"content":"Hi \"there\" \u00e9\n"}}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"x":1.5e3,"y":-2,"z":[1,{"a":null}],"s":"\u00e9"}}"#[..],
        br#" {"type":"message","usage":{"input_tokens":3,"output_tokens":4},"usage2":null} "#,
        br#"{"usage":null,"usageMetadata":{"promptTokenCount":1}}"#,
    ] {
        let fast = node::usage_scan(answer).unwrap();
        assert_eq!(Some(fast), node::usage_of_answer_serde(answer), "{}", String::from_utf8_lossy(answer));
    }
    // What the scan leaves to serde_json: a repeated kept key, an escaped top-level key,
    // invalid UTF-8, a float out of range in the usage, deep nesting.
    let deep = format!("{{\"usage\":{}1{}}}", "[".repeat(150), "]".repeat(150));
    for left in [
        &br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#[..],
        br#"{"us\u0061ge":{"prompt_tokens":1}}"#,
        b"{\"x\":\"\xff\",\"usage\":{}}",
        br#"{"usage":{"prompt_tokens":1e400}}"#,
        deep.as_bytes(),
    ] {
        assert!(node::usage_scan(left).is_err(), "{}", String::from_utf8_lossy(left));
    }
}
