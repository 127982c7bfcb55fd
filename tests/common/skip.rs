//! The one way a test skips because the environment lacks something it needs (a tool, a
//! privilege, a cluster), so that CI can forbid skipping.
//!
//! Rules: a test that cannot run here calls [`skip`] with the name of what it needs and returns.
//! The names are [`NEEDS`]. The reason goes straight to the process's stderr, past the test
//! harness's output capture, so it shows beside the harness's "ok" without `--nocapture`. When
//! `TOLLGATE_CI_PROVIDES` (a comma list of names, set by `.ci/run` for what it installs or
//! starts) names the need, the environment promised it: the skip panics with the reason instead.
//! A name in that list that is not one of [`NEEDS`] panics too, so a typo cannot turn a promise
//! back into a silent skip.
#![allow(dead_code)]

use std::io::Write;

/// The variable listing what the environment provides.
pub const VAR: &str = "TOLLGATE_CI_PROVIDES";

/// A Kubernetes API server in `KUBECONFIG`.
pub const KUBE: &str = "kube";
/// `lua5.4` on PATH.
pub const LUA: &str = "lua";
/// `curl` with HTTP/2 on PATH.
pub const CURL: &str = "curl";
/// The right to mount a tmpfs (root with CAP_SYS_ADMIN).
pub const TMPFS: &str = "tmpfs";
/// `prometheus` on PATH.
pub const PROMETHEUS: &str = "prometheus";

/// Every name [`VAR`] may list.
pub const NEEDS: [&str; 5] = [KUBE, LUA, CURL, TMPFS, PROMETHEUS];

/// Whether [`VAR`] promises `need`; panics on a name it does not know.
pub fn provided(need: &str) -> bool {
    assert!(NEEDS.contains(&need), "skip: unknown need {need:?} (known: {NEEDS:?})");
    let list = std::env::var(VAR).unwrap_or_default();
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if let Some(bad) = names.iter().find(|n| !NEEDS.contains(n)) {
        panic!("{VAR}={list:?} names {bad:?}, which no test knows (known: {NEEDS:?})");
    }
    names.contains(&need)
}

/// Skips `test` (named by its thread, as the harness names it, when it has one), which needs
/// `need` and cannot have it here because of `reason` (say how to get it). Panics instead when
/// [`VAR`] promises `need`.
pub fn skip(need: &str, test: &str, reason: &str) {
    // The harness names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or(test);
    if provided(need) {
        panic!("{test} cannot run although {VAR} promises {need:?}: {reason}");
    }
    // Not `eprintln!`: the harness captures that and shows it only for failing tests. One
    // write of the whole line, so the harness's own output does not cut into it.
    let line = format!("SKIPPED {test} (needs {need}): {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}
