//! Why usage could not be read ([`UsageError`]), and the strict reader of usage counts every
//! provider family shares: counts are non-negative JSON integers up to 2^53 - 1, a part never
//! exceeds its whole, and a stated total must equal the sum of its parts.

use super::node::{Node, Object};

// ---------------------------------------------------------------------------------------------
// Usage errors
// ---------------------------------------------------------------------------------------------

/// Why an upstream response's usage could not be turned into [`TokenCounts`]. Never a reason to
/// bill zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// The response (or stream event) carries no usage object at all, or it is `null`.
    #[error("the upstream response carries no usage object (usage is never assumed to be zero)")]
    Missing,
    /// A usage field is absent though required, or not a non-negative integer.
    #[error("usage field {field}: {why}")]
    Malformed {
        /// JSON path of the field, e.g. `usage.prompt_tokens_details.cached_tokens`.
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// The counts contradict each other (a part larger than its whole, a total that is not the
    /// sum of its parts).
    #[error("inconsistent usage: {why}")]
    Inconsistent {
        /// Which counts disagree, with their values.
        why: String,
    },
}

impl UsageError {
    /// Label value for an error-kind metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            UsageError::Missing => "missing",
            UsageError::Malformed { .. } => "malformed",
            UsageError::Inconsistent { .. } => "inconsistent",
        }
    }
}

pub(super) fn malformed(field: impl std::fmt::Display, why: impl Into<String>) -> UsageError {
    UsageError::Malformed { field: field.to_string(), why: why.into() }
}

pub(super) fn inconsistent(why: String) -> UsageError {
    UsageError::Inconsistent { why }
}

/// Largest accepted count (2^53 - 1, the largest integer every JSON implementation keeps
/// exact). Far beyond any real request, and it keeps every sum below in `u64`.
pub(super) const MAX_TOKENS: u64 = (1 << 53) - 1;

/// A JSON object of usage counts, with the path it was found at (for error messages). The
/// path is kept as links to the parent objects and written out only when an error names a
/// field: reading well-formed usage formats no string.
pub(super) struct Fields<'a> {
    map: &'a Object<'a>,
    parent: Option<(&'a Fields<'a>, &'a str)>,
}

/// The JSON path of a field (`usage.prompt_tokens_details.cached_tokens`), written on demand.
pub(super) struct FieldName<'a> {
    fields: &'a Fields<'a>,
    key: &'a str,
}

impl std::fmt::Display for FieldName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn prefix(f: &mut std::fmt::Formatter<'_>, fields: &Fields<'_>) -> std::fmt::Result {
            match fields.parent {
                Some((parent, key)) => {
                    prefix(f, parent)?;
                    write!(f, "{key}.")
                }
                None => Ok(()),
            }
        }
        prefix(f, self.fields)?;
        f.write_str(self.key)
    }
}

/// A name written on demand by a closure (for names composed of several parts).
pub(super) struct Lazy<F>(F);

/// A [`Lazy`] name.
pub(super) fn lazy<F: Fn(&mut std::fmt::Formatter<'_>) -> std::fmt::Result>(f: F) -> Lazy<F> {
    Lazy(f)
}

impl<F: Fn(&mut std::fmt::Formatter<'_>) -> std::fmt::Result> std::fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (self.0)(f)
    }
}

impl<'a> Fields<'a> {
    /// The top-level object of a response body.
    pub(super) fn root(map: &'a Object<'a>) -> Self {
        Fields { map, parent: None }
    }

    /// The path of `key` in this object, for an error message.
    pub(super) fn name<'s>(&'s self, key: &'s str) -> FieldName<'s> {
        FieldName { fields: self, key }
    }

    /// Present and not `null`.
    pub(super) fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// An optional count: absent or `null` is `None`; anything but a non-negative integer is
    /// malformed.
    pub(super) fn opt(&self, key: &str) -> Result<Option<u64>, UsageError> {
        match self.map.get(key) {
            None | Some(Node::Null) => Ok(None),
            Some(Node::Number(n)) => match n.as_u64() {
                Some(v) if v <= MAX_TOKENS => Ok(Some(v)),
                Some(v) => {
                    Err(malformed(self.name(key), format!("{v} is not a plausible token count (above 2^53 - 1)")))
                }
                None if n.is_i64() => Err(malformed(self.name(key), format!("{n} is negative"))),
                None => Err(malformed(self.name(key), format!("{n} is not an integer"))),
            },
            Some(other) => {
                Err(malformed(self.name(key), format!("expected a non-negative integer, got {}", other.kind())))
            }
        }
    }

    /// A required count.
    pub(super) fn req(&self, key: &str) -> Result<u64, UsageError> {
        self.opt(key)?.ok_or_else(|| malformed(self.name(key), "missing"))
    }

    /// A nested object: absent or `null` is `None`.
    pub(super) fn child<'s>(&'s self, key: &'s str) -> Result<Option<Fields<'s>>, UsageError> {
        match self.map.get(key) {
            None | Some(Node::Null) => Ok(None),
            Some(Node::Object(m)) => Ok(Some(Fields { map: m, parent: Some((self, key)) })),
            Some(other) => Err(malformed(self.name(key), format!("expected an object, got {}", other.kind()))),
        }
    }

    /// An optional count inside an optional nested object.
    pub(super) fn nested(&self, child: &str, key: &str) -> Result<Option<u64>, UsageError> {
        match self.child(child)? {
            Some(c) => c.opt(key),
            None => Ok(None),
        }
    }
}

/// `whole - part`, or an inconsistency naming both.
pub(super) fn carve(
    whole: (impl std::fmt::Display, u64),
    part: (impl std::fmt::Display, u64),
) -> Result<u64, UsageError> {
    whole
        .1
        .checked_sub(part.1)
        .ok_or_else(|| inconsistent(format!("{}={} exceeds {}={}", part.0, part.1, whole.0, whole.1)))
}

/// Reasoning reported inside an output total (`<total>_details.reasoning_tokens` ⊂ `<total>`):
/// returns (visible output, reasoning), so each token is billed once.
pub(super) fn reasoning_inside(u: &Fields<'_>, total_field: &str, total: u64) -> Result<(u64, u64), UsageError> {
    let details = match total_field {
        "completion_tokens" => "completion_tokens_details",
        "output_tokens" => "output_tokens_details",
        other => return Err(malformed(u.name(other), "has no known reasoning breakdown")),
    };
    let reasoning = u.nested(details, "reasoning_tokens")?.unwrap_or(0);
    let output =
        carve((u.name(total_field), total), (lazy(|f| write!(f, "{}.reasoning_tokens", u.name(details))), reasoning))?;
    Ok((output, reasoning))
}

/// Two fields that report the same tokens under different names: either may be given; if both
/// are, they must agree.
pub(super) fn same_tokens(
    a: (impl std::fmt::Display, Option<u64>),
    b: (impl std::fmt::Display, Option<u64>),
) -> Result<Option<u64>, UsageError> {
    match (a.1, b.1) {
        (Some(x), Some(y)) if x != y => {
            Err(inconsistent(format!("{}={x} and {}={y} report the same tokens but disagree", a.0, b.0)))
        }
        (Some(x), _) | (None, Some(x)) => Ok(Some(x)),
        (None, None) => Ok(None),
    }
}
