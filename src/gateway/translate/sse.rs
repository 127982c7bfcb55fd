//! Server-sent events: the one framer and field reader of the gateway, fed arbitrary byte
//! chunks. The metered pass-through ([`crate::gateway::stream`]) and every stream translator
//! ([`SseParser`]) read events through it, so both follow the same rules.
//!
//! Rules (the WHATWG event-stream format): lines end with `\n`, `\r\n` or `\r` (a `\r` at the
//! end of one chunk and a `\n` at the start of the next are one line end); an empty line ends
//! an event; `field: value` with one optional space after the colon; `data` lines are joined
//! with `\n`; a line starting with `:` is a comment; a line without a colon is a field with an
//! empty value; an event with no `data` line is not dispatched (e.g. a lone comment
//! keep-alive). `id` and `retry` are ignored.
//!
//! [`SseFramer`] finds where events end, scanning each byte once, and hands every complete
//! event to its caller as the exact bytes it arrived as: an event lying whole in the chunk fed
//! is a borrowed slice of it, with its offsets (a pass-through forwards it without a copy);
//! only the bytes of an event still incomplete at the end of a chunk are held, never more than
//! the limit given to [`SseFramer::new`] for one event (a complete one included). Past it,
//! [`TranslateError::EventTooLarge`], and the framer is poisoned (every later call fails the
//! same way). Every byte fed belongs to exactly one [`Piece`] handed out (or to the rest
//! [`SseFramer::finish`] returns at the end of the body): when a chunk ends
//! between the `\r` and the `\n` of the `\r\n` that ended an event, that `\n` comes as a
//! one-byte piece of its own marked [`Piece::tail`] (it belongs to the event before it: a
//! pass-through keeps or removes it with that event; a parser skips it).
//!
//! [`SseParser`] reads the fields of each framed event. A chunk may end anywhere, also inside
//! a multi-byte UTF-8 character (an event is decoded line by line once complete; invalid UTF-8
//! is [`TranslateError::Invalid`]). At the end of the body, [`SseParser::finish`] dispatches an
//! event whose final blank line never came (some servers omit it); a stream cut in the middle
//! of a JSON payload then fails to parse in the translator, never here.

use std::ops::{ControlFlow, Range};

use memchr::memchr2;

use super::TranslateError;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if any.
    pub event: Option<String>,
    /// The data lines joined with `\n`.
    pub data: String,
}

/// What the byte before a chunk was, when it was a `\r` ending a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterCr {
    /// It was not a `\r` line end.
    No,
    /// A `\r` ended a line inside an event: a `\n` next is part of that line end.
    InEvent,
    /// A `\r` ended the blank line that ended an event: a `\n` next is its one-byte tail.
    EventEnd,
}

/// One complete event (or the tail of one) handed out by [`SseFramer::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Its bytes, exactly as they arrived.
    pub bytes: &'a [u8],
    /// Where it lies in the chunk fed, when it lies there whole (`None`: it began in an earlier
    /// chunk and `bytes` is the framer's held copy).
    pub at: Option<Range<usize>>,
    /// The `\n` of a `\r\n` that ended the event handed out before it (split from it by a
    /// chunk boundary).
    pub tail: bool,
}

/// Finds where events end; see the module docs.
#[derive(Debug, Clone)]
pub struct SseFramer {
    max: usize,
    /// The bytes of the incomplete event (an event that began in an earlier chunk).
    held: Vec<u8>,
    /// No byte of the current line has been seen yet.
    line_empty: bool,
    after_cr: AfterCr,
    /// The piece [`Self::next_end`] just found is a [`Piece::tail`].
    tail: bool,
    poisoned: bool,
}

impl SseFramer {
    /// A framer holding at most `max_event_bytes` for one event.
    pub fn new(max_event_bytes: usize) -> Self {
        SseFramer {
            max: max_event_bytes,
            held: Vec::new(),
            line_empty: true,
            after_cr: AfterCr::No,
            tail: false,
            poisoned: false,
        }
    }

    /// The largest event, bytes.
    pub fn limit(&self) -> usize {
        self.max
    }

    fn poison(&mut self) -> TranslateError {
        self.poisoned = true;
        self.held = Vec::new();
        TranslateError::EventTooLarge { limit: self.max }
    }

    /// The length of `bytes` up to the end of the first event ending in it (its blank line
    /// included), the state moved past it; `None`: no event ends in `bytes`, all of it scanned.
    /// `bytes` continues exactly where the previous call stopped.
    fn next_end(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        if self.after_cr != AfterCr::No {
            match bytes.first() {
                None => return None,
                Some(b'\n') if self.after_cr == AfterCr::EventEnd => {
                    self.after_cr = AfterCr::No;
                    self.tail = true;
                    return Some(1);
                }
                Some(b'\n') => i = 1,
                Some(_) => {}
            }
            self.after_cr = AfterCr::No;
        }
        while let Some(p) = memchr2(b'\n', b'\r', &bytes[i..]) {
            let at = i + p;
            if p > 0 {
                self.line_empty = false;
            }
            let mut end = at + 1;
            if bytes[at] == b'\r' {
                match bytes.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => {
                        self.after_cr = if self.line_empty { AfterCr::EventEnd } else { AfterCr::InEvent };
                    }
                }
            }
            if self.line_empty {
                return Some(end);
            }
            self.line_empty = true;
            i = end;
        }
        if i < bytes.len() {
            self.line_empty = false;
        }
        None
    }

    /// Feeds `chunk`, calling `each` with every piece it completes, in order. When `each`
    /// breaks, the rest of `chunk` is left unread (the caller is ending the stream). `Err`: an
    /// event is over the limit (the framer is then poisoned).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut each: impl FnMut(Piece<'_>) -> ControlFlow<()>,
    ) -> Result<(), TranslateError> {
        if self.poisoned {
            return Err(TranslateError::EventTooLarge { limit: self.max });
        }
        let mut pos = 0;
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            let Some(n) = self.next_end(rest) else {
                if self.held.len() + rest.len() > self.max {
                    return Err(self.poison());
                }
                self.held.extend_from_slice(rest);
                break;
            };
            let end = pos + n;
            if self.held.len() + n > self.max {
                return Err(self.poison());
            }
            let tail = std::mem::take(&mut self.tail);
            let flow = if self.held.is_empty() {
                each(Piece { bytes: &chunk[pos..end], at: Some(pos..end), tail })
            } else {
                self.held.extend_from_slice(&chunk[pos..end]);
                let flow = each(Piece { bytes: &self.held, at: None, tail });
                self.held.clear();
                flow
            };
            if flow.is_break() {
                return Ok(());
            }
            pos = end;
        }
        Ok(())
    }

    /// The end of the body: the held bytes of an event whose blank line never came (empty when
    /// there are none); the framer starts over.
    pub fn finish(&mut self) -> Result<Vec<u8>, TranslateError> {
        if self.poisoned {
            return Err(TranslateError::EventTooLarge { limit: self.max });
        }
        self.line_empty = true;
        self.after_cr = AfterCr::No;
        Ok(std::mem::take(&mut self.held))
    }

    /// `true` when no partial event is held.
    pub fn is_idle(&self) -> bool {
        self.held.is_empty()
    }
}

/// The lines of one framed event (line ends removed; a last line without its end included).
pub fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr2(b'\n', b'\r', rest) {
            None => Some(std::mem::take(&mut rest)),
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[i + skip..];
                Some(line)
            }
        }
    })
}

/// One line as `(field, value)`; `None` for an empty line or a comment.
pub fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first().is_none_or(|&b| b == b':') {
        return None;
    }
    Some(match memchr::memchr(b':', line) {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &[][..]),
    })
}

/// The `data` of one framed event, its lines joined with `\n` (empty when it has none).
pub fn event_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut first = true;
    for (name, value) in lines(event).filter_map(field) {
        if name == b"data" {
            if !first {
                data.push(b'\n');
            }
            first = false;
            data.extend_from_slice(value);
        }
    }
    data
}

/// The fields of one framed event; `None` when it has no `data` line.
fn parse_event(event: &[u8]) -> Result<Option<SseEvent>, TranslateError> {
    let (mut name, mut data) = (None, None::<String>);
    for line in lines(event) {
        if line.first().is_none_or(|&b| b == b':') {
            continue;
        }
        let text = std::str::from_utf8(line)
            .map_err(|e| TranslateError::invalid("(stream line)", format!("not UTF-8: {e}")))?;
        let Some((f, value)) = field(text.as_bytes()) else { continue };
        // `field` splits at an ASCII colon and a space: both halves stay valid UTF-8.
        let value = std::str::from_utf8(value).unwrap_or_default();
        match f {
            b"event" => name = Some(value.to_string()),
            b"data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    Ok(data.map(|data| SseEvent { event: name, data }))
}

/// Incremental parser: [`SseFramer`] + the fields of each event; see the module docs.
#[derive(Debug, Clone)]
pub struct SseParser {
    framer: SseFramer,
}

impl SseParser {
    /// A parser holding at most `max_event_bytes` for one event.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser { framer: SseFramer::new(max_event_bytes) }
    }

    /// Feeds bytes; returns the events completed by them, in order (or the first event's error).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, TranslateError> {
        let mut out = Vec::new();
        self.push_each(bytes, |ev, _| {
            out.extend(ev);
            Ok(())
        })?;
        Ok(out)
    }

    /// As [`push`](Self::push), handing `each` every piece in order with its event (`None`: it
    /// dispatches nothing, e.g. a comment or a [`Piece::tail`]) and its exact bytes. The first
    /// error (an unreadable event, or one returned by `each`) stops it there: the rest of
    /// `bytes` is left unread and the stream is over.
    pub fn push_each(
        &mut self,
        bytes: &[u8],
        mut each: impl FnMut(Option<SseEvent>, &[u8]) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        let mut failed = None;
        self.framer.feed(bytes, |piece| {
            let event = if piece.tail { Ok(None) } else { parse_event(piece.bytes) };
            match event.and_then(|ev| each(ev, piece.bytes)) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// The end of the body: a pending event is completed as if a blank line followed.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, TranslateError> {
        let mut out = None;
        self.finish_each(|ev, _| {
            out = ev;
            Ok(())
        })?;
        Ok(out)
    }

    /// As [`finish`](Self::finish), handing `each` the pending event and its bytes (not called
    /// when nothing is held).
    pub fn finish_each(
        &mut self,
        each: impl FnOnce(Option<SseEvent>, &[u8]) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        let rest = self.framer.finish()?;
        if rest.is_empty() {
            return Ok(());
        }
        each(parse_event(&rest)?, &rest)
    }

    /// `true` when no partial line or event is held.
    pub fn is_idle(&self) -> bool {
        self.framer.is_idle()
    }
}

/// One SSE event as text: `event: NAME\ndata: DATA\n\n` (DATA must be one line, as JSON is).
pub fn write_event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece the framer hands out for `input` fed in `parts`, as owned bytes.
    fn pieces(f: &mut SseFramer, parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for part in parts {
            f.feed(part, |p| {
                if let Some(r) = p.at.clone() {
                    assert_eq!(&part[r], p.bytes, "the offsets name the event's bytes");
                }
                assert_eq!(p.tail, p.bytes == b"\n" && out.last().is_some_and(|l: &Vec<u8>| l.ends_with(b"\r")));
                out.push(p.bytes.to_vec());
                ControlFlow::Continue(())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn events_end_at_a_blank_line_of_any_line_ending_split_at_every_byte() {
        for end in ["\n", "\r\n", "\r"] {
            let text = format!("event: a{end}data: 1{end}data: 2{end}{end}: ping{end}{end}data: x{end}{end}");
            let bytes = text.as_bytes();
            let whole = pieces(&mut SseFramer::new(1024), &[bytes]);
            let want: Vec<Vec<u8>> = vec![
                format!("event: a{end}data: 1{end}data: 2{end}{end}").into_bytes(),
                format!(": ping{end}{end}").into_bytes(),
                format!("data: x{end}{end}").into_bytes(),
            ];
            assert_eq!(whole, want, "{end:?}");
            for split in 0..=bytes.len() {
                let mut f = SseFramer::new(1024);
                let got = pieces(&mut f, &[&bytes[..split], &bytes[split..]]);
                assert_eq!(got.concat(), bytes, "{end:?} split at {split}: every byte handed out once");
                // A tail piece is the end of the `\r\n` before it.
                let mut events: Vec<Vec<u8>> = Vec::new();
                for p in got {
                    match events.last_mut() {
                        Some(last) if p == b"\n" && last.ends_with(b"\r") => last.push(b'\n'),
                        _ => events.push(p),
                    }
                }
                assert_eq!(events, want, "{end:?} split at {split}");
                assert!(f.is_idle());
            }
        }
    }

    #[test]
    fn a_crlf_split_after_the_blank_line_leaves_its_lf_as_a_piece_of_its_own() {
        let mut f = SseFramer::new(64);
        let got = pieces(&mut f, &[b"data: a\r\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(got, vec![b"data: a\r\n\r".to_vec(), b"\n".to_vec(), b"data: b\r\n\r\n".to_vec()]);
        // A `\r` inside an event: the `\n` after it is part of that line end.
        let got = pieces(&mut SseFramer::new(64), &[b"data: a\r", b"\n\r\n"]);
        assert_eq!(got, vec![b"data: a\r\n\r\n".to_vec()]);
    }

    #[test]
    fn the_limit_counts_complete_and_held_events_and_poisons() {
        let mut f = SseFramer::new(16);
        assert!(f.feed(b"data: 0123456789\n\n", |_| ControlFlow::Continue(())).is_err());
        assert!(f.feed(b"\n", |_| ControlFlow::Continue(())).is_err(), "poisoned");
        let mut f = SseFramer::new(16);
        assert!(f.feed(b"data: 01234", |_| ControlFlow::Continue(())).is_ok());
        assert!(f.feed(b"567890", |_| ControlFlow::Continue(())).is_err());
        assert_eq!(f.held.capacity(), 0, "freed");
        assert!(f.finish().is_err());
    }

    #[test]
    fn fields_and_data() {
        assert_eq!(event_data(b"event: x\rdata: a\r\ndata:b\ndata\n: c\n\n"), b"a\nb\n");
        assert_eq!(event_data(b": only a comment\n\n"), b"");
        let ev = parse_event(b"event: e\rdata: {}\r").unwrap().unwrap();
        assert_eq!((ev.event.as_deref(), ev.data.as_str()), (Some("e"), "{}"));
        assert_eq!(parse_event(b"\n").unwrap(), None);
    }
}
