//! A single-pass JSON scanner for the gateway's per-request reads: the top-level
//! entries of a JSON object (each key and where its value's text is), every value checked as
//! serde_json would check it, and the values the caller keeps built as [`Node`]s without
//! building a tree for the rest.
//!
//! It is a **fast path in front of serde_json, never a second JSON dialect**: it accepts only a
//! strict subset of what serde_json accepts, and its callers ([`Node::usage_of_answer`], the
//! gateway's client request and its Hard-budget output-cap splice) answer [`Fallback`] with
//! their serde_json path, which then gives the exact result and error. So whatever this scanner does not take on, it refuses:
//! - text that is not valid UTF-8 as a whole (serde_json takes invalid UTF-8 inside strings it
//!   skips; this scanner leaves such bodies to it);
//! - a top-level key written with an escape (the callers would have to decode it);
//! - nesting deeper than [`MAX_DEPTH`] (serde_json's own limit is 128 for the values it
//!   builds; skipped values have none);
//! - anything serde_json refuses: bad literals, numbers (`01`, `1.`, `1e`, `+1`), control
//!   characters in strings, unknown escapes, `\u` without four hex digits, a missing `,` or
//!   `:`, a trailing comma, text after the value.
//!
//! What it accepts, it reads as serde_json does: whitespace is space, tab, LF and CR; a skipped
//! string's `\u` escape needs only its four hex digits (serde_json does not check surrogates in
//! what it skips); a kept string or key with escapes, and a kept number other than a plain
//! unsigned integer of at most 19 digits, is handed to serde_json itself (its error, e.g. a
//! lone surrogate or a float out of range, is a [`Fallback`]). Property tests
//! (`node_tests.rs`, `gateway/request.rs`) check the fast path against the serde_json path on
//! valid and broken documents; `gateway/admission/splice.rs` checks the splice's members.
//!
//! Cost (bench/instructions.sh): only objects and arrays recurse; strings are searched eight
//! bytes at a time for their end, and past [`LONG_RUN`] bytes by `memchr` (a 100 KB request's
//! text; below that, `memchr`'s set-up costs more than the words it saves).

use std::borrow::Cow;

use super::node::{Node, Object, Text};

/// Deepest nesting the scanner takes (beyond it: [`Fallback`]).
pub const MAX_DEPTH: usize = 100;

/// Plain bytes of a string read eight at a time before the rest of the run is searched by
/// `memchr`: for a shorter run, `memchr`'s set-up costs more than the words it saves (about 250
/// instructions for an answer's 30-byte text under callgrind, against 12 a word).
pub const LONG_RUN: usize = 64;

/// The scanner did not take this text on: the caller's serde_json path decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback;

type Res<T> = Result<T, Fallback>;

/// A position in a JSON text that is valid UTF-8.
pub struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    depth: usize,
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether a string byte ends a plain run: a quote, a backslash or a control character.
fn special(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// Where the first byte of `x` (little endian) that is `"`, `\` or below 0x20 is, if any
/// (borrows only carry upwards, so the lowest flagged byte is exact).
fn first_special(x: u64) -> Option<usize> {
    let ctrl = x.wrapping_sub(LO * 0x20) & !x;
    let q = x ^ (LO * u64::from(b'"'));
    let quote = q.wrapping_sub(LO) & !q;
    let s = x ^ (LO * u64::from(b'\\'));
    let backslash = s.wrapping_sub(LO) & !s;
    let m = (ctrl | quote | backslash) & HI;
    (m != 0).then(|| m.trailing_zeros() as usize / 8)
}

/// From `i`, inside a string whose run of plain bytes is long: where the next quote or
/// backslash is (found by `memchr`, many bytes a step), after one check that no control
/// character comes before it. A control character there, or no quote or backslash at all, is
/// a [`Fallback`]: serde_json refuses both.
fn long_run(b: &[u8], i: usize) -> Res<usize> {
    let rest = b.get(i..).ok_or(Fallback)?;
    let k = memchr::memchr2(b'"', b'\\', rest).ok_or(Fallback)?;
    // Without a branch per byte, so that it compiles to vector instructions.
    let control = rest[..k].iter().fold(false, |seen, &c| seen | (c < 0x20));
    if control { Err(Fallback) } else { Ok(i + k) }
}

impl<'a> Scan<'a> {
    /// A scanner at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Self { text, b: text.as_bytes(), i: 0, depth: 0 }
    }

    /// Byte offset of the scanner in the text.
    pub fn pos(&self) -> usize {
        self.i
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn eat(&mut self, c: u8) -> Res<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Fallback)
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Res<()> {
        match self.b.get(self.i..self.i + word.len()) {
            Some(w) if w == word => {
                self.i += word.len();
                Ok(())
            }
            _ => Err(Fallback),
        }
    }

    /// Past the opening quote: moves past the closing one. Returns the content's byte range
    /// and whether it has escapes.
    #[inline(always)]
    fn string(&mut self) -> Res<(usize, usize, bool)> {
        let (b, start) = (self.b, self.i);
        let mut i = start;
        let mut escaped = false;
        loop {
            // Eight bytes at a time while they last, then one by one; past `LONG_RUN` bytes
            // without a special byte, the run is long (a message's text): see `long_run`.
            let mut words = 0;
            loop {
                let Some(Ok(word)) = b.get(i..i + 8).map(<[u8; 8]>::try_from) else {
                    while b.get(i).is_some_and(|&c| !special(c)) {
                        i += 1;
                    }
                    break;
                };
                match first_special(u64::from_le_bytes(word)) {
                    Some(k) => {
                        i += k;
                        break;
                    }
                    None => i += 8,
                }
                words += 1;
                if words == LONG_RUN / 8 {
                    i = long_run(b, i)?;
                    break;
                }
            }
            match b.get(i) {
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok((start, i, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let hex = b.get(i + 2..i + 6).ok_or(Fallback)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Fallback);
                            }
                            i += 6;
                        }
                        _ => return Err(Fallback),
                    }
                }
                // A control character, or the end of the text.
                _ => return Err(Fallback),
            }
        }
    }

    /// A number, by serde_json's grammar; returns whether it is a plain unsigned integer.
    #[inline]
    fn number(&mut self) -> Res<bool> {
        let mut plain = true;
        if self.peek() == Some(b'-') {
            self.i += 1;
            plain = false;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(Fallback);
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Fallback),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            plain = false;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Fallback);
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            plain = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Fallback);
            }
            self.digits();
        }
        Ok(plain)
    }

    #[inline(always)]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn enter(&mut self) -> Res<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(Fallback) } else { Ok(()) }
    }

    /// Checks one value (after any whitespace) and moves past it.
    pub fn skip_value(&mut self) -> Res<()> {
        self.ws();
        self.skip_inner()
    }

    /// A value inside a container: only a container costs a call.
    #[inline(always)]
    fn skip_inner(&mut self) -> Res<()> {
        match self.peek() {
            Some(b'{') => self.skip_object(),
            Some(b'[') => self.skip_array().map(|_| ()),
            _ => self.skip_scalar(),
        }
    }

    /// A string, literal or number, at its first byte.
    #[inline(always)]
    fn skip_scalar(&mut self) -> Res<()> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                self.string().map(|_| ())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }

    /// An object, at its `{`.
    fn skip_object(&mut self) -> Res<()> {
        self.open()?;
        self.items(b'}', |s| {
            s.eat(b'"')?;
            s.string()?;
            s.colon()?;
            s.skip_inner()
        })
    }

    /// An array, at its `[`: checks the elements and the `]`; returns how many there were.
    fn skip_array(&mut self) -> Res<usize> {
        self.open()?;
        let mut n = 0;
        self.items(b']', |s| {
            n += 1;
            s.skip_inner()
        })?;
        Ok(n)
    }

    /// Steps past a container's opening byte, one level deeper.
    #[inline(always)]
    fn open(&mut self) -> Res<()> {
        self.i += 1;
        self.enter()
    }

    /// An entry's `:` and the whitespace around it.
    #[inline(always)]
    fn colon(&mut self) -> Res<()> {
        self.ws();
        self.eat(b':')?;
        self.ws();
        Ok(())
    }

    /// The items of the container just opened ([`open`](Self::open)), up to its `close` byte:
    /// `item` reads one at its first byte; items are separated by `,`. Then one level up.
    #[inline(always)]
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Res<()>) -> Res<()> {
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
        } else {
            loop {
                self.ws();
                item(self)?;
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(c) if c == close => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Fallback),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// Reads one value (after any whitespace) as a [`Node`], as serde_json would build it.
    pub fn node(&mut self) -> Res<Node<'a>> {
        self.ws();
        self.node_inner()
    }

    /// A value at its first byte, as a [`Node`]: only an object costs a call.
    #[inline(always)]
    fn node_inner(&mut self) -> Res<Node<'a>> {
        let start = self.i;
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                let (s, e, escaped) = self.string()?;
                if escaped {
                    // serde_json decodes it (and refuses a lone surrogate).
                    return Node::parse(self.b.get(start..self.i).ok_or(Fallback)?).ok_or(Fallback);
                }
                Ok(Node::Str(Cow::Borrowed(self.text.get(s..e).ok_or(Fallback)?)))
            }
            Some(b'{') => self.node_object(),
            Some(b'[') => self.skip_array().map(Node::Array),
            Some(b't') => self.literal(b"true").map(|()| Node::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|()| Node::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|()| Node::Null),
            _ => {
                let plain = self.number()?;
                let digits = self.text.get(start..self.i).ok_or(Fallback)?;
                if plain && digits.len() <= 19 {
                    return digits.parse::<u64>().map(|n| Node::Number(n.into())).map_err(|_| Fallback);
                }
                Node::parse(digits.as_bytes()).ok_or(Fallback)
            }
        }
    }

    /// An object, at its `{`, as a [`Node`] (every entry kept, in order).
    fn node_object(&mut self) -> Res<Node<'a>> {
        self.open()?;
        let mut o = Object::with_capacity(8);
        self.items(b'}', |s| {
            let key = s.key()?;
            s.colon()?;
            let value = s.node_inner()?;
            o.insert(key, value);
            Ok(())
        })?;
        Ok(Node::Object(o))
    }

    /// An object key (at its opening quote), decoded.
    #[inline(always)]
    fn key(&mut self) -> Res<Cow<'a, str>> {
        let open = self.i;
        self.eat(b'"')?;
        let (s, e, escaped) = self.string()?;
        if escaped {
            return serde_json::from_slice::<Text<'a>>(&self.b[open..self.i]).map(|t| t.0).map_err(|_| Fallback);
        }
        self.text.get(s..e).map(Cow::Borrowed).ok_or(Fallback)
    }

    /// Walks the top-level object of the whole text: for each entry, `each` gets the key
    /// (never escaped: an escaped top-level key is a [`Fallback`]) and this scanner at the
    /// value, which it must move past ([`skip_value`](Self::skip_value), [`node`](Self::node)).
    /// Then only whitespace may follow. `Err` when the text is not a JSON object this scanner
    /// takes.
    pub fn object_entries(&mut self, mut each: impl FnMut(&'a str, &mut Self) -> Res<()>) -> Res<()> {
        self.ws();
        if self.peek() != Some(b'{') {
            return Err(Fallback);
        }
        self.open()?;
        self.items(b'}', |s| {
            s.eat(b'"')?;
            let (start, end, escaped) = s.string()?;
            if escaped {
                return Err(Fallback);
            }
            let key = s.text.get(start..end).ok_or(Fallback)?;
            s.colon()?;
            each(key, s)
        })?;
        self.ws();
        if self.i == self.b.len() { Ok(()) } else { Err(Fallback) }
    }

    /// [`object_entries`](Self::object_entries) with every value checked and stepped over:
    /// `each` gets the key and the value's raw text (both slices of the text).
    pub fn raw_entries(&mut self, mut each: impl FnMut(&'a str, &'a str)) -> Res<()> {
        let text = self.text;
        self.object_entries(|key, scan| {
            let start = scan.pos();
            scan.skip_value()?;
            each(key, text.get(start..scan.pos()).ok_or(Fallback)?);
            Ok(())
        })
    }
}
