//! Unit tests of the plan step: no client, objects built from manifests as users write them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::*;

fn now() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn route(name: &str, model: &str, created: Option<&str>, backends: Value) -> ModelRoute {
    let mut meta = json!({"name": name, "namespace": "team-a", "generation": 1});
    if let Some(c) = created {
        meta["creationTimestamp"] = json!(c);
    }
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": meta,
        "spec": {"model": model, "backends": backends},
    }))
    .unwrap()
}

fn openai() -> Value {
    json!([{"name": "a", "provider": "openai", "model": "gpt", "pricing": {"input": "1", "output": "2"}}])
}

fn budget(name: &str, provider: &str) -> ProviderBudget {
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ProviderBudget",
        "metadata": {"name": name, "namespace": "team-a", "generation": 2},
        "spec": {"provider": provider, "limit": "10", "window": {"period": "Monthly"}},
    }))
    .unwrap()
}

fn run(routes: &[ModelRoute], budgets: &[ProviderBudget], secrets: Option<&SecretData>) -> Plan {
    plan(PlanInput {
        routes,
        budgets,
        unreadable: &[],
        namespaces: &BTreeSet::new(),
        secrets,
        observations: &Observations::default(),
        previous: &DecisionState::default(),
        now: now(),
    })
}

fn ready(conditions: &[StatusCondition]) -> &StatusCondition {
    conditions.iter().find(|c| c.type_ == condition::READY).unwrap()
}

#[test]
fn the_oldest_route_keeps_a_duplicate_alias() {
    let old = route("zz-old", "chat", Some("2026-01-01T00:00:00Z"), openai());
    let new = route("aa-new", "chat", Some("2026-02-01T00:00:00Z"), openai());
    for routes in [vec![old.clone(), new.clone()], vec![new.clone(), old.clone()]] {
        let p = run(&routes, &[], None);
        let doc = p.config("team-a").unwrap();
        assert_eq!(doc.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["zz-old"]);
        let problem = &p.route_problems[&ObjectKey::new("team-a", "aa-new")];
        assert_eq!(problem.message, "spec.model: model \"chat\" is already served by ModelRoute zz-old");
        assert!(problem.blocking);
        let status = &p.route_statuses[&ObjectKey::new("team-a", "aa-new")];
        assert_eq!(ready(&status.conditions).status, "False");
        assert_eq!(status.observed_generation, Some(1));
        assert!(status.state.is_none(), "a refused route carries no policy status");
    }
}

#[test]
fn without_timestamps_the_first_name_keeps_the_alias_whatever_the_order() {
    let a = route("alpha", "chat", None, openai());
    let z = route("zeta", "chat", None, openai());
    for routes in [vec![z.clone(), a.clone()], vec![a.clone(), z.clone()]] {
        let p = run(&routes, &[], None);
        assert_eq!(p.namespaces["team-a"].served, [ObjectKey::new("team-a", "alpha")]);
        assert!(p.route_problems[&ObjectKey::new("team-a", "zeta")].message.contains("ModelRoute alpha"));
        assert!(!p.route_problems.contains_key(&ObjectKey::new("team-a", "alpha")));
    }
}

#[test]
fn an_invalid_budget_is_reported_and_still_decided() {
    let mut b = budget("cap", "openai");
    b.spec.window.time_zone = "Mars/Olympus".into();
    let p = run(&[route("chat", "chat", None, openai())], &[b], None);
    let problem = &p.budget_problems[&ObjectKey::new("team-a", "cap")];
    assert!(problem.message.contains("spec.window.timeZone"), "{}", problem.message);
    assert!(p.decision.budgets.contains_key(&ObjectKey::new("team-a", "cap")));
    assert_eq!(ready(&p.budget_statuses[&ObjectKey::new("team-a", "cap")].conditions).reason, "InvalidSpec");
}

#[test]
fn a_budget_no_route_uses_is_a_note_that_keeps_ready_true() {
    let p = run(&[route("chat", "chat", None, openai())], &[budget("cap", "deepseek")], None);
    let problem = &p.budget_problems[&ObjectKey::new("team-a", "cap")];
    assert_eq!(problem.reason, "NoRouteUsesProvider");
    assert!(!problem.blocking);
    assert_eq!(ready(&p.budget_statuses[&ObjectKey::new("team-a", "cap")].conditions).status, "True");
}

#[test]
fn credentials_resolve_from_secrets_and_a_missing_key_is_reported_not_blocking() {
    let backends = json!([{"name": "a", "provider": "openai", "model": "gpt",
        "endpoint": {"apiKeySecretRef": {"name": "openai", "key": "api-key"}},
        "pricing": {"input": "1", "output": "2"}}]);
    let routes = [route("chat", "chat", None, backends)];
    let mut secrets = SecretData::new();
    secrets.insert(ObjectKey::new("team-a", "openai"), BTreeMap::from([("api-key".into(), b"sk-1".to_vec())]));
    let p = run(&routes, &[], Some(&secrets));
    assert_eq!(p.namespaces["team-a"].credentials, BTreeMap::from([("openai_api-key".into(), b"sk-1".to_vec())]));
    assert!(p.route_problems.is_empty());

    secrets.insert(ObjectKey::new("team-a", "openai"), BTreeMap::new());
    let p = run(&routes, &[], Some(&secrets));
    let problem = &p.route_problems[&ObjectKey::new("team-a", "chat")];
    assert_eq!(problem.reason, "SecretKeyNotFound");
    assert!(!problem.blocking);
    assert_eq!(p.namespaces["team-a"].served, [ObjectKey::new("team-a", "chat")]);
    // Not resolved at all without Secrets (render, local): no problem, no data.
    let p = run(&routes, &[], None);
    assert!(p.route_problems.is_empty());
    assert!(p.namespaces["team-a"].credentials.is_empty());
}

#[test]
fn unreadable_objects_get_an_empty_status_and_their_namespace_a_document() {
    let u = Unreadable {
        kind: ObjectKind::ModelRoute,
        key: ObjectKey::new("team-b", "broken"),
        generation: Some(3),
        problem: Problem::invalid("spec.backends", "cannot be read"),
        previous: Vec::new(),
    };
    let p = plan(PlanInput {
        routes: &[],
        budgets: &[],
        unreadable: std::slice::from_ref(&u),
        namespaces: &BTreeSet::new(),
        secrets: None,
        observations: &Observations::default(),
        previous: &DecisionState::default(),
        now: now(),
    });
    let status = &p.route_statuses[&u.key];
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(ready(&status.conditions).message, "spec.backends: cannot be read");
    assert!(p.config("team-b").unwrap().routes.is_empty());
}

#[test]
fn notes_are_clipped_on_a_character_boundary() {
    let long = "é".repeat(800);
    let clipped = clip_note(&long);
    assert!(clipped.len() <= MAX_NOTE && clipped.ends_with("..."));
    assert_eq!(clip_note("short"), "short");
}

#[test]
fn validation_is_kept_per_uid_and_generation() {
    let mut valid = route("chat", "chat", None, openai());
    valid.metadata.uid = Some("u1".into());
    // An empty backend list breaks the schema.
    let mut broken = valid.clone();
    broken.spec.backends.clear();
    assert!(validate(&broken).is_some(), "the fixture must be invalid");

    let mut cache = ValidationCache::default();
    assert!(admit_cached(std::slice::from_ref(&valid), &[], &[], &mut cache).route_problems.is_empty());
    assert_eq!(cache.len(), 1);
    // Same UID and generation: the verdict is reused (the API server bumps the generation on
    // every spec change, so a different spec under the same generation cannot happen).
    assert!(admit_cached(std::slice::from_ref(&broken), &[], &[], &mut cache).route_problems.is_empty());
    // A new generation is validated again.
    broken.metadata.generation = Some(2);
    assert!(
        admit_cached(std::slice::from_ref(&broken), &[], &[], &mut cache)
            .route_problems
            .contains_key(&ObjectKey::of(&broken))
    );
    // Without a UID (a manifest file) every call validates.
    broken.metadata.uid = None;
    broken.metadata.generation = Some(1);
    assert!(
        admit_cached(std::slice::from_ref(&broken), &[], &[], &mut cache)
            .route_problems
            .contains_key(&ObjectKey::of(&broken))
    );
    cache.retain(&BTreeSet::new());
    assert!(cache.is_empty());
}
