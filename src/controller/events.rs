//! The events step: one Event per policy transition and one per problem the controller found
//! when it appears or changes (never again for an unchanged problem). Events wait in an
//! outbox and are retried by the next passes, up to a few attempts each (one failed pass is one
//! attempt, whatever the retries inside it); an Event given up on is logged as dropped; notes
//! are clipped under the API's 1024 bytes.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use super::engine::{Engine, Snapshot};
use super::error::Error;
use crate::plan::{Problem, clip_note, kind_name};
use crate::policy::{ObjectKey, ObjectKind, Transition};

/// Attempts to publish one Event across passes.
const EVENT_ATTEMPTS: u32 = 5;

/// An Event waiting to be published.
pub(super) struct PendingEvent {
    event: Event,
    reference: ObjectReference,
    object: String,
    attempts: u32,
}

impl Engine {
    /// Queues the Events of one pass: transitions, and problems new or changed.
    pub(super) fn queue_events(
        &mut self,
        snap: &Snapshot,
        transitions: &[Transition],
        route_problems: &BTreeMap<ObjectKey, Problem>,
        budget_problems: &BTreeMap<ObjectKey, Problem>,
    ) {
        let route_refs: BTreeMap<ObjectKey, ObjectReference> =
            snap.routes.iter().map(|g| (ObjectKey::of(g.as_ref()), g.object_ref(&()))).collect();
        let budget_refs: BTreeMap<ObjectKey, ObjectReference> =
            snap.budgets.iter().map(|g| (ObjectKey::of(g.as_ref()), g.object_ref(&()))).collect();
        let reference = |kind: ObjectKind, key: &ObjectKey| match kind {
            ObjectKind::ModelRoute => route_refs.get(key).cloned(),
            ObjectKind::ProviderBudget => budget_refs.get(key).cloned(),
        };
        let mut queue = Vec::new();
        for t in transitions {
            if let Some(r) = reference(t.kind, &t.object) {
                let event = Event {
                    type_: if t.warning { EventType::Warning } else { EventType::Normal },
                    reason: t.reason.clone(),
                    note: Some(clip_note(&t.message)),
                    action: "Evaluate".into(),
                    secondary: None,
                };
                queue.push((event, r, format!("{} {}", kind_name(t.kind), t.object)));
            }
        }
        // Problems found by the controller (not by the policy): one Event when they appear or change.
        let mut current: BTreeMap<(ObjectKind, ObjectKey), String> = BTreeMap::new();
        let problems = route_problems
            .iter()
            .map(|(k, p)| (ObjectKind::ModelRoute, k, p))
            .chain(budget_problems.iter().map(|(k, p)| (ObjectKind::ProviderBudget, k, p)));
        for (kind, key, p) in problems {
            let id = (kind, key.clone());
            if self.reported.get(&id) != Some(&p.message)
                && let Some(r) = reference(kind, key)
            {
                let event = Event {
                    type_: if p.ready { EventType::Normal } else { EventType::Warning },
                    reason: p.reason.into(),
                    note: Some(clip_note(&p.message)),
                    action: "Validate".into(),
                    secondary: None,
                };
                queue.push((event, r, format!("{} {key}", kind_name(kind))));
            }
            current.insert(id, p.message.clone());
        }
        self.reported = current;
        for (event, reference, object) in queue {
            self.outbox.push_back(PendingEvent { event, reference, object, attempts: 0 });
        }
    }

    /// Queues one Event on `reference` (`object`: `Kind namespace/name`, for errors).
    pub(super) fn queue_event(&mut self, event: Event, reference: ObjectReference, object: String) {
        self.outbox.push_back(PendingEvent { event, reference, object, attempts: 0 });
    }

    /// Publishes the outbox; what fails stays for the next pass (up to the attempts).
    pub(super) async fn publish_events(&mut self) -> (usize, Vec<Error>) {
        let mut published = 0;
        let mut errors = Vec::new();
        let mut retry = VecDeque::new();
        while let Some(mut p) = self.outbox.pop_front() {
            // A recorder per Event: each transition is its own Event with its own evidence (a
            // shared recorder would fold a second rotation within minutes into a `series`
            // count of the first, keeping the first note). Repeats of an unchanged problem are
            // never published twice (see `reported`).
            let recorder = Recorder::new(self.ctx.client.clone(), self.ctx.reporter.clone());
            match self.retrying(|| recorder.publish(&p.event, &p.reference)).await {
                Ok(()) => published += 1,
                Err(source) => {
                    p.attempts += 1;
                    errors.push(Error::PublishEvent {
                        reason: p.event.reason.clone(),
                        object: p.object.clone(),
                        source: Box::new(source),
                    });
                    if p.attempts < EVENT_ATTEMPTS {
                        retry.push_back(p);
                    } else {
                        warn!(reason = %p.event.reason, object = %p.object, attempts = p.attempts, "event dropped: not published after {EVENT_ATTEMPTS} passes");
                    }
                }
            }
        }
        self.outbox = retry;
        (published, errors)
    }
}
