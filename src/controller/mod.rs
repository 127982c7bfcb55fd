//! `tollgate controller`: the operator.
//!
//! It watches ModelRoutes and ProviderBudgets (through `DeserializeGuard`, so one malformed
//! object cannot stall a watcher), the Secrets they reference and the gateway pods; for every
//! namespace with routes it server-side applies the gateway ConfigMap and the credentials
//! Secret; each `--signal-interval` it reads the gateways' signals, runs the policy, re-renders
//! when the effective tables change, writes statuses and emits one Event per transition.
//!
//! - [`engine`]: one reconcile pass (snapshot → restore → signals → plan → apply → status →
//!   events) and the engine's memory, testable against a mocked API server; its steps:
//!   [`plan`] (snapshot → the shared [`crate::plan`] step), [`apply`] (ConfigMap and Secret),
//!   [`status`], [`events`] (the outbox), [`pods`] (gateway targets).
//! - [`fence`]: a pass writes only while this replica is known to hold the leader Lease.
//! - [`honest`]: statuses and Events when a namespace's config did not reach the cluster.
//! - `hard`: the Hard budgets' grants, written as the allowances ConfigMap per namespace.
//! - [`restore`]: the policy's memory rebuilt from statuses after a restart.
//! - [`run`]: watchers, leader election, the interval loop, SIGTERM, the HTTP endpoints.

pub mod apply;
pub mod engine;
pub mod error;
pub mod events;
pub mod fence;
mod hard;
pub mod honest;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod pods;
pub mod restore;
pub mod run;
mod scope;
mod status;
mod sync;

use std::net::SocketAddr;
use std::time::Duration;

pub use engine::{Context, Engine, PassReport, Settings, Snapshot};
pub use error::Error;
pub use run::run_controller;

/// Where the controller reads gateway signals from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalsSource {
    /// Scrape each ready gateway pod's `/metrics`.
    Scrape,
    /// Ask the Prometheus server at this URL.
    Prometheus(String),
}

fn parse_signals(s: &str) -> Result<SignalsSource, String> {
    if s == "scrape" {
        return Ok(SignalsSource::Scrape);
    }
    match s.strip_prefix("prometheus=") {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(SignalsSource::Prometheus(url.to_string()))
        }
        _ => Err(format!("{s:?}: expected `scrape` or `prometheus=http(s)://HOST:PORT`")),
    }
}

fn parse_usd(s: &str) -> Result<crate::policy::Money, String> {
    match s.parse::<crate::policy::Money>() {
        Ok(m) if m > crate::policy::Money::ZERO => Ok(m),
        _ => Err(format!("{s:?}: expected a USD amount above zero, such as 0.01")),
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `tollgate controller`.
#[derive(clap::Args, Clone, Debug)]
pub struct ControllerArgs {
    /// Namespaces to watch, comma-separated; every namespace when not given.
    #[arg(long, value_delimiter = ',', env = "TOLLGATE_NAMESPACES")]
    pub namespaces: Vec<String>,
    /// Label selector of the gateway pods whose signals are read.
    #[arg(long, default_value = "app.kubernetes.io/component=gateway,app.kubernetes.io/name=tollgate")]
    pub gateway_selector: String,
    /// Name of the gateway container port serving `/metrics`.
    #[arg(long, default_value = "metrics")]
    pub metrics_port_name: String,
    /// How often signals are read and the policy runs (it also runs on every spec change).
    #[arg(long, default_value = "15s", value_parser = crate::cmd::parse_duration_in::<1, { u64::MAX }>)]
    pub signal_interval: Duration,
    /// Signal source: `scrape` (each gateway pod's /metrics) or `prometheus=URL` (PromQL).
    #[arg(long, default_value = "scrape", value_parser = parse_signals)]
    pub signals: SignalsSource,
    /// Name of the gateway ConfigMap written in each namespace with routes.
    #[arg(long, default_value = crate::config::CONFIGMAP_NAME)]
    pub configmap_name: String,
    /// Name of the ConfigMap holding the Hard budgets' grants (`allowances.json`), written in
    /// each namespace with Hard ProviderBudgets; gateways read it (`--allowances`).
    #[arg(long, default_value = crate::config::allowances::ALLOWANCES_CONFIGMAP)]
    pub allowances_configmap_name: String,
    /// Headroom (USD) every live gateway pod is topped up to at least, per Hard budget, each
    /// signal interval (more for pods that spend faster). Keep it above one request's worst
    /// case: a pod with less admits nothing.
    #[arg(long, default_value = "0.01", value_parser = parse_usd)]
    pub hard_grant_floor: crate::policy::Money,
    /// Status writes per second at most, after a burst of 100 (0: unbounded): the client-side
    /// budget that keeps thousands of routes changing at once from flooding the API server.
    #[arg(long, default_value_t = 50)]
    pub status_writes_per_second: u32,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Leader election, so that only one replica writes (`--leader-election=false` for one replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "tollgate-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (defaults to the pod's namespace, else the kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a lease lasts without renewal (a crashed leader is replaced after this).
    #[arg(long, default_value = "15s", value_parser = crate::cmd::parse_duration_in::<1, { u64::MAX }>)]
    pub lease_duration: Duration,
    /// This replica's name: the Event reporter instance and the lease identity.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(parse_signals("scrape"), Ok(SignalsSource::Scrape));
        assert_eq!(
            parse_signals("prometheus=http://prom:9090"),
            Ok(SignalsSource::Prometheus("http://prom:9090".into()))
        );
        assert!(parse_signals("prometheus=prom").is_err());
        assert_eq!(parse_usd("0.01"), Ok("0.01".parse().unwrap()));
        assert!(parse_usd("0").is_err() && parse_usd("-1").is_err() && parse_usd("x").is_err());
        let positive = crate::cmd::parse_duration_in::<1, { u64::MAX }>;
        assert_eq!(positive("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(positive("0s").is_err());
    }
}
