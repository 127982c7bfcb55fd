//! Properties of cache affinity: stickiness through removals, weight-proportional spread of new
//! keys, key sources in the route's order.

use proptest::prelude::*;

use super::*;

fn rows(weights: &[u32]) -> Vec<(usize, u64, u32)> {
    weights.iter().enumerate().map(|(i, &w)| (i, backend_id(&format!("backend-{i}")), w)).collect()
}

fn key_of(n: u64) -> u64 {
    hash64(b"test", &n.to_le_bytes())
}

proptest! {
    /// Removing backend B (ejection, over budget, weight 0) moves exactly the keys that were on
    /// B; every other key keeps its backend.
    #[test]
    fn removing_a_backend_moves_only_its_keys(
        weights in proptest::collection::vec(1u32..1000, 2..8),
        removed in 0usize..8,
        keys in proptest::collection::vec(any::<u64>(), 1..200),
    ) {
        let removed = removed % weights.len();
        let all = rows(&weights);
        let without: Vec<_> = all.iter().copied().filter(|r| r.0 != removed).collect();
        for k in keys {
            let before = choose(k, all.iter().copied()).unwrap();
            let after = choose(k, without.iter().copied()).unwrap();
            if before == removed {
                prop_assert_ne!(after, removed);
            } else {
                prop_assert_eq!(after, before, "key {} moved although its backend still serves", k);
            }
        }
    }

    /// Adding a backend only takes keys to the new backend; none move between old ones.
    #[test]
    fn adding_a_backend_only_takes_keys_to_it(
        weights in proptest::collection::vec(1u32..1000, 2..8),
        keys in proptest::collection::vec(any::<u64>(), 1..200),
    ) {
        let all = rows(&weights);
        let last = all.len() - 1;
        let fewer = &all[..last];
        for k in keys {
            let before = choose(k, fewer.iter().copied()).unwrap();
            let after = choose(k, all.iter().copied()).unwrap();
            prop_assert!(after == before || after == last);
        }
    }

    /// The answer depends on backend names, not list positions.
    #[test]
    fn reordering_the_list_moves_nothing(
        weights in proptest::collection::vec(1u32..1000, 2..8),
        k in any::<u64>(),
    ) {
        let all = rows(&weights);
        let mut reversed = all.clone();
        reversed.reverse();
        prop_assert_eq!(choose(k, all), choose(k, reversed));
    }
}

/// New keys spread by weight. Counted over 40,000 fixed keys: each backend's count is
/// Binomial(N, p) for an ideal hash, standard deviation sqrt(N·p·(1−p)) ≤ 100 keys; the bound
/// below is 6 standard deviations (+1 for rounding), so a correct hash fails it with
/// probability below 1e-8 per backend, while a hash ignoring weights (e.g. 25% each for
/// 70/20/9/1) misses it by more than 40 deviations. The keys are fixed, so the test is
/// deterministic.
#[test]
fn new_keys_follow_the_weights() {
    const N: u64 = 40_000;
    for weights in [vec![70u32, 20, 9, 1], vec![1, 1], vec![500, 250, 125, 125], vec![3, 1, 1, 1, 1, 1]] {
        let all = rows(&weights);
        let total: u32 = weights.iter().sum();
        let mut counts = vec![0u64; weights.len()];
        for n in 0..N {
            counts[choose(key_of(n), all.iter().copied()).unwrap()] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let p = f64::from(w) / f64::from(total);
            let expect = N as f64 * p;
            let sigma = (N as f64 * p * (1.0 - p)).sqrt();
            let got = counts[i] as f64;
            assert!(
                (got - expect).abs() <= 6.0 * sigma + 1.0,
                "weights {weights:?}: backend {i} got {got} keys, expected {expect:.0} ± {:.0}",
                6.0 * sigma
            );
        }
    }
}

#[test]
fn weight_zero_rows_never_win_and_empty_sets_have_no_winner() {
    let all = rows(&[0, 5, 0]);
    for n in 0..1000 {
        assert_eq!(choose(key_of(n), all.iter().copied()), Some(1));
    }
    assert_eq!(choose(1, rows(&[0, 0])), None);
    assert_eq!(choose(1, Vec::new()), None);
}

#[test]
fn key_sources_are_tried_in_the_routes_order() {
    let parts = KeyParts { header: Some("conv-1"), prompt_cache_key: Some("pck".into()), user: Some("alice".into()) };
    let opening = || vec![r#"[{"role":"system","content":"be brief"}]"#.to_string()];
    let all = AffinityPolicy::default();
    let header = key(&all, &parts, opening).unwrap();
    let only = |keys: Vec<AffinityKeySource>| AffinityPolicy { keys, ..AffinityPolicy::default() };
    assert_eq!(key(&only(vec![AffinityKeySource::Header]), &parts, opening), Some(header));
    let pck = key(&only(vec![AffinityKeySource::PromptCacheKey, AffinityKeySource::Header]), &parts, opening).unwrap();
    let user = key(&only(vec![AffinityKeySource::User]), &parts, opening).unwrap();
    let prefix = key(&only(vec![AffinityKeySource::Prefix]), &parts, opening).unwrap();
    let distinct: std::collections::BTreeSet<u64> = [header, pck, user, prefix].into();
    assert_eq!(distinct.len(), 4, "each source gives its own key");
    // Absent or empty values fall through to the next source.
    let bare = KeyParts { header: Some(""), user: Some("alice".into()), ..KeyParts::default() };
    assert_eq!(key(&all, &bare, opening), Some(user));
    assert_eq!(key(&all, &KeyParts::default(), Vec::new), None);
    // Sources the route does not list are not used.
    assert_eq!(key(&only(vec![AffinityKeySource::Header]), &bare, opening), None);
}

#[test]
fn every_turn_of_a_conversation_shares_its_opening() {
    let turn = |n: usize| {
        let mut messages = vec![
            serde_json::json!({"role": "system", "content": "You are a careful assistant."}),
            serde_json::json!({"role": "user", "content": "conversation 7, question 1"}),
        ];
        for i in 1..n {
            messages.push(serde_json::json!({"role": "assistant", "content": format!("answer {i}")}));
            messages.push(serde_json::json!({"role": "user", "content": format!("question {}", i + 1)}));
        }
        serde_json::json!({"model": "m", "messages": messages})
    };
    let k = |v: &serde_json::Value| {
        let t = opening_texts(v);
        prefix_hash(t.iter().map(String::as_str), 1024)
    };
    assert!(k(&turn(1)).is_some());
    assert_eq!(k(&turn(1)), k(&turn(5)));
    let other = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "conversation 8"}]});
    assert_ne!(k(&turn(1)), k(&other));
    // Parts are concatenated before cutting; empty is no key.
    assert_eq!(prefix_hash(["ab", "cd"], 3), prefix_hash(["abc"], 3));
    assert_eq!(prefix_hash([""], 10), None);
    let body =
        serde_json::json!({"system": "s", "messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]});
    assert_eq!(opening_texts(&body), vec![r#""s""#.to_string(), r#"[{"content":"x","role":"user"}]"#.to_string()]);
}
