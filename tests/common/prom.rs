//! Reading Prometheus text exposition in tests: every sample parsed into its metric name, labels
//! and value, and negative checks that cannot pass by accident.
//!
//! Rules: a check that a series is absent (or that no series carries some label) first proves
//! that the thing it looks for exists in the text: a sample of the same metric carrying the same
//! label names. A renamed metric or label then fails the check instead of satisfying it.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether it carries every `(label, value)` of `labels`.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }

    /// Whether it carries every label name of `labels` (any value).
    pub fn has_names(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, _)| self.labels.contains_key(*k))
    }
}

/// Every sample of the text (comments and blank lines skipped); panics on a line it cannot read.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(parse_line).collect()
}

fn parse_line(line: &str) -> Sample {
    let bad = || -> ! { panic!("not a Prometheus sample line: {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        // `key="value"` pairs separated by commas, values with backslash escapes, then `}`.
        let mut chars = body.char_indices().peekable();
        let close = loop {
            let (start, c) = chars.next().unwrap_or_else(|| bad());
            if c == '}' {
                break start;
            }
            let mut key = String::from(c);
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, c)) => key.push(c),
                    None => bad(),
                }
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bad(),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bad(),
                }
            }
            labels.insert(key, value);
            if chars.peek().map(|(_, c)| *c) == Some(',') {
                chars.next();
            }
        };
        rest = &body[close + 1..];
    }
    let value = rest.split_whitespace().next().unwrap_or_else(|| bad());
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| bad()),
    };
    Sample { name, labels, value }
}

/// The samples of metric `name` (exactly that sample name: `x_total`, `x_bucket`, ...).
pub fn of<'a>(all: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    all.iter().filter(|s| s.name == name).collect()
}

/// Asserts that the text has no sample `name` carrying all of `labels`, after proving that it
/// has at least one sample `name` carrying the same label names (with other values).
pub fn assert_no_series(text: &str, name: &str, labels: &[(&str, &str)]) {
    let all = samples(text);
    let same = of(&all, name);
    let keys: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
    assert!(
        same.iter().any(|s| s.has_names(labels)),
        "no sample of {name} with labels {keys:?} at all, so its absence for {labels:?} proves nothing \
         (renamed?):\n{text}"
    );
    let hits: Vec<&&Sample> = same.iter().filter(|s| s.has(labels)).collect();
    assert!(hits.is_empty(), "{name}{labels:?} is exported: {hits:?}");
}

/// Asserts that no sample of any metric starting with `prefix` carries all of `labels`, after
/// proving that some sample of such a metric carries the same label names.
pub fn assert_no_series_with(text: &str, prefix: &str, labels: &[(&str, &str)]) {
    let all = samples(text);
    let same: Vec<&Sample> = all.iter().filter(|s| s.name.starts_with(prefix)).collect();
    assert!(
        same.iter().any(|s| s.has_names(labels)),
        "no {prefix}* sample with labels {:?} at all (renamed?):\n{text}",
        labels.iter().map(|(k, _)| *k).collect::<Vec<_>>()
    );
    let hits: Vec<&&Sample> = same.iter().filter(|s| s.has(labels)).collect();
    assert!(hits.is_empty(), "{prefix}* series with {labels:?} are exported: {hits:#?}");
}

/// Asserts that metric family `name` (a sample name such as `x_total`) is declared in the text
/// (its `# TYPE` line, with or without a `_total`, `_count`, `_sum` or `_bucket` suffix), so that reading none of its samples
/// as zero is a finding, not a renamed metric.
pub fn assert_declared(text: &str, name: &str) {
    let family = ["_total", "_count", "_sum", "_bucket"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    let declared =
        text.lines().any(|l| l.starts_with(&format!("# TYPE {family} ")) || l.starts_with(&format!("# TYPE {name} ")));
    assert!(declared, "metric {name} is not declared at all (renamed?):\n{text}");
}
