//! The common subset of YAML read straight from the parser's events into JSON values.
//!
//! serde-saphyr (the reference reader, [`super::yaml`]) spends about as long in its
//! deserializer layer (event look-ahead, redaction scopes, budgets, key capture) as its
//! parser spends scanning: at 10,000 routes, 1.4 s of CPU for the text where the events alone
//! take 0.6 s. This reader drives the same parser (granit-parser, with serde-saphyr's parser
//! options) and builds each document's [`Value`] from its events, for the documents manifests
//! are made of. Anything outside that subset makes it give up ([`read`] returns `None`) and
//! the caller reads the text with serde-saphyr, which gives the result, or the error, exactly
//! as before. Outside the subset:
//! - any parse error (serde-saphyr reports it, with its own wording and snippet);
//! - anchors, aliases, explicit tags, merge keys (`<<`), keys that are not strings;
//! - a plain scalar that is not one of: a null spelling (`~`, `null`, `Null`, `NULL`,
//!   nothing); a boolean (YAML 1.1 spellings, as serde-saphyr reads them); a word that starts
//!   with an ASCII letter and is neither of those nor a non-finite float's (`inf`, `nan`, ...);
//!   a word that starts with a digit and has a byte no number is spelled with (`5m`, `30s`); a
//!   canonical decimal integer of at most 18 digits, or a plain decimal fraction;
//! - a plain key that is not such a word;
//! - a repeated key (serde-saphyr's default refuses it);
//! - nesting deeper than serde-saphyr's default depth budget.
//!
//! Quoted and block scalars are strings, as serde-saphyr reads them into a JSON value; null
//! documents are skipped, as serde-saphyr skips them. A property test checks that this reader
//! and serde-saphyr agree on every text this reader takes.

use granit_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Value};

/// The parser options serde-saphyr derives from its `budget`, without comments.
fn parser_options(budget: &serde_saphyr::Budget) -> granit_parser::Options {
    let default = granit_parser::Options::default();
    granit_parser::options! {
        simple_key_max_lookahead: budget.simple_key_max_lookahead,
        flow_nesting_limit: budget.flow_nesting_limit,
        block_nesting_limit: default.block_nesting_limit.max(budget.max_depth.saturating_add(1)),
        emit_comments: false,
    }
}

/// A collection being built.
enum Open {
    Seq(Vec<Value>),
    /// A mapping and the key whose value comes next.
    Map(Map<String, Value>, Option<String>),
}

/// Every non-null document of `text`, each added to the collection as soon as it is complete;
/// `None` when the text is outside the subset (see the module comment).
pub fn read<C: Default + Extend<Value>>(text: &str) -> Option<C> {
    let budget = serde_saphyr::Budget::default();
    let mut parser = Parser::new_from_str_with_options(text, parser_options(&budget));
    // Deeper than serde-saphyr's default depth budget goes to it.
    let depth = budget.max_depth;
    let mut out = C::default();
    let mut stack: Vec<Open> = Vec::new();
    loop {
        let (event, _) = parser.next_event()?.ok()?;
        let is_map = matches!(event, Event::MappingStart(..));
        let done = match event {
            Event::StreamStart | Event::DocumentStart(..) | Event::DocumentEnd => continue,
            Event::StreamEnd => return stack.is_empty().then_some(out),
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 || tag.is_some() {
                    return None;
                }
                if let Some(Open::Map(_, key @ None)) = stack.last_mut() {
                    *key = Some(key_of(text, style)?);
                    continue;
                }
                value_of(text, style)?
            }
            Event::SequenceStart(_, anchor, tag) | Event::MappingStart(_, anchor, tag) => {
                if anchor != 0 || tag.is_some() || stack.len() >= depth {
                    return None;
                }
                // A collection as a key is outside the subset.
                if let Some(Open::Map(_, None)) = stack.last() {
                    return None;
                }
                stack.push(if is_map { Open::Map(Map::new(), None) } else { Open::Seq(Vec::new()) });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop()? {
                Open::Seq(items) => Value::Array(items),
                Open::Map(map, None) => Value::Object(map),
                Open::Map(_, Some(_)) => return None,
            },
            _ => return None,
        };
        match stack.last_mut() {
            None if done.is_null() => {}
            None => out.extend(std::iter::once(done)),
            Some(Open::Seq(items)) => items.push(done),
            Some(Open::Map(map, key)) => {
                let key = key.take()?;
                if map.insert(key, done).is_some() {
                    return None;
                }
            }
        }
    }
}

/// A word serde-saphyr reads as a boolean ([`yaml11_bool`]) or that Rust's float parser knows
/// (`inf`, `infinity`, `nan`; serde-saphyr keeps those as strings, but they are left to it).
fn is_reserved_word(s: &str) -> bool {
    yaml11_bool(s).is_some() || ["inf", "infinity", "nan"].iter().any(|w| s.eq_ignore_ascii_case(w))
}

/// A plain scalar serde-saphyr reads as null.
fn is_null_spelling(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// A boolean as serde-saphyr reads a plain scalar into a JSON value (YAML 1.1 spellings, any case).
fn yaml11_bool(s: &str) -> Option<bool> {
    let is = |words: &[&str]| words.iter().any(|w| s.eq_ignore_ascii_case(w));
    if is(&["true", "yes", "y", "on"]) {
        Some(true)
    } else if is(&["false", "no", "n", "off"]) {
        Some(false)
    } else {
        None
    }
}

/// Bytes a number may be spelled with (decimal, `0x`/`0o`/`0b` radix, exponent, underscores).
fn is_number_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || matches!(b, b'.' | b'_' | b'+' | b'-' | b'x' | b'X' | b'o' | b'O')
}

/// A plain scalar read as the same string whatever the target: a word that starts with an
/// ASCII letter and is not a reserved word nor a null spelling, or one that starts with a
/// digit and has a byte no number is spelled with (`5m`, `30s`, `12:30`).
pub(super) fn is_plain_word(s: &str) -> bool {
    match s.as_bytes().first() {
        Some(b) if b.is_ascii_alphabetic() => !is_reserved_word(s) && !is_null_spelling(s),
        Some(b) if b.is_ascii_digit() => !s.bytes().all(is_number_byte),
        _ => false,
    }
}

fn key_of(text: std::borrow::Cow<'_, str>, style: ScalarStyle) -> Option<String> {
    match style {
        ScalarStyle::Plain if !is_plain_word(&text) => None,
        _ => Some(text.into_owned()),
    }
}

fn value_of(text: std::borrow::Cow<'_, str>, style: ScalarStyle) -> Option<Value> {
    match style {
        ScalarStyle::Plain => plain_value(&text),
        _ => Some(Value::String(text.into_owned())),
    }
}

/// What a plain scalar means in the subset (see the module comment); `None` outside it.
pub(super) fn plain_value(s: &str) -> Option<Value> {
    if is_null_spelling(s) {
        return Some(Value::Null);
    }
    if is_plain_word(s) {
        return Some(Value::String(s.to_owned()));
    }
    if let Some(b) = yaml11_bool(s) {
        return Some(Value::Bool(b));
    }
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (digits, None),
    };
    let canonical = !whole.is_empty()
        && whole.len() <= 18
        && whole.bytes().all(|b| b.is_ascii_digit())
        && (whole == "0" || !whole.starts_with('0'));
    if !canonical {
        return None;
    }
    match fraction {
        None => {
            let n: u64 = whole.parse().ok()?;
            Some(if negative {
                if n == 0 {
                    return None;
                }
                Value::from(-i64::try_from(n).ok()?)
            } else {
                Value::from(n)
            })
        }
        Some(f) if !f.is_empty() && f.len() <= 17 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let v: f64 = s.parse().ok()?;
            v.is_finite().then(|| Value::from(v))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reference(text: &str) -> Result<Vec<Value>, String> {
        super::super::yaml::parse_reference(text)
    }

    /// The manifests shipped with the project and the bench's generated route: all in both
    /// readers' subsets.
    #[test]
    fn shipped_manifests_are_read_here_as_serde_saphyr_reads_them() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts: Vec<String> =
            ["examples/routes.yaml", "examples/budgets.yaml", "examples/quickstart/routes.yaml"]
                .iter()
                .map(|p| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")))
                .collect();
        texts.push(
            "---\napiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: route-00001\n  namespace: bench\n\
             spec:\n  model: alias-00001\n  backends:\n    - name: backend-0\n      provider: provider-0\n      \
             model: upstream-model-0\n      endpoint: {mock: {}}\n      weight: 50\n      priority: 0\n      \
             pricing: {input: \"0.25\", cachedInput: \"0.025\", output: \"2.00\"}\n"
                .into(),
        );
        for text in &texts {
            let fast = read::<Vec<Value>>(text).unwrap_or_else(|| panic!("not in the subset:\n{text}"));
            assert!(!fast.is_empty());
            assert_eq!(Ok(fast.clone()), reference(text));
            let lines = super::super::yaml_lines::read::<Vec<Value>>(text)
                .unwrap_or_else(|| panic!("not in the line reader's subset:\n{text}"));
            assert_eq!(lines, fast);
        }
    }

    #[test]
    fn outside_the_subset_is_left_to_serde_saphyr() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 5\n",
            "a: !custom x\n",
            "base: &b {x: 1}\nc:\n  <<: *b\n",
            "a: 0x1F\n",
            "a: 007\n",
            "a: 1_000\n",
            "a: +5\n",
            "a: 1e3\n",
            "a: .inf\n",
            "a: nan\n",
            "a: 2001-12-14\n",
            "a: 1\na: 2\n",
            "true: 1\n",
            "1: x\n",
            "? [a]\n: b\n",
            "a: [1, 2\n",
            "a:\n  - b\n - c\n",
            &format!("{}x{}", "[".repeat(70), "]".repeat(70)),
        ] {
            assert!(read::<Vec<Value>>(text).is_none(), "{text:?} was read by the fast path");
        }
        // The repeated key is an error of serde-saphyr's, reported as before.
        assert!(reference("a: 1\na: 2\n").is_err());
    }

    #[test]
    fn scalars_of_the_subset() {
        let text = "a: ~\nb:\nc: Null\nd: word-1\ne: 42\nf: -7\ng: 0\nh: 0.25\ni: -0.5\nj: 'yes'\nk: \"0x1F\"\n\
                    l: |\n  two\n  lines\nm: >\n  folded\n  text\nq: [x, 1, {o: p}]\n";
        let fast = read::<Vec<Value>>(text).expect("in the subset");
        assert_eq!(Ok(fast.clone()), reference(text));
        assert_eq!(fast[0]["e"], 42);
        assert_eq!(fast[0]["j"], "yes");
        assert!(fast[0]["b"].is_null());
        // Null documents are skipped, as serde-saphyr skips them.
        assert_eq!(read::<Vec<Value>>("---\n---\na: 1\n---\n~\n").map(|d| d.len()), Some(1));
    }

    /// A small YAML tree, printed in block or flow style.
    #[derive(Clone, Debug)]
    enum Node {
        Scalar(String),
        Map(Vec<(String, Node)>),
        Seq(Vec<Node>),
    }

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z][a-z0-9-]{0,6}",
            2 => "-?[0-9]{1,20}",
            2 => "-?[0-9]{1,3}\\.[0-9]{0,4}",
            1 => "(0|-0|00|-00)(\\.0)?",
            2 => prop::sample::select(vec![
                "yes", "No", "TRUE", "false", "on", "OFF", "y", "N", "null", "Null", "NULL", "~", "", "inf", "Inf",
                ".inf", "-.inf", ".NaN", "nan", "0x1F", "0o17", "0b11", "1e3", "+5", "007", "1_000", "2001-12-14",
                "12:30", "&a x", "*a", "!!str 5", "!!int 7", "!x y", "a b", "x#y", "\"q\\tz\"", "'it''s'", "\"\"",
                "'5'", "\"true\"", "é", "_x", "X9",
                // Plain and quoted scalars with the bytes the line reader watches for.
                "a: b", "a #b", "a#b", "x, y", "-", "-x", "- x", "@x", "`x", "a:b", "a:", "http://x.y/z", "it's",
                "a  b", "?x", ":x", "%x", "{a", "a}", "x]", ",x", "|", ">", "a'b", "'#'", "\"a # b\"", "\"a\\\"b\"",
                "'a: b'", "a/b.c_d", "~x", "x~", "+x",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-c]{1,2}",
            1 => prop::sample::select(vec!["true", "no", "null", "~", "1", "-2", "0.5", "<<", "\"q k\"", "'s'", "_k", "é"])
                .prop_map(str::to_owned),
        ]
    }

    fn node() -> impl Strategy<Value = Node> {
        scalar().prop_map(Node::Scalar).prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec((key(), inner.clone()), 0..4).prop_map(Node::Map),
                prop::collection::vec(inner, 0..4).prop_map(Node::Seq),
            ]
        })
    }

    fn flow(node: &Node) -> String {
        match node {
            Node::Scalar(s) => s.clone(),
            Node::Map(entries) => {
                let items: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: {}", flow(v))).collect();
                format!("{{{}}}", items.join(", "))
            }
            Node::Seq(items) => format!("[{}]", items.iter().map(flow).collect::<Vec<_>>().join(", ")),
        }
    }

    /// How a generated document is laid out (every layout is valid YAML for valid scalars).
    #[derive(Clone, Copy, Debug)]
    struct Layout {
        /// Collections at this indentation or deeper are written in flow style.
        flow_at: usize,
        /// A mapping's sequence value at the key's own indentation (`key:\n- x`).
        compact_seq: bool,
        /// A sequence item's mapping starting on the dash's line (`- key: value`).
        compact_item: bool,
        /// Spaces after a dash.
        dash_pad: usize,
        /// A comment after each scalar value.
        comments: bool,
    }

    fn layout() -> impl Strategy<Value = Layout> {
        (0usize..8, any::<bool>(), any::<bool>(), 1usize..4, any::<bool>()).prop_map(
            |(flow_at, compact_seq, compact_item, dash_pad, comments)| Layout {
                flow_at: flow_at * 2,
                compact_seq,
                compact_item,
                dash_pad,
                comments,
            },
        )
    }

    /// `node` in block style at `indent`; `first` is written before the first line instead of
    /// the indentation (a sequence item's `- `).
    fn block(node: &Node, indent: usize, first: Option<&str>, l: Layout, out: &mut String) {
        let inline = |v: &Node, at: usize| match v {
            Node::Scalar(_) => true,
            Node::Map(e) => e.is_empty() || at >= l.flow_at,
            Node::Seq(i) => i.is_empty() || at >= l.flow_at,
        };
        let comment = |v: &Node| if l.comments && matches!(v, Node::Scalar(_)) { " # c" } else { "" };
        let mut lead = first.map(str::to_owned);
        let mut pad = |out: &mut String| match lead.take() {
            Some(f) => out.push_str(&f),
            None => out.push_str(&" ".repeat(indent)),
        };
        match node {
            Node::Map(entries) if !entries.is_empty() => {
                for (k, v) in entries {
                    pad(out);
                    if inline(v, indent + 2) {
                        out.push_str(&format!("{k}: {}{}\n", flow(v), comment(v)));
                    } else {
                        out.push_str(&format!("{k}:\n"));
                        let at = if l.compact_seq && matches!(v, Node::Seq(_)) { indent } else { indent + 2 };
                        block(v, at, None, l, out);
                    }
                }
            }
            Node::Seq(items) if !items.is_empty() => {
                let dash = format!("-{}", " ".repeat(l.dash_pad));
                for v in items {
                    pad(out);
                    let inner = indent + 1 + l.dash_pad;
                    if inline(v, inner) {
                        out.push_str(&format!("{dash}{}{}\n", flow(v), comment(v)));
                    } else if l.compact_item && matches!(v, Node::Map(_)) {
                        block(v, inner, Some(&dash), l, out);
                    } else {
                        out.push_str("-\n");
                        block(v, indent + 2, None, l, out);
                    }
                }
            }
            other => {
                pad(out);
                out.push_str(&format!("{}\n", flow(other)));
            }
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec((node(), layout(), any::<bool>()), 1..4).prop_map(|docs| {
            let mut out = String::new();
            for (doc, layout, comment) in docs {
                out.push_str("---\n");
                if comment {
                    out.push_str("# a comment\n");
                }
                block(&doc, 0, None, layout, &mut out);
            }
            out
        })
    }

    /// Bytes a mutation inserts: the ones YAML's structure is made of.
    const MUTATIONS: &[&str] = &[
        " ", "  ", ":", ": ", "-", "- ", "#", " #", "'", "\"", "{", "}", "[", "]", ",", "\n", "\n  ", "&", "*", "!",
        "|", ">", "?", "\t", "\\", "---\n", "...\n", "%",
    ];

    /// The generated texts exercise both readers: a fair share of them is taken by each (so
    /// the agreement properties below are not met by giving up on everything).
    #[test]
    fn both_readers_take_a_fair_share_of_the_generated_texts() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut fast, mut lines, mut valid, total) = (0, 0, 0, 1000);
        for _ in 0..total {
            let text = text().new_tree(&mut runner).expect("a text").current();
            valid += usize::from(reference(&text).is_ok());
            fast += usize::from(read::<Vec<Value>>(&text).is_some());
            lines += usize::from(super::super::yaml_lines::read::<Vec<Value>>(&text).is_some());
        }
        eprintln!("of {total} generated texts: {valid} valid, the event reader took {fast}, the line reader {lines}");
        assert!(fast * 4 >= total && lines * 4 >= total, "{fast} and {lines} of {total}");
    }

    /// Whatever either fast reader takes of `text`, it reads as serde-saphyr does.
    fn both_agree_with_serde_saphyr(text: &str) -> Result<(), TestCaseError> {
        let expected = reference(text);
        if let Some(fast) = read::<Vec<Value>>(text) {
            prop_assert_eq!(Ok(fast), expected.clone(), "{}", text);
        }
        if let Some(lines) = super::super::yaml_lines::read::<Vec<Value>>(text) {
            prop_assert_eq!(Ok(lines), expected, "line reader:\n{}", text);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever either fast reader takes, it reads as serde-saphyr does.
        #[test]
        fn agrees_with_serde_saphyr(text in text()) {
            both_agree_with_serde_saphyr(&text)?;
        }

        /// Texts with a byte or two of YAML syntax inserted anywhere: whatever either reader
        /// takes, it reads as serde-saphyr does (which mostly refuses them).
        #[test]
        fn mutated_texts_agree_with_serde_saphyr(
            text in text(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(MUTATIONS)), 1..3),
        ) {
            let mut text = text;
            for (at, insert) in edits {
                let mut at = at.index(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, insert);
            }
            both_agree_with_serde_saphyr(&text)?;
        }

        /// Documents of words, integers and quoted strings are always in the subset.
        #[test]
        fn plain_documents_are_in_the_subset(
            entries in prop::collection::btree_map("[a-z][a-z0-9]{0,6}".prop_filter("a word", |s| is_plain_word(s)), prop_oneof![
                "[a-z][a-z0-9-]{0,6}".prop_filter("not reserved", |s| is_plain_word(s)),
                "[1-9][0-9]{0,6}",
                "\"[0-9.]{0,6}\"",
            ], 1..8),
        ) {
            let text: String = entries.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            let fast = read::<Vec<Value>>(&text);
            prop_assert!(fast.is_some(), "{}", text);
            prop_assert_eq!(Ok(fast.unwrap_or_default()), reference(&text));
        }
    }
}
