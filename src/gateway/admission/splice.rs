//! The output cap on a top-level field, spliced into the body's bytes (the Hard
//! budget's per-request cost).
//!
//! Rules, the same as clamping a parsed object: every top-level key of `present` whose value is
//! not `null` counts; a value that is not an unsigned integer at most `cap` (a larger number, a
//! float, a negative, a string) is replaced by `cap`; when no such key is there, `insert: cap`
//! is added as the object's first member (set in place when it is there as `null`). Everything else reaches upstream byte for byte, in
//! the client's key order (the parsed-object path re-serialised the whole body, sorted).
//!
//! Edge cases: a body that is not a JSON object gives `None` (the caller sends it unchanged and
//! the upstream refuses it); a body repeating one of the capped keys gives `None` too, so the
//! caller takes the parsed-object path, which keeps the last value as JSON readers do — a
//! splice of each occurrence could leave a later `null` (no bound) in force.
//!
//! The members are found by the single-pass scan of `pricing/scan.rs` (serde_json reads what
//! it does not take on; a test checks both ways find the same members).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::pricing::scan::Scan;

/// A top-level key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level members of an object, values as raw slices of the body.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The top-level members of the object `body` (keys decoded, values as raw slices of it):
/// by the single-pass scan of `pricing/scan.rs`, or by serde_json for whatever the scan does
/// not take on (an escaped key, a body that is not UTF-8 or not JSON: then `None`).
fn members(body: &[u8]) -> Option<Vec<(Cow<'_, str>, &str)>> {
    if let Ok(text) = std::str::from_utf8(body) {
        let mut out = Vec::with_capacity(8);
        if Scan::new(text).raw_entries(|k, v| out.push((Cow::Borrowed(k), v))).is_ok() {
            return Some(out);
        }
    }
    let Members(members) = serde_json::from_slice(body).ok()?;
    Some(members.into_iter().map(|(k, v)| (k.0, v.get())).collect())
}

/// `body` with the cap applied to its top-level `present` keys (or `insert` added, or set
/// when it is there as `null`); `None` when
/// the body is not a JSON object or repeats a capped key (see the module rules).
pub(crate) fn cap_top_level(body: &[u8], present: &[&str], insert: &str, cap: u32) -> Option<Vec<u8>> {
    let members = members(body)?;
    let base = body.as_ptr() as usize;
    let mut edits: Vec<(usize, usize)> = Vec::new();
    let mut seen = 0usize;
    let mut any = false;
    for (k, raw) in &members {
        if !present.contains(&k.as_ref()) {
            continue;
        }
        seen += 1;
        if *raw == "null" {
            continue;
        }
        any = true;
        if serde_json::from_str::<u64>(raw).is_ok_and(|n| n <= u64::from(cap)) {
            continue;
        }
        let start = (raw.as_ptr() as usize).checked_sub(base)?;
        edits.push((start, start + raw.len()));
    }
    let distinct = present.iter().filter(|p| members.iter().any(|(k, _)| k == *p)).count();
    if seen > distinct {
        return None;
    }
    let digits = cap.to_string();
    let mut out = Vec::with_capacity(body.len() + insert.len() + 16);
    if !any && let Some((_, v)) = members.iter().find(|(k, _)| k == insert) {
        // `insert` is there as `null`: set it in place (a second member would come first and
        // lose to the `null`).
        let start = (v.as_ptr() as usize).checked_sub(base)?;
        edits.push((start, start + v.len()));
    } else if !any {
        let open = body.iter().position(|&b| b == b'{')?;
        out.extend_from_slice(&body[..=open]);
        serde_json::to_writer(&mut out, insert).ok()?;
        out.push(b':');
        out.extend_from_slice(digits.as_bytes());
        if !members.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(&body[open + 1..]);
        return Some(out);
    }
    let mut at = 0;
    for (start, end) in edits {
        out.extend_from_slice(body.get(at..start)?);
        out.extend_from_slice(digits.as_bytes());
        at = end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    fn s(b: Option<Vec<u8>>) -> String {
        String::from_utf8(b.expect("capped")).expect("utf-8")
    }

    #[test]
    fn inserts_first_and_keeps_the_rest_byte_for_byte() {
        let body = br#" { "model" : "m",  "messages":[{"role":"user","content":"hi"}] , "z":1.50}"#;
        assert_eq!(
            s(cap_top_level(body, &["max_tokens"], "max_tokens", 64)),
            r#" {"max_tokens":64, "model" : "m",  "messages":[{"role":"user","content":"hi"}] , "z":1.50}"#
        );
        assert_eq!(s(cap_top_level(b"{}", &["max_tokens"], "max_tokens", 7)), r#"{"max_tokens":7}"#);
    }

    #[test]
    fn clamps_what_is_above_or_not_an_unsigned_integer() {
        let cap = |body: &str| s(cap_top_level(body.as_bytes(), &["max_completion_tokens", "max_tokens"], "x", 100));
        assert_eq!(cap(r#"{"max_tokens":5000,"a":1}"#), r#"{"max_tokens":100,"a":1}"#);
        assert_eq!(cap(r#"{"max_tokens":50}"#), r#"{"max_tokens":50}"#);
        assert_eq!(cap(r#"{"max_tokens": 1e3 }"#), r#"{"max_tokens": 100 }"#);
        assert_eq!(
            cap(r#"{"max_tokens":-1,"max_completion_tokens":"9"}"#),
            r#"{"max_tokens":100,"max_completion_tokens":100}"#
        );
        assert_eq!(
            cap(r#"{"max_tokens":null,"max_completion_tokens":7}"#),
            r#"{"max_tokens":null,"max_completion_tokens":7}"#
        );
        // Only null: as if absent; the inserted key set in place when it is the null one.
        assert_eq!(cap(r#"{"max_tokens":null}"#), r#"{"x":100,"max_tokens":null}"#);
        let ins = |body: &str| s(cap_top_level(body.as_bytes(), &["max_tokens"], "max_tokens", 100));
        assert_eq!(ins(r#"{"a":1,"max_tokens":null}"#), r#"{"a":1,"max_tokens":100}"#);
    }

    #[test]
    fn refuses_what_is_not_an_object_or_repeats_a_capped_key() {
        assert_eq!(cap_top_level(b"[1,2]", &["max_tokens"], "max_tokens", 1), None);
        assert_eq!(cap_top_level(b"{\"a\":", &["max_tokens"], "max_tokens", 1), None);
        assert_eq!(cap_top_level(br#"{"max_tokens":5,"max_tokens":null}"#, &["max_tokens"], "max_tokens", 1), None);
        // A repeated key that is not capped is fine.
        assert!(cap_top_level(br#"{"a":5,"a":6}"#, &["max_tokens"], "max_tokens", 1).is_some());
    }

    #[test]
    fn the_scan_and_serde_json_find_the_same_members() {
        let serde = |body: &[u8]| {
            serde_json::from_slice::<Members<'_>>(body).ok().map(|Members(m)| {
                m.into_iter().map(|(k, v)| (k.0.into_owned(), v.get().to_string())).collect::<Vec<_>>()
            })
        };
        for body in [
            &br#" { "model" : "m",  "messages":[{"role":"user","content":"h\u00e9 \"x\""}] , "z":1.50, "max_tokens": 12 } "#[..],
            br#"{"a":5,"a":6,"b":[1,[2,{}]],"c":null,"d":true,"e":-1e-3}"#,
            br#"{"max\u005ftokens":9000}"#,
            br#"{}"#,
            b"{\"a\":\"\xff\"}",
            br#"{"a":01}"#,
            br#"{"a":1,}"#,
            br#"[1]"#,
        ] {
            let fast = members(body).map(|m| m.into_iter().map(|(k, v)| (k.into_owned(), v.to_string())).collect::<Vec<_>>());
            assert_eq!(fast, serde(body), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn escaped_keys_are_recognised() {
        let body = br#"{"max\u005ftokens":9000}"#;
        assert_eq!(s(cap_top_level(body, &["max_tokens"], "max_tokens", 10)), r#"{"max\u005ftokens":10}"#);
    }

    /// The parsed-object oracle: the clamp-or-insert on a `Map` that `cap_body` falls back to.
    fn oracle(obj: &mut Map<String, Value>, present: &[&str], insert: &str, cap: u32) {
        super::super::clamp_or_insert(obj, present, insert, cap);
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            (0u64..20_000).prop_map(Value::from),
            (-5i64..0).prop_map(Value::from),
            (0.0f64..9000.0).prop_map(|f| json!(f)),
            "[a-z]{0,4}".prop_map(Value::from),
            Just(json!({"nested": [1, {"max_tokens": 99999}]})),
        ]
    }

    proptest! {
        /// The splice gives the same object as clamping the parsed object.
        #[test]
        fn the_splice_equals_the_parsed_object_path(
            members in proptest::collection::btree_map(
                prop_oneof![Just("max_tokens".to_string()), Just("max_completion_tokens".to_string()), "[a-z]{1,6}"],
                value_strategy(),
                0..6,
            ),
            cap in 1u32..10_000,
            pretty in any::<bool>(),
        ) {
            let obj: Map<String, Value> = members.into_iter().collect();
            let body = if pretty {
                serde_json::to_vec_pretty(&Value::Object(obj.clone())).expect("json")
            } else {
                serde_json::to_vec(&Value::Object(obj.clone())).expect("json")
            };
            let present = ["max_completion_tokens", "max_tokens"];
            let spliced = cap_top_level(&body, &present, "max_completion_tokens", cap).expect("an object");
            let got: Value = serde_json::from_slice(&spliced).expect("valid JSON");
            let mut want = obj;
            oracle(&mut want, &present, "max_completion_tokens", cap);
            prop_assert_eq!(got, Value::Object(want));
        }
    }
}
