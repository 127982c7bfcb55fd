//! The plainest YAML, read line by line without a YAML parser: the shape generated manifests
//! (and most hand-written ones) have.
//!
//! At 10,000 routes, [`super::yaml_fast`] spends most of its time in the YAML scanner and
//! parser (token queues, simple-key look-ahead, span bookkeeping). Manifests written by people
//! and by generators use a small, regular part of YAML: block mappings and sequences laid out
//! by indentation, one `key: value` per line, small flow collections on one line. This reader
//! takes exactly that and gives up ([`read`] returns `None`) on anything else, leaving the
//! text to the parser-driven readers (which give the result, or the error, exactly as before).
//! What it takes:
//! - the text is printable ASCII and line feeds only (a tab, a carriage return, any other
//!   control byte or any non-ASCII byte gives up: those have rules of their own);
//! - documents separated by lines that are exactly `---` (then only spaces); no directives,
//!   no `...` end markers; a document's root starts at column 0: a block mapping, a block
//!   sequence, a value alone on its line (below), or nothing (a null document, skipped as
//!   the other readers skip it);
//! - a block mapping: lines `key:` or `key: value` at one indentation, where a key is a plain
//!   word ([`super::yaml_fast::is_plain_word`], of letters, digits and `_ - . /`) and no key
//!   repeats; a value is on the same line, or below it as a more indented block mapping or
//!   sequence, or a sequence at the key's own indentation, or nothing (null);
//! - a block sequence: lines `- item` or `-` at one indentation; an item is a value on the
//!   same line, a mapping starting on the same line (`- key: value`, its other keys aligned
//!   with the first), a block node below it, or nothing;
//! - a value on a line: a plain scalar ([`super::yaml_fast::plain_value`] decides what it
//!   means: null spellings, booleans, canonical numbers and words; anything else gives up), a
//!   double-quoted scalar without escapes, a single-quoted scalar without doubled quotes, or a
//!   flow mapping or sequence closed on the same line whose keys are plain words and whose
//!   scalars are quoted or plain runs of letters, digits and `_ - . / + ~`;
//! - comments: whole lines, and after a value when a space precedes the `#`;
//! - nesting no deeper than the parser-driven reader's depth budget.
//!
//! Gives up on (among the rest): anchors, aliases, tags, block scalars (`|`, `>`), multi-line
//! plain or quoted scalars, escapes, explicit keys (`?`), quoted keys, `key: value` pairs
//! inside a plain scalar, nested sequences on one line (`- - x`), a trailing comma in a flow
//! collection. A property test checks that on every text this reader takes it gives exactly
//! what serde-saphyr gives, including texts mutated byte by byte.

use serde_json::{Map, Value};

use super::yaml_fast::{is_plain_word, plain_value};

/// Every non-null document of `text`, each added to the collection as soon as it is complete;
/// `None` when the text is outside the subset (see the module comment).
pub fn read<C: Default + Extend<Value>>(text: &str) -> Option<C> {
    let bytes = text.as_bytes();
    if !bytes.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\n') {
        return None;
    }
    let mut r = Reader { text: bytes, pos: 0, depth: serde_saphyr::Budget::default().max_depth.min(64) };
    let mut out = C::default();
    // The text before the first marker is a document when it has content.
    if let Next::Line(line) = r.peek()? {
        push(&mut out, r.root(line)?);
    }
    loop {
        match r.peek()? {
            Next::End => return Some(out),
            // Content after a complete root, without a marker between.
            Next::Line(_) => return None,
            Next::Marker(after) => {
                r.pos = after;
                // A marker followed by a marker or the end is an empty (null) document.
                if let Next::Line(line) = r.peek()? {
                    push(&mut out, r.root(line)?);
                }
            }
        }
    }
}

/// Adds a document unless it is null (the other readers skip null documents).
fn push<C: Extend<Value>>(out: &mut C, doc: Value) {
    if !doc.is_null() {
        out.extend(std::iter::once(doc));
    }
}

/// A content line: the column and position where its content starts (after the indentation;
/// for a mapping that starts on a sequence item's line, after `- `) and where it ends (its
/// line feed or the end of the text).
#[derive(Clone, Copy, Debug)]
struct Line {
    indent: usize,
    start: usize,
    end: usize,
    /// Where the next line starts.
    next: usize,
}

/// What comes next in the text.
enum Next {
    Line(Line),
    /// A `---` line; the position after it.
    Marker(usize),
    End,
}

struct Reader<'a> {
    text: &'a [u8],
    /// The start of the next line not yet taken.
    pos: usize,
    /// How many more collections may be opened.
    depth: usize,
}

impl Reader<'_> {
    /// The next content line (blank and comment lines skipped), a document marker or the end;
    /// `None` for a line outside the subset (directives, `...`, text after `---`).
    fn peek(&mut self) -> Option<Next> {
        let text = self.text;
        loop {
            if self.pos >= text.len() {
                return Some(Next::End);
            }
            let end = memchr::memchr(b'\n', &text[self.pos..]).map_or(text.len(), |i| self.pos + i);
            let next = (end + 1).min(text.len());
            let line = &text[self.pos..end];
            if line.starts_with(b"---") && line[3..].iter().all(|&b| b == b' ') {
                return Some(Next::Marker(next));
            }
            if line.starts_with(b"---") || line.starts_with(b"...") || line.first() == Some(&b'%') {
                return None;
            }
            let indent = line.iter().take_while(|&&b| b == b' ').count();
            match line.get(indent) {
                None | Some(b'#') => self.pos = next,
                Some(_) => return Some(Next::Line(Line { indent, start: self.pos + indent, end, next })),
            }
        }
    }

    /// The next content line if it is one.
    fn peek_line(&mut self) -> Option<Option<Line>> {
        Some(match self.peek()? {
            Next::Line(l) => Some(l),
            _ => None,
        })
    }

    /// A document's root, starting at `line`: a block collection, or a value alone on its line.
    fn root(&mut self, line: Line) -> Option<Value> {
        if line.indent != 0 {
            return None;
        }
        if is_dash(self.text, line) || key_at(self.text, line.start, line.end).is_some() {
            return self.block(line);
        }
        self.pos = line.next;
        self.inline_value(line.start, line.end, 0)
    }

    /// A block mapping or sequence whose first line is `line`.
    fn block(&mut self, line: Line) -> Option<Value> {
        if is_dash(self.text, line) { self.sequence(line) } else { self.mapping(line) }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth = self.depth.checked_sub(1)?;
        Some(())
    }

    fn leave(&mut self) {
        self.depth += 1;
    }

    /// A block mapping whose first entry is on `first`, its keys at column `first.indent`.
    fn mapping(&mut self, first: Line) -> Option<Value> {
        self.enter()?;
        let column = first.indent;
        let mut map = Map::new();
        let mut line = first;
        loop {
            let (key, after) = key_at(self.text, line.start, line.end)?;
            self.pos = line.next;
            let value = self.value_after(after, line.end, column)?;
            if map.insert(key.to_owned(), value).is_some() {
                return None;
            }
            match self.peek_line()? {
                Some(l) if l.indent == column => line = l,
                Some(l) if l.indent > column => return None,
                _ => break,
            }
        }
        self.leave();
        Some(Value::Object(map))
    }

    /// A block sequence whose first item is on `first`, its dashes at column `first.indent`.
    fn sequence(&mut self, first: Line) -> Option<Value> {
        self.enter()?;
        let column = first.indent;
        let mut items = Vec::new();
        let mut line = first;
        loop {
            self.pos = line.next;
            let rest = skip_spaces(self.text, line.start + 1, line.end);
            let item = if at_end(self.text, rest, line.end, rest > line.start + 1) {
                self.below(column, false)?
            } else if key_at(self.text, rest, line.end).is_some() {
                // `- key: value`: a mapping whose keys align with this first one.
                let inner = Line { indent: rest - (line.start - line.indent), start: rest, ..line };
                self.mapping(inner)?
            } else {
                self.inline_value(rest, line.end, column)?
            };
            items.push(item);
            match self.peek_line()? {
                Some(l) if l.indent == column && is_dash(self.text, l) => line = l,
                Some(l) if l.indent > column => return None,
                _ => break,
            }
        }
        self.leave();
        Some(Value::Array(items))
    }

    /// The value after a key's colon at `at` (on a line ending at `end`), for a mapping whose
    /// keys are at `column`.
    fn value_after(&mut self, at: usize, end: usize, column: usize) -> Option<Value> {
        let rest = skip_spaces(self.text, at, end);
        if at_end(self.text, rest, end, rest > at) {
            return self.below(column, true);
        }
        self.inline_value(rest, end, column)
    }

    /// A value on the same line, at `at`; the line after it must not be more indented than
    /// `column` (a continuation of a multi-line scalar, or an error).
    fn inline_value(&mut self, at: usize, end: usize, column: usize) -> Option<Value> {
        let value = self.line_value(at, end)?;
        match self.peek_line()? {
            Some(l) if l.indent > column => None,
            _ => Some(value),
        }
    }

    /// The value below a key or a dash at `column` with nothing after it on its line: a more
    /// indented block, a sequence at the key's own column (`seq_here`), or null.
    fn below(&mut self, column: usize, seq_here: bool) -> Option<Value> {
        match self.peek_line()? {
            Some(l) if l.indent > column => self.block(l),
            Some(l) if seq_here && l.indent == column && is_dash(self.text, l) => self.sequence(l),
            _ => Some(Value::Null),
        }
    }

    /// A scalar or a flow collection taking the rest of the line from `at` (a comment may
    /// follow it).
    fn line_value(&mut self, at: usize, end: usize) -> Option<Value> {
        let text = self.text;
        // A quoted scalar or a flow collection ends before the end of the line; only a
        // comment may follow it.
        let (value, after) = match text[at] {
            b'"' | b'\'' => quoted(text, at, end)?,
            b'{' | b'[' => self.flow(at, end)?,
            b'-' | b'?' | b':' if matches!(text[at + 1..end].first(), None | Some(b' ')) => return None,
            b',' | b']' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'%' | b'@' | b'`' => return None,
            _ => return plain(text, at, end),
        };
        let rest = skip_spaces(text, after, end);
        at_end(text, rest, end, rest > after).then_some(value)
    }

    /// A flow mapping or sequence starting at `at` and closed on the same line; the value and
    /// the position after its closing bracket.
    fn flow(&mut self, at: usize, end: usize) -> Option<(Value, usize)> {
        self.enter()?;
        let text = self.text;
        let is_map = text[at] == b'{';
        let close = if is_map { b'}' } else { b']' };
        let mut pos = skip_spaces(text, at + 1, end);
        let mut map = Map::new();
        let mut items = Vec::new();
        if text.get(pos) == Some(&close) && pos < end {
            pos += 1;
        } else {
            loop {
                if is_map {
                    let (key, after) = flow_key(text, pos, end)?;
                    let (value, after) = self.flow_value(skip_spaces(text, after, end), end)?;
                    if map.insert(key.to_owned(), value).is_some() {
                        return None;
                    }
                    pos = after;
                } else {
                    let (value, after) = self.flow_value(pos, end)?;
                    items.push(value);
                    pos = after;
                }
                pos = skip_spaces(text, pos, end);
                match text.get(pos) {
                    Some(b',') if pos < end => pos = skip_spaces(text, pos + 1, end),
                    Some(&b) if b == close && pos < end => {
                        pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.leave();
        Some((if is_map { Value::Object(map) } else { Value::Array(items) }, pos))
    }

    /// A value inside a flow collection: a nested one, a quoted scalar or a plain run of safe
    /// bytes followed (after spaces) by `,` or a closing bracket.
    fn flow_value(&mut self, at: usize, end: usize) -> Option<(Value, usize)> {
        let text = self.text;
        match text.get(at) {
            _ if at >= end => None,
            Some(b'{' | b'[') => self.flow(at, end),
            Some(b'"' | b'\'') => quoted(text, at, end),
            Some(_) => {
                let stop = at + text[at..end].iter().take_while(|&&b| is_flow_plain_byte(b)).count();
                let next = skip_spaces(text, stop, end);
                if stop == at || !matches!(text.get(next), Some(b',' | b'}' | b']')) || next >= end {
                    return None;
                }
                Some((plain_value(std::str::from_utf8(&text[at..stop]).ok()?)?, stop))
            }
            None => None,
        }
    }
}

/// Bytes of a plain scalar inside a flow collection.
fn is_flow_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b'+' | b'~')
}

/// Bytes of a plain key.
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/')
}

/// Whether `line` is a sequence item (`-` then a space or the end of the line).
fn is_dash(text: &[u8], line: Line) -> bool {
    text[line.start] == b'-' && (line.start + 1 == line.end || text[line.start + 1] == b' ')
}

fn skip_spaces(text: &[u8], mut at: usize, end: usize) -> usize {
    while at < end && text[at] == b' ' {
        at += 1;
    }
    at
}

/// Whether nothing but a comment is left at `at` (a `#` counts only after a space: `spaced`).
fn at_end(text: &[u8], at: usize, end: usize, spaced: bool) -> bool {
    at >= end || (spaced && text[at] == b'#')
}

/// A plain key and its colon at `at`: the key and the position after the colon, when the
/// colon is followed by a space or the end of the line.
fn key_at(text: &[u8], at: usize, end: usize) -> Option<(&str, usize)> {
    let stop = at + text[at..end].iter().take_while(|&&b| is_key_byte(b)).count();
    if stop == at || text.get(stop) != Some(&b':') || stop >= end {
        return None;
    }
    if stop + 1 < end && text[stop + 1] != b' ' {
        return None;
    }
    let key = std::str::from_utf8(&text[at..stop]).ok()?;
    is_plain_word(key).then_some((key, stop + 1))
}

/// A key inside a flow mapping: a plain word, then `:` and a space.
fn flow_key(text: &[u8], at: usize, end: usize) -> Option<(&str, usize)> {
    let (key, after) = key_at(text, at, end)?;
    (after < end && text[after] == b' ').then_some((key, after))
}

/// A quoted scalar at `at` closed on the same line (no escapes, no doubled single quotes);
/// the string and the position after the closing quote.
fn quoted(text: &[u8], at: usize, end: usize) -> Option<(Value, usize)> {
    let quote = text[at];
    let len = memchr::memchr(quote, &text[at + 1..end])?;
    let body = &text[at + 1..at + 1 + len];
    let after = at + 2 + len;
    if (quote == b'"' && body.contains(&b'\\')) || (quote == b'\'' && text.get(after) == Some(&b'\'')) {
        return None;
    }
    Some((Value::String(std::str::from_utf8(body).ok()?.to_owned()), after))
}

/// A plain scalar from `at` to the end of the line or a comment: no `: ` inside, no colon at
/// its end; its meaning from [`plain_value`].
fn plain(text: &[u8], at: usize, end: usize) -> Option<Value> {
    let line = &text[at..end];
    let mut stop = line.len();
    for i in memchr::memchr2_iter(b'#', b':', line) {
        if line[i] == b'#' && i > 0 && line[i - 1] == b' ' {
            stop = i;
            break;
        }
        if line[i] == b':' && matches!(line.get(i + 1), None | Some(b' ')) {
            return None;
        }
    }
    let s = std::str::from_utf8(&line[..stop]).ok()?.trim_end_matches(' ');
    plain_value(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> Result<Vec<Value>, String> {
        super::super::yaml::parse_reference(text)
    }

    #[test]
    fn layouts_of_the_subset() {
        for text in [
            "a: 1\nb:\n  c: x\n  d: [1, two, \"3\"]\ne:\n- p\n- q: 1\n  r: 2\n-\n- {s: {}}\n",
            "# head\n\n---\napiVersion: v1 # note\nitems:\n  -   name: a\n      url: https://x.example/v1\n  - name: b\n---\n---\n- 1\n- -2\n",
            "a:\n  - x: 1\n    v:\n      - z\n  -\n    w: 0.5\nb: 'it is'\n",
            "k: v\n---   \nk: w\n",
            "a: it's #not a comment: none\nb: x#y\n",
        ] {
            let fast = read::<Vec<Value>>(text).unwrap_or_else(|| panic!("not in the subset:\n{text}"));
            assert_eq!(Ok(fast), reference(text), "{text}");
        }
    }

    #[test]
    fn outside_the_subset_is_left_to_the_parser() {
        for text in [
            "a: 1\n  b: 2\n",
            "a: one\n  two\n",
            "a: \"x\\ty\"\n",
            "a: 'it''s'\n",
            "a: |\n  x\n",
            "a: &x 1\n",
            "a: b: c\n",
            "a: x\nb:c\n",
            "\"a\": 1\n",
            "a: [1, 2,]\n",
            "a: [1,\n  2]\n",
            "- - x\n",
            "  a: 1\n",
            "a: 1\r\n",
            "a:\t1\n",
            "a: é\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n...\n",
            "--- a: 1\n",
            "a: 1\na: 2\n",
            "a: {b: 1, b: 2}\n",
            "a: 1\n- b\n",
            "a: 0x1F\n",
        ] {
            assert!(read::<Vec<Value>>(text).is_none(), "{text:?} was read here");
        }
    }
}
