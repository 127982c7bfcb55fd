//! A bounded server-sent-events parser fed arbitrary byte chunks.
//!
//! Rules (the WHATWG event-stream format): lines end with `\n`, `\r\n` or `\r` (a `\r` at the
//! end of one chunk and a `\n` at the start of the next are one line end); `field: value` with
//! one optional space after the colon; `data` lines are joined with `\n`; a line starting with
//! `:` is a comment; an empty line dispatches the event; an event with no `data` line is not
//! dispatched (e.g. a lone comment keep-alive). `id` and `retry` are ignored.
//!
//! Edge cases: a chunk may end anywhere, also inside a multi-byte UTF-8 character (bytes are
//! buffered until the line ends, then decoded; invalid UTF-8 is [`TranslateError::Invalid`]).
//! The bytes held for one event (its pending line plus its data) never exceed the limit given
//! to [`SseParser::new`]; more is [`TranslateError::EventTooLarge`] and the parser is then
//! poisoned (every later call fails the same way). At the end of the body, [`SseParser::finish`]
//! dispatches an event whose final blank line never came (some servers omit it); a stream cut
//! in the middle of a JSON payload then fails to parse in the translator, never here.

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

/// Incremental parser; see the module docs.
#[derive(Debug, Clone)]
pub struct SseParser {
    max: usize,
    line: Vec<u8>,
    after_cr: bool,
    event: Option<String>,
    data: Option<String>,
    poisoned: bool,
}

impl SseParser {
    /// A parser holding at most `max_event_bytes` for one event.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser { max: max_event_bytes, line: Vec::new(), after_cr: false, event: None, data: None, poisoned: false }
    }

    fn held(&self) -> usize {
        self.line.len() + self.data.as_ref().map_or(0, String::len) + self.event.as_ref().map_or(0, String::len)
    }

    fn too_large(&mut self) -> TranslateError {
        self.poisoned = true;
        self.line.clear();
        self.data = None;
        TranslateError::EventTooLarge { limit: self.max }
    }

    /// Feeds bytes; returns the events completed by them, in order.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<SseEvent>, TranslateError> {
        if self.poisoned {
            return Err(TranslateError::EventTooLarge { limit: self.max });
        }
        let mut out = Vec::new();
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while !bytes.is_empty() {
            match memchr2(b'\n', b'\r', bytes) {
                None => {
                    self.line.extend_from_slice(bytes);
                    if self.held() > self.max {
                        return Err(self.too_large());
                    }
                    break;
                }
                Some(i) => {
                    self.line.extend_from_slice(&bytes[..i]);
                    if self.held() > self.max {
                        return Err(self.too_large());
                    }
                    let cr = bytes[i] == b'\r';
                    bytes = &bytes[i + 1..];
                    if cr {
                        if bytes.is_empty() {
                            self.after_cr = true;
                        } else if bytes[0] == b'\n' {
                            bytes = &bytes[1..];
                        }
                    }
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&line)? {
                        out.push(ev);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The end of the body: a pending line and event are completed as if a blank line followed.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, TranslateError> {
        if self.poisoned {
            return Err(TranslateError::EventTooLarge { limit: self.max });
        }
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            // Cannot dispatch: a non-empty line never completes an event by itself.
            let _ = self.line_done(&line)?;
        }
        Ok(self.dispatch())
    }

    /// `true` when no partial line or event is held.
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && self.data.is_none() && self.event.is_none()
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        self.data.take().map(|data| SseEvent { event, data })
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<SseEvent>, TranslateError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let text = std::str::from_utf8(line)
            .map_err(|e| TranslateError::invalid("(stream line)", format!("not UTF-8: {e}")))?;
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        if self.held() > self.max {
            return Err(self.too_large());
        }
        Ok(None)
    }
}

/// One SSE event as text: `event: NAME\ndata: DATA\n\n` (DATA must be one line, as JSON is).
pub fn write_event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}
