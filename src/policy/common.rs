//! Helpers every rule module shares: message clipping, time arithmetic, conditions, and
//! [`parallel_runs`] (contiguous runs of many items on every core, results in order).
//!
//! Rules: a message is cut to at most [`MAX_MESSAGE`] bytes on a character boundary (ending in
//! `...` when cut), under the 1024 bytes the Event API accepts. A condition keeps its
//! `lastTransitionTime` while its status does not move, so a status is not rewritten when only
//! time passed; an empty message is replaced by the reason (the 1.20 API server rejects empty
//! strings). Kubernetes-free: the types come from `crate::api::meta`.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use super::{ObjectKey, ObjectKind, Transition};
use crate::api::{Condition, Time, condition};

/// Longest transition message or event note (bytes), kept under the 1024 the Event API accepts.
pub const MAX_MESSAGE: usize = 1000;

/// Cuts a message to at most [`MAX_MESSAGE`] bytes, on a character boundary, marking the cut
/// with `...`. The one clip for every message, note and reason tollgate writes.
pub fn clip(s: impl Into<String>) -> String {
    let mut s = s.into();
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// `ts + ms`, saturating at the representable range.
pub fn add_ms(ts: Timestamp, ms: i64) -> Timestamp {
    ts.checked_add(SignedDuration::from_millis(ms)).unwrap_or(if ms >= 0 { Timestamp::MAX } else { Timestamp::MIN })
}

/// Desired condition before merge with the previous ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionSpec {
    /// Type.
    pub type_: &'static str,
    /// True / False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Non-empty message (the 1.20 API server rejects empty strings).
    pub message: String,
}

/// Builds conditions from desired ones, keeping `lastTransitionTime` of a condition whose
/// status did not change (so status is not rewritten when only time passed).
pub fn merge_conditions(
    previous: &[Condition],
    desired: &[ConditionSpec],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" };
            let last = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                message: if d.message.is_empty() { d.reason.clone() } else { d.message.clone() },
                last_transition_time: last,
                observed_generation: generation,
            }
        })
        .collect()
}

/// An `InvalidSpec` warning, unless the previous Ready condition already said the same.
pub(crate) fn invalid_spec_transition(
    kind: ObjectKind,
    key: &ObjectKey,
    previous: &[Condition],
    message: &str,
    now: Timestamp,
) -> Option<Transition> {
    let same = previous.iter().any(|c| c.type_ == condition::READY && c.status == "False" && c.message == message);
    (!same).then(|| Transition {
        kind,
        object: key.clone(),
        reason: "InvalidSpec".into(),
        message: message.to_string(),
        warning: true,
        evidence: BTreeMap::from([("error".to_string(), message.to_string())]),
        time: now,
    })
}

/// Below this many items [`parallel_runs`] stays on the calling thread.
pub const PARALLEL_MIN_ITEMS: usize = 256;

/// `f` over contiguous runs of `items`, one run per core (one run for fewer than
/// [`PARALLEL_MIN_ITEMS`] items or one core), results in order. A panic in `f` is propagated.
/// Large namespaces use it: the policy's per-route evaluation, the document's serialization.
pub fn parallel_runs<T: Sync, R: Send>(items: &[T], f: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if threads < 2 || items.len() < PARALLEL_MIN_ITEMS {
        return vec![f(items)];
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            items.chunks(items.len().div_ceil(threads)).map(|run| scope.spawn(move || f(run))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_the_items_in_order() {
        for n in [0, 1, 255, 256, 1001] {
            let items: Vec<usize> = (0..n).collect();
            let runs = parallel_runs(&items, <[usize]>::to_vec);
            assert_eq!(runs.concat(), items);
        }
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        assert_eq!(clip("a".repeat(MAX_MESSAGE)), "a".repeat(MAX_MESSAGE));
        let long = clip("é".repeat(2000));
        assert_eq!(long.len(), 999);
        assert!(long.ends_with("..."));
        assert_eq!(clip(String::from("x").repeat(5000)).len(), MAX_MESSAGE);
    }

    #[test]
    fn merged_conditions_keep_their_time_while_the_status_holds() {
        let t0: Timestamp = "2025-05-14T10:00:00Z".parse().unwrap();
        let t1 = add_ms(t0, 60_000);
        let want =
            |status| ConditionSpec { type_: condition::READY, status, reason: "R".into(), message: String::new() };
        let first = merge_conditions(&[], &[want(true)], Some(2), t0);
        assert_eq!(first[0].message, "R");
        assert_eq!(first[0].observed_generation, Some(2));
        let same = merge_conditions(&first, &[want(true)], Some(3), t1);
        assert_eq!(same[0].last_transition_time.0, t0);
        let flipped = merge_conditions(&first, &[want(false)], Some(3), t1);
        assert_eq!(flipped[0].last_transition_time.0, t1);
        assert_eq!(add_ms(Timestamp::MAX, 1), Timestamp::MAX);
    }
}
