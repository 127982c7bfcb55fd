//! Scrubbing API keys out of upstream bytes before a client sees them.
//!
//! Every upstream byte that reaches a client goes through a [`Redactor`] holding every API key
//! the gateway has loaded: error bodies and messages, passed-through response headers, whole
//! answers and each server-sent event of a stream. A key is found however it is written:
//! - literally;
//! - with any mix of JSON string escapes (`\/`, `\\`, `\uXXXX` for any character, surrogate
//!   pairs included, hex digits in either case) and URL percent-encoding (`%2F`, `%73`...):
//!   the text is decoded one escape at a time, the key is matched against the decoded bytes
//!   (each remembering where it came from), and the original (encoded) span is replaced;
//! - base64 (standard and URL-safe alphabets, padded or not), at any alignment inside a longer
//!   base64 text (e.g. `Basic` credentials): the characters that encode only key bytes are the
//!   same whatever surrounds the key, so they are searched literally (keys of 8 bytes or more).
//!
//! Every match is replaced by `[redacted]`. Keys shorter than 4 bytes are never searched (they
//! would match ordinary text). Not covered: doubly-encoded forms (`%255C`, `\\u0073`), other
//! encodings (hex, HTML entities). Cost: one pass over text without `\` or `%` (memchr), else
//! one decoding pass keeping only the last few decoded bytes (memory bounded by the longest
//! key, not by the text); the fast path returns the input unchanged (no copy).

use std::borrow::Cow;
use std::collections::VecDeque;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use memchr::memmem;

/// What a match is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// Shortest key searched.
const MIN_KEY: usize = 4;
/// Shortest key searched in base64 form.
const MIN_KEY_BASE64: usize = 8;

/// The keys to scrub, with their base64 fingerprints.
#[derive(Debug, Default)]
pub(crate) struct Redactor {
    keys: Vec<Vec<u8>>,
    base64: Vec<Vec<u8>>,
}

/// The base64 characters that encode only key bytes, for the key starting at byte `align` of
/// a 3-byte group.
fn base64_core(key: &[u8], align: usize, url: bool) -> Vec<u8> {
    let mut buf = vec![0u8; align];
    buf.extend_from_slice(key);
    let enc = if url { URL_SAFE_NO_PAD.encode(&buf) } else { STANDARD_NO_PAD.encode(&buf) };
    let start = (8 * align).div_ceil(6);
    let end = (8 * (align + key.len())) / 6;
    enc.as_bytes().get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
}

fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

fn hex4(s: &[u8]) -> Option<u32> {
    if s.len() < 4 {
        return None;
    }
    s[..4].iter().try_fold(0u32, |acc, &b| Some(acc * 16 + hex(b)?))
}

/// One escape at `text[i..]`: the decoded bytes and the length of the escape.
fn decode_one(text: &[u8], i: usize, out: &mut [u8; 4]) -> Option<(usize, usize)> {
    match text[i] {
        b'%' => {
            let (h, l) = (hex(*text.get(i + 1)?)?, hex(*text.get(i + 2)?)?);
            out[0] = (h * 16 + l) as u8;
            Some((1, 3))
        }
        b'\\' => {
            let c = *text.get(i + 1)?;
            let simple = match c {
                b'/' => Some(b'/'),
                b'\\' => Some(b'\\'),
                b'"' => Some(b'"'),
                b'b' => Some(8),
                b'f' => Some(12),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                _ => None,
            };
            if let Some(b) = simple {
                out[0] = b;
                return Some((1, 2));
            }
            if c != b'u' {
                return None;
            }
            let hi = hex4(&text[i + 2..])?;
            let (cp, len) = if (0xD800..0xDC00).contains(&hi) {
                let j = i + 6;
                if text.get(j) == Some(&b'\\') && text.get(j + 1) == Some(&b'u') {
                    let lo = hex4(&text[j + 2..])?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), 12)
                } else {
                    return None;
                }
            } else {
                (hi, 6)
            };
            let ch = char::from_u32(cp)?;
            let n = ch.encode_utf8(&mut [0u8; 4]).len();
            ch.encode_utf8(out);
            Some((n, len))
        }
        _ => None,
    }
}

impl Redactor {
    /// A redactor for `keys` (surrounding whitespace trimmed; short keys ignored).
    pub(crate) fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        let mut r = Redactor::default();
        for k in keys {
            let k = k.trim().as_bytes();
            if k.len() < MIN_KEY || r.keys.iter().any(|x| x == k) {
                continue;
            }
            r.keys.push(k.to_vec());
            if k.len() >= MIN_KEY_BASE64 {
                for align in 0..3 {
                    for url in [false, true] {
                        let core = base64_core(k, align, url);
                        if core.len() >= MIN_KEY_BASE64 && !r.base64.contains(&core) {
                            r.base64.push(core);
                        }
                    }
                }
            }
        }
        r
    }

    /// No key to scrub.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Byte spans of `text` that encode a key.
    fn spans(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        for b in &self.base64 {
            spans.extend(memmem::find_iter(text, b).map(|i| (i, i + b.len())));
        }
        if memchr::memchr2(b'\\', b'%', text).is_none() {
            for k in &self.keys {
                spans.extend(memmem::find_iter(text, k).map(|i| (i, i + k.len())));
            }
            return spans;
        }
        // Decode escape by escape; the last `longest` decoded bytes are kept with the source
        // span of each (memory bounded by the longest key, whatever the text's size).
        let longest = self.keys.iter().map(Vec::len).max().unwrap_or(0);
        let mut window: VecDeque<(u8, usize, usize)> = VecDeque::with_capacity(longest + 4);
        let mut i = 0;
        let mut tmp = [0u8; 4];
        while i < text.len() {
            let (n, len) = match decode_one(text, i, &mut tmp) {
                Some(d) => d,
                None => {
                    tmp[0] = text[i];
                    (1, 1)
                }
            };
            for &b in &tmp[..n] {
                if window.len() == longest {
                    window.pop_front();
                }
                window.push_back((b, i, i + len));
                for k in &self.keys {
                    let w = window.len();
                    if k.last() == Some(&b)
                        && w >= k.len()
                        && k.iter().enumerate().all(|(j, &kb)| window[w - k.len() + j].0 == kb)
                    {
                        spans.push((window[w - k.len()].1, window[w - 1].2));
                    }
                }
            }
            i += len;
        }
        spans
    }

    /// `text` with every key replaced by `[redacted]` (borrowed when there is none).
    pub(crate) fn redact<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        if self.keys.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut spans = self.spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        spans.sort_unstable();
        let mut out = Vec::with_capacity(text.len());
        let mut pos = 0;
        for (s, e) in spans {
            if e <= pos {
                continue;
            }
            if s >= pos {
                out.extend_from_slice(&text[pos..s]);
                out.extend_from_slice(REDACTED.as_bytes());
            }
            pos = e;
        }
        out.extend_from_slice(&text[pos..]);
        Cow::Owned(out)
    }

    /// [`redact`](Self::redact) for text.
    pub(crate) fn redact_str(&self, text: &str) -> String {
        match self.redact(text.as_bytes()) {
            Cow::Borrowed(_) => text.to_string(),
            Cow::Owned(v) => String::from_utf8_lossy(&v).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    const KEY: &str = "sk-proj/Ab+c_9xYz0123456789";

    fn json_u(s: &str) -> String {
        s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
    }

    fn leaks(out: &str) -> bool {
        out.contains(KEY) || out.contains("Ab+c_9xYz01234")
    }

    #[test]
    fn every_encoding_of_the_key_is_scrubbed() {
        let r = Redactor::new([KEY, "x", "other-key-12345"]);
        let out = r.redact_str(r"two keys: other\u002dkey-12345 and sk-proj\/Ab+c_9xYz0123456789 end");
        assert_eq!(out, "two keys: [redacted] and [redacted] end");
        let url: String = KEY.bytes().map(|b| format!("%{b:02X}")).collect();
        let mixed = KEY.replace('/', "\\/").replacen('s', "\\u0073", 1).replace('A', "\\u0041");
        let cases = vec![
            format!("bad key {KEY}!"),
            format!(r#"{{"error":{{"message":"bad key {}"}}}}"#, KEY.replace('/', "\\/")),
            format!(r#"{{"message":"{}"}}"#, json_u(KEY)),
            format!(r#"{{"message":"{}"}}"#, json_u(KEY).to_uppercase().replace("\\U", "\\u")),
            format!(r#"{{"message":"{mixed}"}}"#),
            format!("key={url}&x=1"),
            format!("key={}", KEY.replace('/', "%2f")),
            format!("Basic {}", STANDARD.encode(format!("user:{KEY}"))),
            format!("b64 {}", URL_SAFE.encode(format!("ab{KEY}cd"))),
            format!("b64 {}", STANDARD.encode(KEY)),
        ];
        for text in cases {
            let out = r.redact_str(&text);
            assert!(out.contains(REDACTED), "not scrubbed: {text} -> {out}");
            assert!(!leaks(&out), "{out}");
            // What a client would decode from it does not hold the key either.
            let decoded = r.spans(out.as_bytes());
            assert!(decoded.is_empty(), "{out}");
        }
    }

    #[test]
    fn surrogate_pairs_and_text_without_keys() {
        let key = "k\u{1F600}-secret-key";
        let r = Redactor::new([key]);
        let out = r.redact_str(r#"{"m":"k\ud83d\ude00-secret-key"}"#);
        assert_eq!(out, r#"{"m":"[redacted]"}"#);
        let plain = br#"{"m":"caf\u00e9 50% \/ nothing"}"#;
        assert!(matches!(r.redact(plain), Cow::Borrowed(_)));
        assert!(Redactor::new(["abc"]).is_empty());
    }
}
