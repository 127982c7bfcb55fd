//! Which config revision each route's entry has been in since it last changed, so that a route's
//! `status.gateways` moves only when its own entry does (a rotation of one route in a
//! namespace of 10,000 rewrites one status, not 10,000).
//!
//! Per namespace, the revisions the cluster held (written by this controller or found there),
//! in the order seen, each with a sequence number (the last [`HISTORY`] are kept); per route, its
//! last entry (`RouteConfig`) and the sequence number of the revision where it took that form.
//! A gateway serves a route as decided when the revision it serves is that one or a later one
//! of the history. Rules:
//! - the revision seen last, seen again, changes nothing;
//! - a new revision with its document: routes whose entry changed, or that are new, move to it;
//!   the others keep theirs; routes gone from the document are forgotten;
//! - a new revision without its document (the write failed and the ConfigMap holds one this
//!   controller did not write): every route moves to it, since nothing is known of its entries;
//! - a gateway serving a revision not in the history (older than it, or another controller's)
//!   is not counted as in sync;
//! - after a restart the history starts empty: the first revision places every route at it (so
//!   a route whose status named an older revision is written once).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::config::RouteConfig;

/// Revisions remembered per namespace.
pub(super) const HISTORY: usize = 32;

/// A route's last entry (`None`: unknown) and the revision (with its sequence) it took that
/// form in.
type Since = (Option<RouteConfig>, Arc<str>, u64);

/// One namespace's memory.
#[derive(Debug, Default)]
pub(super) struct NamespaceSync {
    /// Revisions seen, oldest first, with their sequence numbers.
    history: VecDeque<(Arc<str>, u64)>,
    next: u64,
    /// Per route name: its last entry (`None`: unknown) and the revision it took that form in,
    /// with its sequence number.
    routes: BTreeMap<String, Since>,
}

impl NamespaceSync {
    /// The cluster holds `revision`, whose routes are `routes` when this controller built it.
    pub(super) fn observe(&mut self, revision: &str, routes: Option<&[RouteConfig]>) {
        if self.history.back().is_some_and(|(r, _)| &**r == revision) {
            return;
        }
        let seq = self.next;
        self.next += 1;
        let revision: Arc<str> = Arc::from(revision);
        self.history.push_back((revision.clone(), seq));
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let Some(routes) = routes else {
            for since in self.routes.values_mut() {
                *since = (None, revision.clone(), seq);
            }
            return;
        };
        let mut next = BTreeMap::new();
        for r in routes {
            let kept = self.routes.remove(&r.name).filter(|(entry, _, _)| entry.as_ref() == Some(r));
            next.insert(r.name.clone(), kept.unwrap_or_else(|| (Some(r.clone()), revision.clone(), seq)));
        }
        self.routes = next;
    }

    /// The revision a route's entry has been in since it last changed; `None` for a route the
    /// last document did not hold.
    pub(super) fn since(&self, route: &str) -> Option<&str> {
        self.routes.get(route).map(|(_, revision, _)| &**revision)
    }

    /// Whether a gateway serving `served` serves `route` as decided.
    pub(super) fn serves(&self, route: &str, served: &str) -> bool {
        let Some((_, _, since)) = self.routes.get(route) else { return false };
        self.history.iter().any(|(r, s)| &**r == served && s >= since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes without backends, told apart by `maxInputTokens`.
    fn routes(weights: &[(&str, u32)]) -> Vec<RouteConfig> {
        let mut out = Vec::new();
        for (name, w) in weights {
            let mut r: RouteConfig = serde_json::from_value(serde_json::json!({
                "name": name, "model": name, "strategy": "Weighted", "mode": "Enforce", "state": "Serving",
                "backends": []
            }))
            .unwrap();
            r.max_input_tokens = Some(*w);
            out.push(r);
        }
        out
    }

    #[test]
    fn only_the_changed_route_moves() {
        let mut s = NamespaceSync::default();
        s.observe("r1", Some(&routes(&[("a", 1), ("b", 1)])));
        assert_eq!((s.since("a"), s.since("b")), (Some("r1"), Some("r1")));
        s.observe("r2", Some(&routes(&[("a", 2), ("b", 1)])));
        assert_eq!((s.since("a"), s.since("b")), (Some("r2"), Some("r1")));
        // b's entry is the same in r1 and r2: a gateway on either serves it as decided.
        assert!(s.serves("b", "r1") && s.serves("b", "r2"));
        // a changed in r2: a gateway still on r1 does not.
        assert!(!s.serves("a", "r1") && s.serves("a", "r2"));
        assert!(!s.serves("a", "unknown") && !s.serves("gone", "r2"));
        // Seen again: nothing moves.
        s.observe("r2", Some(&routes(&[("a", 3), ("b", 3)])));
        assert_eq!((s.since("a"), s.since("b")), (Some("r2"), Some("r1")));
    }

    #[test]
    fn new_routes_and_gone_routes() {
        let mut s = NamespaceSync::default();
        s.observe("r1", Some(&routes(&[("a", 1)])));
        s.observe("r2", Some(&routes(&[("a", 1), ("c", 1)])));
        assert_eq!((s.since("a"), s.since("c")), (Some("r1"), Some("r2")));
        s.observe("r3", Some(&routes(&[("c", 1)])));
        assert_eq!((s.since("a"), s.since("c")), (None, Some("r2")));
        // A route that comes back is new again.
        s.observe("r4", Some(&routes(&[("a", 1), ("c", 1)])));
        assert_eq!(s.since("a"), Some("r4"));
    }

    #[test]
    fn a_revision_without_its_document_moves_every_route() {
        let mut s = NamespaceSync::default();
        s.observe("r1", Some(&routes(&[("a", 1), ("b", 1)])));
        s.observe("foreign", None);
        assert_eq!((s.since("a"), s.since("b")), (Some("foreign"), Some("foreign")));
        assert!(!s.serves("a", "r1"));
        // The next document is compared with nothing known: every route moves again.
        s.observe("r2", Some(&routes(&[("a", 1), ("b", 1)])));
        assert_eq!((s.since("a"), s.since("b")), (Some("r2"), Some("r2")));
    }

    #[test]
    fn history_is_bounded() {
        let mut s = NamespaceSync::default();
        s.observe("r0", Some(&routes(&[("a", 0), ("b", 0)])));
        for i in 1..=HISTORY as u32 {
            s.observe(&format!("r{i}"), Some(&routes(&[("a", i), ("b", 0)])));
        }
        assert_eq!(s.history.len(), HISTORY);
        // r0 fell out of the history: b is still named at r0, but a gateway on r0 is not
        // counted (r0 cannot be placed any more); one on any later revision is.
        assert_eq!(s.since("b"), Some("r0"));
        assert!(!s.serves("b", "r0") && s.serves("b", "r1"));
        assert_eq!(s.since("a"), Some(format!("r{HISTORY}").as_str()));
    }
}
