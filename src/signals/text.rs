//! The Prometheus text exposition format (and the OpenMetrics text gateways may serve).
//!
//! Lines are classified by the `prometheus-parse` crate's line grammar; label sets are then
//! parsed with escapes (`\"`, `\\`, `\n`) and commas inside quoted values, and sample values are
//! kept as text so integer counters (nano-USD spend) are read exactly instead of through `f64`.

use std::collections::BTreeMap;

use prometheus_parse::LineInfo;

/// One sample line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextSample {
    /// Metric name as written (`tollgate_requests_total`).
    pub metric: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The value as written.
    pub value: String,
}

/// Every sample of an exposition; comment, `# EOF` and malformed lines are skipped.
pub fn samples(body: &str) -> Vec<TextSample> {
    body.lines()
        .filter_map(|line| match LineInfo::parse(line) {
            LineInfo::Sample { metric_name, labels, value, .. } => Some(TextSample {
                metric: metric_name.to_string(),
                labels: labels.map(parse_labels).unwrap_or_default(),
                value: value.to_string(),
            }),
            _ => None,
        })
        .collect()
}

/// Parses `a="x",b="y \"quoted\", with comma"` into a map; malformed pairs are dropped.
pub fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => {
                    closed = true;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed || name.is_empty() {
            return out;
        }
        out.insert(name, value);
    }
}

/// A counter value: an exact unsigned integer when written as one, otherwise a finite
/// non-negative float rounded down (`1.5e+06`); `None` for NaN, infinities and negatives.
pub fn parse_count(value: &str) -> Option<u64> {
    if let Ok(n) = value.parse::<u64>() {
        return Some(n);
    }
    let f: f64 = value.parse().ok()?;
    // Counters written as floats (Prometheus API answers): exact below 2^53.
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then_some(f.floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_escapes_and_commas() {
        let l = parse_labels(r#"a="x",b="y \"q\", z",c="line\nbreak""#);
        assert_eq!(l["a"], "x");
        assert_eq!(l["b"], "y \"q\", z");
        assert_eq!(l["c"], "line\nbreak");
        assert!(parse_labels("broken").is_empty());
    }

    #[test]
    fn samples_skip_comments_and_eof() {
        let s = samples("# HELP x y\n# TYPE x counter\nx_total{a=\"1\"} 18446744073709551615\n# EOF\n");
        assert_eq!(s.len(), 1);
        assert_eq!(parse_count(&s[0].value), Some(u64::MAX));
        assert_eq!(parse_count("1.5e+06"), Some(1_500_000));
        assert_eq!(parse_count("NaN"), None);
        assert_eq!(parse_count("-1"), None);
    }
}
