//! Multi-document YAML text → one JSON value per document, on every core.
//!
//! A large manifest file (a GitOps repository's 10,000 generated routes) is cut into
//! contiguous parts at document start markers and the parts are parsed in parallel; the
//! documents come out in file order, numbered as one parse of the whole text numbers them.
//! Rules and edge cases:
//! - a cut is made only before a line that is a document start marker (`---` at column 0,
//!   then a space, a tab or the end of the line). YAML forbids such a line inside any scalar
//!   (block, quoted or plain), so it always begins a new document, and anchors never cross
//!   documents: each part holds whole documents;
//! - a text with a directive (`%` at column 0) or a document end marker (`...` at column 0)
//!   is never cut (a directive belongs to the document after it);
//! - each part's documents extend the caller's collection one by one, as they are parsed, in
//!   the part's thread (`render` validates each document there and drops its JSON at once);
//! - when any part fails to parse, the whole text is parsed once more, alone, and its error
//!   is the one reported: errors (line and column) are exactly those of a single parse;
//! - the parser's own budgets (1,024 documents, 250,000 nodes by default) are replaced by the
//!   size bound of the caller (a node or event takes at least one byte of input).

use serde_json::Value;

use super::validate::MAX_MANIFEST_BYTES;

/// Below this size a text is parsed on the calling thread.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// Parses every document of `text` (at most [`MAX_MANIFEST_BYTES`]; the caller checks).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    Ok(parse_documents_into::<Vec<Value>>(text)?.concat())
}

/// [`parse_documents`] into one collection per part, in file order: each part's documents
/// extend its collection one by one as they are parsed, in the part's thread (a collection
/// that checks each document at once never holds the JSON of a whole part).
pub fn parse_documents_into<C: Default + Extend<Value> + Send>(text: &str) -> Result<Vec<C>, String> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let parts = if text.len() < PARALLEL_MIN_BYTES { 1 } else { threads };
    parse_in_parts(text, parts)
}

/// [`parse_documents_into`] cutting `text` into at most `parts` parts.
fn parse_in_parts<C: Default + Extend<Value> + Send>(text: &str, parts: usize) -> Result<Vec<C>, String> {
    let pieces = split_documents(text, parts);
    if pieces.len() < 2 {
        return parse_whole(text).map(|c| vec![c]);
    }
    let parsed = parallel_map_all(pieces);
    let mut out = Vec::with_capacity(parsed.len());
    for part in parsed {
        match part {
            Ok(c) => out.push(c),
            // The error of one parse of the whole text, never a part's (its lines would be off).
            Err(_) => return parse_whole(text).map(|c| vec![c]),
        }
    }
    Ok(out)
}

fn parallel_map_all<C: Default + Extend<Value> + Send>(pieces: Vec<&str>) -> Vec<Result<C, String>> {
    // One piece per thread: parallel_map's threshold is for many small items.
    std::thread::scope(|scope| {
        let handles: Vec<_> = pieces.into_iter().map(|p| scope.spawn(move || parse_whole(p))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// One parse of `text`: the plainest layouts line by line ([`super::yaml_lines`]), the common
/// subset straight from the parser's events ([`super::yaml_fast`]), anything else by
/// serde-saphyr with its budgets scaled to the size.
fn parse_whole<C: Default + Extend<Value>>(text: &str) -> Result<C, String> {
    if let Some(c) = super::yaml_lines::read(text) {
        return Ok(c);
    }
    match super::yaml_fast::read(text) {
        Some(c) => Ok(c),
        None => parse_reference(text),
    }
}

/// One parse of `text` by serde-saphyr, with the parser's budgets scaled to its size.
pub(super) fn parse_reference<C: Default + Extend<Value>>(text: &str) -> Result<C, String> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_MANIFEST_BYTES),
            max_documents: text.len().saturating_add(1),
            max_nodes: text.len().saturating_add(1024),
            max_events: text.len().saturating_mul(2).saturating_add(1024),
        },
    };
    serde_saphyr::from_str_multiple_with_options::<Value, C>(text, options).map_err(|e| e.to_string())
}

/// Whether the line starting at `line` is the marker `marker` (`---` or `...`).
fn is_marker(line: &[u8], marker: &[u8; 3]) -> bool {
    line.starts_with(marker) && matches!(line.get(3), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
}

/// Whether the line starting at `line` is a document start marker.
fn is_start_marker(line: &[u8]) -> bool {
    is_marker(line, b"---")
}

/// `text` cut into at most `parts` contiguous pieces of about equal size, each cut just
/// before a document start marker line; the whole text when it may not be cut (see the
/// module comment).
fn split_documents(text: &str, parts: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut markers = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let line = &bytes[start..];
        if line.first() == Some(&b'%') || is_marker(line, b"...") {
            return vec![text];
        }
        if start > 0 && is_start_marker(line) {
            markers.push(start);
        }
        start = match memchr::memchr(b'\n', line) {
            Some(i) => start + i + 1,
            None => bytes.len(),
        };
    }
    if parts < 2 || markers.is_empty() {
        return vec![text];
    }
    let mut pieces = Vec::with_capacity(parts);
    let mut from = 0;
    let mut candidates = markers.iter().copied().peekable();
    for k in 1..parts {
        let target = text.len() * k / parts;
        let mut cut = None;
        while let Some(&m) = candidates.peek() {
            candidates.next();
            if m >= target {
                cut = Some(m);
                break;
            }
        }
        let Some(cut) = cut else { break };
        pieces.push(&text[from..cut]);
        from = cut;
    }
    pieces.push(&text[from..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXTS: &[&str] = &[
        "a: 1\n---\nb: 2\n---\nc: 3\n",
        "---\na: 1\n---\n---\nb: [1, 2]\n--- \nc: x\n---\t\nd: 4",
        "# head\n---\nk: |\n  line\n  ---x\n  more\n---\nanchors: &a {x: 1}\nuse: *a\n---\nq: \"two\n  lines\"\n",
        "a: 1\n----\nb: 2\n---\n",
        "",
        "---\n",
        "a: 1\r\n---\r\nb: 2\r\n",
    ];

    #[test]
    fn parts_parse_as_the_whole_text_does() {
        for text in TEXTS {
            let whole: Result<Vec<Value>, String> = parse_whole(text);
            for parts in 1..6 {
                let cut = parse_in_parts::<Vec<Value>>(text, parts).map(|p| p.concat());
                assert_eq!(cut, whole, "{text:?} in {parts} parts");
            }
        }
    }

    #[test]
    fn cuts_are_before_start_markers_only() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: 3\n----\nd: 4\n---x\ne: 5\n";
        let pieces = split_documents(text, 8);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().skip(1).all(|p| is_start_marker(p.as_bytes())), "{pieces:?}");
        assert_eq!(pieces.len(), 3, "{pieces:?}");
    }

    #[test]
    fn directives_and_end_markers_keep_the_text_whole() {
        assert_eq!(split_documents("%YAML 1.2\n---\na: 1\n---\nb: 2\n", 4).len(), 1);
        assert_eq!(split_documents("a: 1\n...\n---\nb: 2\n", 4).len(), 1);
    }

    #[test]
    fn a_broken_part_reports_the_error_of_the_whole_text() {
        let text = "a: 1\n---\nb: [1, 2\n---\nc: 3\n";
        let whole: Result<Vec<Value>, String> = parse_whole(text);
        assert!(whole.is_err());
        assert_eq!(parse_in_parts::<Vec<Value>>(text, 3).map(|p| p.concat()), whole);
    }
}
