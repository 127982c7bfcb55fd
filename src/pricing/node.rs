//! [`Node`]: the read-only JSON tree usage is read from. Parsed straight from an answer's bytes
//! (borrowing its keys and strings, so a well-formed answer costs a handful of small vectors
//! and no string copies), or viewed over a [`serde_json::Value`] (borrowing from it).
//!
//! Rules (what [`parse_usage`](super::parse_usage) sees must not depend on which way the tree
//! was built; a property test in `tests.rs` checks bytes → [`Node`] against bytes → `Value` →
//! [`Node`] for every provider family):
//! - objects keep every key in document order; a duplicated key reads as its **last** value,
//!   as in a `Value` (whose map keeps the last);
//! - keys and strings with escapes are decoded (owned); without escapes they are borrowed;
//! - arrays keep only their length: no usage rule reads into an array, and skipping their
//!   elements (the choices, the content blocks, the candidates: most of an answer) is what
//!   makes this cheap;
//! - numbers are [`serde_json::Number`], exactly as a `Value` holds them.
//!
//! [`Node::usage_of_answer`] (the gateway's read of every whole answer) goes through the
//! single-pass [`Scan`] first and through serde_json for whatever the scan does not take on;
//! `node_tests.rs` checks both ways give the same tree, on valid and broken documents.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::scan::{Fallback, Scan};

/// A JSON value, with arrays reduced to their length.
#[derive(Clone, Debug, PartialEq)]
pub enum Node<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string, decoded.
    Str(Cow<'a, str>),
    /// An array: only how many elements it has.
    Array(usize),
    /// An object.
    Object(Object<'a>),
}

/// A JSON object: its entries in document order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object<'a> {
    entries: Vec<(Cow<'a, str>, Node<'a>)>,
}

impl<'a> Object<'a> {
    /// An empty object with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Object { entries: Vec::with_capacity(n) }
    }

    /// The value of `key` (the last one when the key is repeated).
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key`, to change in place (the last one when the key is repeated).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node<'a>> {
        self.entries.iter_mut().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether `key` is present (even as `null`).
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// Adds an entry at the end (it then wins over an earlier one with the same key).
    pub fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: Node<'a>) {
        self.entries.push((key.into(), value));
    }

    /// The entries, in document order (repeated keys included).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node<'a>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// The same object, owning its keys and strings.
    pub fn into_owned(self) -> Object<'static> {
        Object {
            entries: self.entries.into_iter().map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned())).collect(),
        }
    }
}

impl<'a> Node<'a> {
    /// Parses a JSON document; `None` when the bytes are not JSON.
    pub fn parse(bytes: &'a [u8]) -> Option<Node<'a>> {
        serde_json::from_slice(bytes).ok()
    }

    /// Parses a JSON object (an answer, a stream event); `None` when the bytes are not one.
    pub fn parse_object(bytes: &'a [u8]) -> Option<Node<'a>> {
        Node::parse(bytes).filter(|n| n.as_object().is_some())
    }

    /// The tree of a `Value`, borrowing its keys and strings.
    pub fn of_value(v: &'a Value) -> Node<'a> {
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::Str(Cow::Borrowed(s)),
            Value::Array(a) => Node::Array(a.len()),
            Value::Object(m) => Node::Object(Object {
                entries: m.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Node::of_value(v))).collect(),
            }),
        }
    }

    /// The object, if this is one.
    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The object, if this is one, to change in place.
    pub fn as_object_mut(&mut self) -> Option<&mut Object<'a>> {
        match self {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }

    /// The same tree, owning its keys and strings.
    pub fn into_owned(self) -> Node<'static> {
        match self {
            Node::Null => Node::Null,
            Node::Bool(b) => Node::Bool(b),
            Node::Number(n) => Node::Number(n),
            Node::Str(s) => Node::Str(Cow::Owned(s.into_owned())),
            Node::Array(n) => Node::Array(n),
            Node::Object(o) => Node::Object(o.into_owned()),
        }
    }

    /// What kind of JSON value this is, for error messages ("a string", "an array"...).
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Number(_) => "a number",
            Node::Str(_) => "a string",
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
        }
    }
}

/// A key or string, decoded: borrowed from the input when it has no escapes (also used for
/// the gateway's reading of request keys).
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

// For any `'a` the input outlives (a tree borrowing from the input is also a tree of any
// shorter lifetime), so that structs holding a `Node<'a>` can `#[serde(borrow)]` it.
impl<'de: 'a, 'a> Deserialize<'de> for Node<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Node::Bool(b))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Node::Number(n.into()))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Node::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        // As a `Value` does: a non-finite float (which JSON text cannot hold) is null.
        Ok(Number::from_f64(n).map_or(Node::Null, Node::Number))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Node::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Node::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Node::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Node::Array(n))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Answers' objects mostly have a few keys: one allocation, no growth.
        let mut entries = Vec::with_capacity(8);
        while let Some(Text(k)) = map.next_key()? {
            entries.push((k, map.next_value()?));
        }
        Ok(Node::Object(Object { entries }))
    }
}

/// The top-level entries [`parse_usage_node`](super::parse_usage_node) reads; every other
/// value is skipped unread (no tree, no string decoded).
#[derive(Deserialize)]
struct UsageEntries<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Node<'a>>,
    #[serde(default, borrow)]
    usage: Option<Node<'a>>,
    #[serde(rename = "usageMetadata", default, borrow)]
    usage_metadata: Option<Node<'a>>,
    #[serde(default, borrow)]
    response: Option<Node<'a>>,
}

impl<'a> Node<'a> {
    /// A whole answer reduced to what [`parse_usage_node`](super::parse_usage_node) reads
    /// (`type`, `usage`, `usageMetadata`, `response`), with the usage found exactly as in the
    /// whole tree; `None` when the bytes are not a JSON object. Cheaper than
    /// [`Node::parse`]: the other values (the answer's content) are only stepped over, in one
    /// pass by [`Scan`] (no tree, no string decoded); whatever that pass does not take on
    /// (see `scan.rs`) is read by serde_json as before. A repeated top-level key of the four
    /// falls back to the whole tree (whose last value wins), and so does anything else the
    /// short form does not take.
    pub fn usage_of_answer(bytes: &'a [u8]) -> Option<Node<'a>> {
        match usage_scan(bytes) {
            Ok(short) => Some(short),
            Err(Fallback) => usage_of_answer_serde(bytes),
        }
    }
}

/// The top-level keys of the short form, in its order.
const USAGE_KEYS: [&str; 4] = ["type", "usage", "usageMetadata", "response"];

/// [`Node::usage_of_answer`]'s fast path ([`Scan`]): one pass over the answer, checking it
/// whole and building only the four values the short form keeps. A repeated one of those keys
/// is a [`Fallback`] (serde_json's derived reader refuses it, and the whole tree is read).
pub(super) fn usage_scan(bytes: &[u8]) -> Result<Node<'_>, Fallback> {
    let text = std::str::from_utf8(bytes).map_err(|_| Fallback)?;
    let mut kept: [Option<Node<'_>>; 4] = Default::default();
    let mut seen = [false; 4];
    Scan::new(text).object_entries(|key, scan| {
        let Some(k) = USAGE_KEYS.iter().position(|u| *u == key) else {
            return scan.skip_value();
        };
        if std::mem::replace(&mut seen[k], true) {
            return Err(Fallback);
        }
        // `null` reads as absent, as an `Option` field reads it.
        kept[k] = Some(scan.node()?).filter(|n| !n.is_null());
        Ok(())
    })?;
    Ok(short_form(kept))
}

/// The short form of the four values kept (in [`USAGE_KEYS`] order; absent ones left out).
fn short_form(kept: [Option<Node<'_>>; 4]) -> Node<'_> {
    let mut o = Object::with_capacity(4);
    for (k, v) in USAGE_KEYS.into_iter().zip(kept) {
        if let Some(v) = v {
            o.insert(k, v);
        }
    }
    Node::Object(o)
}

/// [`Node::usage_of_answer`] by serde_json alone: the reference of the fast path, and what
/// decides every text the fast path does not take on.
pub(super) fn usage_of_answer_serde(bytes: &[u8]) -> Option<Node<'_>> {
    // Only an object: a derived struct would also read an array, field by position.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    match serde_json::from_slice::<UsageEntries<'_>>(bytes) {
        // `null` reads as absent here; the rules treat both alike.
        Ok(e) => Some(short_form([e.kind, e.usage, e.usage_metadata, e.response])),
        Err(_) => Node::parse_object(bytes),
    }
}
