//! tollgate: Kubernetes-native LLM routing with budget- and health-driven rotation.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod cmd;
pub mod config;
pub mod controller;
pub mod gateway;
pub mod kube_source;
pub mod local;
pub mod plan;
pub mod policy;
pub mod pricing;
pub mod render;
pub mod signals;

/// A fresh scratch directory for one unit test: `tollgate-<what>-<pid>-<n>` under the system's
/// temporary directory, `n` counting calls in this process (unique per test, not per process).
#[cfg(test)]
pub(crate) fn test_dir(what: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tollgate-{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
